"""Evaluate a trained head the way the field reports it: per generator, per category, under degradations.

Test roots in any of the layouts in use are understood (see :mod:`deepfake.layouts`):

    TEST/{generator}/{0_real,1_fake}                  UniversalFakeDetect
    TEST/{generator}/{category}/{0_real,1_fake}       CNNDetection (progan, stylegan, cyclegan)
    TEST/{0_real,1_fake}                              a single domain
    GENIMAGE/{generator}/{train,val}/{nature,ai}      GenImage (its val split is the test set)
    DATASET/{train,val,test}/{category}/...           ForenSynths (its test split is used)

The model is loaded once; each perturbation level is one pass of the tower (through the
feature cache), then every metric is a function of the per-image scores, which are saved.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfake.deepfake_classifier import DeepfakeClassifier, fake_probabilities
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.features import ExtractionSettings, extract_features, parse_feature_layers
from deepfake.fileio import removed_if_left_empty
from deepfake.image_io import walk_images
from deepfake.layouts import LayoutError, describe, find_label_folders
from deepfake.metrics import domain_metrics, mean_row
from deepfake.reports import default_output_dir, prepare_output_dir, write_outputs
from deepfake.runtime import init_distributed, is_main_process
from deepfake.training import feature_cache, report_skipped, versions
from deepfake.transforms import Perturbation

log = logging.getLogger(__name__)

SPLIT_PREFERENCE = ("test", "val", None)
DEFAULT_SWEEP_JPEG = (95, 75, 50, 30)
DEFAULT_SWEEP_SIGMA = (1.0, 2.0, 3.0)
MEAN_KEYS = ["real_acc", "fake_acc", "acc", "ap", "auc", "best_acc", "val_threshold_acc", "ece"]


@dataclass(frozen=True)
class TestSample:
    """A test image with its label, generator and (when the layout has one) category."""

    path: str
    label: int
    generator: str
    category: str = ""


def discover_test_set(
    root: str | Path, generators: list[str] | None = None, categories: list[str] | None = None
) -> list[TestSample]:
    """Every labelled test image under ``root``, with its generator and category, optionally filtered.

    ``categories`` filters categories inside generators; for a layout without them (each
    top-level folder a category, as in training data) it filters those folders.
    """
    root = Path(root)
    folders = find_label_folders(root)
    if not folders:
        raise LayoutError(f"{root}: no label folders (0_real/1_fake, real/fake or nature/ai) found. "
                          f"Contents:\n{describe(root)}")
    by_domain: dict[tuple[str, ...], list] = {}
    for folder in folders:
        by_domain.setdefault(folder.parts, []).append(folder)
    samples: list[TestSample] = []
    for parts, group in sorted(by_domain.items()):
        splits = {f.split for f in group}
        chosen = next((s for s in SPLIT_PREFERENCE if s in splits), None)
        if chosen is None and "train" in splits:
            log.warning("%s: only a train split for %s; not evaluated", root, "/".join(parts) or root.name)
            continue
        generator = parts[0] if parts else root.resolve().name
        category = "/".join(parts[1:])
        for folder in group:
            if folder.split == chosen:
                samples.extend(TestSample(p, folder.label, generator, category) for p in walk_images(folder.path))
    found = sorted({s.generator for s in samples})
    if generators:
        unknown = [g for g in generators if g not in found]
        if unknown:
            raise LayoutError(f"{root}: unknown generator(s) {', '.join(unknown)}; found: {', '.join(found)}")
        samples = [s for s in samples if s.generator in generators]
    if categories:
        nested = any(s.category for s in samples)
        key = (lambda s: s.category) if nested else (lambda s: s.generator)
        found = sorted({key(s) for s in samples})
        unknown = [c for c in categories if c not in found]
        if unknown:
            raise LayoutError(f"{root}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                              f"{', '.join(unknown)}; found: {', '.join(found)}")
        samples = [s for s in samples if key(s) in categories]
    if not samples:
        raise LayoutError(f"{root}: label folders found but no image files in them")
    return samples


def subsample(samples: list[TestSample], max_sample: int | None, seed: int) -> tuple[list[TestSample], dict]:
    """At most ``max_sample`` images per generator and class, drawn with ``seed``; returns the counts."""
    groups: dict[tuple[str, int], list[TestSample]] = {}
    for s in samples:
        groups.setdefault((s.generator, s.label), []).append(s)
    kept, counts = [], {}
    for (generator, label), members in sorted(groups.items()):
        members = sorted(members, key=lambda s: s.path)
        if max_sample is not None and len(members) > max_sample:
            members = sorted(random.Random(f"{seed}:{generator}:{label}").sample(members, max_sample),
                             key=lambda s: s.path)
        found = len(groups[(generator, label)])
        counts.setdefault(generator, {})[("real", "fake")[label]] = {"used": len(members), "found": found}
        kept.extend(members)
    return kept, counts


def split_list(text: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``; empty or ``None`` -> ``None``."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    return items or None


def sweep_levels(args: argparse.Namespace) -> list[Perturbation]:
    """The perturbation levels to evaluate: one (given flags), or the robustness sweep."""
    single = Perturbation(args.jpeg_quality, args.gaussian_sigma, args.resize_scale)
    if not args.robustness:
        return [single]
    levels = [Perturbation()]
    levels += [Perturbation(jpeg_quality=q) for q in (args.sweep_jpeg or DEFAULT_SWEEP_JPEG)]
    levels += [Perturbation(gaussian_sigma=s) for s in (args.sweep_sigma or DEFAULT_SWEEP_SIGMA)]
    levels += [Perturbation(resize_scale=f) for f in (args.sweep_resize or ())]
    return levels


def domain_rows(samples: list[TestSample], probs: np.ndarray, ok: np.ndarray, threshold: float,
                val_threshold: float | None) -> tuple[list[dict], dict]:
    """One row per generator (with its categories' rows after it) and the mean row over generators."""
    labels = np.array([s.label for s in samples])
    rows, generator_rows = [], []
    for generator in sorted({s.generator for s in samples}):
        in_gen = np.array([s.generator == generator for s in samples]) & ok
        row = {"domain": generator, "generator": generator, "category": "",
               **domain_metrics(labels[in_gen], probs[in_gen], threshold, val_threshold)}
        rows.append(row)
        generator_rows.append(row)
        categories = sorted({s.category for s in samples if s.generator == generator and s.category})
        for category in categories:
            sel = in_gen & np.array([s.category == category for s in samples])
            rows.append({"domain": f"{generator}/{category}", "generator": generator, "category": category,
                         **domain_metrics(labels[sel], probs[sel], threshold, val_threshold)})
    mean = {"domain": "mean", "generator": "", "category": "",
            "n_real": int(sum(r["n_real"] for r in generator_rows)),
            "n_fake": int(sum(r["n_fake"] for r in generator_rows)),
            **mean_row(generator_rows, MEAN_KEYS)}
    return rows, mean


def evaluate(args: argparse.Namespace, classifier: DeepfakeClassifier | None = None) -> dict:
    """Run the evaluation described by the parsed command line; returns the results document.

    Under torchrun every rank extracts its share of the features; rank 0 computes the
    metrics and writes the results (the other ranks return ``{}``).
    """
    out = Path(args.output_dir) if args.output_dir else default_output_dir(args)
    with removed_if_left_empty(out):
        return _evaluate(args, classifier)


def _evaluate(args: argparse.Namespace, classifier: DeepfakeClassifier | None) -> dict:
    out_dir = prepare_output_dir(args)
    if classifier is None:
        classifier = DeepfakeClassifier.from_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    init_distributed(classifier.tower.device)
    samples = discover_test_set(args.dataset_dir, split_list(args.generators), split_list(args.categories))
    samples, counts = subsample(samples, args.max_sample, args.seed)
    threshold = args.threshold if args.threshold is not None else classifier.threshold
    val_threshold = classifier.config.get("val_threshold")
    tower = classifier.tower
    # The head's blocks, plus any asked for so that several heads share one cache of these images.
    extra_blocks = parse_feature_layers(getattr(args, "feature_layers", None) or "none",
                                        int(getattr(tower, "num_layers", 0) or 0))
    settings = ExtractionSettings(batch_size=args.batch_size, num_workers=args.num_workers,
                                  precision=classifier.config["precision"], progress=not args.quiet,
                                  layers=tuple(sorted(set(classifier.blocks) | set(extra_blocks))))
    as_samples = [Sample(s.path, s.label, s.generator) for s in samples]
    levels = []
    for perturb in sweep_levels(args):
        start = time.perf_counter()
        dataset = DeepfakeDataset(as_samples, tower.preprocess,
                                  perturb=None if perturb.is_identity else perturb, max_pixels=args.max_pixels)
        extra = {} if perturb.is_identity else {"perturbation": perturb.to_dict()}
        table = extract_features(tower, dataset, settings, feature_cache(args, tower, settings, extra),
                                 desc=f"test features ({perturb.label()})")
        if table is None:
            continue  # another rank's share is done; rank 0 scores
        probs = np.full(len(samples), np.nan)
        ok = table.ok.numpy()
        probs[ok] = fake_probabilities(classifier.head, table, table.ok.nonzero().flatten())
        rows, mean = domain_rows(samples, probs, ok, threshold, val_threshold)
        levels.append({
            "perturbation": perturb.to_dict(), "label": perturb.label(), "rows": rows, "mean": mean,
            "skipped": report_skipped(f"test set ({perturb.label()})", as_samples, table.skipped),
            "seconds": time.perf_counter() - start, "probabilities": probs,
        })
    if not is_main_process():
        return {}
    results = {
        "checkpoint": classifier.config.get("checkpoint"),
        "tower": tower.identity,
        "preprocess": tower.preprocess.to_dict(),
        "precision": classifier.config["precision"],
        "head": classifier.config.get("head"),
        "block_importance": classifier.config.get("block_importance"),
        "dataset_dir": str(args.dataset_dir),
        "threshold": threshold,
        "val_threshold": val_threshold,
        "max_sample": args.max_sample,
        "seed": args.seed,
        "sample_counts": counts,
        "versions": versions(),
        "levels": levels,
    }
    write_outputs(results, samples, out_dir, args)
    return results
