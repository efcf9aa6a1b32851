"""Train the deepfake classifier head on a frozen LanguageBind image tower.

    deepfake train --dataset_dir data/progan --output_dir runs/progan \
        --categories car,cat,chair,horse --num_epochs 50

(the same as ``python train_ClassifierHead.py ...``). Features are extracted once into a
cache; epochs then train the head from it.
"""

from __future__ import annotations

import sys

from deepfake.cli_args import run_job, setup_logging, train_parser
from deepfake.training import train


def main(argv: list[str] | None = None, prog: str = "deepfake train") -> int:
    parser = train_parser(__doc__)
    parser.prog = prog
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    code, summary = run_job("train", lambda: train(args), "to continue, run the same command with --resume "
                            "(finished epochs and cached features are kept)")
    if summary:
        print(f"best val AP {summary['best_val_ap']:.4f}; checkpoints in {summary['output_dir']}")
    return code


if __name__ == "__main__":
    sys.exit(main())
