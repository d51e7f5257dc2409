"""Why DeepSER members learn less than a linear probe on the same features (issue #12), as a rerunnable benchmark.

    python benchmarks/learning.py [--sizes 150 300 828] [--members whisper_egemaps egemaps_minilm]
                                  [--variants demo scales one_annotator few_frames] [--changes base raw ...]
                                  [--seeds S ...] [--workers 2] [--work work/learning] [--out reports/benchmarks.md]
                                  [--figure reports/benchmark_figures/learning.png] [--csv reports/metrics/learning.csv]

Run from the repository root after `dvc repro` (it reads work/manifest.parquet and work/features, and never writes
there). For every variant of the data, training-set size, member and change of the training settings it trains
the member (`medusa.model.members.train_member`) and reads the test balanced macro-F1 (95 % interval) of the member and
of its own linear probe (logistic regression on the member's mean-pooled, standardised features). Causes it
separates:

* `demo`: the demo run's stores and manifest as they are.
* `scales`: every store's dimensions multiplied by 10**U(-2, 3) and shifted by large offsets (seeded), the way raw
  eGeMAPS arrives: with `standardise` the member should match `demo`, without it (change `raw`) it should suffer;
  the probe standardises its inputs and should not care.
* `one_annotator`: the soft targets replaced by the one-hot of the consensus label and the X/O rows dropped from
  train, like the single-annotator corpora of the issue.
* `few_frames`: a synthetic store (`burst`: 32-dim Gaussian frames, 2-4 s at 25 frames/s) where the class is carried
  by a burst of 2 frames (80 ms) and the rest is noise; the mean-pooled probe sees a diluted signal, a sequence model
  should find the burst. Trained as the single-encoder member `burst`, pooled to 5 steps/s like the demo's audio
  (5 frames per step) unless a change sets `pool` (`pool1`: every frame a step).

Training sets are nested, label-stratified, seeded subsamples of the variant's train split (dev and test are
unchanged; a size beyond the split means all of it). Changes are `train` overrides relative to params.yaml
(`CHANGES`, or NAME={yaml mapping} on the command line). Each finished run writes its result JSON under
--work/results, keyed by variant, size, member, change, seed and a hash of everything that determines the run
(resolved spec, training rows, variant data, the medusa code that trains); a rerun skips those. The report section
"## Learning: DeepSER vs its linear probe" of --out, the figure and the CSV are written once every run is done.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# No progress bars from the training loop (one per epoch, hundreds per run); set before tqdm is imported, which
# reads it then. The run-level bar below is enabled explicitly.
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere, installed package or not
if str(REPO / "benchmarks") not in sys.path:  # _common, when this file is imported rather than run
    sys.path.insert(1, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from _common import load_average, busy, write_section  # noqa: E402

log = logging.getLogger("learning")

REPORT_SECTION = "## Learning: DeepSER vs its linear probe"
#: Bumped when this script changes what a run computes, so that older result files are not reused.
RESULT_VERSION = 1
#: The medusa modules whose code decides a run's numbers: an edit to any of them invalidates cached results
#: (a result computed before `standardise` / `epoch_steps` existed must not be taken for one computed after).
CODE_MODULES = ("members", "training", "deepser", "dataset", "baselines", "metrics", "params", "feature_store",
                "labels", "batches")

#: Changes of the `train` settings, relative to params.yaml's `train` (and the member's own overrides). `pool1` is
#: computed per run (every encoder at its full frame rate), hence the None.
CHANGES: dict[str, dict[str, Any] | None] = {
    "base": {},                              # params.yaml as it is
    "raw": {"standardise": False},           # cause (a): inputs at their raw scale
    "epochs": {"epoch_steps": 0},            # cause (b): one pass over the data per epoch (the paper's epoch)
    "pool1": None,                           # cause (c): no time pooling (every frame a step)
    "long": {"epoch_steps": 200},            # 4x the optimizer steps: is the member still under-trained?
    "wide": {"hidden": 64, "heads": 4},      # capacity
    "dropout0": {"dropout": 0.0},            # regularisation
}
VARIANTS = ("demo", "scales", "one_annotator", "few_frames")
#: Without --changes, each variant runs the changes that test its own cause (with --changes: those, everywhere).
DEFAULT_PLAN = {"demo": ["base", "raw", "epochs"], "scales": ["base", "raw"], "one_annotator": ["base"],
                "few_frames": ["base", "pool1"]}
DEFAULT_SIZES = (150, 300, 828)
DEFAULT_MEMBERS = ("whisper_egemaps", "egemaps_minilm")

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
    from medusa.features.store import FeatureStore
    from medusa.model.training import store_identity

    return store_identity(FeatureStore(root))[:12]


def code_fingerprint() -> str:
    h = hashlib.sha256()
    for name in CODE_MODULES:
        path = REPO / "medusa" / f"{name}.py"
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()[:12]


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
    from medusa.features.store import FeatureStoreWriter, partial_dir

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
    from medusa.features.store import is_store

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
    from medusa.features.store import FeatureStore

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


# ------------------------------------------------------------------------------------------------------ runs


@dataclass
class Job:
    key: str
    variant: str
    size: int                      # the requested size, capped at the variant's train split
    train_utterances: int          # train rows of the run's manifest (the same number)
    member: str
    change: str
    seed: int
    overrides: dict[str, Any]
    spec: Any                      # medusa.model.members.MemberSpec
    manifest: pd.DataFrame
    features_root: Path
    result_path: Path
    run_dir: Path
    steps_per_utterance: float = 0.0  # time steps the model sees per utterance (all modalities, pooled): its cost


def parse_changes(items: list[str]) -> dict[str, dict[str, Any] | None]:
    """--changes entries: a name of CHANGES, or NAME={yaml mapping of train overrides}."""
    out: dict[str, dict[str, Any] | None] = {}
    for item in items:
        if "=" in item:
            name, text = item.split("=", 1)
            value = yaml.safe_load(text)
            if not isinstance(value, dict):
                raise SystemExit(f"--changes {item!r}: expected NAME={{key: value, ...}}")
            out[name.strip()] = value
        elif item in CHANGES:
            out[item] = CHANGES[item]
        else:
            raise SystemExit(f"--changes: unknown change {item!r} (known: {', '.join(CHANGES)}; "
                             "or NAME={key: value})")
    return out


def resolve_overrides(change: str, changes: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    return {"pool": {}} if change == "pool1" and changes.get(change) is None else dict(changes[change] or {})


def _score_summary(scores: dict[str, Any] | None) -> dict[str, Any] | None:
    if not scores:
        return None
    keep = ("n", "classes", "balanced_macro_f1", "balanced_macro_f1_ci95", "macro_f1", "macro_f1_ci95", "accuracy")
    return {k: scores[k] for k in keep if k in scores}


def run_job(job: Job) -> dict[str, Any]:
    """Train one member (train_member fits its probe too), write the result JSON with both test scores; also
    returned.
    An exception is recorded as the result (same inputs, same failure: not retried unless --retry-failed)."""
    from medusa.model import members
    from medusa.io import write_json

    job.run_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "version": RESULT_VERSION, "key": job.key, "variant": job.variant, "size": job.size,
        "train_utterances": job.train_utterances, "member": job.member, "change": job.change, "seed": job.seed,
        "overrides": job.overrides, "encoders": list(job.spec.encoders), "pools": list(job.spec.pools),
        "load_at_start": load_average()}  # how busy the machine was: train_s is a wall time
    start = time.perf_counter()
    try:
        metrics = members.train_member(job.spec, job.manifest, job.features_root, job.run_dir / "member",
                                       job.run_dir / "checkpoint.pt")
        result["train_s"] = time.perf_counter() - start
        history = json.loads((job.run_dir / "member" / "history.json").read_text())
        result.update(
            member_test=_score_summary(metrics["test"]), probe_test=_score_summary(metrics["probe_test"]),
            dev_balanced_macro_f1=metrics.get("dev_balanced_macro_f1"), best_stage=metrics.get("best_stage"),
            best_epoch=metrics.get("best_epoch"), train_rows=metrics.get("train_rows"),
            parameters=metrics.get("parameters"), epochs=len(history),
            steps=history[-1].get("steps") if history else None,
            stage1_utterances_per_epoch=history[0].get("utterances") if history else None)
    except Exception as e:  # noqa: BLE001 - a run that cannot train is a result (e.g. a non-finite loss at raw scale)
        result.update(train_s=time.perf_counter() - start, error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc(limit=8))
        log.error("%s failed: %s", job.key, result["error"])
    result["finished_at"] = time.time()  # with train_s: when the run went, for the report's wall time of the set
    write_json(result, job.result_path)
    return result


def _worker_init() -> None:
    # each worker logs with its process id, so that two runs side by side can be told apart in the log
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [worker {os.getpid()}] %(name)s: %(message)s",
                        force=True)


def _run_in_worker(job: Job) -> dict[str, Any]:
    log.info("training %s", job.key)
    return run_job(job)


def plan_jobs(args: argparse.Namespace, params: Any, manifest: pd.DataFrame, src_root: Path, work: Path
              ) -> tuple[list[Job], dict[str, VariantData], dict[str, dict[str, Any] | None]]:
    from medusa.features.store import FeatureStore
    from medusa.model.members import resolve_member, store_dims

    changes_given = parse_changes(args.changes) if args.changes else None
    all_changes = {**CHANGES, **(changes_given or {})}
    unknown = [m for m in args.members if m not in params.models]
    if unknown:
        raise SystemExit(f"--members: no model {unknown} in params.yaml (have: {', '.join(params.models)})")
    members = {m: params.models[m].model_dump() for m in args.members}
    encoders = sorted({e for m in members.values() for e in m["encoders"]})
    base_train = params.train
    code = code_fingerprint()
    jobs, variants = [], {}
    for v in args.variants:
        if v not in BUILDERS:
            raise SystemExit(f"--variants: unknown variant {v!r} (known: {', '.join(BUILDERS)})")
        data = BUILDERS[v](manifest, src_root, work, encoders, members, args.data_seed)
        variants[v] = data
        used = sorted({e for m in data.members.values() for e in m["encoders"]})
        dims = store_dims(used, data.features_root)
        mean_frames = {e: float(np.mean(list(FeatureStore(data.features_root / e).lengths.values()))) for e in used}
        change_names = list(changes_given) if changes_given else DEFAULT_PLAN[v]
        n_train = int((data.manifest["split"] == "train").sum())
        for size in sorted({min(s, n_train) for s in args.sizes}):
            sub = subsample_train(data.manifest, size, args.data_seed)
            train_ids = digest(sorted(sub.loc[sub["split"] == "train", "utt_id"]))
            for member, model in data.members.items():
                for change in change_names:
                    overrides = {**data.overrides, **resolve_overrides(change, all_changes)}
                    for seed in (args.seeds if args.seeds is not None else [model["seed"]]):
                        spec = resolve_member(member, {**model, "seed": seed}, base_train, dims,
                                              extra_overrides=overrides)
                        h = digest({"spec": spec.to_dict(), "train_ids": train_ids, "data": data.fingerprint,
                                    "code": code, "version": RESULT_VERSION,
                                    "manifest": digest(sub.to_json())})
                        key = f"{v}__n{size}__{member}__{change}__s{seed}__{h}"
                        jobs.append(Job(key, v, size, size, member, change, seed, overrides, spec, sub,
                                        data.features_root, work / "results" / f"{key}.json",
                                        work / "runs" / key,
                                        sum(mean_frames[e] / p for e, p in zip(spec.encoders, spec.pools))))
    return jobs, variants, all_changes


def run_all(jobs: list[Job], workers: int, retry_failed: bool) -> list[dict[str, Any]]:
    """Run the jobs whose result file is missing (or failed, with retry_failed); all results, in job order."""
    from tqdm import tqdm

    results: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        if job.result_path.is_file():
            done = json.loads(job.result_path.read_text())
            if not (retry_failed and "error" in done):
                done.setdefault("finished_at", job.result_path.stat().st_mtime)  # files written before the field
                results[job.key] = {**done, "reused": True}
                continue
        todo.append(job)
    # longest first (most time steps per utterance: attention cost grows with them), so that a slow run does not
    # start last and leave the other workers idle; the result order stays the jobs' order
    todo.sort(key=lambda j: -j.steps_per_utterance)
    log.info("%d runs: %d already done (in %s), %d to train", len(jobs), len(jobs) - len(todo),
             jobs[0].result_path.parent if jobs else "-", len(todo))
    bar = tqdm(total=len(todo), unit="run", desc="learning", disable=False, file=sys.stderr)
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            bar.set_postfix_str(job.key.rsplit("__", 1)[0])
            log.info("training %s", job.key)
            results[job.key] = run_job(job)
            bar.update()
    else:
        import multiprocessing as mp

        # spawn, not fork: torch's thread pools do not survive a fork; each worker sets its own thread count
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            futures = {pool.submit(_run_in_worker, job): job for job in todo}
            for future in as_completed(futures):
                job = futures[future]
                results[job.key] = future.result()
                r = results[job.key]
                log.info("done %s in %.0f s%s", job.key, r.get("train_s", 0), f" ({r['error']})" if "error" in r else "")
                bar.update()
    bar.close()
    return [results[j.key] for j in jobs]


# ---------------------------------------------------------------------------------------------------- output


def verdict(member: float, member_high: float, probe: float) -> str:
    """The issue's criterion: a member passes if its probe's score is within the member's 95 % interval or below
    the member's score. above: member >= probe; within: member < probe <= the member's upper bound; below:
    probe > the member's upper bound."""
    if member >= probe:
        return "above"
    return "within" if probe <= member_high else "below"


