"""Table 2 and the report's tables: ablation runs (resolution, parallel training), the long table and its
relative changes on hand-made predictions, and the three table formats."""
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from test_members import TRAIN, corpus  # noqa: F401  (the tiny corpus fixture)

from medusa.config.params import REFERENCE_VARIANT, ParamsError, load_params, validate_params
from medusa.model import members
from medusa.pipeline.run import stage_parameters
from medusa.reporting import ablation, reports
from medusa.scoring.metrics import (
    bootstrap_macro_f1,
    macro_f1,
    percentile_interval,
    relative_change,
    stratified_bootstrap_indices,
)


def _runs(rows):
    return pd.DataFrame(rows, columns=["variant", "model", "configuration", "macro_f1", "accuracy"])


def test_table2_on_hand_made_predictions():
    truth = np.array(list("AAAANNNNSSSS"))
    good = truth.copy()
    worse = truth.copy()
    worse[[0, 4, 8]] = ["N", "S", "A"]        # one wrong per class
    predictions = {(REFERENCE_VARIANT, "m1"): good, (REFERENCE_VARIANT, "m2"): worse,
                   ("no_mixup", "m1"): worse, ("no_mixup", "m2"): worse}
    runs = _runs([(v, m, m, macro_f1(truth, p), float(np.mean(truth == p))) for (v, m), p in predictions.items()])
    table = ablation.table2(runs, truth, predictions, bootstrap=200, seed=1, classes=("A", "S", "N"))
    assert list(table["variant"]) == [REFERENCE_VARIANT] * 3 + ["no_mixup"] * 3
    assert list(table["configuration"]) == ["m1", "m2", "AVG"] * 2
    row = table.set_index(["variant", "configuration"])
    f_worse = macro_f1(truth, worse)                           # 0.75
    assert f_worse == pytest.approx(0.75)
    assert row.loc[(REFERENCE_VARIANT, "AVG"), "macro_f1"] == pytest.approx((1 + f_worse) / 2)
    assert row.loc[("no_mixup", "AVG"), "delta_pct"] == pytest.approx(relative_change(f_worse, (1 + f_worse) / 2))
    assert row.loc[("no_mixup", "m1"), "delta_pct"] == pytest.approx(-25.0)
    # the same predictions as the reference: no change, and a paired interval of exactly zero width
    assert row.loc[("no_mixup", "m2"), "delta_pct"] == 0
    assert (row.loc[("no_mixup", "m2"), "delta_ci95_low"], row.loc[("no_mixup", "m2"), "delta_ci95_high"]) == (0, 0)
    # the intervals are those of the shared class-stratified resamples, on balanced macro-F1
    idx = stratified_bootstrap_indices(truth, 200, 1)
    expected = percentile_interval(relative_change(bootstrap_macro_f1(truth, worse, indices=idx, balanced=True),
                                                   bootstrap_macro_f1(truth, good, indices=idx, balanced=True)))
    assert (row.loc[("no_mixup", "m1"), "delta_ci95_low"], row.loc[("no_mixup", "m1"), "delta_ci95_high"]) == \
        pytest.approx(expected)
    assert row.loc[(REFERENCE_VARIANT, "m1"), "balanced_macro_f1_ci95_low"] == 1.0     # perfect on every resample


def test_seed_repeats_of_one_configuration_give_mean_and_std():
    truth = np.array(list("AANN"))
    a, b = np.array(list("AANN")), np.array(list("ANNN"))
    predictions = {(REFERENCE_VARIANT, "m"): a, (REFERENCE_VARIANT, "m_s1"): b, ("x", "m"): b, ("x", "m_s1"): b}
    runs = _runs([(v, m, "m", macro_f1(truth, p), float(np.mean(truth == p))) for (v, m), p in predictions.items()])
    row = ablation.table2(runs, truth, predictions, bootstrap=100, seed=0, classes=("A", "N")).set_index(
        ["variant", "configuration"])
    f_b = macro_f1(truth, b)
    assert row.loc[(REFERENCE_VARIANT, "m"), "seeds"] == 2
    assert row.loc[(REFERENCE_VARIANT, "m"), "macro_f1"] == pytest.approx((1 + f_b) / 2)
    assert row.loc[(REFERENCE_VARIANT, "m"), "macro_f1_std"] == pytest.approx((1 - f_b) / 2)
    view = reports.table2_view(ablation.table2(runs, truth, predictions, bootstrap=100, seed=0, classes=("A", "N")))
    assert " ± " in view.loc["DeepSER", "m bal. F1"] and view.loc["DeepSER", "Δ (%)"] == "–"


