"""The CLIP ViT tower that the CLIP and LanguageBind families share.

Feature: the projected image embedding (``image_embeds``: pooled CLS token after the final
layer norm, through ``visual_projection``), as UniversalFakeDetect uses it. Per-block tokens:
the CLS token, of each block's output (``block`` tap) or of each block's ``layer_norm2`` output
(``ln2`` tap: OpenAI CLIP's ``ln_2``, the normalised input of the block's MLP, which RINE reads),
taken by forward hooks on those modules, so the fused blocks of
:mod:`deepfake.towers.fast_clip` (which keep ``layer_norm2``) give the same tap.
The weights are mapped by :mod:`deepfake.towers.clip_weights` with strict key checks.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from deepfake.data.preprocess import Preprocess
from deepfake.towers.backbones import Backbone
from deepfake.towers.base import BLOCK_TAP, LN2_TAP, TowerOutput, TowerShape, TransformersTower, requested_tap
from deepfake.towers.clip_weights import check_keys, vision_config_from, vision_fields, vision_state_dict
from deepfake.towers.weights import WeightFiles, read_weights

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

log = logging.getLogger(__name__)


class CLIPTower(TransformersTower):
    """A CLIP ViT image tower (LanguageBind or transformers CLIP) with its projection."""

    feature = "projected"
    layer_token = "cls"
    taps = (BLOCK_TAP, LN2_TAP)

    def __init__(self, model: CLIPVisionModelWithProjection, backbone: Backbone, identity: dict):
        super().__init__(model, backbone, identity, model.config.projection_dim)

    def features(self, out):
        return out.image_embeds

    def forward(self, pixel_values: torch.Tensor, layers: bool | str = False) -> TowerOutput:
        if requested_tap(layers) != LN2_TAP:
            return super().forward(pixel_values, layers)
        # The CLS token of every block's layer_norm2 output, in block order (copied: a view
        # would keep each block's whole [B, T, hidden] output alive).
        taken: list[torch.Tensor] = []
        hooks = [layer.layer_norm2.register_forward_hook(lambda _m, _i, out: taken.append(out[:, 0].clone()))
                 for layer in self.model.vision_model.encoder.layers]
        try:
            out = self.model(pixel_values=pixel_values.to(self.dtype))
        finally:
            for hook in hooks:
                hook.remove()
        if len(taken) != self.num_layers:
            raise RuntimeError(f"{self.backbone.name}: {len(taken)} layer_norm2 outputs for {self.num_layers} blocks")
        return TowerOutput(embeds=self.features(out), layers=torch.stack(taken, dim=1), tap=LN2_TAP)

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
                      CLIPTower.feature, CLIPTower.layer_token, CLIPTower.taps)


def clip_preprocess(config: dict) -> Preprocess:
    """OpenAI's CLIP transform at the tower's image size: the statistics every CLIP tower was trained with."""
    vision = config if config.get("model_type") == "clip_vision_model" else config.get("vision_config") or {}
    return Preprocess(size=int(vision.get("image_size", 224)))

