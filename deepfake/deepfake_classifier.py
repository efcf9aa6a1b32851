"""DeepfakeClassifier: a frozen image tower plus a small trainable head.

    head = Linear(D, 256) -> ReLU -> Dropout(0.1) -> Linear(256, 2)

with ``D`` read from the tower's config (768 for LanguageBind_Image): the default ``mlp``
head. Other kinds (``layers``: per-block CLS tokens with learned block importance,
``linear``: a linear probe) live in :mod:`deepfake.model.heads`. Class 1 is "fake".

    >>> from deepfake import DeepfakeClassifier
    >>> clf = DeepfakeClassifier.from_pretrained("runs/progan")
    >>> clf.predict("photo.jpg").probability
    >>> clf.save_pretrained("my-head")          # model.safetensors + config.json + README.md
    >>> clf = DeepfakeClassifier.from_pretrained("org/deepfake-head")   # a hub repo
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from deepfake.config import HEAD_DROPOUT, HEAD_HIDDEN
from deepfake.data.preprocess import Preprocess
from deepfake.features.batch import tower_batch
from deepfake.features.extraction import prepare_tower
from deepfake.model.calibration import read_calibration
from deepfake.model.checkpoint import CheckpointRefused, load_checkpoint
from deepfake.model.heads import head_from_config
from deepfake.model.hub import fetch_head, is_repo_id, push_head, save_head_folder
from deepfake.model.scoring import Prediction, batch_probabilities, fake_probabilities, score
from deepfake.towers.base import ImageTower
from deepfake.towers.loading import load_tower
from deepfake.utils.runtime import choose_device, resolve_precision

log = logging.getLogger(__name__)

__all__ = ["DeepfakeClassifier", "batch_probabilities", "build_head", "fake_probabilities", "head_config",
           "resolve_threshold"]
THRESHOLD_NAMES = ("val", "calibrated")

def build_head(in_dim: int, hidden: int = HEAD_HIDDEN, dropout: float = HEAD_DROPOUT, num_classes: int = 2) -> nn.Module:
    """The classifier head: Linear(in_dim, hidden) -> ReLU -> Dropout -> Linear(hidden, num_classes)."""
    return head_from_config({"kind": "mlp", "in_dim": in_dim, "hidden": hidden, "dropout": dropout,
                             "num_classes": num_classes})


def head_config(head: nn.Module) -> dict:
    """The head's kind and sizes, as a checkpoint records them."""
    return head.config()


