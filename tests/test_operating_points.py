"""Calibration on known-real images, one-class domains end to end, and training's printed summary."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from safetensors.torch import load_file

import test_ClassifierHead
from deepfake import DeepfakeClassifier
from deepfake.__main__ import main as deepfake_main
from deepfake.model.calibration import calibration_record, read_calibration, write_calibration
from deepfake.model.checkpoint import save_checkpoint

from .conftest import run_test_script, write_images


def test_calibrate_real_reaches_the_target_fpr_on_its_folder(trained_run, tmp_path):
    reals = tmp_path / "deploy_reals"
    rng = np.random.default_rng(5)
    write_images(reals, 40, False, rng)
    write_images(reals / "more", 20, True, rng)  # "reals" that look fake to the head: the FPR is non-trivial
    out = tmp_path / "eval"
    assert run_test_script(trained_run, out, "--no_plots", "--calibrate_real", str(reals), "--target_fpr", "0.05") == 0
    results = json.loads((out / "results.json").read_text())
    cal = results["calibration"]
    assert cal["n_images"] == 60 and cal["target_fpr"] == 0.05
    assert abs(cal["n_false_positives"] - 0.05 * 60) < 1 and cal["n_false_positives"] <= 3
    assert results["threshold"] == cal["threshold"] and results["threshold_source"] == "calibration"
    # Stored for predict: beside the checkpoint and in the results folder, read back by one function.
    assert read_calibration(trained_run["run"])["threshold"] == cal["threshold"]
    assert read_calibration(out / "calibration.json")["threshold"] == cal["threshold"]
    assert read_calibration(out / "results.json")["threshold"] == cal["threshold"]


def test_one_class_domains_report_only_what_they_define(trained_run, tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    write_images(data / "paired" / "0_real", 3, False, rng)
    write_images(data / "paired" / "1_fake", 3, True, rng)
    write_images(data / "fakes_only" / "1_fake", 3, True, rng)
    write_images(data / "reals_only" / "0_real", 3, False, rng)
    base = ["--checkpoint", str(trained_run["run"]), "--dataset_dir", str(data), "--cache_dir", str(trained_run["cache"]),
            "--num_workers", "0", "--quiet"]
    assert test_ClassifierHead.main(base + ["--output_dir", str(tmp_path / "refused")]) == 2
    out = tmp_path / "eval"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak to the user, plots included
        assert test_ClassifierHead.main(base + ["--output_dir", str(out), "--allow_one_class"]) == 0
    level = json.loads((out / "results.json").read_text())["levels"][0]
    rows = {r["domain"]: r for r in level["rows"]}
    assert rows["fakes_only"]["fake_acc"] is not None and rows["fakes_only"]["real_acc"] is None
    for name in ("fakes_only", "reals_only"):
        for key in ("acc", "ap", "auc", "tpr_at_fpr5", "best_acc", "ufd_acc", "ece"):
            assert rows[name][key] is None
    assert rows["reals_only"]["real_acc"] is not None and rows["reals_only"]["fake_acc"] is None
    mean = level["mean"]
    assert mean["covers"] == ["paired"] and mean["not_covered"] == ["fakes_only", "reals_only"]
    # Every column of the mean covers the same domain: the paired one.
    for key in ("real_acc", "fake_acc", "acc", "ap"):
        assert mean[key] == pytest.approx(rows["paired"][key])
    assert mean["domain"] == "mean (1 of 3)"
    assert (out / "histograms.png").exists() and (out / "roc.png").exists()
    assert "left out (one class, metrics undefined): fakes_only, reals_only" in (out / "results.md").read_text()


def test_training_prints_counts_and_audit_before_work_and_records_them(tmp_path, forensynths, capsys):
    import train_ClassifierHead

    from .conftest import train_args

    args = train_args(forensynths, tmp_path / "run", tmp_path / "cache", "--num_epochs", "1", "--align", "size:64")
    assert train_ClassifierHead.main(args) == 0
    printed = capsys.readouterr().out
    assert "80 training and 24 validation images" in printed and "bias audit" in printed
    assert printed.index("bias audit") < printed.index("epoch   1")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["audit"]["domains"]["car"]["real"]["n"] == 10
    assert run["config"]["align"] == {"jpeg_quality": None, "size": 64, "order": ["size", "jpeg"]}


def test_evaluating_an_aligned_head_without_its_alignment_warns(tmp_path, forensynths, caplog):
    import train_ClassifierHead

    from .conftest import train_args

    run, cache = tmp_path / "run", tmp_path / "cache"
    assert train_ClassifierHead.main(train_args(forensynths, run, cache, "--num_epochs", "1", "--align", "jpeg:90")) == 0
    base = ["--checkpoint", str(run), "--dataset_dir", str(forensynths / "test"), "--cache_dir", str(cache),
            "--num_workers", "0", "--quiet", "--no_plots", "--max_sample", "2"]
    caplog.clear()
    assert test_ClassifierHead.main(base + ["--output_dir", str(tmp_path / "a")]) == 0
    assert "trained with --align jpeg:90 and is evaluated with --align none" in caplog.text
    caplog.clear()
    assert test_ClassifierHead.main(base + ["--output_dir", str(tmp_path / "b"), "--align", "jpeg:90"]) == 0
    assert "trained with --align" not in caplog.text
    assert json.loads((tmp_path / "b" / "results.json").read_text())["align"]["jpeg_quality"] == 90


def _copy_run(trained_run: dict, tmp_path) -> dict:
    run = tmp_path / "run"
    shutil.copytree(trained_run["run"], run)
    return {**trained_run, "run": run}


def _retrain_weights(weights) -> None:
    """Replace the head's weights and their config, as a second training run into the same directory does."""
    state = load_file(weights)
    config = json.loads(weights.with_suffix(".json").read_text())
    save_checkpoint(weights.parent, weights.stem, {k: v + 0.01 for k, v in state.items()}, config)


