"""Head kinds: shapes and sizes, the importance estimator, a planted mid-depth signal, and checkpoints."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import train_ClassifierHead
from deepfake import DeepfakeClassifier
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.features.batch import FeatureBatch, table_batch
from deepfake.features.extraction import FeatureTable, MemoryLayers, parse_feature_layers
from deepfake.model.checkpoint import CheckpointRefused
from deepfake.model.heads import block_importance, head_from_config, head_kinds
from deepfake.model.heads.layers import LayersHead
from deepfake.model.heads.linear import LinearHead
from deepfake.model.heads.mlp import MLPHead
from deepfake.model.losses import supervised_contrastive_loss
from deepfake.towers.clip_tower import CLIPTower
from deepfake.training.loop import fit, validation_metrics
from deepfake.training.schedule import TrainOptions
from deepfake.training.sources import CachedFeatures

from .conftest import run_test_script, train_args

D, H, C = 12, 20, 2  # final embedding, block token width, classes


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _batch(n: int = 5, blocks: int = 4, seed: int = 0) -> FeatureBatch:
    g = torch.Generator().manual_seed(seed)
    return FeatureBatch(torch.randn(n, D, generator=g), torch.randn(n, blocks, H, generator=g) * 3)


@pytest.mark.parametrize("kind", ["mlp", "linear", "layers", "layers-feature"])
def test_forward_shape_and_parameter_count_match_the_formula(kind):
    hidden, proj, blocks = 256, 64, [1, 2, 3, 4]
    if kind == "mlp":
        head, expected = MLPHead(D), D * hidden + hidden + hidden * C + C
    elif kind == "linear":
        head, expected = LinearHead(D), D * C + C
    else:
        importance = "block" if kind == "layers" else "feature"
        head = LayersHead(H, blocks, proj_dim=proj, importance=importance)
        n_importance = len(blocks) if importance == "block" else len(blocks) * proj
        expected = (H * proj + proj) + n_importance + (proj * hidden + hidden + hidden * C + C)
    assert _count(head) == expected
    assert head(_batch(7)).shape == (7, C)
    # Rebuilt from its own config: same kind, same sizes, same state-dict keys.
    again = head_from_config(head.config())
    assert type(again) is type(head) and again.config() == head.config()
    assert again.load_state_dict(head.state_dict(), strict=True) is not None


def test_registry_knows_every_kind_and_old_configs_mean_mlp():
    assert set(head_kinds()) == {"mlp", "layers", "linear", "rine"}
    old = {"in_dim": 32, "hidden": 256, "dropout": 0.1, "num_classes": 2}  # written before kinds existed
    head = head_from_config(old)
    assert isinstance(head, MLPHead) and set(head.state_dict()) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    with pytest.raises(ValueError, match="unknown head kind 'nosuchkind'; known kinds: layers, linear, mlp, rine"):
        head_from_config({"kind": "nosuchkind"})


@pytest.mark.parametrize("importance", ["block", "feature"])
def test_one_hot_importance_equals_the_mlp_on_that_blocks_projected_token(importance):
    torch.manual_seed(0)
    head = LayersHead(H, [0, 1, 2, 3], proj_dim=32, importance=importance).eval()
    chosen = 2
    with torch.no_grad():
        head.importance_logits.fill_(-1e4)
        head.importance_logits[chosen] = 1e4
    batch = _batch(6)
    assert head.importance().tolist() == [0.0, 0.0, 1.0, 0.0]
    # A separately built mlp head holding the layers head's MLP weights, fed that block's projected token.
    mlp = MLPHead(32).eval()
    mlp.load_state_dict(head.mlp.state_dict())
    with torch.no_grad():
        expected = mlp(head.project(batch.layers)[:, chosen])
        assert torch.equal(head(batch), expected)


@pytest.mark.parametrize("importance", ["block", "feature"])
def test_importances_sum_to_one(importance):
    head = LayersHead(H, [0, 3, 5], proj_dim=16, importance=importance)
    with torch.no_grad():
        head.importance_logits.normal_(0, 3)
    assert head.weights().sum(dim=0).allclose(torch.ones_like(head.weights()[0]))
    weights = head.importance()
    assert weights.shape == (3,) and float(weights.sum()) == pytest.approx(1.0, abs=1e-6) and (weights > 0).all()
    assert block_importance(head)["blocks"] == [0, 3, 5]
    assert block_importance(MLPHead(D)) is None


def test_layers_head_refuses_tokens_of_the_wrong_shape():
    head = LayersHead(H, [1, 2])
    with pytest.raises(ValueError, match=r"expects tokens of shape \[B, 2, 20\]"):
        head(_batch(3, blocks=3))
    with pytest.raises(ValueError, match="reads per-block CLS tokens"):
        head(FeatureBatch(torch.zeros(3, D)))


def table_with_layers(embeds: torch.Tensor, layers: torch.Tensor, blocks: list[int]) -> FeatureTable:
    """A feature table as extraction builds it: fp16 embeddings, one fp16 tensor per block."""
    source = MemoryLayers(len(embeds), blocks, layers.shape[2])
    for j, block in enumerate(blocks):
        source.tensors[block][:] = layers[:, j].half()
    return FeatureTable(embeds.half(), torch.ones(len(embeds), dtype=torch.bool), layer_ids=list(blocks),
                        layer_source=source)


def test_table_batch_picks_the_heads_blocks_from_the_tables():
    layers = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)
    table = table_with_layers(torch.zeros(2, D), layers, [0, 4, 8])
    batch = table_batch(table, torch.tensor([1]), (8, 0))
    assert batch.layers[0, :, 0].tolist() == [5.0, 3.0]
    with pytest.raises(ValueError, match=r"reads block\(s\) \[2\]"):
        table_batch(table, torch.tensor([0]), (2,))


def test_parse_feature_layers():
    assert parse_feature_layers("none", 24) == []
    assert parse_feature_layers("all", 3) == [0, 1, 2, 3]
    assert parse_feature_layers("24,8, 16", 24) == [8, 16, 24]
    with pytest.raises(ValueError, match="0..24"):
        parse_feature_layers("8,25", 24)
    with pytest.raises(ValueError, match="block numbers like"):
        parse_feature_layers("last", 24)


def test_supervised_contrastive_loss_is_lower_for_clustered_labels():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    clustered = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3) + 0.01 * torch.randn(6, 2)
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 3)
    assert supervised_contrastive_loss(clustered, labels) < supervised_contrastive_loss(mixed, labels)
    lonely = torch.randn(2, 4, requires_grad=True)
    loss = supervised_contrastive_loss(lonely, torch.tensor([0, 1]))  # no positive pair: zero, still backward-able
    loss.backward()
    assert loss.item() == 0.0


# --- planted signal: only an intermediate block separates the classes -------------------

PLANTED_BLOCKS = [0, 1, 2, 3, 4]
SIGNAL_BLOCK = 2


def planted_table(n: int, seed: int) -> tuple[FeatureTable, torch.Tensor]:
    """Features as a tower with 4 blocks would cache them; only block 2's token depends on the label.

    The final embedding and every other block are label-free noise (as deep layers that
    abstract away a low-level trace would be).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    layers = torch.randn(n, len(PLANTED_BLOCKS), H, generator=g) * torch.linspace(1, 8, len(PLANTED_BLOCKS))[:, None]
    direction = torch.tensor([1.0, -1.0] * (H // 2))
    layers[:, SIGNAL_BLOCK] += 1.5 * (2 * labels[:, None].float() - 1) * direction
    return table_with_layers(torch.randn(n, D, generator=g), layers, PLANTED_BLOCKS), labels


@pytest.fixture
def one_thread():
    # Heads this small train fastest on one thread; several threads on a busy machine only contend.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_planted(head: torch.nn.Module, epochs: int = 20) -> tuple[float, list[dict]]:
    train, train_labels = planted_table(512, seed=1)
    val, val_labels = planted_table(256, seed=2)
    generator = torch.Generator().manual_seed(0)
    opts = TrainOptions(num_epochs=epochs, learning_rate=2e-2, batch_size=64)
    source = CachedFeatures([train], generator, getattr(head, "blocks", ()))
    state = fit(head, source, train_labels, lambda h: validation_metrics(h, val, val_labels.numpy()), opts, generator,
                torch.device("cpu"))
    return max(r["val_ap"] for r in state.history), state.history


def test_layers_head_finds_a_planted_mid_depth_signal_the_final_embedding_lacks(one_thread):
    torch.manual_seed(0)
    layers_head = LayersHead(H, PLANTED_BLOCKS, proj_dim=32, hidden=64)
    layers_ap, _ = train_planted(layers_head)
    torch.manual_seed(0)
    mlp_ap, _ = train_planted(MLPHead(D, hidden=64))
    importance = layers_head.importance()
    assert layers_ap >= 0.95
    assert int(importance.argmax()) == PLANTED_BLOCKS.index(SIGNAL_BLOCK) and float(importance.max()) > 0.5
    assert mlp_ap <= 0.75 and layers_ap - mlp_ap >= 0.2


def test_contrastive_term_trains_the_layers_head_too(one_thread):
    torch.manual_seed(0)
    head = LayersHead(H, PLANTED_BLOCKS, proj_dim=32, hidden=64)
    train, labels = planted_table(256, seed=1)
    val, val_labels = planted_table(128, seed=2)
    generator = torch.Generator().manual_seed(0)
    opts = TrainOptions(num_epochs=15, learning_rate=1e-2, batch_size=64, contrastive_weight=0.5)
    state = fit(head, CachedFeatures([train], generator, head.blocks), labels,
                lambda h: validation_metrics(h, val, val_labels.numpy()), opts, generator, torch.device("cpu"))
    assert state.history[-1]["val_ap"] >= 0.95
    with pytest.raises(ValueError, match="not the linear probe"):
        fit(LinearHead(D), CachedFeatures([train], generator), labels,
            lambda h: validation_metrics(h, val, val_labels.numpy()), opts, generator, torch.device("cpu"))


def test_learning_rate_schedules():
    constant = TrainOptions(num_epochs=8, learning_rate=1.0)
    assert [constant.learning_rate_at(e) for e in (1, 8)] == [1.0, 1.0]
    cosine = TrainOptions(num_epochs=8, learning_rate=1.0, lr_schedule="cosine")
    rates = [cosine.learning_rate_at(e) for e in range(1, 9)]
    assert rates[0] == 1.0 and all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] > 0
    assert rates[4] == pytest.approx(0.5)
    step = TrainOptions(num_epochs=8, learning_rate=1.0, lr_schedule="step")
    assert step.lr_milestones == (5, 7)
    assert [step.learning_rate_at(e) for e in range(1, 9)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="--lr_schedule 'linear'"):
        TrainOptions(lr_schedule="linear")


def test_patience_stops_when_val_ap_stops_rising(one_thread):
    np.random.seed(0)
    torch.manual_seed(0)
    head = MLPHead(D, hidden=16)
    train, labels = planted_table(128, seed=1)
    val, val_labels = planted_table(64, seed=2)
    generator = torch.Generator().manual_seed(0)
    opts = TrainOptions(num_epochs=50, learning_rate=1e-2, batch_size=64, patience=3)
    state = fit(head, CachedFeatures([train], generator), labels,
                lambda h: validation_metrics(h, val, val_labels.numpy()), opts, generator, torch.device("cpu"))
    aps = [r["val_ap"] for r in state.history]
    best_epoch = int(np.argmax(aps)) + 1
    assert state.stopped_early and state.epoch == best_epoch + 3 < 50


# --- a layers checkpoint through train, test and predict ------------------------------


@pytest.fixture(scope="module")
def layers_run(tmp_path_factory, forensynths) -> dict:
    base = tmp_path_factory.mktemp("layers-run")
    out, cache = base / "run", base / "cache"
    argv = train_args(forensynths, out, cache, "--head", "layers", "--proj_dim", "32", "--lr_schedule", "cosine",
                      "--keep_last", "2", "--patience", "10")
    assert train_ClassifierHead.main(argv) == 0
    return {"data": forensynths, "run": out, "cache": cache}


def test_layers_run_records_head_importance_and_options_and_keeps_the_last_epochs(layers_run):
    run = layers_run["run"]
    assert sorted(p.name for p in run.glob("epoch_*")) == [
        "epoch_005.json", "epoch_005.safetensors", "epoch_006.json", "epoch_006.safetensors"]
    config = json.loads((run / "best.json").read_text())
    assert config["head"].pop("ood")["dim"] == 32  # of the final embedding, whatever the head reads
    assert config["head"] == {"kind": "layers", "hidden_size": 64, "blocks": [0, 1, 2, 3], "proj_dim": 32,
                              "importance": "block", "hidden": 256, "dropout": 0.1, "num_classes": 2}
    assert config["training"]["lr_schedule"] == "cosine" and config["training"]["keep_last"] == 2
    assert config["training"]["patience"] == 10 and config["training"]["contrastive_weight"] == 0.0
    assert config["features"]["layers"] == [0, 1, 2, 3]
    importance = config["block_importance"]
    assert importance["blocks"] == [0, 1, 2, 3] and sum(importance["importance"]) == pytest.approx(1.0, abs=1e-6)
    assert config["metrics"]["val_ap"] >= 0.95


def test_predict_and_test_script_give_identical_probabilities_for_a_layers_checkpoint(layers_run, tmp_path,
                                                                                     monkeypatch):
    out = tmp_path / "eval"
    assert run_test_script(layers_run, out, "--batch_size", "64") == 0
    with open(out / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert (out / "importance.png").is_file()
    report = (out / "results.md").read_text()
    assert "Block importance" in report and "![block importance](importance.png)" in report
    classifier = DeepfakeClassifier.from_pretrained(layers_run["run"])
    calls = []
    forward = CLIPTower.forward
    monkeypatch.setattr(CLIPTower, "forward", lambda self, pixels, layers=False: calls.append((len(pixels), layers))
                        or forward(self, pixels, layers))
    # Same images, same order, same batches: the one scoring path gives the same numbers bit for bit.
    predicted = classifier.predict([r["path"] for r in rows], batch_size=64)
    assert [p.probability for p in predicted] == [float(r["probability"]) for r in rows]
    # One tower pass per image, the per-block tokens coming out of that same pass.
    assert sum(n for n, _ in calls) == len(rows) and all(layers for _, layers in calls)
    alone = classifier.predict([rows[0]["path"]])[0].probability
    assert alone == pytest.approx(float(rows[0]["probability"]), abs=1e-6)


def test_classifier_forward_scores_pixels_through_the_layers_head(layers_run):
    classifier = DeepfakeClassifier.from_pretrained(layers_run["run"])
    path = str(next((layers_run["data"] / "test" / "car" / "1_fake").glob("*.png")))
    pixels = DeepfakeDataset([Sample(path, 1, "car")], classifier.preprocess).load(0)[None]
    with torch.no_grad():
        p = torch.softmax(classifier(pixels), dim=1)[0, 1].item()
    assert p == pytest.approx(classifier.predict([path])[0].probability, abs=1e-5)


def test_layers_checkpoint_on_a_tower_without_those_blocks_is_refused(layers_run, tmp_path):
    config = json.loads((layers_run["run"] / "best.json").read_text())
    config["head"]["blocks"] = [0, 12]
    shutil.copy(layers_run["run"] / "best.safetensors", tmp_path / "best.safetensors")
    (tmp_path / "best.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointRefused, match="head reads block 12, tower has blocks 0..3"):
        DeepfakeClassifier.from_pretrained(tmp_path)


def test_layers_head_trains_the_same_from_the_cache_and_without_it(tmp_path, forensynths):
    runs = {}
    for name, extra in (("cached", ()), ("plain", ("--no_cache",))):
        argv = train_args(forensynths, tmp_path / name, tmp_path / "cache", "--head", "layers", "--proj_dim", "16",
                          "--categories", "car,cat", *extra)
        argv[argv.index("--num_epochs") + 1] = "2"
        assert train_ClassifierHead.main(argv) == 0
        runs[name] = json.loads((tmp_path / name / "run.json").read_text())["history"]
    for a, b in zip(runs["cached"], runs["plain"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5) and a["val_acc"] == b["val_acc"]
    wa, wb = (load_file(str(tmp_path / name / "epoch_002.safetensors")) for name in ("cached", "plain"))
    assert all((wa[k] - wb[k]).abs().max().item() <= 1e-5 for k in wa)


def test_resuming_with_another_head_kind_is_refused(layers_run, caplog):
    before = sorted(p.name for p in layers_run["run"].iterdir())
    argv = train_args(layers_run["data"], layers_run["run"], layers_run["cache"], "--head", "mlp", "--resume")
    assert train_ClassifierHead.main(argv) == 2
    assert "cannot resume: head differs" in caplog.text
    assert sorted(p.name for p in layers_run["run"].iterdir()) == before