def resolve_threshold(spec: str | float | None, config: dict) -> float:
    """A threshold spec against a checkpoint config: ``val``, ``calibrated``, a number in [0, 1], or ``None``."""
    if spec is None:
        spec = "val" if config.get("val_threshold") is not None else float(config.get("threshold", 0.5))
    if isinstance(spec, str) and spec.strip().lower() in THRESHOLD_NAMES:
        name = spec.strip().lower()
        value = config.get("val_threshold") if name == "val" else (config.get("calibration") or {}).get("threshold")
        if value is None:
            have = [n for n in THRESHOLD_NAMES if n == "val" and config.get("val_threshold") is not None
                    or n == "calibrated" and (config.get("calibration") or {}).get("threshold") is not None]
            raise ValueError(f"the checkpoint has no {name} threshold; use a number"
                             + (f" or {' / '.join(have)}" if have else ""))
        return float(value)
    try:
        value = float(spec)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be 'val', 'calibrated' or a number in [0, 1], got {spec!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {value}")
    return value


def _same_tower(saved: dict, loaded: dict) -> bool:
    """Whether the tower a head was trained on is the one just loaded."""
    for key in ("weights_sha256", "revision"):
        if saved.get(key) and loaded.get(key):
            return saved[key] == loaded[key]
    return saved.get("model") == loaded.get("model") and saved.get("family") == loaded.get("family")


class DeepfakeClassifier(nn.Module):
    """Frozen tower + trainable head; ``forward`` maps pixel tensors to 2-class logits."""

    def __init__(self, tower: ImageTower, head: nn.Module | None = None, config: dict | None = None):
        super().__init__()
        self.tower = tower
        self.head = head if head is not None else build_head(tower.feature_dim)
        self.config = config or {}

    @property
    def threshold(self) -> float:
        """The checkpoint's reporting threshold (0.5, the field's convention for accuracy)."""
        return float(self.config.get("threshold", 0.5))

    def decision_threshold(self, spec: str | float | None = None) -> float:
        """The threshold for labels: ``val``, ``calibrated``, a number, or (``None``) the default.

        The default is the validation threshold the checkpoint stores (the one that maximised
        validation accuracy), and the reporting threshold for a checkpoint without one.
        """
        return resolve_threshold(spec, self.config)

    @property
    def preprocess(self) -> Preprocess:
        return self.tower.preprocess

    @property
    def blocks(self) -> tuple[int, ...]:
        """The blocks whose CLS tokens the head reads (empty: the final embedding only)."""
        return tuple(getattr(self.head, "blocks", ()))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # One tower pass, with the per-block tokens only when the head reads them.
        with torch.no_grad():
            out = self.tower(pixel_values, layers=bool(self.blocks))
            batch = tower_batch(out, self.blocks).to(next(self.head.parameters()).device)
        return self.head(batch)

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike,
        model: str | None = None,
        device: str | torch.device | None = None,
        precision: str | None = None,
        revision: str | None = None,
    ) -> DeepfakeClassifier:
        """Load a head and the tower it names (or ``model``, if it is the same tower).

        ``checkpoint``: a run directory (its ``best``), a checkpoint file, a folder written by
        :meth:`save_pretrained`, or a hub repo id (``org/name``, ``@revision`` optional) fetched
        with ``huggingface_hub`` into its cache (``HF_HUB_OFFLINE=1`` honoured). Nothing is
        unpickled, and a head trained on another tower is refused. ``precision`` defaults to
        the one the head's training features were computed in, so scores match the
        validation numbers; ``auto`` picks the device's fastest.
        """
        source = checkpoint
        if isinstance(checkpoint, str) and is_repo_id(checkpoint):
            source = fetch_head(checkpoint, revision)
        state, config, path = load_checkpoint(source)
        calibration = read_calibration(path)  # an operating point fitted later (--calibrate_real), if any
        if calibration is not None:
            config = {**config, "calibration": calibration}
        if "tower" not in config or "preprocess" not in config:
            raise CheckpointRefused(f"{path}: config names no tower or preprocessing")
        saved_tower = config["tower"]
        device = choose_device(str(device) if device else None)
        preprocess = Preprocess.from_dict(config["preprocess"])
        tower = load_tower(model or saved_tower["model"], saved_tower.get("revision") if model is None else None,
                           preprocess.mode)
        if not _same_tower(saved_tower, tower.identity):
            raise CheckpointRefused(
                f"{path}: head was trained on tower {saved_tower.get('model')!r} "
                f"({saved_tower.get('revision') or saved_tower.get('weights_sha256', '')[:12]}), "
                f"but {tower.identity.get('model')!r} was loaded; features would not match"
            )
        # The checkpoint says how its training images were prepared: use exactly that.
        tower.backbone = replace(tower.backbone, preprocess=preprocess)
        try:
            head = head_from_config(config["head"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointRefused(f"{path}: head config {config['head']!r} cannot be built: {exc}") from exc
        problem = head.check_tower(tower)
        if problem:
            raise CheckpointRefused(f"{path}: {problem}")
        try:
            head.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointRefused(f"{path}: head weights do not fit the head in its config: {exc}") from exc
        if precision is None:
            precision = config.get("features", {}).get("precision", "auto")
            if precision == "fp16" and device.type == "cpu":
                precision = "auto"
        precision = resolve_precision(precision, device)
        tower = prepare_tower(tower, precision, device)
        clf = cls(tower, head.to(device), {**config, "checkpoint": str(path), "precision": precision})
        clf.eval()
        return clf

    def _run_summary(self) -> dict | None:
        """The run's ``run.json`` (image counts) when the head was loaded from a run directory."""
        checkpoint = self.config.get("checkpoint")
        summary = Path(checkpoint).parent / "run.json" if checkpoint else None
        if summary is None or not summary.is_file():
            return None
        try:
            return json.loads(summary.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the head as a shareable folder: ``model.safetensors``, ``config.json``, ``README.md`` (model card)."""
        return save_head_folder(directory, self.head.state_dict(), self.config, self._run_summary())

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload deepfake detector head") -> str:
        """Upload the head folder to the hub repo ``repo_id`` (created when needed); returns the commit URL."""
        return push_head(self.head.state_dict(), self.config, repo_id, self._run_summary(), private=private,
                         token=token, commit_message=commit_message)

    def predict(
        self,
        inputs: str | os.PathLike | Image.Image | list[str | os.PathLike | Image.Image],
        batch_size: int = 32,
        num_workers: int = 0,
        tiles: int = 0,
        threshold: str | float | None = None,
        max_pixels: int | None = None,
    ) -> Prediction | list[Prediction]:
        """Score one path or PIL image (one :class:`~deepfake.model.scoring.Prediction`) or a list (a list, skips included).

        ``threshold``: ``val``, ``calibrated``, a number, or ``None`` for :meth:`decision_threshold`'s default.
        """
        single = isinstance(inputs, (str, os.PathLike, Image.Image))
        results = score(self, [inputs] if single else list(inputs), batch_size=batch_size, num_workers=num_workers,
                        tiles=tiles, threshold=self.decision_threshold(threshold), max_pixels=max_pixels)
        return results[0] if single else results

    def predict_proba(
        self, inputs: str | os.PathLike | Image.Image | list[str | os.PathLike | Image.Image], **kwargs
    ) -> float | np.ndarray:
        """P(fake) per input (NaN for inputs that could not be read); a float for a single input."""
        single = isinstance(inputs, (str, os.PathLike, Image.Image))
        results = self.predict([inputs] if single else inputs, **kwargs)
        probs = np.array([p.probability if p.probability is not None else np.nan for p in results])
        return float(probs[0]) if single else probs
