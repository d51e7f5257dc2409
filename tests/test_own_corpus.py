"""Bring your own corpus, end to end: three small corpora written as CSV manifests go through prepare ->
transcribe -> extract -> train (tiny DeepSERs) -> ensemble -> bundle -> `medusa evaluate`, with the functions the
stage notebooks call. EmoDB-like (7 labels, boredom mapped to O, 2 s clips at 22.05 kHz), IEMOCAP-like (4
classes, 48 kHz stereo, transcripts, a split column), and one with no transcripts, no ratings and no split
column. Models are tiny and random (no model hub): what is checked is that every stage follows the corpus's
classes and copes with what it lacks, not the scores."""
import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import tiny_models
import torch
from meta_config import meta_config
from safetensors.torch import load_file

from medusa import cli
from medusa.config.params import PrepareParams
from medusa.data.channel_probes import egemaps_functionals, probe_sample, run_probes
from medusa.data.corpora.manifest import prepare_corpus
from medusa.ensemble import subsets, tables, voting
from medusa.features.asr import transcribe_manifest, wer_by_split
from medusa.features.encoders import build_encoder
from medusa.features.encoders.whisper import load_whisper
from medusa.features.extract import extract_to_store, extraction_items
from medusa.labels import classes_of
from medusa.model import members
from medusa.serving.bundle import save_bundle
from medusa.serving.evaluate import evaluate
from medusa.serving.inference import load_bundle
from medusa.serving.predict import Predictor

CPU = torch.device("cpu")
RATING = {"A": (6, 2, 6), "S": (2, 2, 2), "H": (5, 6, 5), "N": (4, 4, 4), "F": (6, 2, 2), "D": (4, 2, 5)}


def voice(seconds: float, rate: int, code: str, seed: int, channels: int = 1) -> np.ndarray:
    """A pitched buzz whose pitch and loudness depend on the class (so the tiny models have something to find)."""
    rng = np.random.default_rng(seed)
    pitch = {"A": 260, "S": 140, "H": 300, "N": 180, "F": 330, "D": 160, "O": 200, "C": 220, "U": 280}[code]
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * k * pitch * (1 + 0.02 * np.sin(3 * t)) * t) / k for k in (1, 2, 3))
    x = 0.15 * x * (1 + 0.3 * np.sin(2 * np.pi * 2 * t)) + rng.normal(0, 0.01, len(t))
    return np.stack([x] * channels, 1) if channels > 1 else x


