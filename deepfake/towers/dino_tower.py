"""The DINO ViT tower that the DINOv2 and DINOv3 families share."""

from __future__ import annotations

import torch

from deepfake.towers.backbones import Backbone
from deepfake.towers.base import TowerShape, TransformersTower


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
