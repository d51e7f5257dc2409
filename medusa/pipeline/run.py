"""The notebook runner every DVC stage calls.

    python -m medusa.pipeline.run NOTEBOOK --section NAME [--key KEY [--entry-of FIELD]] [--also SECTION ...] [--out-dir DIR] [--html-dir DIR]

It validates params.yaml, takes the stage's section (and, for `foreach` stages, the entry NAME of it), and
executes the notebook with papermill, passing each key as a notebook parameter with its YAML type (lists stay
lists, mappings stay dicts). It writes the executed notebook and an HTML rendering, strips papermill's
timestamps so that a rerun with the same inputs writes the same notebook, and exits non-zero with the failing
cell's error when the notebook fails. A notebook without a cell tagged `parameters` is refused: papermill would
only warn, and the notebook's own defaults would silently win over params.yaml. So is a run whose parameters
are not exactly those the parameters cell declares (an unknown one, or a declared one without a value).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

import nbformat

from medusa.config.params import PARAMS_FILE, ParamsError, load_params
from medusa.errors import UserError, message_line, user_error_names
from medusa.io import atomic_path

log = logging.getLogger("medusa.pipeline.run")
KERNEL_START_TIMEOUT_S = 600


class NotebookError(RuntimeError):
    """The notebook cannot be run (no parameters cell) or one of its cells failed."""


class StageInputError(UserError, ValueError):
    """A cell of the stage raised a UserError (bad corpus, audio, params...): shown as its one-line message."""


def _user_error_names() -> set[str]:
    """Names of the UserError classes a stage can raise. A cell's error reaches the runner as a name only, so the
    modules that define them are imported here (only when a cell has failed)."""
    import importlib

    for module in ("medusa.data.audio", "medusa.data.corpora.msp_podcast", "medusa.features.asr",
                   "medusa.features.encoders.base", "medusa.features.ranks",
                   "medusa.features.store.reader", "medusa.features.whisper_ct2", "medusa.pipeline.inputs",
                   "medusa.serving.bundle", "medusa.serving.predict", "medusa.serving.submission"):
        importlib.import_module(module)
    return user_error_names()


def has_parameters_cell(nb: nbformat.NotebookNode) -> bool:
    return any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells if c.cell_type == "code")


_PROGRESS_LINE = re.compile(r"\d+%\|")  # a tqdm bar: its rates and times differ on every run


def _strip_volatile_metadata(nb: nbformat.NotebookNode) -> None:
    """Drop run timestamps, durations and progress bars, which would change the output on every run (the
    bars were streamed to the runner's log while the notebook ran)."""
    for key in ("start_time", "end_time", "duration", "input_path", "output_path"):
        nb.metadata.get("papermill", {}).pop(key, None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for key in ("start_time", "end_time", "duration"):
            cell.metadata.get("papermill", {}).pop(key, None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"  # papermill gives it a random id
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                lines = out["text"].replace("\r", "\n").split("\n")
                out["text"] = "\n".join(line for line in lines if not _PROGRESS_LINE.search(line))
        cell.outputs = [o for o in cell.outputs if o.get("output_type") != "stream" or o["text"].strip()]


def check_parameters(notebook: str | Path, parameters: dict[str, Any]) -> None:
    """Refuse a run whose parameters are not exactly those the notebook's `parameters` cell declares.

    papermill only warns about an unknown parameter and runs with the notebook's own defaults, so a stage run
    with the wrong section (or a params key the notebook never reads) would exit 0 with silently wrong values;
    a declared parameter that is not passed would silently keep its default. papermill's own parser of the
    parameters cell (`inspect_notebook`) says which names the notebook declares."""
    import papermill

    declared = set(papermill.inspect_notebook(str(notebook)))
    unknown = sorted(set(parameters) - declared)
    missing = sorted(declared - set(parameters))
    problems = []
    if unknown:
        problems.append(f"parameters it does not declare: {', '.join(unknown)}")
    if missing:
        problems.append(f"no value for the parameters it declares: {', '.join(missing)}")
    if problems:
        raise NotebookError(f"{notebook}: {'; '.join(problems)} (its parameters cell declares "
                            f"{', '.join(sorted(declared)) or 'nothing'}); check the stage's --section/--key/--also "
                            "in dvc.yaml against the notebook")


def execute_notebook(notebook: str | Path, parameters: dict[str, Any], out_notebook: str | Path,
                     out_html: str | Path | None = None, cwd: str | Path = ".") -> nbformat.NotebookNode:
    """Run `notebook` with `parameters`; write the executed copy (and HTML). Raises NotebookError on failure."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook, out_notebook = Path(notebook), Path(out_notebook)
    if not notebook.is_file():
        raise NotebookError(f"{notebook}: notebook not found")
    source = nbformat.read(notebook, as_version=4)
    if not has_parameters_cell(source):
        raise NotebookError(f"{notebook}: no cell is tagged 'parameters'; tag the cell holding the defaults, "
                            "or params.yaml values would be silently overridden")
    check_parameters(notebook, parameters)
    out_notebook.parent.mkdir(parents=True, exist_ok=True)
    log.info("executing %s -> %s with %s", notebook, out_notebook, sorted(parameters))
    try:
        # start_timeout: papermill waits 60 s for the kernel by default, which a busy 2-core machine exceeded (a
        # demo run failed at ablate@one_hot with "Kernel didn't respond in 60 seconds" while tests shared the cores)
        papermill.execute_notebook(str(notebook), str(out_notebook), parameters=parameters, cwd=str(cwd),
                                   kernel_name="python3", progress_bar=False, log_output=True,
                                   start_timeout=KERNEL_START_TIMEOUT_S)
    except PapermillExecutionError as e:
        if e.ename in _user_error_names():  # a user's mistake found inside the stage: its message alone
            raise StageInputError(f"{e.evalue} (stage notebook {notebook}; the executed copy is at {out_notebook})"
                                  ) from None
        raise NotebookError(f"{notebook}: cell {e.exec_count} failed: {e.ename}: {e.evalue}\n"
                            f"{''.join(e.traceback[-3:]) if e.traceback else ''}\n"
                            f"(the executed notebook with the error is at {out_notebook})") from None
    executed = nbformat.read(out_notebook, as_version=4)
    _strip_volatile_metadata(executed)
    with atomic_path(out_notebook) as tmp:
        nbformat.write(executed, tmp)
    if out_html is not None:
        write_html(executed, out_html)
    return executed


def write_html(nb: nbformat.NotebookNode, path: str | Path) -> None:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(embed_images=True).from_notebook_node(nb)
    with atomic_path(path) as tmp:
        tmp.write_text(body, encoding="utf-8")


def stage_parameters(params_file: str | Path, section: str, key: str | None,
                     also: list[str] | tuple[str, ...] = (), entry_of: str | None = None) -> dict[str, Any]:
    """The validated params of one stage, as plain Python values: the keys of `section` (or of section[key],
    plus `name: key`), and each section named in `also` as one dict parameter of that name. With `entry_of`,
    `key` must be an entry of section[entry_of] (e.g. ablate.variants) and the notebook gets the section's keys
    plus `name: key`."""
    params = load_params(params_file).model_dump()
    for name in (section, *also):
        if name not in params:
            raise ParamsError(f"{params_file}: no section {name!r} (sections: {', '.join(params)})")
    values = params[section]
    if entry_of is not None:
        entries = values.get(entry_of) if isinstance(values, dict) else None
        if not isinstance(entries, dict) or key not in entries:
            raise ParamsError(f"{params_file}: {section}.{entry_of}.{key}: no such entry")
        values = {"name": key, **values}
    elif key is not None:
        if not isinstance(values, dict) or key not in values:
            raise ParamsError(f"{params_file}: {section}.{key}: no such entry")
        values = {"name": key, **values[key]}
    return {**values, **{name: params[name] for name in also}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medusa.pipeline.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook")
    ap.add_argument("--section", required=True, help="params.yaml section of this stage")
    ap.add_argument("--key", help="entry of the section, for foreach stages")
    ap.add_argument("--also", action="append", default=[], help="another section, passed as one dict parameter")
    ap.add_argument("--entry-of", help="with --key: the key is an entry of this field of the section")
    ap.add_argument("--params", default=str(PARAMS_FILE))
    ap.add_argument("--out-dir", default="work/notebooks", help="folder of the executed notebook")
    ap.add_argument("--html-dir", default="reports/notebooks", help="folder of the HTML rendering")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stem = Path(args.notebook).stem + (f"@{args.key}" if args.key else "")
    try:
        parameters = stage_parameters(args.params, args.section, args.key, args.also, args.entry_of)
        execute_notebook(args.notebook, parameters, Path(args.out_dir) / f"{stem}.ipynb",
                         Path(args.html_dir) / f"{stem}.html")
    except (NotebookError, UserError) as e:
        print(message_line(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
