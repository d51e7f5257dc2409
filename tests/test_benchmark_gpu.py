"""benchmarks/gpu.py and its parts without a GPU: the budget arithmetic on known numbers, the paper preset's training
runs, the forced decoding lengths (on a tiny Whisper), the rate scaling, the report section built from made-up
results, and a device run's section applied here."""
import importlib
import json
import math
from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

BENCHMARK = "gpu"  # the `bench` fixture (conftest) loads benchmarks/gpu.py
PARTS = ("asr", "budget", "common", "extract", "train", "whisper")


@pytest.fixture(scope="module")
def gpu(bench):
    """gpu.py's modules by what they measure (gpu.budget is benchmarks/gpu_budget.py, ...), and train_data: they
    import as top-level modules once `bench` has put the benchmarks folder on sys.path."""
    modules = {name: importlib.import_module(f"gpu_{name}") for name in PARTS}
    return SimpleNamespace(**modules, train_data=importlib.import_module("train_data"))


# ------------------------------------------------------------------------------------------------ budget


def test_run_hours_on_round_numbers(gpu):
    corpus = gpu.budget.Corpus(utterances=1000, audio_hours=1.0, train=600, dev=300, test=100)  # mean 3.6 s
    assert corpus.mean_s == pytest.approx(3.6)
    run = gpu.budget.TrainingRun("m", ("wavlm",), "deep", stage1_epochs=2, stage2_epochs=1, predict_all=True)
    # trained: (2 + 1) x 600 x 3.6 s = 6,480 audio s; at 1.8 audio s/s: 3,600 s = 1 h
    # scored: (3 x 300 dev + 1,000 every utterance) x 3.6 s = 6,840 audio s; at 1.9 audio s/s: 1 h
    train_h, eval_h = gpu.budget.run_hours(run, corpus, train_rate=1.8, eval_rate=1.9)
    assert train_h == pytest.approx(1.0) and eval_h == pytest.approx(1.0)
    # stage 2 over half the split: (2 + 0.5) x 600 x 3.6 = 5,400 audio s
    assert gpu.budget.run_hours(run, corpus, 1.8, 1.9, stage2_share=0.5)[0] == pytest.approx(5400 / 1.8 / 3600)
    ablation = gpu.budget.TrainingRun("m/v", ("wavlm",), "deep", 2, 0, predict_all=False)
    # (2 x 600) x 3.6 = 4,320 s trained; (2 x 300 + 100 test) x 3.6 = 2,520 s scored
    assert gpu.budget.run_hours(ablation, corpus, 1.2, 0.7) == pytest.approx((1.0, 1.0))


def test_pipeline_budget_adds_every_stage(gpu):
    corpus = gpu.budget.Corpus(utterances=1000, audio_hours=2.0, train=600, dev=300, test=100)  # mean 7.2 s
    runs = [gpu.budget.TrainingRun("a", ("wavlm", "roberta"), "deep", 1, 1, True),
            gpu.budget.TrainingRun("b", ("wavlm", "roberta"), "deep", 1, 1, True),
            gpu.budget.TrainingRun("a/late", ("wavlm", "roberta"), "late", 1, 0, False)]
    rates = {(("wavlm", "roberta"), "deep"): (2.4, 3.6), (("wavlm", "roberta"), "late"): (1.2, 1.2)}
    lines = gpu.budget.pipeline_budget(corpus, asr_rate=2.0, extraction_rates={"wavlm": 4.0, "roberta": 8.0},
                                  runs=runs, rates=rates)
    hours = {(x.stage, x.detail.split(",")[0].split(":")[0]): x.gpu_hours for x in lines}
    assert hours[("ASR", "Whisper-large-v3")] == pytest.approx(1.0)          # 2 h of audio at 2x real time
    assert hours[("extraction", "wavlm")] == pytest.approx(0.5)
    assert hours[("extraction", "roberta")] == pytest.approx(0.25)
    # members: 2 x (1 + 1) x 600 x 7.2 s = 17,280 s at 2.4 -> 2 h; scored 2 x (2 x 300 + 1000) x 7.2 at 3.6 -> 1.78 h
    assert hours[("training", "2 DeepSER members")] == pytest.approx(2.0)
    assert hours[("evaluation", "2 DeepSER members")] == pytest.approx(2 * 1600 * 7.2 / 3.6 / 3600)
    # the late-fusion ablation run: 600 x 7.2 = 4,320 s at 1.2 -> 1 h; (300 + 100) x 7.2 = 2,880 s at 1.2
    assert hours[("training", "1 Table 2 ablation runs")] == pytest.approx(1.0)
    assert hours[("evaluation", "1 Table 2 ablation runs")] == pytest.approx(2880 / 1.2 / 3600)
    assert gpu.budget.budget_total(lines) == pytest.approx(sum(hours.values()))


