"""How the head is optimised: learning-rate schedule, early stopping, and the options a run records."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from deepfake.config import LR_SCHEDULES, RuntimeConfig, ScheduleConfig

_SCHEDULE, _RUNTIME = ScheduleConfig(), RuntimeConfig()


@dataclass
class TrainOptions:
    """How the head is optimised; recorded in every checkpoint's config."""

    num_epochs: int = _SCHEDULE.num_epochs
    learning_rate: float = _SCHEDULE.learning_rate
    weight_decay: float = _SCHEDULE.weight_decay
    batch_size: int = _RUNTIME.batch_size
    lr_schedule: str = _SCHEDULE.lr_schedule
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = _SCHEDULE.lr_gamma
    patience: int = _SCHEDULE.patience
    keep_last: int = _SCHEDULE.keep_last
    contrastive_weight: float = _SCHEDULE.contrastive_weight
    contrastive_temperature: float = _SCHEDULE.contrastive_temperature

    def __post_init__(self):
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr_schedule {self.lr_schedule!r}: choose from {', '.join(LR_SCHEDULES)}")
        if self.patience < 0 or self.keep_last < 0 or self.contrastive_weight < 0:
            raise ValueError("--patience, --keep_last and --contrastive_weight must not be negative")
        if self.lr_schedule == "step" and not self.lr_milestones:
            # Decay at half and three quarters of the run unless told otherwise.
            half, three_quarters = self.num_epochs // 2 + 1, (3 * self.num_epochs) // 4 + 1
            self.lr_milestones = tuple(sorted({half, three_quarters}))
        self.lr_milestones = tuple(int(m) for m in self.lr_milestones)

    @classmethod
    def from_config(cls, schedule: ScheduleConfig, batch_size: int) -> TrainOptions:
        """The options of a run: its schedule config, with milestones resolved, at ``batch_size``."""
        return cls(num_epochs=schedule.num_epochs, learning_rate=schedule.learning_rate,
                   weight_decay=schedule.weight_decay, batch_size=batch_size, lr_schedule=schedule.lr_schedule,
                   lr_milestones=tuple(schedule.lr_milestones or ()), lr_gamma=schedule.lr_gamma,
                   patience=schedule.patience, keep_last=schedule.keep_last,
                   contrastive_weight=schedule.contrastive_weight,
                   contrastive_temperature=schedule.contrastive_temperature)

    def to_dict(self) -> dict:
        return {**asdict(self), "lr_milestones": list(self.lr_milestones)}

    def learning_rate_at(self, epoch: int) -> float:
        """The rate for 1-based ``epoch``: a pure function of it, so a resumed run follows the same curve."""
        if self.lr_schedule == "cosine":
            return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / max(self.num_epochs, 1)))
        if self.lr_schedule == "step":
            return self.learning_rate * self.lr_gamma ** sum(m <= epoch for m in self.lr_milestones)
        return self.learning_rate


@dataclass
class FitState:
    """Where a run stands: last finished epoch, best (val AP, -val loss), per-epoch history."""

    epoch: int = 0
    best: tuple = (-1.0, -float("inf"))
    history: list = field(default_factory=list)
    stopped_early: bool = False


def epochs_without_improvement(history: list[dict]) -> int:
    """Epochs since val AP last rose above every earlier epoch's (0 when the last epoch set it)."""
    best, since = -float("inf"), 0
    for row in history:
        ap = row["val_ap"] if row["val_ap"] is not None else -1.0
        if ap > best:
            best, since = ap, 0
        else:
            since += 1
    return since


def make_optimizer(head: nn.Module, opts: TrainOptions) -> torch.optim.Optimizer:
    return torch.optim.AdamW(head.parameters(), lr=opts.learning_rate, weight_decay=opts.weight_decay)
