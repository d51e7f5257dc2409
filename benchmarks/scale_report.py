"""The section of benchmarks/scale.py as a document (benchmarks/report.py renders it), and the console table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import report
import torch
from _common import busy, cpu_memory_method, device_name
from scale_corpus import (
    ANNOTATORS,
    AUDIO_FPS,
    BLIND_SHARE,
    CONSENSUS_PRIOR,
    CPU,
    DURATION_MEDIAN_S,
    DURATION_RANGE_S,
    DURATION_SIGMA,
    FULL_DIMS,
    MODEL,
    SPECIAL_TOKENS,
    SPLIT_SHARES,
    TOKENS_PER_WORD,
    UTTERANCES_PER_SPEAKER,
    WORDS_PER_S,
    store_bytes,
)
from scale_epoch import GPU_NAME, Comparison, FullDim
from scale_steps import CPU_NOT_INCLUDED, GROWTH_FLAG, RAM_TARGET_GB, REPEATS, STEPS, SizeResult, StepRow, growth

from medusa.config.params import Params
from medusa.model.dataset import PREFETCH_BATCHES, PREFETCH_THREADS

REPO = Path(__file__).resolve().parents[1]
SECTION = "scale"                   # reports/benchmarks/scale.json
REPORT_SECTION = "## Scale simulation (MSP-Podcast size, no neural work)"


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


def disk_rows(results: list[SizeResult]) -> list[list[str]]:
    """Table rows: each paper store's frames file at full dim, per N (frames counted from the simulated run)."""
    rows = []
    for key, (model, dim, kind) in FULL_DIMS.items():
        source = "wavlm" if kind == "audio" else "roberta"
        cells = []
        for res in results:
            frames = res.store_frames[source]
            cells += [f"{frames / 1e6:,.2f} M", f"{store_bytes(frames, dim) / 1e9:,.2f}"]
        rows.append([f"{key} ({model})", dim, kind, *cells])
    return rows