def test_calibration_fitted_on_earlier_weights_is_ignored_and_not_shared(trained_run, tmp_path, caplog):
    run = _copy_run(trained_run, tmp_path)["run"]
    weights = run / "best.safetensors"
    record = calibration_record(str(tmp_path / "reals"), 0.123, 0.05, np.linspace(0, 1, 40))
    write_calibration(tmp_path / "eval", str(weights), record, {}, overwrite=True)
    assert read_calibration(run)["threshold"] == 0.123  # fitted on these weights: used
    _retrain_weights(weights)
    caplog.clear()
    assert read_calibration(run) is None
    assert "best.calibration.json: calibration ignored" in caplog.text and str(weights) in caplog.text
    clf = DeepfakeClassifier.from_pretrained(run)
    with pytest.raises(ValueError, match="no calibrated threshold"):
        clf.decision_threshold("calibrated")
    shared = json.loads((clf.save_pretrained(tmp_path / "head") / "config.json").read_text())
    assert "calibration" not in shared


def test_threshold_calibrated_without_calibrate_real_records_the_stored_calibration(trained_run, tmp_path):
    run = _copy_run(trained_run, tmp_path)
    record = calibration_record("deploy_reals", 0.37, 0.02, np.linspace(0, 1, 50))
    write_calibration(tmp_path / "fit", str(run["run"] / "best.safetensors"), record, {}, overwrite=True)
    out = tmp_path / "eval"
    assert run_test_script(run, out, "--no_plots", "--max_sample", "2", "--threshold", "calibrated") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["threshold"] == 0.37 and results["threshold_source"] == "checkpoint calibration"
    cal = results["calibration"]
    assert (cal["real_dir"], cal["target_fpr"], cal["threshold"]) == ("deploy_reals", 0.02, 0.37)


def test_a_calibration_fitted_on_protocol_crops_is_refused_on_images_the_tower_resizes(trained_run, tmp_path, caplog):
    """``test --protocol ufd --calibrate_real`` fits on centre crops; predict, serve and the API prepare images the
    tower's way, where that threshold would not give its FPR: refused naming both preparations and the fix."""
    run = _copy_run(trained_run, tmp_path)
    reals = tmp_path / "deploy_reals"
    write_images(reals, 12, False, np.random.default_rng(7))
    args = ("--no_plots", "--max_sample", "2", "--calibrate_real", str(reals), "--overwrite")
    assert run_test_script(run, tmp_path / "fit_ufd", "--protocol", "ufd", *args) == 0
    assert read_calibration(run["run"])["preprocess"]["mode"] == "crop"
    image = str(reals / "000.png")
    caplog.clear()
    code = deepfake_main(["predict", image, "--checkpoint", str(run["run"]), "--threshold", "calibrated",
                          "--num_workers", "0", "--output", str(tmp_path / "scores.csv")])
    err = caplog.text
    assert code == 2 and "fitted on images prepared as crop" in err and "prepared as resize" in err
    assert "--calibrate_real REAL_DIR" in err and not (tmp_path / "scores.csv").exists()
    clf = DeepfakeClassifier.from_pretrained(run["run"])
    with pytest.raises(ValueError, match="prepared as crop .* but these are prepared as resize"):
        clf.predict(image, threshold="calibrated")
    # Under the protocol it was fitted with it holds; without it the test command refuses it too.
    assert run_test_script(run, tmp_path / "same", "--protocol", "ufd", "--no_plots", "--max_sample", "2",
                           "--threshold", "calibrated") == 0
    assert run_test_script(run, tmp_path / "other", "--no_plots", "--threshold", "calibrated") == 2
    # Refitted the tower's way, predict uses it.
    assert run_test_script(run, tmp_path / "fit_tower", *args) == 0
    assert deepfake_main(["predict", image, "--checkpoint", str(run["run"]), "--threshold", "calibrated",
                          "--num_workers", "0"]) == 0
    assert DeepfakeClassifier.from_pretrained(run["run"]).predict(image, threshold="calibrated").label is not None
