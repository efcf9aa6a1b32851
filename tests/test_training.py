"""Training end to end, reproducibility, the output-dir guard and dataset errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import train_ClassifierHead
from deepfake.data.layouts import LayoutError
from deepfake.data.perturbations import BlurJpegAugment
from deepfake.data.preprocess import Preprocess
from deepfake.deepfake_dataset import DeepfakeDataset, scan_categories, stratified_split, training_samples
from deepfake.features.extraction import FeatureTable
from deepfake.towers.clip_tower import CLIPTower
from deepfake.training.sources import CachedFeatures

from .conftest import CATEGORIES, make_forensynths, train_args, write_images


def test_training_end_to_end_reaches_high_val_ap(trained_run):
    run = trained_run["run"]
    for epoch in range(1, 7):
        assert (run / f"epoch_{epoch:03d}.safetensors").is_file()
        assert (run / f"epoch_{epoch:03d}.json").is_file()
    config = json.loads((run / "best.json").read_text())
    assert config["metrics"]["val_ap"] >= 0.95
    ood = config["head"].pop("ood")
    n_val = json.loads((run / "run.json").read_text())["n_val"]
    assert ood["dim"] == 32 and ood["n_calibration"] == n_val and ood["threshold"] > 0
    assert config["head"] == {"kind": "mlp", "in_dim": 32, "hidden": 256, "dropout": 0.1, "num_classes": 2}
    assert config["categories"] == list(CATEGORIES)
    assert config["seed"] == 512 and config["preprocess"]["mode"] == "resize"
    weights = load_file(str(run / "best.safetensors"))
    assert weights["0.weight"].shape == (256, 32) and weights["3.weight"].shape == (2, 256)


def test_same_seed_same_metrics(tmp_path, forensynths):
    histories = []
    for name in ("a", "b"):
        assert train_ClassifierHead.main(train_args(forensynths, tmp_path / name, tmp_path / f"cache-{name}")) == 0
        histories.append(json.loads((tmp_path / name / "run.json").read_text())["history"])
    assert histories[0] == histories[1]


def test_cache_and_no_cache_train_the_same_head(tmp_path, forensynths):
    assert train_ClassifierHead.main(train_args(forensynths, tmp_path / "cached", tmp_path / "cache")) == 0
    assert train_ClassifierHead.main(train_args(forensynths, tmp_path / "plain", tmp_path / "unused", "--no_cache")) == 0
    assert not (tmp_path / "unused").exists()
    cached = json.loads((tmp_path / "cached" / "run.json").read_text())["history"]
    plain = json.loads((tmp_path / "plain" / "run.json").read_text())["history"]
    for a, b in zip(cached, plain):
        assert a["val_acc"] == b["val_acc"] and a["val_ap"] == pytest.approx(b["val_ap"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
    for name in ("epoch_006", "best"):
        wa = load_file(str(tmp_path / "cached" / f"{name}.safetensors"))
        wb = load_file(str(tmp_path / "plain" / f"{name}.safetensors"))
        for key in wa:
            assert (wa[key] - wb[key]).abs().max().item() <= 1e-5


def test_non_empty_output_dir_needs_overwrite_or_resume(tmp_path, forensynths, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train_ClassifierHead.main(train_args(forensynths, out, tmp_path / "cache")) == 2
    assert "--overwrite" in caplog.text
    assert train_ClassifierHead.main(train_args(forensynths, out, tmp_path / "cache", "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_continues_to_the_same_result(tmp_path, forensynths):
    full = train_args(forensynths, tmp_path / "full", tmp_path / "cache")
    assert train_ClassifierHead.main(full) == 0
    half = train_args(forensynths, tmp_path / "half", tmp_path / "cache")
    half[half.index("--num_epochs") + 1] = "3"
    assert train_ClassifierHead.main(half) == 0
    rest = train_args(forensynths, tmp_path / "half", tmp_path / "cache", "--resume")
    assert train_ClassifierHead.main(rest) == 0
    a = load_file(str(tmp_path / "full" / "epoch_006.safetensors"))
    b = load_file(str(tmp_path / "half" / "epoch_006.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- dataset layouts and their errors ----------------------------------------------


def test_flat_layout_with_stratified_holdout(tmp_path):
    rng = np.random.default_rng(0)
    for category in ("car", "cat"):
        write_images(tmp_path / category / "real", 10, False, rng)
        write_images(tmp_path / category / "fake", 10, True, rng, ext=".jpg")
    train, val = training_samples(tmp_path, None, 0.2, seed=1)
    assert len(train) == 32 and len(val) == 8
    assert {(s.category, s.label) for s in val} == {("car", 0), ("car", 1), ("cat", 0), ("cat", 1)}
    assert training_samples(tmp_path, None, 0.2, seed=1) == (train, val)
    assert training_samples(tmp_path, None, 0.2, seed=2)[1] != val
    train, val = training_samples(tmp_path, ["cat"], 0.2, seed=1)
    assert {s.category for s in train + val} == {"cat"}


def test_forensynths_layout_uses_its_splits(forensynths):
    train, val = training_samples(forensynths, ["car", "horse"], 0.1, seed=0)
    assert {s.split for s in train} == {"train"} and {s.split for s in val} == {"val"}
    assert len(train) == 2 * 2 * 10 and len(val) == 2 * 2 * 3


def test_genimage_label_names(tmp_path):
    rng = np.random.default_rng(0)
    write_images(tmp_path / "sd" / "nature", 3, False, rng)
    write_images(tmp_path / "sd" / "ai", 3, True, rng)
    grouped = scan_categories(tmp_path)
    assert sorted(s.label for s in grouped["sd"]) == [0, 0, 0, 1, 1, 1]


def test_stratified_split_rejects_bad_ratio():
    with pytest.raises(ValueError, match="val_ratio"):
        stratified_split([], 1.5, 0)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such directory"),
        ("unknown_category", "unknown category boat; found: car, cat"),
        ("one_label", "category 'cat' has only real images"),
        ("empty", "empty folder"),
        ("no_labels", "no label folders"),
    ],
)
def test_bad_datasets_give_clear_errors(tmp_path, caplog, case, message):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    if case != "missing":
        write_images(data / "car" / "0_real", 2, False, rng)
        write_images(data / "car" / "1_fake", 2, True, rng)
        if case != "no_labels":
            write_images(data / "cat" / "0_real", 2, False, rng)
        if case == "empty":
            (data / "cat" / "1_fake").mkdir(parents=True)
        elif case not in ("one_label", "no_labels"):
            write_images(data / "cat" / "1_fake", 2, True, rng)
        if case == "no_labels":
            for p in (data / "car").iterdir():
                p.rename(data / "car" / f"x{p.name}")
    extra = ["--categories", "car,boat"] if case == "unknown_category" else []
    with caplog.at_level(logging.ERROR):
        code = train_ClassifierHead.main(train_args(data, tmp_path / "run", tmp_path / "cache", *extra))
    assert code == 2
    assert message in caplog.text
    with pytest.raises(LayoutError):
        training_samples(data, ["car", "boat"] if case == "unknown_category" else None, 0.1, 0)


def test_checkpoint_with_missing_tower_key_fails_training(tmp_path, forensynths, caplog):
    import shutil

    from .conftest import FIXTURE

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(FIXTURE / "lora0" / "config.json", broken / "config.json")
    state = torch.load(FIXTURE / "lora0" / "pytorch_model.bin", weights_only=True)
    del state["visual_projection.weight"]
    torch.save(state, broken / "pytorch_model.bin")
    argv = train_args(forensynths, tmp_path / "run", tmp_path / "cache")
    argv[argv.index("--model") + 1] = str(broken)
    assert train_ClassifierHead.main(argv) == 2
    assert "missing tower keys: visual_projection.weight" in caplog.text


def test_small_forensynths_helper_counts(tmp_path):
    root = make_forensynths(tmp_path, n_train=1, n_val=1, n_test=1)
    assert len(list(root.rglob("*.png"))) == 3 * 4 * 2


def test_augmented_views_are_reproducible_and_distinct(forensynths):
    samples = [s for group in scan_categories(forensynths / "train").values() for s in group][:3]
    augment = BlurJpegAugment(blur_prob=1.0, blur_sigma=3.0, jpeg_prob=1.0, jpeg_quality=(30, 60))
    dataset = DeepfakeDataset(samples, Preprocess(), augment=augment, seed=1)
    clean = DeepfakeDataset(samples, Preprocess()).load(0)
    first = dataset.load(0)
    assert torch.equal(first, dataset.load(0))  # a view is the same draw every time it is asked for
    dataset.view = 1
    assert not torch.equal(first, dataset.load(0)) and not torch.equal(first, clean)


def test_cached_views_are_drawn_per_image_and_epoch():
    n, dim = 64, 4
    views = [FeatureTable(embeds=torch.full((n, dim), float(v)), ok=torch.ones(n, dtype=torch.bool))
             for v in range(3)]
    source = CachedFeatures(views, torch.Generator().manual_seed(0))
    batches = [torch.arange(n)]
    epochs = [torch.cat([f.embeds for _, f in source.epoch_batches(batches)])[:, 0] for _ in range(2)]
    for picked in epochs:
        assert set(picked.tolist()) == {0.0, 1.0, 2.0}  # every view is used, one per image
    assert not torch.equal(epochs[0], epochs[1])  # and the draw changes with the epoch


def test_augmented_views_are_extracted_once(tmp_path, forensynths, monkeypatch):
    aug = ("--blur_prob", "0.5", "--jpeg_prob", "0.5", "--aug_views", "3")
    cache = tmp_path / "cache"
    assert train_ClassifierHead.main(train_args(forensynths, tmp_path / "a", cache, *aug)) == 0
    assert len(list(cache.glob("*/key.json"))) == 4  # three training views and the clean validation set
    seen = []
    forward = CLIPTower.forward
    monkeypatch.setattr(CLIPTower, "forward", lambda self, pixels, layers=False: seen.append(len(pixels))
                        or forward(self, pixels, layers))
    assert train_ClassifierHead.main(train_args(forensynths, tmp_path / "b", cache, *aug)) == 0
    assert seen == []  # every view came from the cache
    history = [json.loads((tmp_path / name / "run.json").read_text())["history"] for name in ("a", "b")]
    assert history[0] == history[1]


def test_cached_views_skip_a_row_that_any_view_could_not_read():
    n, dim = 8, 4
    ok = torch.ones(n, dtype=torch.bool)
    broken = ok.clone()
    broken[3] = False  # row 3 unreadable in the second view only: its features there are zeros
    views = [FeatureTable(embeds=torch.ones(n, dim), ok=ok),
             FeatureTable(embeds=torch.ones(n, dim) * broken[:, None], ok=broken)]
    source = CachedFeatures(views, torch.Generator().manual_seed(0))
    rows = torch.cat([idx for idx, _ in source.epoch_batches([torch.arange(n)])])
    assert 3 not in rows.tolist() and len(rows) == n - 1
    assert views[0].ok.all()  # the table itself is left as extracted


def test_a_run_folder_without_best_resolves_to_epoch_1000_not_999(tmp_path):
    from deepfake.model.checkpoint import resolve_checkpoint_path

    for epoch in (2, 999, 1000):
        (tmp_path / f"epoch_{epoch:03d}.safetensors").write_bytes(b"")
    assert resolve_checkpoint_path(tmp_path).name == "epoch_1000.safetensors"
