"""RINE's head (Koutlis & Papadopoulos, ECCV 2024), module for module, so its released weights load key for key.

It reads the CLS token of every chosen block's ln_2 output (``tap = "ln2"``; RINE reads all 24 of
CLIP ViT-L/14) and computes, as RINE's ``Model.forward`` does::

    g = proj1(tokens)                        # [B, L, hidden] -> [B, L, proj_dim], each block alone
    z = sum over blocks of softmax(alpha, dim=1) * g   # alpha [1, L, proj_dim]: per block and feature
    z = proj2(z)                             # the embedding (RINE's contrastive term shapes it)
    p = head(z)                              # one logit: P(fake) = sigmoid(p)

``proj1`` = Dropout, then ``nproj`` x [Linear, ReLU, Dropout] (hidden -> proj_dim, then proj_dim ->
proj_dim: Linears at 1, 4, 7, 10); ``proj2`` the same on proj_dim; ``head`` = Linear, ReLU, Dropout,
Linear, ReLU, Dropout, Linear(proj_dim, 1). Every Dropout has p = 0.5 (the identity in eval mode).
"""

from __future__ import annotations

import torch
from torch import nn

from deepfake.config import HEAD_HIDDEN, RINE_DROPOUT, RINE_NPROJ
from deepfake.features.batch import FeatureBatch
from deepfake.model.heads import register_head, standardize_config, standardized


def _projection(in_dim: int, proj_dim: int, nproj: int, dropout: float) -> nn.Sequential:
    """Dropout, then ``nproj`` x [Linear, ReLU, Dropout]; the first Linear maps ``in_dim`` -> ``proj_dim``."""
    layers: list[nn.Module] = [nn.Dropout(dropout)]
    for i in range(nproj):
        layers += [nn.Linear(in_dim if i == 0 else proj_dim, proj_dim), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


@register_head("rine")
class RINEHead(nn.Module):
    """ln_2 CLS tokens of ``blocks`` -> proj1 -> per-feature softmax importance over blocks -> proj2 -> one logit."""

    kind = "rine"
    tap = "ln2"
    required = ("hidden_size", "blocks")
    size_options = ("proj_dim", "nproj")  # what a run may set from the command line

    def __init__(self, hidden_size: int, blocks: list[int] | tuple[int, ...], proj_dim: int = HEAD_HIDDEN,
                 nproj: int = RINE_NPROJ, dropout: float = RINE_DROPOUT):
        super().__init__()
        if not blocks:
            raise ValueError("the rine head needs at least one block (--feature_layers all, or e.g. 8,16,24)")
        if nproj < 1 or proj_dim < 1:
            raise ValueError(f"the rine head needs nproj >= 1 and proj_dim >= 1, got {nproj} and {proj_dim}")
        self.blocks = tuple(int(b) for b in blocks)
        self.hidden_size = int(hidden_size)
        self.nproj = int(nproj)
        self.dropout = float(dropout)
        # RINE draws alpha from N(0, 1); training decides from there.
        self.alpha = nn.Parameter(torch.randn(1, len(self.blocks), proj_dim))
        self.proj1 = _projection(hidden_size, proj_dim, nproj, dropout)
        self.proj2 = _projection(proj_dim, proj_dim, nproj, dropout)
        self.head = nn.Sequential(nn.Linear(proj_dim, proj_dim), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(proj_dim, proj_dim), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(proj_dim, 1))

    @property
    def proj_dim(self) -> int:
        return int(self.alpha.shape[2])

    def weights(self) -> torch.Tensor:
        """softmax(alpha) over blocks: [L, proj_dim], each feature's weights summing to 1 over blocks."""
        return torch.softmax(self.alpha, dim=1)[0]

    def importance(self) -> torch.Tensor:
        """Each block's share [L], the mean over features of :meth:`weights`; sums to 1."""
        return self.weights().detach().mean(dim=1)

    def forward_with_embedding(self, batch: FeatureBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit [B, 1], embedding z [B, proj_dim]): RINE's ``(p, z)``."""
        if not isinstance(batch, FeatureBatch) or batch.layers is None:
            raise ValueError("the rine head reads the ln_2 CLS token of every block; none were given")
        if tuple(batch.layers.shape[1:]) != (len(self.blocks), self.hidden_size):
            raise ValueError(f"the rine head expects tokens of shape [B, {len(self.blocks)}, {self.hidden_size}], "
                             f"got {list(batch.layers.shape)}")
        g = self.proj1(standardized(self, batch.layers.float()))
        z = self.proj2(torch.sum(torch.softmax(self.alpha, dim=1) * g, dim=1))
        return self.head(z), z

    def forward(self, batch: FeatureBatch) -> torch.Tensor:
        return self.forward_with_embedding(batch)[0]

    def config(self) -> dict:
        return {"kind": self.kind, "hidden_size": self.hidden_size, "blocks": list(self.blocks),
                "proj_dim": self.proj_dim, "nproj": self.nproj, "dropout": self.dropout, "num_classes": 1,
                "tap": self.tap, **standardize_config(self)}

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """What one image's features are to this head: one ln_2 token per block (standardised per block and feature)."""
        return (len(self.blocks), self.hidden_size)

    @classmethod
    def from_config(cls, cfg: dict) -> RINEHead:
        if cfg.get("tap", cls.tap) != cls.tap or int(cfg.get("num_classes", 1)) != 1:
            raise ValueError(f"the rine head reads the {cls.tap} tap and gives one logit; config asks for "
                             f"tap {cfg.get('tap')!r} and {cfg.get('num_classes')} classes")
        return cls(int(cfg["hidden_size"]), [int(b) for b in cfg["blocks"]], int(cfg.get("proj_dim", HEAD_HIDDEN)),
                   int(cfg.get("nproj", RINE_NPROJ)), float(cfg.get("dropout", RINE_DROPOUT)))

    def check_tower(self, tower) -> str | None:
        num_layers = int(getattr(tower, "num_layers", 0) or 0)
        taps = getattr(tower, "taps", ())
        if not num_layers or self.tap not in taps:
            return (f"the rine head reads each block's ln_2 output, which this tower does not give "
                    f"(its per-block taps: {', '.join(taps) or 'none'}); use a CLIP or LanguageBind tower")
        if min(self.blocks) < 1 or max(self.blocks) > num_layers:
            return f"head reads ln_2 of blocks {min(self.blocks)}..{max(self.blocks)}, tower has blocks 1..{num_layers}"
        if self.hidden_size != tower.hidden_size:
            return f"head expects {self.hidden_size}-dim block tokens, tower gives {tower.hidden_size}"
        return None

    @classmethod
    def config_for(cls, tower, blocks: tuple[int, ...] = (), **sizes) -> dict:
        """The config of a fresh head reading the ln_2 tap of ``blocks`` of ``tower`` (width: its hidden size)."""
        return {"kind": cls.kind, "hidden_size": tower.hidden_size, "blocks": list(blocks), **sizes}
