"""Run the frozen tower over a data set once: batched, streamed, cached, and split across ranks.

``extract_features`` returns a :class:`FeatureTable` with one row per sample, in the
store dtype (fp16). With a :class:`~deepfake.features.cache.FeatureCache` only the images it
lacks go through the tower. Under ``torchrun`` the share of every rank is a pure function
of (rank, world size, the ordered sample list): rank ``r`` owns samples ``r, r + world, ...``
and extracts those of them the cache lacks, so shares never overlap and never leave a hole,
whatever each rank saw of the cache and whenever it got there. A barrier then waits for
every rank's shards, and rank 0 alone reads the table; the other ranks get ``None``.

Per-layer CLS tokens (``--feature_layers``) are stored one tensor per block and read on
demand from memory-mapped shards through :meth:`FeatureTable.layer_rows`. They are the blocks'
outputs, or (``ExtractionSettings.tap == "ln2"``, the RINE head) their ln_2 outputs: a tap of
its own in the cache key and in the tensors' names, never mistaken for the other.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from deepfake.config import DEFAULT_BATCH_PIXELS, RuntimeConfig
from deepfake.data.preprocess import preprocessed_shape
from deepfake.deepfake_dataset import DeepfakeDataset, collate
from deepfake.features.cache import (
    STORE_DTYPE,
    UNKNOWN,
    CacheError,
    CacheRows,
    CorruptShard,
    FeatureCache,
    ShardMaps,
    layer_tensor,
)
from deepfake.towers.base import BLOCK_TAP, TAP_FIRST_BLOCK, ImageTower, layers_request, tap_rows
from deepfake.towers.deferred import DeferredTower
from deepfake.towers.fused import SUPPORTED as FUSED_SUPPORT
from deepfake.towers.fused import is_fused
from deepfake.utils import threads
from deepfake.utils.fileio import display_path
from deepfake.utils.hashing import file_stamp
from deepfake.utils.progress import Progress
from deepfake.utils.runtime import DTYPES, barrier, rank_and_world, release_free_heap, terminate_as_interrupt
from deepfake.utils.text import parse_list

log = logging.getLogger(__name__)


def parse_feature_layers(spec: str, num_layers: int, tap: str = BLOCK_TAP) -> list[int]:
    """``none`` -> [], ``all`` -> every block of ``tap``, ``"8,16,20,24"`` -> those blocks (checked, sorted).

    Block tap: block 0 is the embedding output, block i the CLS token after transformer block i
    (``all``: 0..num_layers). ln2 tap: block i is the CLS token out of block i's ln_2 (``all``: 1..num_layers).
    """
    first = TAP_FIRST_BLOCK[tap]
    text = (spec or "none").strip().lower()
    if text in ("none", ""):
        return []
    if text == "all":
        return list(range(first, num_layers + 1))
    try:
        blocks = sorted(set(parse_list(text, int)))
    except ValueError:
        raise ValueError(f"--feature_layers {spec!r}: expected none, all, or block numbers like 8,16,20,24") from None
    bad = [b for b in blocks if not first <= b <= num_layers]
    if bad:
        what = "0 = embedding output" if tap == BLOCK_TAP else f"the {tap} tap of blocks 1..{num_layers}"
        raise ValueError(f"--feature_layers {spec!r}: block(s) {bad} out of range; this tower has blocks "
                         f"{first}..{num_layers} ({what})")
    return blocks


@dataclass(frozen=True)
class ExtractionSettings:
    """How the tower is run: batch size (at most ``batch_pixels`` values of pixels, see :func:`images_per_batch`),
    loader workers, precision, which blocks' CLS tokens to keep, of which tap."""

    batch_size: int = 32
    num_workers: int = 0
    precision: str = "fp32"
    layers: tuple[int, ...] = ()
    shard_size: int = 1024
    progress: bool = True
    decode: str = "exact"
    tap: str = BLOCK_TAP  # block outputs, or "ln2": each block's ln_2 output (deepfake.towers.base)
    batch_pixels: int = DEFAULT_BATCH_PIXELS

    def cache_info(self) -> dict:
        # Batch size and workers do not change the features; precision and the decode path do.
        # Per-layer tokens live beside the embeds in the same key, each shard saying which
        # blocks it holds. The exact decode path is the default and adds nothing to the key;
        # nor does the block tap (every key made before taps existed holds block outputs).
        info = {"precision": self.precision, "feature_kind": "embeds",
                "store_dtype": str(STORE_DTYPE).replace("torch.", "")}
        if self.decode != "exact":
            info["decode"] = self.decode
        if self.layers and self.tap != BLOCK_TAP:
            info["tap"] = self.tap
        return info

    @classmethod
    def for_run(cls, runtime: RuntimeConfig, precision: str, layers=(), decode: str | None = None,
                batch_size: int | None = None, tap: str = BLOCK_TAP) -> ExtractionSettings:
        """The settings of a run: its runtime config, the resolved precision, the blocks to keep (of ``tap``), and
        the decode path (``runtime.decode`` first, else ``decode``, else exact)."""
        return cls(batch_size=batch_size or runtime.batch_size, num_workers=runtime.num_workers, precision=precision,
                   layers=tuple(layers), progress=not runtime.quiet, decode=runtime.decode or decode or "exact",
                   tap=tap)


