"""Bias audit: format, JPEG quality, size, mode, EXIF flags; --align removes what it flags."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

import deepfake.__main__ as cli
import test_ClassifierHead
from deepfake.data.alignment import parse_align
from deepfake.data.audit import (
    audit_samples,
    compare_classes,
    estimate_jpeg_quality,
    probe,
    probe_image,
    summarize_probes,
)
from deepfake.data.preprocess import Preprocess, preprocess_image
from deepfake.deepfake_dataset import DeepfakeDataset, Sample

from .conftest import run_test_script

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


@pytest.fixture
def image_opens(monkeypatch):
    """Every file Pillow opens, in order."""
    opened = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    return opened


def two_domains(biased) -> list[tuple[str, str, int]]:
    """The biased set as two domains sharing its reals, so pooled groups and shared paths are audited too."""
    files = sorted(biased.rglob("*.*"))
    items = [(str(p), "one", int(p.parent.name == "1_fake")) for p in files]
    return items + [(str(p), "two", 0) for p in files if p.parent.name == "0_real"]


def memo_files(cache) -> list:
    return sorted((cache / "audit").glob("*.json"))


def test_second_audit_of_unchanged_files_opens_no_image_and_reports_the_same(biased, tmp_path, image_opens):
    items, cache = two_domains(biased), tmp_path / "cache"
    plain = audit_samples(items, crop=224, max_per_group=4)
    assert len(image_opens) == len(set(image_opens)) > 8  # samples of 4 in 6 groups; a file is read once
    first = audit_samples(items, crop=224, max_per_group=4, cache_root=cache)
    assert len(memo_files(cache)) == 1
    image_opens.clear()
    second = audit_samples(items, crop=224, max_per_group=4, cache_root=cache)
    assert image_opens == []
    assert json.dumps(second) == json.dumps(first) == json.dumps(plain)
    # The memo holds raw facts: a run with another crop reuses it and counts against its own crop.
    other_crop = audit_samples(items, crop=384, max_per_group=4, cache_root=cache)
    assert image_opens == [] and json.dumps(other_crop) == json.dumps(audit_samples(items, crop=384, max_per_group=4))


def test_memo_holds_only_the_sampled_files(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        Image.new("RGB", (32, 32)).save(folder / f"{i}.png")
    items = [(str(p), "d", 0) for p in sorted(folder.iterdir())]
    report = audit_samples(items, max_per_group=10, cache_root=tmp_path / "cache")
    (memo,) = memo_files(tmp_path / "cache")
    assert report["domains"]["d"]["real"]["probed"] == 10 and len(json.loads(memo.read_text())["probes"]) == 10


@pytest.mark.parametrize("change", ["content", "mtime"])
def test_changed_file_is_probed_again_and_its_new_facts_are_used(biased, tmp_path, image_opens, change):
    items, cache = two_domains(biased), tmp_path / "cache"
    audit_samples(items, crop=224, cache_root=cache)
    target = biased / "0_real" / "0.jpg"
    stamp = target.stat()
    if change == "content":  # a 128 px PNG under the old name: new size, format, quality and EXIF
        scene(np.random.default_rng(1), 128).save(target, format="PNG")
    os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    image_opens.clear()
    remembered = audit_samples(items, crop=224, cache_root=cache)
    assert image_opens == [str(target)]
    fresh = audit_samples(items, crop=224)
    assert json.dumps(remembered) == json.dumps(fresh)
    real = remembered["domains"]["one"]["real"]
    if change == "content":
        assert real["formats"] == {"JPEG": 5, "PNG": 1} and real["short_side"]["min"] == 128
    else:
        assert real["formats"] == {"JPEG": 6}
    image_opens.clear()
    audit_samples(items, crop=224, cache_root=cache)
    assert image_opens == []  # the new stamp was remembered


@pytest.mark.parametrize("bad", ["torn", "foreign", "malformed record"])
def test_corrupt_memo_is_ignored_with_a_warning_naming_the_file_and_rewritten(biased, tmp_path, image_opens,
                                                                            caplog, bad):
    items, cache = two_domains(biased), tmp_path / "cache"
    first = audit_samples(items, crop=224, cache_root=cache)
    (memo,) = memo_files(cache)
    text = memo.read_text()
    doc = json.loads(text)
    if bad == "torn":
        memo.write_text(text[: len(text) // 2])
    elif bad == "foreign":
        memo.write_text(json.dumps({"some": "other tool"}))
    else:
        broken = json.loads(text)
        next(iter(broken["probes"].values()))[2]["size"] = "large"
        memo.write_text(json.dumps(broken))
    image_opens.clear()
    with caplog.at_level("WARNING", logger="deepfake.utils.stamp_memo"):
        again = audit_samples(items, crop=224, cache_root=cache)
    assert json.dumps(again) == json.dumps(first) and len(image_opens) == 12
    assert any(str(memo) in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    assert json.loads(memo.read_text()) == doc  # rewritten whole
    image_opens.clear()
    audit_samples(items, crop=224, cache_root=cache)
    assert image_opens == []


def test_unwritable_cache_root_still_audits(biased, tmp_path, caplog):
    items = two_domains(biased)
    cache = tmp_path / "not-a-folder"
    cache.write_text("a file where the cache root should be\n")  # refuses folders even to root
    with caplog.at_level("DEBUG", logger="deepfake.utils.stamp_memo"):
        report = audit_samples(items, crop=224, cache_root=cache)
    assert json.dumps(report) == json.dumps(audit_samples(items, crop=224))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("not written" in r.getMessage() for r in caplog.records)


def test_audit_command_remembers_headers_unless_no_cache(biased, tmp_path, image_opens, capsys):
    cache = tmp_path / "cache"
    assert cli.main(["audit", str(biased), "--no_cache", "--cache_dir", str(cache)]) == 0
    assert not cache.exists() and len(image_opens) == 12
    assert cli.main(["audit", str(biased), "--cache_dir", str(cache)]) == 0
    assert len(memo_files(cache)) == 1
    image_opens.clear()
    assert cli.main(["audit", str(biased), "--cache_dir", str(cache)]) == 0
    assert image_opens == []
    image_opens.clear()
    assert cli.main(["audit", str(biased), "--no_cache", "--cache_dir", str(cache)]) == 0
    assert len(image_opens) == 12
    printed = capsys.readouterr().out
    assert printed == printed[: len(printed) // 4] * 4  # the same report every time


def test_training_and_evaluation_keep_the_memo_in_their_feature_cache(trained_run, tmp_path, image_opens):
    identities = [json.loads(m.read_text())["identity"] for m in memo_files(trained_run["cache"])]
    assert str(trained_run["data"] / "train") in {i["root"] for i in identities}  # written by the training run
    assert run_test_script(trained_run, tmp_path / "first", "--no_plots") == 0
    image_opens.clear()
    assert run_test_script(trained_run, tmp_path / "second", "--no_plots") == 0
    assert image_opens == []  # features and header facts both come from the cache
    first, second = (json.loads((tmp_path / run / "results.json").read_text())["audit"] for run in ("first", "second"))
    assert first == second and first["domains"]
    # --no_cache reads and writes nothing there, the memo included.
    unused = tmp_path / "unused-cache"
    assert test_ClassifierHead.main(["--checkpoint", str(trained_run["run"]), "--dataset_dir",
                                     str(trained_run["data"] / "test"), "--output_dir", str(tmp_path / "plain"),
                                     "--cache_dir", str(unused), "--no_cache", "--no_plots", "--num_workers", "0",
                                     "--quiet"]) == 0
    assert not unused.exists()
