"""Train a head on a frozen tower: features once (cached), then epochs in seconds.

``train(args)`` is what ``train_ClassifierHead.py`` runs; ``fit`` is its epoch loop, usable on
any feature source (``benchmarks/compare_heads.py`` and the tests call it directly). With the
cache (default) every image goes through the tower once per (tower, preprocessing, view); with
``--no_cache`` every epoch runs the tower again on every image, as a plain loop over images does.
Both see the same batches in the same order and the same fp16-rounded features, so a
seed gives the same head either way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from deepfake.bias_audit import audit_samples, format_audit
from deepfake.checkpoint import BEST, save_checkpoint
from deepfake.deepfake_classifier import fake_probabilities
from deepfake.deepfake_dataset import DeepfakeDataset, Sample, collate, training_samples
from deepfake.feature_batch import FeatureBatch, table_batch, tower_batch
from deepfake.features import (
    ExtractionSettings,
    FeatureTable,
    cache_features,
    extract_features,
    parse_feature_layers,
    prepare_tower,
    read_features,
)
from deepfake.fileio import atomic_save_safetensors, atomic_write_json, removed_if_left_empty
from deepfake.heads import block_importance, new_head
from deepfake.layouts import parse_label_dirs
from deepfake.losses import supervised_contrastive_loss
from deepfake.metrics import accuracy_at, average_precision, best_threshold, expected_calibration_error
from deepfake.run_helpers import cache_root, feature_cache, report_skipped, versions
from deepfake.runtime import (
    choose_device,
    init_distributed,
    is_main_process,
    release_free_heap,
    resolve_precision,
    seed_everything,
)
from deepfake.towers import DeferredTower, ImageTower, load_tower
from deepfake.transforms import BlurJpegAugment, parse_align

log = logging.getLogger(__name__)

RESUME_STATE = "resume_state"


def check_output_dir(path: Path, overwrite: bool, resume: bool) -> None:
    """A new run never writes into a user's non-empty folder unless told to."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise FileExistsError(
            f"{path}: output directory is not empty; pass --overwrite to write new checkpoints over the "
            f"ones there (other files are left alone) or --resume to continue that run"
        )


def summarize_training(train: list[Sample], val: list[Sample]) -> str:
    """Categories and counts per split, as printed before any work starts."""
    lines = [f"{len(train)} training and {len(val)} validation images:"]
    for name in sorted({s.category for s in train} | {s.category for s in val}):
        counts = [sum(1 for s in part if s.category == name and s.label == label) for part in (train, val) for label in (0, 1)]
        lines.append(f"  {name:<32} train {counts[0]:>7} real {counts[1]:>7} fake   val {counts[2]:>6} real {counts[3]:>6} fake")
    return "\n".join(lines)


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


# --- resumable state: head, optimizer moments and RNG states as tensors ---------------


def run_identity(tower: ImageTower, settings: ExtractionSettings, augment: BlurJpegAugment, n_views: int,
                 seed: int, no_cache: bool, train_samples: list[Sample], val_samples: list[Sample],
                 root: str = "") -> dict:
    """What must not change between a run and its resumption: tower, preprocessing, data, seed, features."""
    digest = hashlib.sha256()
    # Paths relative to --dataset_dir, whether or not it was spelled with a trailing slash: the
    # same data gives the same digest from any working directory, and a scan of 720k files is not
    # spent on relpath calls. The separator kept in front is the digest earlier runs recorded.
    prefix = os.path.join(root, "") if root else ""
    for split, samples in (("train", train_samples), ("val", val_samples)):
        # In chunks: the digest is the same, and 720k lines are never held at once.
        for start in range(0, len(samples), 4096):
            lines = "".join(f"{split}\t{_relative(s.path, root, prefix)}\t{s.label}\n"
                            for s in samples[start : start + 4096])
            digest.update(lines.encode("utf-8", "surrogateescape"))
    return {
        "tower": {k: v for k, v in tower.identity.items()},
        "preprocess": tower.preprocess.to_dict(),
        "features": settings.cache_info(),
        "data": {"n_train": len(train_samples), "n_val": len(val_samples), "sha256": digest.hexdigest()},
        "seed": seed,
        "augment": {**augment.to_dict(), "views": n_views} if augment.enabled else None,
        "no_cache": no_cache,
    }


