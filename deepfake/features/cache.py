"""On-disk cache of tower features: fp16 safetensors shards, each with a JSON Lines manifest.

The tower is frozen, so each image needs one forward pass for the life of a data set.
A cache directory holds one sub-directory per *key* (tower identity, preprocessing,
precision, decode path, perturbation / augmentation view): changing any of them starts
a new sub-directory and never reuses stale features.

Each shard is self-describing: its safetensors header lists the images it holds (path,
size, mtime), the loader limits its skip records were made under, the transformer blocks
whose CLS tokens it stores (and their tap), and a checksum per tensor. Tensors are stored one
per kind (``embeds`` [n, D], ``layer.<block>`` [n, hidden] for block outputs and ``ln2.<block>``
for ln_2 outputs), so a reader memory-maps and touches only what it uses. Shards are written
atomically, so a run killed during extraction leaves whole shards behind and the next run
extracts only what is missing; a shard that does not parse, or whose bytes fail their
checksum, is set aside (``.corrupt``) and its images are redone. An image whose size or mtime changed is
extracted again: the stamp recorded is the one taken before the image was read, so a file replaced
while it was being extracted is extracted again by the next run.

Beside every shard, ``<shard>.jsonl`` lists its images (path, size, mtime, label,
category, split, row, skip reason) for people and scripts: ``cat *.jsonl`` is the
manifest. Writing it costs the shard's own rows, never the whole data set.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepfake.utils.fileio import (
    atomic_save_safetensors,
    atomic_write_json,
    atomic_write_text,
    sweep_temp_files_once,
)
from deepfake.utils.hashing import cache_key, file_stamp

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
STORE_DTYPE = torch.float16
EMBEDS = "embeds"
# Skip reasons that a user fixes without touching the file (chmod keeps size and mtime):
# such records are retried on every run.
RETRY_ALWAYS = ("permission denied",)


# The tensor-name prefix of each per-block tap (deepfake.towers.base): block outputs and ln_2 outputs
# never share a name, so one is never read for the other.
TAP_TENSOR_PREFIX = {"block": "layer", "ln2": "ln2"}


def layer_tensor(block: int, tap: str = "block") -> str:
    """Name of the tensor holding ``block``'s CLS token of ``tap``: ``layer.NNN`` after the block (0: the
    embedding output), ``ln2.NNN`` out of its ln_2 (layer_norm2)."""
    return f"{TAP_TENSOR_PREFIX[tap]}.{block:03d}"




def absolute_path(path: str) -> str:
    """``os.path.abspath(path)``, without a new string when ``path`` already is absolute and normal.

    A scan gives such paths; 720k fresh copies of them would be ~70 MB of short-lived strings.
    """
    if path.startswith("/") and "//" not in path and "/." not in path and not path.endswith("/"):
        return path
    return os.path.abspath(path)


def _checksum(data: np.ndarray | bytes) -> str:
    # CRC32 finds torn and flipped bytes at memory speed; nothing here defends against tampering.
    return f"{zlib.crc32(memoryview(data).cast('B')) & 0xFFFFFFFF:08x}"


class CacheError(RuntimeError):
    """A cache folder that cannot be used; the message names it and says what to do."""


class CorruptShard(Exception):
    """A shard whose bytes do not match the checksum written with them."""

    def __init__(self, path: Path, what: str = "fails its checksum"):
        super().__init__(f"{path}: cache shard {what}")
        self.path = path


SKIPPED = -2  # CacheRows.shard of a sample whose valid cache record is a skip
UNKNOWN = -1  # CacheRows.shard of a sample the cache has no valid record for


@dataclass
class CacheRows:
    """Where each sample's features are, as two int32 per sample (not an object per image).

    ``shard[i]`` indexes ``names`` and ``row[i]`` is the row in that shard; ``shard[i]`` is
    ``SKIPPED`` for a sample recorded as unreadable (the reason in ``skipped``) and ``UNKNOWN``
    for one the cache has no valid record of. 720k images cost 6 MB here.
    """

    names: list[str]
    shard: np.ndarray
    row: np.ndarray
    skipped: dict[int, str]

    @classmethod
    def empty(cls, n: int) -> CacheRows:
        """Rows for ``n`` samples, none of them known yet."""
        return cls([], np.full(n, UNKNOWN, dtype=np.int32), np.full(n, -1, dtype=np.int32), {})

    def unknown(self, indices: Sequence[int] | None = None) -> list[int]:
        """The samples (of ``indices``, or all) the cache has no valid record for."""
        if indices is None:
            return np.flatnonzero(self.shard == UNKNOWN).tolist()
        chosen = np.asarray(indices, dtype=np.int64)
        return chosen[self.shard[chosen] == UNKNOWN].tolist()

    def record(self, shard: str, indices: list[int], skipped: list[tuple[int, str]]) -> None:
        """Note a shard just written: ``indices`` are its rows in order, ``skipped`` its skip records."""
        if indices:
            self.names.append(shard)
            self.shard[indices] = len(self.names) - 1
            self.row[indices] = np.arange(len(indices))
        for i, reason in skipped:
            self.shard[i] = SKIPPED
            self.skipped[i] = reason


@dataclass(frozen=True)
class ShardHeader:
    """A parsed safetensors header: tensor name -> (dtype, shape, byte range) and the metadata."""

    path: Path
    data_start: int
    tensors: dict[str, tuple[str, tuple[int, ...], int, int]]
    metadata: dict[str, str]


_NP_DTYPES = {"F16": np.float16, "F32": np.float32, "BF16": np.uint16}


def read_header(path: Path) -> ShardHeader:
    """Parse a safetensors header without reading its tensors; raises ``ValueError`` on a torn file."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > 1 << 28:
            raise ValueError(f"implausible header length {length}")
        blob = handle.read(length)
        size = os.fstat(handle.fileno()).st_size
    if len(blob) != length:
        raise ValueError("header cut short")
    header = json.loads(blob)
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    end = 0
    for name, spec in header.items():
        start, stop = spec["data_offsets"]
        tensors[name] = (spec["dtype"], tuple(spec["shape"]), int(start), int(stop))
        end = max(end, int(stop))
    if 8 + length + end != size:
        raise ValueError(f"file is {size} bytes, header describes {8 + length + end}")
    return ShardHeader(path, 8 + length, tensors, metadata)


