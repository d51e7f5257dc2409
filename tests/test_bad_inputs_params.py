"""The bad-input matrix for params.yaml, the presets of configs/ and --label-map (issue 24): a key given twice, a
YAML syntax error, a float YAML reads as text, a label word given twice. Each is refused with one `error:` line
naming the file, line and key, and none is passed over silently (PyYAML alone keeps the last of two keys)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from bad_inputs import leftovers, refused, user_error

import medusa.cli
import medusa.pipeline.run
from medusa.config.params import load_params, read_yaml

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "params.yaml").read_text()


def write(tmp_path: Path, text: str, name: str = "params.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def set_key(text: str, key: str, value: str, section: str) -> str:
    """`text` with the first `  key:` line of `section` (a top-level section) given `value`."""
    start = text.index(f"\n{section}:") + 1
    match = re.compile(rf"(?m)^  {key}:.*$").search(text, start)
    assert match, (section, key)
    return text[:match.start()] + f"  {key}: {value}" + text[match.end():]


def add_after(text: str, key: str, line: str, section: str) -> str:
    """`text` with `line` inserted after the first `  key:` line of `section`."""
    start = text.index(f"\n{section}:") + 1
    match = re.compile(rf"(?m)^  {key}:.*$").search(text, start)
    assert match, (section, key)
    return text[:match.end()] + "\n" + line + text[match.end():]


def line_of(text: str, pattern: str, nth: int = 0) -> int:
    """The 1-based line of the nth line of `text` matching the regex `pattern`."""
    return [i for i, line in enumerate(text.splitlines(), 1) if re.match(pattern, line)][nth]


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


def test_committed_params_and_presets_still_load():
    """The rules below refuse nothing that the repository ships."""
    for path in (ROOT / "params.yaml", *sorted((ROOT / "configs").glob("*.yaml"))):
        read_yaml(path)
    load_params(ROOT / "params.yaml")
    load_params(ROOT / "configs" / "paper.yaml")


def test_params_duplicate_section(tmp_path):
    """`prepare:` twice: one message naming both lines, not the first section's keys listed as missing."""
    text = TEXT + "\nprepare:\n  seed: 1\n"
    path = write(tmp_path, text)
    message = one_line(user_error(load_params, path, names=(str(path), "prepare", "given twice")))
    first, second = line_of(text, r"prepare:"), line_of(text, r"prepare:", 1)
    assert f"lines {first} and {second}" in message and f"{path}:{second}:" in message
    assert "missing key" not in message


def test_params_duplicate_nested_key(tmp_path):
    text = add_after(TEXT, "lr", "  lr: 0.5", "train")
    path = write(tmp_path, text)
    message = one_line(user_error(load_params, path, names=(str(path), "train.lr", "given twice")))
    first = line_of(text, r"  lr: 0.5") - 1
    assert f"lines {first} and {first + 1}" in message


def test_params_duplicate_key_deep_in_a_model(tmp_path):
    text = add_after(TEXT, "  seed", "    seed: 1", "models")  # the first model's seed
    path = write(tmp_path, text)
    model = re.search(r"(?m)^  (\w+):\s*$", text[text.index("\nmodels:"):]).group(1)
    one_line(user_error(load_params, path, names=(str(path), f"models.{model}.seed", "given twice")))


def test_params_duplicate_key_in_flow_mapping(tmp_path):
    """label_map: {calm: N, calm: C} would map calm to C silently."""
    path = write(tmp_path, set_key(TEXT, "label_map", "{calm: N, calm: C}", "prepare"))
    line = line_of(path.read_text(), r"  label_map:")
    message = one_line(user_error(load_params, path, names=(str(path), "prepare.label_map.calm", "given twice")))
    assert f"on line {line}" in message


def test_preset_duplicate_key(tmp_path):
    """A preset of configs/ is read by the same function (load_params) and gets the same rule."""
    text = (ROOT / "configs" / "small-corpus.yaml").read_text()
    path = write(tmp_path, add_after(text, "seed", "  seed: 99", "prepare"), "small-corpus.yaml")
    one_line(user_error(load_params, path, names=("small-corpus.yaml", "prepare.seed", "given twice")))


