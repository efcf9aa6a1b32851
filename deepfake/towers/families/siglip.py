"""SigLIP family: SigLIP and SigLIP 2 vision towers through transformers.

Recognised by ``model_type`` ``siglip`` / ``siglip_vision_model`` (SigLIP, and the
fixed-resolution SigLIP 2 releases, which share the architecture: ``SiglipVisionModel``) and
``siglip2`` / ``siglip2_vision_model`` (SigLIP 2 NaFlex: ``Siglip2VisionModel``, fed here a
square image of ``sqrt(max_num_patches)`` patches a side, patchified as its processor does).

Feature: the pooled embedding (the multi-head attention-pooling head's output,
``pooler_output``); a tower without the head gives the mean of its final tokens. SigLIP has
no CLS token, so the per-block token is the mean over tokens. Blocks run as transformers
modules with SDPA (not fused).
"""

from __future__ import annotations

import math

import torch

from deepfake.data.preprocess import Preprocess
from deepfake.towers.backbones import Backbone
from deepfake.towers.base import TowerOutput, TowerShape, TransformersTower, load_transformers_model, transformers_config
from deepfake.towers.registry import TowerFamily, register
from deepfake.towers.weights import WeightFiles

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def _vision(config: dict) -> dict:
    return config if config.get("model_type", "").endswith("_vision_model") else config.get("vision_config") or {}


class SiglipTower(TransformersTower):
    """SigLIP vision model: pooled embedding; mean token per block."""

    layer_token = "mean"

    def __init__(self, model, backbone: Backbone, identity: dict):
        self.feature = self.feature_of(model.config)
        super().__init__(model, backbone, identity, model.config.hidden_size)

    @staticmethod
    def feature_of(vision_config) -> str:
        """``pooled`` with the attention-pooling head, else ``mean_token``."""
        return "pooled" if getattr(vision_config, "vision_use_head", True) else "mean_token"

    def features(self, out) -> torch.Tensor:
        return out.pooler_output if self.feature == "pooled" else out.last_hidden_state.mean(dim=1)


def patchify(pixel_values: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, H, W] -> ([B, H/p * W/p, p * p * C], spatial shapes [B, 2]), in Siglip2ImageProcessor's order."""
    b, c, h, w = pixel_values.shape
    if h % patch or w % patch:
        raise ValueError(f"image of {h}x{w} is not a whole number of {patch}px patches")
    nh, nw = h // patch, w // patch
    patches = pixel_values.reshape(b, c, nh, patch, nw, patch).permute(0, 2, 4, 3, 5, 1)
    shapes = torch.tensor([[nh, nw]] * b, dtype=torch.long, device=pixel_values.device)
    return patches.reshape(b, nh * nw, patch * patch * c), shapes


class Siglip2Tower(SiglipTower):
    """SigLIP 2 NaFlex vision model on square images, every patch valid."""

    def forward(self, pixel_values: torch.Tensor, layers: bool = False) -> TowerOutput:
        patches, shapes = patchify(pixel_values.to(self.dtype), int(self.model.config.patch_size))
        mask = torch.ones(patches.shape[:2], dtype=torch.long, device=patches.device)
        out = self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes,
                         output_hidden_states=layers)
        return TowerOutput(embeds=self.features(out), layers=self.block_tokens(out.hidden_states) if layers else None)


def _is_siglip2(config: dict) -> bool:
    return config.get("model_type", "").startswith("siglip2")


def siglip_shape(config: dict, where: str) -> TowerShape:
    """The tower ``load_siglip_tower`` builds, from the vision config (transformers' defaults filled in)."""
    from transformers import Siglip2VisionConfig, SiglipVisionConfig

    vision = transformers_config(Siglip2VisionConfig if _is_siglip2(config) else SiglipVisionConfig, config, where)
    hidden = int(vision.hidden_size)
    return TowerShape(hidden, int(vision.num_hidden_layers), hidden, SiglipTower.feature_of(vision),
                      SiglipTower.layer_token)


def load_siglip_tower(files: WeightFiles, backbone: Backbone, identity: dict) -> SiglipTower:
    from transformers import Siglip2VisionModel, SiglipVisionModel

    if _is_siglip2(files.read_config()):
        return Siglip2Tower(load_transformers_model(Siglip2VisionModel, files, str(files.directory)), backbone, identity)
    return SiglipTower(load_transformers_model(SiglipVisionModel, files, str(files.directory)), backbone, identity)


def siglip_preprocess(config: dict) -> Preprocess:
    """SigLIP's transform: squash to the tower's size (bicubic), mean and std 0.5."""
    vision = _vision(config)
    if _is_siglip2(config):
        side = math.isqrt(int(vision.get("num_patches", 256))) * int(vision.get("patch_size", 16))
        return Preprocess("squash", side, SIGLIP_MEAN, SIGLIP_STD, "bilinear")
    return Preprocess("squash", int(vision.get("image_size", 224)), SIGLIP_MEAN, SIGLIP_STD, "bicubic")


register(TowerFamily("siglip", ("siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model"),
                     load_siglip_tower, siglip_preprocess, feature="pooled embedding (attention-pooling head)",
                     shape=siglip_shape))
