"""Train a head on a frozen tower: features once (cached), then epochs in seconds.

``train(config)`` is what ``train_ClassifierHead.py`` runs; ``fit`` (:mod:`deepfake.training.loop`) is its epoch loop, usable on
any feature source (``benchmarks/compare_heads.py`` and the tests call it directly). With the
cache (default) every image goes through the tower once per (tower, preprocessing, view); with
``--no_cache`` every epoch runs the tower again on every image, as a plain loop over images does.
Both see the same batches in the same order and the same fp16-rounded features, so a
seed gives the same head either way.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfake.config import TrainConfig, to_flags
from deepfake.data.alignment import Alignment, parse_align
from deepfake.data.audit import audit_samples, format_audit
from deepfake.data.layouts import parse_label_dirs
from deepfake.data.perturbations import BlurJpegAugment
from deepfake.data.preprocess import Preprocess
from deepfake.deepfake_dataset import DeepfakeDataset, Sample, training_samples
from deepfake.features.extraction import (
    ExtractionSettings,
    FeatureTable,
    cache_features,
    extract_features,
    feature_cache,
    parse_feature_layers,
    prepare_tower,
    read_features,
    report_skipped,
)
from deepfake.model.checkpoint import BEST, RUN_FILES, clear_run, save_checkpoint
from deepfake.model.heads import head_sizes, kind_tap, new_head
from deepfake.towers.base import ImageTower
from deepfake.towers.deferred import DeferredTower
from deepfake.towers.fused import FusedTower, is_fused
from deepfake.towers.loading import load_tower
from deepfake.training.fusion import check_fused_run, format_parts, part_mask, part_report, part_standardize
from deepfake.training.loop import EpochResult, drop_old_epochs, epoch_config, fit, run_config, validation_metrics
from deepfake.training.ood import fit_ood
from deepfake.training.resume import (
    RESUMABLE_CHANGES,
    check_resumable,
    load_resume_state,
    read_resume_meta,
    run_identity,
    save_resume_state,
)
from deepfake.training.schedule import FitState, TrainOptions, make_optimizer
from deepfake.training.sources import CachedFeatures, TowerFeatures
from deepfake.training.standardize import fit_standardizer, training_statistics
from deepfake.utils.fileio import atomic_write_json, refuse_overwrite, removed_if_left_empty
from deepfake.utils.runtime import (
    choose_device,
    init_distributed,
    is_main_process,
    release_free_heap,
    resolve_precision,
    seed_everything,
)
from deepfake.utils.text import split_list

log = logging.getLogger(__name__)


def check_output_dir(path: Path, overwrite: bool, resume: bool) -> None:
    """A new run never writes into a user's non-empty folder unless told to."""
    refuse_overwrite(path, None, overwrite or resume,
                     hint="pass --overwrite to replace the run there (its checkpoints, resume state and run.json; "
                          "other files are left alone) or --resume to continue that run")


def clear_previous_run(out: Path) -> list[str]:
    """Remove an earlier run's files from ``out`` (:data:`~deepfake.model.checkpoint.RUN_FILES`); returns their names."""
    return clear_run(out, RUN_FILES)


def summarize_training(train: list[Sample], val: list[Sample]) -> str:
    """Categories and counts per split, as printed before any work starts."""
    lines = [f"{len(train)} training and {len(val)} validation images:"]
    for name in sorted({s.category for s in train} | {s.category for s in val}):
        counts = [sum(1 for s in part if s.category == name and s.label == label) for part in (train, val) for label in (0, 1)]
        lines.append(f"  {name:<32} train {counts[0]:>7} real {counts[1]:>7} fake   val {counts[2]:>6} real {counts[3]:>6} fake")
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------


@dataclass
class _Plan:
    """What one run is: its images, tower, feature settings, head blocks, augmentation and identity."""

    config: TrainConfig
    device: torch.device
    out: Path
    train_samples: list[Sample]
    val_samples: list[Sample]
    audit: dict | None
    tower: ImageTower
    settings: ExtractionSettings
    head_blocks: tuple[int, ...]
    align: Alignment
    augment: BlurJpegAugment
    n_views: int
    train_set: DeepfakeDataset
    val_set: DeepfakeDataset
    identity: dict
    hyper: dict
    resume: bool = False
    standardize: bool = False  # --standardize resolved against the tower's record
    part_standardize: list[bool] | None = None  # the same, per part of a fused tower (one entry for one tower)


