"""The notebook runner: typed parameters, visible failures, refusal of notebooks without a parameters cell."""
import json
import subprocess
import sys

import nbformat
import pytest
import yaml

from medusa.pipeline.run import NotebookError, execute_notebook, stage_parameters


def make_notebook(path, cells, tag_parameters=True):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, src in enumerate(cells):
        cell = nbformat.v4.new_code_cell(src)
        if i == 0 and tag_parameters:
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# a test notebook"))
    nbformat.write(nb, path)
    return path


TYPES_NOTEBOOK = [
    'sets = ["default"]\nmapping = {"a": 0}\nrate = 0.5\nout = "unused.json"',
    'import json\njson.dump({"sets": [type(sets).__name__, sets], "mapping": [type(mapping).__name__, mapping],'
    ' "rate": [type(rate).__name__, rate]}, open(out, "w"))',
    'import sys\nsys.stderr.write(" 50%|#####     | 5/10 [00:01<00:01, 3.2it/s]\\rkept log line\\n")',
]


def test_runner_passes_lists_and_dicts_with_their_types(tmp_path):
    nb = make_notebook(tmp_path / "types.ipynb", TYPES_NOTEBOOK)
    out = tmp_path / "seen.json"
    params = {"sets": ["Train", "Development"], "mapping": {"hidden": 64, "layers": [1, 2]}, "rate": 0.25,
              "out": str(out)}
    execute_notebook(nb, params, tmp_path / "run" / "types.ipynb", tmp_path / "html" / "types.html")
    seen = json.loads(out.read_text())
    assert seen["sets"] == ["list", ["Train", "Development"]]
    assert seen["mapping"] == ["dict", {"hidden": 64, "layers": [1, 2]}]
    assert seen["rate"] == ["float", 0.25]
    assert (tmp_path / "html" / "types.html").read_text().startswith("<!DOCTYPE html>")
    executed = nbformat.read(tmp_path / "run" / "types.ipynb", as_version=4)
    nbformat.validate(executed)
    assert "start_time" not in executed.metadata["papermill"]
    assert not any("start_time" in c.metadata.get("papermill", {}) for c in executed.cells)  # markdown too
    stderr = executed.cells[-1].outputs[0]["text"]  # progress bars are dropped (they vary run to run), logs kept
    assert "kept log line" in stderr and "50%|" not in stderr


def test_failing_cell_raises_with_its_error(tmp_path):
    nb = make_notebook(tmp_path / "fail.ipynb", ["x = 1", "raise ValueError(f'bad value {x}')"])
    with pytest.raises(NotebookError, match="ValueError: bad value 7"):
        execute_notebook(nb, {"x": 7}, tmp_path / "out.ipynb")
    assert (tmp_path / "out.ipynb").is_file()  # the executed notebook keeps the error for reading


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = make_notebook(tmp_path / "untagged.ipynb", ["x = 1", "print(x)"], tag_parameters=False)
    with pytest.raises(NotebookError, match="no cell is tagged 'parameters'"):
        execute_notebook(nb, {"x": 2}, tmp_path / "out.ipynb")
    assert not (tmp_path / "out.ipynb").exists()


