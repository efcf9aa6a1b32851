"""Non-resized tiles on an even grid over an image: ``deepfake predict --tiles`` scores each one."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from deepfake.data.preprocess import Preprocess, crop_to_tensor, normalize


def tile_boxes(height: int, width: int, size: int, max_tiles: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of up to ``max_tiles`` crops of ``size`` on an even grid over the image."""
    if max_tiles < 1:
        raise ValueError(f"a tile budget must be at least 1, got {max_tiles}")
    if height <= size and width <= size:
        return [(0, 0, height, width)]
    rows, cols = max(1, math.ceil(height / size)), max(1, math.ceil(width / size))
    # Thin the grid evenly until it fits the budget.
    while rows * cols > max_tiles:
        if rows >= cols:
            rows -= 1
        else:
            cols -= 1
    tops = np.linspace(0, max(height - size, 0), rows).round().astype(int)
    lefts = np.linspace(0, max(width - size, 0), cols).round().astype(int)
    return [(int(top), int(left), min(size, height), min(size, width)) for top in tops for left in lefts]


def tile_views(image: Image.Image, spec: Preprocess, max_tiles: int) -> list[torch.Tensor]:
    """Up to ``max_tiles`` non-resized crops of ``spec.size`` on an even grid over the image."""
    size = spec.size
    views = []
    # Each crop is converted on its own: a large photo never becomes one float tensor.
    for top, left, h, w in tile_boxes(image.height, image.width, size, max_tiles):
        views.append(normalize(crop_to_tensor(image.crop((left, top, left + w, top + h)), size), spec.mean, spec.std))
    return views
