"""Run the frozen tower over a data set once: batched, streamed, cached, and split across ranks.

``extract_features`` returns a :class:`FeatureTable` with one row per sample. With a
:class:`~deepfake.feature_cache.FeatureCache` only the images it lacks go through the
tower; under ``torchrun`` each rank takes a disjoint share of them and writes its own
shards, and every rank then reads the merged cache.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from deepfake.deepfake_dataset import DeepfakeDataset, collate
from deepfake.feature_cache import STORE_DTYPE, CorruptShard, FeatureCache
from deepfake.runtime import DTYPES, barrier, is_main_process, rank_and_world
from deepfake.towers import ImageTower

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractionSettings:
    """How the tower is run: batch size, loader workers, precision, per-layer CLS tokens."""

    batch_size: int = 32
    num_workers: int = 0
    precision: str = "fp32"
    layers: bool = False
    shard_size: int = 1024
    progress: bool = True

    def cache_info(self) -> dict:
        # Batch size and workers do not change the features; precision and kind do.
        return {"precision": self.precision, "feature_kind": "embeds+layers" if self.layers else "embeds",
                "store_dtype": str(STORE_DTYPE).replace("torch.", "")}


@dataclass
class FeatureTable:
    """Features of ``n`` samples; rows of skipped samples are zero and ``ok`` is False."""

    embeds: torch.Tensor
    layers: torch.Tensor | None
    ok: torch.Tensor
    skipped: dict[int, str] = field(default_factory=dict)


def prepare_tower(tower: ImageTower, precision: str, device: torch.device, compile: bool = False) -> ImageTower:
    """Move the tower to ``device`` in the precision it will run in (weights cast once, not per batch).

    Its blocks are then either fused for inference or, with ``compile``, handed unchanged to
    ``torch.compile``, which makes its own fusions (and cannot lower ours).
    """
    tower = tower.to(device=device, dtype=DTYPES[precision])
    if compile:
        tower.model = torch.compile(tower.model)
        return tower
    return tower.fuse_for_inference()


def iterate_tower(
    tower: ImageTower,
    dataset: DeepfakeDataset,
    indices: list[int],
    settings: ExtractionSettings,
    desc: str = "features",
):
    """Yield (sample indices, embeds, layers, [(index, reason)] skipped) batch by batch."""
    subset = torch.utils.data.Subset(dataset, indices)
    device = tower.device
    loader = DataLoader(
        subset,
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=settings.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        # Workers draw their seed from this generator, not the global RNG, so runs stay repeatable.
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )
    bar = tqdm(total=len(indices), desc=desc, unit="img", disable=not settings.progress, leave=False)
    start = time.perf_counter()
    for batch in loader:
        positions = batch["indices"].tolist()  # the dataset's own indices (Subset passes them through)
        skipped = batch["skipped"]
        embeds = layers = None
        if positions:
            # Inference mode only around the tower: it is thread state and must not leak past the yield.
            with torch.inference_mode():
                out = tower(batch["pixel_values"].to(device, non_blocking=True), layers=settings.layers)
                embeds = out.embeds.float().cpu()
                layers = out.layers.float().cpu() if out.layers is not None else None
        bar.update(len(positions) + len(skipped))
        yield positions, embeds, layers, skipped
    bar.close()
    elapsed = time.perf_counter() - start
    if indices:
        log.info("%s: %d images in %.1fs (%.1f img/s)", desc, len(indices), elapsed, len(indices) / max(elapsed, 1e-9))


def _empty_table(n: int, dim: int, layer_shape: tuple[int, int] | None) -> FeatureTable:
    return FeatureTable(
        embeds=torch.zeros(n, dim),
        layers=torch.zeros(n, *layer_shape) if layer_shape else None,
        ok=torch.zeros(n, dtype=torch.bool),
    )


def _layer_shape(tower: ImageTower, settings: ExtractionSettings) -> tuple[int, int] | None:
    if not settings.layers:
        return None
    if not getattr(tower, "num_layers", 0):
        raise ValueError(f"{tower.backbone.name}: this tower has no transformer blocks; --feature_layers needs one")
    return (tower.num_layers + 1, tower.hidden_size)


def extract_features(
    tower: ImageTower,
    dataset: DeepfakeDataset,
    settings: ExtractionSettings,
    cache: FeatureCache | None = None,
    desc: str = "features",
) -> FeatureTable:
    """Features for every sample of ``dataset`` (rounded to the cache's fp16 either way)."""
    n = len(dataset)
    table = _empty_table(n, tower.feature_dim, _layer_shape(tower, settings))
    if cache is None:
        for idx, embeds, layers, skipped in iterate_tower(tower, dataset, list(range(n)), settings, desc):
            _fill(table, idx, embeds, layers)
            table.skipped.update(dict(skipped))
        return table
    for _ in range(3):
        try:
            _extract_missing(tower, dataset, settings, cache, desc)
            return _read_table(table, dataset, settings, cache)
        except CorruptShard as exc:
            log.warning("%s; extracting its images again", exc)
            cache.drop_shard(exc.path.name)
    raise RuntimeError(f"{cache.dir}: cache keeps failing its checksums; remove it and run again")


def _fill(table: FeatureTable, idx: list[int], embeds, layers) -> None:
    if not idx:
        return
    rows = torch.tensor(idx)
    # Round exactly as the cache stores them, so cached and uncached runs see equal features.
    table.embeds[rows] = embeds.to(STORE_DTYPE).float()
    if layers is not None and table.layers is not None:
        table.layers[rows] = layers.to(STORE_DTYPE).float()
    table.ok[rows] = True


def _extract_missing(tower, dataset, settings: ExtractionSettings, cache: FeatureCache, desc: str) -> None:
    rank, world = rank_and_world()
    missing = [i for i, s in enumerate(dataset.samples) if cache.lookup(s.path) is None]
    mine = missing[rank::world]
    if missing:
        log.info("%s: %d of %d images not cached (rank %d/%d extracts %d)",
                 desc, len(missing), len(dataset), rank, world, len(mine))
    buffer: dict[str, list] = {"paths": [], "embeds": [], "layers": [], "skipped": []}

    def flush() -> None:
        if buffer["paths"] or buffer["skipped"]:
            cache.write_shard(
                buffer["paths"],
                torch.cat(buffer["embeds"]) if buffer["embeds"] else None,
                torch.cat(buffer["layers"]) if buffer["layers"] else None,
                buffer["skipped"],
                rank=rank,
            )
        for value in buffer.values():
            value.clear()

    samples = dataset.samples
    for idx, embeds, layers, skipped in iterate_tower(tower, dataset, mine, settings, desc):
        buffer["paths"].extend(samples[i].path for i in idx)
        if embeds is not None:
            buffer["embeds"].append(embeds)
        if layers is not None:
            buffer["layers"].append(layers)
        buffer["skipped"].extend((samples[i].path, reason) for i, reason in skipped)
        if len(buffer["paths"]) + len(buffer["skipped"]) >= settings.shard_size:
            flush()
    flush()
    barrier()


def _read_table(table: FeatureTable, dataset, settings: ExtractionSettings, cache: FeatureCache) -> FeatureTable:
    cache.index(refresh=True)
    entries = [cache.lookup(s.path) for s in dataset.samples]
    late = [i for i, e in enumerate(entries) if e is None]
    if late:
        raise RuntimeError(f"{cache.dir}: {len(late)} images still missing after extraction "
                           f"(first: {dataset.samples[late[0]].path}); were files changed during the run?")
    good = [i for i, e in enumerate(entries) if e.row >= 0]
    table.skipped.update({i: entries[i].reason for i, e in enumerate(entries) if e.row < 0})
    if good:
        rows = cache.read([entries[i] for i in good], settings.layers)
        take = torch.tensor(good)
        table.embeds[take] = rows["embeds"]
        if table.layers is not None:
            table.layers[take] = rows["layers"]
        table.ok[take] = True
    if is_main_process():
        cache.update_manifest([
            {"path": os.path.abspath(s.path), "size": e.stamp[0], "mtime_ns": e.stamp[1], "label": s.label,
             "category": s.category, "split": s.split, "shard": e.shard, "row": e.row,
             **({"skipped": e.reason} if e.row < 0 else {})}
            for s, e in zip(dataset.samples, entries)
        ])
    return table
