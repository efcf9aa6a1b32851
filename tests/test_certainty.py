"""Numbers that say how sure they are: bootstrap intervals, pooled rows, small-domain marks, the
out-of-distribution flag of a head, and the thresholds each output labels at."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import train_ClassifierHead
from deepfake.data.synthetic import generate
from deepfake.data.test_sets import TestSample
from deepfake.deepfake_classifier import DeepfakeClassifier
from deepfake.evaluation.domains import SMALL_DOMAIN, domain_rows, pooled_row, row_metrics
from deepfake.evaluation.metrics import _weighted_ap, average_precision, bootstrap_intervals
from deepfake.evaluation.reports import certainty_notes, format_table
from deepfake.features.extraction import FeatureTable
from deepfake.model.checkpoint import check_config
from deepfake.model.heads import head_from_config
from deepfake.model.ood import OOD_UNKNOWN, ood_flags
from deepfake.training.ood import fit_ood, ledoit_wolf
from deepfake.training.sources import CachedFeatures


def _scores(n_real: int, n_fake: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_real, int), np.ones(n_fake, int)]
    return y, np.round(rng.random(len(y)) * 0.6 + 0.3 * y, 2)  # rounded: ties between scores


def test_weighted_ap_of_resample_counts_equals_ap_of_the_resampled_images():
    y, s = _scores(40, 50)
    order = np.argsort(s, kind="mergesort")[::-1]
    last = np.r_[np.flatnonzero(np.diff(s[order])), len(s) - 1]
    counts = np.random.default_rng(3).multinomial(len(y), np.full(len(y), 1 / len(y)), size=5)
    weighted = _weighted_ap(y[order], last, counts[:, order])
    explicit = [average_precision(np.repeat(y, c), np.repeat(s, c)) for c in counts]
    np.testing.assert_allclose(weighted, explicit, rtol=1e-12)


def test_bootstrap_intervals_are_seeded_contain_the_estimate_and_narrow_with_more_images():
    y, s = _scores(40, 40)
    ci = bootstrap_intervals(y, s, 0.5, seed=1)
    assert ci == bootstrap_intervals(y, s, 0.5, seed=1) != bootstrap_intervals(y, s, 0.5, seed=2)
    assert ci["ap_ci_low"] <= average_precision(y, s) <= ci["ap_ci_high"]
    acc = np.mean((s > 0.5) == (y == 1))
    assert ci["acc_ci_low"] <= acc <= ci["acc_ci_high"]
    big = bootstrap_intervals(*_scores(400, 400), 0.5, seed=1)
    assert big["ap_ci_high"] - big["ap_ci_low"] < ci["ap_ci_high"] - ci["ap_ci_low"]


def test_stratified_bootstrap_keeps_both_classes_even_with_one_real():
    y, s = _scores(1, 30)
    ci = bootstrap_intervals(y, s, 0.5)
    assert ci["ap_ci_low"] is not None and 0 < ci["ap_ci_low"] <= ci["ap_ci_high"] <= 1
    assert bootstrap_intervals(np.ones(5, int), np.linspace(0, 1, 5), 0.5)["ap_ci_low"] is None


def test_domains_under_the_small_threshold_are_marked_and_others_not():
    y, s = _scores(SMALL_DOMAIN - 1, SMALL_DOMAIN + 5)
    assert row_metrics(y, s, 0.5, None)["small"] is True
    y, s = _scores(SMALL_DOMAIN, SMALL_DOMAIN)
    assert row_metrics(y, s, 0.5, None)["small"] is False


def _samples() -> tuple[list[TestSample], np.ndarray]:
    """Two domains sharing their 20 reals (as UFD's LAION reals are shared), 10 fakes each."""
    samples, probs = [], []
    for g, gen in enumerate(("a", "b")):
        samples += [TestSample(f"real/{i}.png", 0, gen, "") for i in range(20)]
        samples += [TestSample(f"{gen}/fake/{i}.png", 1, gen, "") for i in range(10)]
        probs += [0.1 + 0.02 * i for i in range(20)] + [0.3 + 0.05 * i + 0.1 * g for i in range(10)]
    return samples, np.array(probs)


def test_pooled_row_counts_each_image_once_and_is_not_the_mean_of_domains():
    samples, probs = _samples()
    ok = np.ones(len(samples), bool)
    rows, mean, _ = domain_rows(samples, probs, ok, 0.5, None)
    pooled = pooled_row(samples, probs, ok, 0.5, None)
    assert (pooled["n_real"], pooled["n_fake"]) == (20, 20)
    labels = np.array([0] * 20 + [1] * 20)
    expected = average_precision(labels, np.r_[probs[:20], probs[20:30], probs[50:60]])
    assert pooled["ap"] == pytest.approx(expected) and pooled["ap"] != pytest.approx(mean["ap"])
    assert pooled["ap_ci_low"] <= pooled["ap"] <= pooled["ap_ci_high"]


def test_table_marks_small_domains_and_says_so_with_pooled_row_and_thresholds_under_it():
    samples, probs = _samples()
    ok = np.ones(len(samples), bool)
    rows, mean, family_means = domain_rows(samples, probs, ok, 0.5, 0.4)
    level = {"rows": rows, "mean": mean, "family_means": family_means,
             "pooled": pooled_row(samples, probs, ok, 0.5, 0.4)}
    table = format_table(level)
    assert "a *" in table and "b *" in table and "pooled" in table and "AP 95% CI" in table
    notes = "\n".join(certainty_notes(level, {"threshold": 0.5, "threshold_source": "checkpoint", "val_threshold": 0.4}))
    assert f"fewer than {SMALL_DOMAIN} images of a class" in notes
    assert "images pooled" in notes and "(95% CI n/a)" not in notes
    assert "P(fake) > 0.5" in notes and "validation threshold 0.4" in notes
    assert "OOD: n/a" in notes


# --- the out-of-distribution flag --------------------------------------------------------------------------------


def _gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(d, d)) / np.sqrt(d)  # correlated dimensions, one fixed mixing
    return torch.tensor((rng.normal(size=(n, d)) + shift) @ mixing * 3 + 5, dtype=torch.float32)