def test_cli_reads_params_section_and_exits_nonzero_on_failure(tmp_path, repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["prepare"]["corpus"] = "no-such-corpus"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    declared = "\n".join(f"{k} = None" for k in params["prepare"])  # the section's keys, as 01_prepare has
    nb = make_notebook(tmp_path / "nb.ipynb", [declared, "assert isinstance(train_sets, list), train_sets\n"
                                                         "raise FileNotFoundError(corpus)"])
    proc = subprocess.run([sys.executable, "-m", "medusa.pipeline.run", str(nb), "--section", "prepare",
                           "--params", str(tmp_path / "params.yaml"), "--out-dir", str(tmp_path / "o"),
                           "--html-dir", str(tmp_path / "h")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "FileNotFoundError: no-such-corpus" in proc.stderr


def test_stage_parameters_validates_and_selects_section(tmp_path, repo_root):
    values = stage_parameters(repo_root / "params.yaml", "prepare", None)
    assert values["train_sets"] == ["Train"] and isinstance(values["test_fraction"], float)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["prepare"]["seed"] = "seven"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(Exception, match="prepare.seed: expected int"):
        stage_parameters(tmp_path / "params.yaml", "prepare", None)


def test_parameters_the_notebook_does_not_declare_are_refused(tmp_path):
    # papermill alone only warns and runs with the notebook's defaults: the wrong --section would exit 0
    nb = make_notebook(tmp_path / "nb.ipynb", ["x = 1\ny = 2", "print(x, y)"])
    with pytest.raises(NotebookError, match=r"parameters it does not declare: z .*declares x, y"):
        execute_notebook(nb, {"x": 1, "y": 2, "z": 3}, tmp_path / "out.ipynb")
    with pytest.raises(NotebookError, match="no value for the parameters it declares: y"):
        execute_notebook(nb, {"x": 1}, tmp_path / "out.ipynb")
    assert not (tmp_path / "out.ipynb").exists()


def test_cli_with_the_wrong_section_exits_nonzero(tmp_path, repo_root):
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "medusa.pipeline.run", str(repo_root / "notebooks" / "02_transcribe.ipynb"),
                           "--section", "prepare", "--params", str(repo_root / "params.yaml"), "--out-dir", str(out),
                           "--html-dir", str(tmp_path / "h")], capture_output=True, text=True, cwd=repo_root)
    assert proc.returncode == 1
    assert "parameters it does not declare: allow_uncovered_classes, classes, corpus" in proc.stderr
    assert not out.exists()


def test_every_stage_passes_exactly_what_its_notebook_declares(repo_root):
    """dvc.yaml's commands against the notebooks' parameters cells, for the committed params.yaml."""
    import shlex

    import papermill

    from medusa.pipeline.run import check_parameters

    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    checked = 0
    for name, stage in stages.items():
        body = stage.get("do", stage)
        if not body["cmd"].startswith("python -m medusa.pipeline.run "):
            continue   # the per-model input views (medusa.pipeline.inputs) run no notebook
        keys = [None]
        if "foreach" in stage:  # ${encoders} or ${ablate.variants}
            node = params
            for part in stage["foreach"][2:-1].split("."):
                node = node[part]
            keys = list(node)
        for key in keys:
            argv = shlex.split(body["cmd"].replace("${key}", str(key)))
            notebook = argv[3]
            args = {"section": None, "key": None, "also": [], "entry_of": None}
            for flag, value in zip(argv[4::2], argv[5::2]):
                field = flag[2:].replace("-", "_")
                if field == "also":
                    args["also"].append(value)
                else:
                    args[field] = value
            values = stage_parameters(repo_root / "params.yaml", args["section"], args["key"], args["also"],
                                      args["entry_of"])
            check_parameters(repo_root / notebook, values)
            assert set(papermill.inspect_notebook(str(repo_root / notebook))) == set(values)
            checked += 1
    assert checked >= len(stages)


def test_every_notebook_cell_has_a_fixed_id(repo_root):
    """A cell without an id gets a random one when a notebook is executed, so the rendered HTML (a committed
    report) would differ from run to run."""
    missing = [f"{path.name} cell {i}" for path in sorted((repo_root / "notebooks").glob("*.ipynb"))
               for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]) if "id" not in cell]
    assert not missing, f"cells without an id: {', '.join(missing)}"


def test_a_users_mistake_inside_a_stage_is_one_line_without_a_traceback(tmp_path, repo_root):
    """The real prepare notebook on a corpus folder without Audios/: the CorpusError raised in its cell is printed
    as one `error:` line (no notebook traceback, no ANSI colours), exit 1; a bug keeps its traceback (above)."""
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["prepare"]["corpus"] = str(tmp_path / "no-such-corpus")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "medusa.pipeline.run", str(repo_root / "notebooks/01_prepare.ipynb"),
                           "--section", "prepare", "--params", str(tmp_path / "params.yaml"),
                           "--out-dir", str(tmp_path / "o"), "--html-dir", str(tmp_path / "h")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{tmp_path / 'no-such-corpus' / 'Audios'}: not found" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "\x1b[" not in proc.stderr and "CorpusError" not in proc.stderr
    assert (tmp_path / "o" / "01_prepare.ipynb").is_file()  # the executed copy keeps the whole story
