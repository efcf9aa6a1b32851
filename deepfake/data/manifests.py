"""Lists of labelled images: CSV or JSON Lines manifests, in place of a folder layout.

One image per row or line, with ``path`` and ``label`` and, optionally, ``domain``,
``category`` and ``split`` (``train``/``val``/``test``)::

    path,label,domain,category,split
    imgs/0001.jpg,real,city,,train
    imgs/0002.png,fake,city,,test

``label`` is ``0``/``1`` or ``real``/``fake`` (also ``0_real``/``1_fake``, ``nature``/``ai``).
Relative paths are relative to the manifest's folder. Pass the file wherever a data folder is
expected (``--dataset_dir``). A bad row stops the run with the file, the line and the problem.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from deepfake.data.layouts import LABEL_NAMES, SPLIT_NAMES, LayoutError

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
LABEL_WORDS = {**LABEL_NAMES, "0": 0, "1": 1}


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    label: int
    domain: str = ""
    category: str = ""
    split: str = ""


def is_manifest(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a manifest file (by its suffix) rather than a folder."""
    path = Path(path)
    return path.suffix.lower() in MANIFEST_SUFFIXES and not path.is_dir()


def _entry(record: dict, base: Path, where: str) -> ManifestEntry:
    if not isinstance(record, dict):
        raise LayoutError(f"{where}: expected an object with path and label")
    path = str(record.get("path") or "").strip()
    if not path:
        raise LayoutError(f"{where}: no path")
    raw = str(record.get("label", "")).strip().lower()
    if raw not in LABEL_WORDS:
        raise LayoutError(f"{where}: label {record.get('label')!r} is not one of 0, 1, real, fake")
    split = str(record.get("split") or "").strip().lower()
    if split and split not in SPLIT_NAMES:
        raise LayoutError(f"{where}: split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
    full = path if os.path.isabs(path) else str(base / path)
    return ManifestEntry(full, LABEL_WORDS[raw], str(record.get("domain") or "").strip(),
                         str(record.get("category") or "").strip(), split)


def read_manifest(path: str | os.PathLike) -> list[ManifestEntry]:
    """Every entry of a CSV or JSON Lines manifest (paths made absolute against its folder)."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: no such manifest file")
    base = path.resolve().parent
    entries: list[ManifestEntry] = []
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is read past, not taken into the first column.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            missing = {"path", "label"} - set(reader.fieldnames or [])
            if missing:
                raise LayoutError(f"{path}: CSV header lacks {', '.join(sorted(missing))} "
                                  f"(columns: path,label[,domain,category,split])")
            for line, record in enumerate(reader, start=2):
                entries.append(_entry(record, base, f"{path}:{line}"))
        else:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise LayoutError(f"{path}:{line}: not JSON ({exc.msg})") from None
                entries.append(_entry(record, base, f"{path}:{line}"))
    if not entries:
        raise LayoutError(f"{path}: manifest lists no images")
    return entries
