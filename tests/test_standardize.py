"""--standardize: per-dimension standardisation of a head's features, from the training split, stored in the head."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import deepfake.training.run as training
import test_ClassifierHead
import train_ClassifierHead
from deepfake import DeepfakeClassifier
from deepfake.cli.predict import main as predict_main
from deepfake.config import DEFAULT_SEED, HeadConfig, RuntimeConfig, ScheduleConfig, TrainConfig
from deepfake.data.layouts import parse_label_dirs
from deepfake.deepfake_dataset import DeepfakeDataset, training_samples
from deepfake.evaluation.metrics import average_precision
from deepfake.features.extraction import ExtractionSettings, FeatureTable, extract_features
from deepfake.model.checkpoint import CheckpointRefused, save_checkpoint
from deepfake.model.heads import guarded_statistics, head_from_config, new_head, resolve_standardize
from deepfake.model.scoring import fake_probabilities
from deepfake.towers.backbones import KNOWN_BACKBONES
from deepfake.towers.loading import load_tower
from deepfake.training.loop import fit, validation_metrics
from deepfake.training.schedule import TrainOptions
from deepfake.training.sources import CachedFeatures
from deepfake.training.standardize import RunningMoments, fit_standardizer, table_statistics
from deepfake.utils.runtime import seed_everything

from .conftest import TOWER, make_forensynths, train_args
from .test_distributed import torchrun

SETTINGS = ExtractionSettings(batch_size=8, num_workers=0, progress=False)


@pytest.fixture(scope="module")
def spectral_data(tmp_path_factory):
    return make_forensynths(tmp_path_factory.mktemp("standardize-data"), n_train=3, n_val=2, n_test=1)


def spectrum_args(data, out, cache, *extra):
    # One thread: runs compared to the bit must round alike, whatever the load makes the default budget.
    return train_args(data, out, cache, "--model", "spectrum", "--num_epochs", "2", "--threads", "1", *extra)


def train_paths(data):
    """The (train, val) samples of a run on ``data``, in the run's order."""
    return training_samples(str(data), None, TrainConfig().val_ratio, DEFAULT_SEED, parse_label_dirs(None))


def tower_features(tower, samples) -> FeatureTable:
    return extract_features(tower, DeepfakeDataset(samples, tower.preprocess), SETTINGS, None)


def head_state(run, name="best"):
    return load_file(str(run / f"{name}.safetensors"))


def scores_csv(path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["path"]: float(row["probability"]) for row in csv.DictReader(handle)}


# --- the head's standardizer -----------------------------------------------------------


def test_running_moments_over_chunks_equal_one_float64_pass_on_large_offsets_and_tiny_spreads():
    rng = np.random.default_rng(0)
    x = 1e4 + 1e-3 * rng.normal(size=(1000, 5))  # a naive float32 sum of squares loses all of the spread
    moments = RunningMoments()
    for chunk in np.array_split(x, 7):
        moments.add(torch.tensor(chunk))
    mean, std = moments.result()
    assert mean.dtype == torch.float64
    assert np.allclose(mean.numpy(), x.mean(axis=0), rtol=0, atol=1e-9)
    assert np.allclose(std.numpy(), x.std(axis=0), rtol=1e-6, atol=0)


def test_table_statistics_are_the_same_whatever_the_chunk_size(monkeypatch):
    embeds = (torch.randn(300, 6, generator=torch.Generator().manual_seed(1)) * 0.05 + 3.0).half()
    table = FeatureTable(embeds, torch.ones(300, dtype=torch.bool))
    rows = torch.arange(0, 300, 2)
    whole = table_statistics([table], rows)
    monkeypatch.setattr("deepfake.training.standardize.CHUNK_VALUES", 13)  # two rows per chunk
    chunked = table_statistics([table], rows)
    expected = embeds[rows].double()
    assert whole[2] == chunked[2] == len(rows)
    for got in (whole, chunked):
        assert torch.allclose(got[0], expected.mean(0), atol=1e-12)
        assert torch.allclose(got[1], expected.std(0, unbiased=False), atol=1e-12)