class MappedLayers:
    """Per-layer rows read from memory-mapped shards: nothing is loaded until asked for."""

    def __init__(self, cache: FeatureCache, rows: CacheRows, layer_ids: list[int], hidden: int, tap: str = BLOCK_TAP):
        self.names = rows.names
        self.shard_of = rows.shard  # negative: no feature row (skipped)
        self.row_of = rows.row
        self.layer_ids = layer_ids
        self.hidden = hidden
        self.tap = tap
        self.maps: ShardMaps = cache.maps()

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        out = np.zeros((len(idx), len(self.layer_ids), self.hidden), dtype=np.float32)
        shards = self.shard_of[idx]
        for shard in np.unique(shards):
            if shard < 0:
                continue
            sel = np.nonzero(shards == shard)[0]
            src = self.row_of[idx[sel]]
            name = self.names[shard]
            for j, block in enumerate(self.layer_ids):
                try:
                    out[sel, j] = self.maps.tensor(name, layer_tensor(block, self.tap))[src]
                except CorruptShard as exc:
                    FeatureCache._set_aside(exc.path)
                    raise CacheError(f"{exc}; it was set aside: run the same command again to extract "
                                     f"its images again") from exc
        return torch.from_numpy(out)


class MemoryLayers:
    """Per-layer rows held in memory (runs without a cache), one fp16 tensor per block."""

    def __init__(self, n: int, layer_ids: list[int], hidden: int):
        self.layer_ids = layer_ids
        self.tensors = {b: torch.zeros(n, hidden, dtype=STORE_DTYPE) for b in layer_ids}

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        take = torch.from_numpy(idx)
        return torch.stack([self.tensors[b][take].float() for b in self.layer_ids], dim=1)


@dataclass
class FeatureTable:
    """Features of ``n`` samples; rows of skipped samples are zero and ``ok`` is False.

    ``embeds`` is [n, D] in the store dtype (fp16): call ``.float()`` on the batches you use.
    Per-layer CLS tokens of the blocks in ``layer_ids`` (of ``tap``) come from :meth:`layer_rows`.
    """

    embeds: torch.Tensor
    ok: torch.Tensor
    skipped: dict[int, str] = field(default_factory=dict)
    layer_ids: list[int] = field(default_factory=list)
    layer_source: MappedLayers | MemoryLayers | None = field(default=None, repr=False)
    tap: str = BLOCK_TAP

    def layer_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """float32 [len(idx), len(layer_ids), hidden]: the per-layer CLS tokens of rows ``idx``."""
        if self.layer_source is None:
            raise ValueError("no per-layer features in this table; extract them with --feature_layers")
        return self.layer_source.rows(np.asarray(torch.as_tensor(idx, dtype=torch.long).cpu().numpy()))


def prepare_tower(tower: ImageTower, precision: str, device: torch.device, compile: bool = False) -> ImageTower:
    """Move the tower to ``device`` in the precision it will run in (weights cast once, not per batch).

    Its blocks are then either fused for inference or, with ``compile``, handed unchanged to
    ``torch.compile``, which makes its own fusions (and cannot lower ours). A tower not built
    yet (:class:`~deepfake.towers.deferred.DeferredTower`) is not built here: the step is applied
    when it is, and until then the tower reports ``device`` and the precision's dtype.
    """
    if is_fused(tower):
        return tower.map_parts(lambda part: prepare_tower(part, precision, device, compile))
    if isinstance(tower, DeferredTower) and not tower.is_built:
        return tower.after_build(lambda built: prepare_tower(built, precision, device, compile),
                                 device, DTYPES[precision])
    tower = tower.to(device=device, dtype=DTYPES[precision])
    if compile:
        tower.model = torch.compile(tower.model)
        return tower
    return tower.fuse_for_inference()