def test_paper_runs_are_14_members_and_20_ablation_runs(gpu, repo_root):
    from medusa.config.params import load_params

    runs = gpu.budget.paper_runs(load_params(repo_root / "configs" / "paper.yaml"))
    members = [r for r in runs if r.predict_all]
    ablation = [r for r in runs if not r.predict_all]
    assert len(members) == 14 and len(ablation) == 20
    assert all((r.stage1_epochs, r.stage2_epochs, r.fusion) == (20, 10, "deep") for r in members)
    by_variant = {r.name.split("/")[1]: r for r in ablation if r.name.startswith("m09/")}
    assert by_variant["no_stage2"].stage2_epochs == 0
    assert by_variant["late_fusion"].fusion == "late"
    assert by_variant["one_hot"].mix == ("whisper", "modernbert")
    assert {r.mix for r in members if r.name == "m14"} == {("whisper", "wavlm", "modernbert")}


def test_flops_and_rate_scaling(gpu):
    # one ENC, d_in 2, 3 frames, hidden 4, FFN 8, 1 layer: 2*3*(8+16) + 2*3*(64+64) + 4*9*4 = 144 + 768 + 144
    assert gpu.budget.enc_flops(2, 3, 4, 8, 1) == 1056
    deep = gpu.budget.deepser_flops([2, 2], [3, 1], 4, 8, 1, "deep")
    late = gpu.budget.deepser_flops([2, 2], [3, 1], 4, 8, 1, "late")
    assert late == gpu.budget.enc_flops(2, 3, 4, 8, 1) + gpu.budget.enc_flops(2, 1, 4, 8, 1)
    assert deep == late + gpu.budget.enc_flops(4, 4, 4, 8, 1) + gpu.budget.enc_flops(4, 8, 4, 8, 1)
    # Whisper's 1280-d frames cost more than WavLM's 1024-d ones; a third audio encoder costs more again
    two = gpu.budget.mix_cost(("wavlm", "roberta"), "deep", 6.0)
    assert gpu.budget.mix_cost(("whisper", "roberta"), "deep", 6.0) > two
    assert gpu.budget.mix_cost(("wavlm", "hubert", "roberta"), "deep", 6.0) > 2 * two
    measured = {"small": (1.0, 100.0), "large": (4.0, 30.0)}
    assert gpu.budget.scaled_rate(2.0, measured) == (pytest.approx(50.0), "small")  # nearer to 1 than 4 (log): halved
    assert gpu.budget.scaled_rate(3.0, measured) == (pytest.approx(30.0), "large")  # cheaper than "large": kept
    assert gpu.budget.scaled_rate(8.0, measured) == (pytest.approx(15.0), "large")


# --------------------------------------------------------------------------------------- forced lengths


def test_force_lengths_only_ends_rows_at_their_target(gpu):
    eot = 3
    logits = torch.zeros(3, 5)
    logits[:, eot] = 10.0                               # every row would end now
    gpu.whisper.force_lengths_(logits, generated=4, targets=torch.tensor([4, 5, 2]), eot=eot)
    assert logits[1, eot] == -math.inf and logits[1].argmax() != eot   # short of its 5: cannot end
    for row in (0, 2):                                  # at or past its target: can only end
        assert logits[row].argmax() == eot and torch.isinf(logits[row]).sum() == 4
    assert [gpu.whisper.forced_tokens(n) for n in (16000 * 6, 1000, 16000 * 11)] == [21, 1, 38]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model decodes many times slower on 2 busy threads than on one
    yield
    torch.set_num_threads(threads)