def test_degenerate_dimensions_are_centred_but_not_scaled_and_every_statistic_is_finite():
    mean = torch.tensor([2.0, 5.0, float("nan"), 1000.0, 0.1], dtype=torch.float64)
    std = torch.tensor([0.0, 1e-9, 0.3, 0.01, float("inf")], dtype=torch.float64)
    m, s = guarded_statistics(mean, std)
    assert m.dtype == s.dtype == torch.float32
    # zero spread, spread below 1e-6, a spread below half the fp16 step at 1000 (0.24): std 1; a NaN mean: 0.
    assert s.tolist() == [1.0, 1.0, pytest.approx(0.3), 1.0, 1.0]
    assert m.tolist() == [2.0, 5.0, 0.0, 1000.0, pytest.approx(0.1)]
    head = head_from_config({"kind": "mlp", "in_dim": 5, "standardize": True})
    head.standardizer.set_statistics(mean, std)
    out = head.standardizer(torch.tensor([[2.0, 5.0, 7.0, 1000.5, 0.1]], dtype=torch.float16))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_head_without_standardize_has_no_standardizer_and_the_config_of_before():
    tower = load_tower(TOWER)
    for kind in ("mlp", "linear", "layers", "rine"):
        blocks = (1, 2) if kind in ("layers", "rine") else ()
        plain, standardized = new_head(kind, tower, blocks), new_head(kind, tower, blocks, True)
        assert "standardize" not in plain.config() and not any(k.startswith("standardizer.") for k in plain.state_dict())
        assert standardized.config() == {**plain.config(), "standardize": True}
        assert tuple(standardized.state_dict()["standardizer.mean"].shape) == tuple(standardized.feature_shape)


def test_auto_follows_the_tower_record_spectral_towers_on_and_clip_like_towers_off():
    for name, record in KNOWN_BACKBONES.items():
        assert record.standardize == (record.family == "spectrum"), name
    spectral, languagebind = load_tower("spectrum"), load_tower(TOWER)  # the latter: a LanguageBind folder
    assert resolve_standardize("auto", spectral) is True and resolve_standardize("off", spectral) is False
    assert resolve_standardize("auto", languagebind) is False and resolve_standardize("on", languagebind) is True
    with pytest.raises(ValueError, match="standardize 'yes'"):
        HeadConfig(standardize="yes")


# --- (c) why: the default recipe on features with large offsets and small spreads ---------


def _offset_features(n: int, dim: int, seed: int, offsets: np.ndarray, spreads: np.ndarray, direction: np.ndarray):
    """Log-spectrum-like features: per-dimension offsets of +-3 and spreads of a few hundredths; fakes shifted
    by one spread along one direction."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    z = rng.normal(size=(n, dim)) + np.outer(labels - 0.5, direction) * 2.0
    table = FeatureTable(torch.tensor(offsets + spreads * z, dtype=torch.float16), torch.ones(n, dtype=torch.bool))
    return table, torch.tensor(labels)


def _default_recipe(standardize: bool, train, labels, val, val_labels) -> np.ndarray:
    """The mlp head with the default schedule (lr 1e-4, Adam, batch 64) for 50 epochs; its best epoch's val P(fake)."""
    seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    head = new_head("mlp", type("Tower", (), {"feature_dim": train.embeds.shape[1]}), (), standardize)
    source = CachedFeatures([train], generator)
    if standardize:
        fit_standardizer(head, source, RuntimeConfig().batch_size)
    opts = TrainOptions.from_config(ScheduleConfig(num_epochs=50), RuntimeConfig().batch_size)
    best = {}

    def keep(result, is_best):
        if is_best:
            best["probs"] = fake_probabilities(head, val, torch.arange(len(val_labels)))

    fit(head, source, labels, lambda h: validation_metrics(h, val, val_labels.numpy()), opts, generator,
        torch.device("cpu"), on_epoch=keep, progress=False)
    return best["probs"]


