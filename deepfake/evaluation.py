"""Evaluate a trained head the way the field reports it: per generator, per category, under degradations.

The test set is a folder in any layout of :mod:`deepfake.eval_sets`, a manifest, or a
benchmark file / preset (:mod:`deepfake.benchmark_files`) naming each domain's fake and real
folders as published. The domains and counts found, and the bias audit of the images, are
printed before any work starts. The model is loaded once; each perturbation level is one pass
of the tower (through the feature cache) over the distinct images, then every metric is a
function of the per-image scores, which are saved.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from deepfake.benchmark_files import load_benchmark, resolve_benchmark
from deepfake.bias_audit import audit_samples, format_audit
from deepfake.calibration import calibration_record, write_calibration
from deepfake.deepfake_classifier import DeepfakeClassifier
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.eval_sets import TestSample, check_pairing, discover_test_set, filter_samples, subsample, summarize
from deepfake.features import ExtractionSettings, extract_features, parse_feature_layers
from deepfake.fileio import removed_if_left_empty
from deepfake.image_io import walk_images
from deepfake.layouts import LayoutError, parse_label_dirs
from deepfake.metrics import common_mean, domain_metrics, threshold_for_fpr
from deepfake.reports import default_output_dir, prepare_output_dir, write_outputs
from deepfake.run_helpers import cache_root, feature_cache, report_skipped, versions
from deepfake.runtime import choose_device, init_distributed, is_main_process
from deepfake.scoring import fake_probabilities, table_probabilities
from deepfake.transforms import Alignment, Perturbation, parse_align

log = logging.getLogger(__name__)

DEFAULT_SWEEP_JPEG = (95, 75, 50, 30)
DEFAULT_SWEEP_SIGMA = (1.0, 2.0, 3.0)
MEAN_KEYS = ["real_acc", "fake_acc", "acc", "ap", "auc", "tpr_at_fpr1", "tpr_at_fpr5", "best_acc", "ufd_acc",
             "val_threshold_acc", "ece"]

__all__ = ["TestSample", "discover_test_set", "evaluate", "subsample"]


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


def _mean_row(name: str, rows: list[dict], family: str = "") -> dict:
    keys = [k for k in MEAN_KEYS if any(r.get(k) is not None for r in rows)]
    means, covers = common_mean(rows, keys)
    covered = [r for r in rows if r["domain"] in covers]
    label = name if len(covers) == len(rows) else f"{name} ({len(covers)} of {len(rows)})"
    return {"domain": label, "generator": "", "category": "", "family": family, "kind": "mean",
            "n_real": int(sum(r["n_real"] for r in covered)), "n_fake": int(sum(r["n_fake"] for r in covered)),
            **{k: means.get(k) for k in MEAN_KEYS}, "covers": covers,
            "not_covered": [r["domain"] for r in rows if r["domain"] not in covers]}


def domain_rows(samples: list[TestSample], probs: np.ndarray, ok: np.ndarray, threshold: float,
                val_threshold: float | None) -> tuple[list[dict], dict, list[dict]]:
    """Rows per generator (its categories after it), the overall mean row and one mean row per family.

    Every mean covers the domains where all its columns are defined (both classes present), and
    says which: one-class domains are shown with the metrics they define and left out of means.
    """
    labels = np.array([s.label for s in samples])
    generators = np.array([s.generator for s in samples])
    category_of = np.array([s.category for s in samples])
    family_of = {s.generator: s.family for s in samples}
    rows, generator_rows = [], []
    for generator in dict.fromkeys(s.generator for s in samples):
        in_gen = (generators == generator) & ok
        row = {"domain": generator, "generator": generator, "category": "", "family": family_of[generator],
               "kind": "domain", **domain_metrics(labels[in_gen], probs[in_gen], threshold, val_threshold)}
        rows.append(row)
        generator_rows.append(row)
        for category in dict.fromkeys(s.category for s in samples if s.generator == generator and s.category):
            sel = in_gen & (category_of == category)
            rows.append({"domain": f"{generator}/{category}", "generator": generator, "category": category,
                         "family": family_of[generator], "kind": "category",
                         **domain_metrics(labels[sel], probs[sel], threshold, val_threshold)})
    families = list(dict.fromkeys(r["family"] for r in generator_rows if r["family"]))
    family_means = [_mean_row(f"mean {family}", [r for r in generator_rows if r["family"] == family], family)
                    for family in families] if len(families) > 1 else []
    return rows, _mean_row("mean", generator_rows), family_means


def gather_test_set(args: argparse.Namespace) -> tuple[list[TestSample], dict]:
    """The test samples the command line names (benchmark, manifest or folder) and what was found."""
    generators, categories = split_list(args.generators), split_list(args.categories)
    labels = parse_label_dirs(getattr(args, "label_dirs", None))
    allow = getattr(args, "allow_one_class", False)
    benchmark = getattr(args, "benchmark", None)
    if not benchmark:
        if getattr(args, "real_root", None):
            raise LayoutError("--real_root pairs reals with a benchmark's fakes; it needs --benchmark")
        return discover_test_set(args.dataset_dir, generators, categories, labels, allow), {}
    bench = load_benchmark(benchmark)
    resolved = resolve_benchmark(bench, args.dataset_dir, getattr(args, "real_root", None), generators)
    where = f"benchmark {bench.name} under {args.dataset_dir}"
    if resolved.missing:
        print(f"{where}: {len(resolved.missing)} domain(s) or folder(s) not found, evaluated without them:")
        for line in resolved.missing:
            print(f"  missing {line}")
    if not resolved.samples:
        raise LayoutError(f"{where}: none of the benchmark's folders were found (expected data root: "
                          f"{bench.data_root or 'see the benchmark file'})")
    samples = filter_samples(resolved.samples, where, None, categories)
    check_pairing(samples, where, allow)
    return samples, {"benchmark": bench.to_dict(), "present": resolved.present, "missing": resolved.missing}


def calibrate(classifier: DeepfakeClassifier, real_dir: str, target_fpr: float, settings: ExtractionSettings,
              args: argparse.Namespace, align: Alignment) -> dict | None:
    """The threshold that calls ``target_fpr`` of the known-real images in ``real_dir`` fake (``None`` off rank 0)."""
    files = walk_images(real_dir)
    if not files:
        raise LayoutError(f"{real_dir}: no images to calibrate on (--calibrate_real)")
    samples = [Sample(p, 0, "calibration") for p in files]
    tower = classifier.tower
    dataset = DeepfakeDataset(samples, tower.preprocess, max_pixels=args.max_pixels, align=align)
    extra = {"align": align.to_dict()} if align.enabled else {}
    table = extract_features(tower, dataset, settings, feature_cache(args, tower, settings, extra),
                             desc="calibration features")
    if table is None:
        return None  # another rank's share is done; rank 0 calibrates
    scores = fake_probabilities(classifier.head, table, table.ok.nonzero().flatten())
    if len(scores) == 0:
        raise LayoutError(f"{real_dir}: none of its {len(files)} images could be read (--calibrate_real)")
    threshold = threshold_for_fpr(scores, target_fpr)
    return calibration_record(real_dir, threshold, target_fpr, scores, len(files) - len(scores))


def resolve_threshold_source(args: argparse.Namespace, classifier: DeepfakeClassifier,
                             calibration: dict | None) -> tuple[float, str, dict | None]:
    """The threshold of the acc columns, where it came from, and the calibration record behind it (if any).

    ``calibration`` is the one just fitted on ``--calibrate_real``; ``--threshold calibrated``
    without it takes the checkpoint's stored operating point (and raises when there is none).
    """
    if args.threshold == "calibrated":
        if calibration is not None:
            return calibration["threshold"], "calibration", calibration
        threshold = classifier.decision_threshold("calibrated")
        stored = {k: v for k, v in classifier.config["calibration"].items()
                  if k not in ("format", "tower", "preprocess", "align")}
        return threshold, "checkpoint calibration", stored
    if args.threshold is not None:
        return classifier.decision_threshold(args.threshold), "--threshold", calibration
    if calibration is not None:
        return calibration["threshold"], "calibration", calibration
    return classifier.threshold, "checkpoint", None


def evaluate(args: argparse.Namespace, classifier: DeepfakeClassifier | None = None) -> dict:
    """Run the evaluation described by the parsed command line; returns the results document.

    Under torchrun every rank extracts its share of the features; rank 0 computes the
    metrics and writes the results (the other ranks return ``{}``).
    """
    out = Path(args.output_dir) if args.output_dir else default_output_dir(args)
    with removed_if_left_empty(out):
        return _evaluate(args, classifier)


def _evaluate(args: argparse.Namespace, classifier: DeepfakeClassifier | None) -> dict:
    align = parse_align(getattr(args, "align", None))
    samples, found = gather_test_set(args)
    samples, counts = subsample(samples, args.max_sample, args.seed)
    out_dir = prepare_output_dir(args)
    # Join torchrun's process group first: which rank is the main one decides who prints and audits.
    init_distributed(classifier.tower.device if classifier is not None else choose_device(args.device))
    audit = None
    if is_main_process():
        print(summarize(samples))
        audit = audit_samples([(s.path, s.generator, s.label) for s in samples], crop=224,
                              max_per_group=getattr(args, "audit_max", 2000), seed=args.seed,
                              cache_root=cache_root(args))
        print(format_audit(audit, brief=True))
    if classifier is None:
        classifier = DeepfakeClassifier.from_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    trained_align = classifier.config.get("align") or {}
    if (trained_align.get("jpeg_quality"), trained_align.get("size")) != (align.jpeg_quality, align.size):
        log.warning("the head was trained with --align %s and is evaluated with --align %s; pass the same "
                     "--align to test it on images prepared as its training images were",
                     Alignment(trained_align.get("jpeg_quality"), trained_align.get("size")).label(), align.label())
    val_threshold = classifier.config.get("val_threshold")
    # The head was trained on features of one decode path; test on the same unless told otherwise.
    decode = args.decode or classifier.config.get("features", {}).get("decode", "exact")
    tower = classifier.tower
    # The head's blocks, plus any asked for so that several heads share one cache of these images.
    extra_blocks = parse_feature_layers(getattr(args, "feature_layers", None) or "none",
                                        int(getattr(tower, "num_layers", 0) or 0))
    settings = ExtractionSettings(batch_size=args.batch_size, num_workers=args.num_workers,
                                  precision=classifier.config["precision"], progress=not args.quiet,
                                  layers=tuple(sorted(set(classifier.blocks) | set(extra_blocks))), decode=decode)
    calibration = None
    if getattr(args, "calibrate_real", None):
        calibration = calibrate(classifier, args.calibrate_real, args.target_fpr, settings, args, align)
    if calibration is not None:
        print(f"calibrated threshold {calibration['threshold']:.6g}: FPR {100 * calibration['achieved_fpr']:.2f}% "
              f"on {calibration['n_images']} known-real images (target {100 * args.target_fpr:g}%)")
    threshold, threshold_source, threshold_calibration = None, None, None
    # Off rank 0 a --calibrate_real fit is None (rank 0 fits it) and the threshold is never used;
    # without one every rank resolves it, so a missing stored calibration stops them all alike.
    if is_main_process() or not getattr(args, "calibrate_real", None):
        threshold, threshold_source, threshold_calibration = resolve_threshold_source(args, classifier, calibration)
    # Each distinct image goes through the tower once, however many domains share it (UFD's LAION reals).
    unique = list(dict.fromkeys(s.path for s in samples))
    row_of = {p: i for i, p in enumerate(unique)}
    take = np.array([row_of[s.path] for s in samples], dtype=np.int64)
    labels_of = {s.path: s.label for s in samples}
    as_samples = [Sample(p, labels_of[p], "test") for p in unique]
    levels = []
    for perturb in sweep_levels(args):
        start = time.perf_counter()
        dataset = DeepfakeDataset(as_samples, tower.preprocess, perturb=None if perturb.is_identity else perturb,
                                  max_pixels=args.max_pixels, align=align, decode=decode)
        extra = {} if perturb.is_identity else {"perturbation": {**perturb.to_dict(), "order": Perturbation.ORDER}}
        if align.enabled:
            extra["align"] = align.to_dict()
        table = extract_features(tower, dataset, settings, feature_cache(args, tower, settings, extra),
                                 desc=f"test features ({perturb.label()})")
        if table is None:
            continue  # another rank's share is done; rank 0 scores
        unique_probs = table_probabilities(classifier.head, table)
        unique_ok = table.ok.numpy()
        probs, ok = unique_probs[take], unique_ok[take]
        rows, mean, family_means = domain_rows(samples, probs, ok, threshold, val_threshold)
        skipped = report_skipped(f"test set ({perturb.label()})", as_samples, table.skipped)
        levels.append({
            "perturbation": perturb.to_dict(), "label": perturb.label(), "rows": rows, "mean": mean,
            "family_means": family_means, "skipped": skipped,
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
        **found,
        "threshold": threshold,
        "threshold_source": threshold_source,
        "val_threshold": val_threshold,
        "calibration": threshold_calibration,
        "align": align.to_dict(),
        "perturbation_order": Perturbation.ORDER,
        "max_sample": args.max_sample,
        "seed": args.seed,
        "sample_counts": counts,
        "audit": audit,
        "versions": versions(),
        "levels": levels,
    }
    write_outputs(results, samples, out_dir, args)
    if calibration is not None:
        write_calibration(out_dir, classifier.config.get("checkpoint"), calibration, results, args.overwrite)
    return results
