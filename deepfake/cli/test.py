"""Evaluate a trained deepfake classifier head, per generator and category.

    deepfake test --checkpoint runs/progan --dataset_dir data/test \
        --output_dir results/progan [--robustness]

(the same as ``python test_ClassifierHead.py ...``). Prints a table (real acc, fake acc,
acc, AP, AUC, oracle acc, ECE per domain, mean last) and writes results.json/.csv/.md,
scores.csv and plots into --output_dir.
"""

from __future__ import annotations

import argparse
import sys

from deepfake.cli.args import eval_config, run_job, setup_logging, test_parser
from deepfake.evaluation.run import evaluate
from deepfake.utils.threads import budget_threads


def build_parser(prog: str = "deepfake test") -> argparse.ArgumentParser:
    parser = test_parser(__doc__)
    parser.prog = prog
    return parser


def main(argv: list[str] | None = None, prog: str = "deepfake test") -> int:
    args = build_parser(prog).parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    config = eval_config(args)
    budget_threads(args.threads, args.num_workers)
    code, _ = run_job("test", lambda: evaluate(config), "run the same command again to continue (cached features are kept)")
    return code


if __name__ == "__main__":
    sys.exit(main())
