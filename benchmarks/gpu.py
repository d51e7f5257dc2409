"""GPU figures at the paper's scale in one call (issue #14): Whisper-large-v3 ASR, the five encoders' extraction,
DeepSER training, and the GPU budget of MSP-Podcast with the paper preset that these rates imply.

    python benchmarks/gpu.py [--size small|full] [--device auto|cpu|cuda] [--parts asr,extract,train]
                             [--out reports/benchmarks.md] [--results DIR] [--deadline-s S] [--seed 0]
    python benchmarks/gpu.py --apply DIR/gpu_section.json [--out reports/benchmarks.md]
    python benchmarks/gpu.py --wer-parity N [--parity-model demo:base]

On the lent GPU machine the one command is `bash benchmarks/gpu.sh` (benchmarks/README.md: the device call).
Every model is built from its architecture config with random weights (`medusa.pipeline.standins`: the FLOPs and
memory of the trained checkpoints); audio and transcripts are synthetic, with MSP-Podcast-like durations (2.75-11 s).
This file runs the parts in order and writes the section; each part lives in its own module:

* ASR (gpu_asr, decoding ways in gpu_whisper): Whisper large-v3 (128 mel bins, the full 32-layer decoder), batched
  greedy decoding through our code (`medusa.features.asr`: clips padded to whole seconds, the paper preset's batch
  and `pad_seconds`), against 30 s windows with the same batches; then, where time allows, two ways the project
  could adopt: openai-whisper with its weights cast to fp16 once (it casts them at every call), and transformers'
  WhisperForConditionalGeneration (SDPA, static cache, our windows). Every way decodes exactly the same forced
  number of tokens per clip. `--wer-parity N` checks transformers' transcripts against ours on real weights (CPU).
* Extraction (gpu_extract): `benchmarks/extract.py`'s own functions (`run_ours`: extract_to_store with bf16
  autocast, length buckets and the feature-store writes; `run_authors`: one file at a time, fp32, 0.19 s chunks,
  30 s Whisper windows) on WavLM-large, HuBERT-large, the Whisper-large-v3 encoder, RoBERTa-large and
  ModernBERT-large; the authors' way runs on a subset of the clips (its rate does not depend on their number).
* Training (gpu_train): `benchmarks/train.py`'s `bench_mix` on Table 1's models 2 and 14 at the paper's dims and
  native frame rates (ours bf16, ours fp32, the authors' way), Table 1's commonest mix (WavLM + RoBERTa, ours
  only), and the forward-only rate that dev evaluation and prediction run at.
* Budget (gpu_budget): `pipeline_budget` turns the measured rates into GPU-hours per stage for MSP-Podcast (~116k
  utterances, ~190 h) with configs/paper.yaml (14 members, Table 2's 20 ablation runs, stage-1 and stage-2 epochs
  as upper bounds), and the report states each of the issue's targets as met or missed.

`--size full` (the default on a GPU) is the paper's scale and is planned to end well within 8 minutes on an H200:
optional pieces (the authors' way beyond WavLM, the ASR alternatives, the fp32 training rows) are skipped when the
`--deadline-s` clock says they no longer fit. `--size small` (the default on CPU) runs the same code on tiny
stand-ins, a few clips and a scaled-down DeepSER: a dry run in a few minutes on 2 cores. Each part prints progress
lines with timings, and after each part the results so far are saved: the section as reports/benchmarks/gpu.json
(beside `--out`, which benchmarks/report.py renders again), and, in `--results` (default: $OUT when set),
gpu_section.json (the same section, for `--apply` here), gpu_section.md (it rendered) and gpu_results.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

# Before transformers / tqdm are imported: no hub, no progress bars.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a plain script from anywhere, installed package or not
if str(REPO / "benchmarks") not in sys.path:  # the parts, _common, extract, train, when this file is imported (tests)
    sys.path.insert(1, str(REPO / "benchmarks"))

import report  # noqa: E402  benchmarks/report.py: the Markdown
import torch  # noqa: E402
from _common import busy, device_name, load_average  # noqa: E402
from gpu_asr import PARITY_FILE, asr_blocks, asr_part, parity_line, wer_parity  # noqa: E402
from gpu_budget import budget_blocks, budget_part, target_blocks  # noqa: E402
from gpu_common import Clock, free, library_version, make_corpus, make_plan  # noqa: E402
from gpu_extract import extract_blocks, extract_part  # noqa: E402
from gpu_train import sdpa_backends, train_blocks, train_part  # noqa: E402

from medusa.features.batches import pick_device  # noqa: E402

SECTION = "gpu"                     # reports/benchmarks/gpu.json
TITLE = "GPU: the paper's scale on one GPU (issue #14)"
PARTS = ("asr", "extract", "train")
PLANNED_S = {"full": {"asr": 90, "extract": 130, "train": 90}}  # H200 estimates; see benchmarks/README.md


# -------------------------------------------------------------------------------------------------- report


def report_section(results: dict, meta: dict) -> report.Doc:
    """The section as a document (benchmarks/report.py renders it): the run, then each part's subsection."""
    cpu = meta["device_type"] == "cpu"
    plan = meta["plan"]
    return report.doc(TITLE, [
        report.text(f"Command: `{meta['command']}`"),
        report.text(
            "**Status: not yet measured on a GPU.** No GPU was lent to the session that wrote this; what follows is "
            "the CPU dry run of the same script (`--size small`: tiny stand-ins, a handful of clips), which proves "
            "the code path, not the figures. The paper-scale run is one device call: benchmarks/README.md, "
            "`gpu.py`.") if cpu else None,
        report.bullets([
            f"Device: {meta['device']}; torch {meta['torch']}, transformers {meta['transformers']}, openai-whisper "
            f"{meta['whisper']}; SDPA: {meta['sdpa']}"
            + (f"; load average at start {meta['load']} ({busy(meta['load'])})" if cpu else ""),
            f"Size `{meta['size']}`: every model built from its architecture config with random weights "
            f"(`medusa.pipeline.standins`, size `{plan.standins}`); synthetic 16 kHz clips of 2.75–11 s. Rates are "
            "audio seconds per second (× real time) timed after a warm-up"
            + (" with CUDA events (wall clock, CUDA synchronised, for extraction and training)" if not cpu else "")
            + ".",
            f"Whole run: {meta['total_s']:.0f} s wall ("
            + ", ".join(f"{k} {v:.0f} s" for k, v in meta["parts_s"].items()) + ")"
            + (f"; the deadline for optional pieces was {plan.deadline_s:.0f} s" if plan.deadline_s else "") + ".",
            *[f"**Failed**: {f}" for f in meta.get("failures", [])]]),
        *asr_blocks(results.get("asr"), plan, cpu),
        *extract_blocks(results.get("extract"), plan),
        *train_blocks(results.get("train")),
        *budget_blocks(results.get("budget")),
        *target_blocks(results, meta["device"], cpu)])