def _relative(path: str, root: str, prefix: str) -> str:
    """``path`` under ``root`` as ``/rel/path`` (``prefix``: root ending in one separator); else absolute."""
    if prefix and path.startswith(prefix):
        return os.sep + path[len(prefix):]
    if root and path.startswith(root):  # a root spelled with several trailing separators
        return os.sep + os.path.relpath(path, root)
    return os.path.abspath(path)


# Hyper-parameters a resumed run may change; the new value applies from the next epoch.
RESUMABLE_CHANGES = ("learning_rate", "weight_decay", "batch_size", "num_epochs", "lr_schedule", "lr_milestones",
                     "lr_gamma", "patience", "keep_last")

# The command-line option behind each entry of an identity field, named when a resume is refused.
IDENTITY_OPTIONS = {"kind": "--head", "blocks": "--feature_layers", "proj_dim": "--proj_dim",
                    "importance": "--importance", "contrastive_weight": "--contrastive_weight",
                    "contrastive_temperature": "--contrastive_temperature"}
# What a field a run does not record stands for (no ``loss``: no contrastive term).
IDENTITY_ABSENT = {"loss": {"contrastive_weight": 0.0}}


def save_resume_state(out: Path, head, optimizer, generator, epoch: int, best: tuple, history: list,
                      identity: dict, hyper: dict) -> None:
    """Head, optimizer moments, every RNG state and the run's identity, as one safetensors file."""
    tensors = {f"head.{k}": v for k, v in head.state_dict().items()}
    opt_state = optimizer.state_dict()
    for pid, state in opt_state["state"].items():
        for name, value in state.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    if torch.cuda.is_available():
        for i, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = value
    meta = {"epoch": str(epoch), "best": json.dumps(list(best)), "history": json.dumps(history),
            "param_groups": json.dumps(opt_state["param_groups"]), "identity": json.dumps(identity),
            "hyper": json.dumps(hyper), "rng.numpy": json.dumps(_numpy_state()),
            "rng.python": json.dumps(_python_state())}
    atomic_save_safetensors(out / f"{RESUME_STATE}.safetensors", tensors, meta)


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def read_resume_meta(out: Path) -> dict | None:
    """The metadata of the run's resume state, or ``None`` when no epoch has finished yet."""
    path = out / f"{RESUME_STATE}.safetensors"
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            return handle.metadata() or {}
    except Exception as exc:
        raise ValueError(f"{path}: unreadable resume state ({exc}); start again with --overwrite") from exc


def check_resumable(out: Path, meta: dict, identity: dict, hyper: dict) -> list[str]:
    """Refuse a resume whose tower, preprocessing, data, seed or features differ; list changed hyper-parameters."""
    saved = json.loads(meta.get("identity", "null"))
    path = out / f"{RESUME_STATE}.safetensors"
    if saved is None:
        raise ValueError(f"{path}: written by an older version without the run's identity; "
                         f"cannot check it is the same run, start again with --overwrite")
    # Both sides' fields: a field only some runs record (align, loss) must not vanish unnoticed.
    for field_name in dict.fromkeys([*identity, *saved]):
        if saved.get(field_name) != identity.get(field_name):
            was, now = (saved.get(field_name) or IDENTITY_ABSENT.get(field_name, {}),
                        identity.get(field_name) or IDENTITY_ABSENT.get(field_name, {}))
            options = [f"{IDENTITY_OPTIONS[k]} {json.dumps(was[k])} -> {json.dumps(now[k])}"
                       for k in was if k in IDENTITY_OPTIONS and k in now and was[k] != now[k]
                       ] if isinstance(was, dict) and isinstance(now, dict) else []
            named = f" ({'; '.join(options)})" if options else ""
            raise ValueError(f"{path}: cannot resume: {field_name} differs{named} from the run being resumed "
                             f"(saved {json.dumps(saved.get(field_name))[:200]}, now "
                             f"{json.dumps(identity.get(field_name))[:200]}); use a new --output_dir or --overwrite")
    before = json.loads(meta.get("hyper", "{}"))
    changes = []
    for name in RESUMABLE_CHANGES:
        if name in before and before[name] != hyper[name]:
            changes.append(f"--{name} {before[name]} -> {hyper[name]}")
    return changes


