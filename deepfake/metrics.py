"""The field's detection metrics, defined for every input (one class, ties, equal scores).

A value that is undefined for a domain (AP without fakes, real accuracy without reals)
is ``None`` and is shown as ``n/a``; it is never replaced by a made-up number.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _arrays(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    return y, s


def accuracy_at(labels, scores, threshold: float) -> dict:
    """Real, fake and overall accuracy when ``score > threshold`` means fake (None where undefined)."""
    y, s = _arrays(labels, scores)
    pred = s > threshold
    real, fake = y == 0, y == 1
    return {
        "real_acc": float(np.mean(~pred[real])) if real.any() else None,
        "fake_acc": float(np.mean(pred[fake])) if fake.any() else None,
        "acc": float(np.mean(pred == fake)) if len(y) else None,
    }


def average_precision(labels, scores) -> float | None:
    """AP with fake as the positive class; needs both classes."""
    y, s = _arrays(labels, scores)
    if len(np.unique(y)) < 2:
        return None
    return float(average_precision_score(y, s))


def roc_auc(labels, scores) -> float | None:
    y, s = _arrays(labels, scores)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, s))


def best_threshold(labels, scores) -> tuple[float | None, float | None]:
    """(threshold, accuracy) maximising accuracy of ``score > threshold`` ("oracle" accuracy).

    Candidates sit between consecutive distinct scores (and below the lowest), so tied
    scores always fall on the same side; the lowest such threshold wins ties in accuracy.
    """
    y, s = _arrays(labels, scores)
    if len(y) == 0:
        return None, None
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.unique(s_sorted)
    # After cut k (all scores <= distinct[k] predicted real): reals correct + fakes above.
    real_le = np.searchsorted(s_sorted, distinct, side="right")
    reals_cum = np.concatenate([[0], np.cumsum(y_sorted == 0)])
    n_fake = int(np.sum(y == 1))
    fakes_cum = np.concatenate([[0], np.cumsum(y_sorted == 1)])
    correct = reals_cum[real_le] + (n_fake - fakes_cum[real_le])
    # The cut below every score: everything predicted fake.
    correct = np.concatenate([[n_fake], correct])
    k = int(np.argmax(correct))
    if k == 0:
        threshold = float(np.nextafter(distinct[0], -np.inf))
    elif k < len(distinct):
        threshold = float((distinct[k - 1] + distinct[k]) / 2.0)
    else:
        threshold = float(distinct[-1])
    return threshold, float(correct[k] / len(y))


def expected_calibration_error(labels, scores, bins: int = 15) -> float | None:
    """ECE of P(fake) over ``bins`` equal-width bins of the predicted class's confidence."""
    y, s = _arrays(labels, scores)
    if len(y) == 0:
        return None
    pred = (s > 0.5).astype(np.int64)
    confidence = np.where(pred == 1, s, 1.0 - s)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


def domain_metrics(labels, scores, threshold: float = 0.5, val_threshold: float | None = None) -> dict:
    """Every number the evaluation table reports for one domain."""
    y, s = _arrays(labels, scores)
    at = accuracy_at(y, s, threshold)
    best_t, best_acc = best_threshold(y, s) if len(np.unique(y)) == 2 else (None, None)
    out = {
        "n_real": int(np.sum(y == 0)),
        "n_fake": int(np.sum(y == 1)),
        "real_acc": at["real_acc"],
        "fake_acc": at["fake_acc"],
        "acc": at["acc"],
        "ap": average_precision(y, s),
        "auc": roc_auc(y, s),
        "best_acc": best_acc,
        "best_threshold": best_t,
        "val_threshold_acc": accuracy_at(y, s, val_threshold)["acc"] if val_threshold is not None else None,
        "ece": expected_calibration_error(y, s),
        "threshold": threshold,
    }
    return out


def mean_row(rows: list[dict], keys: list[str]) -> dict:
    """Mean of each key over the rows where it is defined (the field's mAP / mAcc)."""
    out = {}
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
        out[key] = float(np.mean(values)) if values else None
    return out
