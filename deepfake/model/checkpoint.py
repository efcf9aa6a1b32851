"""A checkpoint is the head plus the JSON config that made it.

``<name>.safetensors`` holds the head's tensors, ``<name>.json`` the tower id and revision
(or weight hash), preprocessing, head sizes, categories, seed, metrics and threshold.
Nothing is ever unpickled: a ``.pth``/``.bin`` head is read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from deepfake.model.heads import required_head_fields
from deepfake.utils.fileio import atomic_save_safetensors, atomic_write_json

FORMAT = "deepfake-head/1"
BEST = "best"
# A pretrained-head folder (save_pretrained, hub repos): the names the hub expects.
PRETRAINED_WEIGHTS = "model.safetensors"
PRETRAINED_CONFIG = "config.json"


class CheckpointRefused(ValueError):
    """A head checkpoint that cannot be used; the message names the file and the reason."""


def save_checkpoint(directory: str | os.PathLike, name: str, head_state: dict[str, torch.Tensor], config: dict) -> Path:
    """Write ``name.safetensors`` then ``name.json`` atomically; returns the weights' path."""
    directory = Path(directory)
    weights = atomic_save_safetensors(directory / f"{name}.safetensors", head_state, {"format": FORMAT})
    atomic_write_json(directory / f"{name}.json", {"format": FORMAT, **config})
    return weights


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A run directory means its best checkpoint, a pretrained-head folder its weights, a ``.json`` the weights beside it."""
    path = Path(path)
    if path.is_dir():
        for name in (f"{BEST}.safetensors", PRETRAINED_WEIGHTS):
            if (path / name).is_file():
                return path / name
        epochs = sorted(path.glob("epoch_*.safetensors"), key=_epoch_number)
        if epochs:
            return epochs[-1]
        raise CheckpointRefused(
            f"{path}: no {BEST}.safetensors, epoch_*.safetensors or {PRETRAINED_WEIGHTS} in this directory")
    if path.name == PRETRAINED_CONFIG:
        path = path.with_name(PRETRAINED_WEIGHTS)
    elif path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise CheckpointRefused(f"{path}: no such checkpoint file")
    return path


def _epoch_number(path: Path) -> tuple[int, str]:
    """``epoch_1000`` after ``epoch_999``: the number, not the name, orders epochs."""
    digits = path.stem.removeprefix("epoch_")
    return (int(digits), path.name) if digits.isdigit() else (-1, path.name)


def _sidecar(weights: Path) -> Path:
    """``name.json`` beside ``name.safetensors``; ``config.json`` beside ``model.safetensors``."""
    if weights.name == PRETRAINED_WEIGHTS and not weights.with_suffix(".json").is_file():
        return weights.with_name(PRETRAINED_CONFIG)
    return weights.with_suffix(".json")


def _read_sidecar(weights: Path) -> dict | None:
    sidecar = _sidecar(weights)
    if not sidecar.is_file():
        return None
    try:
        return json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointRefused(f"{sidecar}: unreadable checkpoint config: {exc}") from exc


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """(head state dict, config, weights path) of a run directory or checkpoint file."""
    weights = resolve_checkpoint_path(path)
    if weights.suffix == ".safetensors":
        try:
            state = load_file(str(weights))
        except Exception as exc:
            raise CheckpointRefused(f"{weights}: not a readable safetensors file: {exc}") from exc
        config = _read_sidecar(weights)
    elif weights.suffix in (".pth", ".pt", ".bin"):
        try:
            payload = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointRefused(
                f"{weights}: refused: not a plain tensor checkpoint (loading it would need to unpickle code): {exc}"
            ) from exc
        config = _read_sidecar(weights)
        if isinstance(payload, dict) and isinstance(payload.get("head"), dict):
            config = payload.get("config") or config
            payload = payload["head"]
        state = payload
    else:
        raise CheckpointRefused(f"{weights}: unknown checkpoint type {weights.suffix!r}; use .safetensors")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointRefused(f"{weights}: expected a dict of tensors")
    if not isinstance(config, dict):
        raise CheckpointRefused(f"{weights}: no config naming the tower and head (expected {_sidecar(weights)})")
    check_config(config, _sidecar(weights))
    return state, config, weights


# Fields a head cannot be used without, and the sub-fields each must have.
REQUIRED_FIELDS = {"tower": ("model",), "head": (), "preprocess": ("mode", "size", "mean", "std")}


def check_config(config: dict, where: Path) -> None:
    """Refuse a checkpoint config that lacks a field the head needs, naming the file and the field."""
    for name, inner in REQUIRED_FIELDS.items():
        if not isinstance(config.get(name), dict):
            raise CheckpointRefused(f"{where}: checkpoint config has no {name!r} field "
                                    f"(a head needs the {name} it was trained with)")
        # A head's own fields depend on its kind (an old config without a kind is the MLP head).
        inner = required_head_fields(config[name]) if name == "head" else inner
        missing = [k for k in inner if k not in config[name]]
        if missing:
            raise CheckpointRefused(f"{where}: checkpoint config field {name!r} lacks {', '.join(map(repr, missing))}")