def report_section(args: argparse.Namespace, argv: list[str], rows: list[StepRow], results: list[SizeResult],
                   cmp: Comparison, total_s: float, load: str, params: Params) -> report.Doc:
    """The section as a document (benchmarks/report.py renders it)."""
    sizes = [r.n for r in results]
    small, large = results[0], results[-1]
    cmd = "python benchmarks/scale.py" + "".join(f" {a}" for a in argv)
    by = {(r.step, r.n): r for r in rows}
    total = {n: sum(by[s, n].wall_s for s in STEPS) for n in sizes}
    table = report.table(
        ["Step", *(f"N={fmt_n(n)} {unit}" for n in sizes for unit in ("s", "MB"))], "l" + "rr" * len(sizes),
        [[step, *(x for n in sizes for x in (num(by[step, n].wall_s), f"{by[step, n].peak_mb:.0f}"))]
         for step in STEPS]
        + [["**all steps**", *(x for n in sizes for x in (f"**{total[n]:.1f}**", "–"))]])
    per_k = []
    flagged = []
    for step in STEPS:
        g = growth(rows, step)
        flag = f" **> {GROWTH_FLAG}x**" if g > GROWTH_FLAG else ""
        if flag:
            flagged.append(step)
        per_k.append([step, f"{by[step, large.n].rows:,}", *(num(by[step, n].s_per_1k) for n in sizes),
                      f"{g:.2f}x{flag}"])
    hwm = max(r.hwm_mb for r in rows if r.n == large.n)
    anon = max(r.anon_mb for r in rows if r.n == large.n)
    worst = max((r for r in rows if r.n == large.n), key=lambda r: r.peak_mb)
    splits = ", ".join(f"{s} {large.splits.get(s, 0):,}" for s in ("train", "dev", "test", "blind"))
    t = params.train
    e = params.ensemble
    full = large.full_dim
    bullets = [
        f"Machine: {device_name(CPU)}; torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s); "
        f"load average at start {load} ({busy(load)}). Whole run (generating the corpora, every step, the full-dim "
        f"check, cleaning up): {total_s:.0f} s wall.",
        f"Simulated corpus (params {shown(args.preset)}, "
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
        "Audio: sparse wav files (a real 16 kHz PCM16 header, the data a hole), so `prepare_corpus` runs with "
        "its audio check on (`check_audio=True`: every header read, sizes checked, durations taken from the "
        "headers), as on the real corpus; the MSP layout needs the files in `Audios/` (it lists them), so "
        "`check_audio=False` would not spare them.",
        f"Stores: WavLM and HuBERT at {AUDIO_FPS} frames per second of each clip, RoBERTa at {TOKENS_PER_WORD:g} "
        f"tokens per word + {SPECIAL_TOKENS}, **at dim {args.dim} instead of 1024** (the frame counts are the real "
        "ones; bytes, and the time of moving them, scale with the dim: see the full-dim check below); written as "
        "`medusa.features.extract` writes them (utt_id order, length batches of the preset's encoder settings, a flush per "
        "batch; the writer keeps the frames in add order and never rewrites them), with the encoder left out. Every store holds every utterance of the manifest.",
        f"Dataset and epoch: `FeatureDataset` over the train rows of {len(MODEL)} stores (Table 1's model 2, "
        f"{' + '.join(MODEL)}; pool 1, the preset's `pool: {{}}`); one stage-1 epoch = "
        f"`medusa.model.training._epoch_batches` (the loop's bucketed sampler, batch {t.batch_size}) and "
        "`FeatureDataset.batch` for every batch (arrays, masks, torch tensors), no model; the evaluation every epoch "
        f"runs (`medusa.model.training.predict` over dev and test, batch {4 * t.batch_size}) with a model that returns "
        "zeros.",
        f"Ensemble: synthetic posteriors of {len(params.models)} members and their probes for every dev, test and "
        f"blind utterance (softmax of N(0, 1) logits plus a per-member bonus on the consensus class); notebook 05's "
        f"calls: `run_subset` for all {len(params.models)} / " + " / ".join(f"top-{k}" for k in e.top_k)
        + f" ({len(e.seeds)} seeds, {e.epochs} epochs, batch {e.batch_size}; with the probes passed, as the notebook "
        f"does, each subset also trains the other `include_probes` soup: {2 * len(e.seeds)} meta-classifiers per "
        f"subset), `ensemble_posteriors`, then `technique_table` with {params.report.bootstrap} resamples.",
        f"Report: {large.scored_systems} systems scored with {params.report.bootstrap} class-stratified resamples "
        f"each: the {len(params.models)} members' and their probes' test scores (`score_test_split`, "
        f"`classification_scores_of`, as `train_member` writes metrics.json), the "
        f"{len(params.ablate.variants) * len(params.ablate.models)} ablation runs' own, Table 1's average "
        f"(`reports.mean_interval`), Table 2 (`ablation.table2` over "
        f"{(len(params.ablate.variants) + 1) * len(params.ablate.models)} runs), and the findings' paired intervals "
        "(`reports.paired_change`: MEDUSA against the best member and the two votes).",
        f"Time: wall seconds (time.perf_counter) of the step alone, one run (opening the stores and building the "
        f"dataset: the fastest of {REPEATS}); the synthetic data is made before it, untimed (and torch's one-time "
        "import of its compiler, ~3 s at the first optimizer, before the first size). "
        f"Peak memory (MB in the table): {cpu_memory_method(CPU_NOT_INCLUDED)}.",
    ]
    gb = {key: store_bytes(large.store_frames["wavlm" if kind == "audio" else "roberta"], dim) / 1e9
          for key, (_, dim, kind) in FULL_DIMS.items()}
    return report.doc(REPORT_SECTION[3:], [
        report.text(f"Command: `{cmd}`"),
        report.bullets(bullets),
        table,
        report.text("Time per 1,000 utterances of the corpus (every step is divided by N, whatever rows it works on, "
                    "so that a linear step reads the same at every N); growth = the figure at "
                    f"N={fmt_n(large.n)} over the one at N={fmt_n(small.n)}, flagged above {GROWTH_FLAG}x:"),
        report.table(["Step", f"rows worked on at N={fmt_n(large.n)}",
                      *(f"s per 1k utt, N={fmt_n(n)}" for n in sizes), f"growth {fmt_n(small.n)} → {fmt_n(large.n)}"],
                     "lr" + "r" * len(sizes) + "r", per_k),
        report.text(f"No step's cost per utterance grows by more than {GROWTH_FLAG}x from N={fmt_n(small.n)} to "
                    f"N={fmt_n(large.n)}: every step is linear in N (to within fixed costs and noise)."
                    if not flagged else
                    f"Flagged (cost per utterance up by more than {GROWTH_FLAG}x): {', '.join(flagged)}."),
        report.text(
            f"**Memory at N={fmt_n(large.n)}**: the process's peak RSS over all steps was {hwm / 1024:.2f} GB and "
            "its peak anonymous memory (RssAnon, sampled every 10 ms: heap and arrays, not the store pages its "
            f"memmaps map in) {anon / 1024:.2f} GB, against a target of {RAM_TARGET_GB:g} GB: "
            f"{'met' if max(hwm, anon) / 1024 <= RAM_TARGET_GB else '**not met**'}. This one process holds more than "
            "any stage would (the manifest and every earlier step's leftovers), so these are upper bounds. The "
            f"largest rise within a step was {worst.peak_mb:,.0f} MB ({worst.step})."),
        *epoch_blocks(cmp, full, large, params, args),
        report.text(
            "**Disk per feature store at full dims** (frames file: frames x dim x 2 bytes, float16; frame counts of "
            f"the simulated corpora: audio {AUDIO_FPS} frames/s of every clip, the Whisper encoder counted alike; "
            f"text {TOKENS_PER_WORD:g} tokens/word + {SPECIAL_TOKENS}, ModernBERT counted as RoBERTa; index and meta "
            "add a few MB). Every store holds every utterance (train, dev, test, blind):"),
        report.table(["Store", "dim", "kind", *(f"N={fmt_n(n)} {unit}" for n in sizes for unit in ("frames", "GB"))],
                     "lrl" + "rr" * len(sizes), disk_rows(results)),
        report.text(f"At N={fmt_n(large.n)} the five stores take {num(sum(gb.values()))} GB (the audio ones "
                    f"{num(gb['wavlm'])}, {num(gb['hubert'])} and {num(gb['whisper'])} GB, the text ones "
                    f"{num(gb['roberta'])} and {num(gb['modernbert'])} GB); the writer appends frames once and never "
                    "rewrites them, so writing a store needs its own size, no more.")])


