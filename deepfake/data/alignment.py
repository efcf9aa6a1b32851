"""``--align``: remove format and size differences between the classes before the tower sees them."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from deepfake.data.perturbations import jpeg_compress
from deepfake.utils.text import split_list


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
        for item in split_list(spec) or []:
            kind, _, value = item.partition(":")
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
