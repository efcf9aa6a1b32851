"""CLIP family: OpenAI and LAION CLIP checkpoints in transformers format (``model_type`` clip).

Built by :mod:`deepfake.towers.clip_tower` (the projected image embedding, as UniversalFakeDetect uses it).
"""

from __future__ import annotations

from deepfake.towers.clip_tower import clip_preprocess, clip_shape, load_clip_tower
from deepfake.towers.clip_weights import CLIP_MODEL_TYPES
from deepfake.towers.registry import TowerFamily, register

register(TowerFamily("clip", CLIP_MODEL_TYPES, load_clip_tower, clip_preprocess,
                     feature="projected image embedding", fused=True, shape=clip_shape))
