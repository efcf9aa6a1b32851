"""benchmarks/compare_heads.py end to end on the synthetic benchmark with the fixture tower."""

from __future__ import annotations

import json

import pytest

import test_ClassifierHead
from benchmarks.compare_heads import main as compare_main
from deepfake import DeepfakeClassifier
from deepfake.data.synthetic import FAMILIES, generate

from .conftest import TOWER


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synthetic") / "data", n_train=4, n_val=2, n_test=2, sizes=(64, 72))


def _argv(data, out, cache, *extra):
    return ["--dataset_dir", str(data), "--model", TOWER, "--output_dir", str(out), "--cache_dir", str(cache),
            "--num_epochs", "4", "--learning_rate", "3e-3", "--batch_size", "16", "--num_workers", "0",
            "--precision", "fp32", "--quiet", *extra]


def test_compare_heads_trains_every_kind_from_one_tower_pass_per_image(synthetic, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert compare_main(_argv(synthetic, tmp_path / "a", cache)) == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    n_images = 16 + 8 + len(FAMILIES) * 8
    assert first["images"] == n_images and first["tower_passes"] == n_images
    assert first["cache"]["rows"] == first["cache"]["images"] == n_images  # no image extracted twice
    assert list(first["heads"]) == ["mlp", "layers", "linear"]
    for kind, result in first["heads"].items():
        assert result["head"]["kind"] == kind and (tmp_path / "a" / kind / "best.safetensors").is_file()
        assert [r["domain"] for r in result["rows"]] == sorted(FAMILIES)
        assert 0.0 <= result["mean"]["ap"] <= 1.0
    importance = first["heads"]["layers"]["block_importance"]
    assert importance["blocks"] == [0, 1, 2, 3] and sum(importance["importance"]) == pytest.approx(1.0, abs=1e-6)
    printed = capsys.readouterr().out
    assert "mlp acc" in printed and "layers AP" in printed and "linear AP" in printed
    report = (tmp_path / "a" / "results.md").read_text()
    assert "| generator | mlp acc | mlp AP | layers acc | layers AP | linear acc | linear AP |" in report
    assert (tmp_path / "a" / "importance.png").is_file()

    # Same cache, same seed: no tower pass at all, and the same numbers.
    assert compare_main(_argv(synthetic, tmp_path / "b", cache)) == 0
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert second["tower_passes"] == 0 and second["cache"] == first["cache"]
    assert {k: v["mean"] for k, v in second["heads"].items()} == {k: v["mean"] for k, v in first["heads"].items()}

    # A saved head is an ordinary checkpoint: the test script scores it to the same mean AP, from the cache.
    out = tmp_path / "eval"
    assert test_ClassifierHead.main(["--checkpoint", str(tmp_path / "a" / "layers"), "--dataset_dir",
                                     str(synthetic / "test"), "--output_dir", str(out), "--cache_dir", str(cache),
                                     "--num_workers", "0", "--quiet", "--no_plots"]) == 0
    evaluated = json.loads((out / "results.json").read_text())["levels"][0]["mean"]
    assert evaluated["ap"] == pytest.approx(first["heads"]["layers"]["mean"]["ap"], abs=1e-9)
    image = str(next((synthetic / "test" / "tconv").rglob("*.png")))
    for kind in ("mlp", "layers", "linear"):
        classifier = DeepfakeClassifier.from_pretrained(tmp_path / "a" / kind)
        assert classifier.head.kind == kind and 0.0 <= classifier.predict([image])[0].probability <= 1.0


def test_compare_heads_refuses_to_overwrite_unknown_kinds_and_kinds_reading_another_tap(synthetic, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("earlier")
    assert compare_main(_argv(synthetic, out, tmp_path / "cache")) == 2
    assert "pass --overwrite" in caplog.text and (out / "results.md").read_text() == "earlier"
    assert compare_main(_argv(synthetic, tmp_path / "x", tmp_path / "cache", "--heads", "mlp,nosuchkind")) == 2
    assert "unknown kind(s) nosuchkind" in caplog.text
    # The rine head reads the ln_2 tap; the comparison caches block outputs only.
    assert compare_main(_argv(synthetic, tmp_path / "y", tmp_path / "cache", "--heads", "mlp,rine")) == 2
    assert "rine read(s) the ln2 tap" in caplog.text
