"""Detectors side by side on one test set, at the cost of one tower pass per tower.

``compare(DetectorsConfig(...))`` loads every detector (a run folder or a checkpoint file), groups
those that read the same tower with the same preprocessing, precision and decode path, and runs
each group's tower once over the distinct test images: one forward per image gives every feature
any of them reads (the final embedding and one tap's blocks, e.g. UniversalFakeDetect's projected
embedding and RINE's ``ln_2`` tokens). Each detector's features are stored under the cache key
its own ``deepfake test`` uses, so a later test of any of them extracts nothing. Each detector
sees its own preprocessing, unless ``--protocol`` sets one for all.

The result is one table: a row per generator and the mean, and per detector the AP, the accuracy
at 0.5 and, where the head has one, the accuracy at its validation threshold.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from deepfake.config import DetectorsConfig, EvalConfig, RuntimeConfig
from deepfake.data.alignment import Alignment, parse_align
from deepfake.data.perturbations import Perturbation
from deepfake.data.preprocess import Preprocess
from deepfake.data.protocols import Protocol, get_protocol, protocol_perturbation, protocol_preprocess
from deepfake.data.test_sets import TestSample, summarize
from deepfake.deepfake_classifier import DeepfakeClassifier, checkpoint_precision
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.evaluation.compare_report import write_comparison
from deepfake.evaluation.domains import domain_rows
from deepfake.evaluation.reports import prepare_output_dir
from deepfake.evaluation.run import _image_step, gather_test_set, select_samples
from deepfake.features.extraction import ExtractionSettings, SharedTarget, extract_shared, feature_cache
from deepfake.model.detectors import named_run
from deepfake.model.releases import is_detector_name
from deepfake.model.scoring import table_probabilities
from deepfake.towers.base import ImageTower
from deepfake.utils.fileio import removed_if_left_empty
from deepfake.utils.runtime import choose_device, init_distributed, is_main_process, versions

log = logging.getLogger(__name__)

REPORT_THRESHOLD = 0.5  # the accuracy every paper of the field reports beside AP


class DetectorNotFound(ValueError):
    """A detector argument that names nothing this tool can load."""


def resolve_detector(spec: str) -> Path:
    """Where the detector ``spec`` names is: a run folder, a checkpoint file, or a released detector's name
    (its run in the cache, downloaded, checked and imported on first use; a local path of that name wins)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if is_detector_name(spec):
        return named_run(spec)
    raise DetectorNotFound(f"{spec}: no such run folder or checkpoint file, nor a released detector's name "
                           f"(`deepfake detectors` lists them)")


@dataclass
class Detector:
    """One detector of a comparison: its name in the table, its classifier, what its tower pass must give it."""

    name: str
    classifier: DeepfakeClassifier
    preprocess: Preprocess  # its own, or the protocol's
    settings: ExtractionSettings

    def pass_key(self) -> tuple:
        """What a tower pass shared with another detector must agree on (the tap only where blocks are read)."""
        tower = json.dumps(self.classifier.tower.identity, sort_keys=True, default=str)
        return (tower, json.dumps(self.preprocess.to_dict(), sort_keys=True), self.settings.precision,
                self.settings.decode)


def detector_names(specs: tuple[str, ...] | list[str]) -> list[str]:
    """The column name of each detector: its path below the folder all of them share; repeats numbered.

    ``runs/demo/run runs/linear`` -> ``demo/run``, ``linear``; one detector: its folder's name.
    """
    paths = {spec: Path(spec).expanduser().resolve() for spec in specs if Path(spec).expanduser().exists()}
    common = Path(os.path.commonpath([p.parent for p in paths.values()])) if paths else None
    names: list[str] = []
    for spec in specs:
        path = paths.get(spec)
        name = spec if path is None else path.relative_to(common).with_suffix("").as_posix()
        base, k = name, 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def _tower_view(tower: ImageTower, preprocess: Preprocess) -> ImageTower:
    """The same loaded tower (its weights shared) under another head's preprocessing record."""
    view = copy.copy(tower)
    view.backbone = replace(tower.backbone, preprocess=preprocess)
    return view


