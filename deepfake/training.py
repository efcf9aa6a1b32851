"""Train the MLP head on a frozen tower: features once (cached), then epochs in seconds.

``train(args)`` is what ``train_ClassifierHead.py`` runs. With the cache (default) every
image goes through the tower once per (tower, preprocessing, view); with ``--no_cache``
every epoch runs the tower again on every image, as a plain loop over images does.
Both see the same batches in the same order and the same fp16-rounded features, so a
seed gives the same head either way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from deepfake.checkpoint import BEST, save_checkpoint
from deepfake.deepfake_classifier import build_head, fake_probabilities, head_config
from deepfake.deepfake_dataset import DeepfakeDataset, Sample, collate, training_samples
from deepfake.feature_cache import STORE_DTYPE, FeatureCache
from deepfake.features import (
    ExtractionSettings,
    FeatureTable,
    extract_features,
    parse_feature_layers,
    prepare_tower,
)
from deepfake.fileio import atomic_save_safetensors, atomic_write_json, display_path, removed_if_left_empty
from deepfake.metrics import accuracy_at, average_precision, best_threshold, expected_calibration_error
from deepfake.runtime import (
    choose_device,
    init_distributed,
    is_main_process,
    resolve_precision,
    seed_everything,
)
from deepfake.towers import ImageTower, load_tower
from deepfake.transforms import BlurJpegAugment

log = logging.getLogger(__name__)

RESUME_STATE = "resume_state"


def default_cache_dir() -> Path:
    """``$DEEPFAKE_CACHE``, else ``$XDG_CACHE_HOME/deepfake/features`` (``~/.cache`` by default)."""
    if os.environ.get("DEEPFAKE_CACHE"):
        return Path(os.environ["DEEPFAKE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepfake" / "features"


def versions() -> dict:
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def check_output_dir(path: Path, overwrite: bool, resume: bool) -> None:
    """A new run never writes into a user's non-empty folder unless told to."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resume):
        raise FileExistsError(
            f"{path}: output directory is not empty; pass --overwrite to write new checkpoints over the "
            f"ones there (other files are left alone) or --resume to continue that run"
        )


def feature_cache(args, tower: ImageTower, settings: ExtractionSettings, extra: dict | None = None) -> FeatureCache | None:
    """The cache for this tower, preprocessing, precision and view (``None`` with ``--no_cache``)."""
    if args.no_cache:
        return None
    root = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    info = {"tower": tower.cache_identity(), "features": settings.cache_info(), **(extra or {})}
    return FeatureCache(root, info)


def report_skipped(what: str, samples: list[Sample], skipped: dict[int, str]) -> list[dict]:
    """Log files that could not be read; they are left out and listed, never silently counted."""
    records = [{"path": samples[i].path, "reason": r} for i, r in sorted(skipped.items())]
    if records:
        log.warning("%s: %d file(s) skipped and left out:", what, len(records))
        for r in records[:20]:
            log.warning("  %s: %s", display_path(r["path"]), r["reason"])
    return records


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


def validation_metrics(head: nn.Module, features: torch.Tensor, labels: np.ndarray) -> dict:
    probs = fake_probabilities(head, features)
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
                 seed: int, no_cache: bool, train_samples: list[Sample], val_samples: list[Sample]) -> dict:
    """What must not change between a run and its resumption: tower, preprocessing, data, seed, features."""
    digest = hashlib.sha256()
    for split, samples in (("train", train_samples), ("val", val_samples)):
        for s in samples:
            digest.update(f"{split}\t{os.path.abspath(s.path)}\t{s.label}\n".encode("utf-8", "surrogateescape"))
    return {
        "tower": {k: v for k, v in tower.identity.items()},
        "preprocess": tower.preprocess.to_dict(),
        "features": settings.cache_info(),
        "data": {"n_train": len(train_samples), "n_val": len(val_samples), "sha256": digest.hexdigest()},
        "seed": seed,
        "augment": {**augment.to_dict(), "views": n_views} if augment.enabled else None,
        "no_cache": no_cache,
    }


# Hyper-parameters a resumed run may change; the new value applies from the next epoch.
RESUMABLE_CHANGES = ("learning_rate", "weight_decay", "batch_size", "num_epochs")


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
    for field_name in identity:
        if saved.get(field_name) != identity[field_name]:
            raise ValueError(f"{path}: cannot resume: {field_name} differs from the run being resumed "
                             f"(saved {json.dumps(saved.get(field_name))[:200]}, now "
                             f"{json.dumps(identity[field_name])[:200]}); use a new --output_dir or --overwrite")
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

    def __init__(self, views: list[FeatureTable], generator: torch.Generator):
        self.views = views
        self.ok = views[0].ok
        self.generator = generator

    def epoch_batches(self, batches: list[torch.Tensor]):
        pick = torch.randint(len(self.views), (len(self.ok),), generator=self.generator) if len(self.views) > 1 else None
        for idx in batches:
            idx = idx[self.ok[idx]]
            if len(idx) == 0:
                continue
            if pick is None:
                yield idx, self.views[0].embeds[idx]
            else:
                stacked = torch.stack([v.embeds[idx] for v in self.views])  # [K, B, D]
                yield idx, stacked[pick[idx], torch.arange(len(idx))]


class TowerFeatures:
    """Training batches through the tower, image by image, every epoch (``--no_cache``)."""

    def __init__(self, tower: ImageTower, dataset: DeepfakeDataset, num_workers: int):
        self.tower = tower
        self.dataset = dataset
        self.num_workers = num_workers
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
                embeds = self.tower(batch["pixel_values"].to(self.tower.device)).embeds.float().cpu()
            yield batch["indices"], embeds.to(STORE_DTYPE).float()