def train(config: TrainConfig) -> dict:
    """Run one training job; returns the run summary (``{}`` on ranks other than the main one).

    ``resume`` continues from the last finished epoch with every RNG state restored, so the
    result equals an uninterrupted run. It refuses a run whose tower, preprocessing, data,
    seed, feature settings or augmentation differ. ``--learning_rate``, ``--weight_decay``,
    ``--batch_size`` and ``--num_epochs`` may change: the new values apply from the next
    epoch (and are logged). With no finished epoch it starts the run (from the cache).
    """
    for name, value in (("data.dataset_dir", config.data.dataset_dir), ("output_dir", config.output_dir)):
        if not str(value or ""):
            raise ValueError(f"TrainConfig.{name} is required")
    with removed_if_left_empty(config.output_dir):
        plan = _plan(config)
        start = time.perf_counter()
        tables = _cache_features(plan)
        extract_seconds = time.perf_counter() - start
        if not is_main_process():
            return {}  # other ranks only helped with extraction (their tables are None)
        return _fit(plan, tables, extract_seconds)


def _read_data(config: TrainConfig, preprocess: Preprocess) -> tuple[list[Sample], list[Sample], dict | None]:
    """The training and validation samples; on the main rank their counts and bias audit are printed."""
    labels = parse_label_dirs(list(config.data.label_dirs) if config.data.label_dirs else None)
    train_samples, val_samples = training_samples(config.data.dataset_dir, split_list(config.data.categories),
                                                  config.val_ratio, config.seed, labels)
    audit = None
    if is_main_process():
        print(summarize_training(train_samples, val_samples))
        audit = audit_samples([(s.path, s.category, s.label) for s in train_samples], preprocess,
                              max_per_group=config.data.audit_max, seed=config.seed, cache_root=config.cache.root())
        print(format_audit(audit, brief=True))
        release_free_heap()  # the audit's parsed headers are gone: hand their pages back before the tables
    return train_samples, val_samples, audit


def _plan(config: TrainConfig) -> _Plan:
    """Check the output folder, read the data, name the tower, and check a resume before any extraction."""
    device = choose_device(config.runtime.device)
    init_distributed(device)
    out = Path(config.output_dir)
    if is_main_process():
        check_output_dir(out, config.overwrite, config.resume)
    align = parse_align(list(config.data.align) if config.data.align else None)
    precision = resolve_precision(config.runtime.precision or "auto", device)
    # Named, not built: a run whose features are all cached never reads the weights (nor imports
    # the modeling code); the first image through the tower builds it.
    tower = load_tower(config.tower.model, config.tower.revision, config.tower.preprocess, defer=True,
                       memo_root=config.cache.root())
    tower = prepare_tower(tower, precision, device, compile=config.cache.compile)
    check_fused_run(tower, config.head.kind, config.feature_layers)
    # The audit counts images smaller than what this tower takes in, and its hints follow its preprocessing.
    train_samples, val_samples, audit = _read_data(config, tower.preprocess)
    blocks = _feature_blocks(config, tower)
    tap = kind_tap(config.head.kind)
    settings = ExtractionSettings.for_run(config.runtime, precision, blocks, batch_size=config.extract_batch_size,
                                          tap=tap or "block")
    aug = config.augment
    augment = BlurJpegAugment(aug.blur_prob, aug.blur_sigma, aug.jpeg_prob, tuple(aug.jpeg_quality))
    max_pixels = config.runtime.max_pixels
    plan = _Plan(config, device, out, train_samples, val_samples, audit, tower, settings,
                 tuple(blocks) if tap else (), align, augment,
                 aug.aug_views if augment.enabled else 1,
                 DeepfakeDataset(train_samples, tower.preprocess, augment=augment, seed=config.seed,
                                 max_pixels=max_pixels, align=align, decode=settings.decode),
                 DeepfakeDataset(val_samples, tower.preprocess, max_pixels=max_pixels, align=align,
                                 decode=settings.decode), {}, {})
    plan.part_standardize = part_standardize(config.head.standardize, tower)
    plan.standardize = any(plan.part_standardize)
    plan.identity, plan.hyper = _identity(plan), _hyper(config)
    plan.resume = config.resume and _check_resume(plan)
    if config.overwrite and not config.resume and is_main_process():
        # Every check has passed: from here the folder holds this run or nothing (never the old one's state).
        clear_previous_run(out)
    return plan


def _feature_blocks(config: TrainConfig, tower: ImageTower) -> list[int]:
    """The blocks whose CLS tokens are cached (of the tap the head reads): ``feature_layers``, or every block
    for a head that reads blocks (layers: their outputs; rine: their ln_2 outputs)."""
    num_layers = int(getattr(tower, "num_layers", 0) or 0)
    tap = kind_tap(config.head.kind)
    blocks = parse_feature_layers(config.feature_layers, num_layers, tap or "block")
    if tap and not blocks:
        blocks = parse_feature_layers("all", num_layers, tap)
        if blocks:
            log.info("--head %s: reading every block's %s CLS token (%d..%d); --feature_layers chooses fewer",
                     config.head.kind, tap, blocks[0], blocks[-1])
    return blocks