def test_default_recipe_with_standardisation_clearly_beats_it_without_on_offset_features():
    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    dim = 64
    offsets, spreads = rng.uniform(-3, 3, dim), rng.uniform(0.02, 0.06, dim)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    train, labels = _offset_features(1024, dim, 4, offsets, spreads, direction)
    val, val_labels = _offset_features(600, dim, 5, offsets, spreads, direction)
    raw = _default_recipe(False, train, labels, val, val_labels)
    std = _default_recipe(True, train, labels, val, val_labels)
    y = val_labels.numpy()
    gain = average_precision(y, std) - average_precision(y, raw)
    # The noise of that difference on this validation set: a paired bootstrap of its rows.
    boot = np.random.default_rng(0)
    draws = []
    for _ in range(200):
        idx = boot.integers(0, len(y), len(y))
        draws.append(average_precision(y[idx], std[idx]) - average_precision(y[idx], raw[idx]))
    assert gain > 4 * np.std(draws), (gain, np.std(draws))
    # And standardised, the head reaches what the known direction itself gives (the best any head can do).
    oracle = val.embeds.double().numpy() @ (direction / spreads)
    assert average_precision(y, std) > average_precision(y, oracle) - 4 * np.std(draws)


# --- (a), (b) a spectral run: one set of statistics, applied the same everywhere ------------


@pytest.fixture(scope="module")
def spectral_run(tmp_path_factory, spectral_data):
    """A default-recipe spectral run whose validation pass records its P(fake) per validation image."""
    base = tmp_path_factory.mktemp("spectral-run")
    recorded = []
    original = training.validation_metrics

    def recording(head, table, labels):
        recorded.append(fake_probabilities(head, table, table.ok.nonzero().flatten()))
        return original(head, table, labels)

    training.validation_metrics = recording
    try:
        assert train_ClassifierHead.main(spectrum_args(spectral_data, base / "run", base / "cache")) == 0
    finally:
        training.validation_metrics = original
    best = json.loads((base / "run" / "best.json").read_text())
    return {"data": spectral_data, "run": base / "run", "cache": base / "cache", "base": base,
            "val_probs": recorded[best["epoch"] - 1]}


def test_spectral_run_standardises_by_default_and_records_it(spectral_run):
    best = json.loads((spectral_run["run"] / "best.json").read_text())
    assert best["head"]["standardize"] is True and best["standardize"] is True
    assert best["train_args"]["standardize"] == "auto"
    state = head_state(spectral_run["run"])
    assert state["standardizer.mean"].shape == state["standardizer.std"].shape == (load_tower("spectrum").feature_dim,)


def test_standardised_head_gives_the_same_probabilities_in_validation_test_predict_and_from_pretrained(
        spectral_run, tmp_path):
    run, data = spectral_run["run"], spectral_run["data"]
    _, val = train_paths(data)
    paths = [s.path for s in val]
    validation = dict(zip(paths, spectral_run["val_probs"].tolist()))
    # test_ClassifierHead.py on the validation images.
    assert test_ClassifierHead.main(["--checkpoint", str(run), "--dataset_dir", str(data / "val"), "--output_dir",
                                     str(tmp_path / "eval"), "--cache_dir", str(tmp_path / "c"),
                                     "--num_workers", "0", "--quiet", "--no_plots"]) == 0
    tested = scores_csv(tmp_path / "eval" / "scores.csv")
    # deepfake predict.
    assert predict_main([*paths, "--checkpoint", str(run), "--output", str(tmp_path / "p.csv"), "--num_workers", "0",
                         "--quiet"]) == 0
    predicted = scores_csv(tmp_path / "p.csv")
    # A pretrained-head folder (what the hub holds), loaded with its tower and alone.
    folder = DeepfakeClassifier.from_pretrained(run).save_pretrained(tmp_path / "hub")
    hub = dict(zip(paths, [p.probability for p in DeepfakeClassifier.from_pretrained(folder).predict(paths)]))
    head_only = DeepfakeClassifier.from_pretrained(folder, tower=False)
    features = tower_features(load_tower("spectrum"), val).embeds
    alone = dict(zip(paths, head_only.probability_from_features(features).tolist()))
    for path in paths:
        assert tested[path] == predicted[path] == hub[path] == pytest.approx(validation[path], abs=1e-6)
        assert alone[path] == pytest.approx(validation[path], abs=1e-6)
    # The standardizer matters: the same head without it scores these images otherwise.
    config = json.loads((run / "best.json").read_text())["head"]
    bare = head_from_config({k: v for k, v in config.items() if k != "standardize"}).eval()
    bare.load_state_dict({k: v for k, v in head_state(run).items() if not k.startswith("standardizer.")})
    unstandardized = fake_probabilities(bare, FeatureTable(features, torch.ones(len(features), dtype=torch.bool)),
                                        torch.arange(len(features)))
    assert np.max(np.abs(unstandardized - np.array([validation[p] for p in paths]))) > 1e-3


