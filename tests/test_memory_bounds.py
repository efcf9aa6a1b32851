"""Memory bounds: batches within a pixel budget, and one copy of a decoded photo, so a folder of photos never
needs gigabytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfake.config import DEFAULT_BATCH_PIXELS
from deepfake.data.preprocess import Preprocess, preprocessed_shape
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.features.extraction import ExtractionSettings, extract_features, images_per_batch
from deepfake.towers.loading import load_tower

TILE_STACK = 16 * 256 * 256  # the gray spectral record's tensor: 4 x 4 gray tiles of 256 px


def test_a_batch_is_batch_size_images_unless_their_tensors_pass_the_budget():
    assert preprocessed_shape(load_tower("spectrum").preprocess) == (48, 256, 256)  # 16 tiles in colour
    assert preprocessed_shape(load_tower("spectrum-tiles256").preprocess) == (16, 256, 256)
    assert preprocessed_shape(load_tower("spectrum-window512").preprocess) == (2, 512, 512)
    assert images_per_batch(64, preprocessed_shape(Preprocess())) == 64  # 224 px crops: the count decides
    assert images_per_batch(64, (16, 256, 256)) == DEFAULT_BATCH_PIXELS // TILE_STACK == 16
    assert images_per_batch(64, (16, 1024, 1024)) == 1  # larger than the budget alone: one at a time, never none


def _photos(folder, n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    folder.mkdir()
    samples = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (300, 380, 3), dtype=np.uint8)).save(path)
        samples.append(Sample(str(path), i % 2, "x"))
    return samples


def test_extraction_batches_hold_at_most_the_pixel_budget_with_the_same_features(tmp_path, monkeypatch):
    tower = load_tower("spectrum-tiles256")
    samples = _photos(tmp_path / "photos", 7)
    seen = []
    forward = tower.forward

    def recording(pixels, layers=False):
        seen.append(tuple(pixels.shape))
        return forward(pixels, layers)

    monkeypatch.setattr(tower, "forward", recording)
    settings = ExtractionSettings(batch_size=64, progress=False, batch_pixels=3 * TILE_STACK)
    bounded = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), settings)
    assert [s[0] for s in seen] == [3, 3, 1] and all(s[1:] == (16, 256, 256) for s in seen)
    seen.clear()
    whole = extract_features(tower, DeepfakeDataset(samples, tower.preprocess),
                             ExtractionSettings(batch_size=64, progress=False, batch_pixels=64 * TILE_STACK))
    assert [s[0] for s in seen] == [7]
    assert bounded.ok.all() and torch.equal(bounded.embeds, whole.embeds)


def test_an_upright_photo_is_decoded_once_not_copied_for_its_exif_rotation(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)).save(
        path, compress_level=0)
    decoded = 3000 * 4000 * 4 / 2**20  # Pillow holds RGB as 4 bytes a pixel: 46 MB
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from deepfake.data.image_io import load_image
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024
before = status("VmRSS:")
image = load_image({str(path)!r})
print(status("VmHWM:") - before, image.size)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    peak, size = done.stdout.split(maxsplit=1)
    assert size.strip() == "(4000, 3000)"
    # The copy exif_transpose used to return for every upright photo doubled this (2 x 46 MB at 12 MP).
    assert float(peak) < 1.5 * decoded, peak


def test_predict_tiles_are_cut_before_conversion_with_the_same_values():
    from deepfake.data.preprocess import center_crop, normalize, pil_to_tensor
    from deepfake.data.tiling import tile_boxes, tile_views

    spec = Preprocess(mode="crop", size=224)
    for h, w in ((700, 1000), (150, 900), (100, 120)):
        image = Image.fromarray(np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8))
        x = pil_to_tensor(image)
        expected = [normalize(center_crop(x[:, t : t + 224, left : left + 224], 224), spec.mean, spec.std)
                    for t, left, _, _ in tile_boxes(h, w, 224, 6)]
        views = tile_views(image, spec, 6)
        assert len(views) == len(expected) and all(torch.equal(a, b) for a, b in zip(views, expected))
