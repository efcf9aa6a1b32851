"""Non-resized tiles on an even grid over an image: ``deepfake predict --tiles`` scores each one."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from deepfake.data.preprocess import Preprocess, center_crop, normalize, pil_to_tensor


def tile_boxes(height: int, width: int, size: int, max_tiles: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of up to ``max_tiles`` crops of ``size`` on an even grid over the image."""
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
    x = pil_to_tensor(image)
    h, w = x.shape[-2:]
    size = spec.size
    views = []
    for top, left, _, _ in tile_boxes(h, w, size, max_tiles):
        crop = center_crop(x[:, top : top + size, left : left + size], size)
        views.append(normalize(crop.contiguous(), spec.mean, spec.std))
    return views
