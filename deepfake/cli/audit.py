"""Bias audit of a data set: ``python -m deepfake audit ROOT [--benchmark NAME --real_root DIR]``.

Per domain and class: file formats and misnamed files, JPEG quality and whether the
quantisation tables are the IJG standard ones, the distribution of image sizes and how many
are smaller than the tower's input, colour modes, EXIF / camera metadata; then every
real-vs-fake difference a detector could learn instead of generation artefacts, with a
one-line explanation that follows the preprocessing of --model. Only headers are read; big
classes are sampled (and it says so).
All splits and one-class domains are audited. The headers read are remembered in the
feature cache (``--cache_dir``), so a rerun on unchanged files opens none of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from deepfake.cli.args import CliParser, setup_logging
from deepfake.config import CacheConfig, TowerConfig
from deepfake.data.audit import DEFAULT_MAX_PER_GROUP, audit_samples, format_audit
from deepfake.data.benchmarks import load_benchmark, resolve_benchmark
from deepfake.data.image_io import walk_images
from deepfake.data.layouts import LayoutError, find_label_folders, parse_label_dirs
from deepfake.data.manifests import is_manifest, read_manifest
from deepfake.data.preprocess import CLI_PREPROCESS_MODES, Preprocess
from deepfake.towers.backbones import Backbone, backbone_for, preprocess_from_processor_config
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
    p.add_argument("--model", default=TowerConfig.model,
                   help="the tower the images are for: its preprocessing decides the hints, e.g. 'spectrum' "
                        "(native pixels, never resized) (default: %(default)s)")
    p.add_argument("--preprocess", default=None, choices=CLI_PREPROCESS_MODES,
                   help="as for training: resize (the tower's own transform) or crop (default: the tower's record)")
    p.add_argument("--crop", type=int, default=None,
                   help="the tower's input size; smaller images are counted (default: the --model record's)")
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


def audit_preprocess(model: str, mode: str | None, crop: int | None) -> Preprocess:
    """The preprocessing of ``--model`` (a known name, or a local checkpoint's ``preprocessor_config.json``)."""
    preprocess = backbone_for(model, mode=mode).preprocess
    config = Path(model) / "preprocessor_config.json"
    if preprocess is None and config.is_file():
        preprocess = preprocess_from_processor_config(json.loads(config.read_text(encoding="utf-8")), str(config))
        preprocess = Backbone(model, "auto", model, preprocess).with_mode(mode).preprocess
    if preprocess is None:
        log.info("%s: its preprocessing is read from its checkpoint when it loads; the hints assume it resizes",
                 model)
        preprocess = Preprocess(mode="crop" if mode == "crop" else "resize")
    return replace(preprocess, size=crop, resize_size=None) if crop is not None else preprocess


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        preprocess = audit_preprocess(args.model, args.preprocess, args.crop)
        items = audit_items(args)
    except (LayoutError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    if not items:
        log.error("%s: no labelled images found", args.root)
        return 2
    cache_root = CacheConfig(args.cache_dir, args.no_cache).root()
    report = audit_samples(items, preprocess, args.max_per_group, args.seed, cache_root=cache_root)
    print(format_audit(report))
    if args.output:
        atomic_write_json(args.output, report)
        print(f"audit written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
