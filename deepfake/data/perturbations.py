"""Pixel-space perturbations (the robustness protocol: blur, JPEG, resize) and CNNDetection's training augmentation.

Two blurs: :func:`gaussian_blur` filters in float and rounds once (this tool's default, and its
training augmentation); :func:`gaussian_blur_uint8` is what UniversalFakeDetect's and
CNNDetection's ``gaussian_blur`` compute (``scipy.ndimage.gaussian_filter`` writing into the
uint8 image, so each one-dimensional pass is cut down to an integer), used by ``--protocol``.
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deepfake.config import AugmentConfig


def jpeg_compress(image: Image.Image, quality: int) -> Image.Image:
    """Re-encode as JPEG at ``quality`` (Pillow, 4:2:0 as cameras and the field's scripts use).

    The decoded JPEG is returned as such, so its format and quantisation tables stay readable.
    """
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    out = Image.open(buffer)
    out.load()
    return out if out.mode == "RGB" else out.convert("RGB")


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian: radius ``int(truncate * sigma + 0.5)``, normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur of each channel as ``scipy.ndimage.gaussian_filter(sigma)`` does it.

    Kernel truncated at 4 sigma; edges padded in scipy's ``reflect`` mode (``d c b a | a b c d``,
    the edge pixel repeated, which numpy calls ``symmetric``), at any radius, also one larger
    than the image. The result is rounded to 8 bits once, after both passes.
    """
    if sigma <= 0:
        return image
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    padded = np.pad(array, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    x = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[:, None]  # [3, 1, H+2r, W+2r]
    weights = torch.from_numpy(kernel.astype(np.float32))
    # scipy correlates; a Gaussian is symmetric, so correlation and convolution agree.
    x = F.conv2d(x, weights.view(1, 1, 1, -1))
    x = F.conv2d(x, weights.view(1, 1, -1, 1))
    out = x[:, 0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(out, mode="RGB")


def scipy_gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The weights ``scipy.ndimage.gaussian_filter1d`` uses, computed as scipy computes them (float64).

    Radius ``int(truncate * sigma + 0.5)``; ``exp(-0.5 / sigma**2 * x**2)`` normalised by its sum.
    The last bits matter: the uint8 blur truncates, so a sum one ulp under an integer drops a level.
    """
    sigma = float(sigma)
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return phi / phi.sum()


def _correlate_reflect_to_uint8(array: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One pass of ``scipy.ndimage.correlate1d`` (mode ``reflect``) along ``axis``, stored as uint8.

    The arithmetic follows scipy's C loop for a symmetric kernel: the centre tap first, then
    ``(left + right) * w`` from the outermost pair inwards, in float64; storing into uint8 is C's
    cast, which cuts the fraction off. ``reflect`` is numpy's ``symmetric`` padding (``d c b a | a b
    c d``), repeated when the kernel is wider than the line.
    """
    radius = len(weights) // 2
    x = np.moveaxis(array, axis, 0).astype(np.float64)
    n = x.shape[0]
    padded = np.pad(x, [(radius, radius)] + [(0, 0)] * (x.ndim - 1), mode="symmetric")
    total = padded[radius:radius + n] * weights[radius]
    for d in range(radius, 0, -1):
        total = total + (padded[radius - d:radius - d + n] + padded[radius + d:radius + d + n]) * weights[radius - d]
    return np.moveaxis(total.astype(np.uint8), 0, axis)


def gaussian_blur_uint8(image: Image.Image, sigma: float) -> Image.Image:
    """The blur of UniversalFakeDetect's and CNNDetection's ``gaussian_blur``, bit for bit.

    They call ``scipy.ndimage.gaussian_filter(img[:, :, c], output=img[:, :, c], sigma=sigma)`` on
    each channel of the uint8 array: a pass along the rows' axis (0), then along the columns' (1),
    each written into the uint8 array, so each pass is truncated to an integer (truncate 4.0,
    ``reflect`` edges). Computed here with numpy; equal to scipy's output (tested), scipy not needed.
    """
    if not sigma or sigma <= 1e-15:  # scipy skips an axis whose sigma is not above 1e-15
        return image
    weights = scipy_gaussian_kernel(sigma)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    out = _correlate_reflect_to_uint8(_correlate_reflect_to_uint8(array, weights, 0), weights, 1)
    return Image.fromarray(np.ascontiguousarray(out), mode="RGB")


BLUR_MODES = ("float", "uint8")


def rescale(image: Image.Image, scale: float) -> Image.Image:
    """Resize by ``scale`` (bilinear), at least 1 pixel a side."""
    if scale == 1.0:
        return image
    w, h = image.size
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.BILINEAR)


@dataclass(frozen=True)
class Perturbation:
    """Test-time degradation, applied in this order: blur, then JPEG (as CNNDetection and
    UniversalFakeDetect degrade their test images, and as training augmentation does), then resize."""

    ORDER = "blur,jpeg,resize"  # recorded in the cache key: features of another order are never reused

    jpeg_quality: int | None = None
    gaussian_sigma: float | None = None
    resize_scale: float | None = None
    # "float": blur in float, round once (the default); "uint8": the published repositories' blur
    # (gaussian_blur_uint8), which --protocol selects.
    blur: str = "float"

    def __post_init__(self) -> None:
        if self.blur not in BLUR_MODES:
            raise ValueError(f"unknown blur {self.blur!r}; choose one of {BLUR_MODES}")

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.gaussian_sigma:
            blur = gaussian_blur_uint8 if self.blur == "uint8" else gaussian_blur
            image = blur(image, self.gaussian_sigma)
        if self.jpeg_quality is not None:
            image = jpeg_compress(image, self.jpeg_quality)
        if self.resize_scale is not None:
            image = rescale(image, self.resize_scale)
        return image

    @property
    def is_identity(self) -> bool:
        return self.jpeg_quality is None and not self.gaussian_sigma and self.resize_scale in (None, 1.0)

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["blur"] == "float" or not self.gaussian_sigma:
            # Absent for the default (earlier results and cache keys stay as they were) and
            # where nothing is blurred (the same features either way).
            del data["blur"]
        return data

    def label(self) -> str:
        parts = []
        if self.gaussian_sigma:
            parts.append(f"blur{self.gaussian_sigma:g}")
        if self.jpeg_quality is not None:
            parts.append(f"jpeg{self.jpeg_quality}")
        if self.resize_scale not in (None, 1.0):
            parts.append(f"resize{self.resize_scale:g}")
        return "+".join(parts) or "clean"


_AUGMENT = AugmentConfig()  # the defaults live in the config


@dataclass(frozen=True)
class BlurJpegAugment:
    """CNNDetection's training augmentation: blur with prob p (sigma ~ U[0, s]), then JPEG with prob p."""

    blur_prob: float = _AUGMENT.blur_prob
    blur_sigma: float = _AUGMENT.blur_sigma
    jpeg_prob: float = _AUGMENT.jpeg_prob
    jpeg_quality: tuple[int, int] = _AUGMENT.jpeg_quality

    @property
    def enabled(self) -> bool:
        return self.blur_prob > 0 or self.jpeg_prob > 0

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        if rng.random() < self.blur_prob:
            image = gaussian_blur(image, rng.uniform(0.0, self.blur_sigma))
        if rng.random() < self.jpeg_prob:
            image = jpeg_compress(image, rng.randint(*self.jpeg_quality))
        return image

    def to_dict(self) -> dict:
        return {**asdict(self), "jpeg_quality": list(self.jpeg_quality)}
