"""Pixel-space perturbations (the robustness protocol: blur, JPEG, resize) and CNNDetection's training augmentation."""

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

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.gaussian_sigma:
            image = gaussian_blur(image, self.gaussian_sigma)
        if self.jpeg_quality is not None:
            image = jpeg_compress(image, self.jpeg_quality)
        if self.resize_scale is not None:
            image = rescale(image, self.resize_scale)
        return image

    @property
    def is_identity(self) -> bool:
        return self.jpeg_quality is None and not self.gaussian_sigma and self.resize_scale in (None, 1.0)

    def to_dict(self) -> dict:
        return asdict(self)

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
