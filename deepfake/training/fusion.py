"""A head on a fused tower's parts: what a fused run supports, standardisation per part, each part's weight.

A fused tower (:mod:`deepfake.towers.fused`) gives its parts' final features side by side. Its
head standardises each part as a run on that part alone would: ``--standardize auto`` asks each
part's record, ``on`` and ``off`` apply to every part, and the statistics of a dimension are those
of that part's training features. After training, each part's share of the decision is read from
the head's first layer (:func:`part_shares`).
"""

from __future__ import annotations

import torch
from torch import nn

from deepfake.model.heads import kind_tap, resolve_standardize
from deepfake.towers.fused import SUPPORTED, FusedTower, is_fused


def check_fused_run(tower, head_kind: str, feature_layers: str) -> None:
    """Refuse what a fused tower cannot give: per-block tokens, and the heads that read them."""
    if not is_fused(tower):
        return
    if kind_tap(head_kind) is not None:
        raise ValueError(f"--model {tower.backbone.name} --head {head_kind}: the {head_kind} head reads per-block "
                         f"tokens; {SUPPORTED}")
    if (feature_layers or "none").strip().lower() not in ("none", ""):
        raise ValueError(f"--model {tower.backbone.name} --feature_layers {feature_layers}: {SUPPORTED}; "
                         "cache a part's blocks with a run on that part alone")


def part_standardize(choice: str, tower) -> list[bool]:
    """Whether each part's features are standardised (``auto``: as that part's own record says)."""
    parts = tower.parts if is_fused(tower) else (tower,)
    return [resolve_standardize(choice, part) for part in parts]


def part_mask(tower: FusedTower, flags: list[bool]) -> torch.Tensor:
    """A mask over the fused feature: true on the dimensions of the parts ``flags`` marks."""
    return torch.cat([torch.full((width,), bool(flag)) for width, flag in zip(tower.widths, flags)])


def part_shares(head: nn.Module, widths: list[int], spread: torch.Tensor) -> list[float] | None:
    """Each part's share of the head's first-layer weight, on inputs of unit spread (``None``: a head without one).

    The weight a dimension gets is scaled by how far its input moves: the training features'
    std (``spread``) over the std the head's standardizer divides by, so a standardised and an
    unscaled part are compared alike. A part's share is the squared norm of its columns over the
    whole: the shares sum to 1, and a part holding a fifth of the dimensions holds a fifth of the
    weight when the head favours none.
    """
    weight = getattr(head, "first_layer", None)
    if weight is None:
        return None
    divisor = head.standardizer.std if getattr(head, "standardizer", None) is not None else torch.ones_like(spread)
    scaled = weight.detach().double().cpu() * (spread.double().cpu() / divisor.double().cpu())
    column = scaled.pow(2).sum(dim=0)
    per_part = torch.stack([chunk.sum() for chunk in column.split(widths)])
    total = float(per_part.sum())
    return [float(v) / total if total > 0 else 0.0 for v in per_part]


def part_report(tower: FusedTower, head: nn.Module, flags: list[bool], spread: torch.Tensor) -> list[dict]:
    """One record per part: its tower, width, share of the dimensions, standardisation and weight share."""
    shares = part_shares(head, tower.widths, spread)
    total = sum(tower.widths)
    return [{"model": part.backbone.name, "feature_dim": width, "dims_share": width / total,
             "standardized": bool(flag), "weight_share": None if shares is None else shares[j]}
            for j, (part, width, flag) in enumerate(zip(tower.parts, tower.widths, flags))]


def format_parts(report: list[dict]) -> str:
    """The per-part lines printed after training."""
    lines = ["part weights in the head's first layer (inputs of unit spread):"]
    for part in report:
        share = "n/a" if part["weight_share"] is None else f"{100 * part['weight_share']:.1f}%"
        lines.append(f"  {part['model']:<40} {part['feature_dim']:>6}-d ({100 * part['dims_share']:.1f}% of the "
                     f"dimensions) standardised {'yes' if part['standardized'] else 'no ':<3}  weight share {share}")
    return "\n".join(lines)
