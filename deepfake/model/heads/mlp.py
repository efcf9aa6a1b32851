"""The card's head: Linear(D, 256) -> ReLU -> Dropout(0.1) -> Linear(256, 2) on the final embedding."""

from __future__ import annotations

import torch
from torch import nn

from deepfake.config import HEAD_DROPOUT, HEAD_HIDDEN
from deepfake.features.batch import FeatureBatch
from deepfake.model.heads import final_embedding, register_head, standardize_config, standardized


@register_head("mlp")
class MLPHead(nn.Sequential):
    """Linear(in_dim, hidden) -> ReLU -> Dropout -> Linear(hidden, num_classes).

    A ``Sequential`` so its weights keep the names of every checkpoint written before kinds existed.
    """

    kind = "mlp"
    blocks: tuple[int, ...] = ()
    required = ("in_dim",)

    def __init__(self, in_dim: int, hidden: int = HEAD_HIDDEN, dropout: float = HEAD_DROPOUT, num_classes: int = 2):
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, batch: FeatureBatch | torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(batch)[0]

    def forward_with_embedding(self, batch: FeatureBatch | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, hidden activations): the latter is what a contrastive term shapes."""
        hidden = self[1](self[0](standardized(self, final_embedding(batch))))
        return self[3](self[2](hidden)), hidden

    def config(self) -> dict:
        return {"kind": self.kind, "in_dim": self[0].in_features, "hidden": self[0].out_features,
                "dropout": self[2].p, "num_classes": self[3].out_features, **standardize_config(self)}

    @property
    def first_layer(self) -> torch.Tensor:
        """The weight [hidden, in_dim] that reads the (standardised) features: what a feature's share is read from."""
        return self[0].weight

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """What one image's features are to this head: its final embedding."""
        return (self[0].in_features,)

    @classmethod
    def from_config(cls, cfg: dict) -> MLPHead:
        return cls(int(cfg["in_dim"]), int(cfg.get("hidden", HEAD_HIDDEN)), float(cfg.get("dropout", HEAD_DROPOUT)),
                   int(cfg.get("num_classes", 2)))

    def check_tower(self, tower) -> str | None:
        if self[0].in_features != tower.feature_dim:
            return f"head expects {self[0].in_features}-dim features, tower gives {tower.feature_dim}"
        return None

    @classmethod
    def config_for(cls, tower, blocks: tuple[int, ...] = (), **sizes) -> dict:
        """The config of a fresh head on ``tower``'s final embedding."""
        return {"kind": cls.kind, "in_dim": tower.feature_dim, **sizes}