def _white_noise(folder, n, seed):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_statistics_come_from_the_training_split_only(spectral_run, tmp_path):
    data = spectral_run["data"]
    # The same training images; validation images of a wholly other spectrum (white noise, not smooth noise).
    other = tmp_path / "other"
    shutil.copytree(data / "train", other / "train")
    for category in ("car", "cat", "chair", "horse"):
        for label in ("0_real", "1_fake"):
            _white_noise(other / "val" / category / label, 2, hash((category, label)) % 1000)
    assert train_ClassifierHead.main(spectrum_args(other, tmp_path / "run", tmp_path / "cache")) == 0
    mine, theirs = head_state(spectral_run["run"]), head_state(tmp_path / "run")
    for key in ("standardizer.mean", "standardizer.std"):
        assert torch.equal(mine[key], theirs[key])
    # They are the training features' own mean and std, and the other validation set is far from them.
    tower = load_tower("spectrum")
    train, val = train_paths(other)
    expected = tower_features(tower, train).embeds.double()
    mean, std = guarded_statistics(expected.mean(0), expected.std(0, unbiased=False))
    assert torch.allclose(mine["standardizer.mean"], mean, atol=1e-6)
    assert torch.allclose(mine["standardizer.std"], std, rtol=1e-5)
    shifted = (tower_features(tower, val).embeds.double().mean(0) - mean) / std
    assert shifted.abs().max() > 3  # had they been counted, the statistics would have moved


def test_no_cache_gives_the_statistics_of_the_cached_run(spectral_run, tmp_path):
    # One epoch: the statistics are taken before the first.
    assert train_ClassifierHead.main(spectrum_args(spectral_run["data"], tmp_path / "run", tmp_path / "c",
                                                   "--no_cache", "--num_epochs", "1")) == 0
    cached, through_tower = head_state(spectral_run["run"]), head_state(tmp_path / "run")
    for key in ("standardizer.mean", "standardizer.std"):
        assert torch.allclose(cached[key], through_tower[key], rtol=1e-6, atol=1e-7)


def test_resume_restores_the_statistics_and_refuses_another_standardize(spectral_run, tmp_path, monkeypatch, caplog):
    data, out, cache = spectral_run["data"], tmp_path / "run", tmp_path / "c"
    save = training.save_checkpoint

    def crashing(directory, name, state, config):
        if name == "epoch_002":
            raise KeyboardInterrupt
        return save(directory, name, state, config)

    monkeypatch.setattr(training, "save_checkpoint", crashing)
    assert train_ClassifierHead.main(spectrum_args(data, out, cache)) == 130
    monkeypatch.undo()
    assert train_ClassifierHead.main(spectrum_args(data, out, cache, "--resume", "--standardize", "off")) == 2
    assert "--standardize on -> off" in caplog.text
    assert train_ClassifierHead.main(spectrum_args(data, out, cache, "--resume")) == 0
    assert_same_head(head_state(spectral_run["run"], "epoch_002"), head_state(out, "epoch_002"))


def test_two_ranks_give_the_statistics_and_head_of_one(spectral_run, tmp_path):
    torchrun("train_ClassifierHead.py", *spectrum_args(spectral_run["data"], tmp_path / "run", tmp_path / "c"))
    assert_same_head(head_state(spectral_run["run"]), head_state(tmp_path / "run"))


def assert_same_head(one: dict, two: dict) -> None:
    """The same weights and standardizer to the bit; the same out-of-distribution statistics to float rounding
    (their sums and eigendecomposition round as the threads of each process, which follow the machine's load)."""
    assert one.keys() == two.keys()
    assert [k for k in one if not k.startswith("ood.") and not torch.equal(one[k], two[k])] == []
    assert [k for k in one if k.startswith("ood.") and not torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-6)] == []


# --- (d), (e) towers that do not need it, and heads from before -------------------------------


