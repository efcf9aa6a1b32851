"""The statistics a head standardises its features with: mean and std per dimension of the training features.

They come from the training split only (every cached view of it, the rows training reads), never
from validation or test images, and are streamed: rows are read a chunk at a time from the cache
(memory-mapped block tokens included), cast to float64 and merged with Chan's parallel update, so
720k rows of 1024 block tokens need no more memory than one chunk. The head is trained on the main
rank, from the tables it reads there; the statistics depend only on those tables' rows in their
order, so any number of extraction ranks gives the same ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

from deepfake.features.batch import FeatureBatch, table_batch
from deepfake.features.extraction import FeatureTable
from deepfake.towers.base import BLOCK_TAP
from deepfake.training.sources import CachedFeatures, TowerFeatures

log = logging.getLogger(__name__)

# float64 values per chunk (32 MiB): 5461 rows of a 768-d embedding, 170 rows of 24 x 1024 block tokens.
CHUNK_VALUES = 1 << 22


class RunningMoments:
    """Mean and (population) variance per dimension of rows added in chunks, in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, rows: torch.Tensor) -> None:
        """Merge ``rows`` [B, *shape] (any float dtype) into the running moments."""
        if len(rows) == 0:
            return
        x = rows.detach().to(torch.float64)
        b, mean = len(x), x.mean(dim=0)
        m2 = ((x - mean) ** 2).sum(dim=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = b, mean, m2
            return
        n = self.n + b
        delta = mean - self.mean
        self.mean = self.mean + delta * (b / n)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * b / n)
        self.n = n

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) in float64; refuses when no row was added."""
        if self.mean is None:
            raise ValueError("no training features to standardise with")
        return self.mean, torch.sqrt(self.m2 / self.n)


def head_input(batch: FeatureBatch, blocks: tuple[int, ...]) -> torch.Tensor:
    """What a head standardises: the block tokens for a head on blocks, else the final embedding."""
    return batch.layers if blocks else batch.embeds


def table_statistics(views: list[FeatureTable], rows: torch.Tensor, blocks: tuple[int, ...] = (),
                     tap: str = BLOCK_TAP) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, std, rows counted) over ``rows`` of every view, read a chunk at a time as training reads them."""
    moments = RunningMoments()
    rows = torch.as_tensor(rows, dtype=torch.long)
    for view in views:
        per_row = max(1, view.embeds[0].numel() if not blocks else len(blocks) * _token_width(view, rows))
        step = max(1, CHUNK_VALUES // per_row)
        for start in range(0, len(rows), step):
            moments.add(head_input(table_batch(view, rows[start : start + step], blocks, tap), blocks))
    mean, std = moments.result()
    return mean, std, moments.n


def _token_width(view: FeatureTable, rows: torch.Tensor) -> int:
    """The width of one block token (read from one row: the layer source knows its own shape)."""
    return int(view.layer_rows(rows[:1]).shape[-1]) if len(rows) else 1


def batch_statistics(batches: Iterable[FeatureBatch], blocks: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, std, rows counted) over a stream of feature batches."""
    moments = RunningMoments()
    for batch in batches:
        moments.add(head_input(batch, blocks))
    mean, std = moments.result()
    return mean, std, moments.n


def training_statistics(source: CachedFeatures | TowerFeatures, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, std, rows) of what a head reads, over the training features.

    Cached features: every view's readable rows (those training reads). Through the tower
    (``--no_cache``): one pass over the training set in order, the first epoch's augmentation draw.
    """
    if isinstance(source, CachedFeatures):
        return table_statistics(source.views, source.ok.nonzero().flatten(), source.blocks, source.tap)
    once = TowerFeatures(source.tower, source.dataset, source.num_workers, source.blocks, source.tap)
    order = torch.arange(len(source.dataset)).split(batch_size)
    return batch_statistics((batch for _, batch in once.epoch_batches(list(order))), source.blocks)


def fit_standardizer(head: nn.Module, source: CachedFeatures | TowerFeatures, batch_size: int,
                     statistics: tuple[torch.Tensor, torch.Tensor, int] | None = None,
                     keep: torch.Tensor | None = None) -> int:
    """Give ``head``'s standardizer the training features' statistics; returns the rows they come from.

    ``statistics``: already computed (:func:`training_statistics`); ``keep``: a mask of the dimensions
    to standardise (the others stay as they are: mean 0, std 1), for a fused tower's parts that ask for none.
    """
    mean, std, n = statistics if statistics is not None else training_statistics(source, batch_size)
    if keep is not None:
        mean, std = torch.where(keep, mean, torch.zeros_like(mean)), torch.where(keep, std, torch.ones_like(std))
    head.standardizer.set_statistics(mean, std)
    degenerate = int((head.standardizer.std == 1).logical_and(std != 1).sum())
    log.info("standardising the head's %s features with the mean and std of %d training rows%s",
             "x".join(map(str, mean.shape)), n,
             f" ({degenerate} dimension(s) without spread left unscaled)" if degenerate else "")
    return n
