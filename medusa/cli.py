"""`medusa` console entry point.

    medusa demo-corpus OUT_DIR [--params params.yaml]   write the synthetic demo corpus (MSP-Podcast layout;
          [--manifest]                                  --manifest: also as a CSV manifest, OUT_DIR/manifest.csv)
    medusa run NOTEBOOK --section NAME [--key KEY]      execute a stage notebook (see medusa.pipeline.run)
    medusa extract ENCODER                              an encoder's features into work/features/ENCODER; under
                                                        `torchrun --nproc-per-node N -m medusa extract ENCODER`
                                                        each rank extracts its shard and rank 0 merges
    medusa extract ENCODER --shard I/N                  one shard of N (one machine, GPU or array job each), then
    medusa extract ENCODER --merge N                    join the N shards into work/features/ENCODER
    medusa transcribe [--shard I/N | --merge N]         the same for the Whisper transcripts (work/transcripts.parquet)
    medusa repro [--jobs N] [--dry]                     `dvc repro` with the training stages N at a time (one per
                                                        device; medusa.pipeline.repro)
    medusa predict BUNDLE PATH... [--out F]             emotion probabilities of audio files, folders or @lists
          [--window S] [--hop S] [--batch-size N]       (any format, rate, length; medusa.serving.predict) from a predict
          [--device D] [--cache-dir D]                  bundle; --out .csv/.json/.parquet; exit status 1 when a
          [--allow-version-mismatch]                    file could not be scored (its row says why); refuses
                                                        other library versions than those that made its features
                                                        unless allowed
    medusa submission BUNDLE CORPUS --out CSV           the bundle's predictions for an MSP-layout corpus's blind
          [--device D] [--cache-dir D]                  files, as a submission CSV (medusa.serving.submission)
          [--allow-version-mismatch]
    medusa evaluate BUNDLE CORPUS [--label-map W=C ...] a bundle scored on another corpus's labelled rows (a CSV
          [--splits S ...] [--out metrics.json]         manifest or an MSP-layout folder; medusa.serving.evaluate)
          [--figure confusion.png] [--predictions CSV]  its files read and scored as `medusa predict` does, a
          [--skip-bad-audio] [--batch-size N]           batch at a time; files that cannot be scored are named
                                                        and stop the run, unless --skip-bad-audio
"""
from __future__ import annotations

import argparse
import logging
import sys

from medusa.config.params import PARAMS_FILE, ParamsError, load_params
from medusa.errors import UserError, message_line


def _demo_corpus(args: argparse.Namespace) -> int:
    from medusa.data.corpora.demo import build_demo_corpus, tree_digest

    params = load_params(args.params).demo_corpus
    counts = build_demo_corpus(args.out_dir, params)
    print(f"wrote {sum(counts.values())} utterances to {args.out_dir} ({counts}); "
          f"digest {tree_digest(args.out_dir)[:16]}")
    if args.manifest:
        from pathlib import Path

        from medusa.data.corpora.csv_manifest import write_manifest_csv

        out = write_manifest_csv(args.out_dir, Path(args.out_dir) / "manifest.csv")
        print(f"wrote the CSV manifest {out} (prepare.corpus: {out})")
    return 0


def _label_map(pairs: list[str]) -> dict[str, str]:
    """--label-map's WORD=CODE pairs as a mapping. A word given twice (labels are matched ignoring case, so `calm`
    and `Calm` are one word) is refused where the last would silently win: two codes for it, or two spellings of
    it (the user meant two words); the same pair repeated changes nothing and is kept (the rule of
    medusa.config.params.label_word_clash, shared with prepare.label_map)."""
    from medusa.config.params import label_word_clash
    from medusa.labels import CONSENSUS_CODES

    given = []
    for pair in pairs:
        word, sep, code = pair.partition("=")
        if not sep or not word.strip() or code.strip().upper() not in CONSENSUS_CODES:
            raise ParamsError(f"--label-map takes WORD=CODE with a code of {' '.join(CONSENSUS_CODES)} (e.g. "
                              f"boredom=O calm=N), got {pair!r}")
        given.append((word.strip(), code.strip().upper()))
    clash = label_word_clash(given)
    if clash:
        (word, code), (other, other_code) = clash
        raise ParamsError(f"--label-map: {word}={code} and {other}={other_code} give the word {word.lower()!r} "
                          "twice (labels are matched ignoring case): keep one")
    return dict(given)


