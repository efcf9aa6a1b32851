"""Heads as hub repos: save_pretrained / from_pretrained, the hub cache offline, model card, push."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepfake import DeepfakeClassifier
from deepfake.__main__ import main as deepfake_main
from deepfake.model.checkpoint import CheckpointRefused
from deepfake.model.hub import head_config_for_sharing, is_repo_id

from .conftest import FIXTURE, TOWER

REPO_ROOT = Path(__file__).resolve().parent.parent


def sample_images(run: dict, n: int = 8) -> list[str]:
    return sorted(str(p) for p in (run["data"] / "test").rglob("*.png"))[:n]


@pytest.fixture(scope="module")
def saved_head(trained_run, tmp_path_factory) -> dict:
    clf = DeepfakeClassifier.from_pretrained(trained_run["run"])
    folder = clf.save_pretrained(tmp_path_factory.mktemp("pretrained") / "head")
    return {"folder": folder, "classifier": clf, "images": sample_images(trained_run)}


def test_save_pretrained_writes_safetensors_config_and_card(saved_head):
    assert sorted(p.name for p in saved_head["folder"].iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((saved_head["folder"] / "config.json").read_text())
    assert "checkpoint" not in config and "precision" not in config  # session keys stay out of the shared config
    tower = saved_head["classifier"].config["tower"]
    assert config["tower"] == {**tower, "model": Path(tower["model"]).name}  # a local tower: its folder's name


def test_save_then_from_pretrained_gives_identical_probabilities(saved_head):
    before = saved_head["classifier"].predict_proba(saved_head["images"])
    for source in (saved_head["folder"], saved_head["folder"] / "config.json", saved_head["folder"] / "model.safetensors"):
        after = DeepfakeClassifier.from_pretrained(source, model=TOWER).predict_proba(saved_head["images"])
        assert np.array_equal(before, after), source


def test_saved_head_keeps_refusing_another_tower(saved_head):
    with pytest.raises(CheckpointRefused, match="was trained on tower"):
        DeepfakeClassifier.from_pretrained(saved_head["folder"], model=str(FIXTURE / "lora2"))


def test_model_card_holds_the_runs_real_metrics(saved_head, trained_run):
    card = (saved_head["folder"] / "README.md").read_text()
    config = json.loads((trained_run["run"] / "best.json").read_text())
    run = json.loads((trained_run["run"] / "run.json").read_text())
    metrics = config["metrics"]
    assert f"| average precision | {100 * metrics['val_ap']:.2f}% |" in card
    assert f"| accuracy at 0.5 | {100 * metrics['val_acc']:.2f}% |" in card
    assert f"| loss | {metrics['val_loss']:.4f} |" in card
    assert f"| expected calibration error | {metrics['val_ece']:.4f} |" in card
    assert f"the validation threshold, {config['val_threshold']:.4f}" in card
    assert f"{run['n_train']} training, {run['n_val']} validation" in card
    assert f"`{Path(config['tower']['model']).name}`" in card and config["preprocess"]["mode"] in card
    assert "## Intended use and limits" in card
    assert ", ".join(config["categories"]) in card


def _hub_cache_layout(cache: Path, repo_id: str, folder: Path) -> str:
    """The layout huggingface_hub leaves after a download: blobs by hash, a snapshot of links, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, repo / "blobs" / digest)
        os.symlink(f"../../blobs/{digest}", snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_from_pretrained_reads_a_hub_repo_from_the_cache_offline(saved_head, tmp_path):
    cache = tmp_path / "hf" / "hub"
    _hub_cache_layout(cache, "acme/deepfake-head", saved_head["folder"])
    expected = saved_head["classifier"].predict_proba(saved_head["images"])
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO_ROOT)}
    code = ("import json, sys; from deepfake import DeepfakeClassifier; "
            f"clf = DeepfakeClassifier.from_pretrained('acme/deepfake-head', model={TOWER!r}); "
            "print(json.dumps({'p': clf.predict_proba(sys.argv[1:]).tolist(), 'ckpt': clf.config['checkpoint']}))")
    out = subprocess.run([sys.executable, "-c", code, *saved_head["images"]], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["p"] == expected.tolist()
    assert answer["ckpt"].startswith(str(cache))
    # A repo missing from the cache is a clear refusal, not a network attempt.
    code = "from deepfake import DeepfakeClassifier; DeepfakeClassifier.from_pretrained('acme/missing')"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "HF_HUB_OFFLINE is set and it is not in the hub cache" in out.stderr


class _FakeHfApi:
    """Records what would be sent to the hub."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, repo_id, folder_path, commit_message=None, allow_patterns=None, **kwargs):
        folder = Path(folder_path)
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name in (allow_patterns or [p.name])}
        self.calls.append(("upload_folder", repo_id, files, commit_message, self.token))

        class Info:
            commit_url = f"https://huggingface.co/{repo_id}/commit/0"
        return Info()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    import deepfake.model.hub

    _FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHfApi)
    monkeypatch.setattr(deepfake.model.hub, "hub_offline_reason", lambda: None)  # the fake hub is "online"
    return _FakeHfApi.calls


def test_push_to_hub_uploads_the_head_config_and_card(saved_head, fake_hub):
    url = saved_head["classifier"].push_to_hub("acme/detector", private=True, token="hf_x")
    assert url == "https://huggingface.co/acme/detector/commit/0"
    assert fake_hub[0] == ("create_repo", "acme/detector", True, True)
    kind, repo, files, _, token = fake_hub[1]
    assert (kind, repo, token) == ("upload_folder", "acme/detector", "hf_x")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert files["model.safetensors"] == (saved_head["folder"] / "model.safetensors").read_bytes()
    assert json.loads(files["config.json"]) == json.loads((saved_head["folder"] / "config.json").read_text())


def test_push_command_uploads_a_run_without_loading_its_tower(trained_run, fake_hub, monkeypatch, capsys):
    import deepfake.deepfake_classifier

    def no_tower(*args, **kwargs):
        raise AssertionError("push must not load the tower")

    monkeypatch.setattr(deepfake.deepfake_classifier, "load_tower", no_tower)
    assert deepfake_main(["push", str(trained_run["run"]), "acme/run-head"]) == 0
    kind, repo, files, message, _ = fake_hub[1]
    assert (kind, repo) == ("upload_folder", "acme/run-head")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    best = json.loads((trained_run["run"] / "best.json").read_text())
    assert json.loads(files["config.json"])["metrics"] == best["metrics"]
    assert "acme/run-head" in capsys.readouterr().out
    assert deepfake_main(["push", str(trained_run["run"] / "nothing-here"), "acme/x"]) == 2


def test_shared_config_keeps_base_names_of_local_paths(saved_head, trained_run):
    text = (saved_head["folder"] / "config.json").read_text()
    train_args = json.loads(text)["train_args"]
    for where in (trained_run["data"], trained_run["run"], trained_run["cache"]):
        assert str(where) not in text
    assert train_args["dataset_dir"] == Path(train_args["dataset_dir"]).name == trained_run["data"].name
    assert train_args["output_dir"] == trained_run["run"].name and train_args["cache_dir"] == trained_run["cache"].name
    assert train_args["num_epochs"] == saved_head["classifier"].config["train_args"]["num_epochs"]  # options kept
    shared = head_config_for_sharing({"train_args": {"model": "org/tower"},
                                      "calibration": {"real_dir": "/home/me/deploy/reals/", "threshold": 0.4,
                                                      "checkpoint": "/home/me/runs/x/best.safetensors"}})
    assert shared["train_args"]["model"] == "org/tower"  # a hub id is not a local path
    assert shared["calibration"] == {"real_dir": "reals", "threshold": 0.4}


def test_local_looking_names_are_never_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for local in ("runs/typo", "./org/name", "../org/name", "/org/name", "~/org/name"):
        assert not is_repo_id(local), local
        with pytest.raises(CheckpointRefused) as refused:
            DeepfakeClassifier.from_pretrained(local)
        assert "hub" not in str(refused.value), local
    assert is_repo_id("org/name") and is_repo_id("org/name@v1")


def test_missing_run_dir_and_unfetchable_repo_names_both_readings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(CheckpointRefused, match="no such local directory runz/typo, and not fetchable as hub repo "
                                                "runz/typo"):
        DeepfakeClassifier.from_pretrained("runz/typo")
