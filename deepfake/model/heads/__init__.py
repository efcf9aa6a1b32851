"""Classifier heads on frozen tower features, looked up by kind.

    mlp     Linear(D, 256) -> ReLU -> Dropout(0.1) -> Linear(256, 2) on the final embedding
            (the default, and every checkpoint without a ``kind``)
    layers  the CLS token of each chosen block -> one shared projection -> a learned softmax
            importance over blocks (RINE's Trainable Importance Estimator) -> weighted sum ->
            the same 256-unit MLP
    linear  Linear(D, 2) on the final embedding (UniversalFakeDetect's linear probe; one logit,
            ``num_classes=1``, for UFD's released probe)
    rine    RINE's head exactly (Koutlis & Papadopoulos, ECCV 2024): the CLS token of every
            block's ln_2 output -> proj1 -> softmax(alpha) over blocks, per feature -> sum ->
            proj2 -> head -> one logit; loads RINE's released weights key for key

A head's ``config()`` holds its kind and sizes; ``head_from_config`` rebuilds it, so a
checkpoint (weights + that dict) always loads into the head that wrote it. Every head takes a
:class:`~deepfake.features.batch.FeatureBatch` (a plain tensor is read as the final embedding)
and names the blocks it reads in ``blocks`` and, where it is not the blocks' outputs, their tap
in ``tap`` (:mod:`deepfake.towers.base`). A head gives two logits (P(fake) = softmax[:, 1]) or
one (P(fake) = sigmoid).

Each kind is one module of this package whose class registers itself with ``@register_head``;
the registry imports every module here on first lookup, so adding a kind is one new file.

Any kind may standardise what it reads, per dimension: ``config["standardize"]`` true gives the
head a :class:`FeatureStandardizer` (buffers ``standardizer.mean`` and ``standardizer.std``, saved
with its weights; the final embedding's shape, or [blocks, hidden] for a head on block tokens)
that maps ``x`` to ``(x - mean) / std`` in float32 before anything else. Being part of the head, it
is applied identically wherever the head is loaded; a config without the key has none, as every
checkpoint written before it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import torch
from torch import nn

from deepfake.config import STANDARDIZE_CHOICES
from deepfake.features.batch import FeatureBatch
from deepfake.model.ood import attach_ood
from deepfake.towers.base import BLOCK_TAP

DEFAULT_KIND = "mlp"
# A dimension whose training spread is below this (absolutely, or half the fp16 cache's resolution
# relative to its mean) carries nothing the cache kept: it is centred but not scaled (std 1).
STD_FLOOR = 1e-6
FP16_HALF_STEP = 2.0 ** -11

HEADS: dict[str, type[nn.Module]] = {}
_loaded = False


def register_head(kind: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a head available as ``--head kind``."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        cls.kind = kind
        HEADS[kind] = cls
        return cls

    return add


def _load_all() -> dict[str, type[nn.Module]]:
    global _loaded
    if not _loaded:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return HEADS


def final_embedding(batch: FeatureBatch | torch.Tensor) -> torch.Tensor:
    """The final embedding of a batch (a plain tensor is one)."""
    return batch.embeds if isinstance(batch, FeatureBatch) else batch


class FeatureStandardizer(nn.Module):
    """``(x - mean) / std`` per feature dimension, in float32; ``mean`` and ``std`` are buffers of ``shape``.

    A fresh one is the identity (mean 0, std 1) until :meth:`set_statistics` gives it the training
    features' statistics.
    """

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("std", torch.ones(shape, dtype=torch.float32))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store a mean and standard deviation (any float dtype), degenerate dimensions guarded."""
        mean, std = guarded_statistics(mean, std)
        if mean.shape != self.mean.shape:
            raise ValueError(f"statistics of shape {list(mean.shape)} for features of shape {list(self.mean.shape)}")
        with torch.no_grad():
            self.mean.copy_(mean)
            self.std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def guarded_statistics(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (mean, std) with every entry finite: a non-finite mean becomes 0, a degenerate std 1."""
    mean, std = mean.double(), std.double()
    mean = torch.where(torch.isfinite(mean), mean, torch.zeros_like(mean))
    floor = torch.clamp(mean.abs() * FP16_HALF_STEP, min=STD_FLOOR)
    std = torch.where(torch.isfinite(std) & (std > floor), std, torch.ones_like(std))
    return mean.float(), std.float()


def standardized(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` through the head's standardizer, or unchanged (not even cast) when it has none."""
    standardizer = getattr(head, "standardizer", None)
    return x if standardizer is None else standardizer(x)


def standardize_config(head: nn.Module) -> dict:
    """``{"standardize": True}`` for a head with a standardizer and ``{"ood": ...}`` for one with statistics of
    its training features (:mod:`deepfake.model.ood`), else nothing (configs stay as they were)."""
    out = {"standardize": True} if getattr(head, "standardizer", None) is not None else {}
    if getattr(head, "ood", None) is not None:
        out["ood"] = dict(head.ood_record)
    return out


def head_kinds() -> list[str]:
    return sorted(_load_all())


def kind_tap(kind: str) -> str | None:
    """The tap whose per-block tokens a head kind reads (``None``: it reads the final embedding only)."""
    head = _load_all().get(kind)
    if head is None or "blocks" not in getattr(head, "required", ()):
        return None
    return getattr(head, "tap", BLOCK_TAP)


def head_tap(head: nn.Module) -> str:
    """The tap of the blocks a head reads (block outputs unless it says otherwise)."""
    return getattr(head, "tap", BLOCK_TAP)


def required_head_fields(cfg: dict) -> tuple[str, ...]:
    """The fields a head config of its kind cannot be built without (none known for an unknown kind:
    building it then fails with the list of known kinds)."""
    head = _load_all().get(cfg.get("kind", DEFAULT_KIND))
    return tuple(getattr(head, "required", ())) if head else ()


def head_from_config(cfg: dict) -> nn.Module:
    """The head a checkpoint's ``config["head"]`` describes (no ``kind``: the original MLP).

    ``standardize`` true adds its :class:`FeatureStandardizer`, ``ood`` its out-of-distribution statistics
    (:class:`~deepfake.model.ood.OODStatistics`); their values come with the weights.
    """
    kind = cfg.get("kind", DEFAULT_KIND)
    if kind not in _load_all():
        raise ValueError(f"unknown head kind {kind!r}; known kinds: {', '.join(head_kinds())}")
    head = HEADS[kind].from_config(cfg)
    if cfg.get("standardize"):
        head.standardizer = FeatureStandardizer(tuple(head.feature_shape))
    if cfg.get("ood"):
        attach_ood(head, cfg["ood"])
    return head


def head_sizes(kind: str, options: dict) -> dict:
    """The size options ``kind`` declares (``size_options``), taken from ``options``: none for mlp and linear."""
    cls = _load_all().get(kind)
    return {name: options[name] for name in getattr(cls, "size_options", ()) if name in options}


def resolve_standardize(choice: str, tower) -> bool:
    """Whether a head standardises its features: ``on``, ``off``, or (``auto``) what the tower's record says."""
    if choice not in STANDARDIZE_CHOICES:
        raise ValueError(f"--standardize {choice!r}: choose from {', '.join(STANDARDIZE_CHOICES)}")
    if choice == "auto":
        return bool(getattr(getattr(tower, "backbone", None), "standardize", False))
    return choice == "on"


def new_head(kind: str, tower, blocks: list[int] | tuple[int, ...] = (), standardize: bool = False,
             **sizes) -> nn.Module:
    """A fresh head of ``kind`` sized from ``tower`` (its feature dim, hidden size) and ``blocks``.

    ``standardize``: with a standardizer, the identity until its statistics are set.
    """
    if kind not in _load_all():
        raise ValueError(f"unknown head kind {kind!r}; known kinds: {', '.join(head_kinds())}")
    cfg = HEADS[kind].config_for(tower, tuple(blocks), **sizes)
    head = head_from_config({**cfg, "standardize": True} if standardize else cfg)
    problem = head.check_tower(tower)
    if problem:
        raise ValueError(f"--head {kind}: {problem}")
    return head


def block_importance(head: nn.Module) -> dict | None:
    """``{"blocks": [...], "importance": [...]}`` for a head that weighs blocks, else ``None``."""
    if not hasattr(head, "importance"):
        return None
    return {"blocks": list(head.blocks), "importance": [float(v) for v in head.importance().cpu()]}