def _evaluate(args: argparse.Namespace) -> int:
    label_map = _label_map(args.label_map)  # a mistyped code is reported before torch and any model load
    from pathlib import Path

    from medusa.data.audio import AudioError
    from medusa.data.corpora.msp_podcast import CorpusError
    from medusa.io import write_json
    from medusa.reporting import plots
    from medusa.serving.bundle import BundleError
    from medusa.serving.evaluate import evaluate
    from medusa.serving.predict import PredictError, Predictor, check_output_path, write_predictions

    try:
        if args.predictions:
            check_output_path(args.predictions)  # an unknown format is said before any model loads
        predictor = Predictor.from_bundle(args.bundle, args.device, args.cache_dir, args.allow_version_mismatch)
        result = evaluate(predictor, args.corpus, label_map, args.splits, skip_bad_audio=args.skip_bad_audio,
                          seed=args.seed, bootstrap=args.bootstrap, batch_size=args.batch_size, progress=True)
    except (BundleError, AudioError, CorpusError, PredictError, FileNotFoundError, RuntimeError) as e:
        # AudioError: files that could not be scored, each named on its own line (nothing is written then)
        print(f"error: {e}", file=sys.stderr)
        return 1
    m = result.metrics
    if m["n"]:
        low, high = m["balanced_macro_f1_ci95"]
        print(f"{m['n']} utterances over {' '.join(m['classes'])}: balanced macro-F1 {m['balanced_macro_f1']:.3f} "
              f"[{low:.3f}, {high:.3f}], macro-F1 {m['macro_f1']:.3f}, accuracy {m['accuracy']:.3f}")
        print("per-class F1: " + ", ".join(f"{c} {v:.3f}" for c, v in m["per_class_f1"].items()))
    for label, info in m["not_scored"].items():
        print(f"not scored: {info['utterances']} rows labelled {label} (not one of the bundle's classes); "
              f"predicted {info['predicted']}")
    if m["skipped_audio"]:
        print(f"skipped {len(m['skipped_audio'])} audio files that could not be scored (--skip-bad-audio; each with "
              "its reason in the metrics' skipped_audio)")
    if args.out:
        write_json(m, args.out)
        print(f"wrote {args.out}")
    figure = args.figure or (str(Path(args.out).with_name(Path(args.out).stem + "_confusion.png")) if args.out else None)
    if figure and m["n"]:
        p = result.predictions
        scored = p[p["label"].isin(m["classes"]) & p["error"].isna()]
        fig = plots.confusion_matrix(scored["label"], scored["predicted"], tuple(m["classes"]),
                                     f"{Path(args.bundle).name} on {Path(args.corpus).name}")
        plots.save_figure(fig, figure)
        print(f"wrote {figure}")
    if args.predictions:
        write_predictions(result.predictions, args.predictions)  # .csv, .json or .parquet, as medusa predict
        print(f"wrote {args.predictions}")
    return 0


def _shard(text: str) -> tuple[int, int]:
    shard, _, n_shards = text.partition("/")
    if not (shard.isdigit() and n_shards.isdigit() and int(shard) < int(n_shards)):
        raise ParamsError(f"--shard must be I/N with 0 <= I < N, got {text!r}")
    return int(shard), int(n_shards)


