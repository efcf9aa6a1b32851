"""Score your own images: ``python -m deepfake predict PATH... --checkpoint RUN``.

Files, folders (recursive) and glob patterns. Every readable image gets P(fake) and a
label at the checkpoint's threshold; every other file is listed with the reason it was
skipped. Exit status: 0 when something was scored, 1 when nothing was (or, with
``--strict``, when anything was skipped), 2 on a usage or checkpoint error.

The scores come from the same code path as ``test_ClassifierHead.py``: the shared
loader, the tower's batched feature pass, the head.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfake.checkpoint import CheckpointRefused
from deepfake.cli_args import add_runtime_args, setup_logging
from deepfake.clip_weights import CheckpointError
from deepfake.deepfake_classifier import DeepfakeClassifier, batch_probabilities, fake_probabilities
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.feature_batch import tower_batch
from deepfake.features import ExtractionSettings, extract_features
from deepfake.fileio import atomic_write_text, display_path
from deepfake.image_io import ImageSkipped, expand_inputs
from deepfake.runtime import init_distributed
from deepfake.transforms import tile_views

log = logging.getLogger(__name__)

DEFAULT_MAX_TILES = 16


@dataclass
class Prediction:
    """One input's result: P(fake) and label, or the reason it was skipped."""

    path: str
    probability: float | None
    label: str | None
    tile_probability: float | None = None
    skipped: str = ""


def score(
    classifier: DeepfakeClassifier,
    inputs: list,
    batch_size: int = 32,
    num_workers: int = 0,
    tiles: int = 0,
    threshold: float | None = None,
    max_pixels: int | None = None,
    progress: bool = False,
    collective: bool = False,
    decode: str | None = None,
) -> list[Prediction] | None:
    """Score paths and/or PIL images with ``classifier``; order follows ``inputs``.

    ``collective``: under torch.distributed every rank scores a share; rank 0 gets every
    prediction, the other ranks ``None``.
    """
    threshold = classifier.threshold if threshold is None else threshold
    images = [x if isinstance(x, Image.Image) else None for x in inputs]
    samples = [Sample(f"<image {i}>" if images[i] is not None else os.fspath(x), -1, "")
               for i, x in enumerate(inputs)]
    extra = {"max_pixels": max_pixels} if max_pixels else {}
    decode = decode or classifier.config.get("features", {}).get("decode", "exact")
    dataset = DeepfakeDataset(samples, classifier.preprocess, images=images, decode=decode, **extra)
    settings = ExtractionSettings(batch_size=batch_size, num_workers=num_workers,
                                  precision=classifier.config.get("precision", "fp32"), progress=progress,
                                  layers=classifier.blocks, decode=decode)
    table = extract_features(classifier.tower, dataset, settings, None, desc="scoring", collective=collective)
    if table is None:
        return None
    probs = np.full(len(samples), np.nan)
    probs[table.ok.numpy()] = fake_probabilities(classifier.head, table, table.ok.nonzero().flatten())
    tile_probs = tile_probabilities(classifier, dataset, table.ok.nonzero().flatten().tolist(), tiles, batch_size) \
        if tiles else {}
    results = []
    for i, sample in enumerate(samples):
        if table.ok[i]:
            p = float(probs[i])
            results.append(Prediction(sample.path, p, "fake" if p > threshold else "real", tile_probs.get(i)))
        else:
            results.append(Prediction(sample.path, None, None, None, table.skipped.get(i, "unreadable")))
    return results


@torch.no_grad()
def tile_probabilities(classifier: DeepfakeClassifier, dataset: DeepfakeDataset, indices: list[int], max_tiles: int,
                       batch_size: int) -> dict[int, float]:
    """Mean P(fake) over up to ``max_tiles`` unresized crops per image (large images keep their detail)."""
    tower = classifier.tower
    pending: list[tuple[int, torch.Tensor]] = []
    sums: dict[int, list[float]] = {}

    def flush() -> None:
        if not pending:
            return
        pixels = torch.stack([t for _, t in pending]).to(tower.device)
        # Rounded as cached features are, so a tile scores as the head saw its training features.
        feats = tower_batch(tower(pixels, layers=bool(classifier.blocks)), classifier.blocks)
        for (i, _), p in zip(pending, batch_probabilities(classifier.head, feats)):
            sums.setdefault(i, []).append(float(p))
        pending.clear()

    for i in indices:
        try:
            image = dataset.read(i)
        except ImageSkipped:
            continue
        for view in tile_views(image, classifier.preprocess, max_tiles):
            pending.append((i, view))
            if len(pending) >= batch_size:
                flush()
    flush()
    return {i: float(np.mean(v)) for i, v in sums.items()}


def write_predictions(path: Path, predictions: list[Prediction]) -> None:
    """CSV (``.csv``) or JSON lines (anything else), atomically."""
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(Prediction.__dataclass_fields__), lineterminator="\n")
        writer.writeheader()
        for p in predictions:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(p).items()})
        atomic_write_text(path, buffer.getvalue())
    else:
        atomic_write_text(path, "".join(json.dumps(asdict(p)) + "\n" for p in predictions))


def format_predictions(predictions: list[Prediction], threshold: float) -> str:
    width = min(80, max([len(display_path(p.path)) for p in predictions] + [4]))
    tiles = any(p.tile_probability is not None for p in predictions)
    head = f"{'path'.ljust(width)}  P(fake)  label" + ("  P(fake) tiles" if tiles else "")
    lines = [head, "-" * len(head)]
    for p in predictions:
        name = display_path(p.path)
        name = name if len(name) <= width else "..." + name[-(width - 3):]
        if p.probability is None:
            lines.append(f"{name.ljust(width)}  skipped: {p.skipped}")
        else:
            row = f"{name.ljust(width)}  {p.probability:7.4f}  {p.label:5s}"
            if tiles and p.tile_probability is not None:
                row += f"  {p.tile_probability:14.4f}"
            lines.append(row)
    lines.append(f"threshold {threshold:g}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deepfake predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", required=True, help="run directory (uses best) or checkpoint file")
    p.add_argument("--output", default=None, help="write results as .csv or .jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the checkpoint's)")
    p.add_argument("--tiles", type=int, nargs="?", const=DEFAULT_MAX_TILES, default=0,
                   help=f"also score the mean of up to N 224px crops (default N={DEFAULT_MAX_TILES})")
    p.add_argument("--strict", action="store_true", help="exit 1 if any file was skipped")
    add_runtime_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.output and Path(args.output).exists() and not args.overwrite:
        log.error("%s: exists; pass --overwrite to replace it", args.output)
        return 2
    try:
        classifier = DeepfakeClassifier.from_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    except (CheckpointRefused, CheckpointError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    # Under torchrun every rank scores a share of the files; rank 0 prints and writes.
    init_distributed(classifier.tower.device)
    files, missing = expand_inputs(args.paths)
    predictions = score(classifier, files, batch_size=args.batch_size, num_workers=args.num_workers,
                        tiles=args.tiles, threshold=args.threshold, max_pixels=args.max_pixels,
                        progress=not args.quiet, collective=True, decode=args.decode)
    if predictions is None:
        return 0
    predictions += [Prediction(path, None, None, None, reason) for path, reason in missing]
    threshold = classifier.threshold if args.threshold is None else args.threshold
    print(format_predictions(predictions, threshold))
    scored = sum(p.probability is not None for p in predictions)
    skipped = len(predictions) - scored
    print(f"scored {scored}, skipped {skipped}")
    if args.output:
        write_predictions(Path(args.output), predictions)
    if scored == 0 or (args.strict and skipped):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
