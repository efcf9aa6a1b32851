"""Tiny random towers of every family, saved with transformers' save_pretrained: for tests and benchmarks.

    from deepfake.towers.tiny import save_tower
    save_tower("dinov2_registers", Path("towers/dinov2r"), sharded=True)

Each is a 2-block, 32-wide ViT on 32 px images with random weights (so its features mean
nothing), and comes with a ``preprocessor_config.json`` in the format its transformers image
processor writes, with values unlike the family defaults so a test can tell they were read.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from deepfake.utils.fileio import atomic_write_text

VIT = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}

# (size field, crop field) of each family's processor, resample code, mean, std.
PROCESSORS = {
    "clip": {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 40},
             "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3,
             "do_normalize": True, "image_mean": [0.4, 0.45, 0.5], "image_std": [0.2, 0.25, 0.3]},
    "siglip": {"image_processor_type": "SiglipImageProcessor", "do_resize": True,
               "size": {"height": 32, "width": 32}, "resample": 2, "do_normalize": True,
               "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    "siglip2": {"image_processor_type": "Siglip2ImageProcessor", "do_resize": True, "max_num_patches": 16,
                "patch_size": 8, "resample": 2, "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
    "dinov2": {"image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 36},
               "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "resample": 3,
               "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
    "dinov3": {"image_processor_type": "DINOv3ViTImageProcessorFast", "do_resize": True,
               "size": {"height": 32, "width": 32}, "resample": 2, "do_normalize": True,
               "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
}
PROCESSORS["dinov2_registers"] = PROCESSORS["dinov2"]
PROCESSORS["siglip_vision"] = PROCESSORS["siglip"]

# What each processor config above must become: mode, size, resize_size, interpolation.
EXPECTED_PREPROCESS = {
    "clip": ("resize", 32, 40, "bicubic"),
    "siglip": ("squash", 32, None, "bilinear"),
    "siglip_vision": ("squash", 32, None, "bilinear"),
    "siglip2": ("squash", 32, None, "bilinear"),
    "dinov2": ("resize", 32, 36, "bicubic"),
    "dinov2_registers": ("resize", 32, 36, "bicubic"),
    "dinov3": ("squash", 32, None, "bilinear"),
}
FAMILY_OF = {"clip": "clip", "siglip": "siglip", "siglip_vision": "siglip", "siglip2": "siglip",
             "dinov2": "dinov2", "dinov2_registers": "dinov2", "dinov3": "dinov3"}
KINDS = tuple(FAMILY_OF)


def build_model(kind: str):
    """A tiny random transformers model of ``kind`` (the object save_pretrained is called on)."""
    import transformers as tf

    torch.manual_seed(0)
    vision = {**VIT, "image_size": 32, "patch_size": 8}
    text = {**VIT, "num_hidden_layers": 1, "vocab_size": 99, "max_position_embeddings": 16}
    if kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    elif kind == "siglip":
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision))
    elif kind == "siglip_vision":
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**vision))
    elif kind == "siglip2":
        model = tf.Siglip2VisionModel(tf.Siglip2VisionConfig(**VIT, patch_size=8, num_patches=16))
    elif kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**vision))
    elif kind == "dinov2_registers":
        model = tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(**vision, num_register_tokens=4))
    elif kind == "dinov3":
        model = tf.DINOv3ViTModel(tf.DINOv3ViTConfig(**vision, num_register_tokens=4))
    else:
        raise ValueError(kind)
    # transformers initialises biases and some tokens to zero; random values make every weight count.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def save_tower(kind: str, directory: Path, sharded: bool = False) -> Path:
    """Save a tiny ``kind`` model plus its processor config into ``directory``; returns it.

    ``sharded`` writes ``model.safetensors.index.json`` and several shards of about 20 KB.
    """
    from transformers.utils import logging as hf_logging

    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    # The tiny text towers' token ids fall outside their 99-word vocabulary: warnings, not problems.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = build_model(kind)
        kwargs = {"max_shard_size": "20KB"} if sharded else {}
        model.save_pretrained(directory, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
    atomic_write_text(Path(directory) / "preprocessor_config.json", json.dumps(PROCESSORS[kind], indent=2))
    return Path(directory)