def test_openai_whisper_decodes_exactly_the_forced_lengths(gpu, one_thread):
    from medusa.features.asr import asr_batches
    from medusa.pipeline.standins import architectures

    arch = next(a for a in architectures("tiny", whisper_decoder_layers=2) if a.key == "whisper")
    torch.manual_seed(0)
    model = gpu.whisper.build_openai_whisper(dict(arch.dims), torch.device("cpu"))
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(int(16000 * s)).astype(np.float32) * 0.1 for s in (2.9, 3.2, 6.0)]
    batches = asr_batches(["a", "b", "c"], [len(c) / 16000 for c in clips], 2, 5.0)
    row, tokens = gpu.whisper.decode_openai(model, clips, batches, 5.0, torch.device("cpu"), "ours", "tiny",
                                      warm_up=False)
    assert [len(t) for t in tokens] == [gpu.whisper.forced_tokens(len(c)) for c in clips] == [10, 11, 21]
    assert row.lengths_held and row.tokens == 42 and row.audio_s == pytest.approx(12.1)
    assert row.steps == sum(max(gpu.whisper.forced_tokens(len(clips[i])) for i in b) + 1 for b in batches)
    import whisper.decoding
    assert whisper.decoding.DecodingTask.__init__.__name__ == "__init__"  # the patch is undone


def test_transformers_whisper_gets_the_same_weights_and_tokens(gpu, one_thread):
    from medusa.features.asr import asr_batches
    from medusa.pipeline.standins import architectures

    assert (gpu.whisper.hf_name("decoder.blocks.3.cross_attn.key.weight")
            == "model.decoder.layers.3.encoder_attn.k_proj.weight")
    assert gpu.whisper.hf_name("encoder.blocks.0.attn.query.bias") == "model.encoder.layers.0.self_attn.q_proj.bias"
    assert gpu.whisper.hf_name("decoder.token_embedding.weight") == "model.decoder.embed_tokens.weight"
    arch = next(a for a in architectures("tiny", whisper_decoder_layers=2) if a.key == "whisper")
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = gpu.whisper.build_openai_whisper(dict(arch.dims), cpu)
    hf = gpu.whisper.hf_from_openai(model, cpu, torch.float32)  # raises if a parameter finds no place
    assert torch.equal(hf.model.encoder.layers[1].fc2.weight, model.encoder.blocks[1].mlp[2].weight)
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal(int(16000 * s)).astype(np.float32) * 0.1 for s in (3.0, 7.5)]
    batches = asr_batches(["a", "b"], [len(c) / 16000 for c in clips], 2, 5.0)
    import whisper.tokenizer
    tok = whisper.tokenizer.get_tokenizer(True, num_languages=model.num_languages, language="en", task="transcribe")
    _, ours = gpu.whisper.decode_openai(model, clips, batches, 5.0, cpu, "ours", "", warm_up=False)
    row, theirs = gpu.whisper.decode_hf(hf, clips, batches, 5.0, tok.sot_sequence_including_notimestamps, tok.eot, cpu,
                                  torch.float32, "static", "transformers", "")
    assert row.lengths_held and theirs == ours


# ------------------------------------------------------------------------------------------------ report


