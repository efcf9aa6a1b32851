"""The synthetic benchmark's scenes stay the same pixels: the demo's table and figures are reproduced from them."""

from __future__ import annotations

import numpy as np
import pytest

from deepfake.data.synthetic import dead_leaves, detail_scale, pink_noise


def first_dead_leaves(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The scene as first written: one rng.uniform per number, np.sqrt, np.clip."""
    image = np.empty((h, w, 3), dtype=np.float32)
    image[:] = rng.uniform(0, 1, 3)
    scale = detail_scale(h, w)
    r_min, r_max = 2.0 * scale, max(h, w) / 3
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    for _ in range(int(h * w / (180 * scale**2))):
        u = rng.uniform()
        r = 1.0 / np.sqrt(1.0 / r_min**2 - u * (1.0 / r_min**2 - 1.0 / r_max**2))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, h))
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, w))
        if y0 >= y1 or x0 >= x1:
            continue
        mask = (ys[y0:y1] - cy) ** 2 + (xs[:, x0:x1] - cx) ** 2 <= r * r
        image[y0:y1, x0:x1][mask] = np.clip(rng.normal(0.5, 0.25, 3), 0, 1)
    return image


def first_pink_noise(rng: np.random.Generator, h: int, w: int, exponent: float) -> np.ndarray:
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    field = np.fft.irfft2((rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**exponent, s=(h, w))
    field -= field.min()
    return (field / max(field.max(), 1e-8)).astype(np.float32)


@pytest.mark.parametrize("h, w, seed", [(256, 320, 0), (301, 257, 1), (1030, 1100, 2)])
def test_scenes_are_the_first_implementations_pixels_and_random_stream(h, w, seed):
    new, old = np.random.default_rng(seed), np.random.default_rng(seed)
    assert np.array_equal(dead_leaves(new, h, w), first_dead_leaves(old, h, w))
    for _ in range(2):  # the cached fall-off serves a second field of the same size
        assert np.array_equal(pink_noise(new, h, w, 1.4), first_pink_noise(old, h, w, 1.4))
    assert new.random() == old.random()  # both consumed the same numbers
