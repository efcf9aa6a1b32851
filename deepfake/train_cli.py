"""Train the deepfake classifier head on a frozen LanguageBind image tower.

    deepfake train --dataset_dir data/progan --output_dir runs/progan \
        --categories car,cat,chair,horse --num_epochs 50

(the same as ``python train_ClassifierHead.py ...``). Features are extracted once into a
cache; epochs then train the head from it.
"""

from __future__ import annotations

import logging
import sys

from deepfake.cli_args import setup_logging, train_parser
from deepfake.feature_cache import CacheError
from deepfake.runtime import terminate_as_interrupt
from deepfake.training import train


def main(argv: list[str] | None = None, prog: str = "deepfake train") -> int:
    parser = train_parser(__doc__)
    parser.prog = prog
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        with terminate_as_interrupt():
            summary = train(args)
    except (FileExistsError, FileNotFoundError, ValueError, CacheError) as exc:
        logging.getLogger("train").error("%s", exc)
        return 2
    except KeyboardInterrupt as exc:
        message = str(exc) if str(exc).startswith("interrupted") else "interrupted"
        logging.getLogger("train").error("%s; to continue, run the same command with --resume "
                                         "(finished epochs and cached features are kept)", message)
        return 130
    if summary:
        print(f"best val AP {summary['best_val_ap']:.4f}; checkpoints in {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