def test_table2_needs_the_reference():
    truth = np.array(list("AN"))
    runs = _runs([("x", "m", "m", 1.0, 1.0)])
    with pytest.raises(ValueError, match="reference"):
        ablation.table2(runs, truth, {("x", "m"): truth}, bootstrap=100, seed=0, classes=("A", "N"))


def test_configurations_group_seed_repeats():
    models = {"a": {"encoders": ["w", "t"], "seed": 0}, "a2": {"encoders": ["w", "t"], "seed": 1},
              "b": {"encoders": ["w", "t"], "seed": 0, "overrides": {"hidden": 8}}}
    assert ablation.configurations(["a", "b", "a2"], models) == {"a": "a", "b": "b", "a2": "a"}


def _numbers(text: str) -> list[str]:
    return re.findall(r"-?\d+\.\d+", text)


def test_table_writers_give_three_formats_with_the_same_numbers(tmp_path):
    table = pd.DataFrame({"F1": [reports.cell(0.40674, 0.30178, 0.48212), reports.cell(0.3, std=0.0123)],
                          "Δ (%)": [reports.cell(-7.6012, -12.5, -2.25, digits=2), "–"],
                          "ACC": [reports.cell(0.43), reports.cell(0.5)]},
                         index=pd.Index(["DeepSER", "w/o MixUp"], name="variant"))
    paths = reports.write_table(table, "t", "Table X: a caption.", tmp_path)
    assert sorted(p.suffix for p in paths.values()) == [".csv", ".md", ".tex"]
    expected = ["0.407", "0.302", "0.482", "-7.60", "-12.50", "-2.25", "0.300", "0.012", "0.430", "0.500"]
    for fmt, path in paths.items():
        text = path.read_text(encoding="utf-8")
        assert sorted(_numbers(text)) == sorted(expected), fmt
        assert "w/o MixUp" in text
    assert pd.read_csv(paths["csv"], index_col=0).loc["w/o MixUp", "F1"] == "0.300 ± 0.012"
    assert "\\toprule" in paths["tex"].read_text() and "Table X" in paths["md"].read_text()


def test_cell_formats():
    assert reports.cell(float("nan")) == "–"
    assert reports.cell(0.5, 0.4, 0.6, 0.01) == "0.500 ± 0.010 [0.400, 0.600]"
    assert reports.cell(0.5, std=float("nan")) == "0.500"


def test_ablation_findings_state_whether_each_claim_holds():
    table = pd.DataFrame([
        {"variant": "one_hot", "configuration": "AVG", "delta_pct": -9.0, "delta_ci95_low": -15.0, "delta_ci95_high": -3.0},
        {"variant": "no_mixup", "configuration": "AVG", "delta_pct": 2.0, "delta_ci95_low": -4.0, "delta_ci95_high": 8.0},
        {"variant": "late_fusion", "configuration": "AVG", "delta_pct": -1.0, "delta_ci95_low": -5.0, "delta_ci95_high": 3.0}])
    lines = reports.ablation_findings(table)
    assert "one-hot" in lines[0] and "**holds**" in lines[0] and "-8.23" in lines[0]
    assert "**does not hold in the point estimate, within noise**" in lines[1]
    assert "within noise" in lines[2]
    assert "here it comes with w. one-hot targets" in lines[-1] and lines[-1].endswith("**holds**.")


def _params_with(tmp_path, repo_root, **ablate):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["ablate"].update(ablate)
    return raw


def test_ablate_params_are_cross_checked(repo_root, tmp_path):
    raw = _params_with(tmp_path, repo_root, models=["whisper_minilm", "nope"])
    with pytest.raises(ParamsError, match="ablate.models: no model 'nope'"):
        validate_params(raw)
    raw = _params_with(tmp_path, repo_root, variants={"deepser": {}})
    with pytest.raises(ParamsError, match="ablate.variants.deepser: reserved"):
        validate_params(raw)
    raw = _params_with(tmp_path, repo_root, variants={"bad": {"mixup": 0.0}})
    with pytest.raises(ParamsError, match=r"ablate.variants.bad \(on model whisper_minilm\): mixup: unknown key"):
        validate_params(raw)
    raw = _params_with(tmp_path, repo_root, variants={"a-b": {"mixup_p": 0.0}})
    with pytest.raises(ParamsError, match="ablate.variants.a-b: use letters"):
        validate_params(raw)


