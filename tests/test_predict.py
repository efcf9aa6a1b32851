"""Scoring user images: odd and hostile files, safe checkpoints, one code path with evaluation."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake import DeepfakeClassifier
from deepfake.__main__ import main as deepfake_main
from deepfake.data.image_io import load_image
from deepfake.data.preprocess import Preprocess, preprocess_image
from deepfake.model.checkpoint import CheckpointRefused

from .conftest import labelled_image, run_test_script


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: a decompression bomb that must be refused before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def build_cases(folder) -> dict[str, str | None]:
    """One file per case; value: the expected skip reason (substring), None when it must be scored."""
    rng = np.random.default_rng(0)
    good = labelled_image(rng, True, 96)
    cases = {}

    def add(name, expected, write):
        path = folder / name
        write(path)
        cases[str(path)] = expected

    add("good.png", None, lambda p: good.save(p))
    add("zero.jpg", "empty file", lambda p: p.write_bytes(b""))
    buf = io.BytesIO()
    good.save(buf, format="JPEG")
    add("truncated.jpg", "truncated", lambda p: p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2]))
    png = io.BytesIO()
    good.save(png, format="PNG")
    add("truncated.png", "truncated", lambda p: p.write_bytes(png.getvalue()[: len(png.getvalue()) // 2]))
    add("text.jpg", "not an image", lambda p: p.write_text("hello, I am not a JPEG\n"))
    add("unknown.png", "not an image", lambda p: p.write_bytes(b"\x00\x01RIFFxxxxNOPE" * 20))
    for mode in ("L", "LA", "P", "RGBA", "CMYK", "I;16", "F"):
        def write(p, mode=mode):
            if mode == "I;16":
                Image.fromarray(np.asarray(good.convert("L"), dtype=np.uint16) * 257).save(p)
            elif mode == "F":
                Image.fromarray(np.asarray(good.convert("L"), dtype=np.float32) / 255.0, mode="F").save(p)
            else:
                good.convert(mode).save(p)
        ext = ".tif" if mode in ("CMYK", "F") else ".png"
        add(f"mode_{mode.replace(';', '')}{ext}", None, write)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    add("exif.jpg", None, lambda p: good.save(p, exif=exif))
    add("anim.gif", None, lambda p: good.save(p, save_all=True, append_images=[good.rotate(90)], duration=50))
    add("anim.webp", None, lambda p: good.save(p, save_all=True, append_images=[good.rotate(90)], duration=50))
    add("tiny_1x1.png", None, lambda p: Image.new("RGB", (1, 1), (255, 0, 0)).save(p))
    add("small_10x300.png", None, lambda p: good.resize((10, 300)).save(p))
    add("bomb.png", "too many pixels", lambda p: p.write_bytes(_png_header_only(60000, 60000)))
    add("strip_1x3000000.png", "extreme aspect ratio", lambda p: Image.new("RGB", (1, 3_000_000)).save(p))
    add("locked.png", "permission denied", lambda p: (good.save(p), os.chmod(p, 0)))
    add("broken_link.png", "broken symlink", lambda p: os.symlink(folder / "missing.png", p))
    add("loop.png", "symlink loop", lambda p: os.symlink(p, p))
    bad_name = os.fsdecode(b"caf\xe9_\xff.png")
    add(bad_name, None, lambda p: good.save(p))
    return cases


@pytest.fixture
def classifier(trained_run):
    return DeepfakeClassifier.from_pretrained(trained_run["run"])



def test_a_skipped_input_is_logged_as_a_warning_naming_it_and_kept_in_the_list(tmp_path, classifier, caplog):
    good, missing = tmp_path / "good.png", tmp_path / "missing.jpg"
    labelled_image(np.random.default_rng(0), fake=False).save(good)
    with caplog.at_level("WARNING", logger="deepfake"):
        single = classifier.predict(str(missing))
        both = classifier.predict([str(good), str(missing)])
    assert single.probability is None and single.skipped
    assert both[0].probability is not None and both[1].probability is None  # the list keeps the skip
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and str(missing) in r.getMessage()]
    assert len(warned) == 2 and all(single.skipped in message for message in warned)
    assert not any(str(good) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_every_odd_case_is_scored_or_explained(tmp_path, trained_run, classifier, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    cases = build_cases(folder)
    as_root = os.geteuid() == 0
    results = {p.path: p for p in classifier.predict(list(cases))}
    for path, expected in cases.items():
        result = results[path]
        if path.endswith("locked.png") and as_root:
            expected = None  # root can read a 000 file
        if expected is None:
            assert result.probability is not None and 0.0 <= result.probability <= 1.0, (path, result.skipped)
        else:
            assert result.probability is None and expected in result.skipped, (path, result.skipped)
    # A good image scores the same alone as inside the batch of odd files.
    good = str(folder / "good.png")
    alone = classifier.predict([good])[0].probability
    assert alone == pytest.approx(results[good].probability, abs=1e-6)

    out = tmp_path / "pred.csv"
    code = deepfake_main(["predict", str(folder), "--checkpoint", str(trained_run["run"]), "--output", str(out),
                          "--num_workers", "2", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    n_skipped = sum(v is not None and not (k.endswith("locked.png") and as_root) for k, v in cases.items())
    assert f"skipped {n_skipped}" in printed
    with open(out, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["path"] for r in rows} == set(cases)
    assert deepfake_main(["predict", str(folder), "--checkpoint", str(trained_run["run"]), "--strict",
                          "--quiet", "--num_workers", "0"]) == 1
    assert deepfake_main(["predict", str(folder / "zero.jpg"), "--checkpoint", str(trained_run["run"]),
                          "--quiet", "--num_workers", "0"]) == 1
    assert deepfake_main(["predict", str(folder / "good.png"), "--checkpoint", str(trained_run["run"]),
                          "--quiet", "--num_workers", "0", "--output", str(out)]) == 2  # exists


def test_modes_and_exif_become_rgb(tmp_path):
    rgb = Image.new("RGB", (40, 20), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "white16.png")
    assert load_image(tmp_path / "white16.png").getpixel((0, 0)) == (255, 255, 255)
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), mode="F").save(tmp_path / "grey.tif")
    assert load_image(tmp_path / "grey.tif").getpixel((0, 0)) == (128, 128, 128)


def test_crop_mode_pads_small_images_without_resizing(tmp_path):
    image = Image.new("RGB", (100, 300), (255, 255, 255))
    x = preprocess_image(image, Preprocess(mode="crop"))
    assert x.shape == (3, 224, 224)
    zero = (0.0 - 0.48145466) / 0.26862954
    assert x[0, 100, 0].item() == pytest.approx(zero, abs=1e-5)  # padding
    assert x[0, 100, 112].item() == pytest.approx((1 - 0.48145466) / 0.26862954, abs=1e-5)


def test_pickle_payload_is_never_executed(tmp_path, trained_run):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"head": Payload()}))
    shutil.copy(trained_run["run"] / "best.json", tmp_path / "evil.json")
    with pytest.raises(CheckpointRefused, match="refused"):
        DeepfakeClassifier.from_pretrained(evil)
    assert not marker.exists()
    # A plain tensor .pth with the same weights loads (weights_only=True) and scores the same.
    from safetensors.torch import load_file

    plain = tmp_path / "plain.pth"
    torch.save({"head": load_file(str(trained_run["run"] / "best.safetensors")),
                "config": json.loads((trained_run["run"] / "best.json").read_text())}, plain)
    assert DeepfakeClassifier.from_pretrained(plain).head[0].weight.shape == (256, 32)


def test_checkpoint_for_another_tower_is_refused(trained_run):
    from .conftest import FIXTURE

    with pytest.raises(CheckpointRefused, match="was trained on tower"):
        DeepfakeClassifier.from_pretrained(trained_run["run"], model=str(FIXTURE / "lora2"))


def test_head_that_does_not_fit_is_refused(tmp_path, trained_run):
    config = json.loads((trained_run["run"] / "best.json").read_text())
    config["head"]["in_dim"] = 768
    shutil.copy(trained_run["run"] / "best.safetensors", tmp_path / "best.safetensors")
    (tmp_path / "best.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointRefused, match="768-dim features, tower gives 32"):
        DeepfakeClassifier.from_pretrained(tmp_path)


def test_predict_equals_test_script_probability(trained_run, classifier, tmp_path):
    out = tmp_path / "eval"
    assert run_test_script(trained_run, out, "--no_plots") == 0
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:6]
    predicted = classifier.predict([r["path"] for r in rows])
    for row, p in zip(rows, predicted):
        assert p.probability == float(row["probability"])
    images = [Image.open(r["path"]).convert("RGB") for r in rows]
    assert np.allclose(classifier.predict_proba(images), [float(r["probability"]) for r in rows])


def test_tiles_score_large_images(trained_run, classifier, tmp_path):
    path = tmp_path / "large.png"
    labelled_image(np.random.default_rng(1), True, 512).save(path)
    result = classifier.predict([path], tiles=4)[0]
    assert result.tile_probability is not None and 0 <= result.tile_probability <= 1


def test_head_scores_a_row_identically_whatever_rows_come_with_it():
    from deepfake.deepfake_classifier import build_head
    from deepfake.model.scoring import fake_probabilities

    torch.manual_seed(0)
    head = build_head(768)
    features = torch.randn(600, 768).half().float()
    everything = fake_probabilities(head, features)
    for start, n in [(0, 1), (5, 6), (17, 32), (100, 255), (7, 257), (3, 64), (300, 300)]:
        assert np.array_equal(fake_probabilities(head, features[start:start + n]), everything[start:start + n]), (start, n)


def _within(seconds: float, call):
    """``call()``'s result, or a failure when it has not returned after ``seconds`` (a loop that never ends)."""
    import threading

    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", _outcome(call)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not return within {seconds:g} s"
    kind, value = box["result"]
    if kind == "raised":
        raise value
    return value


