"""The real-photo benchmark's tools: the spectral records, the split of a public set, the comparison table."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake.data.preprocess import preprocess_image
from deepfake.towers.loading import load_tower

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
NEW_RECORDS = {
    "spectrum-tiles256": ("tiles", 256, 4),
    "spectrum-tiles512": ("tiles", 512, 2),
    "spectrum-window1024": ("window", 1024, None),
}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _photo(rng: np.random.Generator, fake: bool, size: tuple[int, int]) -> Image.Image:
    """Noise; fakes get a 2-pixel checkerboard (a spectral peak at Nyquist)."""
    image = rng.normal(120, 30, (size[1], size[0], 3))
    if fake:
        image[::2, ::2] += 60
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("record", sorted(NEW_RECORDS))
def test_new_spectral_records_give_128_features_with_their_documented_analysis(record):
    mode, size, grid = NEW_RECORDS[record]
    tower = load_tower(record)
    pre = tower.preprocess
    assert (pre.mode, pre.size, pre.grid) == (mode, size, grid)
    assert tower.identity["model"] == record and tower.feature_dim == 128
    # A landscape photo smaller than the analysis in one side: tiles overlap, the window shrinks.
    image = _photo(np.random.default_rng(0), fake=False, size=(700, 400))
    x = preprocess_image(image, pre)[None]
    with torch.no_grad():
        embeds = tower(x).embeds
    assert embeds.shape == (1, 128) and torch.isfinite(embeds).all()


def _flat_set(root: Path, n_real: int, n_fake: int) -> Path:
    """A repository-like folder: images/{city,people}/{real,ai} plus thumbnails to leave out."""
    rng = np.random.default_rng(1)
    for domain in ("city", "people"):
        for label, n in (("real", n_real), ("ai", n_fake)):
            folder = root / "images" / domain / label
            (folder / "lqip").mkdir(parents=True)
            for i in range(n):
                _photo(rng, label == "ai", (48, 32)).save(folder / f"{i}.jpg", quality=90)
                _photo(rng, label == "ai", (8, 8)).save(folder / "lqip" / f"{i}.jpg")
    return root


def _assignment(out: Path) -> dict[str, str]:
    record = json.loads((out / "provenance.json").read_text())
    return {f["path"]: f["split"] for f in record["files"]}


def test_prepare_split_is_deterministic_stratified_disjoint_and_leaves_out_excluded_files(tmp_path):
    prepare = _script("prepare_real_photos")
    source = _flat_set(tmp_path / "repo", n_real=10, n_fake=9)
    argv = ["--source", str(source), "--path", "images", "--exclude", "*/lqip/*", "--seed", "3"]
    assert prepare.main([str(tmp_path / "a"), *argv]) == 0
    assert prepare.main([str(tmp_path / "b"), *argv]) == 0
    a, b = _assignment(tmp_path / "a"), _assignment(tmp_path / "b")
    assert a == b  # same files, same seed: the same split
    assert len(a) == 2 * (10 + 9) and not any("lqip" in p for p in a)
    # Every image in exactly one split, as links to the copied originals.
    linked = {}
    for split in ("train", "val", "test"):
        for link in (tmp_path / "a" / "split" / split).rglob("*.jpg"):
            target = Path(link.resolve()).relative_to((tmp_path / "a" / "images").resolve()).as_posix()
            assert target not in linked, f"{target} in {linked.get(target)} and {split}"
            linked[target] = split
    assert linked == a
    # Stratified: each (domain, class) group is cut 0.6 / 0.2 / 0.2.
    counts = json.loads((tmp_path / "a" / "provenance.json").read_text())["counts"]
    assert counts["train"]["city"] == {"real": 6, "fake": 5} and counts["test"]["people"]["real"] == 2
    # test.csv is exactly the held-out split.
    with open(tmp_path / "a" / "test.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(split == "test" for split in a.values())
    assert all((tmp_path / "a" / r["path"]).resolve().is_relative_to((tmp_path / "a" / "images").resolve())
               for r in rows)
    # Another seed cuts differently.
    assert prepare.main([str(tmp_path / "c"), *argv[:-1], "4"]) == 0
    assert _assignment(tmp_path / "c") != a


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_prepare_reads_the_named_commit_of_a_repository_not_its_later_state(tmp_path):
    prepare = _script("prepare_real_photos")
    repo = _flat_set(tmp_path / "repo", n_real=5, n_fake=5)

    def git(*args):
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    first = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for extra in range(5, 9):
        _photo(np.random.default_rng(extra), True, (48, 32)).save(repo / "images" / "city" / "ai" / f"{extra}.jpg")
    git("add", ".")
    git("commit", "-qm", "more")
    out = tmp_path / "out"
    assert prepare.main([str(out), "--repo", str(repo / ".git"), "--commit", first[:10], "--path", "images",
                         "--exclude", "*/lqip/*", "--name", "owner/set"]) == 0
    record = json.loads((out / "provenance.json").read_text())
    assert record["commit"] == first and record["name"] == "owner/set"
    assert len(record["files"]) == 20  # the four images added later are not read
    assert prepare.main([str(out), "--repo", str(repo / ".git"), "--path", "images"]) == 2  # OUT is not empty


def test_spectral_comparison_trains_on_each_set_and_tests_on_every_held_out_split(tmp_path, capsys):
    prepare, compare = _script("prepare_real_photos"), _script("spectral_real_photos")
    for name, seed in (("alpha", 0), ("beta", 1)):
        rng = np.random.default_rng(seed)
        root = tmp_path / "src" / name
        for label, fake in (("real", False), ("fake", True)):
            (root / label).mkdir(parents=True)
            for i in range(10):
                _photo(rng, fake, (96, 64)).save(root / label / f"{i}.png")
        assert prepare.main([str(tmp_path / name), "--source", str(root.parent), "--path", name, "--name", name]) == 0
    out = tmp_path / "cmp"
    argv = ["--data", str(tmp_path / "alpha"), "--data", f"b={tmp_path / 'beta'}", "--records",
            "spectrum-tiles256,spectrum-window512", "--output_dir", str(out), "--num_epochs", "3", "--quiet",
            "--learning_rate", "1e-3"]
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    document = json.loads((out / "results.json").read_text())
    rows = document["rows"]
    assert [(r["record"], r["train"]) for r in rows] == [(rec, s) for rec in ("spectrum-tiles256", "spectrum-window512")
                                                         for s in ("alpha", "b")]
    for row in rows:
        assert set(row["tests"]) == {"alpha", "b"}
        assert all(t["n_real"] == 2 and t["n_fake"] == 2 for t in row["tests"].values())  # the held-out split only
        assert 0.0 <= row["val_ap"] <= 1.0
    assert document["extra_train_flags"] == ["--learning_rate", "1e-3"]
    assert "python train_ClassifierHead.py --model spectrum-window512" in printed
    assert f"--dataset_dir {tmp_path / 'beta' / 'test.csv'}" in printed
    # Rerunning needs --overwrite, and then finds every feature in the cache.
    assert compare.main(argv) == 2
    shards = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.safetensors")}
    assert compare.main([*argv, "--overwrite"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.safetensors")} == shards


def test_relabel_reads_class_and_domain_from_file_paths_and_leaves_unmatched_files_out(tmp_path):
    prepare = _script("prepare_real_photos")
    source = tmp_path / "game"
    rng = np.random.default_rng(0)
    files = {"stimuli/AI/ai_faces_a/1.png": True, "stimuli/AI/ai_faces_b/1.png": True,  # one name, two folders
             "stimuli/Human/human_faces_a/2.jpg": False, "stimuli/Human/human_places_a/3.jpg": False,
             "stimuli/AI/ai_places_a/4.png": True, "stimuli/readme_thumb.png": False}
    for rel, fake in files.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        _photo(rng, fake, (40, 32)).save(source / rel)
    out = tmp_path / "out"
    assert prepare.main([str(out), "--source", str(source), "--path", "stimuli", "--ratios", "1,0,0",
                         "--relabel", r"^(?P<label>AI|Human)/\w+?_(?P<domain>faces|places)_", "--label", "human=real",
                         "--name", "owner/game"]) == 0
    record = json.loads((out / "provenance.json").read_text())
    placed = sorted((f["domain"], f["label"], f["path"].rsplit("/", 1)[-1]) for f in record["files"])
    assert placed == [("faces", "fake", "AI__ai_faces_a__1.png"), ("faces", "fake", "AI__ai_faces_b__1.png"),
                      ("faces", "real", "Human__human_faces_a__2.jpg"), ("places", "fake", "AI__ai_places_a__4.png"),
                      ("places", "real", "Human__human_places_a__3.jpg")]
    assert record["excluded_files"] == 1 and record["label_words"] == {"human": "real"}
    assert len(list((out / "split" / "train" / "faces" / "1_fake").iterdir())) == 2
    with pytest.raises(SystemExit):
        prepare.build_parser().parse_args([str(out), "--source", "x", "--path", "p", "--label", "human"])
    assert prepare.main([str(tmp_path / "o2"), "--source", str(source), "--path", "stimuli",
                         "--relabel", r"(AI|Human)/"]) == 2  # no group named label


def test_released_comparison_manifest_lists_each_sets_held_out_split_as_one_domain(tmp_path):
    compare = _script("compare_real_photos")
    sets = {}
    for name, files in (("alpha", {"split/test/city/0_real/1.png": "real", "split/test/city/1_fake/2.png": "fake"}),
                        ("beta", {"split/test/x/1_fake/3.png": "fake"})):
        root = tmp_path / name
        (root / "split" / "train").mkdir(parents=True)  # only test.csv's images belong in the manifest
        (root / "test.csv").write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in files.items()))
        sets[name] = root
    manifest = tmp_path / "m.csv"
    manifest.write_text(compare.held_out_manifest(sets))
    rows = list(csv.DictReader(manifest.open()))
    assert [(r["domain"], r["label"], Path(r["path"]).name) for r in rows] == [
        ("alpha", "real", "1.png"), ("alpha", "fake", "2.png"), ("beta", "fake", "3.png")]
    assert all(Path(r["path"]).is_absolute() and r["path"].startswith(str(tmp_path.resolve())) for r in rows)
    (sets["beta"] / "test.csv").unlink()
    with pytest.raises(SystemExit, match="beta: no test.csv"):
        compare.held_out_manifest(sets)