def test_override_file_duplicate_key(tmp_path):
    """An override file (read_yaml, any YAML mapping) gets the rule too."""
    path = write(tmp_path, "train:\n  lr: 1.0e-3\n  lr: 1.0e-4\n", "override.yaml")
    one_line(user_error(read_yaml, path, names=(f"{path}:3:", "train.lr", "lines 2 and 3")))


def test_params_yaml_syntax_error(tmp_path):
    text = TEXT + "\nextra: [1, 2\n"
    path = write(tmp_path, text)
    message = one_line(user_error(load_params, path, names=(str(path), "YAML syntax error")))
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: YAML syntax error: expected ',' or ']'", message), message


def test_params_tab_indentation(tmp_path):
    text = add_after(TEXT, "lr", "\tamp: true", "train")
    path = write(tmp_path, text)
    line = line_of(text, "\tamp: true")
    message = one_line(user_error(load_params, path, names=(f"{path}:{line}:1: YAML syntax error", "tab")))
    assert "spaces" in message


def test_params_value_with_colon_unquoted(tmp_path):
    path = write(tmp_path, set_key(TEXT, "device", "cuda: 0", "transcribe"))
    line = line_of(path.read_text(), r"  device: cuda: 0")
    one_line(user_error(load_params, path, names=(f"{path}:{line}:", "YAML syntax error", "quote")))


