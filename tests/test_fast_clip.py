"""The inference rewrites of the CLIP blocks compute what the original blocks compute."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPVisionConfig

from deepfake.features.extraction import prepare_tower
from deepfake.towers import fast_clip
from deepfake.towers.backbones import backbone_for
from deepfake.towers.clip_tower import build_clip_tower
from deepfake.towers.fast_clip import FrozenLinear, FusedCLIPAttention, FusedCLIPMLP, chunked_attention
from deepfake.towers.loading import load_tower
from deepfake.utils.runtime import cpu_has_bf16

from .conftest import FIXTURE

REFERENCE = load_file(str(FIXTURE / "reference.safetensors"))
CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16: the oneDNN path is off")


@pytest.mark.parametrize("tag", ["lora0", "lora2"])
def test_fused_tower_reproduces_reference_outputs(tag):
    tower = prepare_tower(load_tower(str(FIXTURE / tag)), "fp32", CPU)
    layers = tower.model.vision_model.encoder.layers
    assert all(isinstance(layer.self_attn, FusedCLIPAttention) for layer in layers)
    assert all(isinstance(layer.mlp, FusedCLIPMLP) for layer in layers)
    with torch.inference_mode():
        out = tower(REFERENCE["pixel_values"], layers=True)
    assert (out.embeds - REFERENCE[f"{tag}.image_embeds"]).abs().max().item() <= 1e-5
    reference_cls = REFERENCE[f"{tag}.hidden_states_cls"].transpose(0, 1)
    assert (out.layers - reference_cls).abs().max().item() <= 1e-5


def _tiny_tower(hidden_act: str):
    config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16, hidden_act=hidden_act)
    torch.manual_seed(0)
    tower = build_clip_tower(config, backbone_for("LanguageBind/LanguageBind_Image"), {"model": "random"})
    for p in tower.parameters():  # transformers' init leaves biases at zero; make them count
        p.data.normal_(0, 0.2)
    return tower


@pytest.mark.parametrize("hidden_act", ["gelu", "quick_gelu"])
def test_fusing_leaves_fp32_features_unchanged(hidden_act):
    plain = _tiny_tower(hidden_act)
    fused = prepare_tower(copy.deepcopy(plain), "fp32", CPU)
    assert isinstance(fused.model.vision_model.encoder.layers[0].self_attn, FusedCLIPAttention)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        a, b = plain(pixels, layers=True), fused(pixels, layers=True)
    assert torch.allclose(a.embeds, b.embeds, atol=1e-6)
    assert torch.allclose(a.layers, b.layers, atol=1e-6)


@pytest.mark.parametrize("hidden_act", ["gelu", "quick_gelu"])
def test_fused_bf16_tower_agrees_with_fp32(hidden_act):
    plain = _tiny_tower(hidden_act)
    fused = prepare_tower(copy.deepcopy(plain), "bf16", CPU)
    pixels = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        cosine = F.cosine_similarity(plain(pixels).embeds, fused(pixels).embeds.float(), dim=1)
    assert cosine.min().item() >= 0.999


def test_fusing_twice_changes_nothing_more():
    tower = prepare_tower(_tiny_tower("gelu"), "fp32", CPU)
    attn = tower.model.vision_model.encoder.layers[0].self_attn
    assert fast_clip.fuse_clip_blocks(tower.model.vision_model.encoder.layers) == 0
    assert tower.model.vision_model.encoder.layers[0].self_attn is attn


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_chunked_attention_matches_sdpa(monkeypatch, dtype, tol):
    b, heads, t, d = 5, 3, 17, 8
    q, k, v = (torch.randn(b, heads, t, d).to(dtype) for _ in range(3))
    # Two images per chunk, so 5 images need an uneven last chunk.
    monkeypatch.setattr(fast_clip, "ATTENTION_CHUNK_BYTES", 2 * heads * t * t * q.element_size())
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=0.3).transpose(1, 2)
    got = chunked_attention(q, k, v, scale=0.3)
    assert got.shape == (b, t, heads, d) and got.dtype == dtype
    assert (got.float() - expected).abs().max().item() <= tol


@needs_bf16
@pytest.mark.parametrize("gelu", [False, True])
def test_onednn_linear_matches_reference_in_bf16(gelu):
    x = torch.randn(2, 7, 32).bfloat16()
    linear = FrozenLinear(torch.randn(48, 32), torch.randn(48), gelu=gelu).to(torch.bfloat16)
    expected = F.linear(x.float(), linear.weight.float(), linear.bias.float())
    expected = F.gelu(expected) if gelu else expected
    got = linear(x)
    assert linear._onednn is not None  # the oneDNN path ran, with its reordered weight
    assert got.shape == (2, 7, 48) and got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), expected, rtol=1e-2, atol=5e-2)


@needs_bf16
def test_reordered_weight_follows_the_plain_one():
    x = torch.randn(5, 16)
    linear = FrozenLinear(torch.randn(8, 16), torch.randn(8)).to(torch.bfloat16)
    before = linear(x.bfloat16())
    twin = copy.deepcopy(linear)  # the oneDNN copy cannot be deep-copied: the twin rebuilds its own
    assert torch.equal(twin(x.bfloat16()), before)
    with torch.no_grad():
        linear.weight.mul_(2)  # replaced in place: the reordered copy must not be reused
    assert torch.allclose(linear(x.bfloat16()).float() - linear.bias.float(), 2 * (before.float() - linear.bias.float()),
                          rtol=2e-2, atol=5e-2)
    fp32 = linear.to(torch.float32)(x)  # back to fp32: plain F.linear again
    assert torch.allclose(fp32, F.linear(x, linear.weight, linear.bias))


@pytest.mark.skipif(shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_takes_the_unfused_blocks():
    plain = _tiny_tower("gelu")
    compiled = prepare_tower(copy.deepcopy(plain), "fp32", CPU, compile=True)
    assert not isinstance(compiled.model.vision_model.encoder.layers[0].self_attn, FusedCLIPAttention)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(plain(pixels).embeds, compiled(pixels).embeds, atol=1e-5)
