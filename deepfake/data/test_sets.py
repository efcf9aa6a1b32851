"""Test images with their domain (generator), category and family, found in a folder or a manifest.

Test roots in any of the layouts in use are understood (see :mod:`deepfake.data.layouts`):

    TEST/{generator}/{0_real,1_fake}                  UniversalFakeDetect
    TEST/{generator}/{category}/{0_real,1_fake}       CNNDetection (progan, stylegan, cyclegan)
    TEST/{0_real,1_fake}                              a single domain
    GENIMAGE/{generator}/{train,val}/{nature,ai}      GenImage (its val split is the test set)
    DATASET/{train,val,test}/{category}/...           ForenSynths (its test split is used)

Published benchmarks whose reals sit apart from their fakes are described by benchmark files
(:mod:`deepfake.data.benchmarks`). A domain with one class only is refused unless the user
asks for it: its accuracy alone says nothing a ranking metric could be compared with.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from deepfake.data.image_io import walk_images
from deepfake.data.layouts import LayoutError, describe, find_label_folders
from deepfake.data.manifests import is_manifest, read_manifest

log = logging.getLogger(__name__)

SPLIT_PREFERENCE = ("test", "val", None)


@dataclass(frozen=True)
class TestSample:
    """A test image with its label, generator, category (when the layout has one) and family."""

    path: str
    label: int
    generator: str
    category: str = ""
    family: str = ""


def _from_manifest(path: Path) -> list[TestSample]:
    entries = read_manifest(path)
    splits = {e.split or None for e in entries}
    chosen = next((s for s in SPLIT_PREFERENCE if s in splits), None)
    if chosen is None and None not in splits:
        raise LayoutError(f"{path}: only a train split in this manifest; nothing to evaluate")
    return [TestSample(e.path, e.label, e.domain or path.stem, e.category)
            for e in entries if (e.split or None) == chosen]


def _from_folders(root: Path, labels: dict[str, int] | None) -> list[TestSample]:
    folders = find_label_folders(root, labels)
    if not folders:
        names = ", ".join(sorted(labels)) if labels else "0_real/1_fake, real/fake or nature/ai"
        raise LayoutError(f"{root}: no label folders ({names}) holding images found. Contents:\n{describe(root)}")
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
    return samples


def filter_samples(samples: list[TestSample], where: str, generators: list[str] | None = None,
                   categories: list[str] | None = None) -> list[TestSample]:
    """Keep the named generators and categories; an unknown name is an error listing what exists.

    ``categories`` filters categories inside generators; for a layout without them (each
    top-level folder a category, as in training data) it filters those folders.
    """
    found = sorted({s.generator for s in samples})
    if generators:
        unknown = [g for g in generators if g not in found]
        if unknown:
            raise LayoutError(f"{where}: unknown generator(s) {', '.join(unknown)}; found: {', '.join(found)}")
        samples = [s for s in samples if s.generator in generators]
    if categories:
        nested = any(s.category for s in samples)
        key = (lambda s: s.category) if nested else (lambda s: s.generator)
        found = sorted({key(s) for s in samples})
        unknown = [c for c in categories if c not in found]
        if unknown:
            raise LayoutError(f"{where}: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                              f"{', '.join(unknown)}; found: {', '.join(found)}")
        samples = [s for s in samples if key(s) in categories]
    return samples


def one_class_domains(samples: list[TestSample]) -> dict[str, str]:
    """generator -> which class it lacks, for every generator with one class only."""
    counts: dict[str, Counter] = {}
    for s in samples:
        counts.setdefault(s.generator, Counter())[s.label] += 1
    return {g: ("reals" if c[0] == 0 else "fakes") for g, c in sorted(counts.items()) if c[0] == 0 or c[1] == 0}


def check_pairing(samples: list[TestSample], where: str, allow_one_class: bool, hint: str = "") -> None:
    """Refuse one-class domains (listing them) unless ``allow_one_class``."""
    lonely = one_class_domains(samples)
    if not lonely:
        return
    listing = "; ".join(f"{g} (no {lacks}: {_folders_of(samples, g)})" for g, lacks in lonely.items())
    if not allow_one_class:
        raise LayoutError(
            f"{where}: {len(lonely)} domain(s) with one class and no pairing: {listing}. A one-class domain has "
            f"no AP, AUC or balanced accuracy. Pair them with a benchmark file or preset{hint}, or pass "
            f"--allow_one_class to report them with the metrics one class defines."
        )
    log.warning("%s: evaluating %d one-class domain(s) (--allow_one_class): %s", where, len(lonely), listing)


def _folders_of(samples: list[TestSample], generator: str, limit: int = 3) -> str:
    folders = sorted({str(Path(s.path).parent) for s in samples if s.generator == generator})
    return ", ".join(folders[:limit]) + (f" and {len(folders) - limit} more" if len(folders) > limit else "")


def discover_test_set(
    root: str | Path, generators: list[str] | None = None, categories: list[str] | None = None,
    labels: dict[str, int] | None = None, allow_one_class: bool = False,
) -> list[TestSample]:
    """Every labelled test image under ``root`` (a folder or a manifest), optionally filtered."""
    root = Path(root)
    samples = _from_manifest(root) if is_manifest(root) else _from_folders(root, labels)
    samples = filter_samples(samples, str(root), generators, categories)
    if not samples:
        raise LayoutError(f"{root}: label folders found but no image files in them")
    hint = " (for UniversalFakeDetect's diffusion_datasets: --benchmark ufd)" \
        if any(s.generator in ("laion", "imagenet", "guided", "dalle") for s in samples) else ""
    check_pairing(samples, str(root), allow_one_class, hint)
    return samples


def summarize(samples: list[TestSample]) -> str:
    """Domains, categories and image counts, as printed before any work starts."""
    counts: dict[tuple[str, str, str], Counter] = {}
    for s in samples:
        counts.setdefault((s.family, s.generator, s.category), Counter())[s.label] += 1
        if s.category:
            counts.setdefault((s.family, s.generator, ""), Counter())[s.label] += 1
    domains = sorted({s.generator for s in samples})
    lines = [f"{len(domains)} domain(s), {sum(1 for s in samples if s.label == 0)} real and "
             f"{sum(1 for s in samples if s.label == 1)} fake images:"]
    for (family, generator, category), c in sorted(counts.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        name = f"  {generator}" if not category else f"    {category}"
        tag = f"  [{family}]" if family and not category else ""
        lines.append(f"{name:<36} {c[0]:>8} real {c[1]:>8} fake{tag}")
    return "\n".join(lines)


def subsample(samples: list[TestSample], max_sample: int | None, seed: int) -> tuple[list[TestSample], dict]:
    """At most ``max_sample`` images per generator and class, drawn with ``seed``; returns the counts."""
    groups: dict[tuple[str, int], list[TestSample]] = {}
    for s in samples:
        groups.setdefault((s.generator, s.label), []).append(s)
    kept, counts = set(), {}
    for (generator, label), members in sorted(groups.items()):
        members = sorted(members, key=lambda s: s.path)
        if max_sample is not None and len(members) > max_sample:
            members = random.Random(f"{seed}:{generator}:{label}").sample(members, max_sample)
        found = len(groups[(generator, label)])
        counts.setdefault(generator, {})[("real", "fake")[label]] = {"used": len(members), "found": found}
        kept.update(id(s) for s in members)
    # The order of the benchmark (or of discovery) is kept: tables list domains as published.
    return [s for s in samples if id(s) in kept], counts
