"""Towers named from their config and built only when an image must go through them.

``load_tower(..., defer=True)`` must give the identity and sizes the built tower has (else
features would be filed under another cache key), build on the first forward only, apply what
``prepare_tower`` asked for, and a training run whose features are all cached must never build it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train_ClassifierHead
from deepfake.features.extraction import prepare_tower
from deepfake.towers import registry as tower_registry
from deepfake.towers.deferred import DeferredTower
from deepfake.towers.fast_clip import FusedCLIPAttention
from deepfake.towers.loading import load_tower
from deepfake.towers.tiny import KINDS, save_tower
from deepfake.towers.weights import WeightsError

from .conftest import TOWER, make_forensynths, train_args

ROOT = Path(__file__).resolve().parent.parent
MODELING = ("transformers.models.clip.modeling_clip", "transformers.models.siglip.modeling_siglip",
            "transformers.models.siglip2.modeling_siglip2", "transformers.models.dinov2.modeling_dinov2",
            "transformers.models.dinov2_with_registers.modeling_dinov2_with_registers",
            "transformers.models.dinov3_vit.modeling_dinov3_vit")


@pytest.fixture(scope="module")
def towers(tmp_path_factory) -> dict[str, str]:
    """A tiny tower of every kind, the LanguageBind fixture, and a SigLIP without its pooling head."""
    root = tmp_path_factory.mktemp("deferred-zoo")
    paths = {kind: str(save_tower(kind, root / kind)) for kind in KINDS}
    paths["languagebind"] = TOWER
    from transformers import SiglipVisionConfig, SiglipVisionModel

    headless = SiglipVisionModel(SiglipVisionConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                                                    num_attention_heads=2, image_size=32, patch_size=8,
                                                    vision_use_head=False))
    headless.save_pretrained(root / "siglip_headless")
    shutil.copy(Path(paths["siglip_vision"]) / "preprocessor_config.json", root / "siglip_headless")
    paths["siglip_headless"] = str(root / "siglip_headless")
    return paths


def counting_builds(monkeypatch, family_name: str) -> list[int]:
    """Count the family's tower builds (each call of its ``load``) from here on."""
    family = tower_registry.family(family_name)
    builds: list[int] = []

    def load(*args, **kwargs):
        builds.append(1)
        return family.load(*args, **kwargs)

    monkeypatch.setitem(tower_registry._FAMILIES, family_name, replace(family, load=load))
    return builds


@pytest.mark.parametrize("kind", [*KINDS, "languagebind", "siglip_headless"])
def test_deferred_tower_identity_and_sizes_equal_the_built_towers(towers, kind):
    built = load_tower(towers[kind])
    deferred = load_tower(towers[kind], defer=True)
    assert isinstance(deferred, DeferredTower) and not deferred.is_built
    assert deferred.cache_identity() == built.cache_identity()
    assert deferred.identity == built.identity
    assert (deferred.feature_dim, deferred.num_layers, deferred.hidden_size) == (
        built.feature_dim, built.num_layers, built.hidden_size)
    assert deferred.preprocess == built.preprocess
    pixels = torch.randn(2, 3, built.preprocess.size, built.preprocess.size)
    with torch.inference_mode():
        expected, got = built(pixels, layers=True), deferred(pixels, layers=True)
    assert deferred.is_built and not any(p.requires_grad for p in deferred.parameters())
    assert torch.equal(got.embeds, expected.embeds) and torch.equal(got.layers, expected.layers)


def test_headless_siglip_is_named_by_its_mean_token(towers):
    assert load_tower(towers["siglip_headless"], defer=True).identity["feature"] == "mean_token"


