"""DeepSER training throughput and peak memory: our training loop vs the authors' way, in one run.

    python benchmarks/train.py [--size small|full] [--device auto|cpu|cuda] [--utterances N] [--steps N]
                               [--mixes wavlm,hubert,roberta whisper,wavlm,modernbert]
                               [--ways ours,authors] [--out reports/benchmarks.md]

Both ways train the same DeepSER (`medusa.model.deepser`, deep fusion, same initial weights) with the same loss and
optimizer (`medusa.model.training.train_step`: AdamW, soft-target CE with stage-1 class weights + attribute MSE,
Manifold MixUp p 0.3, gradient clipping) for the same number of optimizer steps, on the same synthetic frame
features (one set of arrays per utterance and feature, written once in each way's format):

* ours: the features in float16 feature stores (`medusa.features.store.writer.FeatureStoreWriter`), read through
  `medusa.model.dataset.FeatureDataset` (memmap, per-batch padding, key-padding masks, masked pooling), batches from
  `medusa.model.dataset.bucketed` (length buckets), bf16 autocast on GPU (`TrainConfig.amp`).
* the authors' way (re-implemented from the paper's description): one float32 `.npy` file per utterance and
  feature, `np.load`ed for every sample of every step, batches in random order (no length buckets), every
  feature zero-padded to the longest in the batch and no masks (all-True masks: padding frames are attended to
  and pooled, as in their code), fp32 throughout.
* ours fp32 (only with `--ways ...,ours-fp32,...`): ours without autocast, to isolate what bf16 brings on a GPU.

Sequence lengths follow the paper's features: WavLM-large / HuBERT-large / the Whisper-large-v3 encoder at 50
frames/s (1024 / 1024 / 1280 dims), RoBERTa-large / ModernBERT-large at 3 tokens/s plus 2 special tokens
(1024 dims), for utterances of MSP-Podcast-like durations (uniform in 2.75-11 s, seeded); by default the feature
mixes of Table 1's models 2 (WavLM + HuBERT + RoBERTa) and 14 (Whisper + WavLM + ModernBERT). `--size full` is the
paper's DeepSER (hidden 1024, FFN 4096, 16 heads, batch 16) at 50 frames/s and is meant for a GPU; `--size
small` (the CPU default) is the same structure scaled down (hidden 256, 4 heads, audio at 10 frames/s) so that
it finishes in a few minutes on 2 cores. The script prints a table and writes the "## DeepSER training" section
of the report: reports/benchmarks/train.json, which benchmarks/report.py renders with the other sections.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars from anything the training code imports

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere, installed package or not
if str(REPO / "benchmarks") not in sys.path:  # _common, when this file is imported rather than run
    sys.path.insert(1, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import report  # noqa: E402  benchmarks/report.py: the Markdown
import torch  # noqa: E402
from _common import Measurement, busy, cpu_memory_method, device_name, load_average, measure  # noqa: E402
from train_data import (  # noqa: E402
    FEATURES,
    MAX_S,
    MIN_S,
    PAPER_AUDIO_FPS,
    SIZES,
    SPECIAL_TOKENS,
    TABLE1_MODELS,
    TOKENS_PER_S,
    Feature,
    Size,
    make_rows,
    write_features,
)

from medusa.config.params import load_params  # noqa: E402
from medusa.features.batches import pick_device  # noqa: E402
from medusa.features.store.reader import FeatureStore  # noqa: E402
from medusa.labels import ATTRIBUTES, SOFT_TARGET_COLUMNS, class_weights  # noqa: E402
from medusa.model.dataset import Batch, FeatureDataset, bucketed, scale_attributes  # noqa: E402
from medusa.model.deepser import DeepSER, DeepSERConfig, count_parameters  # noqa: E402
from medusa.model.training import TrainConfig, train_step  # noqa: E402

SECTION = "train"                   # reports/benchmarks/train.json
REPORT_SECTION = "## DeepSER training"
CPU_NOT_INCLUDED = ("model weights and AdamW state (allocated by the warm-up step) are not included; ours "
                    "includes the feature-store pages its memmap maps in (file-backed, reclaimable)")


DEFAULT_MIXES = ("wavlm,hubert,roberta", "whisper,wavlm,modernbert")
DEFAULT_WAYS = ("ours", "authors")  # `--ways` names among WAYS (below), timed in that order


# ------------------------------------------------------------------------------------------------ training


@dataclass
class MethodResult:
    method: str
    measurement: Measurement
    samples: int
    steps: int
    padded_frames: int               # sum over timed steps and features of batch size x longest in the batch
    real_frames: int                 # sum over timed steps of the utterances' own frames
    final_loss: float


def forever(make_epoch: Callable[[], list[np.ndarray]]) -> Iterator[np.ndarray]:
    """Batches of row indices, epoch after epoch (each epoch drawn afresh), for as many steps as asked."""
    while True:
        yield from make_epoch()


def new_model(model_cfg: DeepSERConfig, seed: int, device: torch.device,
              train_cfg: TrainConfig) -> tuple[DeepSER, torch.optim.Optimizer]:
    """The same initial weights for both ways (seeded), and the optimizer medusa.model.training uses."""
    torch.manual_seed(seed)
    model = DeepSER(model_cfg).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    return model, optimizer


def timed_training(method: str, model: DeepSER, optimizer: torch.optim.Optimizer, batches: Iterator[Batch],
                   steps: int, weights: torch.Tensor, cfg: TrainConfig, rng: np.random.Generator,
                   device: torch.device, lengths: dict[str, dict[str, int]]) -> MethodResult:
    """One untimed warm-up step (kernels, allocator, AdamW state), then `steps` timed steps, each loading its
    batch inside the timed region."""
    train_step(model, optimizer, next(batches), weights, cfg, rng, device)
    samples = padded = real = 0
    loss = float("nan")
    with measure(device) as m:
        for _ in range(steps):
            batch = next(batches)
            loss = train_step(model, optimizer, batch, weights, cfg, rng, device)
            samples += len(batch.utt_ids)
            padded += sum(x.shape[0] * x.shape[1] for x in batch.xs)
            real += sum(per_utt[u] for per_utt in lengths.values() for u in batch.utt_ids)
    if not math.isfinite(loss):
        raise RuntimeError(f"{method}: the loss is {loss} after {steps} steps")
    return MethodResult(method, m, samples, steps, padded, real, loss)


def run_ours(work: Path, rows: pd.DataFrame, features: list[Feature], model_cfg: DeepSERConfig, size: Size,
             args: argparse.Namespace, device: torch.device, weights: torch.Tensor,
             lengths: dict[str, dict[str, int]], amp: bool = True) -> MethodResult:
    cfg = paper_recipe(size, amp=amp, seed=args.seed)
    stores = [FeatureStore(work / "stores" / f.key) for f in features]
    data = FeatureDataset(rows, stores, [1] * len(stores))  # no time pooling: the frames as the paper has them
    rng = np.random.default_rng(args.seed)
    every_row = np.arange(len(data))
    index_batches = forever(lambda: bucketed(every_row, data.lengths, cfg.batch_size, rng))
    batches = (data.batch(idx) for idx in index_batches)
    model, optimizer = new_model(model_cfg, args.seed, device, cfg)
    return timed_training("ours" if amp else "ours fp32", model, optimizer, batches, size.steps, weights, cfg, rng,
                          device, lengths)


def run_ours_fp32(*args, **kwargs) -> MethodResult:
    """Ours without autocast (fp32 on a GPU too): the bf16-vs-fp32 comparison of the same pipeline."""
    return run_ours(*args, **kwargs, amp=False)


def authors_batch(idx: np.ndarray, utt_ids: np.ndarray, npy_dirs: list[Path], targets: np.ndarray,
                  attributes: np.ndarray) -> Batch:
    """A batch the authors' way: every sample's .npy loaded from disk, each feature zero-padded to the longest
    in the batch, and masks that call every frame real (their model had none)."""
    ids = [str(u) for u in utt_ids[idx]]
    xs, masks = [], []
    for folder in npy_dirs:
        seqs = [np.load(folder / f"{u}.npy") for u in ids]
        t = max(len(s) for s in seqs)
        x = np.zeros((len(seqs), t, seqs[0].shape[1]), dtype=np.float32)
        for j, s in enumerate(seqs):
            x[j, :len(s)] = s
        xs.append(torch.from_numpy(x))
        masks.append(torch.ones((len(seqs), t), dtype=torch.bool))
    return Batch(xs, masks, torch.from_numpy(targets[idx]), torch.from_numpy(attributes[idx]), ids)


def run_authors(work: Path, rows: pd.DataFrame, features: list[Feature], model_cfg: DeepSERConfig, size: Size,
                args: argparse.Namespace, device: torch.device, weights: torch.Tensor,
                lengths: dict[str, dict[str, int]]) -> MethodResult:
    cfg = paper_recipe(size, amp=False, seed=args.seed)  # fp32: no autocast
    npy_dirs = [work / "npy" / f.key for f in features]
    utt_ids = rows["utt_id"].to_numpy()
    targets = rows[list(SOFT_TARGET_COLUMNS)].to_numpy(dtype=np.float32)
    attributes = scale_attributes(rows[list(ATTRIBUTES)].to_numpy(dtype=np.float32))
    rng = np.random.default_rng(args.seed)
    n, bs = len(rows), cfg.batch_size

    def shuffled_epoch() -> list[np.ndarray]:  # a DataLoader with shuffle=True: random order, no buckets
        order = rng.permutation(n)
        return [order[i:i + bs] for i in range(0, n, bs)]

    batches = (authors_batch(idx, utt_ids, npy_dirs, targets, attributes) for idx in forever(shuffled_epoch))
    model, optimizer = new_model(model_cfg, args.seed, device, cfg)
    return timed_training("authors'", model, optimizer, batches, size.steps, weights, cfg, rng, device, lengths)


WAYS: dict[str, Callable[..., MethodResult]] = {"ours": run_ours, "ours-fp32": run_ours_fp32, "authors": run_authors}


def parse_ways(text: str) -> tuple[str, ...]:
    ways = tuple(w.strip() for w in text.split(",") if w.strip())
    unknown = [w for w in ways if w not in WAYS]
    if not ways or unknown or len(set(ways)) != len(ways):
        raise argparse.ArgumentTypeError(f"{text!r}: name each of {', '.join(WAYS)} at most once, comma-separated")
    return ways


# ------------------------------------------------------------------------------------------------ one mix


@dataclass
class Row:
    mix: str
    method: str
    samples_per_s: float
    speed_up: float
    step_s: float
    real_frames: float               # per step
    padded_frames: float             # per step
    peak_mb: float
    wall_s: float
    final_loss: float

    @property
    def padding(self) -> float:
        return 1.0 - self.real_frames / self.padded_frames if self.padded_frames else 0.0


@dataclass
class MixResult:
    mix: str
    model: str                       # the DeepSER built, in words
    params: int
    full_params: int                 # the same mix at the paper's dims
    frames: str                      # mean frames per utterance of each feature, in words
    rows: list[Row] = field(default_factory=list)


def parse_mix(text: str) -> list[Feature]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in FEATURES]
    if not keys or unknown:
        raise SystemExit(f"--mixes {text!r}: name features among {', '.join(FEATURES)}, comma-separated")
    return [FEATURES[k] for k in keys]


def paper_recipe(size: Size, amp: bool, seed: int) -> TrainConfig:
    """The paper preset's training recipe (configs/paper.yaml: lr, MixUp, loss weights ...) at this size's batch."""
    return TrainConfig.of(load_params(REPO / "configs" / "paper.yaml").train, seed, batch_size=size.batch_size, amp=amp)


def model_config(features: list[Feature], size: Size) -> DeepSERConfig:
    return DeepSERConfig(input_dims=tuple(f.dim for f in features), hidden=size.hidden, layers=size.layers,
                         heads=size.heads, dropout=0.1, ff_mult=size.ff_mult, fusion="deep")


def describe_model(cfg: DeepSERConfig, features: list[Feature], n_params: int) -> str:
    n = len(features)
    return (f"DeepSER, deep fusion: {n} unimodal + 2 fusion ENCs over {'+'.join(f.name for f in features)} "
            f"({'/'.join(str(f.dim) for f in features)} d in), hidden {cfg.hidden}, {cfg.layers} layers per ENC, "
            f"{cfg.heads} heads, FFN {cfg.ff_mult * cfg.hidden}; {n_params / 1e6:.1f} M params")


def full_size_params(features: list[Feature]) -> int:
    """Parameters of the paper-size DeepSER for these features, built on the meta device (no memory, no time)."""
    with torch.device("meta"):
        return count_parameters(DeepSER(model_config(features, SIZES["full"])))


def bench_mix(mix: str, size: Size, args: argparse.Namespace, device: torch.device, work: Path) -> MixResult:
    """Train the same DeepSER on the same synthetic features both ways; the core of the benchmark."""
    features = parse_mix(mix)
    label = "+".join(f.key for f in features)
    folder = work / label
    rows, durations = make_rows(size.utterances, args.seed)
    lengths = write_features(folder, rows, durations, features, size.audio_fps, args.seed)
    model_cfg = model_config(features, size)
    # Stage 1's class weights from the soft-target mass, as medusa.model.training.train_deepser computes them.
    mass = np.nansum(rows[list(SOFT_TARGET_COLUMNS)].to_numpy(dtype=np.float64), axis=0)
    weights = torch.tensor(class_weights(mass), dtype=torch.float32, device=device)

    with torch.device("meta"):
        n_params = count_parameters(DeepSER(model_cfg))
    frames = ", ".join(f"{f.key} {np.mean(list(lengths[f.key].values())):.0f}" for f in features)
    result = MixResult(label, describe_model(model_cfg, features, n_params), n_params, full_size_params(features),
                       frames)

    runs = []
    for run in (WAYS[way] for way in getattr(args, "ways", DEFAULT_WAYS)):
        runs.append(run(folder, rows, features, model_cfg, size, args, device, weights, lengths))
        gc.collect()  # the model and AdamW state of one way are gone before the other way starts
        if device.type == "cuda":
            torch.cuda.empty_cache()
    shutil.rmtree(folder, ignore_errors=True)  # at full size a mix's features take gigabytes
    per_sample = {r.method: r.measurement.wall_s / r.samples for r in runs}
    authors = per_sample.get("authors'")  # speed-ups are against the authors' way (nan when it did not run)
    for r in runs:
        result.rows.append(Row(
            label, r.method, r.samples / r.measurement.wall_s,
            authors / per_sample[r.method] if authors else float("nan"), r.measurement.wall_s / r.steps,
            r.real_frames / r.steps, r.padded_frames / r.steps, r.measurement.peak_mb, r.measurement.wall_s,
            r.final_loss))
    return result


# ------------------------------------------------------------------------------------------------- report


def table(rows: list[Row]) -> dict:
    return report.table(
        ["features", "method", "samples per s", "speed-up", "s per step", "frames per step, real / padded", "padding",
         "peak memory (MB)"], "llrrrrrr",
        [[r.mix, r.method, f"{r.samples_per_s:.1f}", f"{r.speed_up:.2f}×", f"{r.step_s:.2f}",
          f"{r.real_frames:,.0f} / {r.padded_frames:,.0f}", f"{100 * r.padding:.0f} %", f"{r.peak_mb:.0f}"]
         for r in rows])


def console_table(rows: list[Row]) -> str:
    w = max([len("features"), *(len(r.mix) for r in rows)])
    head = (f"{'features':<{w}} {'method':<9} {'samples/s':>10} {'speed-up':>9} {'s/step':>7} {'real fr':>8} "
            f"{'padded fr':>10} {'padding':>8} {'peak MB':>8} {'loss':>7}")
    body = [f"{r.mix:<{w}} {r.method:<9} {r.samples_per_s:>10.2f} {r.speed_up:>8.2f}x {r.step_s:>7.2f} "
            f"{r.real_frames:>8.0f} {r.padded_frames:>10.0f} {100 * r.padding:>7.0f}% {r.peak_mb:>8.0f} "
            f"{r.final_loss:>7.3f}" for r in rows]
    return "\n".join([head, "-" * len(head), *body])


def report_section(args: argparse.Namespace, size: Size, device: torch.device, results: list[MixResult],
                   total_s: float, load: str, argv: list[str]) -> report.Doc:
    """The section as a document (benchmarks/report.py renders it)."""
    rows = [r for res in results for r in res.rows]
    cmd = "python benchmarks/train.py" + "".join(f" {a}" for a in argv)
    memory = ("torch.cuda.max_memory_allocated during the timed steps (weights, gradients and AdamW state "
              "included)" if device.type == "cuda" else cpu_memory_method(CPU_NOT_INCLUDED))
    threads = f"{torch.get_num_threads()} intra-op thread(s)"
    dims = (f"hidden {size.hidden}, {size.layers} transformer layers per ENC, {size.heads} heads, FFN "
            f"{size.ff_mult * size.hidden}, dropout 0.1, batch {size.batch_size}")
    if args.size == "full":
        size_text = f"the paper's DeepSER: {dims}; features at their real frame rates"
    else:
        size_text = (f"the paper's structure scaled down for a CPU: {dims}; audio features at {size.audio_fps:g} "
                     f"frames/s instead of {PAPER_AUDIO_FPS}, since the fusion ENCs attend over all features at "
                     "once and attention cost grows with the square of the summed lengths")
    audio_rate = f"{size.audio_fps:g} frames/s"
    used = list({f.key: f for mix in args.mixes for f in parse_mix(mix)}.values())
    return report.doc(REPORT_SECTION[3:], [
        report.text(f"Command: `{cmd}`"),
        report.bullets([
            f"Device: {device_name(device)}; torch {torch.__version__}; {threads}"
            + (f"; load average at start {load} ({busy(load)})" if device.type == "cpu" else ""),
            f"Size: `{args.size}`, {size_text}.",
            *[f"Model ({res.mix}{', ' + TABLE1_MODELS[res.mix] if res.mix in TABLE1_MODELS else ''}): "
              f"{res.model}; at the paper's dims (hidden 1024, 16 heads, FFN 4096) the same mix "
              f"has {res.full_params / 1e6:.1f} M params." for res in results],
            f"Data: {size.utterances} synthetic utterances per mix, durations uniform in {MIN_S}–{MAX_S} s "
            f"(seed {args.seed}); " + ", ".join(
                f"{f.name} {f.dim} d at " + (audio_rate if f.kind == "audio" else
                                             f"{TOKENS_PER_S:g} tokens/s + {SPECIAL_TOKENS} special tokens")
                for f in used) + "; random N(0, 1) frames. Mean frames per utterance: "
            + "; ".join(f"{res.mix}: {res.frames}" for res in results) + ".",
            "Ours: float16 feature stores (`FeatureStoreWriter`), `FeatureDataset` (memmap, padding per batch, "
            "key-padding masks, masked pooling, no time pooling), `bucketed` length buckets, `train_step` with "
            "`TrainConfig(amp=True)`" + (" (bf16 autocast)" if device.type == "cuda" else " (autocast is CUDA-only: "
                                          "fp32 here, like the authors')") + ".",
            "Authors' (re-implemented from the paper's description): one float32 `.npy` per utterance and feature, "
            "`np.load`ed for every sample of every step; random batches (no length buckets); every feature "
            "zero-padded to the longest in the batch; all-True masks (padding attended to and pooled, as without "
            "masks); fp32 (`amp=False`).",
            *(["Ours fp32: ours with `TrainConfig(amp=False)` (no autocast), to isolate what bf16 brings."]
              if "ours-fp32" in args.ways else []),
            f"Both: the same frames, the same initial weights (seed {args.seed}) and the same `train_step` (AdamW "
            "lr 1e-5, weight decay 0.01, gradient clipping 1.0, soft-target CE ×1.5 with stage-1 class weights + "
            "attribute MSE ×0.4, Manifold MixUp p 0.3); one untimed warm-up step, then "
            f"{size.steps} timed optimizer steps each, batch loading included (page cache warm for both); samples "
            "per s = samples of the timed steps / wall seconds (time.perf_counter"
            + (", CUDA synchronised" if device.type == "cuda" else "") + "); speed-up = the authors' wall time per "
            "sample / ours.",
            "Frames per step: summed over features; real = the utterances' own frames, padded = batch size × "
            "longest in the batch (what the model computes on); padding = 1 − real / padded.",
            f"Peak memory: {memory}.",
            f"Whole run (writing the features, building the models, both ways): {total_s:.0f} s wall."]),
        table(rows),
        report.text("Wall seconds of the timed steps: "
                    + "; ".join(f"{r.mix} {r.method} {r.wall_s:.1f} s" for r in rows) + "."),
        report.text("Both ways meet the batch of the longest utterances (one length bucket holds them), so length "
                    "buckets cut the padded frames of an average step, not of the largest one: expect the time per "
                    "step to drop with the padding, the peak memory much less."),
        report.text("GPU: none was lent to this session. GPU figures still to be measured with "
                    "`python benchmarks/train.py --size full --device cuda`.") if device.type == "cpu" else None])


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("small", "full"), default=None,
                   help="small: scaled-down DeepSER (default on CPU); full: the paper's dims (default on GPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--mixes", nargs="+", default=list(DEFAULT_MIXES),
                   help=f"feature mixes, each comma-separated among {', '.join(FEATURES)} "
                        f"(default: {' '.join(DEFAULT_MIXES)})")
    p.add_argument("--ways", type=parse_ways, default=DEFAULT_WAYS,
                   help="ways to time, comma-separated among ours, ours-fp32 (ours without autocast), authors "
                        "(default ours,authors; speed-ups are against authors when it runs)")
    p.add_argument("--utterances", type=int, default=None, help="synthetic utterances per mix (default by size)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps per way (default by size)")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (the paper's)")
    p.add_argument("--hidden", type=int, default=None, help="DeepSER width (default: 256 small, 1024 full)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default: 4 small, 16 full)")
    p.add_argument("--fps", type=float, default=None, help="audio frames per second (default: 10 small, 50 full)")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks.md", help="report to update")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on CPU, so that a busy machine gives steadier "
                        "numbers; torch's default on GPU)")
    p.add_argument("--force", action="store_true",
                   help="time --size full on CPU too (minutes per step); without it the script only builds the "
                        "full model there and prints its parameter count")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def resolve_size(args: argparse.Namespace) -> Size:
    """The size's defaults with whatever the command line overrides."""
    base = SIZES[args.size]
    overrides = {k: v for k, v in (("utterances", args.utterances), ("steps", args.steps),
                                   ("batch_size", args.batch_size), ("hidden", args.hidden),
                                   ("heads", args.heads), ("audio_fps", args.fps)) if v is not None}
    size = replace(base, **overrides)
    if size.utterances < size.batch_size or size.steps < 1:
        raise SystemExit(f"need at least one full batch ({size.batch_size} utterances) and one step, got "
                         f"{size.utterances} utterances and {size.steps} steps")
    return size