def load_detectors(specs: tuple[str, ...], runtime: RuntimeConfig, protocol: Protocol | None) -> list[Detector]:
    """Every detector, each tower loaded once per precision: heads on the same tower share its weights."""
    device = choose_device(runtime.device)
    loaded: list[tuple[dict, str, ImageTower]] = []  # (the checkpoint's tower record, precision, tower)
    detectors = []
    for name, spec in zip(detector_names(specs), specs):
        path = resolve_detector(spec)
        alone = DeepfakeClassifier.from_pretrained(path, device=device, tower=False)
        precision = checkpoint_precision(alone.config, device, runtime.precision)
        tower = next((t for record, p, t in loaded if record == alone.config["tower"] and p == precision), None)
        if tower is None:
            classifier = DeepfakeClassifier.from_pretrained(path, device=device, precision=runtime.precision)
            loaded.append((alone.config["tower"], precision, classifier.tower))
        else:
            view = _tower_view(tower, Preprocess.from_dict(alone.config["preprocess"]))
            problem = alone.head.check_tower(view)
            if problem:
                raise DetectorNotFound(f"{spec}: {problem}")
            classifier = DeepfakeClassifier(view, alone.head, {**alone.config, "precision": precision}).eval()
        own = classifier.tower.preprocess
        settings = ExtractionSettings.for_run(runtime, precision, sorted(classifier.blocks),
                                              decode=classifier.config.get("features", {}).get("decode"),
                                              tap=classifier.tap)
        detectors.append(Detector(name, classifier, protocol_preprocess(own, protocol) if protocol else own, settings))
    return detectors


def pass_groups(detectors: list[Detector]) -> list[list[Detector]]:
    """Detectors grouped by the tower pass that serves them; readers of the embedding alone join any tap's pass."""
    groups: dict[tuple, list[Detector]] = {}
    for detector in sorted(detectors, key=lambda d: not d.settings.layers):  # readers of blocks open the passes
        base = detector.pass_key()
        if detector.settings.layers:
            key = (*base, detector.settings.tap)
        else:
            key = next((k for k in groups if k[:-1] == base), (*base, None))
        groups.setdefault(key, []).append(detector)
    return list(groups.values())


def describe_passes(groups: list[list[Detector]]) -> list[dict]:
    """What each tower pass is and which detectors it serves (printed, and recorded in results.json)."""
    return [{"tower": g[0].classifier.tower.identity.get("model"), "preprocess": g[0].preprocess.to_dict(),
             "precision": g[0].settings.precision, "detectors": [d.name for d in g]} for g in groups]


@dataclass
class _TestImages:
    """The distinct images of a test set (each goes through a tower once), and each sample's row among them."""

    samples: list[Sample]
    take: np.ndarray

    @classmethod
    def of(cls, samples: list[TestSample]) -> _TestImages:
        unique = list(dict.fromkeys(s.path for s in samples))
        row_of = {p: i for i, p in enumerate(unique)}
        label_of = {s.path: s.label for s in samples}
        return cls([Sample(p, label_of[p], "test") for p in unique],
                   np.array([row_of[s.path] for s in samples], dtype=np.int64))


def score_group(group: list[Detector], images: _TestImages, config: EvalConfig, align: Alignment,
                protocol: Protocol | None, perturb: Perturbation) -> dict[str, np.ndarray] | None:
    """One tower pass for ``group``: P(fake) per distinct image for each of its detectors (``None`` off rank 0)."""
    first = group[0]
    step, extra = _image_step(protocol, first.preprocess, align, perturb)
    dataset = DeepfakeDataset(images.samples, first.preprocess, perturb=step, max_pixels=config.runtime.max_pixels,
                              align=align, decode=first.settings.decode, exif_transpose=protocol is None)
    root = config.cache.root()
    targets = [SharedTarget(d.settings, feature_cache(root, d.classifier.tower, d.settings, extra)) for d in group]
    names = ", ".join(d.name for d in group)
    tables = extract_shared(first.classifier.tower, dataset, targets, desc=f"features for {names} ({perturb.label()})")
    if tables is None:
        return None
    return {d.name: table_probabilities(d.classifier.head, table) for d, table in zip(group, tables)}


