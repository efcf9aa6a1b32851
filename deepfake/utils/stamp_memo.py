"""Per-file results remembered by the file's ``(size, mtime_ns)`` stamp, beside the feature cache.

Two things are computed from files at the top of every run although the files rarely change:
the bias audit's header probes (up to ``max_per_group`` per domain and class) and the hash of a
local checkpoint's weights (1.2 GB for LanguageBind). Each result is remembered with its file's
stamp in one JSON file per use and identity (``<cache root>/<kind>/<key>.json``: ``audit`` per
data set and seed, ``sha256`` per checkpoint folder): a rerun stats the files and reads only
those whose stamp is new. A memo holds the last call's files only, never a record per image of
the data set. Results that failed (an ``error`` key) are not remembered, so a file made
readable again is read again. A memo that does not parse, or belongs to another identity, is
ignored with a warning and rewritten; a cache root that cannot be read or written just means
no memo.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from deepfake.utils.fileio import atomic_write_text, display_path
from deepfake.utils.hashing import cache_key, file_stamp

log = logging.getLogger(__name__)

MEMO_FORMAT = "deepfake-stamp-memo"
MEMO_VERSION = 1

Stamp = tuple[int, int]


def memo_path(cache_root: str | os.PathLike, kind: str, identity: dict) -> Path:
    """The memo file of ``kind`` (``audit``, ``sha256``) for ``identity`` (what the results depend on)."""
    return Path(cache_root) / kind / f"{cache_key(identity)}.json"


def _canonical(identity: dict) -> dict:
    # As it reads back from JSON (tuples become lists), so a stored identity compares equal.
    return json.loads(json.dumps(identity))


def read_memo(path: Path, identity: dict, decode: Callable[[dict], dict]) -> tuple[dict[str, tuple[Stamp, dict]], bool]:
    """(records by path, whether the file must be rewritten because it was torn or foreign).

    ``decode`` turns a stored probe back into what the probe function returns, and raises
    ``ValueError`` (or ``KeyError`` / ``TypeError``) on a record it does not recognise.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return {}, False
    except OSError as exc:
        log.debug("memo %s not read: %s", display_path(path), exc)
        return {}, False
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != MEMO_FORMAT or data.get("version") != MEMO_VERSION:
            raise ValueError(f"not a version-{MEMO_VERSION} {MEMO_FORMAT} file")
        if data.get("identity") != _canonical(identity):
            raise ValueError("it belongs to another data set, seed or checkpoint")
        records = {}
        for file, (size, mtime_ns, probed) in data["probes"].items():
            if not (isinstance(size, int) and isinstance(mtime_ns, int) and isinstance(probed, dict)):
                raise ValueError(f"bad record for {display_path(file)}")
            records[file] = ((size, mtime_ns), decode(probed))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("%s: memo ignored and rewritten (%s)", display_path(path), exc)
        return {}, True
    return records, False


def write_memo(path: Path, identity: dict, records: dict[str, tuple[Stamp, dict]]) -> bool:
    """Write the memo atomically; ``False`` (and a debug line) when the cache root is not writable."""
    data = {"format": MEMO_FORMAT, "version": MEMO_VERSION, "identity": identity,
            "probes": {file: [stamp[0], stamp[1], probed] for file, (stamp, probed) in records.items()}}
    try:
        atomic_write_text(path, json.dumps(data, separators=(",", ":")) + "\n")
    except OSError as exc:
        log.debug("memo %s not written: %s", display_path(path), exc)
        return False
    return True


def memoized(paths: Iterable[str], probe: Callable[[str], dict], memo: Path | None = None,
             identity: dict | None = None, decode: Callable[[dict], dict] = dict) -> dict[str, dict]:
    """``probe(path)`` of every path, reusing the memo's result where the file's stamp is unchanged.

    The memo is rewritten (with this call's paths only) when anything new was probed or the
    old file was unusable; ``memo=None`` probes every path.
    """
    identity = identity or {}
    records, rewrite = read_memo(memo, identity, decode) if memo is not None else ({}, False)
    results: dict[str, dict] = {}
    kept: dict[str, tuple[Stamp, dict]] = {}
    reused = 0
    for file in paths:
        if file in results:
            continue
        # Stat before the read: a file changed in between keeps its old stamp and is read again next time.
        stamp = file_stamp(file)
        known = records.get(file)
        if stamp is not None and known is not None and known[0] == stamp:
            results[file] = known[1]
            kept[file] = known
            reused += 1
            continue
        results[file] = probed = probe(file)
        if stamp is not None and "error" not in probed:
            kept[file] = (stamp, probed)
            rewrite = True
    if memo is not None:
        log.debug("%d of %d results from the memo %s", reused, len(results), display_path(memo))
        if rewrite:
            write_memo(memo, identity, kept)
    return results