def _identity(plan: _Plan) -> dict:
    """What a resumed run must share with the run it continues."""
    config = plan.config
    identity = run_identity(plan.tower, plan.settings, plan.augment, plan.n_views, config.seed, config.cache.no_cache,
                            plan.train_samples, plan.val_samples, str(config.data.dataset_dir))
    # A resumed run must rebuild the same head: its kind, blocks and sizes are part of the run.
    # Standardisation only when on: the identity of a run without it is what earlier runs recorded.
    identity["head"] = {"kind": config.head.kind, "blocks": list(plan.head_blocks),
                        **head_sizes(config.head.kind, config.head.options()),
                        **({"standardize": True} if plan.standardize else {})}
    if plan.align.enabled:
        identity["align"] = plan.align.to_dict()  # aligned images are other features: never resume across a change
    if config.schedule.contrastive_weight:
        # The loss itself: a changed contrastive term mid-run is another training objective.
        identity["loss"] = {"contrastive_weight": config.schedule.contrastive_weight,
                            "contrastive_temperature": config.schedule.contrastive_temperature}
    return identity


def _hyper(config: TrainConfig) -> dict:
    """The hyper-parameters a resume may change, through JSON as saved (milestones read back as a list)."""
    flags = to_flags(config)
    return json.loads(json.dumps({name: flags.get(name) for name in RESUMABLE_CHANGES}))


def _check_resume(plan: _Plan) -> bool:
    """Whether there is an epoch to resume from; refuses (raises) a run that is not the same one."""
    # Checked before any extraction: a refused resume costs nothing.
    meta = read_resume_meta(plan.out)
    if meta is None:
        log.warning("%s: no finished epoch to resume; starting the run (features come from the cache)", plan.out)
        return False
    for change in check_resumable(plan.out, meta, plan.identity, plan.hyper):
        log.warning("resume: %s; the new value applies from the next epoch", change)
    return True


def _cache_features(plan: _Plan) -> tuple[list[FeatureTable], FeatureTable | None] | None:
    """Every view of the training set and the validation set, cached, then read (main rank only).

    Every set is cached before any table is read: no table is held while the tower runs.
    ``None`` with ``no_cache`` (the tower runs every epoch) and on the other ranks.
    """
    if plan.config.cache.no_cache:
        return None
    tower, settings, root, seed = plan.tower, plan.settings, plan.config.cache.root(), plan.config.seed
    aligned = {"align": plan.align.to_dict()} if plan.align.enabled else {}
    found = []
    for view in range(plan.n_views):
        plan.train_set.view = view
        extra = {"augment": {**plan.augment.to_dict(), "seed": seed, "view": view}} if plan.augment.enabled else {}
        cache = feature_cache(root, tower, settings, {**extra, **aligned})
        found.append((cache, cache_features(tower, plan.train_set, settings, cache, f"train features (view {view})")))
    val_cache = feature_cache(root, tower, settings, aligned)
    val_found = cache_features(tower, plan.val_set, settings, val_cache, "val features")
    if isinstance(tower, (DeferredTower, FusedTower)):
        tower.release()  # every feature is on disk: the head trains without the tower
        release_free_heap()
    if not is_main_process():
        return None
    views = []
    for view, (cache, rows) in enumerate(found):
        plan.train_set.view = view
        views.append(read_features(tower, plan.train_set, settings, cache, rows, f"train features (view {view})"))
    val_table = read_features(tower, plan.val_set, settings, val_cache, val_found, "val features")
    for what, table, samples in (("training", views[0], plan.train_samples), ("validation", val_table, plan.val_samples)):
        if samples and not table.ok.any():
            first = next(iter(sorted(table.skipped.items())), (0, "unknown"))
            raise ValueError(f"{plan.config.data.dataset_dir}: none of the {len(samples)} {what} images could be read "
                             f"(first: {samples[first[0]].path}: {first[1]})")
    return views, val_table


