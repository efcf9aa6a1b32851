"""On-disk cache of tower features: fp16 safetensors shards, each with a JSON Lines manifest.

The tower is frozen, so each image needs one forward pass for the life of a data set.
A cache directory holds one sub-directory per *key* (tower identity, preprocessing,
precision, decode path, perturbation / augmentation view): changing any of them starts
a new sub-directory and never reuses stale features.

Each shard is self-describing: its safetensors header lists the images it holds (path,
size, mtime), the loader limits its skip records were made under, the transformer blocks
whose CLS tokens it stores, and a checksum per tensor. Tensors are stored one per kind
(``embeds`` [n, D] and ``layer.<block>`` [n, hidden]), so a reader memory-maps and touches
only what it uses. Shards are written atomically, so a run killed during extraction
leaves whole shards behind and the next run extracts only what is missing; a shard that
does not parse, or whose bytes fail their checksum, is set aside (``.corrupt``) and its
images are redone. An image whose size or mtime changed is extracted again.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deepfake.fileio import atomic_save_safetensors, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
STORE_DTYPE = torch.float16
EMBEDS = "embeds"
# Skip reasons that a user fixes without touching the file (chmod keeps size and mtime):
# such records are retried on every run.
RETRY_ALWAYS = ("permission denied",)


def layer_tensor(block: int) -> str:
    """Name of the tensor holding the CLS token after ``block`` (0: the embedding output)."""
    return f"layer.{block:03d}"


def cache_key(info: dict) -> str:
    """A short, stable digest of everything that determines the features."""
    import hashlib

    blob = json.dumps(info, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def file_stamp(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, or ``None`` when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


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


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """Where one image's features are: a shard and a row (row -1: the image was skipped)."""

    shard: str
    row: int
    stamp: tuple[int, int]
    reason: str = ""
    layers: frozenset = frozenset()
    limits: str = ""  # loader limits (JSON) a skip record was made under


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


class FeatureCache:
    """The shards of one cache key under ``root/<key>/``."""

    def __init__(self, root: str | os.PathLike, info: dict):
        self.info = {"format": FORMAT_VERSION, **info}
        self.key = cache_key(self.info)
        self.root = Path(root)
        self.dir = self.root / self.key
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            key_file = self.dir / "key.json"
            if not key_file.exists():
                atomic_write_json(key_file, self.info)
        except OSError as exc:
            raise CacheError(
                f"feature cache folder {self.root}: cannot write to it ({exc.strerror or exc}); "
                f"pass --cache_dir with a writable folder, or --no_cache"
            ) from exc
        self._index: dict[str, CacheEntry] | None = None

    # --- reading ---------------------------------------------------------------------

    def shard_files(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.safetensors"))

    def index(self, refresh: bool = False) -> dict[str, CacheEntry]:
        """path -> newest entry, from the shard headers; unreadable shards are set aside."""
        if self._index is not None and not refresh:
            return self._index
        self._index = None  # never hold two indexes at once
        index: dict[str, CacheEntry] = {}
        # Shard names carry their creation time: read them oldest first, so the newest entry
        # for a path wins, one header at a time.
        for shard in sorted(self.shard_files(), key=lambda p: (p.name.split("-")[2:3], p.name)):
            try:
                meta = read_header(shard).metadata
                name = shard.name  # one string shared by the shard's entries
                layers = frozenset(json.loads(meta.get("layers", "[]")))
                limits = meta.get("limits", "")
                for path, size, mtime, row, reason in json.loads(meta["entries"]):
                    index[path] = CacheEntry(name, row, (size, mtime), reason, layers, limits)
            except FileNotFoundError:
                continue  # set aside by another process between the listing and the read
            except Exception as exc:  # torn or foreign file: never load it
                log.warning("%s: unreadable cache shard set aside, its images will be extracted again (%s)",
                            shard, exc)
                self._set_aside(shard)
        self._index = index
        return index

    def lookup(self, path: str, layers: tuple[int, ...] = (), limits: str = "", retry: bool = True
               ) -> CacheEntry | None:
        """The entry for ``path`` if the file is unchanged and the entry answers this request.

        A feature row must hold every block in ``layers``; a skip record must have been made
        under the same loader ``limits`` and, with ``retry`` (deciding what to extract), not be
        one that is retried every run.
        """
        entry = self.index().get(os.path.abspath(path))
        if entry is None or entry.stamp != file_stamp(path):
            return None
        if entry.row >= 0:
            return entry if entry.layers.issuperset(layers) else None
        if entry.limits != limits or (retry and entry.reason in RETRY_ALWAYS):
            return None
        return entry

    def forget(self) -> None:
        """Drop the in-memory index (it is rebuilt from the shard headers when next needed)."""
        self._index = None

    def maps(self) -> ShardMaps:
        """Memory maps over this key's shards (for per-layer reads)."""
        return ShardMaps(self.dir)

    def fill_embeds(self, out: torch.Tensor, entries: list[CacheEntry | None]) -> torch.Tensor:
        """Copy the embeds of ``entries`` (one per table row; ``None`` or a skip: left as is) into ``out``.

        Shards are mapped, checked and released one at a time, so no more than ``out`` and one
        shard are ever held. Returns the mask of rows filled.
        """
        names: dict[str, int] = {}
        shard_of = np.full(len(entries), -1, dtype=np.int32)
        row_of = np.zeros(len(entries), dtype=np.int64)
        for i, entry in enumerate(entries):
            if entry is not None and entry.row >= 0:
                shard_of[i] = names.setdefault(entry.shard, len(names))
                row_of[i] = entry.row
        order = np.argsort(shard_of, kind="stable")
        bounds = np.searchsorted(shard_of[order], np.arange(len(names) + 1))
        target = out.numpy()
        for name, number in names.items():
            dst = order[bounds[number] : bounds[number + 1]]
            maps = ShardMaps(self.dir, limit=1)
            target[dst] = maps.tensor(name, EMBEDS)[row_of[dst]]
            maps.close()
        return torch.from_numpy(shard_of >= 0)

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
        self._index = None

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
    ) -> Path:
        """Write one shard: rows for ``paths``, skip records for ``skipped`` (path, reason).

        ``layers`` maps block numbers to [n, hidden] CLS tokens; ``records`` (one dict per
        path, then per skip) adds label, category and split to the readable manifest.
        """
        tensors: dict[str, torch.Tensor] = {}
        if embeds is not None and len(paths):
            tensors[EMBEDS] = embeds.to(STORE_DTYPE).contiguous()
            for block, value in (layers or {}).items():
                tensors[layer_tensor(block)] = value.to(STORE_DTYPE).contiguous()
        entries = []
        for row, path in enumerate(paths):
            size, mtime = file_stamp(path) or (-1, -1)
            entries.append([os.path.abspath(path), size, mtime, row, ""])
        for path, reason in skipped:
            size, mtime = file_stamp(path) or (-1, -1)
            entries.append([os.path.abspath(path), size, mtime, -1, reason])
        meta = {
            "entries": json.dumps(entries),
            "created_ns": str(time.time_ns()),
            "layers": json.dumps(sorted(layers or {}) if EMBEDS in tensors else []),
            "limits": limits,
            "checksums": json.dumps({k: _checksum(v.view(torch.uint8).numpy()) for k, v in tensors.items()}),
        }
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
        self._index = None
        return path
