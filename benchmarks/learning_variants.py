"""The data that benchmarks/learning.py trains on: the variants of the demo's stores (demo, scales, one_annotator,
few_frames), built once under --work and found again by a recipe fingerprint, and the nested training subsamples.

Apart from the runs and the report because a variant is a fact about the data: what it changes and why is read
here in one place, the way the README lists the variants.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

log = logging.getLogger("learning")

#: Bumped when learning.py changes what a run computes, so that older result files and variant stores are not reused.
RESULT_VERSION = 1
VARIANTS = ("demo", "scales", "one_annotator", "few_frames")
#: The few_frames variant's synthetic store and the single-encoder member trained on it.
BURST_STORE, BURST_MEMBER = "burst", "burst"
#: 2-4 s at 25 frames/s (50-100 frames: even unpooled, `pool1`, stays affordable on a CPU); a burst of 2 frames
#: shifted by 1.0 x a unit-variance class pattern: plain to see frame by frame (and after pooling by 5), but a
#: 2 % share of the frame mean, where the probe looks (its test balanced macro-F1 on the demo's splits: 0.32 with 150
#: training utterances, 0.42 with 828).
BURST_DIM, BURST_RATE, BURST_SECONDS = 32, 25.0, (2.0, 4.0)
BURST_FRAMES, BURST_AMPLITUDE, BURST_POOL = 2, 1.0, 5
#: The scales variant: log10 of the per-dimension factor, the offset in (scaled) standard deviations, and the
#: largest magnitude written (float16 tops out at 65504; offsets of at most 30 deviations keep float16's rounding
#: below 2 % of a deviation, so that the scaled store carries the same information as the original).
SCALE_LOG10, OFFSET_SDS, MAX_ABS = (-2.0, 3.0), (3.0, 30.0), 3.0e4

# ------------------------------------------------------------------------------------------------- helpers


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object (sorted keys; anything else by its str)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def store_fingerprint(root: Path) -> str:
    """The identity of the finished store at `root` (medusa.model.training.store_identity: meta.json, index.parquet, and
    the frames file's size and mtime, the rule checkpoints are resumed by), shortened."""
    from medusa.features.store.reader import FeatureStore
    from medusa.model.training import store_identity

    return store_identity(FeatureStore(root))[:12]


def link_store(src: Path, dst: Path) -> None:
    """`dst` -> `src` by symlink (an unchanged store is never copied)."""
    if dst.is_symlink() and dst.resolve() == src.resolve():
        return
    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve(), target_is_directory=True)


def write_store(dst: Path, dim: int, meta: dict[str, Any], items: Any) -> None:
    """A store at `dst` from (utt_id, frames) items, replacing whatever is there (a stale build)."""
    from medusa.features.store.reader import partial_dir
    from medusa.features.store.writer import FeatureStoreWriter

    if dst.is_symlink() or dst.is_file():
        dst.unlink()
    elif dst.exists():
        shutil.rmtree(dst)
    shutil.rmtree(partial_dir(dst), ignore_errors=True)  # a build that died: its inputs may differ, start afresh
    with FeatureStoreWriter(dst, dim, meta, commit_every=4096) as writer:
        for utt_id, frames in items:
            writer.add(utt_id, frames)


def built(dst: Path, recipe: str) -> bool:
    """True if `dst` is a finished store built from `recipe` (the fingerprint kept in its meta)."""
    from medusa.features.store.reader import is_store

    if dst.is_symlink() or not is_store(dst):
        return False
    return json.loads((dst / "meta.json").read_text()).get("learning_recipe") == recipe


# ---------------------------------------------------------------------------------------------- variants


@dataclass
class VariantData:
    """One variant: the manifest to train on, the features root holding its stores, the members to train
    ({name: model entry as in params.models}), `train` overrides the variant itself needs, a fingerprint of its
    data (part of every run's key), and a sentence on what it tests."""
    name: str
    manifest: pd.DataFrame
    features_root: Path
    members: dict[str, dict[str, Any]]
    overrides: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    about: str = ""


def _link_all(src_root: Path, dst_root: Path, encoders: list[str]) -> dict[str, str]:
    fingerprints = {}
    for e in encoders:
        link_store(src_root / e, dst_root / e)
        fingerprints[e] = store_fingerprint(src_root / e)
    return fingerprints


def build_demo(manifest: pd.DataFrame, src_root: Path, work: Path, encoders: list[str],
               members: dict[str, dict[str, Any]], seed: int) -> VariantData:
    root = work / "variants" / "demo"
    prints = _link_all(src_root, root, encoders)
    return VariantData("demo", manifest, root, members, fingerprint=digest({"stores": prints}),
                       about="the demo run's stores and manifest as they are")


