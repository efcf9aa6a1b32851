"""The two ways a training epoch gets its batches of features: from the cache, or through the tower."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from deepfake.deepfake_dataset import DeepfakeDataset, collate
from deepfake.features.batch import FeatureBatch, table_batch, tower_batch
from deepfake.features.extraction import FeatureTable
from deepfake.towers.base import BLOCK_TAP, ImageTower, layers_request


class CachedFeatures:
    """Training batches from cached features; with K augmented views, one view per image per epoch."""

    def __init__(self, views: list[FeatureTable], generator: torch.Generator, blocks: tuple[int, ...] = (),
                 tap: str = BLOCK_TAP):
        self.views = views
        # A row a view could not read has zero features there: train only on rows every view read.
        self.ok = views[0].ok.clone()
        for view in views[1:]:
            self.ok &= view.ok
        self.generator = generator
        self.blocks = tuple(blocks)
        self.tap = tap

    def epoch_batches(self, batches: list[torch.Tensor]):
        pick = torch.randint(len(self.views), (len(self.ok),), generator=self.generator) if len(self.views) > 1 else None
        for idx in batches:
            idx = idx[self.ok[idx]]
            if len(idx) == 0:
                continue
            if pick is None:
                yield idx, table_batch(self.views[0], idx, self.blocks, self.tap)
                continue
            per_view = [table_batch(v, idx, self.blocks, self.tap) for v in self.views]
            chosen, rows = pick[idx], torch.arange(len(idx))
            embeds = torch.stack([b.embeds for b in per_view])[chosen, rows]  # [K, B, D] -> [B, D]
            layers = torch.stack([b.layers for b in per_view])[chosen, rows] if self.blocks else None
            yield idx, FeatureBatch(embeds, layers)


class TowerFeatures:
    """Training batches through the tower, image by image, every epoch (``--no_cache``)."""

    def __init__(self, tower: ImageTower, dataset: DeepfakeDataset, num_workers: int, blocks: tuple[int, ...] = (),
                 tap: str = BLOCK_TAP):
        self.tower = tower
        self.dataset = dataset
        self.num_workers = num_workers
        self.blocks = tuple(blocks)
        self.tap = tap
        self.skipped: dict[int, str] = {}
        self.epoch = 0

    def epoch_batches(self, batches: list[torch.Tensor]):
        # A fresh augmentation draw each epoch, reproducible from (seed, epoch, path).
        self.dataset.view = self.epoch
        self.epoch += 1
        loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in batches], collate_fn=collate,
                            num_workers=self.num_workers, generator=torch.Generator().manual_seed(0))
        for batch in loader:
            self.skipped.update(dict(batch["skipped"]))
            if batch["pixel_values"] is None:
                continue
            # Grad mode is thread state: it must not stay off across the yield.
            with torch.no_grad():
                out = self.tower(batch["pixel_values"].to(self.tower.device), layers=layers_request(self.tap, self.blocks))
                features = tower_batch(out, self.blocks, self.tap)
            yield batch["indices"], features