def load_resume_state(out: Path, head, optimizer, generator, hyper: dict) -> tuple[int, tuple, list]:
    """Restore head, optimizer, RNG states; the current ``hyper`` values (learning rate, weight decay) apply."""
    path = out / f"{RESUME_STATE}.safetensors"
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    tensors = load_file(str(path))
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    for group in optimizer.param_groups:
        group["lr"] = hyper["learning_rate"]
        group["weight_decay"] = hyper["weight_decay"]
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    cuda_states = [tensors[k] for k in cuda_keys]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if "rng.numpy" in meta:
        kind, keys, pos, has_gauss, gauss = json.loads(meta["rng.numpy"])
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "rng.python" in meta:
        version, internal, gauss = json.loads(meta["rng.python"])
        random.setstate((version, tuple(internal), gauss))
    return int(meta["epoch"]), tuple(json.loads(meta["best"])), json.loads(meta["history"])


# --- the two ways of getting a batch of features -------------------------------------


class CachedFeatures:
    """Training batches from cached features; with K augmented views, one view per image per epoch."""

    def __init__(self, views: list[FeatureTable], generator: torch.Generator, blocks: tuple[int, ...] = ()):
        self.views = views
        # A row a view could not read has zero features there: train only on rows every view read.
        self.ok = views[0].ok.clone()
        for view in views[1:]:
            self.ok &= view.ok
        self.generator = generator
        self.blocks = tuple(blocks)

    def epoch_batches(self, batches: list[torch.Tensor]):
        pick = torch.randint(len(self.views), (len(self.ok),), generator=self.generator) if len(self.views) > 1 else None
        for idx in batches:
            idx = idx[self.ok[idx]]
            if len(idx) == 0:
                continue
            if pick is None:
                yield idx, table_batch(self.views[0], idx, self.blocks)
                continue
            per_view = [table_batch(v, idx, self.blocks) for v in self.views]
            chosen, rows = pick[idx], torch.arange(len(idx))
            embeds = torch.stack([b.embeds for b in per_view])[chosen, rows]  # [K, B, D] -> [B, D]
            layers = torch.stack([b.layers for b in per_view])[chosen, rows] if self.blocks else None
            yield idx, FeatureBatch(embeds, layers)


class TowerFeatures:
    """Training batches through the tower, image by image, every epoch (``--no_cache``)."""

    def __init__(self, tower: ImageTower, dataset: DeepfakeDataset, num_workers: int, blocks: tuple[int, ...] = ()):
        self.tower = tower
        self.dataset = dataset
        self.num_workers = num_workers
        self.blocks = tuple(blocks)
        self.skipped: dict[int, str] = {}
        self.epoch = 0

    def epoch_batches(self, batches: list[torch.Tensor]):
        # A fresh augmentation draw each epoch, reproducible from (seed, epoch, path).
        self.dataset.view = self.epoch
        self.epoch += 1
        loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in batches], collate_fn=collate,
                            num_workers=self.num_workers, generator=torch.Generator().manual_seed(0))
        for batch in loader:
            self.skipped.update(dict(batch["skipped"]))
            if batch["pixel_values"] is None:
                continue
            # Grad mode is thread state: it must not stay off across the yield.
            with torch.no_grad():
                out = self.tower(batch["pixel_values"].to(self.tower.device), layers=bool(self.blocks))
                features = tower_batch(out, self.blocks)
            yield batch["indices"], features


def head_sizes(args: argparse.Namespace) -> dict:
    """Size options of the chosen head kind that the command line sets."""
    if getattr(args, "head", "mlp") == "layers":
        return {"proj_dim": args.proj_dim, "importance": args.importance}
    return {}


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


