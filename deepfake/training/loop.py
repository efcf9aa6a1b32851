"""The epoch loop: train a head on any feature source, validate, keep the best, stop early.

``fit`` is usable on any source of ``(indices, FeatureBatch)`` batches: the training run, the
head comparison and the tests call it directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfake.deepfake_dataset import Sample
from deepfake.evaluation.metrics import accuracy_at, average_precision, best_threshold, expected_calibration_error
from deepfake.features.extraction import ExtractionSettings, FeatureTable
from deepfake.model.heads import block_importance
from deepfake.model.losses import classification_loss, supervised_contrastive_loss
from deepfake.model.scoring import fake_probabilities
from deepfake.towers.base import ImageTower
from deepfake.training.schedule import FitState, TrainOptions, epochs_without_improvement, make_optimizer
from deepfake.utils import threads
from deepfake.utils.progress import Progress, write_line
from deepfake.utils.runtime import versions

log = logging.getLogger(__name__)


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    val_ap: float | None
    val_threshold: float | None
    val_best_acc: float | None
    val_ece: float | None


def validation_metrics(head: nn.Module, table: FeatureTable, labels: np.ndarray) -> dict:
    """Loss, accuracy, AP, best threshold and ECE on the readable rows of ``table`` (``labels``: those rows)."""
    probs = fake_probabilities(head, table, table.ok.nonzero().flatten())
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))) if len(labels) else float("nan")
    threshold, best_acc = best_threshold(labels, probs) if len(set(labels.tolist())) == 2 else (None, None)
    return {
        "val_loss": loss,
        "val_acc": accuracy_at(labels, probs, 0.5)["acc"],
        "val_ap": average_precision(labels, probs),
        "val_threshold": threshold,
        "val_best_acc": best_acc,
        "val_ece": expected_calibration_error(labels, probs),
    }


def run_config(tower: ImageTower, settings: ExtractionSettings, head: nn.Module, opts: TrainOptions,
               train_samples: list[Sample], seed: int) -> dict:
    """What every checkpoint of a run records: tower, preprocessing, features, head, options, data, seed."""
    return {
        "tower": tower.identity,
        "preprocess": tower.preprocess.to_dict(),
        "features": {**settings.cache_info(), "layers": list(settings.layers)},
        "head": head.config(),
        "training": opts.to_dict(),
        "categories": sorted({s.category for s in train_samples}),
        "seed": seed,
        "threshold": 0.5,
        "versions": versions(),
    }


def epoch_config(base: dict, head: nn.Module, result: EpochResult) -> dict:
    """One epoch's checkpoint config: the run's, plus its metrics and (layers head) block importance."""
    config = {**base, "epoch": result.epoch, "metrics": vars(result), "val_threshold": result.val_threshold}
    importance = block_importance(head)
    if importance is not None:
        config["block_importance"] = importance
    return config


def epoch_index_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).split(batch_size))


def fit(
    head: nn.Module,
    source,
    labels: torch.Tensor,
    validate: Callable[[nn.Module], dict],
    opts: TrainOptions,
    generator: torch.Generator,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    state: FitState | None = None,
    on_epoch: Callable[[EpochResult, bool], None] | None = None,
    progress: bool = True,
) -> FitState:
    """Train ``head`` on ``source`` (``epoch_batches`` of (indices, FeatureBatch)) for the remaining epochs.

    ``validate(head)`` gives the validation metrics; ``on_epoch(result, is_best)`` saves what the
    caller keeps. Stops early after ``opts.patience`` epochs without a higher val AP.
    """
    optimizer = optimizer or make_optimizer(head, opts)
    state = state or FitState()
    if opts.contrastive_weight > 0 and head.kind == "linear":
        raise ValueError("--contrastive_weight needs a head with a learned representation (mlp, layers or rine), "
                         "not the linear probe")
    # Progress on stderr (a bar, or a line every 30 s where stderr is not a terminal); the epoch lines go to stdout.
    epochs = range(state.epoch + 1, opts.num_epochs + 1)
    bar = Progress(len(epochs), "epochs", "epoch", enabled=progress)
    try:
        _epochs(head, source, labels, validate, opts, generator, device, optimizer, state, on_epoch, bar)
    finally:
        bar.close()
    return state


def _epochs(head, source, labels, validate, opts, generator, device, optimizer, state, on_epoch, bar: Progress) -> None:
    """The epochs of :func:`fit` (its arguments), each reported on ``bar`` and as a line on stdout."""
    for epoch in range(state.epoch + 1, opts.num_epochs + 1):
        if opts.patience and epochs_without_improvement(state.history) >= opts.patience:
            state.stopped_early = True
            log.info("early stop before epoch %d: val AP has not improved for %d epochs", epoch, opts.patience)
            break
        for group in optimizer.param_groups:
            group["lr"] = opts.learning_rate_at(epoch)
        losses = _train_epoch(head, source, labels, opts, generator, device, optimizer)
        result = EpochResult(epoch, float(np.mean(losses)) if losses else float("nan"), **validate(head))
        state.history.append(vars(result))
        state.epoch = epoch
        bar.update()
        bar.set_postfix(loss=f"{result.train_loss:.4f}", val_ap=f"{result.val_ap or 0:.4f}")
        threads.refresh()  # others' load may have changed since the budget was decided
        # The per-epoch line is a result the user asked for: shown even with --quiet.
        write_line(f"epoch {epoch:3d}  train_loss {result.train_loss:.4f}  val_acc {result.val_acc:.4f}  "
                   f"val_ap {result.val_ap if result.val_ap is not None else float('nan'):.4f}")
        # Best by val AP; once AP saturates, the lower val loss breaks the tie.
        score = (result.val_ap if result.val_ap is not None else -1.0, -result.val_loss)
        is_best = score > state.best
        if is_best:
            state.best = score
        if on_epoch is not None:
            on_epoch(result, is_best)


def _train_epoch(head: nn.Module, source, labels: torch.Tensor, opts: TrainOptions, generator: torch.Generator,
                 device: torch.device, optimizer: torch.optim.Optimizer) -> list[float]:
    """One pass over the training set in a fresh order; the loss of every batch."""
    head.train()
    losses = []
    for idx, batch in source.epoch_batches(epoch_index_batches(len(labels), opts.batch_size, generator)):
        target = labels[idx].to(device)
        # The head is tiny: it trains in fp32 (no autocast, so no GradScaler question on fp16 GPUs).
        logits, embedding = head.forward_with_embedding(batch.to(device, non_blocking=True))
        loss = classification_loss(logits, target)
        if opts.contrastive_weight > 0:
            loss = loss + opts.contrastive_weight * supervised_contrastive_loss(
                embedding, target, opts.contrastive_temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def drop_old_epochs(out: Path, epoch: int, keep_last: int) -> None:
    """Remove this run's epoch checkpoints older than the last ``keep_last`` (``best.*`` is apart and stays).

    Only epochs up to the current one are touched: those files were written by this run.
    """
    if keep_last <= 0:
        return
    for weights in out.glob("epoch_*.safetensors"):
        number = weights.stem.removeprefix("epoch_")
        if number.isdigit() and int(number) <= epoch - keep_last:
            weights.with_suffix(".json").unlink(missing_ok=True)
            weights.unlink(missing_ok=True)
