"""Find labelled images in the directory layouts the field uses.

A *label folder* is named ``0_real``/``1_fake`` (ForenSynths, CNNDetection,
UniversalFakeDetect), ``real``/``fake``, or ``nature``/``ai`` (GenImage). Everything between
the root and a label folder says where the images belong: ``train``/``val``/``test`` are
split markers, the other names are the domain (generator, then category), so

    DATASET/car/0_real/...                  category "car"
    DATASET/train/car/1_fake/...            split "train", category "car"
    TEST/stylegan/bedroom/0_real/...        generator "stylegan", category "bedroom"
    GENIMAGE/midjourney/val/ai/...          generator "midjourney", split "val"
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deepfake.image_io import walk_images

LABEL_NAMES = {"0_real": 0, "real": 0, "nature": 0, "1_fake": 1, "fake": 1, "ai": 1}
SPLIT_NAMES = ("train", "val", "test")
MAX_DEPTH = 4


@dataclass(frozen=True)
class LabelledFolder:
    """One label folder: its path, label, the domain names above it and its split."""

    path: str
    label: int
    parts: tuple[str, ...]
    split: str | None


class LayoutError(ValueError):
    """A data set folder that does not have the expected layout; the message lists what was found."""


def label_of(name: str) -> int | None:
    return LABEL_NAMES.get(name.lower())


def find_label_folders(root: str | os.PathLike) -> list[LabelledFolder]:
    """Every label folder under ``root`` (depth-limited).

    Symlinked folders are followed like real ones (data sets are often assembled from
    links: ``test/progan -> /data/progan``); a link to a folder already on the current
    path (a loop) is left out.
    """
    root = Path(root)
    if not root.exists():
        raise LayoutError(f"{root}: no such directory")
    if not root.is_dir():
        raise LayoutError(f"{root}: not a directory")
    found: list[LabelledFolder] = []

    def visit(folder: Path, parts: tuple[str, ...], above: frozenset[str]) -> None:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        labelled = [p for p in children if label_of(p.name) is not None]
        if labelled:
            split = next((p for p in parts if p in SPLIT_NAMES), None)
            domain = tuple(p for p in parts if p not in SPLIT_NAMES)
            found.extend(LabelledFolder(str(p), label_of(p.name), domain, split) for p in labelled)
            return
        if len(parts) >= MAX_DEPTH:
            return
        for child in children:
            real = os.path.realpath(child)
            if real not in above:
                visit(child, parts + (child.name,), above | {real})

    visit(root, (), frozenset({os.path.realpath(root)}))
    return found


def describe(root: str | os.PathLike, depth: int = 2) -> str:
    """A short listing of what is in ``root``, for error messages."""
    root = Path(root)
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        level = len(Path(dirpath).relative_to(root).parts)
        dirnames.sort()
        if level >= depth:
            dirnames[:] = []
        rel = os.path.relpath(dirpath, root)
        lines.append(f"  {rel}/ ({len(filenames)} files)")
        if len(lines) >= 20:
            lines.append("  ...")
            break
    return "\n".join(lines)


def list_folder_images(folder: LabelledFolder) -> list[str]:
    return walk_images(folder.path)
