"""The fast decode path: smaller decode, recorded in the cache key and checkpoint, features within the stated cosine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import train_ClassifierHead
from deepfake.data.image_io import load_image
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.features.cache import FeatureCache
from deepfake.features.extraction import ExtractionSettings, extract_features
from deepfake.towers.loading import load_tower

from .conftest import TOWER, make_forensynths, train_args

# Stated in the README: fast-path features agree with the exact path at cosine >= this
# (fixture tower, photo-like images of 1.9 to 4.3 MP; measured >= 0.99999).
COSINE_BOUND = 0.9999


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth random scene with sharp edges and grain: what a downscale can change."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.normal(128, 50, (h // 64 + 2, w // 64 + 2, 3))
    field = np.asarray(Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC),
                       dtype=np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(6):  # hard-edged discs
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(h // 10, h // 3)
        field[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    field += rng.normal(0, 6, field.shape)
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, (size, ext) in enumerate([((2400, 1800), ".jpg"), ((1800, 2400), ".jpg"), ((1600, 1200), ".png"),
                                     ((1999, 1333), ".jpg")]):
        path = folder / f"photo{i}{ext}"
        photo_like(size, i).save(path, **({"quality": 92} if ext == ".jpg" else {}))
        paths.append(str(path))
    return paths


def test_fast_path_decodes_smaller_but_keeps_twice_the_input_size(photos):
    exact = load_image(photos[0])
    fast = load_image(photos[0], reduce_to=448)
    assert exact.size == (2400, 1800) and 448 <= min(fast.size) < 900


def test_fast_path_features_stay_within_the_stated_cosine(photos):
    tower = load_tower(TOWER)
    samples = [Sample(p, 0, "c") for p in photos]
    tables = {}
    for decode in ("exact", "fast"):
        settings = ExtractionSettings(batch_size=4, progress=False, decode=decode)
        tables[decode] = extract_features(tower, DeepfakeDataset(samples, tower.preprocess, decode=decode), settings)
    cosine = torch.nn.functional.cosine_similarity(tables["exact"].embeds.float(), tables["fast"].embeds.float())
    assert not torch.equal(tables["exact"].embeds, tables["fast"].embeds)  # the path is really taken
    assert cosine.min().item() >= COSINE_BOUND, cosine.tolist()


def test_fast_path_is_in_the_cache_key_and_the_checkpoint(tmp_path):
    tower = load_tower(TOWER)
    keys = {decode: FeatureCache(tmp_path, {"tower": tower.cache_identity(),
                                            "features": ExtractionSettings(decode=decode).cache_info()}).key
            for decode in ("exact", "fast")}
    assert keys["exact"] != keys["fast"]
    data = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=1)
    assert train_ClassifierHead.main(train_args(data, tmp_path / "run", tmp_path / "cache", "--num_epochs", "1",
                                                "--decode", "fast")) == 0
    assert json.loads((tmp_path / "run" / "best.json").read_text())["features"]["decode"] == "fast"
