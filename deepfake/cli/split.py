"""Turn flat real/fake folders into the ForenSynths layout: ``python -m deepfake split SRC OUT``.

    python -m deepfake split photos/ data/mine --ratios 0.8,0.1,0.1 --seed 0

SRC is any layout :mod:`deepfake.data.layouts` reads (``SRC/{real,ai}``, ``SRC/{domain}/{0_real,1_fake}``,
or names given with ``--label_dirs``). OUT receives ``{train,val,test}/{category}/{0_real,1_fake}/``
of symbolic links to the original files, which keep their names (and the sub-folders they had
inside their label folder). Each (category, class) group is shuffled with the seed and cut at
the ratios, so the split is stratified and the same seed always gives the same split. OUT must
not exist or be empty; ``OUT/split.json`` records the source, ratios, seed and counts.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from pathlib import Path

from deepfake.cli.args import CliParser, setup_logging
from deepfake.data.image_io import walk_images
from deepfake.data.layouts import LayoutError, find_label_folders, parse_label_dirs
from deepfake.utils.fileio import atomic_write_json
from deepfake.utils.text import parse_list

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
LABEL_DIRS = ("0_real", "1_fake")


def split_counts(n: int, ratios: tuple[float, ...]) -> list[int]:
    """Sizes summing to ``n``, closest to ``ratios`` (largest remainders get the leftover images)."""
    total = sum(ratios)
    exact = [n * r / total for r in ratios]
    sizes = [int(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def plan_split(src: Path, ratios: tuple[float, ...], seed: int, labels: dict[str, int] | None = None,
               category: str | None = None) -> list[tuple[str, str, str, int, str]]:
    """(split, category, relative name, label, source path) for every image under ``src``."""
    folders = find_label_folders(src, labels)
    if not folders:
        raise LayoutError(f"{src}: no label folders holding images (real/fake, 0_real/1_fake, nature/ai or --label_dirs)")
    groups: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for folder in folders:
        name = "/".join(((folder.split,) if folder.split else ()) + folder.parts) or category or src.resolve().name
        for path in walk_images(folder.path):
            groups.setdefault((name, folder.label), []).append((os.path.relpath(path, folder.path), path))
    plan = []
    for (name, label), members in sorted(groups.items()):
        members.sort()
        random.Random(f"{seed}:{name}:{label}").shuffle(members)
        start = 0
        for split, size in zip(SPLITS, split_counts(len(members), ratios)):
            plan.extend((split, name, rel, label, path) for rel, path in members[start:start + size])
            start += size
    return plan


def write_split(plan: list[tuple[str, str, str, int, str]], out: Path) -> dict:
    """Create the links (absolute, to the resolved originals); returns counts per split, category and class."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    seen: set[Path] = set()
    for split, name, rel, label, path in plan:
        target = out / split / name / LABEL_DIRS[label] / rel
        if target in seen:
            raise LayoutError(f"{target}: two source images would get this name")
        seen.add(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.realpath(path), target)
        by_class = counts.setdefault(split, {}).setdefault(name, {"real": 0, "fake": 0})
        by_class[("real", "fake")[label]] += 1
    return counts


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(parse_list(text, float))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST fractions, got {text!r}") from None
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected three non-negative fractions TRAIN,VAL,TEST, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m deepfake split", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="folder with real and fake images (any supported layout)")
    p.add_argument("out", help="new folder for the ForenSynths layout (must not exist or be empty)")
    p.add_argument("--ratios", type=parse_ratios, default=(0.8, 0.1, 0.1), help="train,val,test (default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--category", default=None, help="category name when SRC has no domain folders (default: SRC's name)")
    p.add_argument("--label_dirs", nargs="+", default=None, metavar="CLASS=NAMES", help="e.g. real=a,b fake=c,d")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    src, out = Path(args.src), Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        log.error("%s: exists and is not an empty folder; choose a new output folder", out)
        return 2
    try:
        plan = plan_split(src, args.ratios, args.seed, parse_label_dirs(args.label_dirs), args.category)
        counts = write_split(plan, out)
    except LayoutError as exc:
        log.error("%s", exc)
        return 2
    atomic_write_json(out / "split.json", {"source": str(src.resolve()), "ratios": list(args.ratios),
                                           "seed": args.seed, "counts": counts})
    for split in SPLITS:
        for name, c in sorted(counts.get(split, {}).items()):
            print(f"{split:<6} {name:<30} {c['real']:>7} real {c['fake']:>7} fake")
    print(f"linked {len(plan)} images into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
