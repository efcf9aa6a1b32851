"""Per-domain rows and the means over them, as the field reports a detector: per generator, then per category."""

from __future__ import annotations

import numpy as np

from deepfake.data.test_sets import TestSample
from deepfake.evaluation.metrics import (
    accuracy_at,
    average_precision,
    bootstrap_intervals,
    common_mean,
    domain_metrics,
)

MEAN_KEYS = ["real_acc", "fake_acc", "acc", "ap", "auc", "tpr_at_fpr1", "tpr_at_fpr5", "best_acc", "ufd_acc",
             "val_threshold_acc", "ece", "ood"]
# A domain with fewer images than this of either class is marked small: its AP and accuracy swing
# by several points from one draw of its images to another (see its interval).
SMALL_DOMAIN = 30
# The published repositories' headline: real, fake and overall accuracy at 0.5, and AP.
HEADLINE_KEYS = ["real_acc", "fake_acc", "acc", "ap"]
HEADLINE_THRESHOLD = 0.5


def row_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float, val_threshold: float | None,
                seed: int = 0, ood: np.ndarray | None = None) -> dict:
    """A row's metrics, bootstrap intervals of AP and accuracy, whether it is small, and its share flagged
    out of distribution (``ood``: 1.0 flagged, 0.0 not, NaN unknown per image; ``None`` without the statistics)."""
    known = ood[~np.isnan(ood)] if ood is not None else np.zeros(0)
    counts = (int(np.sum(labels == 0)), int(np.sum(labels == 1)))
    return {**domain_metrics(labels, probs, threshold, val_threshold),
            **bootstrap_intervals(labels, probs, threshold, seed),
            "small": any(0 < c < SMALL_DOMAIN for c in counts),
            "ood": float(np.mean(known)) if len(known) else None}


def pooled_row(samples: list[TestSample], probs: np.ndarray, ok: np.ndarray, threshold: float,
               val_threshold: float | None, seed: int = 0, ood: np.ndarray | None = None) -> dict:
    """Every metric over all scored images of the run pooled, each distinct image once (a real shared by
    several domains, as UFD's LAION reals are, counts once)."""
    first = {}
    for i, s in enumerate(samples):
        if ok[i]:
            first.setdefault(s.path, i)
    take = np.array(list(first.values()), dtype=np.int64)
    labels = np.array([samples[i].label for i in take], dtype=np.int64)
    flags = ood[take] if ood is not None else None
    return {"domain": "pooled", "generator": "", "category": "", "family": "", "kind": "pooled",
            **row_metrics(labels, probs[take], threshold, val_threshold, seed, flags)}


def _two_class(row: dict) -> bool:
    return row.get("n_real", 0) > 0 and row.get("n_fake", 0) > 0


def _mean_row(name: str, rows: list[dict], family: str = "", mean_keys: list[str] = MEAN_KEYS) -> dict:
    """The mean over the two-class rows where every column is defined; labelled ``NAME (k of n)`` when
    it leaves rows out. A one-class row (``--allow_one_class``) never enters a mean, not even its one
    defined accuracy: a mean of fake accuracies alone would read as a detector's accuracy."""
    both = [r for r in rows if _two_class(r)]
    keys = [k for k in mean_keys if any(r.get(k) is not None for r in both)]
    means, covers = common_mean(both, keys)
    covered = [r for r in rows if r["domain"] in covers]
    label = name if len(covers) == len(rows) else f"{name} ({len(covers)} of {len(rows)})"
    return {"domain": label, "generator": "", "category": "", "family": family, "kind": "mean",
            "n_real": int(sum(r["n_real"] for r in covered)), "n_fake": int(sum(r["n_fake"] for r in covered)),
            **{k: means.get(k) for k in mean_keys}, "covers": covers,
            "not_covered": [r["domain"] for r in rows if r["domain"] not in covers]}


def _family_means(rows: list[dict], mean_keys: list[str]) -> list[dict]:
    families = list(dict.fromkeys(r["family"] for r in rows if r["family"]))
    if len(families) < 2:
        return []
    return [_mean_row(f"mean {f}", [r for r in rows if r["family"] == f], f, mean_keys) for f in families]


def headline_rows(samples: list[TestSample], probs: np.ndarray, ok: np.ndarray) -> dict:
    """The numbers the published repositories write, per generator: real, fake and overall accuracy
    at 0.5 and AP (UFD's acc0.txt and ap.txt; CNNDetection's and AIGCDetectBenchmark's CSV), with
    family means and the overall mean (mAcc, mAP) as :func:`domain_rows` forms them."""
    labels = np.array([s.label for s in samples])
    generators = np.array([s.generator for s in samples])
    family_of = {s.generator: s.family for s in samples}
    rows = []
    for generator in dict.fromkeys(s.generator for s in samples):
        sel = (generators == generator) & ok
        y, s = labels[sel], probs[sel]
        at = accuracy_at(y, s, HEADLINE_THRESHOLD)
        rows.append({"domain": generator, "generator": generator, "category": "", "family": family_of[generator],
                     "kind": "domain", "n_real": int(np.sum(y == 0)), "n_fake": int(np.sum(y == 1)),
                     "real_acc": at["real_acc"], "fake_acc": at["fake_acc"],
                     "acc": at["acc"] if len(np.unique(y)) == 2 else None, "ap": average_precision(y, s),
                     "threshold": HEADLINE_THRESHOLD})
    return {"rows": rows, "mean": _mean_row("mean", rows, mean_keys=HEADLINE_KEYS),
            "family_means": _family_means(rows, HEADLINE_KEYS)}


def domain_rows(samples: list[TestSample], probs: np.ndarray, ok: np.ndarray, threshold: float,
                val_threshold: float | None, seed: int = 0,
                ood: np.ndarray | None = None) -> tuple[list[dict], dict, list[dict]]:
    """Rows per generator (its categories after it), the overall mean row and one mean row per family.

    Every mean covers the domains where all its columns are defined (both classes present), and
    says which: one-class domains are shown with the metrics they define and left out of means.
    Each row has its bootstrap intervals (``seed``) and, given ``ood`` per sample, its share flagged.
    """
    labels = np.array([s.label for s in samples])
    generators = np.array([s.generator for s in samples])
    category_of = np.array([s.category for s in samples])
    family_of = {s.generator: s.family for s in samples}

    def metrics(sel: np.ndarray) -> dict:
        return row_metrics(labels[sel], probs[sel], threshold, val_threshold, seed,
                           ood[sel] if ood is not None else None)

    rows, generator_rows = [], []
    for generator in dict.fromkeys(s.generator for s in samples):
        in_gen = (generators == generator) & ok
        row = {"domain": generator, "generator": generator, "category": "", "family": family_of[generator],
               "kind": "domain", **metrics(in_gen)}
        rows.append(row)
        generator_rows.append(row)
        for category in dict.fromkeys(s.category for s in samples if s.generator == generator and s.category):
            sel = in_gen & (category_of == category)
            rows.append({"domain": f"{generator}/{category}", "generator": generator, "category": category,
                         "family": family_of[generator], "kind": "category",
                         **metrics(sel)})
    return rows, _mean_row("mean", generator_rows), _family_means(generator_rows, MEAN_KEYS)
