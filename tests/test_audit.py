"""Bias audit: format, extension, JPEG quality and tables, size distribution, mode, EXIF flags; hints per tower;
--align removes what it flags."""

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
    format_audit,
    probe,
    probe_image,
    summarize_probes,
)
from deepfake.data.jpeg_tables import ANNEX_K_CHROMA, ANNEX_K_LUMA, TableMatch, ijg_table, match_ijg
from deepfake.data.preprocess import Preprocess, preprocess_image
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.towers.backbones import backbone_for

from .conftest import run_test_script

CROP = Preprocess(mode="crop")
RESIZE = Preprocess()  # LanguageBind's transform: short side to 224, crop 224
SPECTRUM = backbone_for("spectrum").preprocess  # native pixels, never resized


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


@pytest.mark.parametrize("quality", [1, 10, 23, 24, 30, 50, 75, 84, 85, 87, 90, 95, 96, 100])
def test_tables_libjpeg_writes_at_a_quality_are_standard_at_exactly_that_quality(tmp_path, quality):
    path = tmp_path / "x.jpg"
    scene(np.random.default_rng(0), 64).save(path, quality=quality)  # baseline: clamped at 255 below q24
    with Image.open(path) as image:
        assert match_ijg(image.quantization) == TableMatch(quality, True, 0.0)
    found = probe(str(path))
    assert (found["jpeg_quality"], found["jpeg_standard"], found["jpeg_distance"]) == (quality, True, 0.0)


def test_grayscale_and_extended_tables_are_standard_too():
    # One table (grayscale), and cjpeg's default without force_baseline: 16-bit steps above 255.
    assert match_ijg({0: list(ijg_table(ANNEX_K_LUMA, 40))}) == TableMatch(40, True, 0.0)
    extended = {0: list(ijg_table(ANNEX_K_LUMA, 5, baseline=False)), 1: list(ijg_table(ANNEX_K_CHROMA, 5, False))}
    assert max(extended[0]) > 255 and match_ijg(extended) == TableMatch(5, True, 0.0)
    assert match_ijg({}) is None and match_ijg({0: [1] * 63}) is None


