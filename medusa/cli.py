"""`medusa` console entry point.

    medusa demo-corpus OUT_DIR [--params params.yaml]   write the synthetic demo corpus (MSP-Podcast layout)
    medusa run NOTEBOOK --section NAME [--key KEY]      execute a stage notebook (see medusa.run)
    medusa extract ENCODER --shard I/N                  extract one shard of an encoder's features (one machine
                                                        or GPU per shard), then
    medusa extract ENCODER --merge N                    join the N shards into work/features/ENCODER
    medusa predict BUNDLE AUDIO... [--out CSV]          emotion probabilities of audio files from a predict
          [--allow-version-mismatch]                    bundle (medusa.bundle); refuses other library versions
                                                        than those that made its features unless allowed
"""
from __future__ import annotations

import argparse
import logging
import sys

from medusa.params import PARAMS_FILE, ParamsError, load_params


def _demo_corpus(args: argparse.Namespace) -> int:
    from medusa.corpora.demo import build_demo_corpus, tree_digest

    params = load_params(args.params).demo_corpus
    counts = build_demo_corpus(args.out_dir, params)
    print(f"wrote {sum(counts.values())} utterances to {args.out_dir} ({counts}); "
          f"digest {tree_digest(args.out_dir)[:16]}")
    return 0


def _extract(args: argparse.Namespace) -> int:
    import pandas as pd

    from medusa import paths
    from medusa.batches import pick_device
    from medusa.encoders import build_encoder
    from medusa.extract import extract_to_store, extraction_items, merge_shards

    params = load_params(args.params)
    if args.encoder not in params.encoders:
        raise ParamsError(f"{args.params}: encoders.{args.encoder}: no such encoder "
                          f"(encoders: {', '.join(params.encoders)})")
    root = paths.feature_store(args.encoder)
    if args.merge:
        store = merge_shards(root, args.merge, list(pd.read_parquet(paths.MANIFEST)["utt_id"]))
        print(f"merged {args.merge} shards into {root}: {len(store)} utterances, {store.n_frames} frames")
        return 0
    shard, _, n_shards = args.shard.partition("/")
    if not (shard.isdigit() and n_shards.isdigit() and int(shard) < int(n_shards)):
        raise ParamsError(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
    spec, device = params.encoders[args.encoder], pick_device(params.extract.device)
    encoder = build_encoder(args.encoder, spec.family, spec.model, spec.layers, device, paths.CACHE,
                            params.extract.whisper_pad_seconds)
    transcripts = (pd.read_parquet(paths.TRANSCRIPTS) if paths.TRANSCRIPTS.exists()
                   else pd.DataFrame(columns=["utt_id", "text"]))
    items = extraction_items(pd.read_parquet(paths.MANIFEST), transcripts, encoder.kind)
    stats = extract_to_store(encoder, items, root, batch_size=spec.batch_size, batch_seconds=spec.batch_seconds,
                             num_workers=params.extract.num_workers, device=device, shard=int(shard),
                             n_shards=int(n_shards))
    print(f"shard {args.shard} of {args.encoder}: {stats.as_dict()}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from medusa.audio import AudioError
    from medusa.batches import pick_device
    from medusa.bundle import BundleError, load_bundle
    from medusa.io import atomic_path

    try:
        device = pick_device(args.device)
        bundle = load_bundle(args.bundle, device, allow_version_mismatch=args.allow_version_mismatch)
        frame = bundle.predict_audio(args.audio, cache_dir=args.cache_dir)
    except (BundleError, AudioError, FileNotFoundError, RuntimeError) as e:
        # FileNotFoundError covers a missing bundle and EncoderWeightsError (pretrained weights not here);
        # RuntimeError: a CUDA device asked for where there is none. A traceback would hide the message.
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.out:
        with atomic_path(args.out) as tmp:
            frame.to_csv(tmp, index=False)
    shown = frame.drop(columns=["path"])
    if "text" in shown:
        shown["text"] = shown["text"].str.slice(0, 40)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        print(f"wrote {len(frame)} predictions to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        from medusa.run import main as run_main
        return run_main(argv[1:])
    ap = argparse.ArgumentParser(prog="medusa", description="MEDUSA speech emotion recognition pipeline")
    sub = ap.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-corpus", help="write the synthetic demo corpus in the MSP-Podcast layout")
    demo.add_argument("out_dir")
    demo.add_argument("--params", default=str(PARAMS_FILE), help="params file with a demo_corpus section")
    demo.set_defaults(func=_demo_corpus)
    sub.add_parser("run", help="execute a stage notebook (medusa run --help)")
    ext = sub.add_parser("extract", help="extract one shard of an encoder's features, or merge the shards")
    ext.add_argument("encoder", help="a key of `encoders` in params.yaml")
    how = ext.add_mutually_exclusive_group(required=True)
    how.add_argument("--shard", help="I/N: this process's shard (0-based) of N")
    how.add_argument("--merge", type=int, metavar="N", help="join the N finished shards")
    ext.add_argument("--params", default=str(PARAMS_FILE))
    ext.set_defaults(func=_extract)
    pred = sub.add_parser("predict", help="emotion probabilities of audio files (16 kHz wav) from a predict bundle")
    pred.add_argument("bundle", help="a bundle folder (written by the bundle stage, e.g. work/bundle)")
    pred.add_argument("audio", nargs="+", help="audio files, 16 kHz (several channels are averaged)")
    pred.add_argument("--out", help="also write the predictions to this CSV file")
    pred.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    pred.add_argument("--cache-dir", default="work/cache",
                      help="where converted model checkpoints (e.g. the demo Whisper) are kept")
    pred.add_argument("--allow-version-mismatch", action="store_true",
                      help="score even if the installed transformers/openai-whisper/opensmile differ (major.minor) "
                           "from those that made the members' features")
    pred.set_defaults(func=_predict)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
