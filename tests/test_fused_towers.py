"""--model A+B: one head on several frozen towers, each part cached under its own key, each image decoded once."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import test_ClassifierHead
import train_ClassifierHead
from deepfake import DeepfakeClassifier
from deepfake.__main__ import main as deepfake_main
from deepfake.data.layouts import parse_label_dirs
from deepfake.deepfake_dataset import DeepfakeDataset, training_samples
from deepfake.features.extraction import ExtractionSettings, extract_features
from deepfake.model.checkpoint import CheckpointRefused, load_checkpoint
from deepfake.model.heads import head_from_config
from deepfake.towers.clip_tower import CLIPTower
from deepfake.towers.families.spectrum import SpectrumTower
from deepfake.towers.fused import FusedTower, fused_parts
from deepfake.towers.loading import check_model, load_tower
from deepfake.towers.tiny import save_tower
from deepfake.towers.weights import WeightsError
from deepfake.training.fusion import part_shares

from .conftest import make_forensynths

PAIR = "spectrum+spectrum-tiles256"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_forensynths(tmp_path_factory.mktemp("fused-data"), n_train=2, n_val=1, n_test=1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A tiny CLIP tower: a semantic part whose record asks for no standardisation."""
    return save_tower("clip", tmp_path_factory.mktemp("towers") / "tiny-clip")


@pytest.fixture(scope="module")
def cheap(clip):
    """A fused tower whose parts cost little per image (the acceptance pair, spectrum+spectrum-tiles256,
    reads 64 tiles of 256 px per image, even of a small one: it is trained once, in ``fused_run``)."""
    return f"{clip}+spectrum-crop256"


def args(data, out, cache, model, *extra):
    return ["--dataset_dir", str(data), "--output_dir", str(out), "--model", model, "--cache_dir", str(cache),
            "--num_epochs", "2", "--learning_rate", "1e-3", "--batch_size", "8", "--num_workers", "0",
            "--precision", "fp32", "--quiet", "--overwrite", *extra]


@pytest.fixture
def passes(monkeypatch):
    """Images through each spectral tower, by its record's name, and images decoded."""
    counts = Counter()
    forward, clip_forward = SpectrumTower.forward, CLIPTower.forward
    read = DeepfakeDataset.read

    def counted(self, pixel_values, layers=False):
        counts[self.backbone.name] += len(pixel_values)
        return forward(self, pixel_values, layers)

    def counted_clip(self, pixel_values, layers=False):
        counts["clip"] += len(pixel_values)
        return clip_forward(self, pixel_values, layers)

    def counted_read(self, index):
        counts["decoded"] += 1
        return read(self, index)

    monkeypatch.setattr(SpectrumTower, "forward", counted)
    monkeypatch.setattr(CLIPTower, "forward", counted_clip)
    monkeypatch.setattr(DeepfakeDataset, "read", counted_read)
    return counts


# --- the name ------------------------------------------------------------------------


def test_a_plus_joins_parts_but_an_existing_path_with_a_plus_is_one_tower(tmp_path):
    assert fused_parts("spectrum+spectrum-tiles256") == ["spectrum", "spectrum-tiles256"]
    assert fused_parts("spectrum") is None
    folder = save_tower("clip", tmp_path / "clip+spectrum")
    assert fused_parts(str(folder)) is None and check_model(str(folder)) == str(folder)
    assert not isinstance(load_tower(str(folder)), FusedTower)
    with pytest.raises(WeightsError, match="empty part"):
        fused_parts("spectrum+")
    with pytest.raises(WeightsError, match="named twice"):
        fused_parts("spectrum+spectrum")


def test_a_misspelt_part_is_named_with_the_closest_known_tower():
    with pytest.raises(WeightsError, match=r"part 2 \(spectrm-tiles256\).*did you mean spectrum-tiles256"):
        check_model("spectrum+spectrm-tiles256")
    with pytest.raises(SystemExit) as exit_:
        train_ClassifierHead.main(["--dataset_dir", "x", "--output_dir", "y", "--model", "spectrum+spectrm-tiles256"])
    assert exit_.value.code == 2


