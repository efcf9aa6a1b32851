"""Frozen image towers: load one from a hub id or a local directory, run it on pixel batches.

``load_tower("LanguageBind/LanguageBind_Image")`` resolves the id through huggingface_hub's
cache (``HF_HUB_OFFLINE=1`` honoured), reads the release config, maps the weights into
``transformers.CLIPVisionModelWithProjection`` with our own code (strict: every key
accounted for) and freezes it. A local directory in the release format, or an ordinary
transformers CLIP checkpoint, loads the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from deepfake.backbones import Backbone, Preprocess, backbone_for
from deepfake.clip_weights import CheckpointError, check_keys, family_of, vision_config_from, vision_state_dict
from deepfake.fast_clip import fuse_clip_blocks

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class TowerOutput:
    """What a tower gives per image: the head's input and, on request, each block's CLS token."""

    embeds: torch.Tensor  # [B, D]
    layers: torch.Tensor | None = None  # [B, num_layers + 1, hidden]


class ImageTower(nn.Module):
    """A frozen feature extractor with the record that says how to feed it."""

    backbone: Backbone
    feature_dim: int
    identity: dict

    @property
    def preprocess(self) -> Preprocess:
        return self.backbone.preprocess

    def freeze(self) -> ImageTower:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> ImageTower:
        # The tower is frozen: a classifier switched to training mode must not turn on
        # anything stochastic inside it.
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.parameters(), None)
        return p.dtype if p is not None else torch.float32

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def cache_identity(self) -> dict:
        """What must match for cached features of this tower to be reused."""
        return {**self.identity, "preprocess": self.preprocess.to_dict()}

    def fuse_for_inference(self) -> ImageTower:
        """Rewrite the tower into faster kernels that compute the same features (in place)."""
        return self


class CLIPTower(ImageTower):
    """A CLIP ViT image tower (LanguageBind or transformers CLIP) with its projection."""

    def __init__(self, model: CLIPVisionModelWithProjection, backbone: Backbone, identity: dict):
        super().__init__()
        self.model = model
        self.backbone = backbone
        self.feature_dim = int(model.config.projection_dim)
        self.num_layers = int(model.config.num_hidden_layers)
        self.hidden_size = int(model.config.hidden_size)
        self.identity = {**identity, "feature_dim": self.feature_dim}
        self.freeze()

    def forward(self, pixel_values: torch.Tensor, layers: bool = False) -> TowerOutput:
        out = self.model(pixel_values=pixel_values.to(self.dtype), output_hidden_states=layers)
        cls = torch.stack([h[:, 0] for h in out.hidden_states], dim=1) if layers else None
        return TowerOutput(embeds=out.image_embeds, layers=cls)

    def fuse_for_inference(self) -> CLIPTower:
        fuse_clip_blocks(self.model.vision_model.encoder.layers)
        return self


# --- resolving where the weights are ---------------------------------------------------


def _hub_file(repo_id: str, filename: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision)


def resolve_checkpoint(source: str, revision: str | None = None) -> tuple[Path, Path, str | None]:
    """Return (config.json, weight file, resolved revision) for a local dir or a hub id."""
    local = Path(source).expanduser()
    if local.is_dir():
        config = local / "config.json"
        if not config.is_file():
            raise CheckpointError(f"{local}: no config.json in this directory")
        for name in WEIGHT_FILES:
            if (local / name).is_file():
                return config, local / name, None
        raise CheckpointError(f"{local}: no weights; expected one of {', '.join(WEIGHT_FILES)}")
    if local.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise CheckpointError(f"{source}: not a checkpoint directory nor a hub id of the form org/name")
    from huggingface_hub.errors import EntryNotFoundError

    try:
        config = Path(_hub_file(source, "config.json", revision))
    except Exception as exc:  # network, auth, offline cache miss: all end the same way
        offline = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise CheckpointError(f"{source}: cannot fetch config.json{offline}: {exc}") from exc
    for name in WEIGHT_FILES:
        try:
            weights = Path(_hub_file(source, name, revision))
        except EntryNotFoundError:
            continue
        # Hub caches keep files under snapshots/<commit>/: that commit is the revision.
        return config, weights, weights.parent.name
    raise CheckpointError(f"{source}: the repository has none of {', '.join(WEIGHT_FILES)}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load weights without ever unpickling code: safetensors, or torch.load(weights_only=True)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a plain tensor state dict (refused to unpickle): {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --- building towers ------------------------------------------------------------------


def build_clip_tower(
    vision_config: CLIPVisionConfig, backbone: Backbone, identity: dict, state: dict | None = None
) -> CLIPTower:
    """A CLIP tower from a config, with ``state`` loaded strictly (random weights if ``None``)."""
    model = CLIPVisionModelWithProjection._from_config(vision_config, attn_implementation="sdpa")
    if state is not None:
        check_keys(model.state_dict(), state, identity.get("model", "checkpoint"))
        model.load_state_dict(state, strict=True)
    return CLIPTower(model, backbone, identity)


def load_tower(
    model: str,
    revision: str | None = None,
    preprocess_mode: str | None = None,
    device: torch.device | str = "cpu",
) -> ImageTower:
    """Load the frozen tower named by ``model`` (hub id, local directory or ``spectrum``)."""
    backbone = backbone_for(model, revision, preprocess_mode)
    if backbone.family == "spectrum":
        from deepfake.spectrum import SpectrumTower

        return SpectrumTower(backbone).to(device)
    config_path, weights_path, resolved = resolve_checkpoint(backbone.source, revision)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path}: unreadable config: {exc}") from exc
    family = family_of(config, str(config_path))
    vision_config, lora = vision_config_from(config, str(config_path))
    if backbone.family == "auto":
        image_size = int(vision_config.image_size)
        backbone = Backbone(backbone.name, family, backbone.source, Preprocess(size=image_size), revision)
        backbone = backbone.with_mode(preprocess_mode)
    state = vision_state_dict(read_state_dict(weights_path), lora, str(weights_path))
    is_local = Path(backbone.source).expanduser().is_dir()
    name = str(Path(backbone.source).expanduser().resolve()) if is_local else model
    identity = {"model": name, "family": family, "revision": resolved or revision}
    if resolved is None:
        # A local directory has no commit: its weights' hash identifies it.
        identity["weights_sha256"] = file_sha256(weights_path)
    log.info("loaded %s tower from %s (%d layers, feature dim %d)", family, name,
             vision_config.num_hidden_layers, vision_config.projection_dim)
    return build_clip_tower(vision_config, backbone, identity, state).to(device)
