"""The CLIP ViT tower that the CLIP and LanguageBind families share.

Feature: the projected image embedding (``image_embeds``: pooled CLS token after the final
layer norm, through ``visual_projection``), as UniversalFakeDetect uses it. Per-block tokens:
the CLS token. The blocks are rewritten by :mod:`deepfake.towers.fast_clip` for extraction.
The weights are mapped by :mod:`deepfake.towers.clip_weights` with strict key checks.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from deepfake.data.preprocess import Preprocess
from deepfake.towers.backbones import Backbone
from deepfake.towers.base import TowerShape, TransformersTower
from deepfake.towers.clip_weights import check_keys, vision_config_from, vision_fields, vision_state_dict
from deepfake.towers.weights import WeightFiles, read_weights

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

log = logging.getLogger(__name__)


class CLIPTower(TransformersTower):
    """A CLIP ViT image tower (LanguageBind or transformers CLIP) with its projection."""

    feature = "projected"
    layer_token = "cls"

    def __init__(self, model: CLIPVisionModelWithProjection, backbone: Backbone, identity: dict):
        super().__init__(model, backbone, identity, model.config.projection_dim)

    def features(self, out):
        return out.image_embeds

    def fuse_for_inference(self) -> CLIPTower:
        from deepfake.towers.fast_clip import fuse_clip_blocks

        fuse_clip_blocks(self.model.vision_model.encoder.layers)
        return self


def build_clip_tower(
    vision_config: CLIPVisionConfig, backbone: Backbone, identity: dict, state: dict | None = None
) -> CLIPTower:
    """A CLIP tower from a config, with ``state`` loaded strictly (random weights if ``None``)."""
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection._from_config(vision_config, attn_implementation="sdpa")
    if state is not None:
        check_keys(model.state_dict(), state, identity.get("model", "checkpoint"))
        model.load_state_dict(state, strict=True)
    return CLIPTower(model, backbone, identity)


def load_clip_tower(files: WeightFiles, backbone: Backbone, identity: dict) -> CLIPTower:
    """LanguageBind or transformers CLIP weights mapped into ``CLIPVisionModelWithProjection``."""
    vision_config, lora = vision_config_from(files.read_config(), str(files.config))
    where = str(files.index or files.weights[0])
    state = vision_state_dict(read_weights(files), lora, where)
    return build_clip_tower(vision_config, backbone, identity, state)


def clip_shape(config: dict, where: str) -> TowerShape:
    """The tower ``load_clip_tower`` builds, from the config: projection width, vision blocks and width.

    Read from the dict (every field it needs is required there), so naming a CLIP tower
    imports nothing from transformers: a cache-hit run never pays for it.
    """
    fields, _ = vision_fields(config, where)
    return TowerShape(int(fields["projection_dim"]), int(fields["num_hidden_layers"]), int(fields["hidden_size"]),
                      CLIPTower.feature, CLIPTower.layer_token)


def clip_preprocess(config: dict) -> Preprocess:
    """OpenAI's CLIP transform at the tower's image size: the statistics every CLIP tower was trained with."""
    vision = config if config.get("model_type") == "clip_vision_model" else config.get("vision_config") or {}
    return Preprocess(size=int(vision.get("image_size", 224)))