def test_the_fused_feature_is_the_parts_features_side_by_side_from_one_decode(data, cheap, passes):
    fused = load_tower(cheap)
    parts = list(fused.parts)
    assert fused.feature_dim == sum(p.feature_dim for p in parts) == 16 + 128
    train, _ = training_samples(str(data), None, 0.2, 0, parse_label_dirs(None))
    settings = ExtractionSettings(batch_size=4, progress=False)
    joined = extract_features(fused, DeepfakeDataset(train, fused.preprocess), settings).embeds
    assert passes["decoded"] == len(train)  # once per image for both parts
    alone = [extract_features(p, DeepfakeDataset(train, p.preprocess), settings).embeds for p in parts]
    assert torch.equal(joined, torch.cat(alone, dim=1))


# --- the cache -----------------------------------------------------------------------


def test_cache_reuse_both_ways_a_fused_run_and_its_parts_runs_extract_nothing_for_each_other(data, cheap, tmp_path,
                                                                                           passes):
    parts = fused_parts(cheap)
    # Single runs first: the fused run after them decodes and extracts nothing.
    first = tmp_path / "singles-first"
    for number, part in enumerate(parts):
        assert train_ClassifierHead.main(args(data, tmp_path / f"single{number}", first, part)) == 0
    images = passes["clip"]
    assert images > 0 and passes["spectrum-crop256"] == images and passes["decoded"] == 2 * images
    passes.clear()
    assert train_ClassifierHead.main(args(data, tmp_path / "fused", first, cheap)) == 0
    assert passes["clip"] == passes["spectrum-crop256"] == passes["decoded"] == 0
    # No cache key of its own: the parts' two keys hold every feature.
    assert len([p for p in first.iterdir() if (p / "key.json").is_file()]) == 2
    # The fused run first: one decode per image for both parts; the single runs after it extract nothing.
    then = tmp_path / "fused-first"
    passes.clear()
    assert train_ClassifierHead.main(args(data, tmp_path / "fused2", then, cheap)) == 0
    assert passes["clip"] == passes["spectrum-crop256"] == passes["decoded"] == images
    passes.clear()
    for number, part in enumerate(parts):
        assert train_ClassifierHead.main(args(data, tmp_path / f"after{number}", then, part)) == 0
    assert passes["clip"] == passes["spectrum-crop256"] == passes["decoded"] == 0


def test_a_fused_run_extracts_only_for_the_part_that_lacks_features(data, cheap, tmp_path, passes):
    cache = tmp_path / "cache"
    assert train_ClassifierHead.main(args(data, tmp_path / "one", cache, "spectrum-crop256")) == 0
    images = passes["spectrum-crop256"]
    passes.clear()
    assert train_ClassifierHead.main(args(data, tmp_path / "fused", cache, cheap)) == 0
    assert passes["clip"] == passes["decoded"] == images and passes["spectrum-crop256"] == 0


# --- train, test, predict, serve ------------------------------------------------------


@pytest.fixture(scope="module")
def fused_run(data, tmp_path_factory):
    base = tmp_path_factory.mktemp("fused-run")
    out, cache = base / "run", base / "cache"
    assert train_ClassifierHead.main(args(data, out, cache, PAIR)) == 0
    return {"data": data, "run": out, "cache": cache}


def test_a_fused_head_reads_the_sum_of_its_parts_widths_and_its_checkpoint_names_every_part(fused_run):
    _, config, _ = load_checkpoint(fused_run["run"])
    assert config["head"]["in_dim"] == config["tower"]["feature_dim"] == 640 + 128
    assert [p["model"] for p in config["tower"]["parts"]] == ["spectrum", "spectrum-tiles256"]
    assert [p["feature_dim"] for p in config["tower"]["parts"]] == [640, 128]
    parts = config["preprocess"]["parts"]
    assert config["preprocess"]["mode"] == "fused" and [p.get("colour", False) for p in parts] == [True, False]


