"""Train every head kind on the same cached features and compare them per generator.

    python benchmarks/compare_heads.py --dataset_dir data/progan --model LanguageBind/LanguageBind_Image \
        --test_dir data/test --output_dir runs/compare_heads

The tower runs once per image (train, val and test, with the CLS token of every chosen
block), through the feature cache that ``train_ClassifierHead.py`` and
``test_ClassifierHead.py`` use. Each head kind then trains from those features with the same
seed, split, batches and options; its best epoch (val AP) is saved as an ordinary checkpoint
under ``OUTPUT/<kind>/`` and scored on the test set. Printed and saved (results.md,
results.json): one per-generator table with a column group (acc, AP) per head, the tower
passes counted during the run, and the layers head's learned block importance
(``importance.png``).
"""

from __future__ import annotations

import argparse
import logging

from deepfake.cli.args import CliParser, add_cache_args, add_runtime_args, add_tower_args, setup_logging
from deepfake.config import LR_SCHEDULES, CompareConfig, from_flags
from deepfake.training.compare_heads import compare_heads
from deepfake.utils.threads import budget_threads

log = logging.getLogger(__name__)

COMPARE = CompareConfig()


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="benchmarks/compare_heads.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True, help="training data (its val/ split or --val_ratio holds out val)")
    p.add_argument("--test_dir", default=COMPARE.test_dir, help="test root (default: DATASET/test when it exists)")
    p.add_argument("--output_dir", default=COMPARE.output_dir, help="results and one checkpoint folder per head")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --output_dir")
    p.add_argument("--heads", default=COMPARE.heads,
                   help="comma-separated head kinds (default: every kind, mlp first)")
    p.add_argument("--feature_layers", default=COMPARE.feature_layers,
                   help="blocks the layers head reads (all, or e.g. 8,16,20,24)")
    p.add_argument("--categories", default=COMPARE.categories, help="training categories (default: all)")
    p.add_argument("--val_ratio", type=float, default=COMPARE.val_ratio)
    p.add_argument("--num_epochs", type=int, default=COMPARE.num_epochs)
    p.add_argument("--learning_rate", type=float, default=COMPARE.learning_rate)
    p.add_argument("--weight_decay", type=float, default=COMPARE.weight_decay)
    p.add_argument("--lr_schedule", default=COMPARE.lr_schedule, choices=LR_SCHEDULES)
    p.add_argument("--patience", type=int, default=COMPARE.patience)
    p.add_argument("--contrastive_weight", type=float, default=COMPARE.contrastive_weight,
                   help="for the mlp and layers heads")
    p.add_argument("--proj_dim", type=int, default=COMPARE.proj_dim, help="layers head: shared projection width")
    p.add_argument("--importance", default=COMPARE.importance, choices=("block", "feature"),
                   help="layers head: one weight per block, or per block and feature (RINE's exact estimator)")
    p.add_argument("--seed", type=int, default=COMPARE.seed)
    add_tower_args(p)
    add_runtime_args(p)
    add_cache_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    budget_threads(args.threads, args.num_workers)
    try:
        compare_heads(from_flags(CompareConfig, vars(args)))
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    return 0