def gpu_training_device(out: Path) -> str | None:
    """The device of the report's `## DeepSER training` section (benchmarks/train.py's document) when it names a
    GPU (None: no section, or a CPU run, which is all benchmarks/train.py has measured so far)."""
    path = report.sections_dir(out) / "train.json"
    blocks = report.load(path)["blocks"] if path.is_file() else []
    device = next((item for b in blocks for item in b.get("bullets", []) if item.startswith("Device:")), "")
    return device.removeprefix("Device:").split(";")[0].strip() if device and "(CPU)" not in device else None


def epoch_blocks(cmp: Comparison, full: FullDim | None, large: SizeResult, params: Params,
                 args: argparse.Namespace) -> list[dict]:
    """The epoch's data path against GPU compute: a paragraph, the per-batch table, the epoch's sums."""
    t = params.train
    gpu = args.gpu_tflops * args.gpu_utilisation
    measured = gpu_training_device(args.out)
    dims = " / ".join(str(FULL_DIMS[k][1]) for k in MODEL)
    frames = " / ".join(f"{f:.0f}" for f in cmp.mean_frames)
    intro = (
        f"**Epoch data path against GPU compute** (N={fmt_n(large.n)}, {cmp.batches:,} training batches of "
        f"{t.batch_size}, {cmp.eval_batches:,} evaluation batches of {4 * t.batch_size}). "
        + (f"The report's `## DeepSER training` section has a GPU measurement ({measured}): compare with it; here "
           if measured else "The report has no GPU measurement of DeepSER training (its `## DeepSER training` "
           "section is a CPU run at reduced size), so ")
        + f"the GPU side is an **estimate** from FLOPs: DeepSER of Table 1's model 2 at the preset's size (hidden "
        f"{t.hidden}, {t.layers} layers per ENC, FFN {t.ff_mult}x, deep fusion; inputs {dims} d) on the epoch's own "
        f"padded batches (mean padded frames per modality {frames}), 2 FLOPs per multiply-add, backward = 2x forward, "
        f"on an {GPU_NAME} at {args.gpu_tflops:g} TFLOP/s dense bf16 and an assumed {args.gpu_utilisation:.0%} "
        f"utilisation ({gpu:.0f} TFLOP/s); evaluation batches forward only.")
    rows = [[f"GPU compute, estimate ({args.gpu_utilisation:.0%} of peak)",
             f"{cmp.gpu_ms:.1f} ms ({cmp.tflop_per_batch:.2f} TFLOP)", f"{cmp.eval_gpu_ms:.1f} ms"],
            ["GPU compute at 100 % of peak (the least it could be)", f"{cmp.gpu_peak_ms:.1f} ms", "–"],
            [f"loading, dim {args.dim}, measured", f"{cmp.load_ms:.2f} ms", f"{cmp.eval_load_ms:.2f} ms"]]
    if full is not None:
        rows += [[f"loading, full dims ({dims}), measured on {full.utterances} train rows, warm page cache",
                  f"{full.warm_ms:.1f} ms", "–"],
                 ["loading, full dims, cold page cache (pages dropped with posix_fadvise first)",
                  f"{full.cold_ms:.1f} ms", "–"],
                 [f"loading, full dims, cold, through `FeatureDataset.batches` ({PREFETCH_THREADS} threads, "
                  f"{PREFETCH_BATCHES} batches ahead): the rate batches arrive at", f"{full.prefetch_ms:.1f} ms", "–"]]
    epoch_gpu = cmp.batches * cmp.gpu_ms / 1000
    text = (f"Over the epoch: GPU compute ~{num(epoch_gpu)} s (estimate), loading at dim {args.dim} "
            f"{num(cmp.batches * cmp.load_ms / 1000)} s ({cmp.load_ms / cmp.gpu_ms:.0%} of the compute)")
    if full is not None:
        text += (f", loading at full dims {num(cmp.batches * full.warm_ms / 1000)} s warm "
                 f"({full.warm_ms / cmp.gpu_ms:.0%}) to {num(cmp.batches * full.cold_ms / 1000)} s cold "
                 f"({full.cold_ms / cmp.gpu_ms:.0%}); a batch reads {full.mb_per_batch:.0f} MB of float16 frames and "
                 f"builds {2 * full.mb_per_batch:.0f} MB of float32 arrays")
        text += (f". The training loop takes its batches from `FeatureDataset.batches`, which loads "
                 f"{PREFETCH_BATCHES} ahead in {PREFETCH_THREADS} threads while the GPU computes, so an epoch costs "
                 f"about the larger of its compute and its loading, not their sum; cold, batches arrive every "
                 f"{full.prefetch_ms:.1f} ms ({full.prefetch_ms / cmp.gpu_ms:.0%} of the estimated compute per batch)")
    blocks = [report.text(intro),
              report.table(["per batch", "training (batch 16)", "evaluation (batch 64)"], "lrr", rows),
              report.text(text + ".")]
    if full is not None:
        blocks.append(report.text(
            f"Writing the full-dim subset's three stores (extraction's I/O path, encoders left out) took "
            f"{full.write_s:.1f} s for {full.write_mb:,.0f} MB ({full.write_mb / full.write_s:,.0f} MB/s)."))
    return blocks
