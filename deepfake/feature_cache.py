"""On-disk cache of tower features: fp16 safetensors shards plus a manifest.

The tower is frozen, so each image needs one forward pass for the life of a data set.
A cache directory holds one sub-directory per *key* (tower identity, preprocessing,
feature kind, precision, perturbation / augmentation view): changing any of them starts
a new sub-directory and never reuses stale features.

Each shard is self-describing: its metadata lists the images it holds (path, size,
mtime) and a checksum of its tensors. Shards are written atomically, so a run killed
during extraction leaves whole shards behind and the next run extracts only what is
missing; a shard that does not open or fails its checksum is ignored (and its images
redone). An image whose size or mtime changed is extracted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from deepfake.fileio import atomic_save_safetensors, atomic_write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STORE_DTYPE = torch.float16


def cache_key(info: dict) -> str:
    """A short, stable digest of everything that determines the features."""
    blob = json.dumps(info, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def file_stamp(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, or ``None`` when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """Where one image's features are: a shard and a row (row -1: the image was skipped)."""

    shard: str
    row: int
    stamp: tuple[int, int]
    reason: str = ""


class FeatureCache:
    """The shards of one cache key under ``root/<key>/``."""

    def __init__(self, root: str | os.PathLike, info: dict):
        self.info = {"format": FORMAT_VERSION, **info}
        self.key = cache_key(self.info)
        self.dir = Path(root) / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if not key_file.exists():
            atomic_write_json(key_file, self.info)
        self._index: dict[str, CacheEntry] | None = None
        self._open_shards: dict[str, dict[str, torch.Tensor]] = {}

    # --- reading ---------------------------------------------------------------------

    def shard_files(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.safetensors"))

    def index(self, refresh: bool = False) -> dict[str, CacheEntry]:
        """path -> newest entry, from the shard headers; unreadable shards are dropped."""
        if self._index is not None and not refresh:
            return self._index
        shards = []
        for shard in self.shard_files():
            try:
                with safe_open(str(shard), "pt") as handle:
                    meta = handle.metadata() or {}
                shards.append((int(meta["created_ns"]), shard.name, json.loads(meta["entries"])))
            except Exception as exc:  # torn or foreign file: never load it
                log.warning("%s: unreadable cache shard set aside, its images will be extracted again (%s)", shard, exc)
                self._set_aside(shard)
        index: dict[str, CacheEntry] = {}
        for _, name, entries in sorted(shards):
            for path, size, mtime, row, reason in entries:
                index[path] = CacheEntry(name, row, (size, mtime), reason)
        self._index = index
        return index

    def lookup(self, path: str) -> CacheEntry | None:
        """The entry for ``path`` if the file is unchanged since it was cached."""
        entry = self.index().get(os.path.abspath(path))
        if entry is None or entry.stamp != file_stamp(path):
            return None
        return entry

    def _shard_tensors(self, name: str) -> dict[str, torch.Tensor]:
        if name not in self._open_shards:
            path = self.dir / name
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata()
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            if _checksum(tensors) != meta.get("checksum"):
                raise CorruptShard(path)
            self._open_shards[name] = tensors
        return self._open_shards[name]

    def read(self, entries: list[CacheEntry], with_layers: bool) -> dict[str, torch.Tensor]:
        """Stack the rows of ``entries`` (none skipped) into float32 tensors."""
        embeds, layers = [], []
        by_shard: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            by_shard.setdefault(entry.shard, []).append(i)
        order = np.empty(len(entries), dtype=np.int64)
        pos = 0
        for name, positions in by_shard.items():
            tensors = self._shard_tensors(name)
            rows = torch.tensor([entries[i].row for i in positions])
            embeds.append(tensors["embeds"][rows])
            if with_layers:
                layers.append(tensors["layers"][rows])
            order[positions] = np.arange(pos, pos + len(positions))
            pos += len(positions)
        take = torch.from_numpy(order)
        out = {"embeds": torch.cat(embeds).float()[take]} if embeds else {}
        if with_layers and layers:
            out["layers"] = torch.cat(layers).float()[take]
        return out

    @staticmethod
    def _set_aside(path: Path) -> None:
        """Rename a damaged shard (kept for inspection, never read again)."""
        try:
            os.replace(path, path.with_suffix(".corrupt"))
        except OSError:
            pass  # another process set it aside first

    def drop_shard(self, name: str) -> None:
        """Set a shard that failed its checksum aside and forget it."""
        self._set_aside(self.dir / name)
        self._open_shards.pop(name, None)
        self._index = None

    # --- writing ---------------------------------------------------------------------

    def write_shard(
        self,
        paths: list[str],
        embeds: torch.Tensor | None,
        layers: torch.Tensor | None,
        skipped: list[tuple[str, str]],
        rank: int = 0,
    ) -> Path:
        """Write one shard: rows for ``paths`` and skip records for ``skipped`` (path, reason)."""
        tensors: dict[str, torch.Tensor] = {}
        if embeds is not None and len(paths):
            tensors["embeds"] = embeds.to(STORE_DTYPE).contiguous()
            if layers is not None:
                tensors["layers"] = layers.to(STORE_DTYPE).contiguous()
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
            "checksum": _checksum(tensors),
        }
        name = f"shard-{rank:03d}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.safetensors"
        path = atomic_save_safetensors(self.dir / name, tensors, meta)
        self._index = None
        return path

    def update_manifest(self, records: list[dict]) -> Path:
        """Merge ``records`` (path, size, mtime, label, category, split, shard, row) into manifest.json.

        Shards are the source of truth; the manifest is their readable summary, kept by rank 0.
        """
        path = self.dir / "manifest.json"
        known: dict[str, dict] = {}
        if path.exists():
            try:
                known = {r["path"]: r for r in json.loads(path.read_text())["images"]}
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("%s: unreadable manifest, rewriting it", path)
        known.update((r["path"], r) for r in records)
        return atomic_write_json(path, {"key": self.info, "images": list(known.values())})


class CorruptShard(Exception):
    """A shard whose tensors do not match the checksum written with them."""

    def __init__(self, path: Path):
        super().__init__(f"{path}: cache shard fails its checksum")
        self.path = path
