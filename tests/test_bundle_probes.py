"""Bundles of an ensemble that reads the members' linear probes, and bundles of a run over fewer classes than all
8: they reproduce the ensemble stage's stored posteriors and refuse what does not fit."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from meta_config import meta_config
from tiny_bundles import EGEMAPS, EGEMAPS_STORE, score_files, write_member

from medusa.data.audio import load_audio
from medusa.ensemble.subsets import ensemble_posteriors, run_subset
from medusa.ensemble.voting import read_probe_posteriors
from medusa.features.encoders.opensmile_lld import OpenSmileEncoder
from medusa.labels import ATTRIBUTES, CODES, SOFT_TARGET_COLUMNS, target_columns
from medusa.model.dataset import batch_from_arrays, unscale_attributes
from medusa.model.linear_probe import LinearProbe, pooled_means
from medusa.serving.bundle import BundleError, save_bundle
from medusa.serving.inference import load_bundle, stored_agreement


def write_probe(folder: Path, pooled: np.ndarray, seed: int, classes: tuple[str, ...] = CODES) -> LinearProbe:
    """A member's probe.json as members.train_member writes it: standardised on `pooled` (N, D frame means),
    random weights over every class of the run (`classes`), steep enough for the probabilities to depend
    clearly on the input."""
    rng = np.random.default_rng(seed)
    probe = LinearProbe(classes=list(classes), mean=pooled.mean(0).tolist(), scale=(pooled.std(0) + 1e-3).tolist(),
                        coef=rng.normal(0, 1.5, (len(classes), pooled.shape[1])).tolist(),
                        intercept=[0.0] * len(classes), c=1.0, seed=seed, outputs=list(classes))
    probe.save(folder)
    return probe


def member_frames(models, pools, features: list[np.ndarray], rows: pd.DataFrame, classes: tuple[str, ...] = CODES
                  ) -> list[pd.DataFrame]:
    """posteriors.parquet of eGeMAPS-only members over `rows` (utt_id, split, label), each member on the whole
    set in one batch, as the training stage scores them."""
    frames = []
    with torch.no_grad():
        for model, p in zip(models, pools):
            xs, masks = batch_from_arrays([features], p)
            logits, a = model(xs, masks)
            frame = rows[["utt_id", "split", "label"]].copy()
            frame[list(target_columns(classes))] = torch.softmax(logits, -1).numpy()
            frame[list(ATTRIBUTES)] = unscale_attributes(a.numpy())
            frames.append(frame)
    return frames


def probe_run(root: Path, classes: tuple[str, ...], stage3: str = "paper") -> dict:
    """Two eGeMAPS members of a run over `classes` (the manifest's p_ columns), each with its linear probe
    (probe.json, probe_posteriors.parquet), scored on 24 synthesized clips (dev 12, test 6, blind 6); the
    ensemble stage's soup over them with include_probes and the stage-3 form `stage3` (anchored: its penalty, or
    soft voting, chosen by cross-validation within dev), its stored posteriors, and its bundle."""
    sr, rng = 16000, np.random.default_rng(1)
    wavs = []
    for i in range(24):
        t = np.arange(int(rng.uniform(0.3, 0.7) * sr)) / sr
        tone = rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(100, 600) * t)
        clip = tone + rng.uniform(0, 0.1) * rng.normal(0, 1, len(t))
        wavs.append(root / f"clip{i:02d}.wav")
        sf.write(wavs[-1], clip, sr, subtype="PCM_16")
    features = [f.astype(np.float16) for f in OpenSmileEncoder("eGeMAPSv02").encode([load_audio(w) for w in wavs])]
    splits = ["dev"] * 12 + ["test"] * 6 + ["blind"] * 6
    labels = [str(c) for c in rng.choice(list("ASHN"), 18)] + [None] * 6
    rows = pd.DataFrame({"utt_id": [w.stem for w in wavs], "split": splits, "label": labels})
    train = pd.DataFrame({"utt_id": [f"t{i}" for i in range(8)], "split": "train", "label": list("ASHNASHN")})
    manifest = pd.concat([train, rows], ignore_index=True)
    labelled = manifest["label"].notna().to_numpy()
    targets = np.full((len(manifest), len(classes)), np.nan)
    targets[labelled] = np.eye(len(classes))[[classes.index(c) for c in manifest.loc[labelled, "label"]]]
    manifest[list(target_columns(classes))] = targets
    manifest[list(ATTRIBUTES)] = 4.0

    store, pools, names = {"egemaps": EGEMAPS_STORE}, [[20], [5]], ["p_deep", "p_late"]
    written = [write_member(root / "models", "p_deep", {"egemaps": 25}, pools[0], store, seed=11, classes=classes),
               write_member(root / "models", "p_late", {"egemaps": 25}, pools[1], store, seed=12, fusion="late",
                            classes=classes)]
    dirs, models = [d for d, _ in written], [m for _, m in written]
    pooled = pooled_means([features])
    probes = [write_probe(d, pooled, seed=20 + i, classes=classes) for i, d in enumerate(dirs)]
    for d, frame, probe in zip(dirs, member_frames(models, pools, features, rows, classes), probes):
        frame.to_parquet(d / "posteriors.parquet")
        probe_frame = rows[["utt_id", "split", "label"]].copy()
        probe_frame[list(target_columns(classes))] = probe.predict_proba(pooled)
        probe_frame[list(ATTRIBUTES)] = np.nan
        probe_frame.to_parquet(d / "probe_posteriors.parquet")
    posteriors = {n: pd.read_parquet(d / "posteriors.parquet") for n, d in zip(names, dirs)}
    probe_posteriors = read_probe_posteriors(names, root / "models")
    cfg = meta_config(0, include_probes=True, epochs=20, lr=1e-2, stage3=stage3)
    result = run_subset(posteriors, manifest, names, cfg, [0, 1], probe_posteriors, anchor_grid=[0.0],
                                 cv_folds=2)
    stored = ensemble_posteriors(posteriors, result, ("test", "blind"), probe_posteriors)
    out = save_bundle(root / "bundle", result.soup, dirs, {"egemaps": EGEMAPS}, None)
    return {"bundle": out, "dirs": dirs, "probes": probes, "soup": result.soup, "stored": stored, "wavs": wavs,
            "features": features, "rows": rows}


@pytest.fixture(scope="module")
def probe_bundle(tmp_path_factory):
    """probe_run over all 8 classes."""
    return probe_run(tmp_path_factory.mktemp("probes"), CODES)


@pytest.fixture(scope="module")
def four_class_bundle(tmp_path_factory):
    """probe_run of a 4-class run (IEMOCAP's A S H N): the manifest holds p_A, p_S, p_H, p_N only; stage 3
    anchored at soft voting (the demo's form)."""
    return probe_run(tmp_path_factory.mktemp("four"), ("A", "S", "H", "N"), stage3="anchored")


def test_a_bundle_with_probes_reproduces_the_ensembles_stored_posteriors(probe_bundle):
    path = probe_bundle["bundle"]
    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("probe.json"))
    assert names == ["members/p_deep/probe.json", "members/p_late/probe.json"]
    assert set(names) <= set(json.loads((path / "manifest.json").read_text())["files"])   # checksummed
    assert json.loads((path / "meta.json").read_text())["config"]["include_probes"] is True
    bundle = load_bundle(path)
    assert bundle.meta.cfg.include_probes and bundle.meta.cfg.n_inputs == 2 * (8 + 8)
    assert [m.probe for m in bundle.members] == probe_bundle["probes"]
    stored, rows = probe_bundle["stored"], probe_bundle["rows"]
    # from the same features: the ensemble's stored posteriors of test and blind
    scored = rows.index[rows["split"].isin(["test", "blind"])]
    probs, _ = bundle.predict_features({"egemaps": [probe_bundle["features"][i] for i in scored]})
    expected = stored.set_index("utt_id").loc[rows.loc[scored, "utt_id"], list(SOFT_TARGET_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
    # from the wav files, blind clips in a shuffled request: the stage's own check
    blind = [probe_bundle["wavs"][i] for i in rows.index[rows["split"] == "blind"]][::-1]
    check = stored_agreement(bundle, blind, stored)
    assert check["clips"] == 6 and check["argmax_agree"] == 6 and check["max_abs_diff"] <= 1e-5, check
    # the probes are really read: another probe for one member changes the ensemble's output
    bundle.members[0].probe = bundle.members[1].probe
    moved, _ = bundle.predict_features({"egemaps": [probe_bundle["features"][i] for i in scored]})
    assert np.abs(moved - probs).max() > 1e-3


def test_a_bundle_with_probes_needs_every_members_probe(probe_bundle, tmp_path):
    dirs, soup = probe_bundle["dirs"], probe_bundle["soup"]
    # writing: a member trained before members had probes
    old = Path(shutil.copytree(dirs[1], tmp_path / "models" / "p_late"))
    (old / "probe.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"p_late/probe\.json: no linear probe .*retrain it: dvc repro "
                                                r"train@p_late"):
        save_bundle(tmp_path / "b", soup, [dirs[0], old], {"egemaps": EGEMAPS}, None)
    write_probe(old, np.random.default_rng(0).normal(0, 1, (5, 10)), seed=0)       # 10 features, not 25
    with pytest.raises(BundleError, match=r"p_late/probe\.json: the probe reads 10 features, but the member's "
                                          r"encoders \(egemaps\) give 25"):
        save_bundle(tmp_path / "b", soup, [dirs[0], old], {"egemaps": EGEMAPS}, None)
    # loading: the file gone, or gone from the manifest too
    gone = Path(shutil.copytree(probe_bundle["bundle"], tmp_path / "gone"))
    (gone / "members/p_deep/probe.json").unlink()
    with pytest.raises(BundleError, match=r"members/p_deep/probe\.json: listed in the bundle's manifest but missing"):
        load_bundle(gone)
    manifest = json.loads((gone / "manifest.json").read_text())
    del manifest["files"]["members/p_deep/probe.json"]
    (gone / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"members/p_deep/probe\.json: the meta-classifier reads the members' probe "
                                          r"posteriors \(include_probes\) but the bundle has no probe for member "
                                          r"'p_deep'"):
        load_bundle(gone)


# ------------------------------------------------------------------------------ the run's classes


def test_a_four_class_bundle_predicts_its_classes_only(four_class_bundle):
    """A bundle of a 4-class run: meta.json and every member record the classes, predictions carry p_A, p_S, p_H,
    p_N only (and `predicted` among them), and agree with the ensemble stage's stored posteriors."""
    four = ("A", "S", "H", "N")
    path, rows, features = four_class_bundle["bundle"], four_class_bundle["rows"], four_class_bundle["features"]
    assert json.loads((path / "meta.json").read_text())["config"]["classes"] == list(four)
    for name in ("p_deep", "p_late"):
        assert json.loads((path / "members" / name / "config.json").read_text())["classes"] == list(four)
        assert json.loads((path / "members" / name / "probe.json").read_text())["outputs"] == list(four)
    bundle = load_bundle(path)
    assert bundle.classes == four and [m.classes for m in bundle.members] == [four, four]
    assert bundle.meta.cfg.n_inputs == 2 * (4 + 4)               # each member's posteriors and its probe's
    assert bundle.meta.cfg.stage3 == four_class_bundle["soup"].cfg.stage3 != "paper"   # the anchor travels
    test = list(rows.index[rows["split"] == "test"])
    frame = score_files(bundle, [four_class_bundle["wavs"][i] for i in test])
    assert list(frame.columns) == ["file", "utt_id", "level", "start_s", "end_s", "duration_s", "p_A", "p_S", "p_H",
                                   "p_N", "predicted", *ATTRIBUTES, "warning", "error"]
    assert set(frame["predicted"]) <= set(four)
    probs, member_probs = bundle.predict_features({"egemaps": [features[i] for i in test]})
    assert probs.shape == (len(test), 4) and member_probs.shape == (len(test), 2, 4)
    np.testing.assert_allclose(frame[["p_A", "p_S", "p_H", "p_N"]].to_numpy(), probs, rtol=0, atol=1e-6)
    assert list(frame["predicted"]) == list(np.asarray(four)[probs.argmax(1)])
    stored = four_class_bundle["stored"]
    assert [c for c in stored.columns if c.startswith("p_")] == ["p_A", "p_S", "p_H", "p_N"]
    check = stored_agreement(bundle, [four_class_bundle["wavs"][i] for i in test], stored)
    assert check["argmax_agree"] == len(test) and check["max_abs_diff"] <= 1e-5, check
    empty, empty_members, _ = bundle.predict_all({"egemaps": []})
    assert empty.shape == (0, 4) and empty_members.shape == (0, 2, 4)


def _rewrite(bundle: Path, rel: str, change) -> None:
    """Edit one JSON file of a bundle (change(dict) -> dict) and record its new checksum in the manifest."""
    from medusa.io import sha256_file

    path = bundle / rel
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][rel] = sha256_file(path)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_members_of_other_classes_are_refused(four_class_bundle, probe_bundle, tmp_path):
    four = four_class_bundle
    # writing: a member of the 8-class run beside one of the 4-class run
    with pytest.raises(BundleError, match=r"the members are over different classes \(member 'p_deep': A S H N; "
                                          r"member 'p_late': A S H U F D C N\)"):
        save_bundle(tmp_path / "b", four["soup"], [four["dirs"][0], probe_bundle["dirs"][1]], {"egemaps": EGEMAPS},
                    None)
    # loading: a meta-classifier over other classes than its members' (same count, so the weights would load)
    other = Path(shutil.copytree(four["bundle"], tmp_path / "other"))
    _rewrite(other, "meta.json", lambda m: {**m, "config": {**m["config"], "classes": ["A", "S", "H", "U"]}})
    with pytest.raises(BundleError, match=r"reads posteriors over the classes A S H U, its members \(p_deep, "
                                          r"p_late\) predict A S H N"):
        load_bundle(other)


def test_a_bundle_written_before_classes_were_recorded_predicts_all_8(probe_bundle, tmp_path):
    """meta.json, the members' config.json and probe.json of older bundles name no classes: all 8 codes."""
    old = Path(shutil.copytree(probe_bundle["bundle"], tmp_path / "old"))
    drop = lambda key: lambda d: {k: v for k, v in d.items() if k != key}  # noqa: E731
    _rewrite(old, "meta.json", lambda m: {**m, "config": drop("classes")(m["config"])})
    for name in ("p_deep", "p_late"):
        _rewrite(old, f"members/{name}/config.json", drop("classes"))
        _rewrite(old, f"members/{name}/probe.json", drop("outputs"))
    bundle = load_bundle(old)
    assert bundle.classes == CODES and bundle.members[0].probe.outputs == list(CODES)
    features = {"egemaps": probe_bundle["features"][:5]}
    np.testing.assert_array_equal(bundle.predict_features(features)[0],
                                  load_bundle(probe_bundle["bundle"]).predict_features(features)[0])
