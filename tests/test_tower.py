"""The tower loader reproduces the reference LanguageBind outputs and refuses bad checkpoints."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepfake.data.image_io import load_image
from deepfake.data.preprocess import preprocess_image
from deepfake.features.extraction import prepare_tower
from deepfake.towers.loading import load_tower
from deepfake.towers.weights import WeightsError

from .conftest import FIXTURE

REFERENCE = load_file(str(FIXTURE / "reference.safetensors"))
IMAGES = [FIXTURE / "images" / name for name in json.loads((FIXTURE / "manifest.json").read_text())["images"]]


def fixture_pixels(tower) -> torch.Tensor:
    return torch.stack([preprocess_image(load_image(p), tower.preprocess) for p in IMAGES])


def test_preprocessing_reproduces_reference_pixels():
    tower = load_tower(str(FIXTURE / "lora0"))
    assert (fixture_pixels(tower) - REFERENCE["pixel_values"]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("tag", ["lora0", "lora2"])
def test_tower_reproduces_reference_outputs(tag):
    tower = load_tower(str(FIXTURE / tag))
    assert tower.feature_dim == 32  # the top-level projection_dim, not vision_config's 512
    assert tower.model.config.hidden_act == "gelu"
    assert tower.model.config._attn_implementation == "sdpa"
    assert not any(p.requires_grad for p in tower.parameters())
    with torch.inference_mode():
        out = tower(REFERENCE["pixel_values"], layers=True)
    assert (out.embeds - REFERENCE[f"{tag}.image_embeds"]).abs().max().item() <= 1e-5
    # Reference layout: [embeddings + each block, image, hidden].
    reference_cls = REFERENCE[f"{tag}.hidden_states_cls"].transpose(0, 1)
    assert out.layers.shape == reference_cls.shape
    assert (out.layers - reference_cls).abs().max().item() <= 1e-5


def test_flat_lora_key_scheme_merges_the_same(tmp_path):
    state = torch.load(FIXTURE / "lora2" / "pytorch_model.bin", weights_only=True)
    flat = {k.replace(".base_model.model.", ".").replace(".base_layer.", ".").replace(".default.", "."): v
            for k, v in state.items()}
    assert any(".lora_A.weight" in k for k in flat)
    shutil.copy(FIXTURE / "lora2" / "config.json", tmp_path / "config.json")
    torch.save(flat, tmp_path / "pytorch_model.bin")
    with torch.inference_mode():
        out = load_tower(str(tmp_path))(REFERENCE["pixel_values"])
    assert (out.embeds - REFERENCE["lora2.image_embeds"]).abs().max().item() <= 1e-5


def test_bf16_features_agree_with_fp32():
    tower = load_tower(str(FIXTURE / "lora0"))
    pixels = fixture_pixels(tower)
    with torch.inference_mode():
        fp32 = tower(pixels).embeds.float()
        cast = copy.deepcopy(tower).to(torch.bfloat16)(pixels).embeds.float()
        # The extraction path: cast once and fused for inference.
        extraction = prepare_tower(tower, "bf16", torch.device("cpu"))(pixels).embeds.float()
    for bf16 in (cast, extraction):
        cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=1)
        assert cosine.min().item() >= 0.999


def test_transformers_clip_checkpoint_loads_through_model_flag(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 99, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 224, "patch_size": 32},
        projection_dim=16,
    )
    torch.manual_seed(0)
    clip = CLIPModel(config).eval()
    clip.save_pretrained(tmp_path / "clip")
    tower = load_tower(str(tmp_path / "clip"))
    assert tower.identity["family"] == "clip" and tower.feature_dim == 16
    pixels = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
        assert torch.allclose(tower(pixels).embeds, expected, atol=1e-5)

    import train_ClassifierHead

    from .conftest import make_forensynths

    data = make_forensynths(tmp_path / "data", n_train=3, n_val=2, n_test=1)
    argv = ["--dataset_dir", str(data), "--output_dir", str(tmp_path / "run"), "--model", str(tmp_path / "clip"),
            "--cache_dir", str(tmp_path / "cache"), "--num_epochs", "1", "--num_workers", "0", "--quiet"]
    assert train_ClassifierHead.main(argv) == 0
    saved = json.loads((tmp_path / "run" / "best.json").read_text())
    assert saved["tower"]["family"] == "clip" and saved["head"]["in_dim"] == 16


def test_unknown_config_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="model_type 'bert'"):
        load_tower(str(tmp_path))


def test_missing_tower_key_is_named(tmp_path):
    shutil.copy(FIXTURE / "lora0" / "config.json", tmp_path / "config.json")
    state = torch.load(FIXTURE / "lora0" / "pytorch_model.bin", weights_only=True)
    del state["vision_model.post_layernorm.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="missing tower keys: vision_model.post_layernorm.weight"):
        load_tower(str(tmp_path))


def test_unexpected_key_is_named(tmp_path):
    shutil.copy(FIXTURE / "lora0" / "config.json", tmp_path / "config.json")
    state = torch.load(FIXTURE / "lora0" / "pytorch_model.bin", weights_only=True)
    state["vision_model.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="unexpected keys: vision_model.extra.weight"):
        load_tower(str(tmp_path))


def test_not_a_directory_nor_hub_id():
    with pytest.raises(WeightsError, match="not a checkpoint directory nor a hub id"):
        load_tower("./no/such/dir")


def _run_offline(code: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "home"),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_hub_id_resolves_from_offline_cache(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--LanguageBind--LanguageBind_Image"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in ("config.json", "pytorch_model.bin"):
        shutil.copy(FIXTURE / "lora0" / name, snapshot / name)
    code = ("from deepfake.towers.loading import load_tower; t = load_tower('LanguageBind/LanguageBind_Image'); "
            "print(t.identity['revision'], t.feature_dim)")
    result = _run_offline(code, tmp_path / "hub")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [commit, "32"]


def test_offline_cache_miss_is_a_clear_error(tmp_path):
    code = "from deepfake.towers.loading import load_tower; load_tower('LanguageBind/LanguageBind_Image')"
    result = _run_offline(code, tmp_path / "empty-hub")
    assert result.returncode != 0
    assert "HF_HUB_OFFLINE is set" in result.stderr
