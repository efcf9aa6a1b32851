"""Decode + preprocess time per large photo: the exact path vs the fast decode path (``--decode fast``).

    python benchmarks/bench_decode.py            # 12 MP JPEG and PNG, one core

Both paths end in the same exact float resize; the fast one lets the decoder shrink the
image first (JPEG DCT scaling to 1/2..1/8, or an integer reduce in uint8) while the short
side stays >= 2x the tower's input size.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfake.data.preprocess import Preprocess  # noqa: E402
from deepfake.deepfake_dataset import DeepfakeDataset, Sample  # noqa: E402


def photo(size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(0)
    w, h = size
    coarse = rng.normal(128, 50, (h // 64 + 2, w // 64 + 2, 3)).clip(0, 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    field = field + rng.integers(-6, 7, field.shape, dtype=np.int16)
    return Image.fromarray(field.clip(0, 255).astype(np.uint8))


def per_image(dataset: DeepfakeDataset, repeats: int) -> float:
    dataset.load(0)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        dataset.load(0)
    return (time.perf_counter() - start) / repeats


def main() -> int:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        image = photo((4000, 3000))
        paths = {"JPEG q92": Path(tmp) / "photo.jpg", "PNG": Path(tmp) / "photo.png"}
        image.save(paths["JPEG q92"], quality=92)
        image.save(paths["PNG"])
        for name, path in paths.items():
            times = {decode: per_image(DeepfakeDataset([Sample(str(path), 0, "")], Preprocess(), decode=decode), 5)
                     for decode in ("exact", "fast")}
            print(f"12 MP {name:8s}  exact {1e3 * times['exact']:7.1f} ms   fast {1e3 * times['fast']:7.1f} ms   "
                  f"speed-up {times['exact'] / times['fast']:4.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
