"""The synthetic benchmark's scenes and files stay the same pixels: the demo's table and figures are reproduced from them."""

from __future__ import annotations

import numpy as np
import pytest

from deepfake.data.synthetic import dead_leaves, detail_scale, pink_noise, waves


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


def first_waves(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The wave scene as first written: each edge blended through a boolean gather and scatter."""
    image = np.stack([first_pink_noise(rng, h, w, 1.4) for _ in range(3)], axis=-1)
    ys, xs = np.arange(h, dtype=np.float32)[:, None] - h / 2, np.arange(w, dtype=np.float32)[None, :] - w / 2
    for _ in range(rng.integers(2, 6)):
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(-0.5, 0.5) * max(h, w)
        side = (np.float32(np.cos(angle)) * xs + np.float32(np.sin(angle)) * ys) > offset
        image[side] = image[side] * 0.6 + 0.4 * rng.uniform(0, 1, 3)
    return image


@pytest.mark.parametrize("h, w, seed", [(256, 320, 0), (301, 257, 1), (1030, 1100, 2)])
def test_scenes_are_the_first_implementations_pixels_and_random_stream(h, w, seed):
    new, old = np.random.default_rng(seed), np.random.default_rng(seed)
    assert np.array_equal(dead_leaves(new, h, w), first_dead_leaves(old, h, w))
    for _ in range(2):  # the cached fall-off serves a second field of the same size
        assert np.array_equal(pink_noise(new, h, w, 1.4), first_pink_noise(old, h, w, 1.4))
    for _ in range(3):
        assert np.array_equal(waves(new, h, w), first_waves(old, h, w))
    assert new.random() == old.random()  # both consumed the same numbers


@pytest.mark.parametrize("h, w", [(1, 1), (257, 301), (64, 3)])
def test_stored_png_reads_back_as_the_same_rgb_pixels_in_pillow(tmp_path, h, w):
    from PIL import Image

    from deepfake.data.synthetic import stored_png

    rgb = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path = tmp_path / "scene.png"
    path.write_bytes(stored_png(rgb))
    with Image.open(path) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (w, h))
        assert np.array_equal(np.asarray(image), rgb)


def test_save_writes_the_pixels_pillow_would_have_written(tmp_path):
    from PIL import Image

    from deepfake.data.synthetic import real_image, save

    image = real_image(np.random.default_rng(4), "waves", 98, 130)
    expected = (image * 255 + 0.5).astype(np.uint8)  # the first implementation's rounding
    save(image, tmp_path / "a.png", None)
    with Image.open(tmp_path / "a.png") as written:
        assert np.array_equal(np.asarray(written), expected)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temporary file left behind
