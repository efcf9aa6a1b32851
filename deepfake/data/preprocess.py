"""How an image becomes the tensor a tower sees: the :class:`Preprocess` record and its transform (torch + Pillow).

The ``resize`` mode is LanguageBind's transform exactly: RGB uint8 -> [0, 1] -> short side
to 224 (bicubic, antialiased; long side ``int(224 * long / short)``) -> center crop with
offsets ``round((h - 224) / 2)`` -> normalise with the OpenAI CLIP mean and std. ``squash``
resizes to a square (SigLIP, DINOv3), ``crop`` only crops, ``window`` keeps native pixels
(see :func:`native_window`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIL_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}

# Preprocessing modes.
# - "resize": short side to `resize_size` (default `size`; bicubic, antialiased), center crop
#   `size`: the LanguageBind / CLIP / DINOv2 transform.
# - "squash": resize to `size` x `size` without keeping the aspect ratio: SigLIP's and DINOv3's.
# - "crop": center crop `size` without resizing, zero padding smaller images: the
#   UniversalFakeDetect test protocol, which keeps the generator's pixel grid intact.
# - "window": native pixels, the largest centred square up to `size`, never resized, as a gray
#   plane and a second plane that marks which pixels are the image.
# - "tiles": native pixels, `grid` x `grid` tiles of `size` spread evenly over the whole image
#   (overlapping on small images), as gray planes [grid * grid, size, size] (with `colour`, each
#   tile's R, G and B planes: [grid * grid * 3, size, size]): the spectral baseline at photo sizes.
# - "native": the whole image, unresized, [3, H, W] (each image its own size, so one a batch): the
#   fully convolutional released networks (Tiny-LaDeDa, NPR) pool over every position.
PREPROCESS_MODES = ("resize", "squash", "crop", "window", "tiles", "native")
NATIVE_MODES = ("window", "tiles", "native")
# What --preprocess may ask for: the tower's own resize transform, the unresized crop, or (for the
# fully convolutional networks) the whole unresized image.
CLI_PREPROCESS_MODES = ("resize", "crop", "native")

@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the tensor a tower sees."""

    mode: str = "resize"
    size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    resize_size: int | None = None  # "resize": short side before the crop (None: `size`)
    grid: int | None = None  # "tiles": tiles per side
    colour: bool = False  # "tiles": each tile's R, G and B planes instead of one gray plane
    # "squash": resize the uint8 PIL image with Pillow's filter, as torchvision's Resize((s, s)) does on
    # a PIL image (the released networks' test transform), instead of the float tensor with torch's.
    pil: bool = False

    def __post_init__(self) -> None:
        if self.mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing mode {self.mode!r}; choose one of {PREPROCESS_MODES}")
        if self.mode == "tiles" and not (self.grid and self.grid >= 1):
            raise ValueError("tiles preprocessing needs grid >= 1 (tiles per side)")
        if self.colour and self.mode != "tiles":
            raise ValueError("colour planes are a tiles preprocessing option")
        if self.pil and self.mode != "squash":
            raise ValueError("the PIL resize is a squash preprocessing option")

    def to_dict(self) -> dict:
        data = {**asdict(self), "mean": list(self.mean), "std": list(self.std)}
        for key, absent in (("resize_size", None), ("grid", None), ("colour", False), ("pil", False)):
            if data[key] is absent:
                # Absent rather than null: records written before the field existed keep their cache keys.
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess | FusedPreprocess:
        if data.get("mode") == FUSED_MODE:
            return FusedPreprocess(tuple(cls.from_dict(part) for part in data["parts"]))
        return cls(
            mode=data["mode"],
            size=int(data["size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            interpolation=data.get("interpolation", "bicubic"),
            resize_size=int(data["resize_size"]) if data.get("resize_size") is not None else None,
            grid=int(data["grid"]) if data.get("grid") is not None else None,
            colour=bool(data.get("colour", False)),
            pil=bool(data.get("pil", False)),
        )


FUSED_MODE = "fused"


@dataclass(frozen=True)
class FusedPreprocess:
    """The preprocessing of a tower made of parts: each part's own, from one decode of the image.

    An image becomes one flat tensor, the parts' tensors flattened and laid end to end, so that
    batches, loaders and datasets handle it as one tensor; the fused tower cuts it back into the
    parts' shapes (:func:`part_shapes`).
    """

    parts: tuple[Preprocess, ...]
    mode: str = FUSED_MODE

    @property
    def size(self) -> int:
        """The largest side a part takes in (what the bias audit compares image sizes with)."""
        return max(part.size for part in self.parts)

    def to_dict(self) -> dict:
        return {"mode": FUSED_MODE, "parts": [part.to_dict() for part in self.parts]}


def part_shapes(spec: FusedPreprocess) -> list[tuple[int, int, int]]:
    """The shape of each part's tensor inside a fused image tensor, in order."""
    return [preprocessed_shape(part) for part in spec.parts]


# Rows converted to float at a time: the full-resolution uint8 -> float copy is made strip by
# strip, so a 50 MP photo costs its float tensor and one strip, not three full-size copies.
_STRIP_PIXELS = 1 << 20


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] in [0, 1]."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    out = torch.empty(3, h, w)
    rows = max(1, _STRIP_PIXELS // max(w, 1))
    for top in range(0, h, rows):
        strip = np.array(image.crop((0, top, w, min(top + rows, h))), dtype=np.uint8)
        out[:, top : top + len(strip)] = torch.from_numpy(strip).permute(2, 0, 1)
    return out.div_(255.0)


def _crop_span(n: int, size: int) -> tuple[int, int, int]:
    """(start, length, padding before) of a centre crop of ``size`` along an axis of ``n`` pixels (see center_crop)."""
    if n < size:
        return 0, n, (size - n) // 2
    return int(round((n - size) / 2.0)), size, 0


def crop_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """``center_crop(pil_to_tensor(image), size)``, converting only the cropped pixels to float."""
    top, h, pad_top = _crop_span(image.height, size)
    left, w, pad_left = _crop_span(image.width, size)
    x = pil_to_tensor(image.crop((left, top, left + w, top + h)))
    if (h, w) == (size, size):
        return x
    return F.pad(x, (pad_left, size - w - pad_left, pad_top, size - h - pad_top), value=0.0)


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


def gray_region(image: Image.Image, box: tuple[int, int, int, int], mean: tuple[float, ...],
                std: tuple[float, ...]) -> np.ndarray:
    """The channel mean of the normalised pixels of ``box`` (left, top, right, bottom), float32 [h, w].

    The same arithmetic as ``normalize(pil_to_tensor(crop)).mean(dim=0)`` in float32, done in
    numpy one colour plane at a time: a tile is too small to be worth handing to torch's thread
    pool, whose hand-offs cost more than the work on a busy machine.
    """
    total = None
    for c, band in enumerate(image.crop(box).split()):
        plane = np.asarray(band, dtype=np.float32)
        plane /= np.float32(255.0)
        plane -= np.float32(mean[c])
        plane /= np.float32(std[c])
        total = plane if total is None else np.add(total, plane, out=total)
    total /= np.float32(len(mean))
    return total


def native_window(image: Image.Image, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The largest centred square of the image up to ``size``, unresized, normalised and gray, as [2, size, size].

    Images smaller than ``size`` give a smaller square; it sits in the top-left corner and the
    second plane is 1 on its pixels and 0 elsewhere, so every image of a batch has one shape
    while the tower still analyses exactly the image's own pixels. Gray (the channel mean after
    normalising) because the spectral analysis needs no colour; only the square is converted to float.
    """
    side = min(size, image.height, image.width)
    top, left = _crop_span(image.height, side)[0], _crop_span(image.width, side)[0]
    out = torch.zeros(2, size, size)
    out[0, :side, :side] = torch.from_numpy(gray_region(image, (left, top, left + side, top + side), mean, std))
    out[1, :side, :side] = 1.0
    return out


def tile_origins(h: int, w: int, size: int, grid: int) -> list[tuple[int, int]]:
    """(top, left) of ``grid`` x ``grid`` tiles of ``size`` spread evenly over an ``h`` x ``w`` image, row by row."""
    tops = np.linspace(0, max(h - size, 0), grid).round().astype(int)
    lefts = np.linspace(0, max(w - size, 0), grid).round().astype(int)
    return [(int(top), int(left)) for top in tops for left in lefts]


def rgb_region(image: Image.Image, box: tuple[int, int, int, int], mean: tuple[float, ...],
               std: tuple[float, ...]) -> np.ndarray:
    """The normalised R, G and B planes of ``box`` (left, top, right, bottom), float32 [3, h, w] (a view)."""
    crop = np.asarray(image.crop(box), dtype=np.float32)  # [h, w, 3]: normalised in memory order, then viewed as planes
    crop /= np.float32(255.0)
    crop -= np.asarray(mean, dtype=np.float32)
    crop /= np.asarray(std, dtype=np.float32)
    return crop.transpose(2, 0, 1)


def tile_grid(image: Image.Image, size: int, grid: int, mean: tuple[float, ...], std: tuple[float, ...],
              colour: bool = False) -> torch.Tensor:
    """``grid`` x ``grid`` unresized tiles of ``size`` spread evenly over the image, as gray [grid * grid, size, size].

    Tiles overlap on images smaller than ``grid * size`` and leave even gaps on larger ones, so
    every image gives the same shape and the tiles always span the whole frame; an image smaller
    than one tile is zero-padded as ``crop`` does (before normalising). Gray (the channel mean
    after normalising) unless ``colour``, which gives each tile's R, G and B planes one after the
    other ([grid * grid * 3, size, size]). Only the tiles' pixels are converted to float: a 50 MP
    photo never becomes a float tensor, only its tiles do.
    """
    h, w = image.height, image.width
    th, tw = min(size, h), min(size, w)
    pad_top, pad_left = (size - th) // 2, (size - tw) // 2
    channels = 3 if colour else 1
    out = torch.empty(grid * grid, channels, size, size)
    if (th, tw) != (size, size):
        # Zero pixels after normalising, as center_crop pads before normalize: -mean/std (gray: their mean).
        zero = -np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
        out.copy_(torch.from_numpy(zero if colour else zero.mean(keepdims=True))[:, None, None].expand_as(out))
    planes = out.numpy()
    region = rgb_region if colour else (lambda *a: gray_region(*a)[None])
    # Overlapping tiles (an image with fewer pixels than its tiles) are cut from one copy of the
    # image, no larger than the tiles themselves; other images are converted tile by tile.
    whole = region(image, (0, 0, w, h), mean, std) if h * w <= grid * grid * th * tw else None
    for k, (top, left) in enumerate(tile_origins(h, w, size, grid)):
        planes[k, :, pad_top : pad_top + th, pad_left : pad_left + tw] = (
            whole[:, top : top + th, left : left + tw] if whole is not None
            else region(image, (left, top, left + tw, top + th), mean, std))
    return out.view(grid * grid * channels, size, size)


def preprocessed_shape(spec: Preprocess | FusedPreprocess) -> tuple[int, ...]:
    """The shape of the tensor :func:`preprocess_image` gives for every image under ``spec``
    (``native``: each image keeps its own; ``size`` is nominal there)."""
    if isinstance(spec, FusedPreprocess):
        return (sum(math.prod(shape) for shape in part_shapes(spec)),)
    planes = {"window": 2, "tiles": (spec.grid or 1) ** 2 * (3 if spec.colour else 1)}.get(spec.mode, 3)
    return planes, spec.size, spec.size


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(x - mean) / std over the channel axis of [..., 3, H, W]."""
    mean_t = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean_t) / std_t


def preprocess_image(image: Image.Image, spec: Preprocess) -> torch.Tensor:
    """RGB PIL image -> normalised tensor [3, size, size] for a tower.

    ``window`` gives [2, size, size] and ``tiles`` [grid * grid, size, size] (see their
    functions). The modes that keep native pixels convert only the pixels they keep to float. A
    :class:`FusedPreprocess` gives every part's tensor, flattened and laid end to end.
    """
    if isinstance(spec, FusedPreprocess):
        return torch.cat([preprocess_image(image, part).reshape(-1) for part in spec.parts])
    if spec.mode == "window":
        return native_window(image, spec.size, spec.mean, spec.std)
    if spec.mode == "tiles":
        return tile_grid(image, spec.size, spec.grid, spec.mean, spec.std, spec.colour)
    if spec.mode == "crop":
        return normalize(crop_to_tensor(image, spec.size), spec.mean, spec.std)
    if spec.mode == "native":
        return normalize(pil_to_tensor(image), spec.mean, spec.std)
    if spec.mode == "squash" and spec.pil:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if rgb.size != (spec.size, spec.size):
            rgb = rgb.resize((spec.size, spec.size), PIL_RESAMPLE[spec.interpolation])
        return normalize(pil_to_tensor(rgb), spec.mean, spec.std)
    x = pil_to_tensor(image)
    if spec.mode == "resize":
        x = resize_short_side(x, spec.resize_size or spec.size, spec.interpolation)
    elif spec.mode == "squash":
        x = resize_square(x, spec.size, spec.interpolation)
    x = center_crop(x, spec.size)
    return normalize(x.contiguous(), spec.mean, spec.std)