def _extract(args: argparse.Namespace) -> int:
    import pandas as pd

    from medusa.config import paths
    from medusa.features.extract import extract_rank, extract_to_store, extraction_items, merge_shards
    from medusa.features.ranks import Rank, set_threads

    params = load_params(args.params)
    if args.encoder not in params.encoders:
        raise ParamsError(f"{args.params}: encoders.{args.encoder}: no such encoder "
                          f"(encoders: {', '.join(params.encoders)})")
    root, spec, settings = paths.feature_store(args.encoder), params.encoders[args.encoder], params.extract
    if args.merge:
        store = merge_shards(root, args.merge, list(pd.read_parquet(paths.MANIFEST)["utt_id"]))
        print(f"merged {args.merge} shards into {root}: {len(store)} utterances, {store.n_frames} frames")
        return 0
    if not args.shard:  # one process, or one rank of a torchrun (its shard from RANK/WORLD_SIZE; rank 0 merges)
        stats = extract_rank(args.encoder, spec, settings, paths.MANIFEST, paths.TRANSCRIPTS, root, paths.CACHE)
        print(f"rank {Rank.from_env().rank} of {args.encoder}: {stats.as_dict()}")
        return 0
    from medusa.features.batches import pick_device
    from medusa.features.encoders import build_encoder

    shard, n_shards = _shard(args.shard)
    set_threads(settings.threads)
    device = pick_device(settings.device)
    encoder = build_encoder(args.encoder, spec.family, spec.model, spec.layers, device, paths.CACHE,
                            settings.whisper_pad_seconds)
    transcripts = (pd.read_parquet(paths.TRANSCRIPTS) if paths.TRANSCRIPTS.exists()
                   else pd.DataFrame(columns=["utt_id", "text"]))
    items = extraction_items(pd.read_parquet(paths.MANIFEST), transcripts, encoder.kind)
    stats = extract_to_store(encoder, items, root, batch_size=spec.batch_size, batch_seconds=spec.batch_seconds,
                             num_workers=settings.num_workers, device=device, shard=shard, n_shards=n_shards)
    print(f"shard {args.shard} of {args.encoder}: {stats.as_dict()}")
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    import pandas as pd

    from medusa.config import paths
    from medusa.features.asr import TranscriptionPlan, merge_transcripts, transcribe_rank, transcribe_shard
    from medusa.features.batches import pick_device
    from medusa.features.encoders.whisper import load_whisper
    from medusa.features.ranks import set_threads

    t = load_params(args.params).transcribe
    if not (args.shard or args.merge):  # one process, or one rank of a torchrun (rank 0 merges)
        stats = transcribe_rank(t, paths.MANIFEST, paths.TRANSCRIPTS, paths.CACHE)
        print(f"rank {stats['rank']}: transcribed {stats['utterances']} utterances in {stats['compute_seconds']:.0f} s")
        return 0
    shard, n_shards = _shard(args.shard) if args.shard else (0, args.merge)
    set_threads(t.threads)
    model = load_whisper(t.model, paths.CACHE, pick_device(t.device))
    manifest = pd.read_parquet(paths.MANIFEST)
    plan = TranscriptionPlan.build(model, manifest, t.language, t.pad_seconds, t.batch_size, t.beam_size, n_shards)
    if args.merge:
        merge_transcripts(plan, manifest, paths.TRANSCRIPTS)
        print(f"merged {args.merge} shards into {paths.TRANSCRIPTS}")
        return 0
    stats = transcribe_shard(model, plan, paths.TRANSCRIPTS, t.num_workers, shard)
    print(f"shard {args.shard}: transcribed {stats['utterances']} utterances in {stats['compute_seconds']:.0f} s")
    return 0


#: rows of the table `medusa predict` prints when it also writes them all to --out
_SHOWN_ROWS = 40


def _prediction_table(frame, classes: tuple[str, ...], limit: int | None) -> str:
    """A compact text table of predictions: the file, its span when files were cut into windows, the transcript's
    start, the probabilities, the prediction, attributes, and the start of a warning or error."""
    import pandas as pd

    from medusa.labels import ATTRIBUTES, target_columns

    shown = frame.head(limit) if limit is not None else frame
    columns = ["file"]
    if (frame["level"] == "segment").any():
        columns += ["level", "start_s", "end_s"]
    columns += ["text"] if "text" in frame else []
    columns += [*target_columns(classes), "predicted", *(a for a in ATTRIBUTES if a in frame)]
    table = shown[columns].copy()
    if "text" in table:
        table["text"] = table["text"].fillna("").str.slice(0, 30)
    table["predicted"] = table["predicted"].fillna("-")
    table["note"] = [f"ERROR {e}"[:66] if pd.notna(e) else str(w)[:60] if pd.notna(w) else ""
                     for e, w in zip(shown["error"], shown["warning"])]
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 70):
        text = table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")
    if len(shown) < len(frame):
        text += f"\n... {len(frame) - len(shown)} more rows"
    return text


