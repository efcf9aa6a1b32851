"""Bias audit: format, JPEG quality, size, mode, EXIF flags; --align removes what it flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import deepfake.__main__ as cli
from deepfake.backbones import Preprocess
from deepfake.bias_audit import (
    audit_samples,
    compare_classes,
    estimate_jpeg_quality,
    probe,
    probe_image,
    summarize_probes,
)
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.transforms import parse_align, preprocess_image

CROP = Preprocess(mode="crop")


def scene(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.normal(128, 45, (size // 8, size // 8, 3))
    array = np.kron(base, np.ones((8, 8, 1))) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


@pytest.fixture
def biased(tmp_path):
    """Reals: JPEG q90 at 256 px with camera EXIF. Fakes: PNG at 512 px. Same scene statistics."""
    rng = np.random.default_rng(0)
    root = tmp_path / "biased"
    (root / "0_real").mkdir(parents=True)
    (root / "1_fake").mkdir(parents=True)
    for i in range(6):
        exif = Image.Exif()
        exif[271], exif[272] = "Nikon", "D90"
        scene(rng, 256).save(root / "0_real" / f"{i}.jpg", quality=90, exif=exif.tobytes())
        scene(rng, 512).save(root / "1_fake" / f"{i}.png")
    return root


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 96, 100])
def test_jpeg_quality_is_read_from_the_quantisation_tables(tmp_path, quality):
    path = tmp_path / "x.jpg"
    scene(np.random.default_rng(0), 64).save(path, quality=quality)
    with Image.open(path) as image:
        assert estimate_jpeg_quality(image.quantization) == (quality, True)
    assert probe(str(path))["jpeg_quality"] == quality


def test_audit_flags_format_quality_size_and_metadata(biased, capsys):
    items = [(str(p), "biased", int(p.parent.name == "1_fake")) for p in sorted(biased.rglob("*.*"))]
    report = audit_samples(items, crop=224)
    flagged = {f["property"] for f in report["flags"]}
    assert {"format", "jpeg_quality", "size", "exif"} <= flagged and "mode" not in flagged
    real, fake = report["domains"]["biased"]["real"], report["domains"]["biased"]["fake"]
    assert real["formats"] == {"JPEG": 6} and fake["formats"] == {"PNG": 6}
    assert real["jpeg_quality"]["median"] == 90 and fake["jpeg_quality"] is None
    assert real["short_side"]["median"] == 256 and fake["short_side"]["median"] == 512
    assert real["camera"] == 6 and fake["exif"] == 0
    # The command prints the same and saves it.
    out = biased.parent / "audit.json"
    assert cli.main(["audit", str(biased), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "format: reals 100% JPEG, fakes 100% PNG" in printed and "median quality 90" in printed
    assert {f["property"] for f in json.loads(out.read_text())["flags"]} == flagged


def test_audit_samples_big_groups_and_says_so(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        Image.new("RGB", (32, 32)).save(folder / f"{i}.png")
    report = audit_samples([(str(p), "d", 0) for p in sorted(folder.iterdir())], max_per_group=10)
    stats = report["domains"]["d"]["real"]
    assert stats["n"] == 30 and stats["probed"] == 10 and stats["sampled"] and report["sampled"] == ["d/real"]


def test_align_removes_the_format_quality_and_size_differences_from_the_tensors(biased):
    samples = [Sample(str(p), int(p.parent.name == "1_fake"), "c") for p in sorted(biased.rglob("*.*"))]
    aligned = DeepfakeDataset(samples, CROP, align=parse_align(["jpeg:96", "size:256"]))
    seen = {0: [], 1: []}
    for i, sample in enumerate(samples):
        image = aligned.read(i)  # what the tower's preprocessing receives
        seen[sample.label].append(probe_image(image))
        assert torch.equal(aligned.load(i), preprocess_image(image, CROP))
    real, fake = summarize_probes(seen[0], 224), summarize_probes(seen[1], 224)
    assert real["formats"] == fake["formats"] == {"JPEG": 6}
    assert real["jpeg_quality"]["median"] == fake["jpeg_quality"]["median"] == 96
    assert real["short_side"] == fake["short_side"] and real["short_side"]["median"] == 256
    assert not {f["property"] for f in compare_classes(real, fake, 224)} & {"format", "jpeg_quality", "size"}
    # Unaligned, the same comparison flags all three (from the files, as the audit reads them).
    plain = compare_classes(*(summarize_probes([probe(s.path) for s in samples if s.label == c], 224) for c in (0, 1)),
                            224)
    assert {"format", "jpeg_quality", "size"} <= {f["property"] for f in plain}
    assert aligned.align.label() == "size:256,jpeg:96"


def test_probe_reads_headers_only(tmp_path, monkeypatch):
    from PIL import ImageFile

    exif = Image.Exif()
    exif[271] = "Canon"
    image = scene(np.random.default_rng(0), 64)
    image.save(tmp_path / "plain.png")
    image.save(tmp_path / "tagged.png", exif=exif.tobytes())
    image.save(tmp_path / "tagged.jpg", quality=80, exif=exif.tobytes())
    image.save(tmp_path / "tagged.tif", exif=exif.tobytes())

    def no_decoding(self):
        raise AssertionError(f"{self.filename}: pixels decoded by the audit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    probes = {p.name: probe(str(p)) for p in sorted(tmp_path.iterdir())}
    assert probes["plain.png"]["exif"] is False and probes["plain.png"]["size"] == (64, 64)
    assert all(probes[name]["camera"] for name in ("tagged.png", "tagged.jpg", "tagged.tif"))
    assert probes["tagged.jpg"]["jpeg_quality"] == 80