def test_the_ablate_stage_gets_its_variant_and_the_section(repo_root):
    params = stage_parameters(repo_root / "params.yaml", "ablate", "no_mixup", entry_of="variants")
    assert params["name"] == "no_mixup" and params["variants"]["no_mixup"] == {"mixup_p": 0.0}
    with pytest.raises(ParamsError, match="ablate.variants.nope: no such entry"):
        stage_parameters(repo_root / "params.yaml", "ablate", "nope", entry_of="variants")


def test_runs_apply_the_switch_on_top_of_the_model(repo_root):
    params = load_params(repo_root / "params.yaml")
    dims = {"whisper": 512, "minilm": 384, "egemaps": 25}
    runs = ablation.ablation_runs(params, "late_fusion", dims)
    assert [r.model for r in runs] == params.ablate.models
    assert all(r.spec.deepser.fusion == "late" and not r.spec.one_hot for r in runs)
    assert all(r.spec.train.seed == params.models[r.model].seed for r in runs)
    with pytest.raises(KeyError, match="no variant 'nope'"):
        ablation.ablation_runs(params, "nope", dims)


def test_runs_train_and_report_their_training_rows(corpus, tmp_path):  # noqa: F811
    """A stage's runs train one after another; each records its training rows, which Table 2's notes read."""
    manifest, root = corpus
    manifest_path = tmp_path / "manifest.parquet"
    manifest.to_parquet(manifest_path)
    train = {**TRAIN, "threads": 1, "stage1_epochs": 2, "stage2_epochs": 1}
    dims = members.store_dims(["a", "b"], root)
    runs = [ablation.AblationRun("no_mixup", name, members.resolve_member(
        name, {"encoders": encoders, "seed": seed}, train, dims, extra_overrides={"mixup_p": 0.0}, probe={"c": 1.0}))
        for name, encoders, seed in (("ab", ["a", "b"], 0), ("a", ["a"], 1))]
    sequential = ablation.train_runs(runs, manifest_path, root, tmp_path / "one", bootstrap=200, bootstrap_seed=3)
    assert sorted(sequential) == ["a", "ab"]
    # a run's metrics.json (train_member's) records its training rows, and load_runs hands them to Table 2's notes
    n_train = int((manifest["split"] == "train").sum())
    assert sequential["ab"]["train_rows"] == {"stage1": n_train, "stage2_pool": n_train}
    shutil.copytree(tmp_path / "one" / "no_mixup" / "ab", tmp_path / "models" / "ab")  # stands in for the member
    loaded = ablation.load_runs(["no_mixup"], ["ab"], {"ab": "ab"}, tmp_path / "one", tmp_path / "models")
    assert loaded[["train_rows_stage1", "train_rows_stage2_pool"]].values.tolist() == [[n_train, n_train]] * 2
    assert not list((tmp_path / "one").glob("*.checkpoint.pt"))  # checkpoints are removed once a run is done


def test_ensemble_findings_use_the_paired_interval():
    table3 = pd.DataFrame([
        {"technique": "majority voting", "subset": "all (2)", "balanced_macro_f1": 0.40, "balanced_macro_f1_std": np.nan},
        {"technique": "soft voting", "subset": "all (2)", "balanced_macro_f1": 0.41, "balanced_macro_f1_std": np.nan},
        {"technique": "meta-classifier (single)", "subset": "all (2)", "balanced_macro_f1": 0.43,
         "balanced_macro_f1_std": 0.01},
        {"technique": "meta-classifier (soup)", "subset": "all (2)", "balanced_macro_f1": 0.44,
         "balanced_macro_f1_std": np.nan}])
    rows = pd.DataFrame({"model": ["a", "b"], "balanced_macro_f1": [0.40, 0.38]})
    lines = reports.ensemble_findings(table3, rows, (2.0, 18.0))
    assert "+10.00 % [+2.00, +18.00]" in lines[0] and lines[0].endswith("**holds**.")
    assert "within noise" in reports.ensemble_findings(table3, rows, (-3.0, 18.0))[0]
    assert lines[1].endswith("**holds**.") and lines[2].endswith("**holds**.")
    truth = np.array(list("AANNSS"))
    assert reports.paired_change(truth, truth, truth, 100, 0, ("A", "S", "N")) == (0.0, 0.0)