def main(argv: list[str] | None = None) -> list[Row]:
    """Run the benchmark, print the table, write the report section; returns the table's rows."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = pick_device(args.device)
    args.size = args.size or ("full" if device.type == "cuda" else "small")
    size = resolve_size(args)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    mixes = list(args.mixes)
    for mix in mixes:
        parse_mix(mix)  # fail before any work
    warnings.filterwarnings("ignore")  # e.g. nested-tensor notices from nn.TransformerEncoderLayer
    load = load_average()

    if args.size == "full" and device.type == "cpu" and not args.force:
        # A real build, not the meta device: this is the model a GPU run trains.
        for mix in mixes:
            features = parse_mix(mix)
            torch.manual_seed(args.seed)
            model = DeepSER(model_config(features, size))
            print(describe_model(model.cfg, features, count_parameters(model)))
            del model
        print("Timing --size full on CPU takes minutes per step: run `python benchmarks/train.py --size full "
              "--device cuda` on a GPU (or add --force). The report was not changed.")
        return []

    start = time.perf_counter()
    print(f"device {device_name(device)}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"size {args.size} (hidden {size.hidden}, {size.heads} heads, batch {size.batch_size}, audio "
          f"{size.audio_fps:g} frames/s), {size.utterances} utterances, {size.steps} timed steps", flush=True)
    results: list[MixResult] = []
    with tempfile.TemporaryDirectory(prefix="medusa-bench-train-") as tmp:
        for mix in mixes:
            t0 = time.perf_counter()
            res = bench_mix(mix, size, args, device, Path(tmp))
            results.append(res)
            print(f"{res.mix}: {res.params / 1e6:.1f} M params ({res.full_params / 1e6:.1f} M at the paper's dims); "
                  + ", ".join(f"{r.method} {r.samples_per_s:.2f} samples/s ({r.speed_up:.2f}x)" for r in res.rows)
                  + f"; {time.perf_counter() - t0:.0f} s with writing the features", flush=True)
    total_s = time.perf_counter() - start

    rows = [r for res in results for r in res.rows]
    print()
    print(console_table(rows))
    print(f"\nwhole run: {total_s:.0f} s")
    report.publish(report_section(args, size, device, results, total_s, load, argv), SECTION, args.out)
    print(f"wrote the '{REPORT_SECTION[3:]}' section of {args.out}")
    return rows


if __name__ == "__main__":
    main()
