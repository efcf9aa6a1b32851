"""`deepfake compare`: detectors side by side, one tower pass per tower, caches a later `test` reuses.

The detectors are UniversalFakeDetect's probe and RINE heads (2class, 4class) in the released files'
formats, sized for the tiny CLIP tower of tests/published-heads/ and imported as
tests/test_published_heads.py does. Tower passes are counted by wrapping the CLIP tower's forward.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from deepfake.__main__ import main as deepfake_main
from deepfake.data.preprocess import Preprocess
from deepfake.model.published import RELEASES, TargetTower
from deepfake.towers.clip_tower import CLIPTower
from deepfake.towers.loading import load_tower

from .conftest import make_forensynths

PUBLISHED = Path(__file__).parent / "published-heads"
TINY_CLIP = PUBLISHED / "openai-tiny" / "hf"
RUNTIME = ["--precision", "fp32", "--num_workers", "0", "--quiet"]


def _release_file(release: str, variant: str, path: Path, seed: int) -> Path:
    """A file in a release's format, sized for the tiny CLIP tower, with random weights."""
    record = RELEASES[release]
    dims = TargetTower.of(load_tower(str(TINY_CLIP), defer=True)).shape
    g = torch.Generator().manual_seed(seed)
    torch.save({k: torch.randn(s, generator=g) * 0.3 for k, s in record.shapes(record.variants[variant], dims).items()},
               path)
    return path


@pytest.fixture(scope="module")
def detectors(tmp_path_factory) -> dict:
    """Three imported detectors on the tiny CLIP tower (crop at its size, as published) and a test set."""
    base = tmp_path_factory.mktemp("compare")
    runs = {}
    for name, release, variant, file in (("ufd", "ufd", "", "fc_weights.pth"),
                                         ("rine-2class", "rine", "2class", "model_2class_trainable.pth"),
                                         ("rine-4class", "rine", "4class", "model_4class_trainable.pth")):
        (base / name).mkdir()
        path = _release_file(release, variant, base / name / file, seed=len(runs))
        runs[name] = base / "runs" / name
        assert deepfake_main(["import", release, str(path), "--out", str(runs[name]), "--tower", str(TINY_CLIP),
                              "--quiet"]) == 0
    data = make_forensynths(base / "data", n_train=0, n_val=0, n_test=2)
    return {"runs": runs, "test": data / "test", "n_images": len(list((data / "test").rglob("*.png")))}


@pytest.fixture
def tower_passes(monkeypatch) -> list[int]:
    """Images through the CLIP tower's forward, one entry per call."""
    calls: list[int] = []
    forward = CLIPTower.forward

    def counted(self, pixel_values, *args, **kwargs):
        calls.append(len(pixel_values))
        return forward(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(CLIPTower, "forward", counted)
    return calls


def _compare(runs: list[Path], test: Path, out: Path, cache: Path, *extra: str) -> dict:
    argv = ["compare", *map(str, runs), "--dataset_dir", str(test), "--output_dir", str(out), "--cache_dir", str(cache),
            *RUNTIME, *extra]
    assert deepfake_main(argv) == 0
    return json.loads((out / "results.json").read_text())


def _scores(path: Path, column: str) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["path"]: float(row[column]) for row in csv.DictReader(handle)}


