"""Train the deepfake classifier head on a frozen LanguageBind image tower.

    python train_ClassifierHead.py --dataset_dir data/progan --output_dir runs/progan \
        --categories car,cat,chair,horse --num_epochs 50

Features are extracted once into a cache; epochs then train the head from it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from deepfake.cli_args import add_cache_args, add_runtime_args, add_tower_args, parse_pair, setup_logging
from deepfake.training import train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True,
                   help="DATASET/{category}/{0_real,1_fake} or DATASET/{train,val,test}/{category}/{0_real,1_fake}")
    p.add_argument("--output_dir", required=True, help="run directory for checkpoints (epoch_NNN, best)")
    p.add_argument("--num_epochs", type=int, default=10)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay (0: plain Adam)")
    p.add_argument("--seed", type=int, default=512)
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all found)")
    p.add_argument("--val_ratio", type=float, default=0.1, help="held-out share when there is no val/ split")
    add_tower_args(p)
    add_runtime_args(p)
    p.add_argument("--extract_batch_size", type=int, default=None, help="tower batch size (default: --batch_size)")
    add_cache_args(p)
    p.add_argument("--feature_layers", default="none", choices=("none", "all"),
                   help="all: also cache the CLS token of every transformer block")
    aug = p.add_argument_group("augmentation (CNNDetection's blur + JPEG)")
    aug.add_argument("--blur_prob", type=float, default=0.0)
    aug.add_argument("--blur_sigma", type=float, default=3.0, help="sigma drawn from U[0, blur_sigma]")
    aug.add_argument("--jpeg_prob", type=float, default=0.0)
    aug.add_argument("--jpeg_quality", type=parse_pair, default=(30, 100), help="LO,HI quality range")
    aug.add_argument("--aug_views", type=int, default=4, help="augmented views cached per image")
    p.add_argument("--overwrite", action="store_true", help="write checkpoints into a non-empty output dir")
    p.add_argument("--resume", action="store_true", help="continue the run in --output_dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        summary = train(args)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        logging.getLogger("train").error("%s", exc)
        return 2
    if summary:
        print(f"best val AP {summary['best_val_ap']:.4f}; checkpoints in {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
