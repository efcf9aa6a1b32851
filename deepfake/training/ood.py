"""Fit a head's out-of-distribution statistics (:mod:`deepfake.model.ood`) from its training features.

Two streamed passes over the training split's final embeddings (every cached view, the rows training
reads; ``--no_cache``: two passes through the tower): the per-dimension mean and std, then the
correlation matrix of the standardised rows and the sum of their fourth powers, from which Ledoit
and Wolf's shrinkage intensity follows (the formula of scikit-learn's ``ledoit_wolf_shrinkage``, in
float64). The threshold is set on the validation split, rows the statistics never saw: the distance
that :data:`~deepfake.model.ood.OOD_TARGET_RATE` of them exceed. Distances of training rows would
be too small (the covariance fitted them), so a threshold set on them would flag far more than 1%
of new in-distribution images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from deepfake.evaluation.metrics import threshold_for_fpr
from deepfake.features.batch import table_batch
from deepfake.features.extraction import FeatureTable
from deepfake.model.heads import guarded_statistics
from deepfake.model.ood import OOD_DISTANCE, OOD_TARGET_RATE, attach_ood
from deepfake.training.sources import CachedFeatures, TowerFeatures
from deepfake.training.standardize import CHUNK_VALUES, RunningMoments

log = logging.getLogger(__name__)

# Eigenvalues of the shrunk correlation below this are raised to it: a direction without spread
# in training would otherwise make any step along it an infinite distance.
EIGEN_FLOOR = 1e-6


def ledoit_wolf(rows: Callable[[], Iterable[torch.Tensor]], mean: torch.Tensor, std: torch.Tensor
                ) -> tuple[torch.Tensor, float, int]:
    """(shrunk covariance of the standardised rows, shrinkage intensity, rows) in float64, streamed."""
    d = len(mean)
    gram, fourth, n = torch.zeros(d, d, dtype=torch.float64), 0.0, 0
    for chunk in rows():
        z = (chunk.double() - mean) / std
        gram += z.T @ z
        fourth += float(((z * z).sum(dim=1) ** 2).sum())
        n += len(z)
    cov = gram / n
    mu = float(torch.trace(cov)) / d
    frob = float((cov * cov).sum())
    delta = (frob - d * mu * mu) / d
    beta = min((fourth / n - frob) / (d * n), delta)
    shrinkage = 0.0 if delta <= 0 else max(0.0, beta / delta)
    shrunk = (1 - shrinkage) * cov + shrinkage * mu * torch.eye(d, dtype=torch.float64)
    return shrunk, shrinkage, n


def whitening(cov: torch.Tensor) -> torch.Tensor:
    """``W`` with ``W W^T`` the inverse of ``cov``: ``||z @ W||`` is the Mahalanobis distance of ``z``.

    The symmetric inverse square root, which is unique: the eigenvectors alone are not (their signs, and
    their order within a repeated eigenvalue, follow the LAPACK build and its threads), and a head
    trained on one rank or on eight must store the same statistics.
    """
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp(min=EIGEN_FLOOR * max(float(values.max()), EIGEN_FLOOR))
    return (vectors / values.sqrt()) @ vectors.T


def _embedding_chunks(source: CachedFeatures | TowerFeatures, batch_size: int) -> Callable[[], Iterable[torch.Tensor]]:
    """A function giving one pass over the training split's final embeddings, in chunks."""
    if isinstance(source, CachedFeatures):
        rows = source.ok.nonzero().flatten()

        def cached() -> Iterable[torch.Tensor]:
            for view in source.views:
                step = max(1, CHUNK_VALUES // max(1, view.embeds[0].numel()))
                for start in range(0, len(rows), step):
                    yield view.embeds[rows[start : start + step]].float()
        return cached

    def through_tower() -> Iterable[torch.Tensor]:
        once = TowerFeatures(source.tower, source.dataset, source.num_workers, source.blocks, source.tap)
        for _, batch in once.epoch_batches(list(torch.arange(len(source.dataset)).split(batch_size))):
            yield batch.embeds
    return through_tower


def fit_ood(head: nn.Module, source: CachedFeatures | TowerFeatures, val_table: FeatureTable | None,
            batch_size: int, target_rate: float = OOD_TARGET_RATE) -> dict | None:
    """Give ``head`` its out-of-distribution statistics and threshold; returns its record, or ``None`` (logged)
    when there is too little to fit them (fewer than 2 training rows, no readable validation row)."""
    chunks = _embedding_chunks(source, batch_size)
    moments = RunningMoments()
    for chunk in chunks():
        moments.add(chunk)
    if moments.n < 2:
        log.warning("%d training row(s): no out-of-distribution statistics (inputs will say 'unknown')", moments.n)
        return None
    mean, std = (t.double() for t in guarded_statistics(*moments.result()))
    shrunk, shrinkage, n = ledoit_wolf(chunks, mean, std)
    attach_ood(head, {"dim": len(mean)})
    head.ood.set_statistics(mean.float(), std.float(), whitening(shrunk).float())
    val_rows = val_table.ok.nonzero().flatten() if val_table is not None else torch.zeros(0, dtype=torch.long)
    distances = head.ood.distances(table_batch(val_table, val_rows).embeds) if len(val_rows) else np.zeros(0)
    threshold = threshold_for_fpr(distances, target_rate)
    record = {"dim": len(mean), "distance": OOD_DISTANCE, "threshold": threshold, "target_rate": target_rate,
              "n_train": n, "n_calibration": len(distances), "shrinkage": shrinkage,
              "achieved_rate": float(np.mean(distances > threshold)) if threshold is not None else None}
    head.ood_record = record
    if threshold is None:
        log.warning("no readable validation image: the head stores no out-of-distribution threshold "
                    "(inputs will say 'unknown')")
    else:
        log.info("out-of-distribution threshold %.4g: %d of %d validation images beyond it (Ledoit-Wolf shrinkage %.3f,"
                 " %d training rows)", threshold, int(np.sum(distances > threshold)), len(distances), shrinkage, n)
    return record
