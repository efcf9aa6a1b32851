"""Classifier heads on frozen tower features, looked up by kind.

    mlp     Linear(D, 256) -> ReLU -> Dropout(0.1) -> Linear(256, 2) on the final embedding
            (the default, and every checkpoint without a ``kind``)
    layers  the CLS token of each chosen block -> one shared projection -> a learned softmax
            importance over blocks (RINE's Trainable Importance Estimator) -> weighted sum ->
            the same 256-unit MLP
    linear  Linear(D, 2) on the final embedding (UniversalFakeDetect's linear probe)

A head's ``config()`` holds its kind and sizes; ``head_from_config`` rebuilds it, so a
checkpoint (weights + that dict) always loads into the head that wrote it. Every head takes a
:class:`~deepfake.feature_batch.FeatureBatch` (a plain tensor is read as the final embedding)
and names the blocks it reads in ``blocks``. Adding a kind is one class with ``@register_head``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from deepfake.feature_batch import FeatureBatch

HEAD_HIDDEN = 256
HEAD_DROPOUT = 0.1
DEFAULT_KIND = "mlp"

HEADS: dict[str, type[nn.Module]] = {}


def register_head(kind: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a head available as ``--head kind``."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        cls.kind = kind
        HEADS[kind] = cls
        return cls

    return add


def _embeds(batch: FeatureBatch | torch.Tensor) -> torch.Tensor:
    return batch.embeds if isinstance(batch, FeatureBatch) else batch


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
        hidden = self[1](self[0](_embeds(batch)))
        return self[3](self[2](hidden)), hidden

    def config(self) -> dict:
        return {"kind": self.kind, "in_dim": self[0].in_features, "hidden": self[0].out_features,
                "dropout": self[2].p, "num_classes": self[3].out_features}

    @classmethod
    def from_config(cls, cfg: dict) -> MLPHead:
        return cls(int(cfg["in_dim"]), int(cfg.get("hidden", HEAD_HIDDEN)), float(cfg.get("dropout", HEAD_DROPOUT)),
                   int(cfg.get("num_classes", 2)))

    def check_tower(self, tower) -> str | None:
        if self[0].in_features != tower.feature_dim:
            return f"head expects {self[0].in_features}-dim features, tower gives {tower.feature_dim}"
        return None


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
        return self.fc(_embeds(batch))

    def forward_with_embedding(self, batch: FeatureBatch | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _embeds(batch)
        return self.fc(x), x

    def config(self) -> dict:
        return {"kind": self.kind, "in_dim": self.fc.in_features, "num_classes": self.fc.out_features}

    @classmethod
    def from_config(cls, cfg: dict) -> LinearHead:
        return cls(int(cfg["in_dim"]), int(cfg.get("num_classes", 2)))

    def check_tower(self, tower) -> str | None:
        if self.fc.in_features != tower.feature_dim:
            return f"head expects {self.fc.in_features}-dim features, tower gives {tower.feature_dim}"
        return None


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
        self.mlp = MLPHead(proj_dim, hidden, dropout, num_classes)

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
        g = self.project(batch.layers)
        w = self.weights()
        z = (g * (w[None, :, None] if w.dim() == 1 else w[None])).sum(dim=1)
        return self.mlp(z), z

    def forward(self, batch: FeatureBatch) -> torch.Tensor:
        return self.forward_with_embedding(batch)[0]

    def config(self) -> dict:
        mlp = self.mlp.config()
        return {"kind": self.kind, "hidden_size": self.hidden_size, "blocks": list(self.blocks),
                "proj_dim": self.proj.out_features, "importance": self.importance_kind,
                "hidden": mlp["hidden"], "dropout": mlp["dropout"], "num_classes": mlp["num_classes"]}

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


def head_kinds() -> list[str]:
    return sorted(HEADS)


def required_head_fields(cfg: dict) -> tuple[str, ...]:
    """The fields a head config of its kind cannot be built without (none known for an unknown kind:
    building it then fails with the list of known kinds)."""
    head = HEADS.get(cfg.get("kind", DEFAULT_KIND))
    return tuple(getattr(head, "required", ())) if head else ()


def head_from_config(cfg: dict) -> nn.Module:
    """The head a checkpoint's ``config["head"]`` describes (no ``kind``: the original MLP)."""
    kind = cfg.get("kind", DEFAULT_KIND)
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; known kinds: {', '.join(head_kinds())}")
    return HEADS[kind].from_config(cfg)


def new_head(kind: str, tower, blocks: list[int] | tuple[int, ...] = (), **sizes) -> nn.Module:
    """A fresh head of ``kind`` sized from ``tower`` (its feature dim, hidden size) and ``blocks``."""
    if kind == "layers":
        cfg = {"kind": kind, "hidden_size": tower.hidden_size, "blocks": list(blocks), **sizes}
    else:
        cfg = {"kind": kind, "in_dim": tower.feature_dim, **sizes}
    head = head_from_config(cfg)
    problem = head.check_tower(tower)
    if problem:
        raise ValueError(f"--head {kind}: {problem}")
    return head


def block_importance(head: nn.Module) -> dict | None:
    """``{"blocks": [...], "importance": [...]}`` for a head that weighs blocks, else ``None``."""
    if not hasattr(head, "importance"):
        return None
    return {"blocks": list(head.blocks), "importance": [float(v) for v in head.importance().cpu()]}