def to_json(results: dict, meta: dict) -> str:
    """Every measured number of the run (the dataclasses of the parts, as plain JSON), for a look beyond the
    section's rounding."""
    def plain(x):
        if hasattr(x, "__dataclass_fields__"):
            return {k: plain(v) for k, v in asdict(x).items()}
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x
    derived = {}
    if results.get("asr"):
        derived["asr_audio_s_per_s"] = {r.way: r.audio_s_per_s for r in results["asr"].rows}
    if results.get("extract"):
        derived["extract_audio_s_per_s"] = {f"{r.encoder} {r.method}": r.audio_s_per_s
                                            for r in results["extract"].rows}
    return json.dumps({"meta": plain({k: v for k, v in meta.items() if k != "plan"}), "plan": plain(meta["plan"]),
                       "results": plain(results), "derived": derived}, indent=1, default=str)


def save(results: dict, meta: dict, out: Path, results_dir: Path | None) -> report.Doc:
    """The section into `out`'s folder of documents (the report rendered again) and, with a results folder,
    gpu_section.json, gpu_section.md and gpu_results.json there: written after every part, so that a run cut short
    still brings back what it measured (the device's copy of the report is not the one that is committed)."""
    section = report_section(results, meta)
    report.publish(section, SECTION, out)
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        report.save(section, results_dir / "gpu_section.json")
        (results_dir / "gpu_section.md").write_text(report.render_section(section), encoding="utf-8")
        (results_dir / "gpu_results.json").write_text(to_json(results, meta), encoding="utf-8")
    return section


def apply_section(path: Path, out: Path) -> Path:
    """A device run's gpu_section.json (or the gpu_section.md beside it) as this report's GPU section."""
    if path.suffix == ".md":  # the rendered copy: its document is the .json beside it
        path = path.with_suffix(".json")
    if not path.is_file():
        raise SystemExit(f"{path}: not found; pass the gpu_section.json that the device run left in $OUT")
    section = report.load(path)
    if section.get("title") != TITLE:
        raise SystemExit(f"{path} is not the section {TITLE!r} (its title: {section.get('title')!r})")
    return report.publish(section, SECTION, out)


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("small", "full"), default=None,
                   help="full: the paper's models (default on GPU); small: tiny stand-ins, a CPU dry run")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated among {', '.join(PARTS)}")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "benchmarks.md",
                   help="the report; the section goes to its folder of documents (reports/benchmarks/gpu.json)")
    p.add_argument("--results", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                   help="folder for gpu_section.json, gpu_section.md and gpu_results.json after every part "
                        "(default: $OUT if set)")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="skip optional pieces that would end later (default: 400 full, none small)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: 1 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wer-parity", type=int, default=None, metavar="N",
                   help="instead: transformers' Whisper against ours on real weights (--parity-model) over the "
                        f"first N demo clips with references (CPU), written to {PARITY_FILE.relative_to(REPO)}")
    p.add_argument("--parity-model", default="demo:base", help="a Whisper for --wer-parity (default demo:base)")
    p.add_argument("--apply", type=Path, default=None,
                   help="make this gpu_section.json (from a device run's $OUT) the report's GPU section and exit")
    return p.parse_args(argv)