def test_standardize_off_and_auto_give_the_head_of_before_on_a_languagebind_tower(tmp_path, spectral_data):
    for flag in ("auto", "off"):
        assert train_ClassifierHead.main(train_args(spectral_data, tmp_path / flag, tmp_path / "c", "--num_epochs", "2",
                                                    "--standardize", flag)) == 0
    auto, off = head_state(tmp_path / "auto"), head_state(tmp_path / "off")
    # The checkpoint format of before, beside the out-of-distribution statistics every trained head now keeps.
    assert sorted(k for k in auto if not k.startswith("ood.")) == ["0.bias", "0.weight", "3.bias", "3.weight"]
    assert auto.keys() == off.keys() and all(torch.equal(auto[k], off[k]) for k in auto)
    best = json.loads((tmp_path / "auto" / "best.json").read_text())
    assert "standardize" not in best["head"] and best["standardize"] is False
    assert json.loads((tmp_path / "auto" / "run.json").read_text())["history"] == \
        json.loads((tmp_path / "off" / "run.json").read_text())["history"]


def test_a_head_saved_before_standardisation_loads_and_scores_as_it_did(tmp_path):
    torch.manual_seed(0)
    head = head_from_config({"kind": "mlp", "in_dim": 32}).eval()
    config = {"tower": {"model": TOWER}, "preprocess": {"mode": "resize", "size": 32, "mean": [0.5] * 3,
                                                         "std": [0.5] * 3},
              "head": {"kind": "mlp", "in_dim": 32, "hidden": 256, "dropout": 0.1, "num_classes": 2}}
    save_checkpoint(tmp_path / "old", "best", head.state_dict(), config)
    loaded = DeepfakeClassifier.from_pretrained(tmp_path / "old", tower=False)
    assert not hasattr(loaded.head, "standardizer")
    x = torch.randn(5, 32)
    assert np.array_equal(loaded.probability_from_features(x), torch.softmax(head(x), dim=1)[:, 1].detach().numpy())
    # A config that says standardised over weights without its statistics is refused, naming the file.
    save_checkpoint(tmp_path / "broken", "best", head.state_dict(),
                    {**config, "head": {**config["head"], "standardize": True}})
    with pytest.raises(CheckpointRefused, match="(?s)best.safetensors: head weights do not fit.*standardizer.mean"):
        DeepfakeClassifier.from_pretrained(tmp_path / "broken", tower=False)


@pytest.mark.parametrize("kind", ["mlp", "linear", "layers", "rine"])
def test_every_head_kind_trains_standardised_with_statistics_per_block_and_feature(kind, tmp_path, spectral_data):
    blocks = ("--feature_layers", "1,2") if kind in ("layers", "rine") else ()
    out = tmp_path / "run"
    assert train_ClassifierHead.main(train_args(spectral_data, out, tmp_path / "c", "--num_epochs", "1", "--head",
                                                kind, "--standardize", "on", *blocks)) == 0
    state, config = head_state(out), json.loads((out / "best.json").read_text())
    head = head_from_config(config["head"])
    assert config["head"]["standardize"] is True
    assert tuple(state["standardizer.mean"].shape) == tuple(head.feature_shape)
    # The statistics of the training features the head reads (for blocks: per block and feature).
    tower = load_tower(TOWER)
    train, _ = train_paths(spectral_data)
    settings = ExtractionSettings(batch_size=8, num_workers=0, progress=False, layers=(1, 2) if blocks else (),
                                  tap="ln2" if kind == "rine" else "block")
    table = extract_features(tower, DeepfakeDataset(train, tower.preprocess), settings, None)
    rows = table.ok.nonzero().flatten()
    x = (table.layer_rows(rows) if blocks else table.embeds[rows].float()).double()
    mean, std = guarded_statistics(x.mean(0), x.std(0, unbiased=False))
    assert torch.allclose(state["standardizer.mean"], mean, atol=1e-5)
    assert torch.allclose(state["standardizer.std"], std, rtol=1e-4)
    clf = DeepfakeClassifier.from_pretrained(out)
    assert all(0.0 <= p.probability <= 1.0 for p in clf.predict([s.path for s in train[:3]]))


