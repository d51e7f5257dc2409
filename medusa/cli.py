"""`medusa` console entry point.

    medusa demo-corpus OUT_DIR [--params params.yaml]   write the synthetic demo corpus (MSP-Podcast layout)
    medusa run NOTEBOOK --section NAME [--key KEY]      execute a stage notebook (see medusa.run)
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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
