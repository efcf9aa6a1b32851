"""Find labelled images in the directory layouts the field uses, and refuse the ones that read two ways.

A *label folder* is named ``0_real``/``1_fake`` (ForenSynths, CNNDetection,
UniversalFakeDetect), ``real``/``fake``, or ``nature``/``ai`` (GenImage), or whatever
``--label_dirs real=a,b fake=c,d`` names. Everything between the root and a label folder says
where the images belong: ``train``/``val``/``test`` are split markers, the other names are the
domain (generator, then category), so

    DATASET/car/0_real/...                  category "car"
    DATASET/train/car/1_fake/...            split "train", category "car"
    TEST/stylegan/bedroom/0_real/...        generator "stylegan", category "bedroom"
    GENIMAGE/midjourney/val/ai/...          generator "midjourney", split "val"
    SCENES/nature/{real,ai}/...             generator "nature" (a domain, not GenImage's real label)

A label name counts only where it holds images itself, or as the innermost labelled level:
``nature/`` holding ``real/`` and ``ai/`` is a domain. A folder that could be read both ways
(a label-named folder holding images next to label folders, or label folders below a
label-named folder that also has unlabelled images) is refused with both readings named.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from deepfake.data.image_io import is_image_name, walk_images
from deepfake.utils.text import split_list

LABEL_NAMES = {"0_real": 0, "real": 0, "nature": 0, "1_fake": 1, "fake": 1, "ai": 1}
SPLIT_NAMES = ("train", "val", "test")
MAX_DEPTH = 8
CLASS_NAMES = ("real", "fake")


@dataclass(frozen=True)
class LabelledFolder:
    """One label folder: its path, label, the domain names above it and its split."""

    path: str
    label: int
    parts: tuple[str, ...]
    split: str | None


class LayoutError(ValueError):
    """A data set folder that does not have the expected layout; the message lists what was found."""


def label_of(name: str, labels: dict[str, int] | None = None) -> int | None:
    return (labels or LABEL_NAMES).get(name.lower())


def parse_label_dirs(specs: list[str] | None) -> dict[str, int] | None:
    """``["real=a,b", "fake=c,d"]`` -> ``{"a": 0, "b": 0, "c": 1, "d": 1}`` (``None`` when not given)."""
    if not specs:
        return None
    out: dict[str, int] = {}
    for spec in specs:
        kind, sep, names = spec.partition("=")
        kind = kind.strip().lower()
        if not sep or kind not in CLASS_NAMES or not names.strip():
            raise LayoutError(f"--label_dirs {spec!r}: expected real=NAME[,NAME...] or fake=NAME[,NAME...]")
        for name in split_list(names.lower()) or []:
            label = CLASS_NAMES.index(kind)
            if out.get(name, label) != label:
                raise LayoutError(f"--label_dirs: {name!r} named both real and fake")
            out[name] = label
    if set(out.values()) != {0, 1}:
        raise LayoutError("--label_dirs needs folder names for both classes: real=... fake=...")
    return out


@dataclass
class _Node:
    path: Path
    name: str
    images: int = 0  # image files directly inside
    children: list[_Node] = field(default_factory=list)

    def total_images(self) -> int:
        return self.images + sum(c.total_images() for c in self.children)


def _subdirs(path: Path) -> tuple[list[Path], int]:
    """(sub-folders to descend into, image files directly inside); hidden folders skipped, symlinks followed."""
    dirs, images = [], 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError:  # a symlink loop or a vanished entry
                    continue
                if is_dir:
                    dirs.append(Path(entry.path))
                elif is_image_name(entry.name):
                    images += 1
    except PermissionError as exc:
        raise LayoutError(f"{path}: permission denied ({exc.strerror})") from None
    return sorted(dirs), images


def _scan(path: Path, depth: int, above: frozenset[str]) -> _Node:
    """The folder tree under ``path``. Symlinked folders are followed like real ones (data sets are
    often assembled from links: ``test/progan -> /data/progan``); a link to a folder already on the
    current path (a loop) is left out."""
    dirs, images = _subdirs(path)
    node = _Node(path, path.name, images)
    if depth < MAX_DEPTH:
        for d in dirs:
            real = os.path.realpath(d)
            if real not in above:
                node.children.append(_scan(d, depth + 1, above | {real}))
    return node


def _labelled_below(node: _Node, labels: dict[str, int]) -> list[_Node]:
    """Label-named folders under ``node`` that hold images (the nearest ones on each branch)."""
    found = []
    for child in node.children:
        if label_of(child.name, labels) is not None and child.total_images():
            found.append(child)
        else:
            found.extend(_labelled_below(child, labels))
    return found


def _unlabelled_images(node: _Node, labels: dict[str, int]) -> list[Path]:
    """Folders under ``node`` holding images outside every label-named folder."""
    out = [node.path] if node.images else []
    for child in node.children:
        if label_of(child.name, labels) is None:
            out.extend(_unlabelled_images(child, labels))
    return out


def _rel(path: Path, root: Path) -> str:
    rel = os.path.relpath(path, root)
    return "." if rel == "." else rel + "/"


def find_label_folders(root: str | os.PathLike, labels: dict[str, int] | None = None) -> list[LabelledFolder]:
    """Every label folder under ``root``; raises :class:`LayoutError` for a layout that reads two ways."""
    root = Path(root)
    labels = labels or LABEL_NAMES
    if not root.exists():
        raise LayoutError(f"{root}: no such directory")
    if not root.is_dir():
        raise LayoutError(f"{root}: not a directory")
    tree = _scan(root, 0, frozenset({os.path.realpath(root)}))
    found: list[LabelledFolder] = []

    def as_label(node: _Node, parts: tuple[str, ...]) -> LabelledFolder:
        split = next((p for p in parts if p in SPLIT_NAMES), None)
        domain = tuple(p for p in parts if p not in SPLIT_NAMES)
        return LabelledFolder(str(node.path), label_of(node.name, labels), domain, split)

    def visit(node: _Node, parts: tuple[str, ...]) -> None:
        for child in node.children:
            label = label_of(child.name, labels)
            if label is None:
                visit(child, parts + (child.name,))
                continue
            below = _labelled_below(child, labels)
            kind = CLASS_NAMES[label]
            where = _rel(child.path, root)
            if below and child.images:
                raise LayoutError(
                    f"{root}: {where} reads two ways: (1) the {kind} folder of "
                    f"{'/'.join(parts) or 'the root'}, its sub-folders included, or (2) a domain named "
                    f"{child.name!r} whose label folders are {', '.join(_rel(b.path, root) for b in below)} "
                    f"(its own {child.images} images then have no label). Move the images or the folders so "
                    f"only one reading remains, or name the label folders with --label_dirs."
                )
            if below:
                stray = _unlabelled_images(child, labels)
                if stray:
                    raise LayoutError(
                        f"{root}: {where} reads two ways: (1) the {kind} folder of "
                        f"{'/'.join(parts) or 'the root'}, with all its sub-folders {kind}, or (2) a domain "
                        f"named {child.name!r} with label folders {', '.join(_rel(b.path, root) for b in below)} "
                        f"and unlabelled images in {', '.join(_rel(s, root) for s in stray[:5])}. "
                        f"Rename the folders so only one reading remains, or use --label_dirs or a manifest."
                    )
                # Not where images are and not innermost: a domain that happens to share a label's name.
                visit(child, parts + (child.name,))
                continue
            found.append(as_label(child, parts))

    visit(tree, ())
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
