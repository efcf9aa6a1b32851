"""DeepfakeDataset: labelled images of named categories, read by the one shared loader.

Training layouts::

    DATASET/{category}/{0_real,1_fake}/...              (val held out, stratified)
    DATASET/{train,val,test}/{category}/{0_real,1_fake}/...   (ForenSynths)

``real``/``fake`` and GenImage's ``nature``/``ai`` work as label folder names too.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from deepfake.config import DEFAULT_MAX_PIXELS
from deepfake.data.alignment import Alignment
from deepfake.data.image_io import ImageSkipped, load_image, reduce_to_short_side, to_rgb
from deepfake.data.layouts import LabelledFolder, LayoutError, describe, find_label_folders, list_folder_images
from deepfake.data.manifests import is_manifest, read_manifest
from deepfake.data.perturbations import BlurJpegAugment, Perturbation
from deepfake.data.preprocess import Preprocess, preprocess_image, short_side_shape

log = logging.getLogger(__name__)

# "exact": full-resolution decode, then the tower's resize. "fast": the decoder first shrinks
# the image (JPEG DCT scaling, integer reduce) while its short side stays >= FAST_DECODE_FACTOR
# x the input size; the exact resize then goes the rest of the way.
DECODE_MODES = ("exact", "fast")
FAST_DECODE_FACTOR = 2


class Sample(NamedTuple):
    """One image: where it is, its label (0 real, 1 fake), its category and split.

    A named tuple: a 720k-image scan builds one per file, and a tuple is built several times
    faster than a frozen dataclass and is as compact as a slotted one.
    """

    path: str
    label: int
    category: str
    split: str = ""


def _category_name(parts: tuple[str, ...], root: Path) -> str:
    return "/".join(parts) if parts else root.resolve().name


def _no_label_folders(root: Path, labels: dict[str, int] | None) -> LayoutError:
    names = ", ".join(sorted(labels)) if labels else "0_real/1_fake, real/fake or nature/ai"
    return LayoutError(f"{root}: no label folders ({names}) holding images found. Contents:\n{describe(root)}")


def scan_categories(dataset_dir: str | os.PathLike, split: str | None = None,
                    labels: dict[str, int] | None = None,
                    folders: list[LabelledFolder] | None = None) -> dict[str, list[Sample]]:
    """Samples of ``split`` (all when ``None``; no-split layouts match any), grouped by category.

    ``folders``: the label folders of ``dataset_dir`` when the caller has found them already
    (one walk of a 720k-image tree is enough).
    """
    root = Path(dataset_dir)
    if is_manifest(root):
        grouped: dict[str, list[Sample]] = {}
        for entry in read_manifest(root):
            if split is None or entry.split in (split, ""):
                name = "/".join(p for p in (entry.domain, entry.category) if p) or root.stem
                grouped.setdefault(name, []).append(Sample(entry.path, entry.label, name, entry.split))
        return grouped
    folders = find_label_folders(root, labels) if folders is None else folders
    if not folders:
        raise _no_label_folders(root, labels)
    grouped: dict[str, list[Sample]] = {}
    for folder in folders:
        if split is not None and folder.split not in (split, None):
            continue
        category = _category_name(folder.parts, root)
        files = list_folder_images(folder)
        if not files:
            raise LayoutError(f"{folder.path}: empty folder, no image files in it")
        grouped.setdefault(category, []).extend(
            Sample(path, folder.label, category, folder.split or "") for path in files
        )
    return grouped


def select_categories(grouped: dict[str, list[Sample]], categories: list[str] | None, where: str) -> list[Sample]:
    """Keep the named categories (all when ``None``); each must exist and hold both labels."""
    names = categories or sorted(grouped)
    unknown = [c for c in names if c not in grouped]
    if unknown:
        raise LayoutError(f"{where}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                          f"{', '.join(unknown)}; found: {', '.join(sorted(grouped)) or 'none'}")
    samples = []
    for name in names:
        counts = Counter(s.label for s in grouped[name])
        if counts[0] == 0 or counts[1] == 0:
            raise LayoutError(
                f"{where}: category {name!r} has only {'fake' if counts[0] == 0 else 'real'} images "
                f"({counts[0]} real, {counts[1]} fake); both labels are needed"
            )
        samples.extend(grouped[name])
    return samples


def stratified_split(samples: list[Sample], val_ratio: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``val_ratio`` of each (category, label) group, reproducibly for ``seed``."""
    if not 0.0 < val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in (0, 1), got {val_ratio}")
    groups: dict[tuple[str, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.category, s.label), []).append(s)
    train, val = [], []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda s: s.path)
        random.Random(f"{seed}:{key[0]}:{key[1]}").shuffle(members)
        n_val = min(len(members) - 1, max(1, round(val_ratio * len(members)))) if len(members) > 1 else 0
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return train, val


