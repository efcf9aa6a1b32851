"""Evaluate a trained deepfake classifier head, per generator and category.

    python test_ClassifierHead.py --checkpoint runs/progan --dataset_dir data/test \
        --output_dir results/progan [--robustness]

Prints a table (real acc, fake acc, acc, AP, AUC, oracle acc, ECE per domain, mean last)
and writes results.json/.csv/.md, scores.csv and plots into --output_dir.
"""

from __future__ import annotations

import argparse
import logging
import sys

from deepfake.cli_args import add_cache_args, add_runtime_args, setup_logging
from deepfake.evaluation import evaluate


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run directory (uses best) or checkpoint file")
    p.add_argument("--dataset_dir", required=True, help="test root (see README for the layouts)")
    p.add_argument("--categories", default=None, help="comma-separated categories to evaluate")
    p.add_argument("--generators", default=None, help="comma-separated generators to evaluate")
    p.add_argument("--output", default=None, help="also write results.json to this path")
    p.add_argument("--output_dir", default=None, help="results folder (default: CHECKPOINT_RUN/eval_DATASET)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --output_dir")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the checkpoint's)")
    p.add_argument("--max_sample", type=int, default=None, help="at most N images per generator and class")
    p.add_argument("--seed", type=int, default=512, help="seed for --max_sample")
    pert = p.add_argument_group("robustness (applied in this order: JPEG, blur, resize)")
    pert.add_argument("--jpeg_quality", type=int, default=None, help="re-encode as JPEG at this quality")
    pert.add_argument("--gaussian_sigma", type=float, default=None, help="Gaussian blur of this sigma")
    pert.add_argument("--resize_scale", type=float, default=None, help="resize by this factor")
    pert.add_argument("--robustness", action="store_true", help="sweep JPEG quality and blur; one table per level")
    pert.add_argument("--sweep_jpeg", type=_ints, default=None, help="sweep JPEG qualities (default 95,75,50,30)")
    pert.add_argument("--sweep_sigma", type=_floats, default=None, help="sweep blur sigmas (default 1,2,3)")
    pert.add_argument("--sweep_resize", type=_floats, default=None, help="sweep resize factors (default none)")
    p.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    add_runtime_args(p)
    p.set_defaults(precision=None)
    add_cache_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        evaluate(args)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        logging.getLogger("test").error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