def detector_record(detector: Detector) -> dict:
    """What results.json says of one detector."""
    config = detector.classifier.config
    return {"name": detector.name, "checkpoint": config.get("checkpoint"), "tower": detector.classifier.tower.identity,
            "preprocess": detector.preprocess.to_dict(), "precision": detector.settings.precision,
            "head": config.get("head"), "val_threshold": config.get("val_threshold"),
            "published": config.get("published")}


def compare(config: DetectorsConfig) -> dict:
    """Evaluate every detector of ``config`` on one test set; returns the results document (``{}`` off rank 0)."""
    if len(config.detectors) < 1:
        raise DetectorNotFound("name at least one detector (a run folder or a checkpoint file)")
    if not config.evaluation.output_dir:
        raise ValueError("compare needs --output_dir")
    with removed_if_left_empty(Path(config.evaluation.output_dir)):
        return _compare(config)


def _compare(config: DetectorsConfig) -> dict:
    ev = config.evaluation
    align = parse_align(list(ev.data.align) if ev.data.align else None)
    samples, found = gather_test_set(ev)
    protocol = get_protocol(ev.protocol) if ev.protocol else None
    samples, counts, sampling = select_samples(samples, ev, protocol)
    out_dir = prepare_output_dir(config.detectors[0], ev.data.dataset_dir, ev.output_dir, None, ev.overwrite)
    init_distributed(choose_device(ev.runtime.device))
    detectors = load_detectors(config.detectors, ev.runtime, protocol)
    groups = pass_groups(detectors)
    passes = describe_passes(groups)
    if is_main_process():
        print(summarize(samples))
        print(f"{len(detectors)} detector(s), {len(groups)} tower pass(es) over the images (cached ones are not "
              "extracted again):")
        for i, p in enumerate(passes, 1):
            print(f"  pass {i}: {p['tower']} ({p['preprocess']['mode']} {p['preprocess']['size']}, "
                  f"{p['precision']}): {', '.join(p['detectors'])}")
    perturb = Perturbation(ev.perturb.jpeg_quality, ev.perturb.gaussian_sigma, ev.perturb.resize_scale)
    images = _TestImages.of(samples)
    start, probs = time.perf_counter(), {}
    for group in groups:
        scored = score_group(group, images, ev, align, protocol, perturb)
        probs.update(scored or {})
    if not is_main_process():
        return {}
    results = {
        "detectors": [detector_record(d) for d in detectors], "passes": passes,
        "dataset_dir": str(ev.data.dataset_dir), **found, "align": align.to_dict(),
        "perturbation": (protocol_perturbation(perturb) if protocol else perturb).to_dict(),
        "label": perturb.label(), **({"protocol": protocol.to_dict()} if protocol else {}), **sampling,
        "seed": ev.seed, "sample_counts": counts, "threshold": REPORT_THRESHOLD, "versions": versions(),
        "seconds": time.perf_counter() - start,
        **comparison_rows(detectors, samples, {n: p[images.take] for n, p in probs.items()}),
    }
    write_comparison(results, samples, {n: p[images.take] for n, p in probs.items()}, out_dir)
    return results


def comparison_rows(detectors: list[Detector], samples: list[TestSample], probs: dict[str, np.ndarray]) -> dict:
    """Per detector, the rows per generator and the mean: AP, accuracy at 0.5 and at its validation threshold."""
    per_detector = {}
    for detector in detectors:
        p = probs[detector.name]
        rows, mean, _ = domain_rows(samples, p, ~np.isnan(p), REPORT_THRESHOLD,
                                    detector.classifier.config.get("val_threshold"))
        per_detector[detector.name] = {"rows": [r for r in rows if r["kind"] == "domain"], "mean": mean}
    return {"results": per_detector}
