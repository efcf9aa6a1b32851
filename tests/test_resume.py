"""--resume: the same head as an uninterrupted run; a different run is refused; changed settings apply."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import deepfake.training.run as training
import train_ClassifierHead
from deepfake.towers.clip_tower import CLIPTower

from .conftest import make_forensynths, train_args

AUG = ("--blur_prob", "0.5", "--jpeg_prob", "0.5")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_forensynths(tmp_path_factory.mktemp("resume-data"), n_train=2, n_val=1, n_test=1)


def args(data, out, cache, *extra):
    # One thread: runs compared to the bit must round alike, whatever the load makes the default budget.
    return train_args(data, out, cache, "--num_epochs", "3", "--threads", "1", *extra)


def crash_at_epoch(monkeypatch, epoch: int) -> None:
    save = training.save_checkpoint

    def crashing(directory, name, state, config):
        if name == f"epoch_{epoch:03d}":
            raise KeyboardInterrupt  # killed while epoch 3 was being saved
        return save(directory, name, state, config)

    monkeypatch.setattr(training, "save_checkpoint", crashing)


def heads(run):
    return {name: load_file(str(run / f"{name}.safetensors")) for name in ("best", "epoch_003")}


def test_resume_after_a_crash_with_no_cache_and_augmentation_equals_an_uninterrupted_run(
        tmp_path, small, monkeypatch):
    assert train_ClassifierHead.main(args(small, tmp_path / "whole", tmp_path / "c", "--no_cache", *AUG)) == 0
    crash_at_epoch(monkeypatch, 3)
    assert train_ClassifierHead.main(args(small, tmp_path / "crashed", tmp_path / "c", "--no_cache", *AUG)) == 130
    monkeypatch.undo()
    assert train_ClassifierHead.main(args(small, tmp_path / "crashed", tmp_path / "c", "--no_cache", *AUG,
                                          "--resume")) == 0
    whole, resumed = heads(tmp_path / "whole"), heads(tmp_path / "crashed")
    for name in whole:
        assert all(torch.equal(whole[name][k], resumed[name][k]) for k in whole[name])
    history = [json.loads((tmp_path / run / "run.json").read_text())["history"] for run in ("whole", "crashed")]
    assert history[0] == history[1]


def test_changed_learning_rate_on_resume_is_applied_and_logged(tmp_path, small, caplog):
    out, cache = tmp_path / "run", tmp_path / "c"
    assert train_ClassifierHead.main(train_args(small, out, cache, "--num_epochs", "2")) == 0
    same = tmp_path / "same"
    same.mkdir()
    for f in out.iterdir():
        (same / f.name).write_bytes(f.read_bytes())
    assert train_ClassifierHead.main(train_args(small, same, cache, "--num_epochs", "3", "--resume")) == 0
    assert train_ClassifierHead.main(train_args(small, out, cache, "--num_epochs", "3", "--resume",
                                                "--learning_rate", "0.05")) == 0
    assert "--learning_rate 0.003 -> 0.05" in caplog.text
    with safe_open(str(out / "resume_state.safetensors"), "pt") as handle:
        groups = json.loads(handle.metadata()["param_groups"])
    assert groups[0]["lr"] == 0.05
    changed, unchanged = load_file(str(out / "epoch_003.safetensors")), load_file(str(same / "epoch_003.safetensors"))
    assert not torch.equal(changed["0.weight"], unchanged["0.weight"])


@pytest.mark.parametrize("change, field", [(("--seed", "7"), "seed"), (("--preprocess", "crop"), "preprocess"),
                                           (("--categories", "car,cat"), "data")])
def test_resume_of_a_different_run_is_refused_before_extraction(tmp_path, small, monkeypatch, caplog, change, field):
    out, cache = tmp_path / "run", tmp_path / "c"
    assert train_ClassifierHead.main(train_args(small, out, cache, "--num_epochs", "1")) == 0
    seen = []
    forward = CLIPTower.forward
    monkeypatch.setattr(CLIPTower, "forward", lambda self, p, layers=False: seen.append(1) or forward(self, p, layers))
    assert train_ClassifierHead.main(train_args(small, out, cache, "--num_epochs", "2", "--resume", *change)) == 2
    assert f"cannot resume: {field} differs" in caplog.text and seen == []


def test_resume_with_no_finished_epoch_starts_the_run(tmp_path, small, caplog):
    assert train_ClassifierHead.main(train_args(small, tmp_path / "run", tmp_path / "c", "--num_epochs", "1",
                                                "--resume")) == 0
    assert "no finished epoch to resume" in caplog.text
    assert (tmp_path / "run" / "best.safetensors").exists()


@pytest.mark.parametrize("first, then", [("/", ""), ("", "/")])
def test_resume_accepts_the_dataset_dir_with_or_without_a_trailing_slash(tmp_path, small, first, then):
    out, cache = tmp_path / "run", tmp_path / "c"
    assert train_ClassifierHead.main(train_args(f"{small}{first}", out, cache, "--num_epochs", "1")) == 0
    assert train_ClassifierHead.main(train_args(f"{small}{then}", out, cache, "--num_epochs", "2", "--resume")) == 0
    assert (out / "epoch_002.safetensors").is_file()


def test_changed_schedule_patience_and_retention_on_resume_are_logged(tmp_path, small, caplog):
    out, cache = tmp_path / "run", tmp_path / "c"
    assert train_ClassifierHead.main(train_args(small, out, cache, "--num_epochs", "1")) == 0
    assert train_ClassifierHead.main(train_args(
        small, out, cache, "--num_epochs", "3", "--resume", "--lr_schedule", "step", "--lr_milestones", "2",
        "--lr_gamma", "0.5", "--patience", "4", "--keep_last", "1")) == 0
    for change in ("--lr_schedule constant -> step", "--lr_milestones None -> [2]", "--lr_gamma 0.1 -> 0.5",
                   "--patience 0 -> 4", "--keep_last 0 -> 1"):
        assert change in caplog.text
    assert sorted(p.name for p in out.glob("epoch_*.safetensors")) == ["epoch_003.safetensors"]  # --keep_last 1


@pytest.mark.parametrize("before, after, option", [
    ((), ("--contrastive_weight", "0.5"), "--contrastive_weight 0.0 -> 0.5"),
    (("--contrastive_weight", "0.5"), (), "--contrastive_weight 0.5 -> 0.0"),
    (("--contrastive_weight", "0.5"), ("--contrastive_weight", "0.5", "--contrastive_temperature", "0.2"),
     "--contrastive_temperature 0.07 -> 0.2"),
    (("--head", "layers", "--proj_dim", "8"), ("--head", "layers", "--proj_dim", "16"), "--proj_dim 8 -> 16"),
    ((), ("--head", "linear"), '--head "mlp" -> "linear"'),
])
def test_resume_with_another_loss_or_head_exits_2_naming_the_option(tmp_path, small, caplog, before, after, option):
    out, cache = tmp_path / "run", tmp_path / "c"
    assert train_ClassifierHead.main(train_args(small, out, cache, "--num_epochs", "1", *before)) == 0
    assert train_ClassifierHead.main(train_args(small, out, cache, "--num_epochs", "2", "--resume", *after)) == 2
    assert "cannot resume" in caplog.text and option in caplog.text


def test_a_resume_state_saved_before_heads_kept_ood_statistics_resumes_as_an_uninterrupted_run(
        tmp_path, small, monkeypatch):
    from safetensors.torch import save_file

    from deepfake.model.checkpoint import RESUME_STATE

    assert train_ClassifierHead.main(args(small, tmp_path / "whole", tmp_path / "c")) == 0
    crash_at_epoch(monkeypatch, 3)
    assert train_ClassifierHead.main(args(small, tmp_path / "crashed", tmp_path / "c")) == 130
    monkeypatch.undo()
    state = tmp_path / "crashed" / f"{RESUME_STATE}.safetensors"
    with safe_open(str(state), "pt") as handle:
        meta = handle.metadata()
    tensors = load_file(str(state))
    assert any(k.startswith("head.ood.") for k in tensors)
    save_file({k: v for k, v in tensors.items() if not k.startswith("head.ood.")}, str(state), metadata=meta)
    assert train_ClassifierHead.main(args(small, tmp_path / "crashed", tmp_path / "c", "--resume")) == 0
    whole, resumed = heads(tmp_path / "whole"), heads(tmp_path / "crashed")
    for name in whole:
        assert all(torch.equal(whole[name][k], resumed[name][k]) for k in whole[name])
