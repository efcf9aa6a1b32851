"""Every tower family loads from a transformers save_pretrained directory, as transformers runs it.

For each family a tiny random model is saved (single-file and sharded), loaded with
``--model DIR``, and its features compared with the transformers module's own output for
the same pixels; its preprocessing must be the one its preprocessor_config.json describes;
and train -> test -> predict must run end to end on it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import test_ClassifierHead
import train_ClassifierHead
from deepfake import DeepfakeClassifier
from deepfake.data.preprocess import preprocess_image
from deepfake.towers.loading import load_tower
from deepfake.towers.registry import families, supported_model_types
from deepfake.towers.tiny import EXPECTED_PREPROCESS, FAMILY_OF, KINDS, PROCESSORS, build_model, save_tower
from deepfake.towers.weights import WeightsError

from .conftest import make_forensynths

FEATURE = {"clip": "projected", "siglip": "pooled", "dinov2": "cls+mean_patch", "dinov3": "cls+mean_patch"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    for kind in KINDS:
        save_tower(kind, root / kind)
        save_tower(kind, root / f"{kind}-sharded", sharded=True)
    return root


def reference(kind: str, model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature, per-block tokens) computed from the transformers module itself."""
    with torch.inference_mode():
        if kind == "clip":
            out = model.vision_model(pixel_values=pixels, output_hidden_states=True)
            return model.visual_projection(out.pooler_output), torch.stack([h[:, 0] for h in out.hidden_states], 1)
        if kind in ("siglip", "siglip_vision", "siglip2"):
            vision = model.vision_model if kind == "siglip" else model
            if kind == "siglip2":
                from transformers.models.siglip2.image_processing_pil_siglip2 import convert_image_to_patches

                patches = torch.stack([torch.from_numpy(convert_image_to_patches(p.numpy(), 8)) for p in pixels])
                out = vision(pixel_values=patches, pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
                             spatial_shapes=torch.tensor([[4, 4]] * len(pixels)), output_hidden_states=True)
            else:
                out = vision(pixel_values=pixels, output_hidden_states=True)
            return out.pooler_output, torch.stack([h.mean(1) for h in out.hidden_states], 1)
        out = model(pixel_values=pixels, output_hidden_states=True)
        prefix = 1 + getattr(model.config, "num_register_tokens", 0)
        feature = torch.cat([out.pooler_output, out.last_hidden_state[:, prefix:].mean(1)], dim=1)
        return feature, torch.stack([h[:, 0] for h in out.hidden_states], 1)