def epoch_index_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    return list(torch.randperm(n, generator=generator).split(batch_size))


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
    train_samples, val_samples = training_samples(args.dataset_dir, categories, args.val_ratio, args.seed)
    log.info("%d training and %d validation images", len(train_samples), len(val_samples))

    precision = resolve_precision(args.precision or "auto", device)
    tower = load_tower(args.model, args.revision, args.preprocess)
    tower = prepare_tower(tower, precision, device, compile=args.compile)
    settings = ExtractionSettings(
        batch_size=args.extract_batch_size or args.batch_size,
        num_workers=args.num_workers,
        precision=precision,
        layers=tuple(parse_feature_layers(args.feature_layers, getattr(tower, "num_layers", 0))),
        progress=not args.quiet,
    )
    augment = BlurJpegAugment(args.blur_prob, args.blur_sigma, args.jpeg_prob, tuple(args.jpeg_quality))
    n_views = args.aug_views if augment.enabled else 1
    train_set = DeepfakeDataset(train_samples, tower.preprocess, augment=augment, seed=args.seed,
                                max_pixels=args.max_pixels)
    val_set = DeepfakeDataset(val_samples, tower.preprocess, max_pixels=args.max_pixels)
    val_labels = np.array([s.label for s in val_samples])
    identity = run_identity(tower, settings, augment, n_views, args.seed, args.no_cache, train_samples, val_samples)
    hyper = {name: getattr(args, name) for name in RESUMABLE_CHANGES}
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
        source = TowerFeatures(tower, train_set, args.num_workers)
        val_table = None
    else:
        views = []
        for view in range(n_views):
            train_set.view = view
            extra = {"augment": {**augment.to_dict(), "seed": args.seed, "view": view}} if augment.enabled else {}
            cache = feature_cache(args, tower, settings, extra)
            views.append(extract_features(tower, train_set, settings, cache, desc=f"train features (view {view})"))
        source = CachedFeatures(views, generator)
        val_table = extract_features(tower, val_set, settings, feature_cache(args, tower, settings), "val features")
    extract_seconds = time.perf_counter() - start
    if not is_main_process():
        return {}  # other ranks only helped with extraction
    if not args.no_cache:
        for what, table, samples in (("training", views[0], train_samples), ("validation", val_table, val_samples)):
            if samples and not table.ok.any():
                first = next(iter(sorted(table.skipped.items())), (0, "unknown"))
                raise ValueError(f"{args.dataset_dir}: none of the {len(samples)} {what} images could be read "
                                 f"(first: {samples[first[0]].path}: {first[1]})")

    seed_everything(args.seed)
    head = build_head(tower.feature_dim).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    labels = torch.tensor([s.label for s in train_samples])
    first_epoch, best_score, history = 1, (-1.0, -float("inf")), []
    if resume:
        done, best_score, history = load_resume_state(out, head, optimizer, generator, hyper)
        first_epoch = done + 1
        if args.no_cache:
            source.epoch = done  # the augmentation draw of the next epoch, not of epoch 1 again
        log.info("resuming after epoch %d (best val AP so far %.4f)", done, best_score[0])
    out.mkdir(parents=True, exist_ok=True)

    base_config = {
        "tower": tower.identity,
        "preprocess": tower.preprocess.to_dict(),
        "features": settings.cache_info(),
        "head": head_config(head),
        "categories": sorted({s.category for s in train_samples}),
        "seed": args.seed,
        "threshold": 0.5,
        "train_args": {k: v for k, v in vars(args).items() if k != "func"},
        "versions": versions(),
    }
    bar = tqdm(range(first_epoch, args.num_epochs + 1), desc="epochs", unit="epoch", disable=args.quiet)
    for epoch in bar:
        head.train()
        losses = []
        for idx, feats in source.epoch_batches(epoch_index_batches(len(train_samples), args.batch_size, generator)):
            # The head is tiny: it trains in fp32 (no autocast, so no GradScaler question on fp16 GPUs).
            logits = head(feats.to(device, non_blocking=True).float())
            loss = loss_fn(logits, labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if args.no_cache:
            val_table = extract_features(tower, val_set, settings, None, "val features", collective=False)
        valid = val_table.ok.numpy()
        metrics = validation_metrics(head, val_table.embeds[val_table.ok], val_labels[valid])
        result = EpochResult(epoch, float(np.mean(losses)) if losses else float("nan"), **metrics)
        history.append(vars(result))
        bar.set_postfix(loss=f"{result.train_loss:.4f}", val_ap=f"{result.val_ap or 0:.4f}")
        line = (f"epoch {epoch:3d}  train_loss {result.train_loss:.4f}  val_acc {result.val_acc:.4f}  "
                f"val_ap {result.val_ap if result.val_ap is not None else float('nan'):.4f}")
        tqdm.write(line, file=sys.stdout)
        config = {**base_config, "epoch": epoch, "metrics": vars(result), "val_threshold": result.val_threshold}
        save_checkpoint(out, f"epoch_{epoch:03d}", head.state_dict(), config)
        # Best by val AP; once AP saturates, the lower val loss breaks the tie.
        score = (result.val_ap if result.val_ap is not None else -1.0, -result.val_loss)
        if score > best_score:
            best_score = score
            save_checkpoint(out, BEST, head.state_dict(), config)
        save_resume_state(out, head, optimizer, generator, epoch, best_score, history, identity, hyper)

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
        "feature_seconds": extract_seconds,
        "history": history,
        "skipped": skipped,
        "config": base_config,
    }
    atomic_write_json(out / "run.json", summary)
    return summary