def _table(x: torch.Tensor) -> FeatureTable:
    n = len(x)
    return FeatureTable(x.half(), torch.ones(n, dtype=torch.bool))


def _head_with_ood(train: torch.Tensor, val: torch.Tensor):
    head = head_from_config({"kind": "mlp", "in_dim": train.shape[1], "hidden": 8})
    source = CachedFeatures([_table(train)], torch.Generator().manual_seed(0))
    fit_ood(head, source, _table(val), 64)
    return head


def test_ledoit_wolf_shrinkage_equals_scikit_learns_on_the_standardised_rows():
    sklearn_cov = pytest.importorskip("sklearn.covariance")
    x = _gaussian(60, 40, 0).double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    shrunk, shrinkage, n = ledoit_wolf(lambda: iter(x.split(7)), mean, std)
    expected_cov, expected_shrinkage = sklearn_cov.ledoit_wolf(((x - mean) / std).numpy(), assume_centered=True)
    assert n == 60 and shrinkage == pytest.approx(expected_shrinkage, rel=1e-9)
    np.testing.assert_allclose(shrunk.numpy(), expected_cov, rtol=1e-9, atol=1e-12)


def test_ood_threshold_flags_about_one_percent_of_new_in_distribution_rows_and_most_shifted_rows():
    head = _head_with_ood(_gaussian(2000, 32, 0), _gaussian(2000, 32, 1))
    record = head.config()["ood"]
    assert record["n_calibration"] == 2000 and record["threshold"] > 0
    _, fresh = ood_flags(head, _gaussian(4000, 32, 2))
    _, shifted = ood_flags(head, _gaussian(500, 32, 3, shift=1.5))
    assert 0.002 <= fresh.count("out") / 4000 <= 0.03
    assert shifted.count("out") / 500 > 0.5


def test_ood_statistics_survive_the_checkpoint_and_heads_without_them_say_unknown(tmp_path):
    head = _head_with_ood(_gaussian(300, 16, 0), _gaussian(200, 16, 1))
    config = head.config()
    check_config({"tower": {"model": "m"}, "head": config,
                  "preprocess": {"mode": "resize", "size": 224, "mean": [0, 0, 0], "std": [1, 1, 1]}}, tmp_path / "c.json")
    save_file(head.state_dict(), str(tmp_path / "h.safetensors"))
    loaded = head_from_config(config)
    loaded.load_state_dict(load_file(str(tmp_path / "h.safetensors")), strict=True)
    probe = _gaussian(50, 16, 5, shift=2.0)
    assert ood_flags(loaded, probe)[1] == ood_flags(head, probe)[1] and "out" in ood_flags(loaded, probe)[1]
    # A checkpoint written before the statistics (or a head imported from a release): the same config without them.
    old = head_from_config({k: v for k, v in config.items() if k != "ood"})
    old.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("ood.")}, strict=True)
    assert ood_flags(old, probe)[1] == [OOD_UNKNOWN] * 50


def test_head_trained_on_one_synthetic_family_flags_other_families_fakes_far_more_than_its_own_held_out_images(
        tmp_path):
    data = generate(tmp_path / "data", n_train=30, n_val=30, n_test=30, sizes=(256, 256), train_family="tconv",
                    test_families=("tconv", "bilinear", "nearest"))
    run = tmp_path / "run"
    assert train_ClassifierHead.main(["--dataset_dir", str(data), "--output_dir", str(run), "--model", "spectrum",
                                      "--cache_dir", str(tmp_path / "cache"), "--num_epochs", "2", "--num_workers", "0",
                                      "--quiet"]) == 0
    clf = DeepfakeClassifier.from_pretrained(run)
    assert clf.config["head"]["ood"]["n_calibration"] == 120  # the validation split: 2 categories x 2 classes x 30
    own = clf.predict(sorted((data / "test" / "tconv").rglob("*.*")))
    others = clf.predict(sorted(p for f in ("bilinear", "nearest") for p in (data / "test" / f).rglob("1_fake/*.*")))
    own_share = np.mean([p.ood == "out" for p in own])
    other_share = np.mean([p.ood == "out" for p in others])
    assert len(own) == len(others) == 120
    assert own_share <= 0.05, own_share  # about 1%: held-out images of the family it was trained on
    # Measured: 2 of 120 own (1.7%), 18 of 120 other fakes (15%); their reals, like its own, are in distribution.
    assert other_share >= max(0.08, 4 * own_share), (own_share, other_share)
