"""Compare detectors side by side on one test set, one tower pass per tower.

    deepfake compare runs/ufd runs/rine-2class runs/rine-4class --dataset_dir data/test \
        --output_dir results/compare [--protocol ufd] [--jpeg_quality 75] [--gaussian_sigma 1]

Each detector is a run folder or a checkpoint file. Detectors on the same tower, preprocessing and
precision share one pass of the tower over the images, and their features are cached under the
keys a single ``deepfake test`` of each uses. Prints one table (a row per generator and the mean;
per detector AP, accuracy at 0.5 and at its validation threshold) and writes results.json/.csv/.md,
scores.csv and ap.png into --output_dir.
"""

from __future__ import annotations

import argparse
import sys

from deepfake.cli.args import (
    CliParser,
    add_cache_args,
    add_perturbation_args,
    add_protocol_args,
    add_runtime_args,
    add_test_set_args,
    detectors_config,
    run_job,
    setup_logging,
)


def build_parser(prog: str = "deepfake compare") -> argparse.ArgumentParser:
    parser = CliParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("detectors", nargs="+", metavar="DETECTOR", help="run folders or checkpoint files")
    add_test_set_args(parser)
    parser.add_argument("--output_dir", required=True, help="results folder")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier results in --output_dir")
    add_protocol_args(parser)
    add_perturbation_args(parser.add_argument_group("degradation (applied in this order: blur, JPEG, resize)"))
    add_runtime_args(parser)
    add_cache_args(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "deepfake compare") -> int:
    args = build_parser(prog).parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    config = detectors_config(args)
    from deepfake.evaluation.compare import compare

    code, _ = run_job("compare", lambda: compare(config), "run the same command again to continue (cached features are kept)")
    return code


if __name__ == "__main__":
    sys.exit(main())