def test_compare_of_ufd_and_two_rine_heads_runs_the_tower_once_per_image_and_later_tests_extract_nothing(
        detectors, tower_passes, tmp_path, capsys):
    runs, cache = detectors["runs"], tmp_path / "cache"
    results = _compare(list(runs.values()), detectors["test"], tmp_path / "cmp", cache)
    # One forward of each image gave UFD's projected embedding and RINE's ln_2 tokens of every block.
    assert sum(tower_passes) == detectors["n_images"]
    assert [p["detectors"] for p in results["passes"]] == [["rine-2class", "rine-4class", "ufd"]]
    printed = capsys.readouterr().out
    assert "1 tower pass(es)" in printed and "ufd AP" in printed and "rine-4class acc" in printed
    # Each cache key is the one a single test uses: testing each detector alone runs the tower on nothing.
    tower_passes.clear()
    for name, run in runs.items():
        out = tmp_path / f"test-{name}"
        assert deepfake_main(["test", "--checkpoint", str(run), "--dataset_dir", str(detectors["test"]), "--output_dir",
                              str(out), "--cache_dir", str(cache), "--no_plots", *RUNTIME]) == 0
        assert sum(tower_passes) == 0, f"test of {name} ran the tower"
        # ... and scores every image as compare did.
        assert _scores(out / "scores.csv", "probability") == _scores(tmp_path / "cmp" / "scores.csv", name)
        single = json.loads((out / "results.json").read_text())["levels"][0]["mean"]
        assert single["ap"] == pytest.approx(results["results"][name]["mean"]["ap"])
    for name in ("results.csv", "results.md", "ap.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0


def test_a_cached_compare_runs_no_tower_and_one_new_detector_extracts_only_for_itself(detectors, tower_passes,
                                                                                       tmp_path):
    runs, cache = detectors["runs"], tmp_path / "cache"
    _compare([runs["ufd"]], detectors["test"], tmp_path / "one", cache)
    assert sum(tower_passes) == detectors["n_images"]
    tower_passes.clear()
    results = _compare(list(runs.values()), detectors["test"], tmp_path / "all", cache)
    assert sum(tower_passes) == detectors["n_images"]  # the RINE heads' ln_2 tokens, in one pass for both
    tower_passes.clear()
    _compare(list(runs.values()), detectors["test"], tmp_path / "again", cache)
    assert sum(tower_passes) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["results"] == results["results"]


def _with_preprocess(run: Path, out: Path, preprocess: Preprocess) -> Path:
    """A copy of ``run`` whose checkpoint says its images are prepared with ``preprocess``."""
    out.mkdir()
    for file in run.iterdir():
        (out / file.name).write_bytes(file.read_bytes())
    config = json.loads((out / "best.json").read_text())
    (out / "best.json").write_text(json.dumps({**config, "preprocess": preprocess.to_dict()}))
    return out


def test_detectors_with_other_preprocessing_run_a_pass_each_unless_a_protocol_prepares_all_alike(
        detectors, tower_passes, tmp_path):
    crop = detectors["runs"]["ufd"]
    resized = _with_preprocess(crop, crop.parent / "ufd-resize", Preprocess(mode="resize", size=56))
    results = _compare([crop, resized], detectors["test"], tmp_path / "own", tmp_path / "cache")
    assert sum(tower_passes) == 2 * detectors["n_images"]
    assert [p["detectors"] for p in results["passes"]] == [["ufd"], ["ufd-resize"]]
    # The same weights on other inputs: other scores.
    assert results["results"]["ufd"]["mean"]["ap"] is not None
    assert _scores(tmp_path / "own" / "scores.csv", "ufd") != _scores(tmp_path / "own" / "scores.csv", "ufd-resize")
    tower_passes.clear()
    results = _compare([crop, resized], detectors["test"], tmp_path / "protocol", tmp_path / "cache2",
                       "--protocol", "ufd")
    assert sum(tower_passes) == detectors["n_images"]
    assert [p["detectors"] for p in results["passes"]] == [["ufd", "ufd-resize"]]
    protocol_scores = tmp_path / "protocol" / "scores.csv"
    assert _scores(protocol_scores, "ufd") == _scores(protocol_scores, "ufd-resize")


def test_compare_refuses_a_detector_that_names_nothing_and_writes_nothing(detectors, tmp_path, caplog):
    out = tmp_path / "out"
    argv = ["compare", str(detectors["runs"]["ufd"]), str(tmp_path / "missing"), "--dataset_dir",
            str(detectors["test"]), "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), *RUNTIME]
    assert deepfake_main(argv) == 2
    assert "missing: no such run folder or checkpoint file" in caplog.text
    assert not out.exists()


def test_a_checkpoint_file_is_a_detector_as_its_run_folder_is(detectors, tmp_path):
    run = detectors["runs"]["ufd"]
    results = _compare([run / "best.safetensors", run], detectors["test"], tmp_path / "out", tmp_path / "cache")
    assert [d["name"] for d in results["detectors"]] == ["ufd/best", "ufd"]
    assert results["results"]["ufd/best"] == results["results"]["ufd"]
