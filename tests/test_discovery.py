"""Unambiguous discovery: label names vs. domain names, explicit label folders, manifests, split."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import deepfake.__main__ as cli
import test_ClassifierHead
from deepfake.data.layouts import LayoutError, parse_label_dirs
from deepfake.data.manifests import read_manifest
from deepfake.data.test_sets import discover_test_set
from deepfake.deepfake_dataset import training_samples

from .conftest import make_forensynths, write_images

SCENES = ("city", "interior", "nature", "people")


def by_domain(samples) -> dict:
    out: dict = {}
    for s in samples:
        out.setdefault(s.generator, Counter())[s.label] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def make_scenes(root: Path, real="real", fake="ai") -> Path:
    rng = np.random.default_rng(0)
    for i, scene in enumerate(SCENES):
        write_images(root / scene / real, 2 + i, False, rng)
        write_images(root / scene / fake, 3, True, rng)
    return root


def test_scene_domains_named_like_labels_are_four_domains(tmp_path):
    samples = discover_test_set(make_scenes(tmp_path))
    assert by_domain(samples) == {"city": (2, 3), "interior": (3, 3), "nature": (4, 3), "people": (5, 3)}
    for s in samples:
        assert s.label == (1 if Path(s.path).parent.name == "ai" else 0)


@pytest.mark.parametrize("domain", ["real", "fake", "ai", "nature"])
def test_a_domain_named_like_a_label_keeps_its_own_labels(tmp_path, domain):
    rng = np.random.default_rng(0)
    write_images(tmp_path / domain / "0_real", 2, False, rng)
    write_images(tmp_path / domain / "1_fake", 3, True, rng)
    write_images(tmp_path / "other" / "0_real", 1, False, rng)
    write_images(tmp_path / "other" / "1_fake", 1, True, rng)
    assert by_domain(discover_test_set(tmp_path)) == {domain: (2, 3), "other": (1, 1)}


def test_label_folder_with_images_and_label_folders_inside_is_refused_with_both_readings(tmp_path):
    rng = np.random.default_rng(0)
    write_images(tmp_path / "nature", 2, False, rng)          # nature/ holds images itself ...
    write_images(tmp_path / "nature" / "real", 2, False, rng)  # ... and label folders
    write_images(tmp_path / "nature" / "ai", 2, True, rng)
    write_images(tmp_path / "ai", 2, True, rng)
    with pytest.raises(LayoutError) as err:
        discover_test_set(tmp_path)
    message = str(err.value)
    assert "reads two ways" in message and "(1) the real folder of the root" in message
    assert "(2) a domain named 'nature' whose label folders are nature/ai/, nature/real/" in message


def test_label_folder_over_unlabelled_and_labelled_subfolders_is_refused_with_both_readings(tmp_path):
    rng = np.random.default_rng(0)
    write_images(tmp_path / "ai" / "city", 2, True, rng)    # fakes by scene ...
    write_images(tmp_path / "ai" / "nature", 2, True, rng)  # ... one scene named like GenImage's real label
    write_images(tmp_path / "real" / "city", 2, False, rng)
    with pytest.raises(LayoutError) as err:
        discover_test_set(tmp_path)
    message = str(err.value)
    assert "ai/ reads two ways" in message and "(1) the fake folder of the root, with all its sub-folders fake" in message
    assert "(2) a domain named 'ai' with label folders ai/nature/ and unlabelled images in ai/city/" in message


def test_label_dirs_parsing():
    assert parse_label_dirs(["real=cam,Photos", "fake=gen"]) == {"cam": 0, "photos": 0, "gen": 1}
    for bad in (["real=a"], ["real=a", "fake=a"], ["truth=a", "fake=b"]):
        with pytest.raises(LayoutError):
            parse_label_dirs(bad)


def _table(results: dict) -> list[tuple]:
    return [(r["domain"], r["n_real"], r["n_fake"], round(r["ap"], 9), round(r["acc"], 9))
            for r in results["levels"][0]["rows"]]


def test_label_dirs_and_a_csv_manifest_give_the_same_table_as_folders(trained_run, tmp_path):
    src = trained_run["data"] / "test"
    custom = tmp_path / "custom"
    rows = []
    for category in sorted(os.listdir(src)):
        for label_dir, new, label in (("0_real", "camera", "real"), ("1_fake", "generated", "fake")):
            (custom / category).mkdir(parents=True, exist_ok=True)
            os.symlink(src / category / label_dir, custom / category / new)
            for name in sorted(os.listdir(src / category / label_dir)):
                rows.append({"path": str(src / category / label_dir / name), "label": label, "domain": category})
    manifest = tmp_path / "test.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "domain"])
        writer.writeheader()
        writer.writerows(rows)

    def run(name, *data):
        out = tmp_path / name
        assert test_ClassifierHead.main(["--checkpoint", str(trained_run["run"]), *data, "--output_dir", str(out),
                                         "--cache_dir", str(trained_run["cache"]), "--num_workers", "0", "--quiet",
                                         "--no_plots"]) == 0
        return json.loads((out / "results.json").read_text())

    folders = run("folders", "--dataset_dir", str(src))
    # Symlinked label folders are not followed by discovery, so copy the links' targets as real folders.
    for category in sorted(os.listdir(custom)):
        for new in ("camera", "generated"):
            link = custom / category / new
            target = os.readlink(link)
            link.unlink()
            link.mkdir()
            for name in os.listdir(target):
                os.symlink(Path(target) / name, link / name)
    labelled = run("label_dirs", "--dataset_dir", str(custom), "--label_dirs", "real=camera", "fake=generated")
    listed = run("manifest", "--dataset_dir", str(manifest))
    assert _table(folders) == _table(labelled) == _table(listed)
    assert len(_table(folders)) == 4


def test_manifest_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"path": "a.png", "label": "real"}\n{"path": "b.png", "label": "maybe"}\n')
    with pytest.raises(LayoutError, match=r"m.jsonl:2: label 'maybe'"):
        discover_test_set(bad)


def test_jsonl_manifest_trains_with_its_splits(tmp_path):
    rng = np.random.default_rng(0)
    write_images(tmp_path / "imgs" / "r", 6, False, rng)
    write_images(tmp_path / "imgs" / "f", 6, True, rng)
    lines = []
    for i in range(6):
        for folder, label in (("r", 0), ("f", 1)):
            lines.append({"path": f"imgs/{folder}/{i:03d}.png", "label": label, "domain": "d",
                          "split": "val" if i == 5 else "train"})
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    train, val = training_samples(manifest, None, 0.1, 0)
    assert len(train) == 10 and len(val) == 2 and {s.category for s in train} == {"d"}
    assert all(Path(s.path).is_file() for s in train + val)


def _split_listing(out: Path) -> dict:
    return {str(p.relative_to(out)): os.readlink(p) for p in sorted(out.rglob("*")) if p.is_symlink()}


def test_split_is_deterministic_stratified_and_keeps_names(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "flat"
    write_images(src / "real", 30, False, rng)
    write_images(src / "ai", 10, True, rng, ext=".jpg")
    assert cli.main(["split", str(src), str(tmp_path / "a"), "--ratios", "0.8,0.1,0.1", "--seed", "7"]) == 0
    assert cli.main(["split", str(src), str(tmp_path / "b"), "--ratios", "0.8,0.1,0.1", "--seed", "7"]) == 0
    assert cli.main(["split", str(src), str(tmp_path / "c"), "--ratios", "0.8,0.1,0.1", "--seed", "8"]) == 0
    a, b, c = (_split_listing(tmp_path / x) for x in "abc")
    assert a == b and a != c
    counts = Counter((k.split("/")[0], k.split("/")[2]) for k in a)
    assert counts == {("train", "0_real"): 24, ("val", "0_real"): 3, ("test", "0_real"): 3,
                      ("train", "1_fake"): 8, ("val", "1_fake"): 1, ("test", "1_fake"): 1}
    assert sorted(Path(k).name for k in a) == sorted(os.listdir(src / "real") + os.listdir(src / "ai"))
    assert all(Path(v).resolve().is_file() for v in a.values())
    # The result is a ForenSynths layout the trainer reads, and a second split into it is refused.
    train, val = training_samples(tmp_path / "a", None, 0.1, 0)
    assert len(train) == 32 and len(val) == 4
    assert cli.main(["split", str(src), str(tmp_path / "a")]) == 2


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_with_a_utf8_byte_order_mark_is_read(tmp_path, suffix):
    rng = np.random.default_rng(0)
    write_images(tmp_path / "imgs" / "r", 2, False, rng)
    write_images(tmp_path / "imgs" / "f", 2, True, rng)
    rows = [(f"imgs/{folder}/{i:03d}.png", label) for i in range(2) for folder, label in (("r", "real"), ("f", "fake"))]
    if suffix == ".csv":
        text = "path,label\n" + "".join(f"{path},{label}\n" for path, label in rows)
    else:
        text = "".join(json.dumps({"path": path, "label": label}) + "\n" for path, label in rows)
    manifest = tmp_path / f"excel{suffix}"
    manifest.write_bytes(text.encode("utf-8-sig"))  # Excel's "CSV UTF-8" starts with a byte-order mark
    entries = read_manifest(manifest)
    assert [(Path(e.path).relative_to(tmp_path).as_posix(), e.label) for e in entries] == [
        (path, 1 if label == "fake" else 0) for path, label in rows]


def test_training_samples_find_the_label_folders_once(tmp_path, monkeypatch):
    from deepfake import deepfake_dataset

    root = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=0)
    walks = []
    find = deepfake_dataset.find_label_folders
    monkeypatch.setattr(deepfake_dataset, "find_label_folders", lambda *a, **k: walks.append(1) or find(*a, **k))
    train, val = deepfake_dataset.training_samples(root, None, 0.1, 0)
    assert len(walks) == 1 and train and val
