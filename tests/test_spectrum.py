"""The spectral tower's analyses: native pixels, every image size batched, the old crop unchanged."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from deepfake.data.preprocess import pil_to_tensor, preprocess_image
from deepfake.towers.families.spectrum import highpass_residual, radial_profile, spectral_profile
from deepfake.towers.loading import load_tower


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def test_crop256_record_gives_the_earlier_features_exactly():
    tower = load_tower("spectrum-crop256")
    pixels = torch.stack([preprocess_image(_image(300, 400, s), tower.preprocess) for s in range(2)])
    # The earlier computation, written out: gray, residual, 2-D Hann, log power, 128 rings, level removed.
    residual = highpass_residual(pixels.mean(dim=1, keepdim=True))[:, 0]
    hann = torch.hann_window(256)
    power = torch.log1p(torch.fft.fftshift(torch.fft.fft2(residual * (hann[:, None] * hann[None, :])), dim=(-2, -1)).abs() ** 2)
    profile = radial_profile(power, 128)
    expected = profile - profile.mean(dim=1, keepdim=True)
    assert torch.equal(tower(pixels).embeds, expected)


def test_tiles_cover_the_whole_image_and_average_their_spectra():
    tower = load_tower("spectrum")
    assert (tower.preprocess.mode, tower.preprocess.size, tower.preprocess.grid) == ("tiles", 256, 4)
    image = _image(720, 1280)
    tiles = preprocess_image(image, tower.preprocess)
    assert tiles.shape == (16, 256, 256)
    gray = pil_to_tensor(image).mean(dim=0)
    # First and last tiles sit in the image's corners: the grid spans the whole frame, unresized.
    assert torch.allclose(tiles[0], gray[:256, :256], atol=1e-6)
    assert torch.allclose(tiles[-1], gray[-256:, -256:], atol=1e-6)
    features = tower(tiles[None]).embeds
    assert torch.allclose(features[0], spectral_profile(tiles, 128).mean(dim=0), atol=1e-6)
    assert tower.cache_identity()["preprocess"]["grid"] == 4 and "4x4 tiles" in tower.cache_identity()["analysis"]


def test_window_takes_the_largest_centred_square_and_batches_mixed_sizes():
    tower = load_tower("spectrum-window512")
    large, small = _image(700, 900, 1), _image(300, 460, 2)
    batch = torch.stack([preprocess_image(im, tower.preprocess) for im in (large, small)])
    assert batch.shape == (2, 4, 512, 512)
    assert batch[1, 3].sum().item() == 300 * 300  # the small image's own 300 px square, marked
    out = tower(batch).embeds
    for row, (image, side) in enumerate(((large, 512), (small, 300))):
        x = pil_to_tensor(image).mean(dim=0)
        top, left = round((x.shape[0] - side) / 2), round((x.shape[1] - side) / 2)
        expected = spectral_profile(x[None, top : top + side, left : left + side], 128)[0]
        assert torch.allclose(out[row], expected, atol=1e-5)


def test_spectrum_records_refuse_a_resizing_preprocess():
    import pytest

    with pytest.raises(ValueError, match="native pixels"):
        load_tower("spectrum", preprocess_mode="resize")
