"""Whether an image's features lie inside the distribution of the features a head was trained on.

A head trained by this tool stores, beside its weights, what the distance needs: the training
features' mean and standard deviation per dimension and a whitening matrix of their Ledoit-Wolf
shrunk correlation matrix (buffers ``ood.mean``, ``ood.std``, ``ood.whiten`` of
:class:`OODStatistics`), always on the final embedding whatever the head reads. The distance of an
image is the Mahalanobis distance of its standardised embedding under that shrunk correlation,
``|| ((x - mean) / std) @ whiten ||``; its threshold (``config["head"]["ood"]["threshold"]``) is the
distance that ``target_rate`` of the held-out validation images exceed. An image further than it is
flagged ``out``; a head without the statistics (imported from a release, or written before them)
says ``unknown`` for every image, never ``in``.

Why this distance: a head is only as good as the features it saw; a Mahalanobis distance weighs
each direction by how much the training features vary along it, so it sees an image off the
training features' correlations (another camera, another generator family) that a per-dimension
test misses. With 768 to 1024 dimensions and a few hundred images the sample covariance is
singular; shrinking it towards the identity (Ledoit and Wolf's optimal intensity, computed from the
same rows) keeps it invertible and its inverse stable. Standardising first makes that target the
training features' own per-dimension spread, so no dimension weighs more because of its units.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

OOD_DISTANCE = "mahalanobis, standardised embedding, Ledoit-Wolf shrunk correlation"
# The share of held-out in-distribution images the threshold flags.
OOD_TARGET_RATE = 0.01
# The three answers per image: inside, outside, or no statistics to tell.
OOD_IN, OOD_OUT, OOD_UNKNOWN = "in", "out", "unknown"


class OODStatistics(nn.Module):
    """The training features' ``mean`` and ``std`` [D] and ``whiten`` [D, D]; the identity until fitted."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float32))
        self.register_buffer("std", torch.ones(dim, dtype=torch.float32))
        self.register_buffer("whiten", torch.eye(dim, dtype=torch.float32))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor, whiten: torch.Tensor) -> None:
        with torch.no_grad():
            self.mean.copy_(mean)
            self.std.copy_(std)
            self.whiten.copy_(whiten)

    @torch.no_grad()
    def distances(self, embeds: torch.Tensor, block: int = 4096) -> np.ndarray:
        """The distance of each row of ``embeds`` [N, D] (float64 numpy)."""
        out = []
        for start in range(0, len(embeds), block):
            z = (embeds[start : start + block].to(self.mean.device).float() - self.mean) / self.std
            out.append(torch.linalg.vector_norm(z @ self.whiten, dim=1).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)


def ood_config(head: nn.Module) -> dict | None:
    """The head config's ``ood`` record (distance, threshold, ...), or ``None`` for a head without statistics."""
    return getattr(head, "ood_record", None) if getattr(head, "ood", None) is not None else None


def attach_ood(head: nn.Module, record: dict) -> None:
    """Give ``head`` an :class:`OODStatistics` sized by ``record["dim"]`` (its buffers come with the weights)."""
    head.ood = OODStatistics(int(record["dim"]))
    head.ood_record = dict(record)


def ood_flags(head: nn.Module, embeds: torch.Tensor) -> tuple[np.ndarray, list[str]]:
    """(distance, ``in``/``out``/``unknown``) per row of ``embeds``; NaN and ``unknown`` without statistics."""
    record = ood_config(head)
    if record is None or record.get("threshold") is None:
        return np.full(len(embeds), np.nan), [OOD_UNKNOWN] * len(embeds)
    distances = head.ood.distances(embeds)
    return distances, [OOD_OUT if d > record["threshold"] else OOD_IN for d in distances]


def ood_note(record: dict | None) -> str | None:
    """One line saying what the flag means for this head, or ``None`` without statistics."""
    if not record or record.get("threshold") is None:
        return None
    beyond = record.get("achieved_rate")
    share = f"{100 * beyond:.1f}% of" if beyond is not None else "at most"
    return (f"{record['distance']} above {record['threshold']:.4g}: {share} the {record['n_calibration']} held-out "
            f"validation images lie beyond it (target {100 * record['target_rate']:g}%)")
