"""Evaluate a trained head the way the field reports it: per generator, per category, under degradations.

The test set is a folder in any layout of :mod:`deepfake.data.test_sets`, a manifest, or a
benchmark file / preset (:mod:`deepfake.data.benchmarks`) naming each domain's fake and real
folders as published. The domains and counts found, and the bias audit of the images, are
printed before any work starts. The model is loaded once; each perturbation level is one pass
of the tower (through the feature cache) over the distinct images, then every metric is a
function of the per-image scores, which are saved.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfake.config import EvalConfig, PerturbConfig
from deepfake.data.alignment import Alignment, parse_align
from deepfake.data.audit import audit_samples, format_audit
from deepfake.data.benchmarks import load_benchmark, resolve_benchmark
from deepfake.data.image_io import walk_images
from deepfake.data.layouts import LayoutError, parse_label_dirs
from deepfake.data.perturbations import Perturbation
from deepfake.data.preprocess import Preprocess
from deepfake.data.protocols import (
    Protocol,
    ProtocolImage,
    equal_class_sample,
    get_protocol,
    protocol_perturbation,
    protocol_preprocess,
    protocol_resize,
)
from deepfake.data.test_sets import TestSample, check_pairing, discover_test_set, filter_samples, subsample, summarize
from deepfake.deepfake_classifier import DeepfakeClassifier
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.evaluation.domains import domain_rows, headline_rows, pooled_row
from deepfake.evaluation.metrics import BOOTSTRAP_RESAMPLES, CI_LEVEL, threshold_for_fpr
from deepfake.evaluation.reports import default_output_dir, prepare_output_dir, write_outputs
from deepfake.features.extraction import (
    ExtractionSettings,
    extract_features,
    feature_cache,
    parse_feature_layers,
    report_skipped,
)
from deepfake.model.calibration import calibration_record, write_calibration
from deepfake.model.ood import OOD_IN, OOD_OUT, ood_config, ood_note
from deepfake.model.scoring import fake_probabilities, table_ood, table_probabilities
from deepfake.utils.fileio import removed_if_left_empty
from deepfake.utils.runtime import choose_device, init_distributed, is_main_process, versions
from deepfake.utils.text import split_list

log = logging.getLogger(__name__)

DEFAULT_SWEEP_JPEG = (95, 75, 50, 30)
DEFAULT_SWEEP_SIGMA = (1.0, 2.0, 3.0)

__all__ = ["TestSample", "discover_test_set", "evaluate", "subsample"]


def sweep_levels(perturb: PerturbConfig) -> list[Perturbation]:
    """The perturbation levels to evaluate: one (given flags), or the robustness sweep."""
    single = Perturbation(perturb.jpeg_quality, perturb.gaussian_sigma, perturb.resize_scale)
    if not perturb.robustness:
        return [single]
    levels = [Perturbation()]
    levels += [Perturbation(jpeg_quality=q) for q in (perturb.sweep_jpeg or DEFAULT_SWEEP_JPEG)]
    levels += [Perturbation(gaussian_sigma=s) for s in (perturb.sweep_sigma or DEFAULT_SWEEP_SIGMA)]
    levels += [Perturbation(resize_scale=f) for f in (perturb.sweep_resize or ())]
    return levels


def gather_test_set(config: EvalConfig) -> tuple[list[TestSample], dict]:
    """The test samples the config names (benchmark, manifest or folder) and what was found."""
    generators, categories = split_list(config.generators), split_list(config.data.categories)
    labels = parse_label_dirs(list(config.data.label_dirs) if config.data.label_dirs else None)
    root = config.data.dataset_dir
    if not config.benchmark:
        if config.real_root:
            raise LayoutError("--real_root pairs reals with a benchmark's fakes; it needs --benchmark")
        return discover_test_set(root, generators, categories, labels, config.allow_one_class), {}
    bench = load_benchmark(config.benchmark)
    resolved = resolve_benchmark(bench, root, config.real_root, generators)
    where = f"benchmark {bench.name} under {root}"
    if resolved.missing:
        print(f"{where}: {len(resolved.missing)} domain(s) or folder(s) not found, evaluated without them:")
        for line in resolved.missing:
            print(f"  missing {line}")
    if not resolved.samples:
        raise LayoutError(f"{where}: none of the benchmark's folders were found (expected data root: "
                          f"{bench.data_root or 'see the benchmark file'})")
    samples = filter_samples(resolved.samples, where, None, categories)
    check_pairing(samples, where, config.allow_one_class)
    return samples, {"benchmark": bench.to_dict(), "present": resolved.present, "missing": resolved.missing}


def select_samples(samples: list[TestSample], config: EvalConfig,
                   protocol: Protocol | None) -> tuple[list[TestSample], dict, dict]:
    """The images evaluated: UFD's equal-class sampling under ``--protocol ufd``, else ``--max_sample``'s.

    Returns the samples, the counts per domain and class, and what the results record about it.
    """
    if protocol is None or protocol.max_sample is None:
        kept, counts = subsample(samples, config.max_sample, config.seed)
        return kept, counts, {"max_sample": config.max_sample}
    max_sample = config.max_sample if config.max_sample is not None else protocol.max_sample
    kept, counts, notes = equal_class_sample(samples, max_sample, protocol.fallback, config.seed)
    if notes and is_main_process():
        print(f"--protocol {protocol.name} sampling (max_sample {max_sample}, fallback {protocol.fallback}):")
        for note in notes:
            print(f"  {note}")
    return kept, counts, {"max_sample": max_sample, "sampling_notes": notes}


def calibrate(classifier: DeepfakeClassifier, real_dir: str, target_fpr: float, settings: ExtractionSettings,
              cache_root: Path | None, max_pixels: int, align: Alignment, protocol: Protocol | None = None
              ) -> dict | None:
    """The threshold that calls ``target_fpr`` of the known-real images in ``real_dir`` fake (``None`` off rank 0).

    Under ``protocol`` the images are prepared as the test images are (its crop, its resize).
    """
    files = walk_images(real_dir)
    if not files:
        raise LayoutError(f"{real_dir}: no images to calibrate on (--calibrate_real)")
    samples = [Sample(p, 0, "calibration") for p in files]
    tower = classifier.tower
    preprocess = _protocol_preprocess(classifier, protocol, warn=False)
    image_step, extra = _image_step(protocol, preprocess, align, Perturbation())
    dataset = DeepfakeDataset(samples, preprocess, perturb=image_step, max_pixels=max_pixels, align=align,
                              exif_transpose=protocol is None)
    table = extract_features(tower, dataset, settings, feature_cache(cache_root, tower, settings, extra),
                             desc="calibration features")
    if table is None:
        return None  # another rank's share is done; rank 0 calibrates
    scores = fake_probabilities(classifier.head, table, table.ok.nonzero().flatten())
    if len(scores) == 0:
        raise LayoutError(f"{real_dir}: none of its {len(files)} images could be read (--calibrate_real)")
    threshold = threshold_for_fpr(scores, target_fpr)
    return calibration_record(real_dir, threshold, target_fpr, scores, len(files) - len(scores))


def resolve_threshold_source(requested: str | float | None, classifier: DeepfakeClassifier,
                             calibration: dict | None, preprocess: Preprocess | None = None,
                             align: Alignment | None = None) -> tuple[float, str, dict | None]:
    """The threshold of the acc columns, where it came from, and the calibration record behind it (if any).

    ``calibration`` is the one just fitted on ``--calibrate_real``; ``--threshold calibrated``
    without it takes the checkpoint's stored operating point (and raises when there is none, or when
    it was fitted on images prepared otherwise than ``preprocess`` and ``align``, the test images').
    """
    if requested == "calibrated":
        if calibration is not None:
            return calibration["threshold"], "calibration", calibration
        threshold = classifier.decision_threshold("calibrated", preprocess=preprocess,
                                                  align=align.to_dict() if align else None)
        stored = {k: v for k, v in classifier.config["calibration"].items()
                  if k not in ("format", "tower", "preprocess", "align")}
        return threshold, "checkpoint calibration", stored
    if requested is not None:
        return classifier.decision_threshold(requested), "--threshold", calibration
    if calibration is not None:
        return calibration["threshold"], "calibration", calibration
    return classifier.threshold, "checkpoint", None


@dataclass
class _Setting:
    """What every perturbation level of one evaluation shares."""

    config: EvalConfig
    classifier: DeepfakeClassifier
    samples: list[TestSample]
    align: Alignment
    settings: ExtractionSettings
    decode: str
    threshold: float | None
    val_threshold: float | None
    preprocess: Preprocess  # the tower's, or the protocol's
    protocol: Protocol | None = None


def evaluate(config: EvalConfig, classifier: DeepfakeClassifier | None = None) -> dict:
    """Run one evaluation; returns the results document.

    Under torchrun every rank extracts its share of the features; rank 0 computes the
    metrics and writes the results (the other ranks return ``{}``).
    """
    out = Path(config.output_dir) if config.output_dir else default_output_dir(config.checkpoint, config.data.dataset_dir)
    with removed_if_left_empty(out):
        return _evaluate(config, classifier)


def _evaluate(config: EvalConfig, classifier: DeepfakeClassifier | None) -> dict:
    align = parse_align(list(config.data.align) if config.data.align else None)
    samples, found = gather_test_set(config)
    protocol = get_protocol(config.protocol) if config.protocol else None
    samples, counts, sampling = select_samples(samples, config, protocol)
    out_dir = prepare_output_dir(config.checkpoint, config.data.dataset_dir, config.output_dir, config.output,
                                 config.overwrite)
    # Join torchrun's process group first: which rank is the main one decides who prints and audits.
    init_distributed(classifier.tower.device if classifier is not None else choose_device(config.runtime.device))
    if classifier is None:
        classifier = DeepfakeClassifier.from_pretrained(config.checkpoint, device=config.runtime.device,
                                                        precision=config.runtime.precision)
    audit = None
    if is_main_process():
        print(summarize(samples))
        # The audit counts images smaller than what the head's tower takes in; its hints follow that preprocessing.
        audit = audit_samples([(s.path, s.generator, s.label) for s in samples],
                              _protocol_preprocess(classifier, protocol, warn=False),
                              max_per_group=config.data.audit_max, seed=config.seed, cache_root=config.cache.root())
        print(format_audit(audit, brief=True))
    setting, calibration, (threshold_source, threshold_calibration) = _prepare(config, classifier, samples, align,
                                                                               protocol)
    levels = [level for perturb in sweep_levels(config.perturb) if (level := _score_level(setting, perturb))]
    if not is_main_process():
        return {}
    tower = classifier.tower
    results = {
        "checkpoint": classifier.config.get("checkpoint"),
        "tower": tower.identity,
        "preprocess": setting.preprocess.to_dict(),
        "precision": classifier.config["precision"],
        "head": classifier.config.get("head"),
        "block_importance": classifier.config.get("block_importance"),
        "dataset_dir": str(config.data.dataset_dir),
        **found,
        "threshold": setting.threshold,
        "threshold_source": threshold_source,
        "val_threshold": setting.val_threshold,
        "calibration": threshold_calibration,
        "align": align.to_dict(),
        "perturbation_order": Perturbation.ORDER,
        **({"protocol": protocol.to_dict()} if protocol else {}),
        **sampling,
        "seed": config.seed,
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "level": CI_LEVEL, "seed": config.seed,
                      "stratified": "by class"},
        "ood": {**(ood_config(classifier.head) or {}), "note": ood_note(ood_config(classifier.head))},
        "sample_counts": counts,
        "audit": audit,
        "versions": versions(),
        "levels": levels,
    }
    write_outputs(results, samples, out_dir, config.output, plots=not config.no_plots)
    if calibration is not None:
        write_calibration(out_dir, classifier.config.get("checkpoint"), calibration, results, config.overwrite)
    return results


def _protocol_preprocess(classifier: DeepfakeClassifier, protocol: Protocol | None, warn: bool = True) -> Preprocess:
    """The preprocessing of the test images: the protocol's crop under ``--protocol``, else the tower's.

    A whole released network (Tiny-LaDeDa, NPR) brings its paper's test transform: under any
    ``--protocol`` that is what it is evaluated with, as its paper's tables were.
    """
    tower_preprocess = classifier.tower.preprocess
    if protocol is None:
        return tower_preprocess
    paper = getattr(classifier.tower, "paper_preprocess", None)
    if paper is not None:
        return paper
    preprocess = protocol_preprocess(tower_preprocess, protocol)
    if not warn:
        return preprocess
    if tower_preprocess.mode != "crop":
        log.warning("--protocol %s crops without resizing; the head's features were made with %s preprocessing, so "
                    "it sees test images prepared unlike its training images", protocol.name, tower_preprocess.mode)
    if preprocess.size != protocol.crop:
        log.warning("--protocol %s crops %dpx; this tower takes %dpx, so the crop is %dpx", protocol.name,
                    protocol.crop, preprocess.size, preprocess.size)
    return preprocess


def _prepare(config: EvalConfig, classifier: DeepfakeClassifier, samples: list[TestSample],
             align: Alignment, protocol: Protocol | None = None) -> tuple[_Setting, dict | None, tuple]:
    """Feature settings, the optional calibration on known reals, and the threshold of the acc columns."""
    trained_align = classifier.config.get("align") or {}
    if (trained_align.get("jpeg_quality"), trained_align.get("size")) != (align.jpeg_quality, align.size):
        log.warning("the head was trained with --align %s and is evaluated with --align %s; pass the same "
                     "--align to test it on images prepared as its training images were",
                     Alignment(trained_align.get("jpeg_quality"), trained_align.get("size")).label(), align.label())
    # The head was trained on features of one decode path; test on the same unless told otherwise.
    tower = classifier.tower
    # The head's blocks, plus any asked for so that several heads share one cache of these images.
    # Of the tap the head reads (block outputs, or ln_2 outputs for the rine head).
    extra_blocks = parse_feature_layers(config.feature_layers or "none", int(getattr(tower, "num_layers", 0) or 0),
                                        classifier.tap)
    settings = ExtractionSettings.for_run(config.runtime, classifier.config["precision"],
                                          sorted(set(classifier.blocks) | set(extra_blocks)),
                                          decode=classifier.config.get("features", {}).get("decode"), tap=classifier.tap)
    decode = settings.decode
    calibration = None
    if config.calibrate_real:
        calibration = calibrate(classifier, config.calibrate_real, config.target_fpr, settings, config.cache.root(),
                                config.runtime.max_pixels, align, protocol)
    if calibration is not None:
        print(f"calibrated threshold {calibration['threshold']:.6g}: FPR {100 * calibration['achieved_fpr']:.2f}% "
              f"on {calibration['n_images']} known-real images (target {100 * config.target_fpr:g}%)")
    threshold, source = None, (None, None)
    # Off rank 0 a --calibrate_real fit is None (rank 0 fits it) and the threshold is never used;
    # without one every rank resolves it, so a missing stored calibration stops them all alike.
    if is_main_process() or not config.calibrate_real:
        threshold, *source = resolve_threshold_source(config.threshold, classifier, calibration,
                                                      _protocol_preprocess(classifier, protocol, warn=False), align)
    setting = _Setting(config, classifier, samples, align, settings, decode, threshold,
                       classifier.config.get("val_threshold"), _protocol_preprocess(classifier, protocol), protocol)
    return setting, calibration, tuple(source)


def _score_level(setting: _Setting, perturb: Perturbation) -> dict | None:
    """One perturbation level: features of every distinct image (cached), then each domain's metrics.

    ``None`` off rank 0, whose share of the features is done (rank 0 scores).
    """
    samples, tower, align = setting.samples, setting.classifier.tower, setting.align
    start = time.perf_counter()
    # Each distinct image goes through the tower once, however many domains share it (UFD's LAION reals).
    unique = list(dict.fromkeys(s.path for s in samples))
    row_of = {p: i for i, p in enumerate(unique)}
    take = np.array([row_of[s.path] for s in samples], dtype=np.int64)
    labels_of = {s.path: s.label for s in samples}
    as_samples = [Sample(p, labels_of[p], "test") for p in unique]
    image_step, extra = _image_step(setting.protocol, setting.preprocess, align, perturb)
    dataset = DeepfakeDataset(as_samples, setting.preprocess, perturb=image_step,
                              max_pixels=setting.config.runtime.max_pixels, align=align, decode=setting.decode,
                              exif_transpose=setting.protocol is None)
    cache = feature_cache(setting.config.cache.root(), tower, setting.settings, extra)
    table = extract_features(tower, dataset, setting.settings, cache, desc=f"test features ({perturb.label()})")
    if table is None:
        return None
    probs, ok = table_probabilities(setting.classifier.head, table)[take], table.ok.numpy()[take]
    ood = _ood_per_sample(setting.classifier.head, table, take)
    seed = setting.config.seed
    rows, mean, family_means = domain_rows(samples, probs, ok, setting.threshold, setting.val_threshold, seed, ood)
    pooled = pooled_row(samples, probs, ok, setting.threshold, setting.val_threshold, seed, ood)
    skipped = report_skipped(f"test set ({perturb.label()})", as_samples, table.skipped)
    headline = {"headline": headline_rows(samples, probs, ok)} if setting.protocol else {}
    perturb = protocol_perturbation(perturb) if setting.protocol else perturb
    return {
        "perturbation": perturb.to_dict(), "label": perturb.label(), **headline, "rows": rows, "mean": mean,
        "pooled": pooled, "family_means": family_means, "skipped": skipped,
        "seconds": time.perf_counter() - start, "probabilities": probs,
    }


def _ood_per_sample(head, table, take: np.ndarray) -> np.ndarray | None:
    """1.0 (out of the training distribution), 0.0 (in) or NaN (skipped) per sample; ``None`` for a head
    without the statistics to tell."""
    if ood_config(head) is None:
        return None
    _, flags = table_ood(head, table)
    per_row = np.array([{OOD_OUT: 1.0, OOD_IN: 0.0}.get(f, np.nan) for f in flags])
    return per_row[take]


def _image_step(protocol: Protocol | None, preprocess: Preprocess, align: Alignment,
                perturb: Perturbation) -> tuple[Perturbation | ProtocolImage | None, dict]:
    """What is done to each decoded image before the preprocessing, and the cache key's record of it.

    Under ``--protocol``: the published uint8 blur, and AIGCDetectBenchmark's resize before the
    crop; the images are read as stored (no EXIF rotation, as ``Image.open(path).convert("RGB")``);
    the protocol's preprocessing is part of the key, so its features never mix with others.
    """
    if protocol is not None:
        perturb = protocol_perturbation(perturb)
    extra = {} if perturb.is_identity else {"perturbation": {**perturb.to_dict(), "order": Perturbation.ORDER}}
    if align.enabled:
        extra["align"] = align.to_dict()
    if protocol is None:
        return (None if perturb.is_identity else perturb), extra
    # The protocol's resize comes before its crop; a tower with its own resizing test transform has no crop.
    step = ProtocolImage(perturb, protocol_resize(protocol, preprocess.size) if preprocess.mode == "crop" else None)
    extra["protocol"] = {"name": protocol.name, "preprocess": preprocess.to_dict(), "resize_short": step.resize_short,
                         "exif_transpose": False}
    return (None if step.is_identity else step), extra