# --- the epoch loop: schedule, early stopping, retention ------------------------------

LR_SCHEDULES = ("constant", "cosine", "step")


@dataclass
class TrainOptions:
    """How the head is optimised; recorded in every checkpoint's config."""

    num_epochs: int = 10
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    batch_size: int = 64
    lr_schedule: str = "constant"
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    patience: int = 0
    keep_last: int = 0
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.07

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
    def from_args(cls, args: argparse.Namespace) -> TrainOptions:
        return cls(args.num_epochs, args.learning_rate, args.weight_decay, args.batch_size,
                   getattr(args, "lr_schedule", "constant"), tuple(getattr(args, "lr_milestones", None) or ()),
                   getattr(args, "lr_gamma", 0.1), getattr(args, "patience", 0) or 0, getattr(args, "keep_last", 0) or 0,
                   getattr(args, "contrastive_weight", 0.0), getattr(args, "contrastive_temperature", 0.07))

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
        raise ValueError("--contrastive_weight needs a head with a learned representation (mlp or layers), "
                         "not the linear probe")
    loss_fn = nn.CrossEntropyLoss()
    # Progress on stderr and only to a terminal (disable=None); the epoch lines go to stdout.
    bar = tqdm(range(state.epoch + 1, opts.num_epochs + 1), desc="epochs", unit="epoch",
               disable=None if progress else True)
    for epoch in bar:
        if opts.patience and epochs_without_improvement(state.history) >= opts.patience:
            state.stopped_early = True
            log.info("early stop before epoch %d: val AP has not improved for %d epochs", epoch, opts.patience)
            break
        for group in optimizer.param_groups:
            group["lr"] = opts.learning_rate_at(epoch)
        head.train()
        losses = []
        for idx, batch in source.epoch_batches(epoch_index_batches(len(labels), opts.batch_size, generator)):
            target = labels[idx].to(device)
            # The head is tiny: it trains in fp32 (no autocast, so no GradScaler question on fp16 GPUs).
            logits, embedding = head.forward_with_embedding(batch.to(device, non_blocking=True))
            loss = loss_fn(logits, target)
            if opts.contrastive_weight > 0:
                loss = loss + opts.contrastive_weight * supervised_contrastive_loss(
                    embedding, target, opts.contrastive_temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        result = EpochResult(epoch, float(np.mean(losses)) if losses else float("nan"), **validate(head))
        state.history.append(vars(result))
        state.epoch = epoch
        bar.set_postfix(loss=f"{result.train_loss:.4f}", val_ap=f"{result.val_ap or 0:.4f}")
        # The per-epoch line is a result the user asked for: shown even with --quiet.
        tqdm.write(f"epoch {epoch:3d}  train_loss {result.train_loss:.4f}  val_acc {result.val_acc:.4f}  "
                   f"val_ap {result.val_ap if result.val_ap is not None else float('nan'):.4f}", file=sys.stdout)
        # Best by val AP; once AP saturates, the lower val loss breaks the tie.
        score = (result.val_ap if result.val_ap is not None else -1.0, -result.val_loss)
        is_best = score > state.best
        if is_best:
            state.best = score
        if on_epoch is not None:
            on_epoch(result, is_best)
    return state


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


# --- the run -------------------------------------------------------------------------


def train(args: argparse.Namespace) -> dict:
    """Run one training job described by the parsed command line; returns the run summary.

    ``--resume`` continues from the last finished epoch with every RNG state restored, so the
    result equals an uninterrupted run. It refuses a run whose tower, preprocessing, data,
    seed, feature settings or augmentation differ. ``--learning_rate``, ``--weight_decay``,
    ``--batch_size`` and ``--num_epochs`` may change: the new values apply from the next
    epoch (and are logged). With no finished epoch it starts the run (from the cache).
    """
    with removed_if_left_empty(args.output_dir):
        return _train(args)


def _train(args: argparse.Namespace) -> dict:
    device = choose_device(args.device)
    init_distributed(device)
    out = Path(args.output_dir)
    if is_main_process():
        check_output_dir(out, args.overwrite, args.resume)
    categories = [c.strip() for c in (args.categories or "").split(",") if c.strip()] or None
    labels = parse_label_dirs(getattr(args, "label_dirs", None))
    align = parse_align(getattr(args, "align", None))
    train_samples, val_samples = training_samples(args.dataset_dir, categories, args.val_ratio, args.seed, labels)
    audit = None
    if is_main_process():
        print(summarize_training(train_samples, val_samples))
        audit = audit_samples([(s.path, s.category, s.label) for s in train_samples], crop=224,
                              max_per_group=getattr(args, "audit_max", 2000), seed=args.seed,
                              cache_root=cache_root(args))
        print(format_audit(audit, brief=True))
        release_free_heap()  # the audit's parsed headers are gone: hand their pages back before the tables

    precision = resolve_precision(args.precision or "auto", device)
    # Named, not built: a run whose features are all cached never reads the weights (nor imports
    # the modeling code); the first image through the tower builds it.
    tower = load_tower(args.model, args.revision, args.preprocess, defer=True, memo_root=cache_root(args))
    tower = prepare_tower(tower, precision, device, compile=args.compile)
    head_kind = getattr(args, "head", "mlp")
    blocks = parse_feature_layers(args.feature_layers, int(getattr(tower, "num_layers", 0) or 0))
    if head_kind == "layers" and not blocks:
        blocks = parse_feature_layers("all", int(getattr(tower, "num_layers", 0) or 0))
        log.info("--head layers: reading every block's CLS token (0..%d); --feature_layers chooses fewer", blocks[-1])
    settings = ExtractionSettings(
        batch_size=args.extract_batch_size or args.batch_size,
        num_workers=args.num_workers,
        precision=precision,
        layers=tuple(blocks),
        progress=not args.quiet,
        decode=args.decode or "exact",
    )
    opts = TrainOptions.from_args(args)
    head_blocks = tuple(blocks) if head_kind == "layers" else ()
    augment = BlurJpegAugment(args.blur_prob, args.blur_sigma, args.jpeg_prob, tuple(args.jpeg_quality))
    n_views = args.aug_views if augment.enabled else 1
    train_set = DeepfakeDataset(train_samples, tower.preprocess, augment=augment, seed=args.seed,
                                max_pixels=args.max_pixels, align=align, decode=settings.decode)
    val_set = DeepfakeDataset(val_samples, tower.preprocess, max_pixels=args.max_pixels, align=align,
                              decode=settings.decode)
    aligned = {"align": align.to_dict()} if align.enabled else {}
    val_labels = np.array([s.label for s in val_samples])
    identity = run_identity(tower, settings, augment, n_views, args.seed, args.no_cache, train_samples, val_samples,
                            str(args.dataset_dir))
    # A resumed run must rebuild the same head: its kind, blocks and sizes are part of the run.
    identity["head"] = {"kind": head_kind, "blocks": list(head_blocks), **head_sizes(args)}
    if align.enabled:
        identity["align"] = align.to_dict()  # aligned images are other features: never resume across a change
    if opts.contrastive_weight:
        # The loss itself: a changed contrastive term mid-run is another training objective.
        identity["loss"] = {"contrastive_weight": opts.contrastive_weight,
                            "contrastive_temperature": opts.contrastive_temperature}
    # Through JSON, as saved: milestones read back as a list, not the tuple the command line gave.
    hyper = json.loads(json.dumps({name: getattr(args, name, None) for name in RESUMABLE_CHANGES}))
    resume = args.resume
    if resume:
        # Checked before any extraction: a refused resume costs nothing.
        meta = read_resume_meta(out)
        if meta is None:
            log.warning("%s: no finished epoch to resume; starting the run (features come from the cache)", out)
            resume = False
        else:
            for change in check_resumable(out, meta, identity, hyper):
                log.warning("resume: %s; the new value applies from the next epoch", change)

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    if args.no_cache:
        source = TowerFeatures(tower, train_set, args.num_workers, head_blocks)
        val_table = None
    else:
        # Every set is cached before any table is read: no table is held while the tower runs.
        found = []
        for view in range(n_views):
            train_set.view = view
            extra = {"augment": {**augment.to_dict(), "seed": args.seed, "view": view}} if augment.enabled else {}
            cache = feature_cache(args, tower, settings, {**extra, **aligned})
            found.append((cache, cache_features(tower, train_set, settings, cache, f"train features (view {view})")))
        val_cache = feature_cache(args, tower, settings, aligned)
        val_found = cache_features(tower, val_set, settings, val_cache, "val features")
        if isinstance(tower, DeferredTower):
            tower.release()  # every feature is on disk: the head trains without the tower
            release_free_heap()
        if is_main_process():
            views = []
            for view, (cache, rows) in enumerate(found):
                train_set.view = view
                views.append(read_features(tower, train_set, settings, cache, rows, f"train features (view {view})"))
            val_table = read_features(tower, val_set, settings, val_cache, val_found, "val features")
    extract_seconds = time.perf_counter() - start
    if not is_main_process():
        return {}  # other ranks only helped with extraction (their tables are None)
    if not args.no_cache:
        source = CachedFeatures(views, generator, head_blocks)
        for what, table, samples in (("training", views[0], train_samples), ("validation", val_table, val_samples)):
            if samples and not table.ok.any():
                first = next(iter(sorted(table.skipped.items())), (0, "unknown"))
                raise ValueError(f"{args.dataset_dir}: none of the {len(samples)} {what} images could be read "
                                 f"(first: {samples[first[0]].path}: {first[1]})")

    seed_everything(args.seed)
    head = new_head(head_kind, tower, head_blocks, **head_sizes(args)).to(device)
    optimizer = make_optimizer(head, opts)
    labels = torch.tensor([s.label for s in train_samples])
    state = FitState()
    if resume:
        done, best_score, history = load_resume_state(out, head, optimizer, generator, hyper)
        state = FitState(done, best_score, history)
        if args.no_cache:
            source.epoch = done  # the augmentation draw of the next epoch, not of epoch 1 again
        log.info("resuming after epoch %d (best val AP so far %.4f)", done, best_score[0])
    out.mkdir(parents=True, exist_ok=True)

    base_config = {**run_config(tower, settings, head, opts, train_samples, args.seed),
                   "align": align.to_dict(), "train_args": {k: v for k, v in vars(args).items() if k != "func"}}

    def validate(model: nn.Module) -> dict:
        nonlocal val_table
        if args.no_cache:
            val_table = extract_features(tower, val_set, settings, None, "val features", collective=False)
        return validation_metrics(model, val_table, val_labels[val_table.ok.numpy()])

    def save_epoch(result: EpochResult, is_best: bool) -> None:
        config = epoch_config(base_config, head, result)
        save_checkpoint(out, f"epoch_{result.epoch:03d}", head.state_dict(), config)
        if is_best:
            save_checkpoint(out, BEST, head.state_dict(), config)
        drop_old_epochs(out, result.epoch, opts.keep_last)
        save_resume_state(out, head, optimizer, generator, result.epoch, state.best, state.history, identity, hyper)

    state = fit(head, source, labels, validate, opts, generator, device, optimizer, state, save_epoch,
                progress=not args.quiet)
    best_score, history = state.best, state.history

    skipped = {
        "train": report_skipped("training set", train_samples,
                                source.skipped if args.no_cache else source.views[0].skipped),
        "val": report_skipped("validation set", val_samples, val_table.skipped if val_table else {}),
    }
    summary = {
        "output_dir": str(out),
        "n_train": len(train_samples),
        "n_val": len(val_samples),
        "categories": base_config["categories"],
        "best_val_ap": best_score[0],
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "feature_seconds": extract_seconds,
        "history": history,
        "skipped": skipped,
        "audit": audit,
        "config": base_config,
    }
    atomic_write_json(out / "run.json", summary)
    return summary
