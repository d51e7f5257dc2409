"""Every setting of params.yaml is declared once, in the params schema (medusa/config/params.py): no notebook's
parameters cell, config class or function signature holds a second default for it, so that a value can only come
from params.yaml (or a preset), never silently from a copy that drifted."""
import ast
import json
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from medusa.config.params import EnsembleParams, Params, ParamsError, PrepareParams
from medusa.ensemble.meta import MetaConfig

ROOT = Path(__file__).resolve().parents[1]

#: Names that are settings of params.yaml and also, with a default, parameters of functions that are not that
#: setting. Each says why; the test fails when an entry no longer exists, so the list cannot go stale.
NOT_THE_SETTING = {
    # the eight MSP-Podcast codes: the label set scored when a caller names none (not prepare.classes, which
    # chooses a corpus's classes, "auto" or a list)
    ("medusa/labels.py", "balanced_epoch", "classes"): "the label set",
    ("medusa/scoring/metrics.py", "macro_f1", "classes"): "the label set",
    ("medusa/scoring/metrics.py", "balanced_macro_f1", "classes"): "the label set",
    ("medusa/scoring/metrics.py", "accuracy", "classes"): "the label set",
    ("medusa/scoring/metrics.py", "per_class_f1", "classes"): "the label set",
    ("medusa/scoring/metrics.py", "bootstrap_macro_f1", "classes"): "the label set",
    ("medusa/scoring/metrics.py", "bootstrap_interval", "classes"): "the label set",
    ("medusa/ensemble/voting.py", "Stacked", "classes"): "the label set of a stacked frame",
    ("medusa/ensemble/subsets.py", "SubsetResult", "classes"): "the label set of a result",
    # a saved model or bundle loaded outside a run (medusa predict, notebooks): the caller's device, not
    # transcribe.device / extract.device, which only the pipeline's stages read
    ("medusa/model/members.py", "load_member", "device"): "a library caller's device",
    ("medusa/serving/inference.py", "load_bundle", "device"): "a library caller's device",
    ("medusa/serving/predict.py", "from_bundle", "device"): "a library caller's device",
    # how many clips `medusa predict` scores at once (its --batch-size), not a stage's batch size
    ("medusa/serving/inference.py", "Bundle", "batch_size"): "prediction's batch",
    # the system a comparison table names first, not models.<name>.model / encoders.<name>.model
    ("medusa/model/members.py", "compare_to_baseline", "model"): "a table row's name",
    # no padding: the encoder's identity for callers outside a run; the extract stage passes
    # extract.whisper_pad_seconds and the bundle its recorded value
    ("medusa/features/encoders/__init__.py", "build_encoder", "pad_seconds"): "no padding outside a run",
    ("medusa/features/encoders/whisper.py", "whisper_samples", "pad_seconds"): "no padding outside a run",
    ("medusa/features/encoders/whisper.py", "__init__", "pad_seconds"): "no padding outside a run",
}


