"""Image -> tensor preprocessing, pixel perturbations and training augmentation (torch + Pillow).

The ``resize`` mode is LanguageBind's transform exactly: RGB uint8 -> [0, 1] -> short side
to 224 (bicubic, antialiased; long side ``int(224 * long / short)``) -> center crop with
offsets ``round((h - 224) / 2)`` -> normalise with the OpenAI CLIP mean and std. ``squash``
resizes to a square (SigLIP, DINOv3), ``crop`` only crops, ``window`` keeps native pixels
(see :func:`native_window`).
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deepfake.backbones import Preprocess


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def short_side_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the short side to ``size`` (torchvision's ``Resize(size)``)."""
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if h <= w else (new_long, new_short)


def resize_short_side(x: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Resize [3, H, W] so the short side is ``size``, as torchvision's ``Resize(size)`` does."""
    h, w = x.shape[-2:]
    new_h, new_w = short_side_shape(h, w, size)
    if (new_h, new_w) == (h, w):
        return x
    antialias = interpolation in ("bilinear", "bicubic")
    out = F.interpolate(x[None], size=(new_h, new_w), mode=interpolation, antialias=antialias, align_corners=False)
    return out[0]


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Center crop [3, H, W] to ``size`` x ``size``, zero-padding a smaller image first."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        pad_h, pad_w = max(size - h, 0), max(size - w, 0)
        # Same split as torchvision's CenterCrop padding: the extra pixel goes right/bottom.
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=0.0)
        h, w = x.shape[-2:]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def resize_square(x: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Resize [3, H, W] to ``size`` x ``size``, aspect ratio not kept (transformers' ``size={height, width}``)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    antialias = interpolation in ("bilinear", "bicubic")
    out = F.interpolate(x[None], size=(size, size), mode=interpolation, antialias=antialias, align_corners=False)
    return out[0]


def native_window(x: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The largest centred square of [3, H, W] up to ``size``, unresized and normalised, as [4, size, size].

    Images smaller than ``size`` give a smaller square; it sits in the top-left corner and the
    fourth channel is 1 on its pixels and 0 elsewhere, so every image of a batch has one shape
    while the tower still analyses exactly the image's own pixels.
    """
    side = min(size, *x.shape[-2:])
    out = x.new_zeros(4, size, size)
    out[:3, :side, :side] = normalize(center_crop(x, side).contiguous(), mean, std)
    out[3, :side, :side] = 1.0
    return out


def tile_grid(x: torch.Tensor, size: int, grid: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``grid`` x ``grid`` unresized tiles of ``size`` spread evenly over [3, H, W], as gray [grid * grid, size, size].

    Tiles overlap on images smaller than ``grid * size`` and leave even gaps on larger ones, so
    every image gives the same shape and the tiles always span the whole frame; an image smaller
    than one tile is zero-padded as ``crop`` does. Gray (the channel mean after normalising)
    because the spectral analysis needs no colour and a photo's tiles stay small in memory.
    """
    h, w = x.shape[-2:]
    tops = np.linspace(0, max(h - size, 0), grid).round().astype(int)
    lefts = np.linspace(0, max(w - size, 0), grid).round().astype(int)
    tiles = [center_crop(x[:, top : top + size, left : left + size], size) for top in tops for left in lefts]
    return normalize(torch.stack(tiles).contiguous(), mean, std).mean(dim=1)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x - mean) / std over the channel axis of [..., 3, H, W]."""
    mean_t = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean_t) / std_t


def preprocess_image(image: Image.Image, spec: Preprocess) -> torch.Tensor:
    """RGB PIL image -> normalised tensor [3, size, size] for a tower.

    ``window`` gives [4, size, size] and ``tiles`` [grid * grid, size, size] (see their functions).
    """
    x = pil_to_tensor(image)
    if spec.mode == "window":
        return native_window(x, spec.size, spec.mean, spec.std)
    if spec.mode == "tiles":
        return tile_grid(x, spec.size, spec.grid, spec.mean, spec.std)
    if spec.mode == "resize":
        x = resize_short_side(x, spec.resize_size or spec.size, spec.interpolation)
    elif spec.mode == "squash":
        x = resize_square(x, spec.size, spec.interpolation)
    x = center_crop(x, spec.size)
    return normalize(x.contiguous(), spec.mean, spec.std)


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


# --- pixel-space perturbations (robustness) and augmentation (training) -----------------


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


@dataclass(frozen=True)
class Alignment:
    """Remove format and size differences between the classes before the tower sees them.

    ``size`` resizes every image so its short side is ``size`` (bicubic, antialiased);
    ``jpeg_quality`` then re-encodes every image as JPEG at that quality. Applied to reals
    and fakes alike, before any perturbation or augmentation.
    """

    jpeg_quality: int | None = None
    size: int | None = None

    @property
    def enabled(self) -> bool:
        return self.jpeg_quality is not None or self.size is not None

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.size is not None:
            w, h = image.size
            scale = self.size / min(w, h)
            new = (max(1, round(w * scale)), max(1, round(h * scale)))
            if new != (w, h):
                image = image.resize(new, Image.BICUBIC, reducing_gap=None)
        if self.jpeg_quality is not None:
            image = jpeg_compress(image, self.jpeg_quality)
        return image

    def to_dict(self) -> dict:
        return {"jpeg_quality": self.jpeg_quality, "size": self.size, "order": ["size", "jpeg"]}

    def label(self) -> str:
        parts = ([f"size:{self.size}"] if self.size is not None else []) + \
                ([f"jpeg:{self.jpeg_quality}"] if self.jpeg_quality is not None else [])
        return ",".join(parts) or "none"


def parse_align(specs: list[str] | None) -> Alignment:
    """``["jpeg:96", "size:256"]`` (or one comma-separated string) -> :class:`Alignment`."""
    jpeg = size = None
    for spec in specs or []:
        for item in spec.split(","):
            kind, _, value = item.strip().partition(":")
            try:
                number = int(value)
            except ValueError:
                raise ValueError(f"--align {item!r}: expected jpeg:Q or size:S with an integer") from None
            if kind == "jpeg" and 1 <= number <= 100:
                jpeg = number
            elif kind == "size" and number >= 1:
                size = number
            else:
                raise ValueError(f"--align {item!r}: expected jpeg:Q (1..100) or size:S (pixels)")
    return Alignment(jpeg, size)


@dataclass(frozen=True)
class BlurJpegAugment:
    """CNNDetection's training augmentation: blur with prob p (sigma ~ U[0, s]), then JPEG with prob p."""

    blur_prob: float = 0.0
    blur_sigma: float = 3.0
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 100)

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
