"""What a head reads: one batch of tower features, the final embedding and chosen blocks' CLS tokens.

Every path that scores images (training, validation, evaluation, predict, tiles) builds a
:class:`FeatureBatch` with the helpers here, so a head sees its features the same way in each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from deepfake.features.cache import STORE_DTYPE


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

    def layer_rows(self, idx: torch.Tensor) -> torch.Tensor: ...


def block_columns(available: list[int], wanted: tuple[int, ...] | list[int]) -> list[int]:
    """Positions of the ``wanted`` block numbers among ``available`` ones; a clear error if one is absent."""
    missing = [b for b in wanted if b not in available]
    if missing:
        raise ValueError(f"the head reads block(s) {missing} but the features hold only blocks {list(available)}; "
                         f"extract them with --feature_layers")
    return [list(available).index(b) for b in wanted]


def table_batch(table: _Table, idx: torch.Tensor, blocks: tuple[int, ...] | list[int] = ()) -> FeatureBatch:
    """Rows ``idx`` of a feature table, with the CLS tokens of ``blocks`` (none: embeddings only)."""
    embeds = table.embeds[idx].float()
    if not blocks:
        return FeatureBatch(embeds)
    layers = table.layer_rows(idx)
    if list(blocks) != list(table.layer_ids):
        layers = layers[:, block_columns(table.layer_ids, blocks)]
    return FeatureBatch(embeds, layers)


def tower_batch(out, blocks: tuple[int, ...] | list[int] = ()) -> FeatureBatch:
    """A batch straight from a tower's output, rounded as the cache stores features.

    The rounding makes a head score tower outputs exactly as it scores cached ones.
    """
    embeds = out.embeds.float().cpu().to(STORE_DTYPE).float()
    if not blocks:
        return FeatureBatch(embeds)
    if out.layers is None:
        raise ValueError("the head reads per-block CLS tokens; run the tower with layers=True")
    layers = out.layers[:, list(blocks)].float().cpu().to(STORE_DTYPE).float()
    return FeatureBatch(embeds, layers)
