"""DINOv2 family, with or without registers (``model_type`` dinov2 / dinov2_with_registers).

Feature: the DINOv2 linear-probe protocol, the final-layer-normed CLS token concatenated with
the mean of the patch tokens (register tokens excluded), so ``2 * hidden_size`` wide.
Per-block token: the CLS token. Blocks run as transformers modules with SDPA (not fused).
"""

from __future__ import annotations

from deepfake.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from deepfake.towers.backbones import Backbone
from deepfake.towers.base import TowerShape, load_transformers_model, transformers_config
from deepfake.towers.dino_tower import DinoTower, dino_shape
from deepfake.towers.registry import TowerFamily, register
from deepfake.towers.weights import WeightFiles


def _with_registers(config: dict) -> bool:
    return config.get("model_type") == "dinov2_with_registers"


def dinov2_shape(config: dict, where: str) -> TowerShape:
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    return dino_shape(transformers_config(Dinov2WithRegistersConfig if _with_registers(config) else Dinov2Config,
                                          config, where))


def load_dinov2_tower(files: WeightFiles, backbone: Backbone, identity: dict) -> DinoTower:
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    model_class = Dinov2WithRegistersModel if _with_registers(files.read_config()) else Dinov2Model
    return DinoTower(load_transformers_model(model_class, files, str(files.directory)), backbone, identity)


def dinov2_preprocess(config: dict) -> Preprocess:
    """DINOv2's evaluation transform: short side 256 (bicubic), center crop 224, ImageNet statistics."""
    return Preprocess("resize", 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic", resize_size=256)


register(TowerFamily("dinov2", ("dinov2", "dinov2_with_registers"), load_dinov2_tower, dinov2_preprocess,
                     feature="CLS token + mean patch token (linear-probe protocol)", shape=dinov2_shape))