def test_a_run_recorded_as_spectrum_before_it_took_colour_still_loads_gray_and_scores_the_same(
        spectral_data, tmp_path):
    """``spectrum`` reads colour now; a head trained when it was gray names it with gray preprocessing."""
    from pathlib import Path

    gray_run = tmp_path / "gray"
    assert train_ClassifierHead.main(train_args(spectral_data, gray_run, tmp_path / "cache", "--model",
                                                "spectrum-tiles256", "--num_epochs", "2")) == 0
    old_run = tmp_path / "old"
    shutil.copytree(gray_run, old_run)
    config = json.loads((old_run / "best.json").read_text())
    config["tower"]["model"] = config["train_args"]["model"] = "spectrum"  # as such a run recorded it
    (old_run / "best.json").write_text(json.dumps(config))
    # The tower identity (and so the cache key) such a run recorded, as the goldens held it before colour.
    recorded = {"model": "spectrum", "family": "spectrum", "revision": "1", "feature_dim": 128,
                "feature": "radial log power spectrum of the residual",
                "analysis": "mean over 4x4 tiles of 256 px spread over the image, native resolution"}

    old, gray = DeepfakeClassifier.from_pretrained(old_run), DeepfakeClassifier.from_pretrained(gray_run)
    assert KNOWN_BACKBONES["spectrum"].preprocess.colour and not old.preprocess.colour
    assert old.tower.feature_dim == 128
    assert old.tower.identity == recorded
    images = sorted(str(p) for p in Path(spectral_data, "test").rglob("*.png"))[:4]
    assert np.array_equal(old.predict_proba(images), gray.predict_proba(images))


# The colour definitions recorded (as spectrum version 1) before the present one, and the commits that computed each.
EARLIER_COLOUR = {
    "radial log power spectra of the gray, R-G and B-G residuals; R/G and B/G coherence": "b9eb40e..8d3d4b3",
    "log radial power of the gray, R-G and B-G residuals; R/G and B/G coherence": "8d3d4b3..69c92b5",
    "log radial power (DC dropped) of the gray, R-G and B-G residuals; R/G and B/G coherence": "69c92b5..e6a64aa",
}
COLOUR_FEATURE = "log radial power of the gray, R-G and B-G residuals; R/G and B/G coherence; DC dropped"


@pytest.mark.parametrize("feature, made_by", sorted(EARLIER_COLOUR.items()))
def test_a_colour_head_from_an_earlier_feature_definition_is_refused_naming_the_commits_that_made_it(
        spectral_data, tmp_path, caplog, feature, made_by):
    """The colour features changed three times while their version stayed 1: a head recorded with an earlier
    definition would read other numbers, so loading it is refused (predict: exit 2) naming the commits."""
    run = tmp_path / "colour"
    assert train_ClassifierHead.main(spectrum_args(spectral_data, run, tmp_path / "cache", "--num_epochs", "1")) == 0
    current = json.loads((run / "best.json").read_text())["tower"]
    assert current["feature"] == COLOUR_FEATURE and current["revision"] != "1"  # the version moved on
    old = tmp_path / "old"
    shutil.copytree(run, old)
    config = json.loads((old / "best.json").read_text())
    config["tower"].update(revision="1", feature=feature)
    (old / "best.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointRefused, match=f"no longer computes: .*made by commits {made_by}"):
        DeepfakeClassifier.from_pretrained(old)
    image = next(str(p) for p in (spectral_data / "test").rglob("*.png"))
    caplog.clear()
    assert predict_main([image, "--checkpoint", str(old), "--num_workers", "0"]) == 2
    assert made_by in caplog.text and "train the head again" in caplog.text
    # Recorded as version 1 with the present definition (made since the last change): the same features, loads.
    config["tower"]["feature"] = COLOUR_FEATURE
    (old / "best.json").write_text(json.dumps(config))
    assert np.array_equal(DeepfakeClassifier.from_pretrained(old).predict_proba([image]),
                          DeepfakeClassifier.from_pretrained(run).predict_proba([image]))
    config["tower"]["revision"] = "3"  # a version this code does not know
    (old / "best.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointRefused, match="spectrum version 3"):
        DeepfakeClassifier.from_pretrained(old)