class ShardMaps:
    """Memory maps of shard files, opened on demand and kept for the ``limit`` most recent.

    Tensors are numpy views of the map: reading a row touches only that row's pages. A map
    holds no file descriptor, only address space, so the limit is set above the shard count
    of the largest data sets (720k images are ~700 shards): shuffled batches draw rows from
    every shard, and a smaller limit would reopen and reparse headers on every batch.
    Each tensor's checksum is verified the first time it is used.
    """

    def __init__(self, directory: Path, limit: int = 4096):
        self.dir = directory
        self.limit = limit
        self._maps: OrderedDict[str, tuple[np.memmap, ShardHeader]] = OrderedDict()
        self._verified: set[tuple[str, str]] = set()

    def tensor(self, shard: str, name: str) -> np.ndarray:
        if shard in self._maps:
            self._maps.move_to_end(shard)
            mapped, header = self._maps[shard]
        else:
            path = self.dir / shard
            try:
                header = read_header(path)
            except (OSError, ValueError) as exc:
                raise CorruptShard(path, f"is unreadable ({exc})") from exc
            mapped = np.memmap(path, dtype=np.uint8, mode="r")
            self._maps[shard] = (mapped, header)
            while len(self._maps) > self.limit:
                self._maps.popitem(last=False)
        if name not in header.tensors:
            raise CorruptShard(self.dir / shard, f"has no tensor {name!r}")
        dtype, shape, start, stop = header.tensors[name]
        raw = mapped[header.data_start + start : header.data_start + stop]
        if (shard, name) not in self._verified:
            checksums = json.loads(header.metadata.get("checksums", "{}"))
            if checksums.get(name) != _checksum(raw):
                raise CorruptShard(self.dir / shard)
            self._verified.add((shard, name))
        return raw.view(_NP_DTYPES[dtype]).reshape(shape)

    def close(self) -> None:
        self._maps.clear()


def _entries(paths: list[str], skipped: list[tuple[str, str]],
             stamps: Sequence[tuple[int, int] | None] | None) -> list[list]:
    """A shard's entries: [path, size, mtime, row, skip reason] per row, then per skip (no stamp: -1, -1)."""
    if stamps is None:
        stamps = [file_stamp(path) for path in paths] + [file_stamp(path) for path, _ in skipped]
    if len(stamps) != len(paths) + len(skipped):
        raise ValueError(f"write_shard: {len(stamps)} stamps for {len(paths)} rows and {len(skipped)} skips")
    rows = [(path, row, "") for row, path in enumerate(paths)] + [(path, -1, reason) for path, reason in skipped]
    return [[absolute_path(path), *(stamp or (-1, -1)), row, reason] for (path, row, reason), stamp in zip(rows, stamps)]


