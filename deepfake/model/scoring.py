"""The scoring core: features -> P(fake), and images or paths -> :class:`Prediction`.

Evaluation (``test_ClassifierHead.py``), ``deepfake predict``, ``deepfake serve`` and
``DeepfakeClassifier.predict`` all score through :func:`table_probabilities` and
:func:`fake_probabilities`, so the same image gets the same number from each of them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from deepfake.config import DEFAULT_MAX_PIXELS, check_tiles
from deepfake.data.image_io import ImageSkipped
from deepfake.data.preprocess import Preprocess
from deepfake.data.provenance import FLAT_COLUMNS, Provenance, read_many
from deepfake.data.tiling import tile_boxes, tile_views
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.features.batch import FeatureBatch, table_batch, tower_batch
from deepfake.features.extraction import ExtractionSettings, FeatureTable, extract_features, images_per_batch
from deepfake.model.heads import head_tap
from deepfake.model.ood import ood_flags
from deepfake.towers.base import layers_request

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """What scoring needs of a detector (``DeepfakeClassifier`` is one): the tower, the head and how
    images are prepared for them. A protocol, so this module never imports the classifier."""

    tower: nn.Module
    head: nn.Module
    preprocess: Preprocess
    blocks: tuple[int, ...]
    tap: str
    config: dict

    def decision_threshold(self, spec: str | float | None = None) -> float: ...

SCORE_BLOCK = 256
DEFAULT_MAX_TILES = 16


@dataclass
class Prediction:
    """One input's result: P(fake) and label, or the reason it was skipped.

    ``tiles`` (with tiles on) lists each scored crop as ``{left, top, width, height, probability}``
    in the pixels of the EXIF-rotated image, for a heat map. ``provenance``: what the file declares
    about its origin (:mod:`deepfake.data.provenance`), beside P(fake) and never part of it; ``None``
    when it was not read (an in-memory image, or provenance off). ``threshold``: the one ``label`` is
    taken at (fake when P(fake) is above it). ``ood``: ``in`` or ``out`` of the head's training
    distribution, or ``unknown`` for a head without its statistics (:mod:`deepfake.model.ood`);
    ``ood_distance`` is the distance behind it.
    """

    path: str
    probability: float | None
    label: str | None
    tile_probability: float | None = None
    skipped: str = ""
    tiles: list[dict] | None = None
    provenance: Provenance | None = None
    threshold: float | None = None
    ood: str | None = None
    ood_distance: float | None = None


# Columns of the flat (CSV, table) form of a prediction; ``tiles`` only goes into JSON.
FLAT_FIELDS = ("path", "probability", "label", "tile_probability", "skipped", "threshold", "ood", "ood_distance",
               *FLAT_COLUMNS)


def logits_to_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(fake) per row of a head's logits, in float32: softmax[:, 1] of two logits, sigmoid of one."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]


@torch.no_grad()
def batch_probabilities(head: nn.Module, batch: FeatureBatch | torch.Tensor, block: int = SCORE_BLOCK) -> np.ndarray:
    """P(fake) for each row of one feature batch, with the head in eval mode.

    Rows go through the head in blocks of exactly ``block`` rows (the last one zero-padded):
    matrix-multiply kernels pick their blocking, and so their summation order, from the
    matrix shape, so a row scored among 6 rows and among 32 rows differed in the last bits.
    With one shape every row's P(fake) depends on that row alone, wherever it is scored.
    """
    head.eval()
    device = next(head.parameters()).device
    batch = batch.to(device) if isinstance(batch, FeatureBatch) else FeatureBatch(batch).to(device)
    out = []
    for start in range(0, len(batch), block):
        embeds = batch.embeds[start : start + block]
        layers = batch.layers[start : start + block] if batch.layers is not None else None
        n = len(embeds)
        if n < block:
            embeds = torch.cat([embeds, embeds.new_zeros(block - n, *embeds.shape[1:])])
            if layers is not None:
                layers = torch.cat([layers, layers.new_zeros(block - n, *layers.shape[1:])])
        logits = head(FeatureBatch(embeds, layers))
        out.append(logits_to_probability(logits)[:n].cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def fake_probabilities(head: nn.Module, features, rows: torch.Tensor | None = None, batch_size: int = 1024) -> np.ndarray:
    """P(fake) for ``rows`` of a feature table (all rows by default), with the head in eval mode.

    ``features`` is a :class:`~deepfake.features.extraction.FeatureTable` (the head picks its blocks from
    it) or a plain [N, D] tensor of final embeddings. Every scoring path comes through here.
    """
    def take(idx: torch.Tensor) -> FeatureBatch:
        if isinstance(features, torch.Tensor):
            return FeatureBatch(features[idx].float())
        return table_batch(features, idx, getattr(head, "blocks", ()), head_tap(head))

    n = len(features) if isinstance(features, torch.Tensor) else len(features.embeds)
    rows = torch.arange(n) if rows is None else rows
    blocks = getattr(head, "blocks", ())
    if blocks:
        # Per-block tokens are L times wider than an embedding: keep a chunk near 128 MB.
        batch_size = max(64, min(batch_size, (1 << 25) // (len(blocks) * int(head.hidden_size))))
    out = [batch_probabilities(head, take(rows[start : start + batch_size])) for start in range(0, len(rows), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


def table_probabilities(head: nn.Module, table: FeatureTable) -> np.ndarray:
    """P(fake) per row of a feature table; NaN where the image was skipped."""
    probs = np.full(len(table.ok), np.nan)
    if bool(table.ok.any()):
        probs[table.ok.numpy()] = fake_probabilities(head, table, table.ok.nonzero().flatten())
    return probs


def table_ood(head: nn.Module, table: FeatureTable) -> tuple[np.ndarray, list[str | None]]:
    """(distance, ``in``/``out``/``unknown``) per row of a feature table; NaN and ``None`` where the image was skipped."""
    distances, flags = np.full(len(table.ok), np.nan), [None] * len(table.ok)
    rows = table.ok.nonzero().flatten()
    if len(rows):
        found, labels = ood_flags(head, table.embeds[rows].float())
        distances[rows.numpy()] = found
        for i, flag in zip(rows.tolist(), labels):
            flags[i] = flag
    return distances, flags


def score(
    classifier: Scorer,
    inputs: list,
    batch_size: int = 32,
    num_workers: int = 0,
    tiles: int = 0,
    threshold: float | None = None,
    max_pixels: int | None = None,
    progress: bool = False,
    names: list[str] | None = None,
    collective: bool = False,
    decode: str | None = None,
    provenance: bool = True,
) -> list[Prediction] | None:
    """Score paths and/or PIL images with ``classifier``; order follows ``inputs``.

    ``threshold`` defaults to the classifier's decision threshold; ``names`` label in-memory
    images in the results (default ``<image i>``). ``collective``: under torch.distributed
    every rank scores a share; rank 0 gets every prediction, the other ranks ``None``.
    ``decode`` defaults to the decode path the checkpoint's features were made with.
    ``provenance``: also read what each scored file declares about its origin.
    """
    refuse_fused_tiles(classifier, tiles)
    check_tiles(tiles)
    if max_pixels is not None and not (isinstance(max_pixels, int) and max_pixels >= 1):
        raise ValueError(f"max_pixels must be a whole number >= 1, got {max_pixels!r}")
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    threshold = classifier.decision_threshold() if threshold is None else threshold
    images = [x if isinstance(x, Image.Image) else None for x in inputs]
    samples = [Sample((names[i] if names else f"<image {i}>") if images[i] is not None else os.fspath(x), -1, "")
               for i, x in enumerate(inputs)]
    decode = decode or classifier.config.get("features", {}).get("decode", "exact")
    dataset = DeepfakeDataset(samples, classifier.preprocess, images=images, max_pixels=max_pixels,
                              decode=decode)
    settings = ExtractionSettings(batch_size=batch_size, num_workers=num_workers,
                                  precision=classifier.config.get("precision", "fp32"), progress=progress,
                                  layers=classifier.blocks, decode=decode, tap=classifier.tap)
    table = extract_features(classifier.tower, dataset, settings, None, desc="scoring", collective=collective)
    if table is None:
        return None
    probs = table_probabilities(classifier.head, table)
    distances, flags = table_ood(classifier.head, table)
    grids = tile_scores(classifier, dataset, table.ok.nonzero().flatten().tolist(), tiles, batch_size) if tiles else {}
    declared = read_many([s.path if provenance and images[i] is None and table.ok[i] else None
                          for i, s in enumerate(samples)])
    results = []
    for i, sample in enumerate(samples):
        if table.ok[i]:
            p = float(probs[i])
            grid = grids.get(i)
            results.append(Prediction(sample.path, p, "fake" if p > threshold else "real",
                                      float(np.mean([t["probability"] for t in grid])) if grid else None,
                                      tiles=grid, provenance=declared[i], threshold=threshold, ood=flags[i],
                                      ood_distance=None if np.isnan(distances[i]) else float(distances[i])))
        else:
            results.append(Prediction(sample.path, None, None, None, table.skipped.get(i, "unreadable")))
    return results


def refuse_fused_tiles(classifier: Scorer, tiles: int) -> None:
    """Refuse tiles for a fused tower: its parts take inputs of different sizes, so there is no one tile."""
    if tiles and getattr(classifier.preprocess, "parts", None):
        raise ValueError("--tiles: a head on a fused tower scores whole images (its parts take inputs of "
                         "different sizes); score without --tiles")


@torch.no_grad()
def tile_scores(classifier: Scorer, dataset: DeepfakeDataset, indices: list[int], max_tiles: int,
                batch_size: int) -> dict[int, list[dict]]:
    """P(fake) of up to ``max_tiles`` unresized crops per image (large images keep their detail)."""
    tower = classifier.tower
    size = classifier.preprocess.size
    pending: list[tuple[int, dict, torch.Tensor]] = []
    grids: dict[int, list[dict]] = {}
    per_batch = images_per_batch(batch_size, (3, size, size))  # crops of native pixels: the pixel budget bounds them

    def flush() -> None:
        if not pending:
            return
        pixels = torch.stack([t for _, _, t in pending]).to(tower.device)
        # Rounded as cached features are, so a tile scores as the head saw its training features.
        out = tower(pixels, layers=layers_request(classifier.tap, classifier.blocks))
        feats = tower_batch(out, classifier.blocks, classifier.tap)
        for (i, box, _), p in zip(pending, batch_probabilities(classifier.head, feats)):
            grids.setdefault(i, []).append({**box, "probability": float(p)})
        pending.clear()

    for i in indices:
        try:
            image = dataset.read(i)
        except ImageSkipped:
            continue
        boxes = tile_boxes(image.height, image.width, size, max_tiles)
        for (top, left, h, w), view in zip(boxes, tile_views(image, classifier.preprocess, max_tiles)):
            pending.append((i, {"left": left, "top": top, "width": w, "height": h}, view))
            if len(pending) >= per_batch:
                flush()
    flush()
    return grids
