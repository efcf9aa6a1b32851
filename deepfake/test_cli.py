"""Evaluate a trained deepfake classifier head, per generator and category.

    deepfake test --checkpoint runs/progan --dataset_dir data/test \
        --output_dir results/progan [--robustness]

(the same as ``python test_ClassifierHead.py ...``). Prints a table (real acc, fake acc,
acc, AP, AUC, oracle acc, ECE per domain, mean last) and writes results.json/.csv/.md,
scores.csv and plots into --output_dir.
"""

from __future__ import annotations

import logging
import sys

from deepfake.cli_args import setup_logging, test_parser
from deepfake.evaluation import evaluate
from deepfake.feature_cache import CacheError
from deepfake.runtime import terminate_as_interrupt


def main(argv: list[str] | None = None, prog: str = "deepfake test") -> int:
    parser = test_parser(__doc__)
    parser.prog = prog
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        with terminate_as_interrupt():
            evaluate(args)
    except (FileExistsError, FileNotFoundError, ValueError, CacheError) as exc:
        logging.getLogger("test").error("%s", exc)
        return 2
    except KeyboardInterrupt as exc:
        message = str(exc) if str(exc).startswith("interrupted") else "interrupted"
        logging.getLogger("test").error("%s; run the same command again to continue (cached features are kept)",
                                        message)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