def test_a_fused_head_tests_and_predicts_as_one_tower_does(fused_run, tmp_path):
    run = fused_run["run"]
    assert test_ClassifierHead.main(["--checkpoint", str(run), "--dataset_dir", str(fused_run["data"] / "test"),
                                     "--output_dir", str(tmp_path / "eval"), "--cache_dir", str(fused_run["cache"]),
                                     "--num_workers", "0", "--quiet"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    scores = {row["path"]: float(row["probability"]) for row in _csv(tmp_path / "eval" / "scores.csv")}
    clf = DeepfakeClassifier.from_pretrained(run)
    assert isinstance(clf.tower, FusedTower) and clf.tower.feature_dim == 768
    paths = sorted(scores)[:4]
    for path, prediction in zip(paths, clf.predict(paths)):
        assert prediction.probability == pytest.approx(scores[path], abs=2e-3)
    assert results["tower"]["family"] == "fused"
    out = tmp_path / "pred.json"
    assert deepfake_main(["predict", *paths, "--checkpoint", str(run), "--output", str(out), "--quiet"]) == 0
    assert [p["probability"] for p in json.loads(out.read_text())["predictions"]] == pytest.approx(
        [scores[p] for p in paths], abs=2e-3)
    assert deepfake_main(["predict", paths[0], "--checkpoint", str(run), "--tiles", "4", "--quiet"]) == 2


def _csv(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_fused_head_serves_and_its_shared_folder_loads_again(fused_run, tmp_path):
    import threading
    import time
    import urllib.request

    from deepfake.cli.serve import build_parser, build_server

    from .test_serve import post

    server = build_server(build_parser().parse_args(["--checkpoint", str(fused_run["run"]), "--port", "0"]))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started:
                break
            time.sleep(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=30) as response:
            assert json.loads(response.read())["status"] == "ok"
        path = next((fused_run["data"] / "test").rglob("*.png"))
        status, answer = post(f"http://{host}:{port}", [(path.name, path.read_bytes())])
        assert status == 200
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    clf = DeepfakeClassifier.from_pretrained(fused_run["run"])
    expected = clf.predict(str(path)).probability
    assert answer["predictions"][0]["probability"] == pytest.approx(expected, abs=1e-6)
    folder = clf.save_pretrained(tmp_path / "shared")
    assert "part 2: `spectrum-tiles256`" in (folder / "README.md").read_text()
    again = DeepfakeClassifier.from_pretrained(folder)
    assert again.predict(str(path)).probability == pytest.approx(expected, abs=1e-6)


def test_a_part_that_cannot_be_loaded_is_named(data, clip, tmp_path):
    moved = shutil.copytree(clip, tmp_path / "tiny-clip")
    out = tmp_path / "run"
    assert train_ClassifierHead.main(args(data, out, tmp_path / "cache", f"{moved}+spectrum-crop256")) == 0
    shutil.rmtree(moved)
    with pytest.raises(CheckpointRefused, match=r"part 1 \(.*tiny-clip\) cannot be loaded"):
        DeepfakeClassifier.from_pretrained(out)


def test_a_fused_checkpoint_with_a_wrong_part_field_is_refused_naming_the_part(fused_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fused_run["run"], run)
    sidecar = run / "best.json"
    config = json.loads(sidecar.read_text())
    config["preprocess"]["parts"][1]["size"] = -3
    sidecar.write_text(json.dumps(config))
    with pytest.raises(CheckpointRefused, match=r"part 2, 'spectrum-tiles256'.*preprocess.size"):
        load_checkpoint(run)


# --- what a fused run refuses -----------------------------------------------------------


@pytest.mark.parametrize("extra", [["--head", "layers"], ["--head", "rine"], ["--feature_layers", "1,2"]])
def test_a_fused_run_refuses_per_block_tokens_with_exit_2(data, cheap, tmp_path, caplog, extra):
    assert train_ClassifierHead.main(args(data, tmp_path / "run", tmp_path / "cache", cheap, *extra)) == 2
    assert "fused tower gives each part's final feature" in caplog.text
    assert not (tmp_path / "run").exists()


# --- standardisation per part, and each part's weight ------------------------------------


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-cache")


def test_standardize_auto_decides_per_part_with_each_parts_own_statistics(data, cheap, shared_cache, tmp_path,
                                                                          capsys):
    fused = tmp_path / "fused"
    assert train_ClassifierHead.main(args(data, fused, shared_cache, cheap)) == 0
    alone = tmp_path / "alone"
    assert train_ClassifierHead.main(args(data, alone, shared_cache, "spectrum-crop256")) == 0
    state, single = load_file(str(fused / "best.safetensors")), load_file(str(alone / "best.safetensors"))
    width = json.loads((fused / "best.json").read_text())["tower"]["parts"][0]["feature_dim"]
    # The CLIP part's record asks for no standardisation: identity there; the spectral part: its own statistics.
    assert torch.equal(state["standardizer.mean"][:width], torch.zeros(width))
    assert torch.equal(state["standardizer.std"][:width], torch.ones(width))
    assert torch.allclose(state["standardizer.mean"][width:], single["standardizer.mean"])
    assert torch.allclose(state["standardizer.std"][width:], single["standardizer.std"])
    summary = json.loads((fused / "run.json").read_text())
    assert [p["standardized"] for p in summary["parts"]] == [False, True]
    assert sum(p["weight_share"] for p in summary["parts"]) == pytest.approx(1.0)
    printed = capsys.readouterr().out
    share = summary["parts"][1]["weight_share"]
    assert f"weight share {100 * share:.1f}%" in printed.split("part weights")[1]


def test_standardize_on_and_off_apply_to_every_part(data, cheap, shared_cache, tmp_path):
    for choice, expected in (("on", [True, True]), ("off", [False, False])):
        out = tmp_path / choice
        assert train_ClassifierHead.main(args(data, out, shared_cache, cheap, "--standardize", choice)) == 0
        assert [p["standardized"] for p in json.loads((out / "run.json").read_text())["parts"]] == expected


def test_weight_shares_read_the_first_layer_on_inputs_of_unit_spread():
    head = head_from_config({"kind": "linear", "in_dim": 3, "num_classes": 2})
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    # Parts of widths 2 and 1: all the weight is on the first part.
    assert part_shares(head, [2, 1], torch.ones(3)) == pytest.approx([1.0, 0.0])
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    assert part_shares(head, [2, 1], torch.ones(3)) == pytest.approx([0.5, 0.5])
    # An unscaled input that spreads twice as far weighs four times as much (squared norms).
    assert part_shares(head, [2, 1], torch.tensor([2.0, 1.0, 1.0])) == pytest.approx([0.8, 0.2])
    # A standardised input: the head already divides by its spread, so the spread cancels.
    head = head_from_config({"kind": "mlp", "in_dim": 3, "hidden": 4, "standardize": True})
    head.standardizer.set_statistics(torch.zeros(3), torch.tensor([2.0, 1.0, 1.0]))
    with torch.no_grad():
        head[0].weight.copy_(torch.tensor([[1.0, 0.0, 1.0]] * 4))
    assert part_shares(head, [2, 1], torch.tensor([2.0, 1.0, 1.0])) == pytest.approx([0.5, 0.5])
    assert part_shares(head_from_config({"kind": "layers", "hidden_size": 4, "blocks": [1, 2]}), [2, 1],
                       torch.ones(3)) is None


def test_the_run_summary_records_each_parts_weight_share(fused_run):
    summary = json.loads((fused_run["run"] / "run.json").read_text())
    parts = summary["parts"]
    assert [p["model"] for p in parts] == ["spectrum", "spectrum-tiles256"]
    assert [p["feature_dim"] for p in parts] == [640, 128]
    assert sum(p["weight_share"] for p in parts) == pytest.approx(1.0)
    assert all(0 < p["weight_share"] < 1 for p in parts)
    assert np.isclose(parts[0]["dims_share"], 640 / 768)


def test_the_bias_audit_of_a_fused_tower_gives_each_parts_size_hint(tmp_path):
    from deepfake.data.audit import audit_samples

    rng = np.random.default_rng(0)
    items = []
    for label, side in ((0, 64), (1, 96)):  # reals and fakes of different sizes: a size flag
        for i in range(4):
            path = tmp_path / f"{label}-{i}.png"
            Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
            items.append((str(path), "photos", label))
    fused = load_tower("spectrum-tiles256+spectrum-crop256")
    flags = audit_samples(items, fused.preprocess)["flags"]
    hints = " ".join(json.dumps(flag) for flag in flags)
    assert "4x4 native tiles of 256 px" in hints and "crops 256 px without resizing" in hints