def results_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in results:
        row = {k: r.get(k) for k in ("variant", "size", "train_utterances", "member", "change", "seed", "train_s",
                                     "epochs", "steps", "dev_balanced_macro_f1", "best_stage", "best_epoch",
                                     "error")}
        row["overrides"] = json.dumps(r.get("overrides", {}), sort_keys=True)
        row["stage1_rows"] = (r.get("train_rows") or {}).get("stage1")
        for who in ("member", "probe"):
            s = r.get(f"{who}_test") or {}
            ci = s.get("balanced_macro_f1_ci95") or [np.nan, np.nan]
            row[f"{who}_f1"], row[f"{who}_low"], row[f"{who}_high"] = s.get("balanced_macro_f1", np.nan), *ci
            row[f"{who}_n"] = s.get("n")
        row["classes"] = len((r.get("member_test") or {}).get("classes") or []) or None
        row["gap"] = row["member_f1"] - row["probe_f1"]
        row["verdict"] = ("failed" if r.get("error") else
                          verdict(row["member_f1"], row["member_high"], row["probe_f1"]))
        row["key"] = r.get("key")
        row["finished_at"] = r.get("finished_at", np.nan)
        row["reused"] = bool(r.get("reused", False))
        row["load_at_start"] = r.get("load_at_start")
        # a member that predicts one class for every test utterance: its bootstrap interval has no width
        row["one_class"] = bool(row["member_high"] - row["member_low"] < 1e-9) if not pd.isna(row["member_f1"]) else False
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame) -> str:
    def ci(f: float, lo: float, hi: float) -> str:
        return "–" if pd.isna(f) else f"{f:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = ["| variant | member | change | seed | train utt. | member bal. macro-F1 [95 % CI] | "
             "probe [95 % CI] | gap | member vs probe | steps | train s |",
             "|---|---|---|---:|---:|---|---|---:|---|---:|---:|"]
    for r in frame.itertuples():
        outcome = r.verdict if r.verdict != "failed" else f"failed: {str(r.error).split(':')[0]}"
        outcome += " (one class)" if r.one_class else ""
        lines.append(f"| {r.variant} | {r.member} | {r.change} | {r.seed} | {r.train_utterances} | "
                     f"{ci(r.member_f1, r.member_low, r.member_high)} | {ci(r.probe_f1, r.probe_low, r.probe_high)} | "
                     f"{'–' if pd.isna(r.gap) else f'{r.gap:+.3f}'} | {outcome} | "
                     f"{'–' if pd.isna(r.steps) else int(r.steps)} | {r.train_s:.0f} |")
    return "\n".join(lines)


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Test balanced macro-F1 against training-set size: one panel per (variant, member), the member per change
    (solid, hue) and its probe (dashed, black; it does not depend on the training change), 95 % intervals as
    error bars; several seeds are averaged (points and bounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    ok = frame[frame["verdict"] != "failed"]
    if ok.empty:
        log.warning("no finished run to plot")
        return
    sns.set_theme(style="whitegrid", context="paper")
    panels = list(dict.fromkeys(zip(ok["variant"], ok["member"])))
    changes = list(dict.fromkeys(ok["change"]))
    palette = dict(zip(changes, sns.color_palette("colorblind", len(changes))))
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False, sharey=True)
    cols_mean = ["member_f1", "member_low", "member_high", "probe_f1", "probe_low", "probe_high"]
    for ax, (variant, member) in zip(axes.flat, panels):
        part = ok[(ok["variant"] == variant) & (ok["member"] == member)]
        mean = part.groupby(["change", "train_utterances"], sort=True)[cols_mean].mean().reset_index()
        for i, change in enumerate(changes):
            c = mean[mean["change"] == change].copy()
            if c.empty:
                continue
            # changes side by side around each size (a few % apart on the log axis), so their bars do not overlap
            c["x"] = c["train_utterances"] * (1 + 0.04 * (i - (len(changes) - 1) / 2))
            sns.lineplot(c, x="x", y="member_f1", ax=ax, color=palette[change], marker="o",
                         label=f"member, {change}", errorbar=None)
            ax.errorbar(c["x"], c["member_f1"],
                        yerr=[c["member_f1"] - c["member_low"], c["member_high"] - c["member_f1"]],
                        fmt="none", ecolor=palette[change], capsize=3, linewidth=1)
        probe = mean.groupby("train_utterances")[cols_mean[3:]].first().reset_index()
        ax.errorbar(probe["train_utterances"], probe["probe_f1"],
                    yerr=[probe["probe_f1"] - probe["probe_low"], probe["probe_high"] - probe["probe_f1"]],
                    color="black", linestyle="--", marker="s", markersize=4, capsize=3, linewidth=1.2,
                    label="linear probe")
        classes = part["classes"].dropna()
        if len(classes):
            ax.axhline(1 / classes.iloc[0], color="grey", linewidth=0.8, linestyle=":", label="chance")
        sizes = sorted(set(part["train_utterances"]))
        if len(sizes) > 1:
            ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_title(f"{variant} · {member}")
        ax.set_xlabel("training utterances")
        ax.set_ylabel("test balanced macro-F1")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def summary_lines(frame: pd.DataFrame) -> list[str]:
    """One line per (variant, change): how many runs are below their probe, and the mean gap."""
    lines = []
    for (variant, change), part in frame.groupby(["variant", "change"], sort=False):
        ok = part[part["verdict"] != "failed"]
        failed = len(part) - len(ok)
        lines.append(f"- {variant} / {change}: {(ok['verdict'] == 'below').sum()} of {len(ok)} runs below their "
                     f"probe, mean gap {ok['gap'].mean():+.3f}" + (f"; {failed} failed" if failed else ""))
    return lines


