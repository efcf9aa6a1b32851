"""LanguageBind family: the LanguageBind_Image release (``model_type`` LanguageBindImage).

An OpenCLIP ViT stored under CLIP key names, mapped into
``transformers.CLIPVisionModelWithProjection`` by :mod:`deepfake.towers.clip_weights` (exact
``gelu``, top-level ``projection_dim``, LoRA merged). Feature: the projected image
embedding; per-block tokens: the CLS token; blocks fused by :mod:`deepfake.towers.fast_clip`.
"""

from __future__ import annotations

from deepfake.towers.clip_tower import clip_preprocess, clip_shape, load_clip_tower
from deepfake.towers.clip_weights import LANGUAGEBIND_MODEL_TYPES
from deepfake.towers.registry import TowerFamily, register

register(TowerFamily("languagebind", LANGUAGEBIND_MODEL_TYPES, load_clip_tower, clip_preprocess,
                     feature="projected image embedding", fused=True, shape=clip_shape))
