"""Evaluate a trained deepfake classifier head, per generator and category.

    python test_ClassifierHead.py --checkpoint runs/progan --dataset_dir data/test \
        --output_dir results/progan [--robustness]

Prints a table (real acc, fake acc, acc, AP, AUC, oracle acc, ECE per domain, mean last)
and writes results.json/.csv/.md, scores.csv and plots into --output_dir.
The same command is installed as ``deepfake test``.
"""

from __future__ import annotations

import sys

from deepfake.cli import test as test_cli


def main(argv: list[str] | None = None) -> int:
    return test_cli.main(argv, prog="test_ClassifierHead.py")


if __name__ == "__main__":
    sys.exit(main())
