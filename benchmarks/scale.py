"""Scale simulation of an MSP-Podcast-size run, without the neural work: wall time and peak memory per step as N grows.

    python benchmarks/scale.py [--sizes 10000 40000 116000] [--dim 16] [--full-dim-utterances 640]
                               [--out reports/benchmarks.md] [--tmp-dir /tmp] [--seed 0]

For each corpus size N, a synthetic corpus in the MSP-Podcast challenge layout (Labels/labels_consensus.csv,
Labels/labels_detailed.csv, Transcripts/, Audios/) goes through the pipeline's own non-neural code, step by step,
each step timed with its peak memory (benchmarks/_common.measure, plus a sampled peak of anonymous memory):

1. manifest: medusa.data.corpora.manifest.prepare_corpus with configs/paper.yaml's `prepare` section and the audio check
   on (check_audio=True): every wav header is read. The wav files are sparse: a real 44-byte PCM16 header declaring
   the clip's samples, the data a hole (the file has its full size and no disk blocks), so the headers, sizes and
   durations are those of real clips.
2. feature stores: the stores of Table 1's model 2 (WavLM + HuBERT + RoBERTa), written with FeatureStoreWriter the
   way medusa.features.extract writes them (work list in utt_id order, length batches of the paper's encoder settings, a
   flush per batch), at 50 frames per second of each clip (audio) and 1.3 tokens per word + 2 special tokens (text), at a reduced dim (`--dim`, default 16) instead of 1024; then opened (FeatureStore).
3. FeatureDataset over the train rows and the three stores (pool 1 each: the paper preset's `pool: {}`), one stage-1
   epoch of training batches (medusa.model.training._epoch_batches: the loop's own bucketed sampler, batch 16, and
   FeatureDataset.batch for every batch: arrays, masks, tensors; no model), and the per-epoch evaluation's loading
   (medusa.model.training.predict over dev and test, batch 64, with a model that returns zeros).
4. the ensemble (notebook 05's calls): medusa.ensemble.meta.run_subset for the subsets all 14 / top-7 / top-5 with the
   preset's `ensemble` section (6 seeds, 30 epochs, batch 128; the probes passed, as the notebook does, so each
   subset also trains the other include_probes soup: 12 meta-classifiers per subset), ensemble_posteriors of the
   soup, then technique_table (Table 3) with report.bootstrap resamples, on synthetic posteriors of 14 members and
   their probes for every dev, test and blind utterance.
5. the report's bootstraps: every member's and probe's test scores (members.score_test_split /
   classification_scores_of, as train_member writes metrics.json), the 20 ablation runs' own, Table 1's average
   interval (reports.mean_interval), Table 2 (ablation.table2 over 24 runs), and the findings' paired intervals
   (reports.vote_frames, reports.paired_change x 2).

The generated data is not timed. Once, at the largest N, a subset of train rows (`--full-dim-utterances`) is
written again at the real dims (1024) and its batches are loaded with a cold and a warm page cache, so that the
per-batch loading cost at full dim is measured, not guessed; the GPU compute per batch is estimated from FLOPs.
The disk of every store at full dims follows by arithmetic (frames x dim x 2 bytes, float16). Everything lives in
a temporary folder under --tmp-dir, removed at the end. The script prints a table and replaces the
"## Scale simulation (MSP-Podcast size, no neural work)" section of --out (other sections are kept).
"""
from __future__ import annotations