def images_per_batch(batch_size: int, shape: tuple[int, ...], budget: int = DEFAULT_BATCH_PIXELS) -> int:
    """``batch_size``, or fewer images where a batch of ``shape`` tensors would hold more than ``budget`` values.

    Every image of a preprocessing has one tensor shape, so the bound is known before any image
    is read: a batch of 4 x 4 tiles of 256 px holds 16 images, one of 224 px crops ``batch_size``.
    """
    return max(1, min(batch_size, budget // max(1, math.prod(shape))))


class _Stamped(Dataset):
    """``dataset[i]`` for ``i`` in ``indices``, with the file's (size, mtime) stamp taken BEFORE the image is read.

    The cache records this stamp beside the features: a file replaced after it was stat'ed gets a
    new stamp, so the next run sees the change and extracts it again (a stamp taken when the
    shard is written, up to a shard of images later, would describe the new file and keep the old
    file's features for ever).
    """

    def __init__(self, dataset: DeepfakeDataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple:
        i = self.indices[k]
        stamp = file_stamp(self.dataset.samples[i].path)
        return (*self.dataset[i], stamp)


def _collate_stamped(items: list[tuple]) -> dict:
    batch = collate([item[:3] for item in items])
    batch["stamps"] = {item[0]: item[3] for item in items}
    return batch


def _image_loader(dataset: DeepfakeDataset, indices: list[int], settings: ExtractionSettings, stamped: bool,
                  pin: bool) -> DataLoader:
    """Batches of ``dataset[indices]`` in order, bounded by the pixel budget; ``stamped``: with file stamps."""
    subset = _Stamped(dataset, indices) if stamped else torch.utils.data.Subset(dataset, indices)
    # The budget bounds the batches the loader holds: each worker prefetches two.
    spec = getattr(dataset, "preprocess", None)
    batch_size = images_per_batch(settings.batch_size, preprocessed_shape(spec) if spec else (1,), settings.batch_pixels)
    if spec is not None and spec.mode == "native":
        batch_size = 1  # whole unresized images differ in size: they cannot share a batch tensor
    return DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=settings.num_workers,
        collate_fn=_collate_stamped if stamped else collate,
        pin_memory=pin,
        # Workers draw their seed from this generator, not the global RNG, so runs stay repeatable.
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )


def iterate_tower(
    tower: ImageTower,
    dataset: DeepfakeDataset,
    indices: list[int],
    settings: ExtractionSettings,
    desc: str = "features",
    stamps: dict[int, tuple[int, int] | None] | None = None,
):
    """Yield (sample indices, embeds, {block: CLS tokens} or None, [(index, reason)] skipped) per batch.

    ``stamps``: filled with each sample's file stamp, taken before its image was read (for the cache).
    """
    device = tower.device
    loader = _image_loader(dataset, indices, settings, stamped=stamps is not None, pin=device.type == "cuda")
    # Progress goes to stderr: a bar on a terminal, a line every 30 s elsewhere (deepfake.utils.progress).
    bar = Progress(len(indices), desc, "img", enabled=settings.progress, leave=False)
    start = time.perf_counter()
    blocks = list(settings.layers)
    n_scored = n_skipped = 0
    for batch in loader:
        positions = batch["indices"].tolist()  # the dataset's own indices (Subset passes them through)
        skipped = batch["skipped"]
        if stamps is not None:
            stamps.update(batch["stamps"])
        embeds = layers = None
        if positions:
            # Inference mode only around the tower: it is thread state and must not leak past the yield.
            with torch.inference_mode():
                out = tower(batch["pixel_values"].to(device, non_blocking=True),
                            layers=layers_request(settings.tap, blocks))
                embeds = out.embeds.float().cpu()
                if blocks:
                    if getattr(out, "tap", BLOCK_TAP) != settings.tap:
                        raise RuntimeError(f"asked the tower for its {settings.tap} tap, got {out.tap}")
                    picked = out.layers[:, tap_rows(settings.tap, blocks)].float().cpu()
                    layers = {b: picked[:, j] for j, b in enumerate(blocks)}
        bar.update(len(positions) + len(skipped))
        threads.refresh()  # others' load may have changed since the budget was decided
        n_scored += len(positions)
        n_skipped += len(skipped)
        yield positions, embeds, layers, skipped
    bar.close()
    elapsed = time.perf_counter() - start
    if n_scored:
        log.info("%s: %d images through the tower in %.1fs (%.1f img/s)%s", desc, n_scored, elapsed,
                 n_scored / max(elapsed, 1e-9), f", {n_skipped} unreadable" if n_skipped else "")
    elif n_skipped:
        log.info("%s: none of %d images could be read", desc, n_skipped)


def _check_layers(tower: ImageTower, settings: ExtractionSettings) -> None:
    if settings.layers and is_fused(tower):
        raise ValueError(f"{tower.backbone.name}: --feature_layers: {FUSED_SUPPORT}")
    if settings.layers and not getattr(tower, "num_layers", 0):
        raise ValueError(f"{tower.backbone.name}: this tower has no transformer blocks; --feature_layers needs one")
    taps = getattr(tower, "taps", (BLOCK_TAP,))
    if settings.layers and settings.tap not in taps:
        raise ValueError(f"{tower.backbone.name}: this tower has no {settings.tap} tap (it has {', '.join(taps)})")


def loader_limits(dataset: DeepfakeDataset) -> str:
    """The loader settings a skip depends on (a skip made under other limits is retried)."""
    return json.dumps({"max_pixels": getattr(dataset, "max_pixels", None)}, sort_keys=True)


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during extraction, after the images done so far were saved."""


def extract_features(
    tower: ImageTower,
    dataset: DeepfakeDataset,
    settings: ExtractionSettings,
    cache: FeatureCache | None = None,
    desc: str = "features",
    collective: bool = True,
) -> FeatureTable | None:
    """Features for every sample of ``dataset`` (rounded to the cache's fp16 either way).

    Under torch.distributed (and ``collective``) every rank must call it with the same
    samples; rank 0 gets the table, the other ranks ``None``. ``collective=False`` runs
    this process alone (rank 0 after the others have left). With a cache it is
    :func:`cache_features` then :func:`read_features`.
    """
    if isinstance(cache, PartCaches):
        rows = cache_features(tower, dataset, settings, cache, desc, collective)
        return None if rows is None else read_features(tower, dataset, settings, cache, rows, desc)
    if cache is None:
        _prepare(tower, dataset, settings)
        rank, world = rank_and_world() if collective else (0, 1)
        table = _compute(tower, dataset, settings, range(rank, len(dataset), world), desc)
        return _gather(table, world) if world > 1 else table
    rows = cache_features(tower, dataset, settings, cache, desc, collective)
    return None if rows is None else read_features(tower, dataset, settings, cache, rows, desc)


def cache_features(
    tower: ImageTower,
    dataset: DeepfakeDataset,
    settings: ExtractionSettings,
    cache: FeatureCache,
    desc: str = "features",
    collective: bool = True,
) -> CacheRows | None:
    """Put the features of every sample of ``dataset`` in ``cache``, each rank its share.

    Collective like :func:`extract_features`. Rank 0 gets where the features are (for
    :func:`read_features`) once every rank's shards are on disk; the other ranks ``None``.
    A run that caches all its sets before reading any holds no table while it extracts.
    A fused tower's features go to its parts' caches (:class:`PartCaches`); each image is decoded
    once for every part that lacks it.
    """
    if isinstance(cache, PartCaches):
        return _cache_parts(tower, dataset, settings, cache, desc, collective)
    _prepare(tower, dataset, settings)
    rank, world = rank_and_world() if collective else (0, 1)
    known = _extract_missing(tower, dataset, settings, cache, range(rank, len(dataset), world), rank, desc)
    release_free_heap()
    if world > 1:
        barrier()  # every rank's shards are on disk before anyone reads them
        if rank != 0:
            return None
    return known


def read_features(tower: ImageTower, dataset: DeepfakeDataset, settings: ExtractionSettings, cache: FeatureCache,
                  rows: CacheRows, desc: str = "features") -> FeatureTable:
    """Rank 0: the table of ``dataset`` from ``cache``; ``rows``: what :func:`cache_features` returned.

    Anything not found (another rank's shard set aside, a file changed meanwhile) is extracted here.
    """
    if isinstance(cache, PartCaches):
        return _read_parts(tower, dataset, settings, cache, rows, desc)
    for _ in range(3):
        try:
            return _read_table(tower, dataset, settings, cache, desc, rows)
        except CorruptShard as exc:
            log.warning("%s; extracting its images again", exc)
            cache.drop_shard(exc.path.name)
            rows = CacheRows.empty(len(dataset))
    raise CacheError(f"feature cache {cache.dir}: shards keep failing their checksums; "
                     f"remove this folder and run again")


def _prepare(tower: ImageTower, dataset: DeepfakeDataset, settings: ExtractionSettings) -> None:
    _check_layers(tower, settings)
    if hasattr(dataset, "decode"):
        dataset.decode = settings.decode  # the settings name the cache key: the images must follow them


def _compute(tower, dataset, settings: ExtractionSettings, indices: Sequence[int], desc: str) -> FeatureTable:
    """Features without a cache, for ``indices`` (other rows stay empty)."""
    n = len(dataset)
    blocks = list(settings.layers)
    table = FeatureTable(torch.zeros(n, tower.feature_dim, dtype=store_dtype(tower)), torch.zeros(n, dtype=torch.bool),
                         layer_ids=blocks, tap=settings.tap)
    if blocks:
        table.layer_source = MemoryLayers(n, blocks, tower.hidden_size)
    for idx, embeds, layers, skipped in iterate_tower(tower, dataset, indices, settings, desc):
        if idx:
            rows = torch.tensor(idx)
            # Round exactly as the cache stores them, so cached and uncached runs see equal features.
            table.embeds[rows] = embeds.to(table.embeds.dtype)
            for block, value in (layers or {}).items():
                table.layer_source.tensors[block][rows] = value.to(STORE_DTYPE)
            table.ok[rows] = True
        table.skipped.update(dict(skipped))
    return table


def _gather(table: FeatureTable, world: int) -> FeatureTable | None:
    """Merge every rank's rows into rank 0's table (ranks own disjoint rows)."""
    rank = dist.get_rank()
    mine = table.ok.nonzero().flatten()
    part = {"rows": mine, "embeds": table.embeds[mine], "skipped": table.skipped,
            "layers": {b: t[mine] for b, t in table.layer_source.tensors.items()} if table.layer_source else {}}
    parts = [None] * world if rank == 0 else None
    dist.gather_object(part, parts, dst=0)
    if rank != 0:
        return None
    for other in parts[1:]:
        table.embeds[other["rows"]] = other["embeds"]
        table.ok[other["rows"]] = True
        table.skipped.update(other["skipped"])
        for block, value in other["layers"].items():
            table.layer_source.tensors[block][other["rows"]] = value
    return table


class _ShardWriter:
    """Extracted features gathered until a shard is full, then written (and recorded) as one shard."""

    def __init__(self, cache: FeatureCache, samples: list, rank: int, limits, known: CacheRows, tap: str = BLOCK_TAP,
                 shard_size: int = 1024):
        self.cache, self.samples, self.rank, self.limits, self.known = cache, samples, rank, limits, known
        self.tap, self.shard_size = tap, shard_size
        self.idx: list[int] = []
        self.embeds: list[torch.Tensor] = []
        self.layers: list[dict] = []
        self.skipped: list[tuple[int, str]] = []
        self.stamps: dict[int, tuple[int, int] | None] = {}  # filled by iterate_tower, before each read
        self.done = 0

    def __len__(self) -> int:
        return len(self.idx) + len(self.skipped)

    def add(self, idx, embeds, layers, skipped) -> None:
        self.idx.extend(idx)
        if embeds is not None:
            self.embeds.append(embeds)
        if layers is not None:
            self.layers.append(layers)
        self.skipped.extend(skipped)

    def _record(self, i: int) -> dict:
        s = self.samples[i]
        return {"label": s.label, "category": s.category, "split": getattr(s, "split", "")}

    def flush(self) -> None:
        if self.idx or self.skipped:
            layers = None
            if self.layers:
                layers = {b: torch.cat([part[b] for part in self.layers]) for b in self.layers[0]}
            written = self.cache.write_shard(
                [self.samples[i].path for i in self.idx],
                torch.cat(self.embeds) if self.embeds else None,
                layers,
                [(self.samples[i].path, reason) for i, reason in self.skipped],
                rank=self.rank,
                limits=self.limits,
                records=[self._record(i) for i in self.idx] + [self._record(i) for i, _ in self.skipped],
                tap=self.tap,
                stamps=[self.stamps.get(i) for i in self.idx] + [self.stamps.get(i) for i, _ in self.skipped],
            )
            self.known.record(written.name, self.idx, self.skipped)
            self.done += len(self)
        for part in (self.idx, self.embeds, self.layers, self.skipped, self.stamps):
            part.clear()


def _extract_missing(tower, dataset, settings: ExtractionSettings, cache: FeatureCache, indices: Sequence[int],
                     rank: int, desc: str) -> CacheRows:
    """Extract the samples of ``indices`` that the cache lacks into this rank's shards.

    Returns where the features of ``indices`` are: the records found valid, then the rows and
    skips written here (other samples are ``UNKNOWN``), so that the reader need not look them
    up (and stat their files) a second time.
    """
    limits = loader_limits(dataset)
    paths = [s.path for s in dataset.samples]
    known = cache.resolve(paths, indices, settings.layers, limits, tap=settings.tap)
    del paths
    missing = known.unknown(indices)
    if not missing:
        return known
    log.info("%s: %d of %d images not cached (rank %d extracts them)", desc, len(missing), len(indices), rank)
    writer = _ShardWriter(cache, dataset.samples, rank, limits, known, settings.tap)
    try:
        with terminate_as_interrupt():
            for batch in iterate_tower(tower, dataset, missing, settings, desc, writer.stamps):
                writer.add(*batch)
                if len(writer) >= settings.shard_size:
                    writer.flush()
            writer.flush()
    except KeyboardInterrupt:
        # Keep every finished batch: the next run extracts only the rest.
        writer.flush()
        raise ExtractionInterrupted(
            f"interrupted: {writer.done} of {len(missing)} images of {desc} are saved in the feature cache "
            f"{cache.dir}"
        ) from None
    return known


def _read_table(tower, dataset, settings: ExtractionSettings, cache: FeatureCache, desc: str,
                rows: CacheRows) -> FeatureTable:
    """Rank 0: the table of every sample, from the shards (anything still missing is extracted here)."""
    samples = dataset.samples
    limits = loader_limits(dataset)
    unknown = rows.unknown()
    if unknown:
        cache.resolve([s.path for s in samples], unknown, settings.layers, limits, retry=False, rows=rows,
                      tap=settings.tap)
    late = rows.unknown(unknown)
    if late:
        # Files changed during the run, or a shard was set aside: do them here, alone.
        log.warning("%s: %d images not in the cache after extraction (first: %s); extracting them now",
                    desc, len(late), samples[late[0]].path)
        _extract_missing(tower, dataset, settings, cache, late, 0, desc)
        # As when first read: a skip retried on every run (permission denied) is a skip here.
        cache.resolve([s.path for s in samples], late, settings.layers, limits, retry=False, rows=rows,
                      tap=settings.tap)
        still = rows.unknown(late)
        if still:
            raise CacheError(f"feature cache {cache.dir}: {len(still)} images keep changing while they are "
                             f"extracted (first: {samples[still[0]].path}); run again once they are stable")
    n = len(samples)
    table = FeatureTable(torch.zeros(n, tower.feature_dim, dtype=store_dtype(tower)), torch.zeros(n, dtype=torch.bool),
                         layer_ids=list(settings.layers), tap=settings.tap)
    table.skipped.update(rows.skipped)
    table.ok = cache.fill_embeds(table.embeds, rows)
    if settings.layers:
        table.layer_source = MappedLayers(cache, rows, list(settings.layers), tower.hidden_size, settings.tap)
    return table


def feature_cache(root: Path | None, tower: ImageTower, settings: ExtractionSettings,
                  extra: dict | None = None) -> FeatureCache | None:
    """The cache under ``root`` for this tower, preprocessing, precision and view (``None``: no cache)."""
    if root is None:
        return None
    if is_fused(tower):
        return PartCaches([feature_cache(root, part, settings, extra) for part in tower.parts])
    features = settings.cache_info()
    if store_dtype(tower) != STORE_DTYPE:
        features["store_dtype"] = str(store_dtype(tower)).replace("torch.", "")
    info = {"tower": tower.cache_identity(), "features": features, **(extra or {})}
    return FeatureCache(root, info, store_dtype(tower))


def store_dtype(tower: ImageTower) -> torch.dtype:
    """The dtype the tower's features are stored in: the cache's float16 unless the tower says otherwise."""
    return getattr(tower, "feature_dtype", None) or STORE_DTYPE


# --- a fused tower: each part's features under its own key -------------------------------


@dataclass
class PartCaches:
    """The caches of a fused tower's parts, each under the key a run on that part alone uses."""

    parts: list[FeatureCache]

    @property
    def dir(self) -> Path:
        return self.parts[0].root

    def count_images(self) -> int:
        """Images every part has a feature row for (the fewest of any part)."""
        return min(cache.count_images() for cache in self.parts)


def _missing_groups(known: list[CacheRows], indices: Sequence[int]) -> dict[tuple[int, ...], list[int]]:
    """The samples of ``indices`` some part lacks, grouped by which parts lack them (usually one group)."""
    chosen = np.asarray(indices, dtype=np.int64)
    code = np.zeros(len(chosen), dtype=np.int64)
    for j, rows in enumerate(known):
        code |= (rows.shard[chosen] == UNKNOWN).astype(np.int64) << j
    groups = {}
    for value in np.unique(code[code > 0]).tolist():
        groups[tuple(j for j in range(len(known)) if value >> j & 1)] = chosen[code == value].tolist()
    return groups


def _cache_parts(tower, dataset, settings: ExtractionSettings, caches: PartCaches, desc: str,
                 collective: bool) -> list[CacheRows] | None:
    """:func:`cache_features` for a fused tower: one :class:`CacheRows` per part (rank 0; others ``None``)."""
    _prepare(tower, dataset, settings)
    rank, world = rank_and_world() if collective else (0, 1)
    indices = range(rank, len(dataset), world)
    limits = loader_limits(dataset)
    paths = [s.path for s in dataset.samples]
    known = [cache.resolve(paths, indices, settings.layers, limits, tap=settings.tap) for cache in caches.parts]
    del paths
    for chosen, missing in _missing_groups(known, indices).items():
        names = "+".join(tower.parts[j].backbone.name for j in chosen)
        log.info("%s: %d of %d images not cached for %s (rank %d extracts them)", desc, len(missing), len(indices),
                 names, rank)
        writers = [_ShardWriter(caches.parts[j], dataset.samples, rank, limits, known[j], settings.tap) for j in chosen]
        _extract_into(tower.subset(chosen), dataset, settings, writers, missing, desc)
    release_free_heap()
    if world > 1:
        barrier()
        if rank != 0:
            return None
    return known


def _extract_into(tower, dataset, settings: ExtractionSettings, writers: list[_ShardWriter], missing: list[int],
                  desc: str) -> None:
    """One pass of ``tower`` (a part, or several) over ``missing``: each part's features into its own writer."""
    widths = list(getattr(tower, "widths", [tower.feature_dim]))
    first = writers[0]
    saved, dataset.preprocess = dataset.preprocess, tower.preprocess  # one decode, only these parts' tensors
    try:
        with terminate_as_interrupt():
            for idx, embeds, _, skipped in iterate_tower(tower, dataset, missing, settings, desc, first.stamps):
                pieces = embeds.split(widths, dim=1) if embeds is not None else [None] * len(writers)
                for writer, piece in zip(writers, pieces):
                    writer.stamps.update(first.stamps)
                    writer.add(idx, piece, None, skipped)
                if len(first) >= settings.shard_size:
                    for writer in writers:
                        writer.flush()
            for writer in writers:
                writer.flush()
    except KeyboardInterrupt:
        for writer in writers:
            writer.flush()
        raise ExtractionInterrupted(f"interrupted: {first.done} of {len(missing)} images of {desc} are saved in "
                                    f"the feature caches of {tower.backbone.name}") from None
    finally:
        dataset.preprocess = saved


def _read_parts(tower, dataset, settings: ExtractionSettings, caches: PartCaches, rows: list[CacheRows],
                desc: str) -> FeatureTable:
    """Rank 0: each part's table from its own cache, side by side: a row is usable where every part has it."""
    saved = dataset.preprocess
    embeds, ok, skipped = [], None, {}
    try:
        for part, cache, part_rows in zip(tower.parts, caches.parts, rows):
            dataset.preprocess = part.preprocess  # anything found missing now is extracted by this part alone
            table = read_features(part, dataset, settings, cache, part_rows, desc)
            embeds.append(table.embeds)
            ok = table.ok if ok is None else ok & table.ok
            skipped.update(table.skipped)
    finally:
        dataset.preprocess = saved
    joined = torch.cat(embeds, dim=1)
    del embeds
    joined[~ok] = 0
    return FeatureTable(joined, ok, skipped, tap=settings.tap)


def report_skipped(what: str, samples: list, skipped: dict[int, str]) -> list[dict]:
    """Log files that could not be read; they are left out and listed, never silently counted."""
    records = [{"path": samples[i].path, "reason": r} for i, r in sorted(skipped.items())]
    if records:
        log.warning("%s: %d file(s) skipped and left out:", what, len(records))
        for r in records[:20]:
            log.warning("  %s: %s", display_path(r["path"]), r["reason"])
    return records


@dataclass(frozen=True)
class SharedTarget:
    """One reader of a shared pass: the blocks (of the pass's tap) it keeps, and the cache it keeps them in."""

    settings: ExtractionSettings
    cache: FeatureCache | None


def union_settings(targets: Sequence[SharedTarget]) -> ExtractionSettings:
    """Settings of one pass that gives every target what it reads: the union of their blocks, of one tap.

    The targets must agree on precision and decode path (they name the features); readers of the
    final embedding alone (no blocks) fit any tap.
    """
    first = targets[0].settings
    taps = {t.settings.tap for t in targets if t.settings.layers}
    if len(taps) > 1:
        raise ValueError(f"one pass gives one per-block tap; these readers ask for {sorted(taps)}")
    if {(t.settings.precision, t.settings.decode) for t in targets} != {(first.precision, first.decode)}:
        raise ValueError("one pass runs in one precision and one decode path; these readers differ")
    blocks = sorted({b for t in targets for b in t.settings.layers})
    return replace(first, layers=tuple(blocks), tap=taps.pop() if taps else first.tap)


def extract_shared(tower: ImageTower, dataset: DeepfakeDataset, targets: Sequence[SharedTarget],
                   desc: str = "features", collective: bool = True) -> list[FeatureTable] | None:
    """One pass of the tower for every target: one table per target (rank 0; ``None`` on the others).

    Each image any target lacks goes through the tower once; each target's cache then holds its
    features under its own key, as if it had been extracted alone, so a later run of that target
    alone extracts nothing. Without caches the one table serves every target.
    """
    union = union_settings(targets)
    if any(t.cache is None for t in targets):
        if not all(t.cache is None for t in targets):
            raise ValueError("a shared pass writes into every reader's cache, or into none")
        table = extract_features(tower, dataset, union, None, desc, collective)
        return None if table is None else [table] * len(targets)
    _prepare(tower, dataset, union)
    merged = _merge_by_cache(targets)
    rank, world = rank_and_world() if collective else (0, 1)
    known = _extract_missing_shared(tower, dataset, union, list(merged.values()), range(rank, len(dataset), world),
                                    rank, desc)
    release_free_heap()
    if world > 1:
        barrier()
        if rank != 0:
            return None
    rows_of = dict(zip(merged, known))
    return [read_features(tower, dataset, t.settings, t.cache, rows_of[t.cache.dir], desc) for t in targets]


def _merge_by_cache(targets: Sequence[SharedTarget]) -> dict[Path, SharedTarget]:
    """One target per cache folder, keeping the union of the blocks its readers want (a key names no blocks)."""
    merged: dict[Path, SharedTarget] = {}
    for target in targets:
        seen = merged.get(target.cache.dir)
        if seen is not None:
            blocks = tuple(sorted(set(seen.settings.layers) | set(target.settings.layers)))
            tap = seen.settings.tap if seen.settings.layers else target.settings.tap
            target = replace(seen, settings=replace(seen.settings, layers=blocks, tap=tap))
        merged[target.cache.dir] = target
    return merged


def _extract_missing_shared(tower, dataset, union: ExtractionSettings, targets: Sequence[SharedTarget],
                            indices: Sequence[int], rank: int, desc: str) -> list[CacheRows | None]:
    """:func:`_extract_missing` for several caches at once: each batch goes to every cache that lacks its images."""
    limits = loader_limits(dataset)
    paths = [s.path for s in dataset.samples]
    known = [t.cache.resolve(paths, indices, t.settings.layers, limits, tap=t.settings.tap) if t.cache else None
             for t in targets]
    del paths
    wants = [set(rows.unknown(indices)) if rows is not None else set() for rows in known]
    missing = sorted(set().union(*wants))
    if not missing:
        return known
    log.info("%s: %d of %d images not cached for %d reader(s) (rank %d extracts them)", desc, len(missing),
             len(indices), sum(1 for w in wants if w), rank)
    writers = [_ShardWriter(t.cache, dataset.samples, rank, limits, rows, t.settings.tap, union.shard_size)
               if want else None
               for t, rows, want in zip(targets, known, wants)]
    stamps: dict[int, tuple[int, int] | None] = {}
    try:
        with terminate_as_interrupt():
            for batch in iterate_tower(tower, dataset, missing, union, desc, stamps):
                for target, writer, want in zip(targets, writers, wants):
                    if writer is not None:
                        _add_share(writer, want, target.settings.layers, batch, stamps)
            for writer in writers:
                if writer is not None:
                    writer.flush()
    except KeyboardInterrupt:
        for writer in writers:
            if writer is not None:
                writer.flush()
        raise ExtractionInterrupted(f"interrupted: the images of {desc} done so far are saved in the feature cache") from None
    return known


def _add_share(writer: _ShardWriter, want: set[int], blocks: tuple[int, ...], batch: tuple, stamps: dict) -> None:
    """The part of one batch a writer lacks: its images' embeddings and its own blocks; flushed when a shard is full."""
    positions, embeds, layers, skipped = batch
    keep = [j for j, i in enumerate(positions) if i in want]
    mine = [positions[j] for j in keep]
    part = None
    if mine:
        take = torch.tensor(keep)
        part = (embeds[take], {b: layers[b][take] for b in blocks} if blocks else None)
    writer.add(mine, part[0] if part else None, part[1] if part else None, [s for s in skipped if s[0] in want])
    writer.stamps.update({i: stamps.get(i) for i in mine + [s[0] for s in skipped if s[0] in want]})
    if len(writer) >= writer.shard_size:
        writer.flush()
