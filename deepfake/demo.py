"""One command, no downloads: build the synthetic benchmark, train on one generator, test on all.

    deepfake demo --out runs/demo            (or: python -m deepfake demo ...)

Uses the spectral baseline tower unless ``--model`` names a tower that can be loaded
(for example a LanguageBind checkpoint already in the local cache). Prints the
per-generator table; results, plots and checkpoints land under ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from deepfake.cli_args import setup_logging, test_parser, train_parser
from deepfake.evaluation import evaluate
from deepfake.synthetic import FAMILIES, generate
from deepfake.training import train

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepfake demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="folder for data, checkpoints and results")
    p.add_argument("--model", default="spectrum", help="tower (default: the weight-free spectral baseline)")
    p.add_argument("--train_family", default="tconv", choices=FAMILIES, help="the one generator trained on")
    p.add_argument("--num_epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    args = p.parse_args(argv)
    setup_logging()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        log.error("%s: not empty; pass --overwrite to reuse it or choose another --out", out)
        return 2
    data = out / "data"
    if not (data / "test").is_dir():
        generate(data, seed=args.seed, train_family=args.train_family)
    train_args = train_parser().parse_args([
        "--dataset_dir", str(data), "--output_dir", str(out / "run"), "--model", args.model,
        "--num_epochs", str(args.num_epochs), "--learning_rate", "1e-3", "--batch_size", "32",
        "--cache_dir", str(out / "cache"), "--seed", str(args.seed), "--overwrite", "--quiet",
    ])
    try:
        summary = train(train_args)
        print(f"trained on '{args.train_family}' fakes: best val AP {summary['best_val_ap']:.4f}")
        test_args = test_parser().parse_args([
            "--checkpoint", str(out / "run"), "--dataset_dir", str(data / "test"),
            "--output_dir", str(out / "eval"), "--cache_dir", str(out / "cache"), "--overwrite", "--quiet",
        ])
        evaluate(test_args)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