def made_up_results(gpu):
    asr = gpu.asr.AsrResult(model="Whisper-large-v3", batches=8)
    ours = gpu.whisper.AsrRow("ours", "short windows", 256, 1760.0, 3.0, 2.9, 9000.0, 6000, 300, encoder_s=0.6)
    full = gpu.whisper.AsrRow("30 s windows", "30 s", 256, 1760.0, 6.0, 5.8, 12000.0, 6000, 300, encoder_s=2.9)
    for r in (ours, full):
        r.speed_up = r.audio_s_per_s / full.audio_s_per_s
        asr.rows.append(r)
    ex = gpu.extract.ExtractResult()
    for key in ("wavlm", "hubert", "whisper", "roberta", "modernbert"):
        ex.rows.append(gpu.extract.ExtractRow(key, key.upper(), "ours", 1500, 10000.0, 1.6, 5000.0, 900.0, 200.0))
    ex.rows.append(gpu.extract.ExtractRow("wavlm", "WAVLM", "authors'", 24, 165.0, 0.5, 1500.0, 60.0, 1.0))
    tr = gpu.train.TrainResult(size=asdict(gpu.train_data.SIZES["full"]), mean_duration_s=6.9)
    for mix, rate in (("wavlm+hubert+roberta", 700.0), ("whisper+wavlm+modernbert", 690.0), ("wavlm+roberta", 1300.0)):
        tr.rows.append(gpu.train.TrainRow(mix, "ours", rate, rate * 6.9, 3.0, 0.02, 0.05, 9000.0))
        tr.evals.append(gpu.train.EvalRow(mix, 64, 3 * rate, 3 * rate * 6.9, 4000.0))
    return {"asr": asr, "extract": ex, "train": tr}


def test_report_section_states_each_target(bench, gpu):
    results = made_up_results(gpu)
    results["budget"] = gpu.budget.budget_part(results["asr"], results["extract"], results["train"])
    assert len(results["budget"].mixes) == 13 and results["budget"].total_hours > 0
    meta = {"command": "python benchmarks/gpu.py", "size": "full", "plan": gpu.common.make_plan("full"),
            "device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "torch": "2.11", "transformers": "5",
            "whisper": "20250625", "sdpa": "flash on", "load": "0 0 0", "parts_s": {"asr": 60.0}, "total_s": 300.0}
    section = bench.report_section(results, meta)
    text = bench.report.render_section(section)
    assert section["title"] == bench.TITLE and text.startswith(f"## {bench.TITLE}\n")
    assert "not yet measured" not in text
    for heading in ("### ASR", "### Feature extraction", "### DeepSER training", "### Budget", "### Targets"):
        assert heading in text
    rows = gpu.budget.target_rows(results, meta["device"], cpu=False)
    # 10,000 s / 1.6 s; that / (165 s / 0.5 s); 1,760 s / 2.9 s
    assert [r[1] for r in rows[:3]] == ["6,250×", "18.9×", "607×"]
    assert [r[2] for r in rows] == ["met", "missed", "met",
                                    "met" if results["budget"].total_hours <= 6 else "missed"]
    cpu_text = bench.report.render_section(bench.report_section(results, {**meta, "device_type": "cpu"}))
    assert "Status: not yet measured on a GPU" in cpu_text and "not measured (CPU dry run)" in cpu_text
    # a part that did not run says so in its place
    partial = bench.report.render_section(bench.report_section({"asr": results["asr"]}, meta))
    assert partial.count("Not run.") == 2 and "Not computed" in partial


def test_apply_writes_a_fetched_section(bench, tmp_path):
    """A device run leaves gpu_section.json (and the rendered .md beside it) in $OUT; --apply makes it the GPU
    section here and renders the report again, the other sections kept."""
    report = tmp_path / "benchmarks.md"
    (tmp_path / "benchmarks").mkdir()
    for name, title, text in (("extract", "Feature extraction", "keep"), ("gpu", bench.TITLE, "old")):
        (tmp_path / "benchmarks" / f"{name}.json").write_text(json.dumps({"title": title, "blocks": [{"text": text}]}))
    fetched = tmp_path / "out" / "gpu_section.json"
    fetched.parent.mkdir()
    fetched.write_text(json.dumps({"title": bench.TITLE, "blocks": [{"text": "new figures"}]}))
    bench.main(["--apply", str(fetched.with_suffix(".md")), "--out", str(report)])  # the .md names its .json
    assert report.read_text(encoding="utf-8") == ("# Benchmarks\n\n## Feature extraction\n\nkeep\n\n"
                                                  f"## {bench.TITLE}\n\nnew figures\n")
    fetched.write_text(json.dumps({"title": "Something else", "blocks": []}))
    with pytest.raises(SystemExit):
        bench.main(["--apply", str(fetched), "--out", str(report)])