@pytest.mark.parametrize("sharded", [False, True], ids=["single-file", "sharded"])
@pytest.mark.parametrize("kind", KINDS)
def test_tower_features_equal_the_transformers_module_output(zoo, kind, sharded):
    directory = zoo / (f"{kind}-sharded" if sharded else kind)
    if sharded:
        assert (directory / "model.safetensors.index.json").is_file() and not (directory / "model.safetensors").exists()
    tower = load_tower(str(directory))
    family = FAMILY_OF[kind]
    assert tower.identity["family"] == family and tower.identity["feature"] == FEATURE[family]
    assert tower.model.config._attn_implementation == "sdpa"
    assert not any(p.requires_grad for p in tower.parameters())
    pixels = torch.randn(3, 3, 32, 32)
    expected, expected_layers = reference(kind, build_model(kind), pixels)
    with torch.inference_mode():
        out = tower(pixels, layers=True)
    assert out.embeds.shape == (3, tower.feature_dim)
    assert (out.embeds - expected).abs().max().item() <= 1e-5
    # Row 0 is the embedding output, row i the token after block i.
    assert out.layers.shape == (3, tower.num_layers + 1, tower.hidden_size) == expected_layers.shape
    assert (out.layers - expected_layers).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_preprocessing_follows_the_checkpoint_preprocessor_config(zoo, kind):
    tower = load_tower(str(zoo / kind))
    spec = tower.preprocess
    config = PROCESSORS[kind]
    assert (spec.mode, spec.size, spec.resize_size, spec.interpolation) == EXPECTED_PREPROCESS[kind]
    assert spec.mean == tuple(config["image_mean"]) and spec.std == tuple(config["image_std"])
    # A flat colour survives any resampling: every output pixel is (colour - mean) / std.
    colour = np.array([200, 30, 90], dtype=np.uint8)
    image = Image.fromarray(np.broadcast_to(colour, (45, 70, 3)).copy())
    pixels = preprocess_image(image, spec)
    assert pixels.shape == (3, spec.size, spec.size)
    expected = (torch.tensor(colour / 255.0) - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    assert torch.allclose(pixels.mean(dim=(1, 2)).double(), expected, atol=1e-5)
    assert pixels.std(dim=(1, 2)).max().item() < 1e-5


def test_missing_preprocessor_config_falls_back_to_the_family_transform_not_clip(zoo, tmp_path):
    shutil.copytree(zoo / "dinov2", tmp_path / "dinov2")
    (tmp_path / "dinov2" / "preprocessor_config.json").unlink()
    spec = load_tower(str(tmp_path / "dinov2")).preprocess
    assert spec.mean == (0.485, 0.456, 0.406) and (spec.mode, spec.size, spec.resize_size) == ("resize", 224, 256)


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip2", "dinov2_registers", "dinov3"])
def test_train_test_predict_run_on_every_family(zoo, kind, tmp_path):
    data = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=1)
    run, cache = tmp_path / "run", tmp_path / "cache"
    common = ["--cache_dir", str(cache), "--num_workers", "0", "--quiet", "--batch_size", "8"]
    assert train_ClassifierHead.main(["--dataset_dir", str(data), "--output_dir", str(run),
                                      "--model", str(zoo / f"{kind}-sharded"), "--num_epochs", "1",
                                      "--precision", "fp32", "--feature_layers", "all", *common]) == 0
    saved = json.loads((run / "best.json").read_text())
    assert saved["tower"]["family"] == FAMILY_OF[kind]
    assert saved["preprocess"]["mode"] == EXPECTED_PREPROCESS[kind][0]
    assert test_ClassifierHead.main(["--checkpoint", str(run), "--dataset_dir", str(data / "test"),
                                     "--output_dir", str(tmp_path / "eval"), "--no_plots", *common]) == 0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["tower"]["family"] == FAMILY_OF[kind]
    clf = DeepfakeClassifier.from_pretrained(run)
    images = sorted((data / "test" / "car" / "1_fake").iterdir())
    probs = clf.predict_proba(images)
    assert probs.shape == (1,) and 0.0 <= probs[0] <= 1.0


def test_unknown_model_type_is_refused_listing_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit_mae", "hidden_size": 8}))
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="model_type 'vit_mae'") as err:
        load_tower(str(tmp_path))
    for model_type in ("LanguageBindImage", "clip", "siglip", "siglip2", "dinov2", "dinov2_with_registers",
                       "dinov3_vit"):
        assert model_type in supported_model_types() and f"{model_type}," in f"{err.value},"


def test_every_family_registers_from_its_own_module():
    registered = families()
    assert set(registered) == {"languagebind", "clip", "siglip", "dinov2", "dinov3", "spectrum", "tiny-ladeda", "npr"}
    assert [name for name, f in registered.items() if f.fused] in (["languagebind", "clip"], ["clip", "languagebind"])


def test_missing_weight_in_a_sharded_checkpoint_is_named(zoo, tmp_path):
    from safetensors.torch import load_file, save_file

    directory = shutil.copytree(zoo / "dinov2-sharded", tmp_path / "broken")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["layernorm.weight"]
    state = load_file(str(directory / shard))
    del state["layernorm.weight"]
    save_file(state, str(directory / shard), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="missing tower keys: layernorm.weight"):
        load_tower(str(directory))


def test_missing_shard_is_named(zoo, tmp_path):
    directory = shutil.copytree(zoo / "siglip-sharded", tmp_path / "broken")
    shard = sorted(directory.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(WeightsError, match=f"shard\\(s\\) missing .*{shard.name}"):
        load_tower(str(directory))


def test_sharded_hub_checkpoint_loads_from_the_offline_cache(zoo, tmp_path):
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hub" / "models--facebook--dinov2-large"
    shutil.copytree(zoo / "dinov2-sharded", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = ("from deepfake.towers.loading import load_tower; t = load_tower('facebook/dinov2-large'); "
            "print(t.identity['revision'], t.identity['family'], t.feature_dim, t.preprocess.resize_size)")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [commit, "dinov2", "64", "36"]