def quiet_transformers() -> None:
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def run_wer_parity(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    torch.set_num_threads(args.threads or (1 if device.type == "cpu" else torch.get_num_threads()))
    quiet_transformers()
    parity = wer_parity(args.wer_parity, args.parity_model, 5.0, 8, device)
    PARITY_FILE.parent.mkdir(parents=True, exist_ok=True)
    PARITY_FILE.write_text(json.dumps(parity, indent=1) + "\n", encoding="utf-8")
    print(parity_line(parity))
    print(json.dumps({k: parity[k] for k in ("seconds", "differences")}, indent=1))
    return parity


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.apply is not None:
        path = apply_section(args.apply, args.out)
        print(f"wrote {path} from {args.apply} and rendered {args.out}")
        return {}
    if args.wer_parity is not None:
        return run_wer_parity(args)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        raise SystemExit(f"--parts {args.parts!r}: name parts among {', '.join(PARTS)}")
    device = pick_device(args.device)
    args.size = args.size or ("full" if device.type == "cuda" else "small")
    plan = make_plan(args.size)
    if args.deadline_s is not None:
        plan = replace(plan, deadline_s=args.deadline_s)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    quiet_transformers()

    clock = Clock(plan.deadline_s)
    load = load_average()
    tmp = tempfile.TemporaryDirectory(prefix="medusa-bench-gpu-")
    work = Path(tmp.name)
    n_clips = max(plan.extract_utterances, plan.asr_clips)
    items = make_corpus(work / "wav", n_clips, args.seed, plan.corpus_workers)  # forks: before CUDA is initialised
    corpus_s = clock.elapsed()
    meta = {"command": "python benchmarks/gpu.py" + "".join(f" {a}" for a in argv), "size": args.size,
            "plan": plan, "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "transformers": library_version("transformers"), "whisper": library_version("openai-whisper"),
            "sdpa": sdpa_backends(), "load": load, "parts_s": {}, "total_s": 0.0}
    clock.log(f"device {meta['device']}, torch {meta['torch']}, transformers {meta['transformers']}, openai-whisper "
              f"{meta['whisper']}, size {args.size}, parts {','.join(parts)}, deadline {plan.deadline_s}")
    planned = PLANNED_S.get(args.size, {})
    results: dict[str, Any] = {}
    with tmp:
        clock.log(f"corpus: {len(items)} clips, {items['duration_s'].sum():,.0f} s of audio ({corpus_s:.1f} s)")
        for part in parts:
            later = sum(planned.get(p, 0) for p in parts[parts.index(part) + 1:])  # kept for the parts after
            t0 = time.perf_counter()
            clock.log(f"--- {part} (planned {planned.get(part, '?')} s)")
            try:
                if part == "asr":
                    results["asr"] = asr_part(plan, items, device, clock, later)
                elif part == "extract":
                    results["extract"] = extract_part(plan, items.iloc[:plan.extract_utterances], work, device,
                                                      clock, later)
                else:
                    results["train"] = train_part(plan, work, device, clock, later, args.seed)
            except Exception as e:  # keep what the other parts measure
                traceback.print_exc()
                meta.setdefault("failures", []).append(f"{part}: {type(e).__name__}: {str(e)[:300]}")
            free(device)
            meta["parts_s"][part] = time.perf_counter() - t0
            if all(k in results for k in PARTS):
                try:
                    results["budget"] = budget_part(results["asr"], results["extract"], results["train"])
                except Exception as e:
                    meta.setdefault("failures", []).append(f"budget: {type(e).__name__}: {str(e)[:300]}")
            meta["total_s"] = clock.elapsed()
            section = save(results, meta, args.out, args.results)
            clock.log(f"--- {part} done in {meta['parts_s'][part]:.0f} s; results saved")
    print()
    print(report.render_section(section))
    print(f"wrote {report.sections_dir(args.out) / (SECTION + '.json')} and rendered {args.out}"
          + (f"; gpu_section.json, gpu_section.md and gpu_results.json in {args.results}" if args.results else ""))
    if meta.get("failures"):
        print("FAILED: " + "; ".join(meta["failures"]), file=sys.stderr)
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