def _load_words(frame: pd.DataFrame, load: str) -> str:
    """The 1-minute load average before the first run and the range before all of them (recorded per run; the
    runs side by side add about one each), or, for results without it, before this invocation."""
    firsts = [float(str(v).split()[0]) for v in frame["load_at_start"] if v and str(v)[0].isdigit()]
    if len(firsts) == len(frame) and firsts:
        first = frame.loc[(frame["finished_at"] - frame["train_s"]).idxmin(), "load_at_start"]
        return (f"load average before the first run {first} ({busy(first)}); 1-minute load before each run "
                f"{min(firsts):.2f}-{max(firsts):.2f} (the benchmark's own runs included)")
    return f"load average when this invocation started {load} ({busy(load)})"


def report_section(frame: pd.DataFrame, variants: dict[str, VariantData], command: str, wall_s: float, load: str,
                   params: Any, figure: Path, csv: Path, changes: dict[str, dict[str, Any] | None]) -> str:
    import torch

    from _common import device_name
    from medusa.features.batches import pick_device

    t = params.train
    about = "; ".join(f"`{v.name}`: {v.about}" for v in variants.values())
    trained = frame["train_s"].sum()
    # the span from the first run's start to the last run's end: the set's wall time, also when this invocation
    # only reused finished runs
    span = (frame["finished_at"] - frame["train_s"]).min(), frame["finished_at"].max()
    reused = int(frame["reused"].sum())
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(span[0]))
    return "\n".join([
        REPORT_SECTION, "",
        f"Command: `{command}` (after `dvc repro` of the demo)", "",
        f"- Device: {device_name(pick_device(t.device))}; torch {torch.__version__}; " + _load_words(frame, load) + ".",
        f"- params.yaml `train`: hidden {t.hidden}, {t.layers} layers, {t.heads} heads, dropout {t.dropout}, "
        f"pool {dict(t.pool)}, standardise {t.standardise}, epoch_steps {t.epoch_steps}, stage1/2 epochs "
        f"{t.stage1_epochs}/{t.stage2_epochs}, patience {t.patience}, batch {t.batch_size}, lr {t.lr:g}, "
        f"{t.threads} thread(s) per run; probe C {t.baseline_c}.",
        f"- Variants: {about}.",
        "- Changes (train overrides relative to params.yaml and the member's own): " + "; ".join(
            f"`{c}` " + ("no pooling" if c == "pool1" and changes.get(c) is None else json.dumps(changes.get(c) or {}))
            for c in dict.fromkeys(frame["change"])) + ".",
        "- Training sets: nested, label-stratified, seeded subsamples of the train split (dev and test unchanged). "
        "Scores: test balanced macro-F1 with its class-stratified bootstrap 95 % interval, member and probe over "
        "the same test utterances. *member vs probe*: `above` = member >= probe; `within` = the probe is below the "
        "member's upper bound (the issue's criterion: passes); `below` = the probe is above the member's upper "
        "bound; `(one class)`: the member predicts one class for every test utterance (balanced macro-F1 "
        "2/(k(k+1)) for k classes, 0.028 with 8). *steps*: optimizer steps taken (early stopping included). *train s*: wall seconds of `train_member` (data, training, prediction, writing); runs went "
        "side by side, one torch thread each.",
        f"- Runs: {len(frame)}, trained from {when} UTC over {span[1] - span[0]:.0f} s wall (first start to last "
        f"end), {trained:.0f} s of training in all; this invocation {wall_s:.0f} s"
        + (f", {reused} of the runs reused from earlier invocations" if reused else "") + f". Figure `{figure}`, "
        f"every number in `{csv}`.", "",
        markdown_table(frame), "",
        *summary_lines(frame), ""])


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                    help="training-set sizes (train utterances; beyond the split = all of it)")
    ap.add_argument("--members", nargs="+", default=list(DEFAULT_MEMBERS), help="entries of params.yaml `models`")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--changes", nargs="+", default=None,
                    help=f"names ({', '.join(CHANGES)}) or NAME={{yaml train overrides}}; default: per variant "
                         f"{DEFAULT_PLAN}")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="model seeds, replacing each member's own (default: the member's seed in params)")
    ap.add_argument("--data-seed", type=int, default=0, help="seed of the subsamples and the synthetic variants")
    ap.add_argument("--workers", type=int, default=2, help="runs trained side by side (processes)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--manifest", type=Path, default=Path("work/manifest.parquet"))
    ap.add_argument("--features", type=Path, default=Path("work/features"))
    ap.add_argument("--work", type=Path, default=Path("work/learning"),
                    help="built variants, member folders and result JSONs (never the demo's own files)")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks.md"))
    ap.add_argument("--figure", type=Path, default=Path("reports/benchmark_figures/learning.png"))
    ap.add_argument("--csv", type=Path, default=Path("reports/metrics/learning.csv"))
    ap.add_argument("--retry-failed", action="store_true", help="train again the runs whose result is an error")
    ap.add_argument("--dry-run", action="store_true", help="build the variants and list the runs; train nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from medusa.config.params import load_params

    for path in (args.manifest, args.features):
        if not path.exists():
            raise SystemExit(f"{path}: not found; run `dvc repro` first (this script reads a finished demo run)")
    if args.work.resolve() == args.features.resolve() or args.features.resolve() in args.work.resolve().parents:
        raise SystemExit("--work must not be inside --features: the demo's stores are never written")
    params = load_params(args.params)
    manifest = pd.read_parquet(args.manifest)
    load, start = load_average(), time.perf_counter()
    jobs, variants, changes = plan_jobs(args, params, manifest, args.features, args.work)
    if args.dry_run:
        for job in jobs:
            print(job.key, "done" if job.result_path.is_file() else "to train")
        return pd.DataFrame()
    results = run_all(jobs, args.workers, args.retry_failed)
    frame = results_frame(results)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.csv, index=False)
    plot(frame, args.figure)
    command = "python benchmarks/learning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = report_section(frame, variants, command.strip(), time.perf_counter() - start, load, params,
                             args.figure, args.csv, changes)
    print(section)
    write_section(args.out, REPORT_SECTION, section)
    return frame


if __name__ == "__main__":
    main()