def _outcome(call):
    try:
        return "returned", call()
    except Exception as exc:  # handed back to the test's thread
        return "raised", exc


def test_a_negative_tile_budget_is_refused_by_predict_and_the_api_instead_of_looping_for_ever(
        tmp_path, trained_run, classifier, caplog):
    big = tmp_path / "big.png"
    labelled_image(np.random.default_rng(0), fake=True, size=600).save(big)  # larger than a tile: tiles are cut
    assert _within(120, lambda: deepfake_main(["predict", str(big), "--checkpoint", str(trained_run["run"]),
                                               "--tiles", "-3", "--num_workers", "0"])) == 2
    assert "--tiles must be a whole number >= 0, got -3" in caplog.text
    with pytest.raises(ValueError, match="--tiles"):
        _within(120, lambda: classifier.predict(str(big), tiles=-1))
    assert _within(120, lambda: classifier.predict(str(big), tiles=2)).tile_probability is not None


@pytest.mark.parametrize("flag, value", [("--max_pixels", "0"), ("--max_pixels", "-5"), ("--batch_size", "0"),
                                         ("--num_workers", "-1")])
def test_predict_refuses_runtime_flags_out_of_range_as_serve_does(tmp_path, trained_run, classifier, caplog, flag,
                                                                   value):
    """``--max_pixels 0`` used to become the default, ``--batch_size 0`` was accepted: exit 2 naming the flag,
    before anything is loaded or written."""
    image = tmp_path / "x.png"
    labelled_image(np.random.default_rng(1), fake=False).save(image)
    out = tmp_path / "scores.csv"
    assert deepfake_main(["predict", str(image), "--checkpoint", str(trained_run["run"]), "--output", str(out),
                          "--num_workers", "0", flag, value]) == 2
    assert f"{flag} must be a whole number >= " in caplog.text and not out.exists()
    with pytest.raises(ValueError, match="max_pixels"):
        classifier.predict(str(image), max_pixels=0)
