"""RINE's design: every chosen block's CLS token, one shared projection, a learned importance over blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepfake.config import HEAD_DROPOUT, HEAD_HIDDEN
from deepfake.features.batch import FeatureBatch
from deepfake.model.heads import head_from_config, register_head, standardize_config, standardized


@register_head("layers")
class LayersHead(nn.Module):
    """Per-block CLS tokens -> shared projection -> softmax importance over blocks -> weighted sum -> MLP.

    Each token is layer-normalised (no parameters) before the projection: the residual stream's
    scale grows with depth, and RINE likewise reads each block's token after a layer norm.
    ``importance="block"`` learns one weight per block; ``"feature"`` one per block and projected
    feature (RINE's exact estimator), whose per-block mean is reported.
    """

    kind = "layers"
    required = ("hidden_size", "blocks")
    size_options = ("proj_dim", "importance")  # what a run may set from the command line

    def __init__(self, hidden_size: int, blocks: list[int] | tuple[int, ...], proj_dim: int = HEAD_HIDDEN,
                 hidden: int = HEAD_HIDDEN, dropout: float = HEAD_DROPOUT, num_classes: int = 2,
                 importance: str = "block"):
        super().__init__()
        if not blocks:
            raise ValueError("the layers head needs at least one block (--feature_layers all, or e.g. 8,16,24)")
        if importance not in ("block", "feature"):
            raise ValueError(f"importance must be 'block' or 'feature', not {importance!r}")
        self.blocks = tuple(int(b) for b in blocks)
        self.hidden_size = hidden_size
        self.importance_kind = importance
        self.proj = nn.Linear(hidden_size, proj_dim)
        shape = (len(self.blocks),) if importance == "block" else (len(self.blocks), proj_dim)
        # Zeros: every block starts with the same weight, and training decides.
        self.importance_logits = nn.Parameter(torch.zeros(shape))
        # The card's MLP on the weighted sum, found through the registry like any kind.
        self.mlp = head_from_config({"kind": "mlp", "in_dim": proj_dim, "hidden": hidden, "dropout": dropout,
                                     "num_classes": num_classes})

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L, hidden] -> [B, L, proj_dim], the same projection for every block."""
        return F.relu(self.proj(F.layer_norm(tokens, (self.hidden_size,))))

    def weights(self) -> torch.Tensor:
        """Softmax over blocks: [L] (block) or [L, proj_dim] (feature); sums to 1 over blocks."""
        return torch.softmax(self.importance_logits, dim=0)

    def importance(self) -> torch.Tensor:
        """Each block's share [L] (a mean over features for per-feature importance); sums to 1."""
        w = self.weights().detach()
        return w if w.dim() == 1 else w.mean(dim=1)

    def forward_with_embedding(self, batch: FeatureBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, FeatureBatch) or batch.layers is None:
            raise ValueError("the layers head reads per-block CLS tokens; none were given")
        if batch.layers.shape[1:] != (len(self.blocks), self.hidden_size):
            raise ValueError(f"the layers head expects tokens of shape [B, {len(self.blocks)}, {self.hidden_size}], "
                             f"got {list(batch.layers.shape)}")
        g = self.project(standardized(self, batch.layers))
        w = self.weights()
        z = (g * (w[None, :, None] if w.dim() == 1 else w[None])).sum(dim=1)
        return self.mlp(z), z

    def forward(self, batch: FeatureBatch) -> torch.Tensor:
        return self.forward_with_embedding(batch)[0]

    def config(self) -> dict:
        mlp = self.mlp.config()
        return {"kind": self.kind, "hidden_size": self.hidden_size, "blocks": list(self.blocks),
                "proj_dim": self.proj.out_features, "importance": self.importance_kind,
                "hidden": mlp["hidden"], "dropout": mlp["dropout"], "num_classes": mlp["num_classes"],
                **standardize_config(self)}

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """What one image's features are to this head: one token per block (standardised per block and feature)."""
        return (len(self.blocks), self.hidden_size)

    @classmethod
    def from_config(cls, cfg: dict) -> LayersHead:
        return cls(int(cfg["hidden_size"]), [int(b) for b in cfg["blocks"]], int(cfg.get("proj_dim", HEAD_HIDDEN)),
                   int(cfg.get("hidden", HEAD_HIDDEN)), float(cfg.get("dropout", HEAD_DROPOUT)),
                   int(cfg.get("num_classes", 2)), cfg.get("importance", "block"))

    def check_tower(self, tower) -> str | None:
        num_layers = int(getattr(tower, "num_layers", 0) or 0)
        if not num_layers:
            return "the layers head needs a tower with transformer blocks"
        if max(self.blocks) > num_layers:
            return f"head reads block {max(self.blocks)}, tower has blocks 0..{num_layers}"
        if self.hidden_size != tower.hidden_size:
            return f"head expects {self.hidden_size}-dim block tokens, tower gives {tower.hidden_size}"
        return None

    @classmethod
    def config_for(cls, tower, blocks: tuple[int, ...] = (), **sizes) -> dict:
        """The config of a fresh head reading ``blocks`` of ``tower`` (their token width: its hidden size)."""
        return {"kind": cls.kind, "hidden_size": tower.hidden_size, "blocks": list(blocks), **sizes}