def _predict(args: argparse.Namespace) -> int:
    from medusa.data.audio import AudioError
    from medusa.serving.bundle import BundleError
    from medusa.serving.predict import PredictError, Predictor, check_output_path, write_predictions

    try:
        if args.out:
            check_output_path(args.out)  # an unknown format is said before any model loads
        predictor = Predictor.from_bundle(args.bundle, args.device, args.cache_dir, args.allow_version_mismatch,
                                          args.resident)
        frame = predictor.predict_files(args.paths, args.window, args.hop, args.batch_size, segment=args.segment)
        if args.out:
            write_predictions(frame, args.out)
    except (BundleError, AudioError, PredictError, OSError, RuntimeError) as e:
        # OSError covers a missing bundle, EncoderWeightsError (pretrained weights not here; a FileNotFoundError)
        # and an --out that cannot be written; RuntimeError: a CUDA device asked for where there is none. Bad
        # audio files are not among them: each is reported in its own row. A traceback would hide the message.
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(_prediction_table(frame, predictor.classes, _SHOWN_ROWS if args.out else None))
    files = frame[frame["level"] == "file"]
    errors, warnings = files["error"].dropna(), frame["warning"].notna().sum()
    if args.out:
        print(f"wrote {len(frame)} predictions to {args.out} ({len(files)} files, {len(frame) - len(files)} "
              f"windows of longer files)")
    if warnings:
        print(f"{warnings} rows with a warning (silence or very short clips): see the `warning` column")
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if len(errors):
        print(f"error: {len(errors)} of {len(files)} files could not be scored"
              f"{' (their rows in ' + args.out + ' hold the reasons)' if args.out else ''}", file=sys.stderr)
        return 1
    return 0