def _fit(plan: _Plan, tables: tuple | None, extract_seconds: float) -> dict:
    """Train the head from the tables (or through the tower), saving every epoch; write ``run.json``."""
    config, out = plan.config, plan.out
    opts = TrainOptions.from_config(config.schedule, config.runtime.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    if tables is None:
        source, val_table = TowerFeatures(plan.tower, plan.train_set, config.runtime.num_workers, plan.head_blocks,
                                          plan.settings.tap), None
    else:
        source, val_table = CachedFeatures(tables[0], generator, plan.head_blocks, plan.settings.tap), tables[1]
    seed_everything(config.seed)
    head, statistics = _new_head(plan, source)
    # Deterministic from the same rows, so a resumed run fits the very statistics it saved.
    fit_ood(head, source, val_table if tables is not None else _val_features(plan), config.runtime.batch_size)
    head = head.to(plan.device)
    optimizer = make_optimizer(head, opts)
    state = _resumed_state(plan, head, optimizer, generator, source)
    out.mkdir(parents=True, exist_ok=True)
    base_config = {**run_config(plan.tower, plan.settings, head, opts, plan.train_samples, config.seed),
                   "standardize": plan.standardize, "align": plan.align.to_dict(), "train_args": to_flags(config)}
    val_labels = np.array([s.label for s in plan.val_samples])

    def validate(model: nn.Module) -> dict:
        nonlocal val_table
        if tables is None:
            val_table = extract_features(plan.tower, plan.val_set, plan.settings, None, "val features",
                                         collective=False)
        return validation_metrics(model, val_table, val_labels[val_table.ok.numpy()])

    def save_epoch(result: EpochResult, is_best: bool) -> None:
        epoch_checkpoint = epoch_config(base_config, head, result)
        save_checkpoint(out, f"epoch_{result.epoch:03d}", head.state_dict(), epoch_checkpoint)
        if is_best:
            save_checkpoint(out, BEST, head.state_dict(), epoch_checkpoint)
        drop_old_epochs(out, result.epoch, opts.keep_last)
        save_resume_state(out, head, optimizer, generator, result.epoch, state.best, state.history, plan.identity,
                          plan.hyper)

    labels = torch.tensor([s.label for s in plan.train_samples])
    state = fit(head, source, labels, validate, opts, generator, plan.device, optimizer, state, save_epoch,
                progress=not config.runtime.quiet)
    skipped = {
        "train": report_skipped("training set", plan.train_samples,
                                source.skipped if tables is None else source.views[0].skipped),
        "val": report_skipped("validation set", plan.val_samples, val_table.skipped if val_table else {}),
    }
    return _write_summary(plan, state, base_config, skipped, extract_seconds, _parts(plan, head, statistics))


def _new_head(plan: _Plan, source) -> tuple[nn.Module, tuple | None]:
    """A fresh head, its standardizer fitted (per part on a fused tower), and the training statistics of a
    fused tower's features (``None`` otherwise): each part's weight is read on inputs of their spread."""
    config = plan.config
    sizes = head_sizes(config.head.kind, config.head.options())
    head = new_head(config.head.kind, plan.tower, plan.head_blocks, plan.standardize, **sizes)
    statistics = training_statistics(source, config.runtime.batch_size) if is_fused(plan.tower) else None
    if plan.standardize and not plan.resume:
        # From the training split only; a resumed run restores the ones it saved with the head.
        keep = part_mask(plan.tower, plan.part_standardize) if is_fused(plan.tower) else None
        fit_standardizer(head, source, config.runtime.batch_size, statistics, keep)
    return head, statistics


def _parts(plan: _Plan, head: nn.Module, statistics: tuple | None) -> list[dict] | None:
    """A fused tower's parts with their weight in the trained head (printed); ``None`` for one tower."""
    if statistics is None:
        return None
    report = part_report(plan.tower, head, plan.part_standardize, statistics[1])
    print(format_parts(report))
    return report


def _val_features(plan: _Plan) -> FeatureTable:
    """The validation split's features through the tower (``--no_cache``), for the out-of-distribution threshold."""
    return extract_features(plan.tower, plan.val_set, plan.settings, None, "val features", collective=False)


def _resumed_state(plan: _Plan, head: nn.Module, optimizer, generator: torch.Generator, source) -> FitState:
    """A fresh state, or the resumed run's with head, optimizer and every RNG state restored."""
    if not plan.resume:
        return FitState()
    done, best_score, history = load_resume_state(plan.out, head, optimizer, generator, plan.hyper)
    if isinstance(source, TowerFeatures):
        source.epoch = done  # the augmentation draw of the next epoch, not of epoch 1 again
    log.info("resuming after epoch %d (best val AP so far %.4f)", done, best_score[0])
    return FitState(done, best_score, history)


def _write_summary(plan: _Plan, state: FitState, base_config: dict, skipped: dict, extract_seconds: float,
                   parts: list[dict] | None = None) -> dict:
    """The run summary, written atomically as ``run.json`` (``parts``: a fused tower's, with their weight shares)."""
    summary = {
        "output_dir": str(plan.out),
        "n_train": len(plan.train_samples),
        "n_val": len(plan.val_samples),
        "categories": base_config["categories"],
        "best_val_ap": state.best[0],
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "feature_seconds": extract_seconds,
        "history": state.history,
        "skipped": skipped,
        "audit": plan.audit,
        "config": base_config,
        **({"parts": parts} if parts is not None else {}),
    }
    atomic_write_json(plan.out / "run.json", summary)
    return summary
