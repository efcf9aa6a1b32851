"""--model NAME for a released whole network (tiny-ladeda-wildrf): its cached release file as a tower, alone or fused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import test_ClassifierHead
import train_ClassifierHead
from deepfake.__main__ import main as deepfake_main
from deepfake.model.checkpoint import load_checkpoint
from deepfake.towers.loading import check_model, load_tower
from deepfake.towers.weights import WeightsError

from .conftest import make_forensynths

RELEASE = (Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "released-detectors" / "tiny-ladeda"
           / "WildRF_Tiny_LaDeDa.pth")
NAME = "tiny-ladeda-wildrf"

pytestmark = pytest.mark.skipif(not RELEASE.is_file(), reason=f"the Tiny-LaDeDa release is not at {RELEASE}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_forensynths(tmp_path_factory.mktemp("named-data"), n_train=2, n_val=1, n_test=1)


def args(data, out, cache, model):
    return ["--dataset_dir", str(data), "--output_dir", str(out), "--model", model, "--cache_dir", str(cache),
            "--num_epochs", "2", "--learning_rate", "1e-3", "--batch_size", "8", "--num_workers", "0",
            "--precision", "fp32", "--quiet", "--overwrite"]


def test_a_released_network_name_before_its_import_exits_2_naming_the_import_command(data, tmp_path, capsys):
    with pytest.raises(WeightsError, match=rf"not in the cache.*`deepfake import {NAME} FILE`"):
        check_model(NAME)
    with pytest.raises(WeightsError, match=rf"part 2 \({NAME}\).*`deepfake import {NAME} FILE`"):
        check_model(f"spectrum+{NAME}")
    with pytest.raises(SystemExit) as exit_:
        train_ClassifierHead.main(args(data, tmp_path / "run", tmp_path / "cache", NAME))
    assert exit_.value.code == 2
    assert f"deepfake import {NAME} FILE" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_misspelt_network_name_is_offered_the_closest_name():
    with pytest.raises(WeightsError, match=rf"did you mean {NAME}\?"):
        check_model("tiny-ladeda-wildfr")


def test_a_network_name_loads_the_release_with_the_identity_of_its_file(tmp_path):
    assert deepfake_main(["import", NAME, str(RELEASE)]) == 0
    assert check_model(NAME) == NAME
    by_name, by_path = load_tower(NAME), load_tower(str(RELEASE))
    assert by_name.identity == by_path.identity
    assert by_name.identity["weights_sha256"] == "5e063100564d2ddfe9bf48074e351c8f2b38855552574a18a0738e7f2a764d80"


def test_spectrum_fused_with_a_network_name_trains_tests_and_predicts(data, tmp_path):
    assert deepfake_main(["import", NAME, str(RELEASE)]) == 0
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert train_ClassifierHead.main(args(data, run, cache, "spectrum+" + NAME)) == 0
    _, config, _ = load_checkpoint(run)
    widths = [p["feature_dim"] for p in config["tower"]["parts"]]
    assert widths[1] == 8 and config["head"]["in_dim"] == config["tower"]["feature_dim"] == sum(widths)
    assert config["tower"]["parts"][1]["weights_sha256"] == load_tower(str(RELEASE)).identity["weights_sha256"]
    assert test_ClassifierHead.main(["--checkpoint", str(run), "--dataset_dir", str(data / "test"),
                                     "--output_dir", str(tmp_path / "eval"), "--cache_dir", str(cache),
                                     "--num_workers", "0", "--quiet"]) == 0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["tower"]["family"] == "fused"
    images = sorted(str(p) for p in (data / "test").rglob("*.png"))[:2]
    out = tmp_path / "pred.json"
    assert deepfake_main(["predict", *images, "--checkpoint", str(run), "--output", str(out), "--quiet"]) == 0
    predictions = json.loads(out.read_text())["predictions"]
    assert len(predictions) == 2 and all(0.0 <= p["probability"] <= 1.0 for p in predictions)


def test_a_network_name_whose_imported_file_is_gone_is_refused_naming_the_import_command(tmp_path):
    copy = tmp_path / "elsewhere" / RELEASE.name
    copy.parent.mkdir()
    copy.write_bytes(RELEASE.read_bytes())
    assert deepfake_main(["import", NAME, str(copy)]) == 0
    assert check_model(NAME) == NAME
    copy.unlink()
    with pytest.raises(WeightsError, match=rf"was imported from is gone.*`deepfake import {NAME} FILE`"):
        check_model(NAME)
