"""The spectral tower's analyses: native pixels, every image size batched, the reference formula kept.

The reference is the tower as first written (``benchmarks/bench_spectrum.py``: the whole image as
float, tiles stacked, one convolution and one complex FFT over the batch); the project computes
the same features tile by tile, in chunks, from the real FFT's half plane.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

import deepfake.towers.families.spectrum as spectrum
from benchmarks.bench_spectrum import naive_features, naive_pixels, naive_profile
from deepfake.data.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Preprocess,
    center_crop,
    crop_to_tensor,
    normalize,
    pil_to_tensor,
    preprocess_image,
)
from deepfake.towers.backbones import KNOWN_BACKBONES
from deepfake.towers.families.spectrum import spectral_profile
from deepfake.towers.loading import load_tower

SPECTRUM_RECORDS = sorted(name for name, b in KNOWN_BACKBONES.items() if b.family == "spectrum")
# Sizes around every analysis: smaller than a tile or window on one side or both, square, odd, photo-sized.
SIZES = ((720, 1280), (300, 460), (200, 150), (256, 256), (513, 700), (1000, 257), (1100, 1100))


def _image(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8))


def _photo(h: int, w: int, seed: int = 0) -> Image.Image:
    """Smooth colour fields with grain: a photograph's spectrum rather than white noise's."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(128, 50, (h // 16 + 2, w // 16 + 2, 3)).clip(0, 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    return Image.fromarray((field + rng.integers(-4, 5, field.shape)).clip(0, 255).astype(np.uint8))