def scale_plan(stats: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension factor and offset (x -> factor x + offset) from a store's per-dimension std and max |x|:
    factor 10**U(SCALE_LOG10), offset of OFFSET_SDS (scaled) deviations with a random sign, the factor capped so that
    no value exceeds MAX_ABS."""
    std, maxabs = stats["std"], stats["maxabs"]
    dim = len(std)
    factor = 10.0 ** rng.uniform(*SCALE_LOG10, dim)
    sds = rng.uniform(*OFFSET_SDS, dim)
    sign = rng.choice([-1.0, 1.0], dim)
    span = maxabs + sds * np.maximum(std, 1e-3)  # the largest |x| + offset before scaling
    factor = np.minimum(factor, MAX_ABS / np.maximum(span, 1e-12))
    return factor, sign * sds * factor * np.maximum(std, 1e-3)


def _store_stats(store: Any) -> dict[str, np.ndarray]:
    """Per-dimension std and max |x| over all frames of a store (float64 sums, in chunks: Whisper is 200 k x 512).
    Reads the frames file itself (the store's public API reads one utterance at a time)."""
    frames = np.memmap(store.root / "frames.f16", dtype="<f2", mode="r", shape=(store.n_frames, store.dim))
    n, s1, s2, maxabs = 0, np.zeros(store.dim), np.zeros(store.dim), np.zeros(store.dim)
    for start in range(0, len(frames), 65536):
        x = np.asarray(frames[start:start + 65536], dtype=np.float64)
        n += len(x)
        s1 += x.sum(0)
        s2 += (x ** 2).sum(0)
        maxabs = np.maximum(maxabs, np.abs(x).max(0))
    mean = s1 / max(n, 1)
    return {"std": np.sqrt(np.maximum(s2 / max(n, 1) - mean ** 2, 0)), "maxabs": maxabs}


def build_scales(manifest: pd.DataFrame, src_root: Path, work: Path, encoders: list[str],
                 members: dict[str, dict[str, Any]], seed: int) -> VariantData:
    from medusa.features.store.reader import FeatureStore

    root = work / "variants" / "scales"
    prints = {}
    for e in encoders:
        src, dst = src_root / e, root / e
        recipe = digest({"source": store_fingerprint(src), "seed": seed, "log10": SCALE_LOG10, "sds": OFFSET_SDS,
                         "max_abs": MAX_ABS, "version": RESULT_VERSION})
        if not built(dst, recipe):
            log.info("scales: writing %s (each dimension x 10**U%s, offsets of %s deviations)", dst, SCALE_LOG10,
                     OFFSET_SDS)
            store = FeatureStore(src)
            # one generator per store, seeded by (seed, the store's name): a store's scales do not depend on which
            # other stores this run happens to need
            name_seed = int(hashlib.sha256(e.encode()).hexdigest()[:8], 16)
            factor, offset = scale_plan(_store_stats(store), np.random.default_rng([seed, name_seed]))
            meta = {k2: v for k2, v in store.meta.items() if k2 not in ("dim", "dtype", "n_utterances", "n_frames")}
            meta.update(learning_recipe=recipe, learning_variant="scales")
            write_store(dst, store.dim, meta,
                        ((u, np.asarray(store[u], np.float32) * factor + offset) for u in store.utt_ids))
        prints[e] = store_fingerprint(dst)
    return VariantData("scales", manifest, root, members, fingerprint=digest({"stores": prints}),
                       about="every dimension x 10**U(-2, 3) plus an offset of 3-30 deviations")


def one_annotator_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """Soft targets -> the consensus label's one-hot on every labelled row; train rows without a class consensus
    (X, O, or a label that is not one of the run's classes) dropped. Dev and test keep those rows (never trained
    on, never scored); agreement and n_votes say one annotator."""
    from medusa.labels import classes_of, target_columns

    classes = classes_of(manifest)  # the run's classes: the manifest's p_ columns
    out = manifest.copy()
    labelled = out["label"].isin(classes)
    out = out[labelled | (out["split"] != "train")].copy()
    labelled = out["label"].isin(classes).to_numpy()
    onehot = (out["label"].to_numpy()[:, None] == np.asarray(classes)[None, :]).astype(float)
    cols = list(target_columns(classes))
    out.loc[labelled, cols] = onehot[labelled]
    for col, value in (("agreement", 1.0), ("n_votes", 1.0)):
        if col in out:
            out.loc[labelled, col] = value
    return out.reset_index(drop=True)


def build_one_annotator(manifest: pd.DataFrame, src_root: Path, work: Path, encoders: list[str],
                        members: dict[str, dict[str, Any]], seed: int) -> VariantData:
    root = work / "variants" / "one_annotator"
    prints = _link_all(src_root, root, encoders)
    return VariantData("one_annotator", one_annotator_manifest(manifest), root, members,
                       fingerprint=digest({"stores": prints, "manifest": "one-hot of the consensus, X/O train dropped"}),
                       about="one-hot consensus targets, X/O rows dropped from train")


def burst_frames(label_index: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One utterance of the burst store: N(0, 1) frames, 2-4 s at 25 frames/s, with BURST_FRAMES consecutive frames
    at a random place shifted by BURST_AMPLITUDE x the class's centre (a unit-variance pattern per class)."""
    t = int(round(rng.uniform(*BURST_SECONDS) * BURST_RATE))
    x = rng.normal(0.0, 1.0, (t, BURST_DIM))
    start = int(rng.integers(0, t - BURST_FRAMES + 1))
    x[start:start + BURST_FRAMES] += BURST_AMPLITUDE * centres[label_index]
    return x


def burst_classes(manifest: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """The class each utterance's burst carries (an index into the run's classes, the manifest's p_ columns): its
    consensus label; for rows without one of those classes (X/O, unlabelled) a draw from its vote distribution
    (uniform without votes)."""
    from medusa.labels import classes_of, target_columns

    classes = classes_of(manifest)
    soft = manifest[list(target_columns(classes))].to_numpy(dtype=float)
    out = np.empty(len(manifest), dtype=int)
    for i, label in enumerate(manifest["label"].to_numpy()):
        if label in classes:
            out[i] = classes.index(label)
        else:
            p = soft[i] if np.isfinite(soft[i]).all() and soft[i].sum() > 0 else np.ones(len(classes))
            out[i] = rng.choice(len(classes), p=p / p.sum())
    return out


def build_few_frames(manifest: pd.DataFrame, src_root: Path, work: Path, encoders: list[str],
                     members: dict[str, dict[str, Any]], seed: int) -> VariantData:
    from medusa.labels import classes_of

    root = work / "variants" / "few_frames"
    prints = _link_all(src_root, root, encoders)  # the demo's stores too, for members that mix burst with them
    ids = sorted(manifest["utt_id"])
    recipe = digest({"utt_ids": digest(ids), "labels": digest(manifest.sort_values("utt_id")["label"].astype(str)
                                                                .tolist()),
                     "seed": seed, "dim": BURST_DIM, "rate": BURST_RATE, "seconds": BURST_SECONDS,
                     "frames": BURST_FRAMES, "amplitude": BURST_AMPLITUDE, "version": RESULT_VERSION})
    dst = root / BURST_STORE
    if not built(dst, recipe):
        log.info("few_frames: writing %s (%d utterances)", dst, len(ids))
        rng = np.random.default_rng([seed, 17])
        centres = rng.normal(0.0, 1.0, (len(classes_of(manifest)), BURST_DIM))  # one pattern per run class
        ordered = manifest.set_index("utt_id").loc[ids].reset_index()
        classes = burst_classes(ordered, rng)
        meta = {"family": "synthetic", "kind": "audio", "frame_rate": BURST_RATE, "learning_variant": "few_frames",
                "learning_recipe": recipe, "burst_frames": BURST_FRAMES, "burst_amplitude": BURST_AMPLITUDE}
        write_store(dst, BURST_DIM, meta, ((u, burst_frames(c, centres, rng)) for u, c in zip(ids, classes)))
    prints[BURST_STORE] = store_fingerprint(dst)
    model = {"encoders": [BURST_STORE], "seed": 0, "overrides": {}}
    return VariantData("few_frames", manifest, root, {BURST_MEMBER: model},
                       overrides={"pool": {BURST_STORE: BURST_POOL}}, fingerprint=digest({"stores": prints}),
                       about=f"class in a {BURST_FRAMES}-frame burst in 2-4 s of {BURST_DIM}-dim noise at 25 frames/s")


BUILDERS: dict[str, Callable[..., VariantData]] = {"demo": build_demo, "scales": build_scales,
                                                  "one_annotator": build_one_annotator, "few_frames": build_few_frames}


# ---------------------------------------------------------------------------------------------- subsampling


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of the rows in which every prefix is (within one row per label) stratified by label.

    Each label's rows are shuffled and spread evenly over [0, 1): row i of a label with n rows gets the key
    (i + phase) / n, with a random phase per label; sorting by key interleaves the labels in proportion. So the
    first k rows are a stratified subsample of size k, and a smaller subsample is part of every larger one (the
    learning curve then measures the size, not a new draw). A label with n rows appears within the first
    about N / n rows."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).astype(str)
    keys = np.empty(len(labels))
    for label in sorted(set(labels)):
        rows = np.flatnonzero(labels == label)
        rows = rows[rng.permutation(len(rows))]
        keys[rows] = (np.arange(len(rows)) + rng.uniform()) / len(rows)
    tiebreak = rng.permutation(len(labels))
    return np.lexsort((tiebreak, keys))


def subsample_train(manifest: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """The manifest with its train split cut to `size` utterances (stratified_order's prefix; all of it when `size`
    is at least the split); other splits unchanged, row order kept."""
    is_train = (manifest["split"] == "train").to_numpy()
    n = int(is_train.sum())
    if size >= n:
        return manifest
    train_pos = np.flatnonzero(is_train)
    keep = train_pos[stratified_order(manifest["label"].to_numpy()[train_pos], seed)[:size]]
    mask = ~is_train
    mask[keep] = True
    return manifest[mask].reset_index(drop=True)
