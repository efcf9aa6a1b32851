"""Turn a LanguageBind or CLIP checkpoint into ``CLIPVisionModelWithProjection`` weights.

LanguageBind_Image is an OpenCLIP ViT stored under CLIP key names inside a
``LanguageBindImage`` config. Three things differ from a plain transformers CLIP:
``hidden_act`` is exact ``gelu`` (read from ``vision_config``, never the CLIP default),
``visual_projection`` is sized by the top-level ``projection_dim``, and towers trained
with LoRA store peft-wrapped attention weights that must be merged.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from deepfake.towers.weights import WeightsError

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig

__all__ = ["WeightsError", "check_keys", "vision_config_from", "vision_fields", "vision_state_dict"]

# Fields copied from a checkpoint's vision config; everything else keeps transformers' default.
_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "patch_size",
    "image_size",
    "layer_norm_eps",
    "hidden_act",
    "attention_dropout",
)
LANGUAGEBIND_MODEL_TYPES = ("LanguageBindImage",)
CLIP_MODEL_TYPES = ("clip", "clip_vision_model")

_DROPPED = re.compile(r"^(text_model\.|text_projection\.|logit_scale$)|position_ids$")
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def vision_fields(config: dict, where: str) -> tuple[dict, dict]:
    """The ``CLIPVisionConfig`` arguments (``projection_dim`` included) and the LoRA settings, from the
    checkpoint's config dict alone: what the tower is, known without importing transformers."""
    if config.get("model_type") not in LANGUAGEBIND_MODEL_TYPES + CLIP_MODEL_TYPES:
        raise WeightsError(f"{where}: model_type {config.get('model_type')!r} is not a CLIP or LanguageBind config")
    if config["model_type"] == "clip_vision_model":
        vision = config
    else:
        vision = config.get("vision_config")
        if not isinstance(vision, dict):
            raise WeightsError(f"{where}: config has no vision_config")
    # The projection belongs to the joint model: its size is the top-level one.
    projection_dim = config.get("projection_dim")
    if projection_dim is None:
        raise WeightsError(f"{where}: config gives no projection_dim")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size") if k not in vision]
    if missing:
        raise WeightsError(f"{where}: vision config lacks {', '.join(missing)}")
    kwargs = {k: vision[k] for k in _VISION_FIELDS if k in vision}
    # transformers' CLIPVisionConfig defaults to quick_gelu, the wrong activation for
    # LanguageBind; a config without hidden_act is an OpenAI CLIP, which does use it.
    kwargs.setdefault("hidden_act", "quick_gelu")
    kwargs["projection_dim"] = int(projection_dim)
    lora = {"lora_r": int(vision.get("lora_r", 0) or 0), "lora_alpha": float(vision.get("lora_alpha", 16) or 16)}
    return kwargs, lora


def vision_config_from(config: dict, where: str) -> tuple[CLIPVisionConfig, dict]:
    """Build the ``CLIPVisionConfig`` and return it with the LoRA settings (``lora_r``, ``lora_alpha``)."""
    from transformers import CLIPVisionConfig

    kwargs, lora = vision_fields(config, where)
    return CLIPVisionConfig(**kwargs), lora


def vision_state_dict(state: dict[str, torch.Tensor], lora: dict, where: str) -> dict[str, torch.Tensor]:
    """Keep the image tower's weights, drop the rest, merge LoRA adapters into their base weights.

    Two peft layouts are understood: the wrapped one
    (``encoder.base_model.model.layers.N...q_proj.base_layer.weight`` + ``lora_A.default.weight``)
    and the flat one (``encoder.layers.N...q_proj.weight`` + ``lora_A.weight``).
    """
    base: dict[str, torch.Tensor] = {}
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if _DROPPED.search(key):
            continue
        key = key.replace(".base_model.model.", ".").replace(".base_layer.", ".")
        match = _LORA.match(key)
        if match:
            adapters.setdefault(match["module"], {})[match["which"]] = value
        else:
            base[key] = value
    for module, pair in adapters.items():
        if set(pair) != {"A", "B"}:
            raise WeightsError(f"{where}: LoRA adapter of {module} lacks lora_{({'A', 'B'} - set(pair)).pop()}")
        weight_key = f"{module}.weight"
        if weight_key not in base:
            raise WeightsError(f"{where}: LoRA adapter for {module} but no base weight {weight_key}")
        a, b = pair["A"].float(), pair["B"].float()
        rank = a.shape[0]
        if lora["lora_r"] and lora["lora_r"] != rank:
            raise WeightsError(f"{where}: config says lora_r={lora['lora_r']} but {module} has rank {rank}")
        scale = lora["lora_alpha"] / rank
        merged = base[weight_key].float() + (b @ a) * scale
        base[weight_key] = merged.to(base[weight_key].dtype)
    return base


def check_keys(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], where: str) -> None:
    """Strict key and shape check: a silent random init of a missing weight is never acceptable."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tower keys: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append(
            f"unexpected keys: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else "")
        )
    for key in sorted(set(expected) & set(given)):
        if tuple(expected[key].shape) != tuple(given[key].shape):
            problems.append(f"{key}: shape {tuple(given[key].shape)} in file, {tuple(expected[key].shape)} in config")
    if problems:
        raise WeightsError(f"{where}: weights do not match the config: " + "; ".join(problems))