def test_params_not_utf8(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(TEXT.encode().replace(b"seed: 7", b"seed: 7 \xff", 1))
    line = line_of(TEXT, r"  seed: 7")
    one_line(user_error(load_params, path, names=(f"{path}:{line}:", "0xff", "UTF-8")))


def test_params_path_is_a_folder(tmp_path):
    one_line(user_error(load_params, tmp_path, names=(str(tmp_path), "a folder")))


def test_params_control_character(tmp_path):
    path = write(tmp_path, TEXT.replace("seed: 7", "seed: 7\x01", 1))
    line = line_of(path.read_text(), r".*seed: 7\x01")
    one_line(user_error(load_params, path, names=(f"{path}:{line}:", "control character")))


def test_params_empty_file(tmp_path):
    path = write(tmp_path, "# nothing yet\n")
    one_line(user_error(load_params, path, names=(str(path), "empty")))


def test_params_float_in_exponent_form_without_dot(tmp_path):
    """YAML 1.1 reads `lr: 1e-3` as the text '1e-3': the message says how to write it."""
    path = write(tmp_path, set_key(TEXT, "lr", "1e-3", "train"))
    message = one_line(user_error(load_params, path, names=(str(path), "train.lr", "expected float")))
    assert "1.0e-3" in message and "0.001" in message


def test_params_float_quoted(tmp_path):
    path = write(tmp_path, set_key(TEXT, "dropout", '"0.1"', "train"))
    message = one_line(user_error(load_params, path, names=("train.dropout", "expected float", "without quotes")))
    assert "0.1" in message


def test_params_unknown_key(tmp_path):
    path = write(tmp_path, add_after(TEXT, "seed", "  test_fracton: 0.2", "prepare"))
    one_line(user_error(load_params, path, names=(str(path), "prepare.test_fracton: unknown key")))


def test_params_missing_key(tmp_path):
    text = re.sub(r"(?m)^  min_per_class:.*\n", "", TEXT, count=1)
    path = write(tmp_path, text)
    one_line(user_error(load_params, path, names=(str(path), "prepare.min_per_class: missing key")))


def test_params_wrong_type(tmp_path):
    path = write(tmp_path, set_key(TEXT, "seed", "seven", "prepare"))
    one_line(user_error(load_params, path, names=(str(path), "prepare.seed: expected int, got str 'seven'")))


def test_params_several_problems_first_line_self_contained(tmp_path):
    """One line per bad key; the first names the file and its key by itself (what a log's first line shows)."""
    text = set_key(set_key(TEXT, "seed", "seven", "prepare"), "lr", "1e-3", "train")
    path = write(tmp_path, text)
    lines = user_error(load_params, path).splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{path}: prepare.seed: expected int") and "1 more below" in lines[0]
    assert "train.lr: expected float" in lines[1]


def test_params_label_map_case_only_duplicate(tmp_path):
    """calm and Calm are one word to the CSV reader (it lower-cases): the last would win."""
    path = write(tmp_path, set_key(TEXT, "label_map", "{calm: N, Calm: N}", "prepare"))
    one_line(user_error(load_params, path, names=(str(path), "prepare", "label_map", "'calm'", "'Calm'")))


def test_params_label_map_spaces_and_case_with_two_codes(tmp_path):
    path = write(tmp_path, set_key(TEXT, "label_map", "{calm: N, ' CALM': C}", "prepare"))
    one_line(user_error(load_params, path, names=("label_map", "'calm'", "' CALM'")))


def test_cli_label_map_same_word_two_codes(tmp_path, capsys):
    """_label_map runs before any bundle loads: a bundle path that does not exist is not what is reported."""
    err = refused(medusa.cli.main, ["evaluate", str(tmp_path / "no-bundle"), str(tmp_path / "no-corpus.csv"),
                                    "--label-map", "calm=N", "calm=C"], capsys, "--label-map", "calm=N", "calm=C")
    assert "no-bundle" not in err and len(err.strip().splitlines()) == 1


def test_cli_label_map_case_only_duplicate(tmp_path, capsys):
    err = refused(medusa.cli.main, ["evaluate", str(tmp_path / "no-bundle"), str(tmp_path / "no-corpus.csv"),
                                    "--label-map", "calm=N", "Calm=N"], capsys, "--label-map", "calm=N", "Calm=N")
    assert "no-bundle" not in err


def test_cli_label_map_repeated_pair_is_kept():
    """The same pair twice changes nothing: kept (only a clash where the last would win is refused)."""
    assert medusa.cli._label_map(["calm=N", "calm=n", "boredom=O"]) == {"calm": "N", "boredom": "O"}


def test_cli_params_duplicate_key(tmp_path, capsys):
    """The command line reads params.yaml through load_params: the same one-line refusal, nothing written."""
    path = write(tmp_path, TEXT + "\ndemo_corpus:\n  seed: 3\n")
    out = tmp_path / "corpus"
    refused(medusa.cli.main, ["demo-corpus", str(out), "--params", str(path)], capsys, str(path), "demo_corpus",
            "given twice")
    assert not out.exists() and not leftovers(tmp_path)


def test_runner_params_duplicate_key(tmp_path, capsys):
    """The stage runner validates params before it starts a kernel: refused at once, no notebook written."""
    path = write(tmp_path, add_after(TEXT, "seed", "  seed: 8", "prepare"))
    start = time.monotonic()
    refused(medusa.pipeline.run.main, [str(ROOT / "notebooks" / "01_prepare.ipynb"), "--section", "prepare",
                                       "--params", str(path), "--out-dir", str(tmp_path / "run"),
                                       "--html-dir", str(tmp_path / "html")],
            capsys, str(path), "prepare.seed", "given twice")
    assert time.monotonic() - start < 5, "a kernel was started"
    assert not (tmp_path / "run").exists() and not (tmp_path / "html").exists()


@pytest.mark.parametrize("edit, names", [
    pytest.param(lambda text: set_key(text, "lr", "1e-3", "train"), ("train.lr", "expected float", "1.0e-3"),
                 id="float-exponent"),
    pytest.param(lambda text: text + "\nextra: [1, 2\n", ("YAML syntax error",), id="syntax-error"),
])
def test_runner_params_bad_yaml(tmp_path, capsys, edit, names):
    """A syntax error and a float read as text reach the runner's one line too (no ScannerError traceback)."""
    path = write(tmp_path, edit(TEXT))
    refused(medusa.pipeline.run.main, [str(ROOT / "notebooks" / "01_prepare.ipynb"), "--section", "prepare",
                                       "--params", str(path), "--out-dir", str(tmp_path / "run"),
                                       "--html-dir", str(tmp_path / "html")],
            capsys, str(path), *names)
    assert not (tmp_path / "run").exists() and not (tmp_path / "html").exists()
