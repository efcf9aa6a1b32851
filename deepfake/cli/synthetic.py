"""Write the synthetic generator benchmark (ForenSynths layout): ``python -m deepfake.cli.synthetic --out DIR``.

See :mod:`deepfake.data.synthetic` for what the images are.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from deepfake.cli.args import CliParser, setup_logging
from deepfake.data import synthetic
from deepfake.data.synthetic import FAMILIES, PHOTO_SIZES, generate
from deepfake.utils.runtime import keep_freed_memory
from deepfake.utils.text import split_list

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m deepfake.cli.synthetic", description=synthetic.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n_train", type=int, default=60, help="training images per category and label")
    p.add_argument("--n_val", type=int, default=15)
    p.add_argument("--n_test", type=int, default=20, help="test images per family, category and label")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_family", default="tconv", choices=FAMILIES)
    p.add_argument("--min_size", type=int, default=256, help="smallest image side")
    p.add_argument("--max_size", type=int, default=320, help="largest image side")
    p.add_argument("--photo", action="store_true",
                   help=f"photo-sized images: sides {PHOTO_SIZES[0]}..{PHOTO_SIZES[1]} (overrides --min_size/--max_size)")
    p.add_argument("--trace", type=float, default=1.0,
                   help="strength of the fakes' up-sampling trace, 0..1 (1: pure re-synthesis)")
    p.add_argument("--test_families", default=",".join(FAMILIES), help="comma-separated test generators")
    p.add_argument("--jpeg_share", type=float, default=0.2, help="share of images saved as JPEG (quality 85-95)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not 0.0 <= args.trace <= 1.0:
        p.error(f"--trace must be in [0, 1], got {args.trace}")
    setup_logging()
    if Path(args.out).exists() and any(Path(args.out).iterdir()):
        log.error("%s: not empty; choose a new folder (existing files are never replaced)", args.out)
        return 2
    sizes = PHOTO_SIZES if args.photo else (args.min_size, args.max_size)
    if not 16 <= sizes[0] <= sizes[1]:
        p.error(f"sizes must satisfy 16 <= min <= max, got {sizes}")
    families = tuple(split_list(args.test_families) or ())
    keep_freed_memory()  # before the workers fork: they make and drop MBs of arrays per image
    try:
        generate(args.out, args.n_train, args.n_val, args.n_test, args.seed, args.train_family, sizes,
                 args.jpeg_share, args.trace, families)
    except ValueError as exc:
        p.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())