def test_families_and_a_deferred_load_import_no_transformers_modeling_code():
    code = (f"import sys, json; import deepfake; from deepfake.towers import registry as tower_registry; "
            f"tower_registry.families(); "
            f"from deepfake.towers.loading import load_tower; t = load_tower({TOWER!r}, defer=True); t.cache_identity(); "
            f"print(json.dumps(sorted(m for m in sys.modules if m in {list(MODELING)!r})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_deferred_tower_builds_once_on_its_first_forward(towers, monkeypatch):
    builds = counting_builds(monkeypatch, "dinov2")
    tower = load_tower(towers["dinov2"], defer=True)
    assert builds == [] and list(tower.parameters()) == []
    first = tower.materialize()
    tower(torch.randn(1, 3, 32, 32))
    assert builds == [1] and tower.materialize() is first


def test_building_a_deferred_tower_leaves_the_global_random_stream_alone(towers):
    tower = load_tower(towers["clip"], defer=True)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    tower.materialize()  # initialises a random model before reading its weights
    assert torch.equal(torch.rand(4), expected)


def test_prepare_tower_on_a_deferred_tower_applies_at_the_build(towers):
    eager = prepare_tower(load_tower(towers["clip"]), "bf16", torch.device("cpu"))
    deferred = prepare_tower(load_tower(towers["clip"], defer=True), "bf16", torch.device("cpu"))
    assert not deferred.is_built
    assert deferred.dtype == torch.bfloat16 and deferred.device == torch.device("cpu")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected, got = eager(pixels), deferred(pixels)
    built = deferred.materialize()
    assert built.dtype == torch.bfloat16
    assert isinstance(built.model.vision_model.encoder.layers[0].self_attn, FusedCLIPAttention)
    assert torch.equal(got.embeds, expected.embeds)


def test_compile_asked_of_a_deferred_tower_wraps_the_built_model(towers):
    tower = prepare_tower(load_tower(towers["clip"], defer=True), "fp32", torch.device("cpu"), compile=True)
    assert not tower.is_built
    model = tower.materialize().model
    assert hasattr(model, "_orig_mod")  # torch.compile's wrapper (compiling waits for the first call)
    assert not isinstance(model._orig_mod.vision_model.encoder.layers[0].self_attn, FusedCLIPAttention)


@pytest.mark.parametrize(("field", "change"), [("num_layers", {"num_layers": 7}), ("hidden_size", {"hidden_size": 5}),
                                               ("feature_dim", {"feature_dim": 3}),
                                               ("cache_identity", {"layer_token": "mean"})])
def test_build_refuses_a_tower_whose_shape_differs_from_the_config(towers, monkeypatch, field, change):
    family = tower_registry.family("dinov2")
    # Only ``field`` is wrong, so the message must name it.
    monkeypatch.setitem(tower_registry._FAMILIES, "dinov2",
                        replace(family, shape=lambda config, where: replace(family.shape(config, where), **change)))
    tower = load_tower(towers["dinov2"], defer=True)
    with pytest.raises(RuntimeError, match=f"built tower's {field} "):
        tower.materialize()
    assert not tower.is_built


def test_checkpoint_file_errors_are_raised_at_load_time_even_deferred(towers, tmp_path):
    broken = shutil.copytree(towers["dinov2"], tmp_path / "no-weights")
    (broken / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no weights"):
        load_tower(str(broken), defer=True)
    unknown = shutil.copytree(towers["dinov2"], tmp_path / "unknown")
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "vit_mae"}))
    with pytest.raises(WeightsError, match="model_type 'vit_mae'"):
        load_tower(str(unknown), defer=True)


def test_weights_of_the_wrong_shape_are_a_checkpoint_error_at_the_build(towers, tmp_path):
    directory = shutil.copytree(towers["siglip_vision"], tmp_path / "wider")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "intermediate_size": 41}))
    tower = load_tower(str(directory), defer=True)
    with pytest.raises(WeightsError, match=re.escape(str(directory))):
        tower.materialize()


def _head(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "best.safetensors"))


def _config(run: Path) -> dict:
    config = json.loads((run / "best.json").read_text())
    config.pop("train_args")  # names the output folder
    return config


def test_cache_hit_training_run_never_builds_the_tower_and_saves_the_same_head(tmp_path, monkeypatch):
    data = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=0)
    cache = tmp_path / "cache"
    builds = counting_builds(monkeypatch, "languagebind")

    def train(name: str) -> Path:
        args = train_args(data, tmp_path / name, cache, "--num_epochs", "1")
        assert train_ClassifierHead.main(args) == 0
        return tmp_path / name

    first = train("first")
    assert len(builds) == 1  # train and validation features from one build
    second = train("second")
    assert len(builds) == 1  # every feature cached: never built
    assert _config(second) == _config(first)
    assert all(torch.equal(a, b) for a, b in zip(_head(first).values(), _head(second).values(), strict=True))
    shutil.copy(data / "train" / "car" / "1_fake" / "000.png", data / "train" / "car" / "1_fake" / "new.png")
    train("third")
    assert len(builds) == 2  # one image missing: built once


