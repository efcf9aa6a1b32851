"""What a head reads: one batch of tower features, the final embedding and chosen blocks' CLS tokens.

The blocks' tokens are of one tap (deepfake.towers.base): block outputs, or ln_2 outputs for the
RINE head. Each helper checks that the features hold the tap the head reads.

Every path that scores images (training, validation, evaluation, predict, tiles) builds a
:class:`FeatureBatch` with the helpers here, so a head sees its features the same way in each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from deepfake.features.cache import STORE_DTYPE
from deepfake.towers.base import BLOCK_TAP, tap_rows


@dataclass
class FeatureBatch:
    """``embeds`` [B, D]; ``layers`` [B, len(blocks), hidden] in the order the head asked for, or ``None``."""

    embeds: torch.Tensor
    layers: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.embeds)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> FeatureBatch:
        return FeatureBatch(
            self.embeds.to(device, torch.float32, non_blocking=non_blocking),
            self.layers.to(device, torch.float32, non_blocking=non_blocking) if self.layers is not None else None,
        )


class _Table(Protocol):
    embeds: torch.Tensor
    layer_ids: list[int]
    tap: str

    def layer_rows(self, idx: torch.Tensor) -> torch.Tensor: ...


def block_columns(available: list[int], wanted: tuple[int, ...] | list[int]) -> list[int]:
    """Positions of the ``wanted`` block numbers among ``available`` ones; a clear error if one is absent."""
    missing = [b for b in wanted if b not in available]
    if missing:
        raise ValueError(f"the head reads block(s) {missing} but the features hold only blocks {list(available)}; "
                         f"extract them with --feature_layers")
    return [list(available).index(b) for b in wanted]


def check_tap(have: str, wanted: str) -> None:
    """Refuse per-block tokens of another tap than the head reads."""
    if have != wanted:
        raise ValueError(f"the head reads the {wanted} tap of its blocks, but the features hold the {have} tap")


def table_batch(table: _Table, idx: torch.Tensor, blocks: tuple[int, ...] | list[int] = (),
                tap: str = BLOCK_TAP) -> FeatureBatch:
    """Rows ``idx`` of a feature table, with the CLS tokens of ``blocks`` of ``tap`` (none: embeddings only)."""
    embeds = table.embeds[idx].float()
    if not blocks:
        return FeatureBatch(embeds)
    check_tap(getattr(table, "tap", BLOCK_TAP), tap)
    layers = table.layer_rows(idx)
    if list(blocks) != list(table.layer_ids):
        layers = layers[:, block_columns(table.layer_ids, blocks)]
    return FeatureBatch(embeds, layers)


def tower_batch(out, blocks: tuple[int, ...] | list[int] = (), tap: str = BLOCK_TAP) -> FeatureBatch:
    """A batch straight from a tower's output, rounded as the cache stores features.

    The rounding makes a head score tower outputs exactly as it scores cached ones.
    """
    dtype = getattr(out, "store_dtype", None) or STORE_DTYPE
    embeds = out.embeds.float().cpu().to(dtype).float()
    if not blocks:
        return FeatureBatch(embeds)
    if out.layers is None:
        raise ValueError("the head reads per-block CLS tokens; run the tower with layers=True")
    check_tap(getattr(out, "tap", BLOCK_TAP), tap)
    layers = out.layers[:, tap_rows(tap, blocks)].float().cpu().to(dtype).float()
    return FeatureBatch(embeds, layers)