import argparse
import csv
import gc
import math
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars from the pipeline code

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere, installed package or not
if str(REPO / "benchmarks") not in sys.path:  # _common, when this file is imported rather than run
    sys.path.insert(1, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from medusa.reporting import ablation, reports  # noqa: E402
from medusa.ensemble import meta as ensemble
from medusa.model import members
from medusa.features.batches import length_batches  # noqa: E402
from medusa.data.corpora.manifest import prepare_corpus  # noqa: E402
from medusa.model.dataset import PREFETCH_BATCHES, PREFETCH_THREADS, FeatureDataset  # noqa: E402
from medusa.features.store import DTYPE, FRAMES_FILE, FeatureStore, FeatureStoreWriter  # noqa: E402
from medusa.labels import ATTRIBUTES, CODES, EMOTION_OF, target_columns  # noqa: E402
from medusa.scoring.metrics import balanced_macro_f1, run_classes  # noqa: E402
from medusa.config.params import REFERENCE_VARIANT, Params, PrepareParams, load_params  # noqa: E402
from medusa.model.training import TrainConfig, _epoch_batches, predict  # noqa: E402

from _common import busy, cpu_memory_method, device_name, load_average, measure, write_section  # noqa: E402

REPORT_SECTION = "## Scale simulation (MSP-Podcast size, no neural work)"
PRESET = REPO / "configs" / "paper.yaml"
DEFAULT_SIZES = (10000, 40000, 116000)
CPU = torch.device("cpu")
SAMPLE_RATE = 16000

# ------------------------------------------------------------------------------------- the simulated corpus
#: Clip durations: log-normal with a mean of ~6 s, clipped to 2-12 s (MSP-Podcast's segments).
DURATION_MEDIAN_S, DURATION_SIGMA, DURATION_RANGE_S = 5.6, 0.4, (2.0, 12.0)
WORDS_PER_S, TOKENS_PER_WORD, SPECIAL_TOKENS = 2.7, 1.3, 2
AUDIO_FPS = 50                       # WavLM, HuBERT and the Whisper encoder: one frame per 20 ms
#: Consensus labels (MSP-Podcast-like imbalance; O: Other wins, X: no agreement).
CONSENSUS_PRIOR = {"N": 0.29, "H": 0.16, "A": 0.07, "S": 0.07, "C": 0.05, "U": 0.03, "D": 0.02, "F": 0.015,
                   "O": 0.02, "X": 0.275}
#: Split_Set shares of the labelled audio; the rest of the audio (blind) has no label row, like Test3.
SPLIT_SHARES = {"Train": 0.70, "Development": 0.22}
BLIND_SHARE = 0.08
UTTERANCES_PER_SPEAKER = 40
ANNOTATORS = (5, 7)
OTHER_WORDS = ("Bored", "Curious", "Tired", "Concerned")
VOCABULARY = tuple(f"w{i}" for i in range(800))

# ------------------------------------------------------------------------------------------- the features
#: key -> (model, dim at the paper's scale, kind). Whisper's encoder gives 50 frames/s of the clip's own length
#: (whisper_pad_seconds 0); ModernBERT is counted at RoBERTa's tokens per word.
FULL_DIMS = {"wavlm": ("WavLM-large", 1024, "audio"), "hubert": ("HuBERT-large", 1024, "audio"),
             "whisper": ("Whisper-large-v3 encoder", 1280, "audio"), "roberta": ("RoBERTa-large", 1024, "text"),
             "modernbert": ("ModernBERT-large", 1024, "text")}
MODEL = ("wavlm", "hubert", "roberta")   # Table 1's model 2 (m02)
MODEL_NAME = "m02"
POOL_SPARE = 4096                        # random frames beyond the longest utterance's, for random offsets

# --------------------------------------------------------------------------------------------------- steps
STEP_MANIFEST = "manifest (prepare_corpus)"
STEP_WRITE = "stores: write 3 (FeatureStoreWriter)"
STEP_OPEN = "stores: open 3 (FeatureStore)"
STEP_DATASET = "FeatureDataset (train rows)"
STEP_EPOCH = "epoch: stage-1 train batches"
STEP_EVAL = "epoch: dev + test eval batches"
STEP_META = "ensemble: run_subset x3 + soup posteriors"
STEP_TABLE3 = "ensemble: technique_table (Table 3)"
STEP_REPORT = "report: Tables 1-2 + findings bootstraps"
STEPS = (STEP_MANIFEST, STEP_WRITE, STEP_OPEN, STEP_DATASET, STEP_EPOCH, STEP_EVAL, STEP_META, STEP_TABLE3,
         STEP_REPORT)
#: A step whose cost per utterance grows more than this from the smallest to the largest N is flagged.
GROWTH_FLAG = 1.5
RAM_TARGET_GB = 8.0

# --------------------------------------------------------------------------------------- the GPU estimate
#: H100 SXM, dense bf16 tensor-core peak (NVIDIA's datasheet: 1,979 TFLOP/s with 2:4 sparsity, half without).
GPU_NAME, GPU_PEAK_TFLOPS, GPU_UTILISATION = "H100 SXM", 989.0, 0.40
CPU_NOT_INCLUDED = ("what earlier steps left in memory is not included; file pages of the feature stores that the "
                    "memmaps map in are (file-backed, reclaimable)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                   help="corpus sizes N, utterances (default 10000 40000 116000)")
    p.add_argument("--dim", type=int, default=16, help="feature width of the simulated stores (default 16)")
    p.add_argument("--full-dim-utterances", type=int, default=640,
                   help="train utterances written at the real dims at the largest N, to time loading at full dim "
                        "(default 640; 0: skip)")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks.md", help="report to update")
    p.add_argument("--tmp-dir", type=Path, default=Path(tempfile.gettempdir()),
                   help="where the temporary folder is made (default the system's, e.g. /tmp)")
    p.add_argument("--preset", type=Path, default=PRESET, help="params of the simulated run (configs/paper.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--gpu-tflops", type=float, default=GPU_PEAK_TFLOPS,
                   help=f"GPU dense bf16 peak for the compute estimate (default {GPU_PEAK_TFLOPS:g}, {GPU_NAME})")
    p.add_argument("--gpu-utilisation", type=float, default=GPU_UTILISATION,
                   help=f"share of that peak a DeepSER step reaches (default {GPU_UTILISATION:g})")
    args = p.parse_args(argv)
    if any(n < 100 for n in args.sizes) or args.dim < 1 or args.full_dim_utterances < 0:
        p.error("--sizes must be >= 100 each, --dim >= 1, --full-dim-utterances >= 0")
    if not 0 < args.gpu_utilisation <= 1:
        p.error("--gpu-utilisation must be in (0, 1]")
    args.sizes = sorted(set(args.sizes))
    return args


# ------------------------------------------------------------------------------------ memory, in a thread


def _status_mb(field_name: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class AnonPeak:
    """The peak of the process's anonymous memory (RssAnon: heap, arrays; not the file pages a memmap maps in),
    sampled every `interval` seconds in a thread while the block runs."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak_mb = interval, 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _status_mb("RssAnon"))
            self._stop.wait(self.interval)

    def __enter__(self) -> "AnonPeak":
        self.peak_mb = _status_mb("RssAnon")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _status_mb("RssAnon"))


@dataclass
class StepRow:
    step: str
    n: int                 # corpus size (utterances)
    rows: int              # rows the step works on (e.g. train rows)
    wall_s: float
    peak_mb: float         # peak RSS above the RSS at the step's start (_common.measure)
    hwm_mb: float          # the process's peak RSS during the step (VmHWM), absolute
    anon_mb: float         # the process's peak anonymous memory during the step (sampled), absolute

    @property
    def s_per_1k(self) -> float:
        return 1000 * self.wall_s / self.n


#: Steps that read and build without side effects and take well under a second at 10k: timed REPEATS times, the
#: fastest kept (one run of a 0.04 s step is mostly noise from the machine and Python's garbage collector).
REPEATS = 3


def timed(rows: list[StepRow], step: str, n: int, n_rows: int, run: Callable[[], object], repeats: int = 1) -> object:
    """Run `run()` under _common.measure and AnonPeak (`repeats` times: the fastest wall time, the largest peaks);
    record a StepRow; return what the last run returned."""
    row = StepRow(step, n, n_rows, float("inf"), 0.0, 0.0, 0.0)
    for _ in range(repeats):
        out = None
        with measure(CPU) as m, AnonPeak() as anon:
            out = run()
        row.wall_s, row.peak_mb = min(row.wall_s, m.wall_s), max(row.peak_mb, m.peak_mb)
        row.hwm_mb, row.anon_mb = max(row.hwm_mb, _status_mb("VmHWM")), max(row.anon_mb, anon.peak_mb)
    rows.append(row)
    print(f"  N={n:>7,}  {step:<42} {row.wall_s:8.2f} s  peak +{row.peak_mb:7.0f} MB  (RSS peak {row.hwm_mb:6.0f} MB, "
          f"anon {row.anon_mb:6.0f} MB)", flush=True)
    return out


# ------------------------------------------------------------------------------------- synthetic corpus


def sparse_wav(path: Path, n_samples: int) -> None:
    """A 16 kHz mono PCM16 wav of n_samples whose data is a hole: a real header, the full file size, no blocks."""
    data = 2 * n_samples
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1, SAMPLE_RATE,
                         2 * SAMPLE_RATE, 2, 16, b"data", data)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data)


def durations(n: int, rng: np.random.Generator) -> np.ndarray:
    """Clip durations in seconds: log-normal (median 5.6 s, sigma 0.4: mean ~6 s), clipped to 2-12 s."""
    return np.clip(rng.lognormal(math.log(DURATION_MEDIAN_S), DURATION_SIGMA, n), *DURATION_RANGE_S)


def _votes(label: str, n: int, rng: np.random.Generator) -> list[str]:
    """Primary votes (codes, or O) of n annotators whose plurality is `label` (X: a tie between two classes)."""
    others = [c for c in CODES if c != label]
    if label == "X":
        a, b, *rest = (str(c) for c in rng.permutation(list(CODES)))
        return [a, a, b, b, *rest[: n - 4]]  # every other code once: the top two tie
    top = n // 2 + 1
    return [label] * top + [str(c) for c in rng.choice(others + ["O"], n - top)]


def write_corpus(root: Path, n: int, seed: int) -> dict[str, float]:
    """An MSP-Podcast-layout corpus of n utterances (sparse wav files); returns a few of its figures."""
    rng = np.random.default_rng([seed, n])
    for sub in ("Audios", "Labels", "Transcripts"):
        (root / sub).mkdir(parents=True)
    n_blind = round(BLIND_SHARE * n)
    n_labelled = n - n_blind
    n_speakers = max(24, n_labelled // UTTERANCES_PER_SPEAKER)
    share = rng.lognormal(0.0, 0.8, n_speakers)  # podcasts are uneven: some speakers talk much more
    per_speaker = rng.multinomial(n_labelled, share / share.sum())
    # whole speakers to Train until ~70 % of the labelled clips, the rest to Development (speaker-disjoint)
    cut = SPLIT_SHARES["Train"] / sum(SPLIT_SHARES.values())
    cumulative = np.cumsum(per_speaker) / n_labelled
    split_of_speaker = np.where(cumulative <= cut, "Train", "Development")
    split_of_speaker[0], split_of_speaker[-1] = "Train", "Development"
    codes = list(CONSENSUS_PRIOR)
    prior = np.asarray([CONSENSUS_PRIOR[c] for c in codes])
    dur = durations(n, rng)
    words = np.maximum(1, np.rint(WORDS_PER_S * dur * rng.uniform(0.8, 1.2, n))).astype(int)
    labels = rng.choice(codes, n_labelled, p=prior / prior.sum())
    names = []
    with open(root / "Labels" / "labels_consensus.csv", "w", newline="") as fc, \
            open(root / "Labels" / "labels_detailed.csv", "w", newline="") as fd:
        consensus, detailed = csv.writer(fc, lineterminator="\n"), csv.writer(fd, quoting=csv.QUOTE_ALL,
                                                                            lineterminator="\n")
        consensus.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        detailed.writerow(["FileName", "EmoDetail"])
        i = 0
        for s, count in enumerate(per_speaker):
            for k in range(count):
                name = f"MSP-PODCAST_{s + 1:04d}_{k + 1:04d}.wav"
                names.append(name)
                votes = _votes(str(labels[i]), int(rng.integers(ANNOTATORS[0], ANNOTATORS[1] + 1)), rng)
                avd = rng.integers(1, 8, (len(votes), 3))
                for w, (vote, (a, v, d)) in enumerate(zip(votes, avd)):
                    primary = f"Other-{OTHER_WORDS[w % len(OTHER_WORDS)]}" if vote == "O" else EMOTION_OF[vote]
                    detailed.writerow([name, f"WORKER{int(rng.integers(1, 3000)):05d}{w}; {primary}; ; "
                                             f"A:{a:.1f}; V:{v:.1f}; D:{d:.1f};"])
                mean = avd.mean(0)
                consensus.writerow([name, labels[i], f"{mean[0]:.4f}", f"{mean[1]:.4f}", f"{mean[2]:.4f}", s + 1,
                                    "Female" if s % 2 else "Male", split_of_speaker[s]])
                i += 1
    names += [f"MSP-PODCAST_test3_{b + 1:06d}.wav" for b in range(n_blind)]
    vocabulary = np.asarray(VOCABULARY)
    for name, seconds, count in zip(names, dur, words):
        sparse_wav(root / "Audios" / name, int(round(seconds * SAMPLE_RATE)))
        text = " ".join(vocabulary[rng.integers(0, len(vocabulary), count)])
        (root / "Transcripts" / (name[:-4] + ".txt")).write_text(text + "\n", encoding="utf-8")
    return {"hours": float(dur.sum() / 3600), "speakers": n_speakers, "blind": n_blind}


# ------------------------------------------------------------------------------------------ feature stores


def audio_frames(duration_s: np.ndarray) -> np.ndarray:
    return np.maximum(1, (np.asarray(duration_s) * AUDIO_FPS).astype(np.int64))


def text_tokens(texts: pd.Series) -> np.ndarray:
    words = texts.fillna("").str.split().str.len().to_numpy()
    return np.rint(TOKENS_PER_WORD * words).astype(np.int64) + SPECIAL_TOKENS


def store_bytes(frames: int, dim: int) -> int:
    """Size of a store's frames file: frames x dim x 2 bytes (float16); index and meta are a few MB at most."""
    return int(frames) * int(dim) * DTYPE.itemsize


@dataclass
class StorePlan:
    """What extraction would write for one encoder: the work list (utt_id order) and its batches."""
    key: str
    ids: list[str]
    frames: np.ndarray                 # per utterance, in `ids` order
    batches: list[list[int]]
    offsets: np.ndarray                # where each utterance's random frames start in the frame pool


def plan_store(key: str, items: pd.DataFrame, params: Params, rng: np.random.Generator) -> StorePlan:
    """medusa.features.extract's plan for the encoder `key`: items in utt_id order, audio batched by duration (batch_size,
    batch_seconds of the preset), text by transcript length (as plan_batches)."""
    items = items.sort_values("utt_id").reset_index(drop=True)
    ids = list(items["utt_id"])
    enc = params.encoders[key]
    if FULL_DIMS[key][2] == "audio":
        frames = audio_frames(items["duration_s"])
        batches = length_batches(ids, [float(d) for d in items["duration_s"]], enc.batch_size, enc.batch_seconds)
    else:
        frames = text_tokens(items["ref_text"])
        batches = length_batches(ids, [len(t) for t in items["ref_text"].fillna("")], enc.batch_size)
    offsets = rng.integers(0, POOL_SPARE + 1, len(ids))
    return StorePlan(key, ids, frames, batches, offsets)


def write_store(root: Path, plan: StorePlan, pool: np.ndarray) -> None:
    """The I/O of medusa.features.extract.extract_to_store with the encoder left out: add each batch's utterances (float32
    frames, made float16 by the writer), flush after every batch."""
    with FeatureStoreWriter(root, pool.shape[1], {"family": plan.key, "model": "synthetic"}) as writer:
        for batch in plan.batches:
            for i in batch:
                writer.add(plan.ids[i], pool[plan.offsets[i]:plan.offsets[i] + plan.frames[i]])
            writer.flush()


def frame_pool(dim: int, longest: int, seed: int) -> np.ndarray:
    """Random N(0, 1) float32 frames that utterances take slices of (generated once, not timed): each takes its
    frames from a random offset in [0, POOL_SPARE]."""
    return np.random.default_rng([seed, dim]).standard_normal((longest + POOL_SPARE, dim), dtype=np.float32)


# ------------------------------------------------------------------------------------- the loading path


class ZeroModel(torch.nn.Module):
    """Stands in for DeepSER in medusa.model.training.predict: records each batch's shape and returns zeros."""

    def __init__(self, n_classes: int):
        super().__init__()
        self.cfg = SimpleNamespace(n_classes=n_classes, n_attributes=len(ATTRIBUTES))
        self.shapes: list[tuple[int, list[int]]] = []

    def forward(self, xs: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        b = xs[0].shape[0]
        self.shapes.append((b, [x.shape[1] for x in xs]))
        return torch.zeros(b, self.cfg.n_classes), torch.zeros(b, self.cfg.n_attributes)


def load_batches(data: FeatureDataset, batches: list[np.ndarray]) -> list[tuple[int, list[int]]]:
    """FeatureDataset.batch for every batch (arrays, masks, tensors), as the training loop asks for them; the shape
    (batch size, padded frames per modality) of each."""
    shapes = []
    for idx in batches:
        b = data.batch(idx)
        shapes.append((len(idx), [x.shape[1] for x in b.xs]))
    return shapes


def deepser_forward_flops(batch: int, frames: list[int], dims: list[int], hidden: int, layers: int, ff_mult: int,
                          n_outputs: int) -> float:
    """Forward FLOPs (2 per multiply-add) of DeepSER with deep fusion on one padded batch (medusa.model.deepser): per
    modality an ENC (input MLP d_in->h->h, `layers` transformer layers) over its padded frames; fusion 1 over their
    concatenation, fusion 2 over twice that; the fusion and head layers. A transformer layer costs per frame
    (4 + 2 ff_mult) h^2 multiply-adds in its projections and 2 T h in attention over T frames (key padding is
    masked, not skipped, so padded frames count). Layer norms, softmax, dropout: left to the utilisation factor."""
    h = hidden

    def enc(t: int, d_in: int) -> float:
        per_frame = (d_in * h + h * h) + layers * ((4 + 2 * ff_mult) * h * h + 2 * t * h)
        return 2.0 * batch * t * per_frame

    total = sum(enc(t, d) for t, d in zip(frames, dims))
    concat = sum(frames)
    total += enc(concat, h) + enc(2 * concat, h)
    total += 2.0 * batch * ((len(frames) + 1) * h * h + h * n_outputs)
    return total


@dataclass
class FullDim:
    """Loading at the real dims on a subset of train rows (largest N)."""
    utterances: int
    batches: int
    write_s: float
    write_mb: float
    cold_ms: float          # per batch, page cache dropped for the frames files first
    warm_ms: float          # per batch, the same batches again
    prefetch_ms: float      # per batch, cold again, through FeatureDataset.batches (threads loading ahead)
    mb_per_batch: float     # float16 bytes read per batch (real frames)


def evict(path: Path) -> None:
    """Drop a file's clean pages from the page cache (posix_fadvise DONTNEED; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def full_dim_check(work: Path, manifest: pd.DataFrame, params: Params, n_utts: int, cfg: TrainConfig, seed: int
                   ) -> FullDim:
    """Write `n_utts` train rows' stores at the real dims, then load one pass of the loop's bucketed batches over
    them with a cold page cache and once more warm."""
    train = manifest[manifest["split"] == "train"]
    rows = train.sample(n=min(n_utts, len(train)), random_state=seed).sort_values("utt_id")
    rng = np.random.default_rng([seed, 1024])
    start, written = time.perf_counter(), 0
    for key in MODEL:
        dim = FULL_DIMS[key][1]
        plan = plan_store(key, rows, params, rng)
        pool = frame_pool(dim, int(plan.frames.max()), seed)
        write_store(work / key, plan, pool)
        written += store_bytes(plan.frames.sum(), dim)
        del pool
    write_s = time.perf_counter() - start
    for key in MODEL:
        evict(work / key / FRAMES_FILE)
    stores = [FeatureStore(work / key) for key in MODEL]
    data = FeatureDataset(rows, stores, [1] * len(MODEL))
    batches = _epoch_batches(1, data, cfg, np.random.default_rng(seed))
    per_batch = []
    for _ in ("cold", "warm"):
        t0 = time.perf_counter()
        load_batches(data, batches)
        per_batch.append(1000 * (time.perf_counter() - t0) / len(batches))
    for key in MODEL:
        evict(work / key / FRAMES_FILE)
    t0 = time.perf_counter()
    for _ in data.batches(batches):   # what the training loop iterates: batches loaded ahead in threads
        pass
    per_batch.append(1000 * (time.perf_counter() - t0) / len(batches))
    read = sum(store_bytes(s.n_frames, s.dim) for s in stores)
    return FullDim(len(rows), len(batches), write_s, written / 2**20, per_batch[0], per_batch[1], per_batch[2],
                   read / 2**20 / len(rows) * cfg.batch_size)


# ------------------------------------------------------------------------------- synthetic member outputs


def synthetic_posteriors(manifest: pd.DataFrame, classes: tuple[str, ...], names: list[str], splits: tuple[str, ...],
                         seed: int, skill: tuple[float, float], attributes: bool) -> dict[str, pd.DataFrame]:
    """{name: posteriors frame} as members write them (utt_id, split, label, p_<code>, arousal..dominance): a
    softmax of N(0, 1) logits plus a per-member `skill` on the consensus class (where it is one of the run's)."""
    rows = manifest.loc[manifest["split"].isin(splits), ["utt_id", "split", "label"]].reset_index(drop=True)
    lookup = {c: i for i, c in enumerate(classes)}
    truth = np.array([lookup.get(x, -1) for x in rows["label"]])
    known = truth >= 0
    out = {}
    for k, name in enumerate(names):
        rng = np.random.default_rng([seed, k, int(attributes)])
        logits = rng.standard_normal((len(rows), len(classes)))
        logits[np.flatnonzero(known), truth[known]] += rng.uniform(*skill)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        frame = rows.copy()
        frame[list(target_columns(classes))] = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
        frame[list(ATTRIBUTES)] = rng.uniform(1, 7, (len(rows), 3)).astype(np.float32) if attributes else np.nan
        out[name] = frame
    return out


@dataclass
class Outputs:
    posteriors: dict[str, pd.DataFrame]
    probes: dict[str, pd.DataFrame]
    singles: pd.DataFrame
    ablations: dict[tuple[str, str], pd.DataFrame]


def member_outputs(manifest: pd.DataFrame, params: Params, seed: int) -> Outputs:
    classes = run_classes(manifest)
    names = params.ensemble.members or list(params.models)
    scored = ("dev", "test", "blind")
    posteriors = synthetic_posteriors(manifest, classes, names, scored, seed, (1.0, 2.0), True)
    probes = synthetic_posteriors(manifest, classes, names, scored, seed + 1, (0.6, 1.4), False)
    singles = pd.DataFrame({"dev_balanced_macro_f1": [
        balanced_macro_f1(f.loc[f["split"] == "dev", "label"], members.predicted_labels(f[f["split"] == "dev"]),
                          classes) for f in posteriors.values()]}, index=pd.Index(names, name="member"))
    runs = [f"{v}/{m}" for v in params.ablate.variants for m in params.ablate.models]
    frames = synthetic_posteriors(manifest, classes, runs, ("test",), seed + 2, (0.8, 1.8), True)
    ablations = {tuple(key.split("/")): frame for key, frame in frames.items()}
    return Outputs(posteriors, probes, singles, ablations)


def run_ensemble(out: Outputs, manifest: pd.DataFrame, params: Params) -> tuple[dict, pd.DataFrame]:
    """Notebook 05: the meta-classifier config from `ensemble`, the subsets, run_subset each (probes passed), the
    soup's posteriors over the first subset."""
    e = params.ensemble
    names = list(out.singles.index)
    cfg = ensemble.MetaConfig.from_params(e, len(names))
    groups = ensemble.subsets(out.singles, e.top_k)
    results = {subset: ensemble.run_subset(out.posteriors, manifest, chosen, cfg, e.seeds, out.probes,
                                           anchor_grid=e.anchor_l2, cv_folds=e.cv_folds)
               for subset, chosen in groups.items()}
    soup = ensemble.ensemble_posteriors(out.posteriors, results[next(iter(groups))], probes=out.probes)
    return results, soup


def report_bootstraps(out: Outputs, soup: pd.DataFrame, manifest: pd.DataFrame, params: Params) -> int:
    """Every bootstrap interval of Tables 1-2 and the findings (notebook 06 and the metrics.json of each member and
    ablation run); returns how many systems were scored with intervals."""
    b, seed = params.report.bootstrap, params.report.seed
    classes = run_classes(manifest)
    names = list(out.singles.index)
    scored = 0
    test_f1 = {}
    for name in names:  # train_member: the member's and its probe's test scores (metrics.json)
        model_seed = params.models[name].seed
        test_f1[name] = members.score_test_split(manifest, out.posteriors[name], model_seed, b)["balanced_macro_f1"]
        members.classification_scores_of(out.probes[name], "test", classes, model_seed, b)
        scored += 2
    for (variant, model), frame in out.ablations.items():  # each ablation run's metrics.json
        members.score_test_split(manifest, frame, params.models[model].seed, b)
        scored += 1
    truth, predictions = ablation.aligned_test_predictions({n: out.posteriors[n] for n in names})
    reports.mean_interval(truth, list(predictions.values()), b, seed, classes)  # Table 1's AVG
    scored += 1
    models = {m: params.models[m].model_dump() for m in params.ablate.models}
    configs = ablation.configurations(params.ablate.models, models)
    runs = pd.DataFrame([{"variant": v, "model": m, "configuration": configs[m]}
                         for v in [REFERENCE_VARIANT, *params.ablate.variants] for m in params.ablate.models])
    frames = {(v, m): out.posteriors[m] if v == REFERENCE_VARIANT else out.ablations[(v, m)]
              for v, m in runs[["variant", "model"]].itertuples(index=False)}
    truth, predictions = ablation.aligned_test_predictions(frames)
    ablation.table2(runs, truth, predictions, b, seed, classes=classes)
    scored += len(frames)
    best = max(test_f1, key=test_f1.get)  # findings: MEDUSA against the best single member and the better vote
    votes = reports.vote_frames(out.posteriors, names)
    truth, systems = ablation.aligned_test_predictions({"MEDUSA": soup, best: out.posteriors[best], **votes})
    for other in (best, *reports.VOTES):
        reports.paired_change(truth, systems["MEDUSA"], systems[other], b, seed, classes)
    return scored + 3


# --------------------------------------------------------------------------------------------- one size


@dataclass
class SizeResult:
    n: int
    corpus: dict[str, float]
    splits: dict[str, int]
    classes: tuple[str, ...]
    store_frames: dict[str, int]        # frames per store of the simulated run (all utterances)
    epoch_shapes: list[tuple[int, list[int]]]
    eval_shapes: list[tuple[int, list[int]]]
    scored_systems: int = 0
    full_dim: FullDim | None = None


def run_size(n: int, work: Path, params: Params, args: argparse.Namespace, rows: list[StepRow],
             full_dim_utts: int) -> SizeResult:
    t0 = time.perf_counter()
    corpus = write_corpus(work / "corpus", n, args.seed)
    print(f"N={n:,}: corpus written in {time.perf_counter() - t0:.0f} s ({corpus['hours']:.0f} h of audio, "
          f"{corpus['speakers']:,} speakers; not timed)", flush=True)
    prepare = PrepareParams.model_validate({**params.prepare.model_dump(), "corpus": str(work / "corpus")})

    prepared = timed(rows, STEP_MANIFEST, n, n, lambda: prepare_corpus(prepare, work / "audio-cache"))
    manifest = prepared.manifest
    del prepared
    splits = manifest["split"].value_counts().to_dict()
    classes = run_classes(manifest)

    rng = np.random.default_rng([args.seed, n, 2])
    plans = [plan_store(key, manifest, params, rng) for key in MODEL]
    pool = frame_pool(args.dim, max(int(p.frames.max()) for p in plans), args.seed)
    timed(rows, STEP_WRITE, n, n, lambda: [write_store(work / "features" / p.key, p, pool) for p in plans])
    store_frames = {p.key: int(p.frames.sum()) for p in plans}
    del pool, plans

    stores = timed(rows, STEP_OPEN, n, n, lambda: [FeatureStore(work / "features" / key) for key in MODEL],
                   REPEATS)
    assert {k: s.n_frames for k, s in zip(MODEL, stores)} == store_frames
    train_rows = manifest[manifest["split"] == "train"]
    train = timed(rows, STEP_DATASET, n, len(train_rows),
                  lambda: FeatureDataset(train_rows, stores, [params.train.pool.get(k, 1) for k in MODEL],
                                         one_hot=params.train.targets == "one_hot"), REPEATS)
    cfg = TrainConfig.of(params.train, params.models[MODEL_NAME].seed)
    epoch_shapes = timed(rows, STEP_EPOCH, n, len(train),
                         lambda: load_batches(train, _epoch_batches(1, train, cfg, np.random.default_rng(cfg.seed))))
    evals = [FeatureDataset(part, stores, list(train.pools)) for s in ("dev", "test")
             if len(part := manifest[manifest["split"] == s])]
    model = ZeroModel(len(classes))
    timed(rows, STEP_EVAL, n, sum(len(d) for d in evals),
          lambda: [predict(model, d, 4 * cfg.batch_size, CPU, cfg.amp) for d in evals])
    del train, evals, stores
    gc.collect()
    shutil.rmtree(work / "features")

    outputs = member_outputs(manifest, params, args.seed)
    n_meta = splits.get("dev", 0) + splits.get("test", 0) + splits.get("blind", 0)
    results, soup = timed(rows, STEP_META, n, n_meta, lambda: run_ensemble(outputs, manifest, params))
    timed(rows, STEP_TABLE3, n, splits.get("test", 0),
          lambda: ensemble.technique_table(results, params.report.bootstrap, params.report.seed))
    del results
    scored = timed(rows, STEP_REPORT, n, splits.get("test", 0),
                   lambda: report_bootstraps(outputs, soup, manifest, params))
    del outputs, soup
    gc.collect()

    full = None
    if full_dim_utts:
        t0 = time.perf_counter()
        full = full_dim_check(work / "full-dim", manifest, params, full_dim_utts, cfg, args.seed)
        shutil.rmtree(work / "full-dim")
        print(f"N={n:,}: full-dim loading on {full.utterances} train rows ({full.batches} batches): cold "
              f"{full.cold_ms:.1f} ms/batch, warm {full.warm_ms:.1f} ms/batch, {full.mb_per_batch:.1f} MB read per "
              f"batch ({time.perf_counter() - t0:.0f} s)", flush=True)
    shutil.rmtree(work / "corpus")
    shutil.rmtree(work / "audio-cache", ignore_errors=True)
    return SizeResult(n, corpus, splits, classes, store_frames, epoch_shapes, model.shapes, scored, full)


# ------------------------------------------------------------------------------------------- the report


def growth(rows: list[StepRow], step: str) -> float:
    """Cost per utterance at the largest N over that at the smallest."""
    mine = sorted((r for r in rows if r.step == step), key=lambda r: r.n)
    return mine[-1].s_per_1k / mine[0].s_per_1k if mine[0].wall_s > 0 else float("nan")


def epoch_flops(shapes: list[tuple[int, list[int]]], params: Params, n_classes: int, training: bool) -> float:
    t = params.train
    dims = [FULL_DIMS[k][1] for k in MODEL]
    forward = sum(deepser_forward_flops(b, frames, dims, t.hidden, t.layers, t.ff_mult, n_classes + len(ATTRIBUTES))
                  for b, frames in shapes)
    return 3 * forward if training else forward  # backward ~ 2x forward


@dataclass
class Comparison:
    batches: int
    load_ms: float                 # per batch at the reduced dim, measured
    full_cold_ms: float | None     # per batch at full dims, measured on the subset
    full_warm_ms: float | None
    gpu_ms: float                  # per batch, estimated
    gpu_peak_ms: float             # per batch at 100 % of the peak (the fastest the GPU could be)
    tflop_per_batch: float
    eval_batches: int
    eval_load_ms: float
    eval_gpu_ms: float
    mean_frames: list[float]       # padded frames per modality, mean over the epoch's batches


def compare(res: SizeResult, rows: list[StepRow], params: Params, args: argparse.Namespace,
            full: FullDim | None) -> Comparison:
    epoch = next(r for r in rows if r.n == res.n and r.step == STEP_EPOCH)
    evals = next(r for r in rows if r.n == res.n and r.step == STEP_EVAL)
    throughput = args.gpu_tflops * 1e12
    train_flops = epoch_flops(res.epoch_shapes, params, len(res.classes), True)
    eval_flops = epoch_flops(res.eval_shapes, params, len(res.classes), False)
    k = len(res.epoch_shapes)
    return Comparison(
        k, 1000 * epoch.wall_s / k, full.cold_ms if full else None, full.warm_ms if full else None,
        1000 * train_flops / k / (throughput * args.gpu_utilisation), 1000 * train_flops / k / throughput,
        train_flops / k / 1e12, len(res.eval_shapes), 1000 * evals.wall_s / max(1, len(res.eval_shapes)),
        1000 * eval_flops / max(1, len(res.eval_shapes)) / (throughput * args.gpu_utilisation),
        [float(np.mean([f[m] for _, f in res.epoch_shapes])) for m in range(len(MODEL))])


def console_table(rows: list[StepRow], sizes: list[int]) -> str:
    head = f"{'step':<42}" + "".join(f" {'N=' + format(n, ','):>20}" for n in sizes) + f" {'growth':>7}"
    lines = [head, f"{'':<42}" + "".join(f" {'s':>9} {'peak MB':>10}" for _ in sizes), "-" * len(head)]
    for step in STEPS:
        cells = "".join(f" {r.wall_s:>9.2f} {r.peak_mb:>10.0f}" for n in sizes for r in rows
                        if r.step == step and r.n == n)
        lines.append(f"{step:<42}{cells} {growth(rows, step):>6.2f}x")
    return "\n".join(lines)


def num(x: float) -> str:
    """A positive figure with enough digits to stay positive: 1,234 / 12.3 / 1.23 / 0.0123."""
    return f"{x:,.0f}" if x >= 1000 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3g}"


def shown(path: Path) -> str:
    """A path relative to the repository where it is inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def fmt_n(n: int) -> str:
    return f"{n / 1000:g}k" if n >= 1000 and n % 100 == 0 else f"{n:,}"


def disk_rows(results: list[SizeResult]) -> list[str]:
    """Markdown rows: each paper store's frames file at full dim, per N (frames counted from the simulated run)."""
    lines = []
    for key, (model, dim, kind) in FULL_DIMS.items():
        source = "wavlm" if kind == "audio" else "roberta"
        cells = []
        for res in results:
            frames = res.store_frames[source]
            cells.append(f"{frames / 1e6:,.2f} M | {store_bytes(frames, dim) / 1e9:,.2f}")
        lines.append(f"| {key} ({model}) | {dim} | {kind} | " + " | ".join(cells) + " |")
    return lines


def report_section(args: argparse.Namespace, argv: list[str], rows: list[StepRow], results: list[SizeResult],
                   cmp: Comparison, total_s: float, load: str, params: Params) -> str:
    sizes = [r.n for r in results]
    small, large = results[0], results[-1]
    cmd = "python benchmarks/scale.py" + "".join(f" {a}" for a in argv)
    by = {(r.step, r.n): r for r in rows}
    table = ["| Step | " + " | ".join(f"N={fmt_n(n)} s | N={fmt_n(n)} MB" for n in sizes) + " |",
             "|---|" + "---:|---:|" * len(sizes)]
    table += [f"| {step} | " + " | ".join(f"{num(by[step, n].wall_s)} | {by[step, n].peak_mb:.0f}" for n in sizes)
              + " |" for step in STEPS]
    total = {n: sum(by[s, n].wall_s for s in STEPS) for n in sizes}
    table.append("| **all steps** | " + " | ".join(f"**{total[n]:.1f}** | – " for n in sizes) + "|")
    per_k = ["| Step | rows worked on at N=" + fmt_n(large.n) + " | "
             + " | ".join(f"s per 1k utt, N={fmt_n(n)}" for n in sizes)
             + f" | growth {fmt_n(small.n)} → {fmt_n(large.n)} |",
             "|---|---:|" + "---:|" * len(sizes) + "---:|"]
    flagged = []
    for step in STEPS:
        g = growth(rows, step)
        flag = f" **> {GROWTH_FLAG}x**" if g > GROWTH_FLAG else ""
        if flag:
            flagged.append(step)
        per_k.append(f"| {step} | {by[step, large.n].rows:,} | "
                     + " | ".join(num(by[step, n].s_per_1k) for n in sizes) + f" | {g:.2f}x{flag} |")
    hwm = max(r.hwm_mb for r in rows if r.n == large.n)
    anon = max(r.anon_mb for r in rows if r.n == large.n)
    worst = max((r for r in rows if r.n == large.n), key=lambda r: r.peak_mb)
    splits = ", ".join(f"{s} {large.splits.get(s, 0):,}" for s in ("train", "dev", "test", "blind"))
    t = params.train
    e = params.ensemble
    full = large.full_dim
    lines = [
        REPORT_SECTION, "",
        f"Command: `{cmd}`", "",
        f"- Machine: {device_name(CPU)}; torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s); "
        f"load average at start {load} ({busy(load)}). Whole run (generating the corpora, every step, the full-dim "
        f"check, cleaning up): {total_s:.0f} s wall.",
        f"- Simulated corpus (params {shown(args.preset)}, "
        f"seed {args.seed}): N utterances in the MSP-Podcast layout, {100 * BLIND_SHARE:.0f} % of them blind audio "
        f"(no label row), {SPLIT_SHARES['Train']:.0%} Train and {SPLIT_SHARES['Development']:.0%} Development "
        f"by whole speakers (~"
        f"{UTTERANCES_PER_SPEAKER} clips per speaker, log-normal shares); durations log-normal (median "
        f"{DURATION_MEDIAN_S:g} s, sigma {DURATION_SIGMA:g}) clipped to {DURATION_RANGE_S[0]:g}-{DURATION_RANGE_S[1]:g} s; "
        f"consensus mix " + ", ".join(f"{c} {p:.1%}" for c, p in CONSENSUS_PRIOR.items())
        + f"; {ANNOTATORS[0]}-{ANNOTATORS[1]} annotators per clip in labels_detailed.csv; transcripts of "
        f"{WORDS_PER_S:g} words/s. At N={fmt_n(large.n)}: {large.corpus['hours']:.0f} h of audio, "
        f"{large.corpus['speakers']:,} speakers; manifest splits {splits} (test: the preset's 90/10 "
        f"speaker-disjoint cut of Train); classes {' '.join(large.classes)}.",
        "- Audio: sparse wav files (a real 16 kHz PCM16 header, the data a hole), so `prepare_corpus` runs with "
        "its audio check on (`check_audio=True`: every header read, sizes checked, durations taken from the "
        "headers), as on the real corpus; the MSP layout needs the files in `Audios/` (it lists them), so "
        "`check_audio=False` would not spare them.",
        f"- Stores: WavLM and HuBERT at {AUDIO_FPS} frames per second of each clip, RoBERTa at {TOKENS_PER_WORD:g} "
        f"tokens per word + {SPECIAL_TOKENS}, **at dim {args.dim} instead of 1024** (the frame counts are the real "
        "ones; bytes, and the time of moving them, scale with the dim: see the full-dim check below); written as "
        "`medusa.features.extract` writes them (utt_id order, length batches of the preset's encoder settings, a flush per "
        "batch; the writer keeps the frames in add order and never rewrites them), with the encoder left out. Every store holds every utterance of the manifest.",
        f"- Dataset and epoch: `FeatureDataset` over the train rows of {len(MODEL)} stores (Table 1's model 2, "
        f"{' + '.join(MODEL)}; pool 1, the preset's `pool: {{}}`); one stage-1 epoch = "
        f"`medusa.model.training._epoch_batches` (the loop's bucketed sampler, batch {t.batch_size}) and "
        "`FeatureDataset.batch` for every batch (arrays, masks, torch tensors), no model; the evaluation every epoch "
        f"runs (`medusa.model.training.predict` over dev and test, batch {4 * t.batch_size}) with a model that returns "
        "zeros.",
        f"- Ensemble: synthetic posteriors of {len(params.models)} members and their probes for every dev, test and "
        f"blind utterance (softmax of N(0, 1) logits plus a per-member bonus on the consensus class); notebook 05's "
        f"calls: `run_subset` for all {len(params.models)} / " + " / ".join(f"top-{k}" for k in e.top_k)
        + f" ({len(e.seeds)} seeds, {e.epochs} epochs, batch {e.batch_size}; with the probes passed, as the notebook "
        f"does, each subset also trains the other `include_probes` soup: {2 * len(e.seeds)} meta-classifiers per "
        f"subset), `ensemble_posteriors`, then `technique_table` with {params.report.bootstrap} resamples.",
        f"- Report: {large.scored_systems} systems scored with {params.report.bootstrap} class-stratified resamples "
        f"each: the {len(params.models)} members' and their probes' test scores (`score_test_split`, "
        f"`classification_scores_of`, as `train_member` writes metrics.json), the "
        f"{len(params.ablate.variants) * len(params.ablate.models)} ablation runs' own, Table 1's average "
        f"(`reports.mean_interval`), Table 2 (`ablation.table2` over "
        f"{(len(params.ablate.variants) + 1) * len(params.ablate.models)} runs), and the findings' paired intervals "
        "(`reports.paired_change`: MEDUSA against the best member and the two votes).",
        f"- Time: wall seconds (time.perf_counter) of the step alone, one run (opening the stores and building the "
        f"dataset: the fastest of {REPEATS}); the synthetic data is made before it, untimed (and torch's one-time "
        "import of its compiler, ~3 s at the first optimizer, before the first size). "
        f"Peak memory (MB in the table): {cpu_memory_method(CPU_NOT_INCLUDED)}.",
        "",
        *table,
        "",
        "Time per 1,000 utterances of the corpus (every step is divided by N, whatever rows it works on, so that a "
        f"linear step reads the same at every N); growth = the figure at N={fmt_n(large.n)} over the one at "
        f"N={fmt_n(small.n)}, flagged above {GROWTH_FLAG}x:",
        "",
        *per_k,
        "",
        ("No step's cost per utterance grows by more than " + f"{GROWTH_FLAG}x" + " from "
         + f"N={fmt_n(small.n)} to N={fmt_n(large.n)}: every step is linear in N (to within fixed costs and noise)."
         if not flagged else f"Flagged (cost per utterance up by more than {GROWTH_FLAG}x): {', '.join(flagged)}."),
        "",
        f"**Memory at N={fmt_n(large.n)}**: the process's peak RSS over all steps was {hwm / 1024:.2f} GB and its peak "
        f"anonymous memory (RssAnon, sampled every 10 ms: heap and arrays, not the store pages its memmaps map in) "
        f"{anon / 1024:.2f} GB, against a target of {RAM_TARGET_GB:g} GB: "
        f"{'met' if max(hwm, anon) / 1024 <= RAM_TARGET_GB else '**not met**'}. This one process holds more than any "
        f"stage would (the manifest and every earlier step's leftovers), so these are upper bounds. The largest rise "
        f"within a step was {worst.peak_mb:,.0f} MB ({worst.step}).",
        "",
    ]
    lines += epoch_paragraph(cmp, full, large, params, args)
    lines += [
        "",
        f"**Disk per feature store at full dims** (frames file: frames x dim x 2 bytes, float16; frame counts of the "
        f"simulated corpora: audio {AUDIO_FPS} frames/s of every clip, the Whisper encoder counted alike; text "
        f"{TOKENS_PER_WORD:g} tokens/word + {SPECIAL_TOKENS}, ModernBERT counted as RoBERTa; index and meta add a few "
        "MB). Every store holds every utterance (train, dev, test, blind):",
        "",
        "| Store | dim | kind | " + " | ".join(f"N={fmt_n(n)} frames | N={fmt_n(n)} GB" for n in sizes) + " |",
        "|---|---:|---|" + "---:|---:|" * len(sizes),
        *disk_rows(results),
        "",
    ]
    gb = {key: store_bytes(large.store_frames["wavlm" if kind == "audio" else "roberta"], dim) / 1e9
          for key, (_, dim, kind) in FULL_DIMS.items()}
    lines += [f"At N={fmt_n(large.n)} the five stores take {num(sum(gb.values()))} GB (the audio ones "
              f"{num(gb['wavlm'])}, {num(gb['hubert'])} and {num(gb['whisper'])} GB, the text ones "
              f"{num(gb['roberta'])} and {num(gb['modernbert'])} GB); the writer appends frames once and never "
              "rewrites them, so writing a store needs its own size, no more.", ""]
    return "\n".join(lines)


def gpu_training_device(report: Path) -> str | None:
    """The device line of the report's `## DeepSER training` section when it names a GPU (None: no section, or a
    CPU run, which is all benchmarks/train.py has measured so far)."""
    text = report.read_text(encoding="utf-8") if report.is_file() else ""
    section = text.split("## DeepSER training", 1)[1].split("\n## ", 1)[0] if "## DeepSER training" in text else ""
    device = next((line for line in section.splitlines() if line.startswith("- Device:")), "")
    return device.removeprefix("- Device:").split(";")[0].strip() if device and "(CPU)" not in device else None


def epoch_paragraph(cmp: Comparison, full: FullDim | None, large: SizeResult, params: Params,
                    args: argparse.Namespace) -> list[str]:
    t = params.train
    gpu = args.gpu_tflops * args.gpu_utilisation
    measured = gpu_training_device(args.out)
    dims = " / ".join(str(FULL_DIMS[k][1]) for k in MODEL)
    frames = " / ".join(f"{f:.0f}" for f in cmp.mean_frames)
    lines = [
        f"**Epoch data path against GPU compute** (N={fmt_n(large.n)}, {cmp.batches:,} training batches of "
        f"{t.batch_size}, {cmp.eval_batches:,} evaluation batches of {4 * t.batch_size}). "
        + (f"The report's `## DeepSER training` section has a GPU measurement ({measured}): compare with it; here "
           if measured else "The report has no GPU measurement of DeepSER training (its `## DeepSER training` "
           "section is a CPU run at reduced size), so ")
        + f"the GPU side is an **estimate** from FLOPs: DeepSER of Table 1's model 2 at the preset's size (hidden "
        f"{t.hidden}, {t.layers} layers per ENC, FFN {t.ff_mult}x, deep fusion; inputs {dims} d) on the epoch's own "
        f"padded batches (mean padded frames per modality {frames}), 2 FLOPs per multiply-add, backward = 2x forward, "
        f"on an {GPU_NAME} at {args.gpu_tflops:g} TFLOP/s dense bf16 and an assumed {args.gpu_utilisation:.0%} "
        f"utilisation ({gpu:.0f} TFLOP/s); evaluation batches forward only.",
        "",
        "| per batch | training (batch 16) | evaluation (batch 64) |",
        "|---|---:|---:|",
        f"| GPU compute, estimate ({args.gpu_utilisation:.0%} of peak) | {cmp.gpu_ms:.1f} ms "
        f"({cmp.tflop_per_batch:.2f} TFLOP) | {cmp.eval_gpu_ms:.1f} ms |",
        f"| GPU compute at 100 % of peak (the least it could be) | {cmp.gpu_peak_ms:.1f} ms | – |",
        f"| loading, dim {args.dim}, measured | {cmp.load_ms:.2f} ms | {cmp.eval_load_ms:.2f} ms |",
    ]
    if full is not None:
        lines += [f"| loading, full dims ({dims}), measured on {full.utterances} train rows, warm page cache | "
                  f"{full.warm_ms:.1f} ms | – |",
                  f"| loading, full dims, cold page cache (pages dropped with posix_fadvise first) | "
                  f"{full.cold_ms:.1f} ms | – |",
                  f"| loading, full dims, cold, through `FeatureDataset.batches` ({PREFETCH_THREADS} threads, "
                  f"{PREFETCH_BATCHES} batches ahead): the rate batches arrive at | {full.prefetch_ms:.1f} ms | – |"]
    lines.append("")
    epoch_gpu = cmp.batches * cmp.gpu_ms / 1000
    text = (f"Over the epoch: GPU compute ~{num(epoch_gpu)} s (estimate), loading at dim {args.dim} "
            f"{num(cmp.batches * cmp.load_ms / 1000)} s ({cmp.load_ms / cmp.gpu_ms:.0%} of the compute)")
    if full is not None:
        text += (f", loading at full dims {num(cmp.batches * full.warm_ms / 1000)} s warm "
                 f"({full.warm_ms / cmp.gpu_ms:.0%}) to {num(cmp.batches * full.cold_ms / 1000)} s cold "
                 f"({full.cold_ms / cmp.gpu_ms:.0%}); a batch reads {full.mb_per_batch:.0f} MB of float16 frames and "
                 f"builds {2 * full.mb_per_batch:.0f} MB of float32 arrays")
    if full is not None:
        text += (f". The training loop takes its batches from `FeatureDataset.batches`, which loads "
                 f"{PREFETCH_BATCHES} ahead in {PREFETCH_THREADS} threads while the GPU computes, so an epoch costs "
                 f"about the larger of its compute and its loading, not their sum; cold, batches arrive every "
                 f"{full.prefetch_ms:.1f} ms ({full.prefetch_ms / cmp.gpu_ms:.0%} of the estimated compute per batch)")
    lines.append(text + ".")
    if full is not None:
        lines += ["", f"Writing the full-dim subset's three stores (extraction's I/O path, encoders left out) took "
                  f"{full.write_s:.1f} s for {full.write_mb:,.0f} MB ({full.write_mb / full.write_s:,.0f} MB/s)."]
    return lines


# --------------------------------------------------------------------------------------------------- main


@dataclass
class Result:
    rows: list[StepRow]
    sizes: list[SizeResult] = field(default_factory=list)
    comparison: Comparison | None = None
    total_s: float = 0.0
    section: str = ""


def disk_needed(n: int, dim: int, full_dim_utts: int) -> int:
    """Bytes the largest size needs at once, with room to spare: two small files per clip (a block each), the
    three stores and the full-dim subset, each counted twice."""
    frames = n * 6.5 * AUDIO_FPS
    stores = 2 * (2 * store_bytes(frames, dim) + store_bytes(n * 25, dim))
    full = 2 * store_bytes(full_dim_utts * 6.5 * AUDIO_FPS * 2.1, 1024)
    return int(2 * 4096 * n + stores + full + 2**30)


def main(argv: list[str] | None = None) -> Result:
    """Run the simulation, print the table, write the report section; returns what was measured."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    # The first optimizer torch builds imports torch._dynamo (~3 s, once per process): not a cost of any one size.
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    params = load_params(args.preset)
    load = load_average()
    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    need, free = disk_needed(max(args.sizes), args.dim, args.full_dim_utterances), shutil.disk_usage(args.tmp_dir).free
    if free < need:
        raise SystemExit(f"{args.tmp_dir}: {free / 1e9:.1f} GB free, the largest size needs about {need / 1e9:.1f} GB")
    print(f"{device_name(CPU)}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); sizes "
          f"{', '.join(f'{n:,}' for n in args.sizes)}; dim {args.dim}; {args.tmp_dir}: {free / 1e9:.0f} GB free, "
          f"about {need / 1e9:.1f} GB needed", flush=True)
    start = time.perf_counter()
    rows: list[StepRow] = []
    results = []
    work = Path(tempfile.mkdtemp(prefix="medusa-bench-scale-", dir=args.tmp_dir))
    try:
        for n in args.sizes:
            results.append(run_size(n, work / f"n{n}", params, args, rows,
                                    args.full_dim_utterances if n == max(args.sizes) else 0))
            gc.collect()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total_s = time.perf_counter() - start
    cmp = compare(results[-1], rows, params, args, results[-1].full_dim)
    print()
    print(console_table(rows, args.sizes))
    print(f"\nepoch at N={args.sizes[-1]:,}: {cmp.batches:,} batches; loading {cmp.load_ms:.2f} ms/batch at dim "
          f"{args.dim}" + (f", {cmp.full_warm_ms:.1f} (warm) / {cmp.full_cold_ms:.1f} (cold) ms/batch at full dims"
                           if cmp.full_warm_ms is not None else "")
          + f"; GPU compute ~{cmp.gpu_ms:.1f} ms/batch (estimate)")
    print(f"whole run: {total_s:.0f} s")
    section = report_section(args, argv, rows, results, cmp, total_s, load, params)
    write_section(args.out, REPORT_SECTION, section)
    print(f"wrote the '{REPORT_SECTION[3:]}' section of {args.out}")
    return Result(rows, results, cmp, total_s, section)


if __name__ == "__main__":
    main()