def test_no_cache_training_builds_the_tower_on_its_first_batch(tmp_path, monkeypatch):
    data = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=0)
    builds = counting_builds(monkeypatch, "languagebind")
    args = train_args(data, tmp_path / "run", tmp_path / "unused", "--num_epochs", "2", "--no_cache")
    assert train_ClassifierHead.main(args) == 0
    assert len(builds) == 1


def test_cache_hit_training_run_of_a_languagebind_tower_imports_no_transformers(tmp_path):
    data = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=0)
    cache = tmp_path / "cache"
    assert train_ClassifierHead.main(train_args(data, tmp_path / "first", cache, "--num_epochs", "1")) == 0
    args = train_args(data, tmp_path / "second", cache, "--num_epochs", "1")
    code = (f"import sys, json, train_ClassifierHead; code = train_ClassifierHead.main({args!r}); "
            f"print(json.dumps([code, sorted(m for m in sys.modules if m.split('.')[0] == 'transformers')]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    code, imported = json.loads(result.stdout.splitlines()[-1])
    assert code == 0 and imported == []
    saved = json.loads((tmp_path / "second" / "best.json").read_text())
    from importlib import metadata

    assert saved["versions"]["transformers"] == metadata.version("transformers")


def test_released_tower_is_rebuilt_prepared_the_same_way(towers):
    tower = prepare_tower(load_tower(towers["languagebind"], defer=True), "fp32", torch.device("cpu"))
    pixels = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        before = tower(pixels).embeds
        first = tower.built
        tower.release()
        assert tower.built is None
        after = tower(pixels).embeds
    assert tower.built is not first and any(isinstance(m, FusedCLIPAttention) for m in tower.built.modules())
    assert torch.equal(before, after)


def test_cached_training_releases_the_tower_before_the_head_trains(tmp_path, monkeypatch):
    from deepfake.training import run as training

    data = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=0)
    built, held_while_training = [], []
    fit = training.fit

    def spy(*args, **kwargs):
        held_while_training.extend(t.built is not None for t in built)
        return fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", spy)
    materialize = DeferredTower.materialize
    monkeypatch.setattr(DeferredTower, "materialize", lambda self: built.append(self) or materialize(self))
    assert train_ClassifierHead.main(train_args(data, tmp_path / "run", tmp_path / "cache", "--num_epochs", "1")) == 0
    assert built and held_while_training == [False] * len(built)


def test_moves_of_a_built_deferred_tower_survive_a_release(towers):
    tower = load_tower(towers["languagebind"], defer=True)
    tower.materialize()
    tower.to(dtype=torch.bfloat16)
    tower.release()
    assert tower.dtype == torch.bfloat16
    assert tower.materialize().dtype == torch.bfloat16
    with pytest.raises(TypeError, match="with .to"):
        tower.half()


def test_local_weights_are_hashed_once_while_unchanged(tmp_path, monkeypatch):
    from deepfake.towers import weights as tower_files

    local = tmp_path / "tower"
    shutil.copytree(TOWER, local)
    root = tmp_path / "cache"
    hashed = []
    real = tower_files.file_sha256
    monkeypatch.setattr(tower_files, "file_sha256", lambda path, *a: hashed.append(path) or real(path, *a))
    first = load_tower(str(local), defer=True, memo_root=root).identity["weights_sha256"]
    again = load_tower(str(local), defer=True, memo_root=root).identity["weights_sha256"]
    weights = local / "pytorch_model.bin"
    assert len(hashed) == 1 and again == first == real(weights)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, new bytes and mtime
    weights.write_bytes(bytes(data))
    changed = load_tower(str(local), defer=True, memo_root=root).identity["weights_sha256"]
    assert len(hashed) == 2 and changed != first
    (memo,) = (root / "sha256").glob("*.json")
    memo.write_text("{torn")
    assert load_tower(str(local), defer=True, memo_root=root).identity["weights_sha256"] == changed


def test_training_caches_every_set_before_it_reads_any_table(tmp_path, monkeypatch):
    from deepfake.training import run as training

    data = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=0)
    calls = []
    for name in ("cache_features", "read_features"):
        real = getattr(training, name)
        monkeypatch.setattr(training, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    args = train_args(data, tmp_path / "run", tmp_path / "cache", "--num_epochs", "1", "--blur_prob", "0.5",
                      "--aug_views", "2")
    assert train_ClassifierHead.main(args) == 0
    assert calls == ["cache_features"] * 3 + ["read_features"] * 3  # two augmented views and val