@pytest.mark.parametrize("record", SPECTRUM_RECORDS)
def test_every_spectrum_record_gives_the_reference_formulas_features(record):
    tower = load_tower(record)
    spec = tower.preprocess
    for make in (_image, _photo):
        images = [make(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
        project = tower(torch.stack([preprocess_image(im, spec) for im in images])).embeds
        reference = naive_features(torch.stack([naive_pixels(im, spec) for im in images]), spec, tower.bins)
        # Float rounding only (the cache stores fp16, 1e-3 at these magnitudes): same features, same cache key.
        assert project.shape == reference.shape == (len(images), tower.feature_dim)
        power = tower.bins * 3 if tower.colour else tower.bins
        # The colour record's log comes after the ring mean: the faintest (lowest) rings agree to 1e-3.
        atol = 1e-3 if tower.colour else 2e-4
        assert torch.allclose(project[:, :power], reference[:, :power], rtol=0, atol=atol)
        # Coherence is a ratio of sums that cancel on noise: float32 sums in another order move it by < 1e-3.
        assert torch.allclose(project[:, power:], reference[:, power:], rtol=0, atol=1e-3)


@pytest.mark.parametrize("side", [16, 31, 256, 300])
def test_the_half_plane_profile_is_the_full_planes(side):
    gray = torch.rand(3, side, side) * 2 - 1
    assert torch.allclose(spectral_profile(gray, 128), naive_profile(gray, 128), rtol=0, atol=2e-4)
    wide = torch.rand(2, side, side + 7)  # not square: no window, odd width, rings of the short side
    assert torch.allclose(spectral_profile(wide, 64), naive_profile(wide, 64), rtol=0, atol=2e-4)


def test_features_do_not_depend_on_how_many_tiles_go_through_the_fft_at_once(monkeypatch):
    tower = load_tower("spectrum")
    tiles = torch.stack([preprocess_image(_photo(400, 600, s), tower.preprocess) for s in range(3)])
    whole = tower(tiles).embeds
    monkeypatch.setattr(spectrum, "CHUNK_PIXELS", 256 * 256)  # one tile at a time
    one_by_one = tower(tiles).embeds
    assert torch.allclose(whole, one_by_one, rtol=0, atol=1e-5)


def test_tiles_cover_the_whole_image_and_average_their_spectra():
    tower = load_tower("spectrum-tiles256")
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


def test_tiles_and_windows_are_exactly_the_first_preprocessings_gray_pixels():
    # CLIP's normalisation, so the zero padding of a small image shows as -mean/std, as before.
    for spec in (Preprocess(mode="tiles", size=256, grid=3, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD),
                 Preprocess(mode="window", size=300, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)):
        for h, w in SIZES:
            image = _image(h, w)
            new, old = preprocess_image(image, spec), naive_pixels(image, spec)
            if spec.mode == "window":  # [gray, mark] against [R, G, B, mark]
                old = torch.stack([old[:3].mean(dim=0), old[3]])
            assert torch.equal(new, old), (spec.mode, h, w)


def test_crops_are_converted_after_cropping_with_the_same_values():
    for h, w in SIZES:
        image = _image(h, w)
        for size in (224, 256, 512):
            assert torch.equal(crop_to_tensor(image, size), center_crop(pil_to_tensor(image), size))


def test_photos_become_float_strip_by_strip_with_the_same_values(monkeypatch):
    import deepfake.data.preprocess as preprocess

    image = _image(301, 97)
    whole = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255.0)
    monkeypatch.setattr(preprocess, "_STRIP_PIXELS", 97 * 10)  # 31 strips, the last one short
    assert torch.equal(pil_to_tensor(image), whole)
    assert torch.equal(pil_to_tensor(image.convert("L")), pil_to_tensor(image.convert("L").convert("RGB")))


@pytest.mark.parametrize("record", ["spectrum", "spectrum-tiles256", "spectrum-window512", "spectrum-crop256"])
def test_a_large_photo_is_never_copied_whole_to_analyse_its_tiles_or_window(record):
    spec = load_tower(record).preprocess
    image = _image(3000, 4000)  # 12 MP: 36 MB as uint8, 144 MB as float
    tracemalloc.start()
    try:
        preprocess_image(image, spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # numpy's buffers are traced: the first path copied the whole photo (36 MB) before cutting it.
    assert peak < 8 * 2**20, peak


def test_window_takes_the_largest_centred_square_and_batches_mixed_sizes():
    tower = load_tower("spectrum-window512")
    large, small = _image(700, 900, 1), _image(300, 460, 2)
    batch = torch.stack([preprocess_image(im, tower.preprocess) for im in (large, small)])
    assert batch.shape == (2, 2, 512, 512)  # gray plane and the plane marking the image's own square
    assert batch[1, 1].sum().item() == 300 * 300
    out = tower(batch).embeds
    for row, (image, side) in enumerate(((large, 512), (small, 300))):
        x = pil_to_tensor(image).mean(dim=0)
        top, left = round((x.shape[0] - side) / 2), round((x.shape[1] - side) / 2)
        expected = spectral_profile(x[None, top : top + side, left : left + side], 128)[0]
        assert torch.allclose(out[row], expected, atol=1e-5)


def test_crop_mode_is_normalised_like_the_resizing_modes():
    spec = Preprocess(mode="crop", size=224)
    image = _image(300, 200)
    assert torch.equal(preprocess_image(image, spec), normalize(center_crop(pil_to_tensor(image), 224), spec.mean, spec.std))


def test_spectrum_records_refuse_a_resizing_preprocess():
    with pytest.raises(ValueError, match="native pixels"):
        load_tower("spectrum", preprocess_mode="resize")


def test_colour_features_add_opponent_planes_to_the_gray_planes_spectrum():
    gray, colour = load_tower("spectrum-tiles256"), load_tower("spectrum-colour")
    assert colour.feature_dim == 5 * gray.feature_dim
    images = [_photo(h, w, seed) for seed, (h, w) in enumerate(SIZES)]
    c = colour(torch.stack([preprocess_image(im, colour.preprocess) for im in images])).embeds
    gray_planes = torch.stack([preprocess_image(im, gray.preprocess) for im in images])  # [B, 16, S, S]
    # The first block is the gray plane's own log ring power (the FFT is linear): colour planes equal to it agree.
    as_rgb = gray_planes[:, :, None].expand(-1, -1, 3, -1, -1).flatten(1, 2)
    assert torch.allclose(colour(as_rgb).embeds[:, : gray.feature_dim], c[:, : gray.feature_dim], rtol=0, atol=1e-3)
    assert not torch.allclose(c[:, gray.feature_dim : 2 * gray.feature_dim], c[:, : gray.feature_dim], atol=1e-2)


def test_colour_tiles_are_the_rgb_planes_whose_mean_is_the_gray_tiles():
    gray, colour = KNOWN_BACKBONES["spectrum-tiles256"].preprocess, KNOWN_BACKBONES["spectrum-colour"].preprocess
    for h, w in ((720, 1280), (200, 150), (300, 460)):
        image = _photo(h, w)
        rgb = preprocess_image(image, colour)
        assert rgb.shape == (16 * 3, 256, 256)
        tiles = rgb.view(16, 3, 256, 256)
        assert torch.allclose(tiles.mean(dim=1), preprocess_image(image, gray), rtol=0, atol=1e-6)
        top, left = 0, 0  # the first tile starts at the corner (or is the zero-padded image)
        if h >= 256 and w >= 256:
            expected = crop_to_tensor(image.crop((left, top, left + 256, top + 256)), 256)
            assert torch.equal(tiles[0], expected)


def test_a_gray_image_has_no_opponent_power_and_full_coherence():
    from deepfake.towers.families.spectrum import colour_profile

    plane = torch.rand(2, 1, 256, 256)
    features = colour_profile(plane.expand(2, 3, 256, 256), 128)
    # No power in R - G and B - G: every ring at the floor, a flat profile, 0 once its level is removed.
    assert torch.allclose(features[:, 128:384], torch.zeros(2, 256), rtol=0, atol=1e-5)
    coherence = features[:, 384:].view(2, 2, 128)
    assert torch.allclose(coherence[..., 1:], torch.ones(2, 2, 127))
    assert torch.equal(coherence[..., 0], torch.zeros(2, 2))  # the DC term is dropped: no power, no coherence


def test_coherence_of_faint_rings_stays_within_one_where_float32_products_underflow():
    from deepfake.towers.families.spectrum import colour_profile

    faint = torch.rand(1, 3, 256, 256) * 1e-15  # ring powers ~1e-25: their product is below float32's range
    features = colour_profile(faint, 128)
    assert torch.isfinite(features).all()
    assert features[:, 384:].abs().max() <= 1.0
    assert torch.isfinite(features.half()).all()  # as the cache stores them


def test_colour_is_recorded_only_for_colour_records_so_gray_cache_keys_stay():
    gray, colour = KNOWN_BACKBONES["spectrum-tiles256"].preprocess, KNOWN_BACKBONES["spectrum-colour"].preprocess
    assert "colour" not in gray.to_dict()
    assert colour.to_dict()["colour"] is True
    assert Preprocess.from_dict(colour.to_dict()) == colour and Preprocess.from_dict(gray.to_dict()) == gray
    with pytest.raises(ValueError, match="colour planes"):
        Preprocess(mode="crop", size=256, colour=True)
    assert KNOWN_BACKBONES["spectrum-colour"].with_mode("crop").preprocess.colour is False