def schema_settings(model: type[BaseModel] = Params) -> set[str]:
    """Every field name of the schema, nested sections included."""
    names = set()
    for name, field in model.model_fields.items():
        names.add(name)
        stack = [field.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                names |= schema_settings(t)
            stack.extend(typing.get_args(t))
    return names


def second_defaults(source: str, module: str, settings: set[str]) -> list[tuple[str, str, str]]:
    """(module, function or class, name) of every parameter or class field named like a setting that has a
    default other than None."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
            pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
            found += [(module, node.name, arg.arg) for arg, d in pairs
                      if arg.arg in settings and not (isinstance(d, ast.Constant) and d.value is None)]
        elif isinstance(node, ast.ClassDef):
            for st in node.body:
                if (isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name) and st.value is not None
                        and st.target.id in settings
                        and not (isinstance(st.value, ast.Constant) and st.value.value is None)):
                    found.append((module, node.name, st.target.id))
    return found


def package_second_defaults() -> set[tuple[str, str, str]]:
    settings = schema_settings()
    found = set()
    for path in sorted((ROOT / "medusa").rglob("*.py")):
        module = path.relative_to(ROOT).as_posix()
        if module == "medusa/config/params.py":   # the schema itself: where each default is declared
            continue
        found |= set(second_defaults(path.read_text(), module, settings))
    return found


def test_the_scan_finds_a_second_default():
    src = "def f(x, seed=3, lr=None):\n    pass\n\nclass C:\n    epochs: int = 30\n    hidden: int\n"
    assert second_defaults(src, "m.py", {"seed", "lr", "epochs", "hidden"}) == [("m.py", "f", "seed"),
                                                                                ("m.py", "C", "epochs")]


def test_no_setting_has_a_second_default_in_the_package():
    found = package_second_defaults()
    assert sorted(found - set(NOT_THE_SETTING)) == []
    assert sorted(set(NOT_THE_SETTING) - found) == []   # an entry whose default is gone leaves the list


def parameters_cells() -> dict[str, str]:
    cells = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                cells[path.name] = "".join(cell["source"])
    return cells


def test_every_parameters_cell_declares_names_without_values():
    """A parameters cell's values would be a second copy of params.yaml's (notebook 01 once said test_fraction
    0.1 against params.yaml's 0.3): each name is None until the runner injects params.yaml's value."""
    cells = parameters_cells()
    assert len(cells) == len(list((ROOT / "notebooks").glob("*.ipynb")))
    for name, source in cells.items():
        for st in ast.parse(source).body:
            assert isinstance(st, ast.Assign) and isinstance(st.value, ast.Constant) and st.value.value is None, (
                f"{name}: {ast.unparse(st)}")


def test_a_notebook_run_without_its_stage_says_how_to_run_it():
    with pytest.raises(ParamsError, match="run the notebook through its stage"):
        PrepareParams.from_cell({key: None for key in PrepareParams.model_fields})


def test_the_meta_classifier_takes_every_shared_setting_from_the_ensemble_section():
    """MetaConfig declares no default for what EnsembleParams declares, and from_params copies each one: a
    changed section value reaches the config."""
    section = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())["ensemble"]
    shared = {f for f in MetaConfig.__dataclass_fields__} & set(EnsembleParams.model_fields)
    assert {"attributes_in", "include_probes", "hidden", "stage3", "epochs", "batch_size", "lr", "weight_decay",
            "ce_weight", "mse_weight"} <= shared
    changed = {"attributes_in": not section["attributes_in"], "include_probes": not section["include_probes"],
               "hidden": section["hidden"] + 7, "stage3": "anchored" if section["stage3"] == "paper" else "paper",
               "epochs": section["epochs"] + 3, "batch_size": section["batch_size"] + 5, "lr": section["lr"] * 3,
               "weight_decay": section["weight_decay"] + 0.5, "ce_weight": section["ce_weight"] + 0.25,
               "mse_weight": section["mse_weight"] + 0.25}
    cfg = MetaConfig.from_params(EnsembleParams(**{**section, **changed}), n_models=3)
    assert {k: getattr(cfg, k) for k in changed} == changed
    assert cfg.seed == section["seeds"][0] and cfg.n_models == 3


def test_a_bundle_carries_every_feature_setting_of_the_schema():
    """The bundle's encoder and ASR keys are the schema's fields less the few that cannot change a clip's
    features or transcript (each excluded one is a field, so a rename cannot leave a stale exclusion)."""
    from medusa.config.params import EncoderParams, TranscribeParams
    from medusa.serving import bundle

    for keys, excluded, section in ((bundle.ENCODER_KEYS, bundle.ENCODER_EXCLUDED, EncoderParams),
                                    (bundle.ASR_KEYS, bundle.ASR_EXCLUDED, TranscribeParams)):
        assert excluded <= set(section.model_fields)
        assert set(keys) == set(section.model_fields) - excluded and not set(keys) & excluded
