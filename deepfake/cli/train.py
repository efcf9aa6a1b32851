"""Train the deepfake classifier head on a frozen LanguageBind image tower.

    deepfake train --dataset_dir data/progan --output_dir runs/progan \
        --categories car,cat,chair,horse --num_epochs 50

(the same as ``python train_ClassifierHead.py ...``). Features are extracted once into a
cache; epochs then train the head from it.
"""

from __future__ import annotations

import argparse
import sys

from deepfake.cli.args import run_job, setup_logging, train_config, train_parser
from deepfake.training.run import train
from deepfake.utils.threads import budget_threads


def build_parser(prog: str = "deepfake train") -> argparse.ArgumentParser:
    parser = train_parser(__doc__)
    parser.prog = prog
    return parser


def main(argv: list[str] | None = None, prog: str = "deepfake train") -> int:
    args = build_parser(prog).parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    config = train_config(args)
    budget_threads(args.threads, args.num_workers)
    code, summary = run_job("train", lambda: train(config), "to continue, run the same command with --resume "
                            "(finished epochs and cached features are kept)")
    if summary:
        print(f"best val AP {summary['best_val_ap']:.4f}; checkpoints in {summary['output_dir']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