def _submission(args: argparse.Namespace) -> int:
    from medusa.data.audio import AudioError
    from medusa.data.corpora.msp_podcast import CorpusError
    from medusa.serving.bundle import BundleError
    from medusa.serving.predict import Predictor, output_file_problem
    from medusa.serving.submission import SubmissionError, blind_files, submission_from_bundle, write_submission

    try:
        if output_file_problem(args.out):  # the output and the corpus are checked before any model loads
            raise SubmissionError(output_file_problem(args.out))
        blind = blind_files(args.corpus)
        # The blind files are read and scored as `medusa predict` does (any rate or format; one file's problem is
        # named with every other's, and then no submission is written); the CSV is checked against the audio on disk.
        predictor = Predictor.from_bundle(args.bundle, args.device, args.cache_dir, args.allow_version_mismatch,
                                          args.resident)
        frame = submission_from_bundle(predictor, args.corpus, names=blind, progress=True)
        write_submission(frame, args.out, blind)
    except (SubmissionError, BundleError, AudioError, CorpusError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(frame)} predictions to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `medusa` parser with every subcommand and flag (`medusa run` is handed to medusa.pipeline.run's own)."""
    ap = argparse.ArgumentParser(prog="medusa", description="MEDUSA speech emotion recognition pipeline")
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-corpus", help="write the synthetic demo corpus in the MSP-Podcast layout")
    demo.add_argument("out_dir")
    demo.add_argument("--params", default=str(PARAMS_FILE), help="params file with a demo_corpus section")
    demo.add_argument("--manifest", action="store_true", help="also write OUT_DIR/manifest.csv (the CSV form)")
    demo.set_defaults(func=_demo_corpus)
    sub.add_parser("run", help="execute a stage notebook (medusa run --help)")
    sub.add_parser("repro", help="dvc repro with the training stages side by side (medusa repro --help)")
    for name, what in (("extract", "an encoder's features"), ("transcribe", "the Whisper transcripts")):
        cmd = sub.add_parser(name, help=f"{what}: in this process, as one rank of a torchrun (its shard; rank 0 "
                             "merges), one shard of N (e.g. a SLURM array job), or the merge of N shards")
        if name == "extract":
            cmd.add_argument("encoder", help="a key of `encoders` in params.yaml")
        how = cmd.add_mutually_exclusive_group()
        how.add_argument("--shard", help="I/N: this process's shard (0-based) of N; then --merge N")
        how.add_argument("--merge", type=int, metavar="N", help="join the N finished shards")
        cmd.add_argument("--params", default=str(PARAMS_FILE))
        cmd.set_defaults(func=_extract if name == "extract" else _transcribe)
    pred = sub.add_parser("predict", help="emotion probabilities of audio files, folders or @lists (any format, "
                          "rate, length) from a predict bundle")
    pred.add_argument("bundle", help="a bundle folder (written by the bundle stage, e.g. work/bundle)")
    pred.add_argument("paths", nargs="+", metavar="PATH",
                      help="audio files (any format libsndfile reads, any rate; channels are averaged), folders "
                           "(their audio files, subfolders too) or @LIST.txt (one path a line, relative to the list)")
    pred.add_argument("--out", help="also write the predictions to this .csv, .json or .parquet file")
    pred.add_argument("--window", type=float, metavar="S",
                      help="files longer than this are cut into pieces of at most S seconds, each scored, and the "
                           "file scored as their mean with each second counted once (at most 30 with Whisper; "
                           "default: the 95th percentile of the bundle's training clips' durations)")
    pred.add_argument("--hop", type=float, metavar="S", help="seconds between windows' starts (default: the window)")
    pred.add_argument("--segment", choices=("vad", "window"), default="vad",
                      help="how files longer than the training clips are cut: speech segments found by a "
                           "voice-activity detector (vad, the default: silero-vad; silence is not scored; a timeline "
                           "of speech), or fixed windows (window)")
    pred.add_argument("--batch-size", type=int, metavar="N",
                      help="pieces encoded and scored together (speed and memory only; default 64)")
    pred.add_argument("--resident", choices=("all", "one"), default="all",
                      help="keep every model in memory (all, fastest) or one at a time (for a small GPU); the same "
                           "results")
    pred.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    pred.add_argument("--cache-dir", default="work/cache",
                      help="where converted model checkpoints (e.g. the demo Whisper) are kept")
    pred.add_argument("--allow-version-mismatch", action="store_true",
                      help="score even if the installed transformers/openai-whisper/opensmile differ (major.minor) "
                           "from those that made the members' features")
    pred.set_defaults(func=_predict)
    subm = sub.add_parser("submission", help="a bundle's predictions for a corpus's blind (unlabelled) files, as "
                                             "a challenge submission CSV")
    subm.add_argument("bundle", help="a bundle folder (e.g. work/bundle)")
    subm.add_argument("corpus", help="a folder in the MSP-Podcast layout (Audios/*.wav, Labels/)")
    subm.add_argument("--out", required=True, help="the submission CSV to write")
    subm.add_argument("--device", default="auto")
    subm.add_argument("--cache-dir", default="work/cache", help="converted model checkpoints (e.g. the demo Whisper)")
    subm.add_argument("--allow-version-mismatch", action="store_true")
    subm.add_argument("--resident", choices=("all", "one"), default="all",
                      help="keep every model in memory (all) or one at a time (for a small GPU); the same results")
    subm.set_defaults(func=_submission)
    ev = sub.add_parser("evaluate", help="score a bundle on another corpus's labelled rows (cross-corpus)")
    ev.add_argument("bundle", help="a bundle folder (e.g. work/bundle)")
    ev.add_argument("corpus", help="a CSV manifest or a folder in the MSP-Podcast layout")
    ev.add_argument("--label-map", nargs="+", action="extend", default=[], metavar="WORD=CODE",
                    help="labels that are not class codes or names, e.g. boredom=O calm=N")
    ev.add_argument("--splits", nargs="+", action="extend", help="only rows of these CSV `split` values (or MSP "
                    "Split_Sets)")
    ev.add_argument("--out", help="write the metrics to this JSON file (and the confusion matrix beside it)")
    ev.add_argument("--figure", help="write the confusion matrix to this PNG (default: beside --out)")
    ev.add_argument("--predictions", help="write every row's prediction to this .csv, .json or .parquet file")
    ev.add_argument("--skip-bad-audio", action="store_true", help="score the other files when some cannot be "
                    "(unreadable, too short, ...) and list those in the metrics' skipped_audio, instead of stopping")
    ev.add_argument("--batch-size", type=int, metavar="N",
                    help="windows encoded and scored together (speed and memory only; default 64)")
    ev.add_argument("--cache-dir", default="work/cache", help="converted model checkpoints (e.g. the demo Whisper)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples behind the interval")
    ev.add_argument("--bootstrap", type=int, default=1000, help="resamples behind the 95 %% interval")
    ev.add_argument("--allow-version-mismatch", action="store_true")
    ev.set_defaults(func=_evaluate)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        from medusa.pipeline.run import main as run_main
        return run_main(argv[1:])
    if argv[:1] == ["repro"]:
        from medusa.pipeline.repro import main as repro_main
        return repro_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UserError as e:  # a user's mistake: one line naming the file, key or value; anything else is a bug
        print(message_line(e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