class FeatureCache:
    """The shards of one cache key under ``root/<key>/``."""

    def __init__(self, root: str | os.PathLike, info: dict, store_dtype: torch.dtype = STORE_DTYPE):
        self.info = {"format": FORMAT_VERSION, **info}
        self.store_dtype = store_dtype
        self.key = cache_key(self.info)
        self.root = Path(root)
        self.dir = self.root / self.key
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            sweep_temp_files_once(self.dir)  # the temp files of shards whose writer was killed
            key_file = self.dir / "key.json"
            if not key_file.exists():
                atomic_write_json(key_file, self.info)
        except OSError as exc:
            raise CacheError(
                f"feature cache folder {self.root}: cannot write to it ({exc.strerror or exc}); "
                f"pass --cache_dir with a writable folder, or --no_cache"
            ) from exc

    # --- reading ---------------------------------------------------------------------

    def shard_files(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.safetensors"))

    def _listings(self) -> Iterator[tuple[str, frozenset, str, list]]:
        """(shard name, per-block tensors it holds, loader limits, entries) per readable shard, oldest first.

        Shard names carry their creation time, so a reader that lets later entries win keeps the
        newest record of each image. Unreadable shards are set aside (their images are redone).
        """
        for shard in sorted(self.shard_files(), key=lambda p: (p.name.split("-")[2:3], p.name)):
            try:
                meta = read_header(shard).metadata
                tap = meta.get("tap", "block")
                layers = frozenset(layer_tensor(b, tap) for b in json.loads(meta.get("layers", "[]")))
                entries = json.loads(meta["entries"])
            except FileNotFoundError:
                continue  # set aside by another process between the listing and the read
            except Exception as exc:  # torn or foreign file: never load it
                log.warning("%s: unreadable cache shard set aside, its images will be extracted again (%s)",
                            shard, exc)
                self._set_aside(shard)
                continue
            yield shard.name, layers, meta.get("limits", ""), entries

    def resolve(self, paths: Sequence[str], indices: Sequence[int], layers: tuple[int, ...] = (), limits: str = "",
                retry: bool = True, rows: CacheRows | None = None, tap: str = "block") -> CacheRows:
        """Find the valid records of ``paths[i]`` for ``i`` in ``indices`` (into ``rows``, or new ones).

        A record is valid when the file's size and mtime are unchanged and it answers this
        request: a feature row must hold every block in ``layers`` of ``tap``; a skip record must have been
        made under the same loader ``limits`` and, with ``retry`` (deciding what to extract), not
        be one that is retried every run. Each shard header is read once, and each file stat'ed
        once; the newest record of an image decides.
        """
        rows = rows if rows is not None else CacheRows.empty(len(paths))
        position: dict[str, int] = {}
        repeats = []  # (sample, first sample of the same file): a list may name a file twice
        for i in indices:
            first = position.setdefault(absolute_path(paths[i]), i)
            if first != i:
                repeats.append((i, first))
        n = len(paths)
        newest_shard = np.full(n, -1, dtype=np.int32)
        newest = np.zeros((n, 3), dtype=np.int64)  # row, size, mtime of the newest record
        reasons: dict[int, str] = {}
        shard_layers, shard_limits, names = [], [], []
        wanted = {layer_tensor(b, tap) for b in layers}
        for name, blocks, made_under, entries in self._listings():
            number = len(names)
            names.append(name)
            shard_layers.append(blocks.issuperset(wanted))
            shard_limits.append(made_under)
            for path, size, mtime, row, reason in entries:
                i = position.get(path)
                if i is not None:
                    newest_shard[i] = number
                    newest[i] = (row, size, mtime)
                    if row < 0:
                        reasons[i] = reason
        del position
        slot = {name: k for k, name in enumerate(rows.names)}  # shard name -> its number in ``rows``
        for i in np.flatnonzero(newest_shard >= 0).tolist():
            row, size, mtime = newest[i].tolist()
            if file_stamp(paths[i]) != (size, mtime):
                continue
            number = int(newest_shard[i])
            if row >= 0:
                if shard_layers[number]:
                    rows.shard[i] = slot.setdefault(names[number], len(slot))
                    rows.row[i] = row
            elif shard_limits[number] == limits and not (retry and reasons[i] in RETRY_ALWAYS):
                rows.shard[i] = SKIPPED
                rows.skipped[i] = reasons[i]
        for i, first in repeats:
            rows.shard[i], rows.row[i] = rows.shard[first], rows.row[first]
            if first in rows.skipped:
                rows.skipped[i] = rows.skipped[first]
        rows.names[:] = list(slot)
        return rows

    def count_images(self) -> int:
        """Images whose newest record in this cache is a feature row (not a skip)."""
        newest: dict[str, bool] = {}
        for _, _, _, entries in self._listings():
            for path, _, _, row, _ in entries:
                newest[path] = row >= 0
        return sum(newest.values())

    def maps(self) -> ShardMaps:
        """Memory maps over this key's shards (for per-layer reads)."""
        return ShardMaps(self.dir)

    def fill_embeds(self, out: torch.Tensor, rows: CacheRows) -> torch.Tensor:
        """Copy the embeds of every sample with a feature row into ``out`` (others are left as they are).

        Shards are mapped, checked and released one at a time, so no more than ``out`` and one
        shard are ever held. Returns the mask of rows filled.
        """
        order = np.argsort(rows.shard, kind="stable")
        bounds = np.searchsorted(rows.shard[order], np.arange(len(rows.names) + 1))
        target = out.numpy()
        for number, name in enumerate(rows.names):
            dst = order[bounds[number] : bounds[number + 1]]
            if len(dst) == 0:
                continue
            maps = ShardMaps(self.dir, limit=1)
            target[dst] = maps.tensor(name, EMBEDS)[rows.row[dst]]
            maps.close()
        return torch.from_numpy(rows.shard >= 0)

    @staticmethod
    def _set_aside(path: Path) -> None:
        """Rename a damaged shard and its manifest (kept for inspection, never read again)."""
        listing = path.with_suffix(".jsonl")
        for item, aside in ((path, path.with_suffix(".corrupt")), (listing, Path(f"{listing}.corrupt"))):
            try:
                os.replace(item, aside)
            except OSError:
                pass  # another process set it aside first, or it never had a listing

    def drop_shard(self, name: str) -> None:
        """Set a shard that failed its checksum aside and forget it."""
        self._set_aside(self.dir / name)

    # --- writing ---------------------------------------------------------------------

    def write_shard(
        self,
        paths: list[str],
        embeds: torch.Tensor | None,
        layers: dict[int, torch.Tensor] | None,
        skipped: list[tuple[str, str]],
        rank: int = 0,
        limits: str = "",
        records: list[dict] | None = None,
        tap: str = "block",
        stamps: Sequence[tuple[int, int] | None] | None = None,
    ) -> Path:
        """Write one shard: rows for ``paths``, skip records for ``skipped`` (path, reason).

        ``layers`` maps block numbers to [n, hidden] CLS tokens of ``tap``; ``records`` (one dict per
        path, then per skip) adds label, category and split to the readable manifest. ``stamps`` (one
        per path, then per skip): each file's (size, mtime) taken before its image was read; without,
        the files are stat'ed now, which is right only when none can have changed since they were read.
        """
        tensors: dict[str, torch.Tensor] = {}
        if embeds is not None and len(paths):
            tensors[EMBEDS] = embeds.to(self.store_dtype).contiguous()
            for block, value in (layers or {}).items():
                tensors[layer_tensor(block, tap)] = value.to(STORE_DTYPE).contiguous()
        entries = _entries(paths, skipped, stamps)
        meta = {
            "entries": json.dumps(entries),
            "created_ns": str(time.time_ns()),
            "layers": json.dumps(sorted(layers or {}) if EMBEDS in tensors else []),
            "limits": limits,
            "checksums": json.dumps({k: _checksum(v.view(torch.uint8).numpy()) for k, v in tensors.items()}),
        }
        if tap != "block" and layers and EMBEDS in tensors:
            meta["tap"] = tap  # absent: block outputs, as every shard written before taps existed
        name = f"shard-{rank:03d}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        lines = []
        for i, (path, size, mtime, row, reason) in enumerate(entries):
            record = {"path": path, "size": size, "mtime_ns": mtime, **((records or [])[i] if records else {}),
                      "shard": f"{name}.safetensors", "row": row}
            if row < 0:
                record["skipped"] = reason
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        try:
            # The readable listing first: a shard never exists without it.
            atomic_write_text(self.dir / f"{name}.jsonl", "".join(lines))
            path = atomic_save_safetensors(self.dir / f"{name}.safetensors", tensors, meta)
        except OSError as exc:
            raise CacheError(f"feature cache folder {self.dir}: cannot write a shard ({exc.strerror or exc}); "
                             f"free some space or pass another --cache_dir (shards already written are kept)"
                             ) from exc
        return path
