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
4. the ensemble (notebook 05's calls): medusa.ensemble.subsets.run_subset for the subsets all 14 / top-7 / top-5 with the
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
a temporary folder under --tmp-dir, removed at the end. The script prints a table and writes its section,
"## Scale simulation (MSP-Podcast size, no neural work)", as reports/benchmarks/scale.json (beside --out), then
renders --out from every section's JSON (benchmarks/report.py).
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars from the pipeline code

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere, installed package or not
if str(REPO / "benchmarks") not in sys.path:  # _common, when this file is imported rather than run
    sys.path.insert(1, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import report  # noqa: E402  benchmarks/report.py: the Markdown
import torch  # noqa: E402
from _common import device_name, load_average  # noqa: E402

# the steps' pieces live in modules by concept (corpus, steps, epoch, ensemble, report); this script runs them
from scale_corpus import (  # noqa: E402
    AUDIO_FPS,
    CPU,
    MODEL,
    MODEL_NAME,
    frame_pool,
    plan_store,
    store_bytes,
    write_corpus,
    write_store,
)
from scale_ensemble import member_outputs, report_bootstraps, run_ensemble  # noqa: E402
from scale_epoch import (  # noqa: E402
    GPU_NAME,
    GPU_PEAK_TFLOPS,
    GPU_UTILISATION,
    Comparison,
    ZeroModel,
    compare,
    full_dim_check,
    load_batches,
)
from scale_report import REPORT_SECTION, SECTION, console_table, report_section  # noqa: E402
from scale_steps import (  # noqa: E402
    REPEATS,
    STEP_DATASET,
    STEP_EPOCH,
    STEP_EVAL,
    STEP_MANIFEST,
    STEP_META,
    STEP_OPEN,
    STEP_REPORT,
    STEP_TABLE3,
    STEP_WRITE,
    SizeResult,
    StepRow,
    timed,
)

from medusa.config.params import Params, PrepareParams, load_params  # noqa: E402
from medusa.data.corpora.manifest import prepare_corpus  # noqa: E402
from medusa.ensemble.tables import technique_table  # noqa: E402
from medusa.features.store.reader import FeatureStore  # noqa: E402
from medusa.model.dataset import FeatureDataset  # noqa: E402
from medusa.model.training import TrainConfig, _epoch_batches, predict  # noqa: E402
from medusa.scoring.metrics import run_classes  # noqa: E402

PRESET = REPO / "configs" / "paper.yaml"
DEFAULT_SIZES = (10000, 40000, 116000)

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


# --------------------------------------------------------------------------------------------- one size


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
    pool = plans = None  # freed before the next step (rebound, not deleted: a timed lambda names them)

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
    train = evals = stores = None  # the memmaps let go before their files are removed (rebound: lambdas)
    gc.collect()
    shutil.rmtree(work / "features")

    outputs = member_outputs(manifest, params, args.seed)
    n_meta = splits.get("dev", 0) + splits.get("test", 0) + splits.get("blind", 0)
    results, soup = timed(rows, STEP_META, n, n_meta, lambda: run_ensemble(outputs, manifest, params))
    timed(rows, STEP_TABLE3, n, splits.get("test", 0),
          lambda: technique_table(results, params.report.bootstrap, params.report.seed))
    results = None  # freed before the next step (rebound: a timed lambda names it)
    scored = timed(rows, STEP_REPORT, n, splits.get("test", 0),
                   lambda: report_bootstraps(outputs, soup, manifest, params))
    outputs = soup = None  # freed before the full-dim check (rebound: the timed lambdas name them)
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


# --------------------------------------------------------------------------------------------------- main


@dataclass
class Result:
    rows: list[StepRow]
    sizes: list[SizeResult] = field(default_factory=list)
    comparison: Comparison | None = None
    total_s: float = 0.0
    section: report.Doc | None = None   # the section as written (benchmarks/report.py renders it)


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
    report.publish(section, SECTION, args.out)
    print(f"wrote the '{REPORT_SECTION[3:]}' section of {args.out}")
    return Result(rows, results, cmp, total_s, section)


if __name__ == "__main__":
    main()
