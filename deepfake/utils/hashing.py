"""Digests and file stamps: what identifies a file's contents and a run's settings."""

from __future__ import annotations

import hashlib
import json
import os


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """The sha256 of a file's bytes, read in chunks (a tower's weights are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
