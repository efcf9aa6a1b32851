"""DeepfakeClassifier: a frozen image tower plus a small trainable head.

    head = Linear(D, 256) -> ReLU -> Dropout(0.1) -> Linear(256, 2)

with ``D`` read from the tower's config (768 for LanguageBind_Image): the default ``mlp``
head. Other kinds (``layers``: per-block CLS tokens with learned block importance,
``linear``: a linear probe) live in :mod:`deepfake.heads`. Class 1 is "fake".

    >>> from deepfake import DeepfakeClassifier
    >>> clf = DeepfakeClassifier.from_pretrained("runs/progan")
    >>> clf.predict(["photo.jpg"])[0].probability
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from torch import nn

from deepfake.backbones import Preprocess
from deepfake.checkpoint import CheckpointRefused, load_checkpoint
from deepfake.feature_batch import FeatureBatch, table_batch, tower_batch
from deepfake.features import prepare_tower
from deepfake.heads import HEAD_DROPOUT, HEAD_HIDDEN, MLPHead, head_from_config
from deepfake.runtime import choose_device, resolve_precision
from deepfake.towers import ImageTower, load_tower

log = logging.getLogger(__name__)

def build_head(in_dim: int, hidden: int = HEAD_HIDDEN, dropout: float = HEAD_DROPOUT, num_classes: int = 2) -> MLPHead:
    """The classifier head: Linear(in_dim, hidden) -> ReLU -> Dropout -> Linear(hidden, num_classes)."""
    return MLPHead(in_dim, hidden, dropout, num_classes)


def head_config(head: nn.Module) -> dict:
    """The head's kind and sizes, as a checkpoint records them."""
    return head.config()


@torch.no_grad()
def batch_probabilities(head: nn.Module, batch: FeatureBatch | torch.Tensor) -> np.ndarray:
    """P(fake) for each row of one feature batch, with the head in eval mode."""
    head.eval()
    device = next(head.parameters()).device
    batch = batch.to(device) if isinstance(batch, FeatureBatch) else FeatureBatch(batch).to(device)
    return torch.softmax(head(batch).float(), dim=1)[:, 1].cpu().double().numpy()


def fake_probabilities(head: nn.Module, features, rows: torch.Tensor | None = None, batch_size: int = 1024) -> np.ndarray:
    """P(fake) for ``rows`` of a feature table (all rows by default), with the head in eval mode.

    ``features`` is a :class:`~deepfake.features.FeatureTable` (the head picks its blocks from
    it) or a plain [N, D] tensor of final embeddings. Every scoring path comes through here.
    """
    def take(idx: torch.Tensor) -> FeatureBatch:
        if isinstance(features, torch.Tensor):
            return FeatureBatch(features[idx].float())
        return table_batch(features, idx, getattr(head, "blocks", ()))

    n = len(features) if isinstance(features, torch.Tensor) else len(features.embeds)
    rows = torch.arange(n) if rows is None else rows
    blocks = getattr(head, "blocks", ())
    if blocks:
        # Per-block tokens are L times wider than an embedding: keep a chunk near 128 MB.
        batch_size = max(64, min(batch_size, (1 << 25) // (len(blocks) * int(head.hidden_size))))
    out = [batch_probabilities(head, take(rows[start : start + batch_size])) for start in range(0, len(rows), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


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
        return float(self.config.get("threshold", 0.5))

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
    ) -> DeepfakeClassifier:
        """Load a run directory or checkpoint file and the tower it names (or ``model``, if the same).

        ``precision`` defaults to the one the head's training features were computed in,
        so scores match the validation numbers; ``auto`` picks the device's fastest.
        """
        state, config, path = load_checkpoint(checkpoint)
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

    def predict(
        self,
        inputs: list[str | os.PathLike | Image.Image],
        batch_size: int = 32,
        num_workers: int = 0,
        tiles: int = 0,
        threshold: float | None = None,
        max_pixels: int | None = None,
    ) -> list:
        """Score paths or PIL images; one :class:`~deepfake.predict.Prediction` each, skips included."""
        from deepfake.predict import score

        return score(self, list(inputs), batch_size=batch_size, num_workers=num_workers, tiles=tiles,
                     threshold=threshold, max_pixels=max_pixels)

    def predict_proba(self, inputs: list[str | os.PathLike | Image.Image], **kwargs) -> np.ndarray:
        """P(fake) per input (NaN for inputs that could not be read)."""
        return np.array([p.probability if p.probability is not None else np.nan for p in self.predict(inputs, **kwargs)])