def training_samples(
    dataset_dir: str | os.PathLike, categories: list[str] | None, val_ratio: float, seed: int,
    labels: dict[str, int] | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """(train, val) samples: the ``train``/``val`` splits when present, else a stratified hold-out.

    ``dataset_dir`` is a folder (any layout of :mod:`deepfake.data.layouts`) or a CSV / JSON Lines manifest.
    """
    root = Path(dataset_dir)
    folders = None
    if is_manifest(root):
        splits = {e.split or None for e in read_manifest(root)}
    else:
        folders = find_label_folders(root, labels)
        splits = {f.split for f in folders}
    if "train" in splits:
        train = select_categories(scan_categories(root, "train", labels, folders), categories,
                                  f"{root} (train split)")
        if "val" in splits:
            val_grouped = scan_categories(root, "val", labels, folders)
            names = categories or sorted({s.category for s in train})
            val = [s for name in names for s in val_grouped.get(name, [])]
            if val:
                return train, val
            log.warning("%s: val/ has none of the training categories; holding out %.0f%%", root, 100 * val_ratio)
        return stratified_split(train, val_ratio, seed)
    return stratified_split(select_categories(scan_categories(root, None, labels, folders), categories, str(root)),
                            val_ratio, seed)


def view_rng(seed: int, view: int, path: str) -> random.Random:
    """The augmentation draw for one image and one view: the same every time it is asked for."""
    return random.Random(f"{seed}:{view}:{path}")


class DeepfakeDataset(Dataset):
    """Images -> (pixel tensor, index), or a skip record with its reason for unreadable files.

    ``align`` re-encodes / resizes every image first (format and size bias removal);
    ``perturb`` degrades every image (robustness tests); ``augment`` draws CNNDetection's
    blur + JPEG per image, reproducibly from ``(seed, view, path)``. ``images`` supplies
    in-memory PIL images in place of files (``None`` entries are read from their path).
    """

    def __init__(
        self,
        samples: list[Sample],
        preprocess: Preprocess,
        perturb: Perturbation | None = None,
        augment: BlurJpegAugment | None = None,
        seed: int = 0,
        view: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        images: list[Image.Image | None] | None = None,
        align: Alignment | None = None,
        decode: str = "exact",
        exif_transpose: bool = True,
    ):
        self.samples = samples
        self.align = align if align is not None and align.enabled else None
        self.images = images
        self.preprocess = preprocess
        self.perturb = perturb
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.view = view
        self.max_pixels = max_pixels
        if decode not in DECODE_MODES:
            raise ValueError(f"unknown decode mode {decode!r}; choose one of {DECODE_MODES}")
        self.decode = decode
        self.exif_transpose = exif_transpose  # False: pixels as stored, as the published test scripts read them

    @property
    def reduce_to(self) -> int | None:
        """With ``decode="fast"``: the short side the decoder may shrink to before the exact resize."""
        if self.decode != "fast" or self.preprocess.mode != "resize":
            return None
        return FAST_DECODE_FACTOR * (self.preprocess.resize_size or self.preprocess.size)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> Image.Image:
        """Sample ``index`` as an RGB image (perturbed and augmented as configured); raises ImageSkipped."""
        sample = self.samples[index]
        given = self.images[index] if self.images is not None else None
        if given is not None:
            image = to_rgb(ImageOps.exif_transpose(given) if self.exif_transpose else given)
            if self.reduce_to:
                image = reduce_to_short_side(image, self.reduce_to)
        else:
            as_stored = {} if self.exif_transpose else {"exif_transpose": False}
            image = load_image(sample.path, self.max_pixels, self.reduce_to, **as_stored)
        if self.align is not None:
            image = self.align(image)
        if self.perturb is not None:
            image = self.perturb(image)
        if self.augment is not None:
            image = self.augment(image, view_rng(self.seed, self.view, sample.path))
        return image

    def load(self, index: int) -> torch.Tensor:
        """The preprocessed tensor of sample ``index``; raises ImageSkipped."""
        image = self.read(index)
        # A fused tower's parts are each prepared from this one decode: every resizing part is checked.
        for part in getattr(self.preprocess, "parts", (self.preprocess,)):
            if part.mode != "resize":
                continue
            # An extreme aspect ratio (1 x 3,000,000) passes the pixel limit but its short-side
            # resize would not: refuse it before allocating.
            short = part.resize_size or part.size
            h, w = short_side_shape(image.height, image.width, short)
            if h * w > self.max_pixels:
                raise ImageSkipped(self.samples[index].path,
                                   f"extreme aspect ratio ({image.width}x{image.height}): resizing the short side "
                                   f"to {short} would give {w}x{h} > max_pixels {self.max_pixels}")
        try:
            return preprocess_image(image, self.preprocess)
        except MemoryError:
            raise ImageSkipped(self.samples[index].path, "out of memory while preprocessing") from None
        except RuntimeError as exc:
            if "alloc" not in str(exc).lower():
                raise
            raise ImageSkipped(self.samples[index].path, f"allocation failed while preprocessing: {exc}") from None

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.load(index), None
        except ImageSkipped as exc:
            return index, None, exc.reason


def collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> dict:
    """Stack the readable images of a batch; carry the skipped ones with their reasons."""
    good = [(i, x) for i, x, _ in items if x is not None]
    return {
        "indices": torch.tensor([i for i, _ in good], dtype=torch.long),
        "pixel_values": torch.stack([x for _, x in good]) if good else None,
        "skipped": [(i, reason) for i, x, reason in items if x is None],
    }
