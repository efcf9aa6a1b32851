"""Clean exits: interrupted extraction keeps its work, bad checkpoints exit 2, files follow the umask."""

from __future__ import annotations

import json
import os
import signal
import stat

import pytest
import torch

import test_ClassifierHead
import train_ClassifierHead
from deepfake.deepfake_dataset import DeepfakeDataset, scan_categories
from deepfake.features.cache import FeatureCache
from deepfake.features.extraction import ExtractionInterrupted, ExtractionSettings, extract_features
from deepfake.towers.clip_tower import CLIPTower
from deepfake.towers.loading import load_tower

from .conftest import TOWER, make_forensynths, train_args

SETTINGS = ExtractionSettings(batch_size=4, num_workers=0, progress=False)  # shards of 1024: none fills up


def cache_for(root, tower) -> FeatureCache:
    return FeatureCache(root, {"tower": tower.cache_identity(), "features": SETTINGS.cache_info()})


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_signal_during_extraction_keeps_the_images_done_so_far(tmp_path, monkeypatch, how):
    root = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=1)
    samples = [s for group in scan_categories(root / "train").values() for s in group]  # 16 images
    tower = load_tower(TOWER)
    dataset = DeepfakeDataset(samples, tower.preprocess)
    reference = extract_features(tower, dataset, SETTINGS, None)
    forward = CLIPTower.forward
    seen = []

    def signalled(self, pixels, layers=False):
        seen.append(len(pixels))
        if len(seen) == 3:  # the signal arrives during the third batch
            os.kill(os.getpid(), getattr(signal, how))
        return forward(self, pixels, layers)

    monkeypatch.setattr(CLIPTower, "forward", signalled)
    # Python's own Ctrl-C handler: a job a shell starts in the background inherits SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(ExtractionInterrupted, match="8 of 16 images"):
            extract_features(tower, dataset, SETTINGS, cache_for(tmp_path / "cache", tower))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back
    seen.clear()
    again = extract_features(tower, dataset, SETTINGS, cache_for(tmp_path / "cache", tower))
    assert sum(seen) == 8  # only the rest went through the tower
    assert torch.equal(again.embeds, reference.embeds)


def test_interrupted_training_says_how_to_continue(tmp_path, monkeypatch, caplog):
    data = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=1)

    def interrupted(self, pixels, layers=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(CLIPTower, "forward", interrupted)
    assert train_ClassifierHead.main(train_args(data, tmp_path / "run", tmp_path / "cache")) == 130
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0]
    assert not (tmp_path / "run").exists()


def test_checkpoint_without_preprocess_exits_2_naming_the_field(tmp_path, trained_run, caplog):
    run = tmp_path / "run"
    run.mkdir()
    for suffix in (".safetensors", ".json"):
        (run / f"best{suffix}").write_bytes((trained_run["run"] / f"best{suffix}").read_bytes())
    config = json.loads((run / "best.json").read_text())
    del config["preprocess"]
    (run / "best.json").write_text(json.dumps(config))
    code = test_ClassifierHead.main(["--checkpoint", str(run), "--dataset_dir", str(trained_run["data"] / "test"),
                                     "--output_dir", str(tmp_path / "eval"), "--quiet"])
    assert code == 2
    assert "best.json" in caplog.text and "'preprocess'" in caplog.text
    assert not (tmp_path / "eval").exists()  # a failed run leaves no empty folder


def test_unwritable_cache_names_the_cache_folder(tmp_path, forensynths, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    assert train_ClassifierHead.main(train_args(forensynths, tmp_path / "run", blocker)) == 2
    assert f"feature cache folder {blocker}" in caplog.text and "--cache_dir" in caplog.text


def test_output_files_follow_the_umask(tmp_path, forensynths):
    old = os.umask(0o002)  # a lab sharing run folders with its group
    try:
        assert train_ClassifierHead.main(train_args(forensynths, tmp_path / "run", tmp_path / "cache",
                                                    "--num_epochs", "1")) == 0
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "run").iterdir()] + list((tmp_path / "cache").rglob("*.*"))
    assert written and all(stat.S_IMODE(p.stat().st_mode) == 0o664 for p in written if p.is_file())
