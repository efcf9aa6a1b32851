"""DINOv3 family (``model_type`` dinov3_vit): ``DINOv3ViTModel``, RoPE ViT with register tokens.

Feature: as for DINOv2, the normed CLS token concatenated with the mean patch token
(registers excluded), ``2 * hidden_size`` wide. Per-block token: the CLS token. Blocks run as
transformers modules with SDPA (not fused).
"""

from __future__ import annotations

from deepfake.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from deepfake.towers.backbones import Backbone
from deepfake.towers.base import TowerShape, load_transformers_model, transformers_config
from deepfake.towers.dino_tower import DinoTower, dino_shape
from deepfake.towers.registry import TowerFamily, register
from deepfake.towers.weights import WeightFiles


def dinov3_shape(config: dict, where: str) -> TowerShape:
    from transformers import DINOv3ViTConfig

    return dino_shape(transformers_config(DINOv3ViTConfig, config, where))


def load_dinov3_tower(files: WeightFiles, backbone: Backbone, identity: dict) -> DinoTower:
    from transformers import DINOv3ViTModel

    return DinoTower(load_transformers_model(DINOv3ViTModel, files, str(files.directory)), backbone, identity)


def dinov3_preprocess(config: dict) -> Preprocess:
    """DINOv3's transform: resize to the square input size (bilinear), ImageNet statistics."""
    return Preprocess("squash", int(config.get("image_size", 224)), IMAGENET_MEAN, IMAGENET_STD, "bilinear")


register(TowerFamily("dinov3", ("dinov3_vit",), load_dinov3_tower, dinov3_preprocess,
                     feature="CLS token + mean patch token", shape=dinov3_shape))
