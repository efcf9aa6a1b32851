"""Metrics against hand-computed cases and scikit-learn; the evaluation tool end to end."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from deepfake.data.perturbations import Perturbation
from deepfake.data.preprocess import Preprocess
from deepfake.data.test_sets import discover_test_set
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.evaluation.metrics import (
    accuracy_at,
    average_precision,
    best_threshold,
    domain_metrics,
    expected_calibration_error,
    mean_row,
    roc_auc,
)

from .conftest import labelled_image, run_test_script, write_images

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_accuracy_by_hand():
    labels, scores = [0, 0, 1, 1, 1], [0.1, 0.7, 0.6, 0.4, 0.9]
    assert accuracy_at(labels, scores, 0.5) == {"real_acc": 0.5, "fake_acc": 2 / 3, "acc": 0.6}


def test_best_threshold_with_ties():
    # Tied scores must fall on one side together: the best cut is between 0.3 and 0.6.
    labels, scores = [0, 0, 1, 0, 1, 1], [0.1, 0.3, 0.3, 0.3, 0.6, 0.8]
    threshold, acc = best_threshold(labels, scores)
    assert threshold == pytest.approx(0.45) and acc == pytest.approx(5 / 6)
    preds = np.array(scores) > threshold
    assert np.mean(preds == np.array(labels).astype(bool)) == acc


def test_all_equal_scores_and_one_class_domains():
    equal = domain_metrics([0, 1, 0, 1], [0.5] * 4)
    assert equal["ap"] == pytest.approx(0.5) and equal["auc"] == pytest.approx(0.5) and equal["best_acc"] == 0.5
    only_fake = domain_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert only_fake["real_acc"] is None and only_fake["ap"] is None and only_fake["auc"] is None
    assert only_fake["fake_acc"] == pytest.approx(2 / 3) and only_fake["best_acc"] is None


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(np.clip(labels * 0.3 + rng.normal(0.4, 0.25, 300), 0, 1), 2)  # rounding makes ties
    m = domain_metrics(labels, scores)
    assert m["ap"] == pytest.approx(average_precision_score(labels, scores))
    assert m["auc"] == pytest.approx(roc_auc_score(labels, scores))
    brute = max(np.mean((scores > t) == labels) for t in np.concatenate([[-1], np.unique(scores)]))
    assert m["best_acc"] == pytest.approx(brute)


def test_ece_by_hand():
    # Two confident correct (conf 0.9), one confident wrong (conf 0.9): |2/3 - 0.9|.
    assert expected_calibration_error([1, 0, 0], [0.9, 0.1, 0.9]) == pytest.approx(abs(2 / 3 - 0.9))
    assert mean_row([{"ap": 0.5}, {"ap": None}, {"ap": 1.0}], ["ap"]) == {"ap": 0.75}


@pytest.mark.parametrize("layout", ["ufd", "cnndetection", "single", "genimage"])
def test_layouts_are_discovered(tmp_path, layout):
    rng = np.random.default_rng(0)
    root = tmp_path / layout
    expected = {}
    if layout == "ufd":
        for g in ("dalle", "glide"):
            write_images(root / g / "0_real", 2, False, rng)
            write_images(root / g / "1_fake", 3, True, rng)
            expected[(g, "")] = 5
    elif layout == "cnndetection":
        for c in ("bedroom", "car"):
            write_images(root / "stylegan" / c / "0_real", 2, False, rng)
            write_images(root / "stylegan" / c / "1_fake", 2, True, rng)
            expected[("stylegan", c)] = 4
        write_images(root / "crn" / "0_real", 1, False, rng)
        write_images(root / "crn" / "1_fake", 1, True, rng)
        expected[("crn", "")] = 2
    elif layout == "single":
        write_images(root / "0_real", 2, False, rng)
        write_images(root / "1_fake", 2, True, rng)
        expected[("single", "")] = 4
    else:
        for split, n in (("train", 5), ("val", 2)):
            write_images(root / "midjourney" / split / "nature", n, False, rng)
            write_images(root / "midjourney" / split / "ai", n, True, rng)
        expected[("midjourney", "")] = 4  # the val split only
    counts = defaultdict(int)
    for s in discover_test_set(root):
        counts[(s.generator, s.category)] += 1
    assert dict(counts) == expected


def test_unknown_generator_lists_what_was_found(tmp_path):
    rng = np.random.default_rng(0)
    write_images(tmp_path / "gan" / "0_real", 1, False, rng)
    write_images(tmp_path / "gan" / "1_fake", 1, True, rng)
    with pytest.raises(ValueError, match="unknown generator.*nope; found: gan"):
        discover_test_set(tmp_path, ["nope"])


def _read_scores(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_results_are_recomputable_from_scores(trained_run, tmp_path):
    out = tmp_path / "eval"
    assert run_test_script(trained_run, out, "--robustness", "--sweep_jpeg", "30", "--sweep_sigma", "2") == 0
    results = json.loads((out / "results.json").read_text())
    scores = _read_scores(out / "scores.csv")
    assert [lv["label"] for lv in results["levels"]] == ["clean", "jpeg30", "blur2"]
    for level in results["levels"]:
        rows = [r for r in scores if r["level"] == level["label"]]
        for row in level["rows"]:
            mine = [r for r in rows if r["generator"] == row["generator"]]
            labels = np.array([int(r["label"]) for r in mine])
            probs = np.array([float(r["probability"]) for r in mine])
            assert row["n_real"] == int((labels == 0).sum()) == 4
            assert row["ap"] == pytest.approx(average_precision_score(labels, probs))
            assert row["acc"] == pytest.approx(np.mean((probs > results["threshold"]) == labels))
            assert row["real_acc"] == pytest.approx(np.mean(probs[labels == 0] <= results["threshold"]))
        assert level["mean"]["ap"] == pytest.approx(np.mean([r["ap"] for r in level["rows"]]))
        assert level["mean"]["acc"] == pytest.approx(np.mean([r["acc"] for r in level["rows"]]))
        labels = np.array([int(r["label"]) for r in rows])
        assert level["pooled"]["ap"] == pytest.approx(average_precision_score(labels, [float(r["probability"])
                                                                                      for r in rows]))
    clean = results["levels"][0]
    assert clean["mean"]["ap"] >= 0.95
    for name in ("roc.png", "pr.png", "histograms.png", "robustness.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    assert "| mean |" in (out / "results.md").read_text()
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 3 * 6  # 4 categories + mean + pooled, per level


def test_second_run_needs_overwrite(trained_run, tmp_path, caplog):
    out = tmp_path / "eval"
    assert run_test_script(trained_run, out, "--no_plots") == 0
    before = (out / "results.json").read_text()
    assert run_test_script(trained_run, out, "--no_plots") == 2
    assert "--overwrite" in caplog.text and (out / "results.json").read_text() == before
    assert run_test_script(trained_run, out, "--no_plots", "--overwrite") == 0


def test_test_script_reproduces_training_metrics_and_sklearn(trained_run, tmp_path):
    out = tmp_path / "eval"
    assert run_test_script(trained_run, out, "--no_plots", "--output", str(tmp_path / "r.json"),
                           "--categories", "car,cat", "--max_sample", "3") == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["sample_counts"]["car"]["real"] == {"used": 3, "found": 4}
    scores = _read_scores(out / "scores.csv")
    labels = np.array([int(r["label"]) for r in scores])
    probs = np.array([float(r["probability"]) for r in scores])
    assert {r["generator"] for r in scores} == {"car", "cat"} and len(scores) == 12
    pooled_ap = average_precision_score(labels, probs)
    assert pooled_ap >= 0.95


def test_perturbations_change_the_pixels_the_tower_sees(tmp_path):
    path = tmp_path / "x.png"
    labelled_image(np.random.default_rng(0), True, size=256).save(path)
    spec = Preprocess()
    clean = DeepfakeDataset([Sample(str(path), 1, "c")], spec).load(0)
    for perturb in (Perturbation(jpeg_quality=30), Perturbation(gaussian_sigma=2.0), Perturbation(resize_scale=0.5)):
        seen = DeepfakeDataset([Sample(str(path), 1, "c")], spec, perturb=perturb).load(0)
        assert seen.shape == clean.shape and (seen - clean).abs().mean().item() > 0.01
    blurred = DeepfakeDataset([Sample(str(path), 1, "c")], spec, perturb=Perturbation(gaussian_sigma=2.0)).load(0)
    # Blur removes high frequencies: neighbouring pixels become closer.
    assert torch.diff(blurred, dim=-1).abs().mean() < torch.diff(clean, dim=-1).abs().mean()


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_and_auc_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)
    # Coarse scores make many ties, the case where threshold handling matters.
    scores = np.round(rng.random(n), int(rng.integers(1, 4)))
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


@pytest.fixture
def as_rank_1(monkeypatch):
    """Evaluation as torchrun's rank 1 sees it: rank 1 only once the process group is joined."""
    import deepfake.evaluation.run as evaluation

    joined = {"group": False}
    audited = []

    def init_distributed(device):
        joined["group"] = True

    def extract_features(*args, **kwargs):
        return None  # rank 1's share is done; rank 0 gathers and scores

    def audit_samples(*args, **kwargs):
        audited.append(True)
        return {}

    monkeypatch.setattr(evaluation, "init_distributed", init_distributed)
    monkeypatch.setattr(evaluation, "is_main_process", lambda: not joined["group"])
    monkeypatch.setattr(evaluation, "extract_features", extract_features)
    monkeypatch.setattr(evaluation, "audit_samples", audit_samples)
    return audited


def test_rank_1_prints_no_summary_and_runs_no_bias_audit(trained_run, tmp_path, as_rank_1, capsys):
    assert run_test_script(trained_run, tmp_path / "eval", "--no_plots", "--max_sample", "2") == 0
    assert as_rank_1 == []
    assert "bias audit" not in capsys.readouterr().out


def test_rank_1_with_calibrate_real_and_threshold_calibrated_does_not_fail(trained_run, tmp_path, as_rank_1):
    run = tmp_path / "run"
    shutil.copytree(trained_run["run"], run)
    for sidecar in run.glob("*.calibration.json"):
        sidecar.unlink()  # no stored operating point: only the one rank 0 fits
    reals = tmp_path / "reals"
    write_images(reals, 4, False, np.random.default_rng(3))
    assert run_test_script({**trained_run, "run": run}, tmp_path / "eval", "--no_plots", "--max_sample", "2",
                           "--calibrate_real", str(reals), "--threshold", "calibrated") == 0