def between_84_and_85() -> dict[int, list[int]]:
    """Tables an encoder scaled by 31 % (IJG quality 84 scales by 32 %, 85 by 30 %): no IJG quality's."""
    return {i: [int(v) for v in np.clip((base * 31 + 50) // 100, 1, 255)]
            for i, base in enumerate((ANNEX_K_LUMA, ANNEX_K_CHROMA))}


def test_non_standard_tables_are_said_to_be_with_the_nearest_quality_and_a_distance(tmp_path):
    path = tmp_path / "custom.jpg"
    scene(np.random.default_rng(0), 64).save(path, qtables=between_84_and_85())
    with Image.open(path) as image:
        match = match_ijg(image.quantization)
    assert not match.standard and match.quality in (84, 85) and 0 < match.distance < 1
    # A luminance table from one quality and a chrominance table from another is no IJG quality either.
    mixed = {0: list(ijg_table(ANNEX_K_LUMA, 90)), 1: list(ijg_table(ANNEX_K_CHROMA, 70))}
    assert not match_ijg(mixed).standard
    # One step off in one coefficient is enough.
    tables = {0: list(ijg_table(ANNEX_K_LUMA, 75)), 1: list(ijg_table(ANNEX_K_CHROMA, 75))}
    tables[0][10] += 1
    assert match_ijg(tables) == TableMatch(75, False, round(1 / 128, 3))


def test_audit_flags_format_quality_size_and_metadata(biased, capsys):
    items = [(str(p), "biased", int(p.parent.name == "1_fake")) for p in sorted(biased.rglob("*.*"))]
    report = audit_samples(items, RESIZE)
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


def write_pairs(folder, n: int, real, fake) -> list[tuple[str, str, int]]:
    """``n`` reals and fakes in ``folder``: ``real(i, path_stem)`` and ``fake(i, path_stem)`` write one each."""
    items = []
    for i in range(n):
        items += [(real(i, folder / f"real{i}"), "d", 0), (fake(i, folder / f"fake{i}"), "d", 1)]
    return items


def flags_of(report: dict) -> dict[str, str]:
    return {f["property"]: f["message"] for f in report["flags"]}


def test_fakes_with_non_standard_tables_are_flagged_against_standard_reals(tmp_path):
    rng = np.random.default_rng(0)

    def real(i, stem):
        scene(rng, 64).save(f"{stem}.jpg", quality=85)
        return f"{stem}.jpg"

    def fake(i, stem):
        scene(rng, 64).save(f"{stem}.jpg", qtables=between_84_and_85())
        return f"{stem}.jpg"

    report = audit_samples(write_pairs(tmp_path, 6, real, fake), RESIZE)
    real_q, fake_q = (report["domains"]["d"][c]["jpeg_quality"] for c in ("real", "fake"))
    assert (real_q["median"], real_q["exact_share"], real_q["nonstandard"]) == (85, 1.0, 0)
    assert fake_q["exact_share"] == 0.0 and fake_q["nonstandard"] == 6 and fake_q["nonstandard_quality"] in (84, 85)
    assert 0 < fake_q["nonstandard_distance"] < 1
    flags = flags_of(report)
    assert set(flags) == {"jpeg_tables"}  # one encoder's tables against another's, at nearly one quality
    assert flags["jpeg_tables"].startswith("quantisation tables: reals' JPEGs 100% standard IJG tables; fakes' 0% "
                                           "standard IJG tables, 6 non-standard (nearest IJG quality 8")
    assert "a detector can learn the encoder" in flags["jpeg_tables"]
    text = format_audit(report)
    assert "d/real: 6 images; 100% JPEG; JPEG q 85-85 (median 85, standard IJG tables)" in text
    assert "6 with non-standard quantisation tables, nearest IJG quality 8" in text
    # Both classes with the same kind of tables: nothing to flag.
    fake_stats = report["domains"]["d"]["fake"]
    assert compare_classes(fake_stats, fake_stats, RESIZE) == []


def test_a_class_of_one_size_is_flagged_although_the_short_sides_match(tmp_path):
    def real(i, stem):  # eight sizes, short side 64 throughout, none of them 96x64
        Image.new("RGB", (64 + 8 * i + (8 if i >= 4 else 0), 64)).save(f"{stem}.png")
        return f"{stem}.png"

    def fake(i, stem):
        Image.new("RGB", (96, 64)).save(f"{stem}.png")
        return f"{stem}.png"

    report = audit_samples(write_pairs(tmp_path, 8, real, fake), RESIZE)
    real_stats, fake_stats = report["domains"]["d"]["real"], report["domains"]["d"]["fake"]
    assert real_stats["short_side"] == fake_stats["short_side"]  # medians and percentiles alike
    assert (real_stats["distinct_sizes"], fake_stats["distinct_sizes"], fake_stats["sizes"]) == (8, 1, {"96x64": 8})
    flags = flags_of(report)
    assert set(flags) == {"one_size"}
    assert flags["one_size"].startswith("one size: 100% of fakes are 96x64, reals come in 8 sizes, 96x64 not among "
                                        "their 5 most common;")
    assert "every fake is resampled by the same factor" in flags["one_size"]
    text = format_audit(report)
    assert "1 size (96x64)" in text and "8 sizes (most common" in text
    # Reals of that one size too: nothing to flag.
    assert compare_classes(fake_stats, fake_stats, RESIZE) == []


def probes_of(sizes: list[tuple[int, int]]) -> list[dict]:
    return [{"format": "PNG", "mode": "RGB", "size": s, "exif": False, "camera": False} for s in sizes]


def test_size_distributions_apart_with_equal_medians_are_flagged():
    real = summarize_probes(probes_of([(s, s) for s in (40, 48, 56, 62, 64, 64, 72, 80, 88, 96)]), 224)
    fake = summarize_probes(probes_of([(s, s + 1) for s in range(59, 69)]), 224)
    assert abs(real["short_side"]["median"] - fake["short_side"]["median"]) <= 0.5
    flags = {f["property"]: f["message"] for f in compare_classes(real, fake, RESIZE)}
    assert set(flags) == {"size"} and "10th-90th percentile 47-89 and 60-67 px" in flags["size"]


def test_png_files_that_are_jpeg_inside_are_counted_per_class_and_flagged(tmp_path):
    rng = np.random.default_rng(0)

    def real(i, stem):
        scene(rng, 64).save(f"{stem}.png")
        return f"{stem}.png"

    def fake(i, stem):  # half of the fakes: JPEG under a .png name
        scene(rng, 64).save(f"{stem}.png", format="JPEG" if i < 3 else "PNG", quality=90)
        return f"{stem}.png"

    report = audit_samples(write_pairs(tmp_path, 6, real, fake), RESIZE)
    real_stats, fake_stats = report["domains"]["d"]["real"], report["domains"]["d"]["fake"]
    assert real_stats["misnamed"] == {} and fake_stats["misnamed"] == {".png is JPEG": 3}
    flags = flags_of(report)
    assert flags["extension"].startswith("file extension: 0% of reals and 50% of fakes (3 .png is JPEG) are not "
                                         "the format their extension names")
    assert "d/fake: 6 images; 50% JPEG, 50% PNG (3 misnamed: 3 .png is JPEG)" in format_audit(report)
    # A JPEG named .JPG, .jpeg or .jpg is what it says.
    for name in ("a.JPG", "b.jpeg", "c.jpg"):
        scene(rng, 32).save(tmp_path / name, format="JPEG")
        assert summarize_probes([probe(str(tmp_path / name))], 224)["misnamed"] == {}


def test_hints_follow_the_towers_preprocessing(biased, capsys):
    items = [(str(p), "biased", int(p.parent.name == "1_fake")) for p in sorted(biased.rglob("*.*"))]
    resized, spectral = flags_of(audit_samples(items, RESIZE)), flags_of(audit_samples(items, SPECTRUM))
    assert "resizes the short side to 224 px" in resized["size"] and "interpolation traces" in resized["size"]
    assert f"reads {SPECTRUM.grid}x{SPECTRUM.grid} native tiles of {SPECTRUM.size} px, never resized" in spectral["size"]
    assert not any("interpolation" in m or "resizing to" in m or "resampled" in m for m in spectral.values())
    assert "8x8 block grid reaches this tower unresized" in spectral["format"]
    assert "the tower's resizing blurs JPEG's 8x8 block grid" in resized["format"]
    # 256 px reals are below a 512 px window: the window shrinks for reals only.
    window = flags_of(audit_samples(items, Preprocess(mode="window", size=512)))
    assert "smaller than 512 px: 100% of reals, 0% of fakes; the tower's window shrinks" in window["smaller_than_crop"]
    # The command takes the tower's record from --model and saves it with the report.
    out = biased.parent / "audit.json"
    assert cli.main(["audit", str(biased), "--model", "spectrum", "--no_cache", "--output", str(out)]) == 0
    assert "native tiles" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["preprocess"] == {"mode": SPECTRUM.mode, "size": SPECTRUM.size, "grid": SPECTRUM.grid}
    assert saved["crop"] == SPECTRUM.size
    assert cli.main(["audit", str(biased), "--model", "spectrum", "--preprocess", "resize", "--no_cache"]) == 2


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
    assert not {f["property"] for f in compare_classes(real, fake, RESIZE)} & {"format", "jpeg_quality", "size"}
    # Unaligned, the same comparison flags all three (from the files, as the audit reads them).
    plain = compare_classes(*(summarize_probes([probe(s.path) for s in samples if s.label == c], 224) for c in (0, 1)),
                            RESIZE)
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
    plain = audit_samples(items, RESIZE, max_per_group=4)
    assert len(image_opens) == len(set(image_opens)) > 8  # samples of 4 in 6 groups; a file is read once
    first = audit_samples(items, RESIZE, max_per_group=4, cache_root=cache)
    assert len(memo_files(cache)) == 1
    image_opens.clear()
    second = audit_samples(items, RESIZE, max_per_group=4, cache_root=cache)
    assert image_opens == []
    assert json.dumps(second) == json.dumps(first) == json.dumps(plain)
    # The memo holds raw facts: a run with another crop reuses it and counts against its own crop.
    other_crop = audit_samples(items, Preprocess(size=384), max_per_group=4, cache_root=cache)
    assert image_opens == [] and json.dumps(other_crop) == json.dumps(
        audit_samples(items, Preprocess(size=384), max_per_group=4))


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
    audit_samples(items, RESIZE, cache_root=cache)
    target = biased / "0_real" / "0.jpg"
    stamp = target.stat()
    if change == "content":  # a 128 px PNG under the old name: new size, format, quality and EXIF
        scene(np.random.default_rng(1), 128).save(target, format="PNG")
    os.utime(target, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    image_opens.clear()
    remembered = audit_samples(items, RESIZE, cache_root=cache)
    assert image_opens == [str(target)]
    fresh = audit_samples(items, RESIZE)
    assert json.dumps(remembered) == json.dumps(fresh)
    real = remembered["domains"]["one"]["real"]
    if change == "content":
        assert real["formats"] == {"JPEG": 5, "PNG": 1} and real["short_side"]["min"] == 128
    else:
        assert real["formats"] == {"JPEG": 6}
    image_opens.clear()
    audit_samples(items, RESIZE, cache_root=cache)
    assert image_opens == []  # the new stamp was remembered


@pytest.mark.parametrize("bad", ["torn", "foreign", "malformed record"])
def test_corrupt_memo_is_ignored_with_a_warning_naming_the_file_and_rewritten(biased, tmp_path, image_opens,
                                                                            caplog, bad):
    items, cache = two_domains(biased), tmp_path / "cache"
    first = audit_samples(items, RESIZE, cache_root=cache)
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
        again = audit_samples(items, RESIZE, cache_root=cache)
    assert json.dumps(again) == json.dumps(first) and len(image_opens) == 12
    assert any(str(memo) in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    assert json.loads(memo.read_text()) == doc  # rewritten whole
    image_opens.clear()
    audit_samples(items, RESIZE, cache_root=cache)
    assert image_opens == []


def test_unwritable_cache_root_still_audits(biased, tmp_path, caplog):
    items = two_domains(biased)
    cache = tmp_path / "not-a-folder"
    cache.write_text("a file where the cache root should be\n")  # refuses folders even to root
    with caplog.at_level("DEBUG", logger="deepfake.utils.stamp_memo"):
        report = audit_samples(items, RESIZE, cache_root=cache)
    assert json.dumps(report) == json.dumps(audit_samples(items, RESIZE))
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


def test_evaluation_audits_with_the_preprocessing_its_images_get(trained_run, tmp_path):
    assert run_test_script(trained_run, tmp_path / "plain", "--no_plots") == 0
    assert run_test_script(trained_run, tmp_path / "ufd", "--no_plots", "--protocol", "ufd") == 0
    plain, ufd = (json.loads((tmp_path / run / "results.json").read_text())["audit"] for run in ("plain", "ufd"))
    assert plain["preprocess"]["mode"] == "resize"  # the tower's own transform
    # UFD's protocol crops without resizing: the hints and the count below the input follow that.
    assert ufd["preprocess"] == {"mode": "crop", "size": plain["crop"]} and ufd["crop"] == plain["crop"]


def test_probe_describes_only_formats_the_loader_opens(tmp_path):
    """An EPS named .png is an unreadable file to the audit, as it is to the loader, not an "EPS" image."""
    from deepfake.data.audit import probe

    eps = tmp_path / "evil.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n")
    assert "error" in probe(str(eps))


def test_an_explanation_shared_by_findings_in_several_domains_is_printed_once(biased):
    files = sorted(biased.rglob("*.*"))
    items = [(str(p), domain, int(p.parent.name == "1_fake")) for domain in ("one", "two", "three") for p in files]
    report = audit_samples(items, RESIZE)
    size_flags = [f for f in report["flags"] if f["property"] == "size"]
    assert len(size_flags) == 4  # three domains and the pooled one, one explanation
    for brief in (True, False):
        text = format_audit(report, brief=brief)
        assert text.count(size_flags[0]["hint"]) == 1
        assert sum(line.startswith("  [") and "size: median short side" in line for line in text.splitlines()) == 4