def write_corpus(root: Path, rows: list[dict], rate: int, seconds: float, channels: int = 1,
                 subtype: str = "PCM_16") -> Path:
    """rows: dicts of CSV columns plus `code` (the class the audio sounds like); writes wav/<n>.wav and corpus.csv."""
    (root / "wav").mkdir(parents=True)
    columns = [c for c in rows[0] if c != "code"]
    with (root / "corpus.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *columns])
        for i, row in enumerate(rows):
            name = f"wav/utt{i:03d}.wav"
            sf.write(root / name, voice(seconds, rate, row["code"], i, channels), rate, subtype=subtype)
            w.writerow([name, *(row[c] for c in columns)])
    return root / "corpus.csv"


def emodb_like(root: Path) -> tuple[Path, dict]:
    words = {"A": "anger", "O": "boredom", "D": "disgust", "F": "fear", "H": "happiness", "S": "sadness",
             "N": "neutral"}
    rows = [{"code": c, "label": w, "speaker": f"{s:02d}", "transcript": "der Lappen liegt auf dem Eisschrank"}
            for s in range(10) for c, w in words.items()]
    return write_corpus(root, rows, 22050, 2.0), {"label_map": {"boredom": "O"}, "dev_fraction": 0.2,
                                                  "test_fraction": 0.2}


def iemocap_like(root: Path) -> tuple[Path, dict]:
    words = {"A": "ang", "H": "hap", "S": "sad", "N": "neu"}
    rows = []
    for session in range(1, 6):
        split = {4: "dev", 5: "test"}.get(session, "train")
        for spk in ("F", "M"):
            for take in range(3):
                for code, word in words.items():
                    a, v, d = RATING[code]
                    rows.append({"code": code, "label": word, "speaker": f"Ses0{session}{spk}", "split": split,
                                 "gender": spk, "transcript": f"take {take} of {word}", "arousal": a, "valence": v,
                                 "dominance": d})
            rows.append({"code": "N", "label": "fru", "speaker": f"Ses0{session}{spk}", "split": split, "gender": spk,
                         "transcript": "so frustrating", "arousal": 5, "valence": 2, "dominance": 4})
    label_map = {"ang": "A", "hap": "H", "exc": "H", "sad": "S", "neu": "N", "fru": "O"}
    return write_corpus(root, rows, 48000, 1.0, channels=2, subtype="PCM_24"), {"label_map": label_map}


def bare(root: Path) -> tuple[Path, dict]:
    rows = [{"code": c, "label": w, "speaker": f"p{s}"} for s in range(10)
            for c, w in (("A", "Angry"), ("S", "sad"), ("N", "NEUTRAL")) for _ in range(2)]
    return write_corpus(root, rows, 16000, 1.0), {"dev_fraction": 0.2, "test_fraction": 0.2}


CORPORA = {"emodb_like": (emodb_like, ("A", "S", "H", "F", "D", "N")),
           "iemocap_like": (iemocap_like, ("A", "S", "H", "N")),
           "bare": (bare, ("A", "S", "N"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    text = tiny_models.hf_text(root, "minilm")
    return {"whisper": tiny_models.whisper_checkpoint(root, n_text_ctx=64), "text": text}


def run_pipeline(work: Path, csv_path: Path, prepare: dict, tiny: dict) -> dict:
    """Every stage on one corpus, as the notebooks call them; returns what the tests look at."""
    params = PrepareParams(corpus=str(csv_path), train_sets=["Train"], dev_sets=["Development"], classes="auto",
                           label_map={}, dev_fraction=0.1, test_fraction=0.1, min_per_class=2, long_audio="reject",
                           skip_bad_audio=False, seed=0, split_draws=50, allow_uncovered_classes=False,
                           probe_max_utterances=500).model_copy(update=prepare)
    prepared = prepare_corpus(params, work / "audio")
    manifest = prepared.manifest
    rows = probe_sample(manifest, 500, 0)
    probes = run_probes(rows, egemaps_functionals(list(rows["path"])), 0, prepared.classes)

    whisper = load_whisper(tiny["whisper"], work / "cache", CPU)
    transcripts = transcribe_manifest(whisper, manifest, work / "transcripts.parquet", "en", 0.0, 8, 0, 1)
    wer = wer_by_split(manifest, transcripts)

    encoders = {"egemaps": {"family": "egemaps", "model": "eGeMAPSv02", "layers": [], "batch_size": 8,
                            "batch_seconds": 30.0},
                "text": {"family": "minilm", "model": tiny["text"], "layers": [-1], "batch_size": 8,
                         "batch_seconds": 30.0}}
    for key, spec in encoders.items():
        encoder = build_encoder(key, spec["family"], spec["model"], spec["layers"], CPU, work / "cache")
        items = extraction_items(manifest, transcripts, encoder.kind)
        extract_to_store(encoder, items, work / "features" / key, batch_size=8, batch_seconds=30.0, num_workers=0,
                         device=CPU)

    train = tiny_models.train_config().model_dump()
    train.update(hidden=16, heads=2, stage1_epochs=2, stage2_epochs=1, epoch_steps=6, patience=2, threads=1,
                 standardise=True, pool={"egemaps": 20, "text": 4})   # text: the stand-in BPE splits ASR noise finely
    train.pop("seed")
    names = {"egemaps_text": ["egemaps", "text"], "egemaps": ["egemaps"]}
    for name, keys in names.items():
        dims = members.store_dims(keys, work / "features")
        spec = members.resolve_member(name, {"encoders": keys, "seed": 0}, train, dims, probe={"c": 0.1})
        members.train_member(spec, manifest, work / "features", work / "models" / name, bootstrap=200,
                             bootstrap_seed=0)
    posteriors = {n: pd.read_parquet(work / "models" / n / "posteriors.parquet") for n in names}
    probe_posteriors = voting.read_probe_posteriors(list(names), work / "models")
    cfg = meta_config(len(names), epochs=20, lr=1e-2)
    result = subsets.run_subset(posteriors, manifest, list(names), cfg, [0, 1], probe_posteriors, anchor_grid=(),
                                cv_folds=5)
    table = tables.technique_table({"all (2)": result}, bootstrap=200, seed=0)
    bundle_dir = save_bundle(work / "bundle", result.soup, [work / "models" / n for n in names], encoders,
                             {"model": tiny["whisper"], "language": "en", "batch_size": 8, "pad_seconds": 0.0,
                              "beam_size": 1})
    return {"prepared": prepared, "probes": probes, "wer": wer, "posteriors": posteriors, "table": table,
            "bundle": bundle_dir, "result": result}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny):
    out = {}
    for name, (make, _) in CORPORA.items():
        root = tmp_path_factory.mktemp(name)
        csv_path, prepare = make(root / "corpus")
        out[name] = {"csv": csv_path, "work": root / "work", "prepare": prepare,
                     **run_pipeline(root / "work", csv_path, prepare, tiny)}
    return out


@pytest.mark.parametrize("name", list(CORPORA))
def test_every_stage_follows_the_corpus_classes(runs, name):
    run, classes = runs[name], CORPORA[name][1]
    manifest = run["prepared"].manifest
    assert run["prepared"].classes == classes and classes_of(manifest) == classes
    for frame in run["posteriors"].values():
        assert classes_of(frame) == classes
        assert not [c for c in frame if c.startswith("p_") and c[2:] not in classes]
    for member in ("egemaps", "egemaps_text"):
        weights = load_file(str(run["work"] / "models" / member / "model.safetensors"))
        assert weights["class_head.weight"].shape[0] == len(classes)   # DeepSER's class head: the run's classes
        metrics = members.read_metrics(run["work"] / "models" / member)
        assert metrics["test"]["classes"] == list(classes)
        assert set(metrics["test"]["per_class_f1"]) == set(classes)   # (JSON keys are written sorted)
    bundle = load_bundle(run["bundle"])
    assert tuple(bundle.classes) == classes
    assert set(run["probes"]["classes"]) == {len(classes)}


def test_emodb_like_maps_boredom_to_other_and_converts_22k(runs):
    m = runs["emodb_like"]["prepared"].manifest
    assert (m["label"] == "O").sum() == 10 and m.loc[m["label"] == "O", "p_A"].isna().all()
    assert {sf.info(p).samplerate for p in m["path"]} == {16000}
    assert np.allclose(m["duration_s"], 2.0, atol=1e-3)
    assert set(m["split"]) == {"train", "dev", "test"}
    speakers = m.groupby("split")["speaker"].agg(set)
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["dev"]


def test_iemocap_like_keeps_its_split_column_transcripts_and_ratings(runs):
    run = runs["iemocap_like"]
    m = run["prepared"].manifest
    assert set(m.loc[m["speaker"].str.startswith("Ses05"), "split"]) == {"test"}
    assert set(m.loc[m["speaker"].str.startswith("Ses04"), "split"]) == {"dev"}
    assert {(sf.info(p).samplerate, sf.info(p).channels) for p in m["path"]} == {(16000, 1)}
    assert m["ref_text"].notna().all() and m[["arousal", "valence", "dominance"]].notna().all().all()
    assert np.isfinite(run["wer"].loc["test", "wer"])                   # references exist: WER computed
    assert set(run["probes"]["probe"]) == {"audio (eGeMAPS)", "text (TF-IDF)", "audio + text"}
    ccc = members.read_metrics(run["work"] / "models" / "egemaps")["test"]["ccc"]
    assert all(v is not None for v in ccc.values())
    assert np.isfinite(run["posteriors"]["egemaps"][["arousal", "valence", "dominance"]].to_numpy()).all()
    assert run["result"].soup.cfg.attributes_out is True


def test_a_corpus_without_transcripts_ratings_or_splits(runs):
    run = runs["bare"]
    m = run["prepared"].manifest
    assert m["ref_text"].isna().all() and m[["arousal", "valence", "dominance"]].isna().all().all()
    assert set(run["probes"]["probe"]) == {"audio (eGeMAPS)"}            # no text probe without references
    assert run["wer"].empty                                             # no WER without references
    ccc = members.read_metrics(run["work"] / "models" / "egemaps")["test"]["ccc"]
    assert all(v is None or np.isnan(v) for v in ccc.values())          # no ratings: no attribute score
    for frame in run["posteriors"].values():
        assert np.isfinite(frame[["p_A", "p_S", "p_N"]].to_numpy()).all()
        assert frame[["arousal", "valence", "dominance"]].isna().all().all()  # untrained heads predict nothing
    assert run["result"].soup.cfg.attributes_out is False                    # nor does the meta-classifier


@pytest.mark.parametrize("name", list(CORPORA))
def test_medusa_evaluate_scores_a_bundle_on_its_corpus(runs, name, tmp_path):
    run, classes = runs[name], CORPORA[name][1]
    out = tmp_path / "metrics.json"
    args = ["evaluate", str(run["bundle"]), str(run["csv"]), "--out", str(out), "--cache-dir",
            str(run["work"] / "cache"), "--device", "cpu", "--bootstrap", "200"]
    for word, code in run["prepare"].get("label_map", {}).items():
        args += ["--label-map", f"{word}={code}"]
    assert cli.main(args) == 0
    metrics = json.loads(out.read_text())
    assert metrics["classes"] == list(classes) and set(metrics["per_class_f1"]) == set(classes)
    low, high = metrics["balanced_macro_f1_ci95"]
    assert low <= metrics["balanced_macro_f1"] <= high
    labelled = run["prepared"].manifest["label"].notna().sum()
    not_scored = sum(v["utterances"] for v in metrics["not_scored"].values())
    assert metrics["n"] + not_scored == labelled
    assert (tmp_path / "metrics_confusion.png").stat().st_size > 0


def test_cross_corpus_rows_outside_the_bundle_classes_are_reported(runs, tmp_path):
    """The 3-class bundle (A S N) on the IEMOCAP-like corpus: its H and O (frustrated) rows are counted, not
    scored and not dropped silently."""
    predictor = Predictor.from_bundle(runs["bare"]["bundle"], "cpu", runs["bare"]["work"] / "cache")
    result = evaluate(predictor, runs["iemocap_like"]["csv"], runs["iemocap_like"]["prepare"]["label_map"],
                      splits=["test"], skip_bad_audio=False, seed=0, bootstrap=200)
    assert result.metrics["classes"] == ["A", "S", "N"] and result.metrics["n"] == 18
    assert {k: v["utterances"] for k, v in result.metrics["not_scored"].items()} == {"H": 6, "O": 2}
    assert set(result.predictions["predicted"]) <= {"A", "S", "N"}


def test_evaluate_names_an_unmapped_label(runs, capsys):
    run = runs["emodb_like"]
    code = cli.main(["evaluate", str(run["bundle"]), str(run["csv"]), "--device", "cpu"])
    assert code == 1
    assert "'boredom' (10 rows, first on line" in capsys.readouterr().err
