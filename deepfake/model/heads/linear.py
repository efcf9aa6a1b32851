"""UniversalFakeDetect's linear probe: Linear(D, 2) on the final embedding."""

from __future__ import annotations

import torch
from torch import nn

from deepfake.features.batch import FeatureBatch
from deepfake.model.heads import final_embedding, register_head, standardize_config, standardized


@register_head("linear")
class LinearHead(nn.Module):
    """A linear probe on the final embedding; two logits, so P(fake) = sigmoid of one linear score."""

    kind = "linear"
    blocks: tuple[int, ...] = ()
    required = ("in_dim",)

    def __init__(self, in_dim: int, num_classes: int = 2):
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, batch: FeatureBatch | torch.Tensor) -> torch.Tensor:
        return self.fc(standardized(self, final_embedding(batch)))

    def forward_with_embedding(self, batch: FeatureBatch | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = standardized(self, final_embedding(batch))
        return self.fc(x), x

    def config(self) -> dict:
        return {"kind": self.kind, "in_dim": self.fc.in_features, "num_classes": self.fc.out_features,
                **standardize_config(self)}

    @property
    def first_layer(self) -> torch.Tensor:
        """The weight [classes, in_dim] that reads the (standardised) features: what a feature's share is read from."""
        return self.fc.weight

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """What one image's features are to this head: its final embedding."""
        return (self.fc.in_features,)

    @classmethod
    def from_config(cls, cfg: dict) -> LinearHead:
        return cls(int(cfg["in_dim"]), int(cfg.get("num_classes", 2)))

    def check_tower(self, tower) -> str | None:
        if self.fc.in_features != tower.feature_dim:
            return f"head expects {self.fc.in_features}-dim features, tower gives {tower.feature_dim}"
        return None

    @classmethod
    def config_for(cls, tower, blocks: tuple[int, ...] = (), **sizes) -> dict:
        """The config of a fresh head on ``tower``'s final embedding."""
        return {"kind": cls.kind, "in_dim": tower.feature_dim, **sizes}
