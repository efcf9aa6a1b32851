"""Bounded decoding: odd shapes and sizes are skipped with a reason; Pillow's settings stay the application's."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

import deepfake.deepfake_dataset as deepfake_dataset
from deepfake.config import DEFAULT_MAX_PIXELS
from deepfake.data.image_io import ImageSkipped, load_image
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.features.cache import FeatureCache
from deepfake.features.extraction import ExtractionSettings, extract_features
from deepfake.towers.loading import load_tower

from .conftest import TOWER, labelled_image

SETTINGS = ExtractionSettings(batch_size=4, num_workers=0, shard_size=8, progress=False)


@pytest.fixture(scope="module")
def tower():
    return load_tower(TOWER)


def cache_for(root, tower) -> FeatureCache:
    return FeatureCache(root, {"tower": tower.cache_identity(), "features": SETTINGS.cache_info()})


def normal_images(folder, n=3):
    import numpy as np

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"ok{i}.png"
        labelled_image(rng, i % 2 == 1).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("size", [(1, 3_000_000), (100_000, 1)], ids=["1x3000000", "100000x1"])
def test_extreme_aspect_ratio_png_is_skipped_and_the_run_goes_on(tmp_path, tower, size):
    odd = tmp_path / "odd.png"
    Image.new("L", size, 128).save(odd)
    assert odd.stat().st_size < 100_000  # a few KB on disk: only its resize would be huge
    paths = normal_images(tmp_path) + [str(odd)]
    dataset = DeepfakeDataset([Sample(p, 0, "c") for p in paths], tower.preprocess)
    for cache in (None, cache_for(tmp_path / "cache", tower)):
        table = extract_features(tower, dataset, SETTINGS, cache)
        assert table.ok.tolist() == [True, True, True, False]
        assert "extreme aspect ratio" in table.skipped[3]


def test_import_leaves_pillow_bomb_limit_unchanged():
    code = ("import PIL.Image as I; before = I.MAX_IMAGE_PIXELS; "
            "import deepfake, deepfake.data.image_io, deepfake.cli.predict, deepfake.training.run, deepfake.evaluation.run; "
            "print(before, I.MAX_IMAGE_PIXELS)")
    before, after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   check=True).stdout.split()
    assert before == after != "None"


def test_default_max_pixels_is_at_or_below_pillows_limit():
    assert DEFAULT_MAX_PIXELS <= Image.MAX_IMAGE_PIXELS


def test_max_pixels_above_pillows_limit_is_honoured_and_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # an application's strict limit
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageSkipped, match="max_pixels 5000"):
        load_image(path, max_pixels=5000)
    assert load_image(path, max_pixels=20_000).size == (100, 100)  # ours is the limit that counts
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_skip_made_under_a_small_max_pixels_is_retried_under_a_larger_one(tmp_path, tower):
    paths = normal_images(tmp_path)
    samples = [Sample(p, 0, "c") for p in paths]
    small = extract_features(tower, DeepfakeDataset(samples, tower.preprocess, max_pixels=100), SETTINGS,
                             cache_for(tmp_path / "cache", tower))
    assert not small.ok.any() and "max_pixels 100" in small.skipped[0]
    large = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), SETTINGS,
                             cache_for(tmp_path / "cache", tower))
    assert large.ok.all() and large.skipped == {}


def test_permission_skips_are_retried_every_run(tmp_path, tower, monkeypatch):
    paths = normal_images(tmp_path)
    samples = [Sample(p, 0, "c") for p in paths]
    real_load = deepfake_dataset.load_image

    def denied(path, max_pixels=DEFAULT_MAX_PIXELS, reduce_to=None):
        if path == paths[1]:
            raise ImageSkipped(path, "permission denied")
        return real_load(path, max_pixels, reduce_to)

    monkeypatch.setattr(deepfake_dataset, "load_image", denied)
    first = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), SETTINGS,
                             cache_for(tmp_path / "cache", tower))
    assert first.skipped == {1: "permission denied"}
    monkeypatch.setattr(deepfake_dataset, "load_image", real_load)  # chmod fixed: same size and mtime
    second = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), SETTINGS,
                              cache_for(tmp_path / "cache", tower))
    assert second.ok.all()


def test_training_honours_max_pixels(tmp_path, caplog):
    import train_ClassifierHead

    from .conftest import make_forensynths, train_args

    data = make_forensynths(tmp_path / "data", n_train=3, n_val=2, n_test=1)
    args = train_args(data, tmp_path / "run", tmp_path / "cache", "--max_pixels", "100", "--num_epochs", "1")
    # Every 64x64 image is above 100 pixels: nothing is left to train on, and the message says why.
    assert train_ClassifierHead.main(args) == 2
    assert "none of the" in caplog.text and "max_pixels 100" in caplog.text
    assert not (tmp_path / "run").exists()  # a failed run leaves no empty folder
