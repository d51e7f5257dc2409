"""The budget of benchmarks/gpu.py: GPU-hours per stage of the paper pipeline on MSP-Podcast with configs/paper.yaml,
from the rates the other parts measured (mixes not measured scaled by their forward FLOPs), then the issue's
targets, each met or missed; and their subsections of the report. Pure arithmetic: nothing here touches a GPU.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import report
from gpu_asr import AsrResult
from gpu_common import PRESET, fmt_rate, fmt_x
from gpu_extract import ExtractResult
from gpu_train import TrainResult
from train_data import FEATURES, PAPER_AUDIO_FPS, TOKENS_PER_S, Size

from medusa.config.params import load_params

# The targets (reported, never asserted).
TARGET_WAVLM_REALTIME = 5000.0      # WavLM-large extraction, end to end, x real time
TARGET_WAVLM_VS_AUTHORS = 30.0      # ... and against the authors' way
TARGET_ASR_REALTIME = 300.0         # Whisper-large-v3 ASR, x real time
TARGET_PIPELINE_H100_HOURS = 6.0    # the whole paper pipeline on MSP-Podcast


# -------------------------------------------------------------------------------------------- the arithmetic


@dataclass(frozen=True)
class Corpus:
    """MSP-Podcast as the paper preset splits it: the challenge release's ~84k Train rows (90 % train, 10 % the
    in-house test cut) and ~32k Development rows; ~190 h of audio in all."""
    utterances: int = 116_000
    audio_hours: float = 190.0
    train: int = 75_600
    dev: int = 32_000
    test: int = 8_400

    @property
    def mean_s(self) -> float:
        return self.audio_hours * 3600 / self.utterances


@dataclass(frozen=True)
class TrainingRun:
    """One DeepSER trained through stages 1-2: its encoders, fusion, epochs, and what it predicts afterwards
    (a member: every utterance, for the meta-classifier and the tables; an ablation run: the test split)."""
    name: str
    mix: tuple[str, ...]
    fusion: str
    stage1_epochs: int
    stage2_epochs: int
    predict_all: bool


@dataclass(frozen=True)
class BudgetLine:
    stage: str
    detail: str
    gpu_hours: float


def run_hours(run: TrainingRun, corpus: Corpus, train_rate: float, eval_rate: float,
              stage2_share: float = 1.0) -> tuple[float, float]:
    """(training, evaluation) GPU-hours of one run: every epoch one pass (stage 1 over the train split, stage 2
    over stage2_share of it: 1.0 is the upper bound, a class-balanced draw is smaller), the dev split scored after
    every epoch, then its predictions. Rates in audio seconds per second."""
    epochs = run.stage1_epochs + run.stage2_epochs
    trained = (run.stage1_epochs + run.stage2_epochs * stage2_share) * corpus.train * corpus.mean_s
    scored = (epochs * corpus.dev + (corpus.utterances if run.predict_all else corpus.test)) * corpus.mean_s
    return trained / train_rate / 3600, scored / eval_rate / 3600


def pipeline_budget(corpus: Corpus, asr_rate: float, extraction_rates: Mapping[str, float],
                    runs: Sequence[TrainingRun], rates: Mapping[tuple[tuple[str, ...], str], tuple[float, float]],
                    stage2_share: float = 1.0) -> list[BudgetLine]:
    """GPU-hours per stage of the whole pipeline, from rates in audio seconds per second: ASR of every clip, each
    encoder over every clip, and each training run at `rates[(mix, fusion)]` = (training, forward-only). The
    ensemble's stages 3-4 (a linear layer over the members' posteriors) take CPU seconds and are left out."""
    audio_s = corpus.audio_hours * 3600
    lines = [BudgetLine("ASR", "Whisper-large-v3, every clip", audio_s / asr_rate / 3600)]
    lines += [BudgetLine("extraction", key, audio_s / rate / 3600) for key, rate in extraction_rates.items()]
    groups: dict[str, list[float]] = {}
    for run in runs:
        train_h, eval_h = run_hours(run, corpus, *rates[(run.mix, run.fusion)], stage2_share)
        group = "members" if run.predict_all else "ablation"
        totals = groups.setdefault(group, [0, 0.0, 0.0])
        totals[0] += 1
        totals[1] += train_h
        totals[2] += eval_h
    for group, (n, train_h, eval_h) in groups.items():
        what = f"{n} DeepSER members" if group == "members" else f"{n} Table 2 ablation runs"
        lines.append(BudgetLine("training", what + ", stages 1-2", train_h))
        lines.append(BudgetLine("evaluation", what + ": dev every epoch, then "
                                + ("every utterance" if group == "members" else "the test split"), eval_h))
    return lines


def budget_total(lines: Sequence[BudgetLine]) -> float:
    return sum(line.gpu_hours for line in lines)


def paper_runs(params) -> list[TrainingRun]:
    """The training runs of configs/paper.yaml: every member, then every ablation model x variant (the variant's
    `train` keys over the model's own; the reference row of Table 2 is the member itself, not trained again)."""
    from medusa.config.params import merge_overrides

    base = params.train.model_dump()
    runs = []
    for name, spec in params.models.items():
        train = merge_overrides(base, spec.overrides)
        runs.append(TrainingRun(name, tuple(spec.encoders), train["fusion"], train["stage1_epochs"],
                                train["stage2_epochs"], True))
    for name in params.ablate.models:
        spec = params.models[name]
        for variant, switch in params.ablate.variants.items():
            train = merge_overrides(merge_overrides(base, spec.overrides), switch)
            runs.append(TrainingRun(f"{name}/{variant}", tuple(spec.encoders), train["fusion"],
                                    train["stage1_epochs"], train["stage2_epochs"], False))
    return runs


def enc_flops(d_in: int, frames: float, hidden: int, ff: int, layers: int) -> float:
    """Forward FLOPs of one ENC over `frames` frames: the input MLP, then per transformer layer the four attention
    projections, the scores and the mixing (2 x 2 T^2 h) and the feed-forward."""
    t = frames
    return 2 * t * (d_in * hidden + hidden * hidden) + layers * (
        2 * t * (4 * hidden * hidden + 2 * hidden * ff) + 4 * t * t * hidden)


def deepser_flops(dims: Sequence[int], frames: Sequence[float], hidden: int, ff: int, layers: int,
                  fusion: str) -> float:
    """Forward FLOPs of DeepSER on one sample: a unimodal ENC per input; deep fusion adds fusion ENC 1 over all
    inputs' frames and fusion ENC 2 over twice that (the unimodal outputs and fusion 1's)."""
    total = sum(enc_flops(d, t, hidden, ff, layers) for d, t in zip(dims, frames))
    if fusion == "deep":
        s = sum(frames)
        total += enc_flops(hidden, s, hidden, ff, layers) + enc_flops(hidden, 2 * s, hidden, ff, layers)
    return total


def mix_cost(mix: Sequence[str], fusion: str, duration_s: float, hidden: int = 1024, ff_mult: int = 4,
             layers: int = 2, audio_fps: float = PAPER_AUDIO_FPS) -> float:
    """DeepSER forward FLOPs per second of audio for an utterance of duration_s (the paper's dims by default)."""
    features = [FEATURES[k] for k in mix]
    frames = [f.frames(duration_s, audio_fps) for f in features]
    return deepser_flops([f.dim for f in features], frames, hidden, ff_mult * hidden, layers, fusion) / duration_s


def scaled_rate(cost: float, measured: Mapping[Any, tuple[float, float]]) -> tuple[float, Any]:
    """A rate for a model of `cost` FLOPs per audio second from the measured (cost, rate) nearest to it in cost
    (log ratio): scaled down by their cost ratio when it costs more, kept when it costs less (a cheaper model
    does not shed a step's fixed overheads, so its time stays an upper bound). Returns (rate, the key used)."""
    key = min(measured, key=lambda k: abs(math.log(measured[k][0] / cost)))
    ref_cost, ref_rate = measured[key]
    return ref_rate * min(1.0, ref_cost / cost), key


@dataclass
class BudgetResult:
    corpus: dict = field(default_factory=dict)
    lines: list[BudgetLine] = field(default_factory=list)
    total_hours: float = 0.0
    mixes: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def budget_part(asr: AsrResult, extraction: ExtractResult, training: TrainResult, corpus: Corpus = Corpus()
                ) -> BudgetResult:
    """The measured rates -> paper_runs' rates (FLOP-scaled from the nearest measured mix where not measured)
    -> pipeline_budget."""
    runs = paper_runs(load_params(PRESET))
    d = training.mean_duration_s
    size = Size(**training.size)

    def cost(mix: tuple[str, ...], fusion: str) -> float:
        return mix_cost(mix, fusion, d, size.hidden, size.ff_mult, size.layers, size.audio_fps)

    measured_train = {tuple(r.mix.split("+")): (cost(tuple(r.mix.split("+")), "deep"), r.audio_s_per_s)
                      for r in training.rows if r.method == "ours"}
    measured_eval = {tuple(e.mix.split("+")): (cost(tuple(e.mix.split("+")), "deep"), e.audio_s_per_s)
                     for e in training.evals}
    rates, mixes = {}, []
    for key in dict.fromkeys((run.mix, run.fusion) for run in runs):
        c = cost(*key)
        train_rate, train_from = scaled_rate(c, measured_train)
        eval_rate, _ = scaled_rate(c, measured_eval)
        rates[key] = (train_rate, eval_rate)
        exact = train_from == key[0] and key[1] == "deep"
        mixes.append({"mix": "+".join(key[0]), "fusion": key[1], "gflop_per_audio_s": c / 1e9,
                      "train_audio_s_per_s": train_rate, "eval_audio_s_per_s": eval_rate,
                      "source": "measured" if exact else f"scaled from {'+'.join(train_from)}",
                      "runs": sum(1 for r in runs if (r.mix, r.fusion) == key)})
    ours_asr = next(r for r in asr.rows if r.way == "ours")
    extraction_rates = {r.encoder: r.audio_s_per_s for r in extraction.rows if r.method == "ours"}
    lines = pipeline_budget(corpus, ours_asr.audio_s_per_s, extraction_rates, runs, rates)
    result = BudgetResult(asdict(corpus), lines, budget_total(lines), mixes)
    m2 = ("wavlm", "hubert", "roberta")
    if m2 in measured_train:
        epoch_h = corpus.train * corpus.mean_s / measured_train[m2][1] / 3600
        s1, s2 = runs[0].stage1_epochs, runs[0].stage2_epochs
        result.notes.append(f"One epoch of Table 1's model 2 over the train split: {60 * epoch_h:,.1f} GPU-minutes "
                            f"({epoch_h * (s1 + s2):,.1f} GPU-hours for {s1} + {s2} epochs): the training rows scale "
                            "with the epochs that early stopping leaves.")
    authors_wavlm = extraction.rate("wavlm", "authors'")
    if authors_wavlm:
        result.notes.append(f"WavLM-large extraction the authors' way would take "
                            f"{corpus.audio_hours * 3600 / authors_wavlm / 3600:,.1f} GPU-hours alone (ours: "
                            f"{corpus.audio_hours * 3600 / extraction_rates['wavlm'] / 3600:,.2f}).")
    best = max((r for r in asr.rows if r.lengths_held and r.way != "30 s windows" and not (
        r.way == "ours, fp16 weights" and r.same_tokens_as_ours is False)), key=lambda r: r.audio_s_per_s)
    if best.way != "ours":
        hours = corpus.audio_hours * 3600 / best.audio_s_per_s / 3600
        result.notes.append(f"ASR with '{best.way}' instead: {hours:.2f} GPU-hours (ours {lines[0].gpu_hours:.2f}).")

    def store_bytes(mix: tuple[str, ...]) -> float:  # float16 feature bytes per audio second
        return sum(FEATURES[f].dim * 2 * (size.audio_fps if FEATURES[f].kind == "audio" else TOKENS_PER_S)
                   for f in mix)

    hungriest = max(measured_train, key=lambda k: store_bytes(k) * measured_train[k][1])
    per_s = store_bytes(hungriest)
    result.notes.append(f"Feature reads while training {'+'.join(hungriest)}: {per_s / 1e3:.0f} kB of float16 per "
                        f"audio second, {per_s * measured_train[hungriest][1] / 1e9:.2f} GB/s at its measured rate; "
                        "its stores for MSP-Podcast's train split hold "
                        f"{per_s * corpus.train * corpus.mean_s / 1e9:,.0f} GB, so beyond the page cache storage must "
                        "keep up (the benchmark reads a warm cache).")
    return result


# ---------------------------------------------------------------------------------------------- the targets


def gpu_factor(device_text: str) -> tuple[float, float] | None:
    """How H100-hours relate to hours on the measured GPU: an H200 has the H100's dense bf16 peak and 1.4 times its
    memory bandwidth, so a job takes 1.0 (compute-bound) to 1.4 (memory-bound) times as long on an H100."""
    if "H100" in device_text:
        return 1.0, 1.0
    if "H200" in device_text:
        return 1.0, 1.4
    return None


def target_rows(results: dict, device_text: str, cpu: bool) -> list[tuple[str, str, str]]:
    """(target, measured, met / missed / not measured) for each of the issue's four targets."""
    def status(ok: bool | None) -> str:
        if cpu:
            return "not measured (CPU dry run)"
        return "not measured" if ok is None else ("met" if ok else "missed")

    extraction, asr, budget = results.get("extract"), results.get("asr"), results.get("budget")
    wavlm = extraction.rate("wavlm") if extraction else None
    authors = extraction.rate("wavlm", "authors'") if extraction else None
    ours_asr = next((r.audio_s_per_s for r in asr.rows if r.way == "ours"), None) if asr else None
    rows = [
        (f"WavLM-large extraction >= {TARGET_WAVLM_REALTIME:,.0f}× real time, end to end", fmt_x(wavlm),
         status(None if wavlm is None else wavlm >= TARGET_WAVLM_REALTIME)),
        (f"WavLM-large extraction >= {TARGET_WAVLM_VS_AUTHORS:g}× the authors' way",
         fmt_x(wavlm / authors) if wavlm and authors else "—",
         status(None if not (wavlm and authors) else wavlm / authors >= TARGET_WAVLM_VS_AUTHORS)),
        (f"Whisper-large-v3 ASR >= {TARGET_ASR_REALTIME:g}× real time", fmt_x(ours_asr),
         status(None if ours_asr is None else ours_asr >= TARGET_ASR_REALTIME)),
    ]
    if budget is None:
        rows.append((f"whole paper pipeline <= {TARGET_PIPELINE_H100_HOURS:g} H100-hours", "—", status(None)))
    else:
        factor = gpu_factor(device_text)
        total = budget.total_hours
        if factor is None:
            measured, ok = f"{total:,.1f} GPU-hours on {device_text} (no H100 equivalent)", None
        else:
            low, high = total * factor[0], total * factor[1]
            measured = (f"{low:,.1f} H100-hours" if low == high else f"{low:,.1f}–{high:,.1f} H100-hours "
                        f"({total:,.1f} on the {device_text})")
            ok = True if high <= TARGET_PIPELINE_H100_HOURS else (False if low > TARGET_PIPELINE_H100_HOURS else None)
        rows.append((f"whole paper pipeline <= {TARGET_PIPELINE_H100_HOURS:g} H100-hours (upper bound: every epoch)",
                     measured, status(ok) if ok is not None or cpu else "undecided (within the H100 range)"))
    return rows


# ------------------------------------------------------------------------------------------------ report


def budget_blocks(b: BudgetResult | None) -> list[dict]:
    """The "### Budget" subsection: what is counted, GPU-hours per stage, each mix's rate and where it came from."""
    if b is None:
        return [report.heading("Budget: MSP-Podcast with the paper preset"),
                report.text("Not computed (needs the ASR, extraction and training rates).")]
    c = Corpus(**b.corpus)
    stages = [[x.stage, x.detail, f"{x.gpu_hours:,.2f}"] for x in b.lines]
    stages.append(["**total**", "", f"**{b.total_hours:,.2f}**"])
    mixes = [[m["mix"], m["fusion"], m["runs"], f"{m['gflop_per_audio_s']:,.3g}", fmt_rate(m["train_audio_s_per_s"]),
              fmt_rate(m["eval_audio_s_per_s"]), m["source"]] for m in b.mixes]
    return [
        report.heading("Budget: MSP-Podcast with the paper preset"),
        report.text(
            f"`pipeline_budget`: {c.utterances:,} utterances, {c.audio_hours:g} h of audio (mean {c.mean_s:.1f} s): "
            f"{c.train:,} train (stage 1), {c.dev:,} dev, {c.test:,} test. configs/paper.yaml: 14 members and Table "
            "2's 20 ablation runs (4 models × 5 variants; `no_stage2` has no stage 2, `late_fusion` no fusion "
            "ENCs); stage 1 20 and stage 2 10 epochs, each one pass over the train split (an upper bound: patience "
            "5 may stop a stage early, and stage 2's class-balanced draw is smaller than the split); dev scored "
            "after every epoch; members then predict every utterance, ablation runs the test split. Rates: the "
            "measured ones in audio seconds per second (ASR: ours), DeepSER mixes not measured scaled from the "
            "nearest measured mix by their forward FLOPs per audio second (only ever down: a cheaper mix keeps the "
            "measured rate). The blind set (3,200 clips, ~3 %) is left out."),
        report.table(["stage", "what", "GPU-hours"], "llr", stages),
        report.table(["DeepSER", "fusion", "runs", "GFLOP per audio s (forward)", "training audio s per s",
                      "forward audio s per s", "rate"], "llrrrrl", mixes),
        report.bullets(b.notes, gap=0) if b.notes else None]


def target_blocks(results: dict, device_text: str, cpu: bool) -> list[dict]:
    """The "### Targets" subsection: each of the issue's targets, measured and met or missed."""
    return [
        report.heading("Targets"),
        report.table(["target", "measured", "status"], "lll", target_rows(results, device_text, cpu)),
        None if cpu else report.text(
            "H100-hours: the run's GPU-hours × 1.0 (compute-bound) to 1.4 (memory-bound) when measured on an H200 "
            "(an H100 has its dense bf16 peak and 1/1.4 of its memory bandwidth).")]
