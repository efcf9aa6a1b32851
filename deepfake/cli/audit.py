"""Bias audit of a data set: ``python -m deepfake audit ROOT [--benchmark NAME --real_root DIR]``.

Per domain and class: file formats, JPEG quality (from the quantisation tables), image
sizes and how many are smaller than the crop, colour modes, EXIF / camera metadata; then
every real-vs-fake difference a detector could learn instead of generation artefacts, with
a one-line explanation. Only headers are read; big classes are sampled (and it says so).
All splits and one-class domains are audited. The headers read are remembered in the
feature cache (``--cache_dir``), so a rerun on unchanged files opens none of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from deepfake.cli.args import CliParser, setup_logging
from deepfake.config import CacheConfig
from deepfake.data.audit import DEFAULT_MAX_PER_GROUP, audit_samples, format_audit
from deepfake.data.benchmarks import load_benchmark, resolve_benchmark
from deepfake.data.image_io import walk_images
from deepfake.data.layouts import LayoutError, find_label_folders, parse_label_dirs
from deepfake.data.manifests import is_manifest, read_manifest
from deepfake.utils.fileio import atomic_write_json

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m deepfake audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="data folder (any supported layout), manifest, or --benchmark data root")
    p.add_argument("--benchmark", default=None, help="benchmark file or preset name whose folders to audit")
    p.add_argument("--real_root", default=None, help="reals kept apart from the benchmark (Synthbuster's RAISE-1k)")
    p.add_argument("--label_dirs", nargs="+", default=None, metavar="CLASS=NAMES",
                   help="label folder names, e.g. real=a,b fake=c,d")
    p.add_argument("--crop", type=int, default=224, help="the tower's input size (smaller images are counted)")
    p.add_argument("--max_per_group", type=int, default=DEFAULT_MAX_PER_GROUP,
                   help="headers read per domain and class at most (a seeded sample beyond)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache_dir", default=None,
                   help="feature cache root, where the headers read are remembered between runs "
                        "(default: $DEEPFAKE_CACHE or ~/.cache/deepfake/features)")
    p.add_argument("--no_cache", action="store_true", help="read every sampled header, remember nothing")
    p.add_argument("--output", default=None, help="write the audit as JSON")
    return p


def audit_items(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(path, domain, label) of everything under the root: all splits, one-class domains included."""
    root = Path(args.root)
    if args.benchmark:
        resolved = resolve_benchmark(load_benchmark(args.benchmark), root, args.real_root)
        for line in resolved.missing:
            log.warning("missing %s", line)
        return [(s.path, s.generator, s.label) for s in resolved.samples]
    if is_manifest(root):
        return [(e.path, "/".join(x for x in (e.split, e.domain, e.category) if x) or root.stem, e.label)
                for e in read_manifest(root)]
    items = []
    for folder in find_label_folders(root, parse_label_dirs(args.label_dirs)):
        domain = "/".join(((folder.split,) if folder.split else ()) + folder.parts) or root.resolve().name
        items.extend((p, domain, folder.label) for p in walk_images(folder.path))
    return items


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        items = audit_items(args)
    except (LayoutError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    if not items:
        log.error("%s: no labelled images found", args.root)
        return 2
    cache_root = CacheConfig(args.cache_dir, args.no_cache).root()
    report = audit_samples(items, args.crop, args.max_per_group, args.seed, cache_root=cache_root)
    print(format_audit(report))
    if args.output:
        atomic_write_json(args.output, report)
        print(f"audit written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
