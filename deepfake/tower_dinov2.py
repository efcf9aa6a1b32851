"""DINOv2 family, with or without registers (``model_type`` dinov2 / dinov2_with_registers).

Feature: the DINOv2 linear-probe protocol, the final-layer-normed CLS token concatenated with
the mean of the patch tokens (register tokens excluded), so ``2 * hidden_size`` wide.
Per-block token: the CLS token. Blocks run as transformers modules with SDPA (not fused).
"""

from __future__ import annotations

import torch

from deepfake.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, Preprocess
from deepfake.tower_base import TowerShape, TransformersTower, load_transformers_model, transformers_config
from deepfake.tower_files import CheckpointFiles
from deepfake.tower_registry import TowerFamily, register


class DinoTower(TransformersTower):
    """A DINO ViT: CLS token and mean patch token of the normed final tokens, concatenated."""

    feature = "cls+mean_patch"
    layer_token = "cls"

    def __init__(self, model, backbone: Backbone, identity: dict):
        self.prefix_tokens = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        super().__init__(model, backbone, identity, 2 * model.config.hidden_size)

    def features(self, out) -> torch.Tensor:
        tokens = out.last_hidden_state
        return torch.cat([tokens[:, 0], tokens[:, self.prefix_tokens:].mean(dim=1)], dim=1)


def dino_shape(vision_config) -> TowerShape:
    """A DINO tower's shape from its transformers config: CLS + mean patch, so twice the width."""
    hidden = int(vision_config.hidden_size)
    return TowerShape(2 * hidden, int(vision_config.num_hidden_layers), hidden, DinoTower.feature,
                      DinoTower.layer_token)


def _with_registers(config: dict) -> bool:
    return config.get("model_type") == "dinov2_with_registers"


def dinov2_shape(config: dict, where: str) -> TowerShape:
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    return dino_shape(transformers_config(Dinov2WithRegistersConfig if _with_registers(config) else Dinov2Config,
                                          config, where))


def load_dinov2_tower(files: CheckpointFiles, backbone: Backbone, identity: dict) -> DinoTower:
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    model_class = Dinov2WithRegistersModel if _with_registers(files.read_config()) else Dinov2Model
    return DinoTower(load_transformers_model(model_class, files, str(files.directory)), backbone, identity)


def dinov2_preprocess(config: dict) -> Preprocess:
    """DINOv2's evaluation transform: short side 256 (bicubic), center crop 224, ImageNet statistics."""
    return Preprocess("resize", 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic", resize_size=256)


register(TowerFamily("dinov2", ("dinov2", "dinov2_with_registers"), load_dinov2_tower, dinov2_preprocess,
                     feature="CLS token + mean patch token (linear-probe protocol)", shape=dinov2_shape))
