"""The field's detection metrics, defined for every input (one class, ties, equal scores).

A value that is undefined for a domain (AP without fakes, real accuracy without reals)
is ``None`` and is shown as ``n/a``; it is never replaced by a made-up number.
"""

from __future__ import annotations

import math

import numpy as np


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


def _ranked_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives at each distinct score, from the highest down (ties counted together)."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last position of each distinct score
    tps = np.cumsum(y)[last]
    return tps, 1 + last - tps


def average_precision(labels, scores) -> float | None:
    """AP with fake as the positive class; needs both classes.

    The step-wise sum over distinct thresholds, sum_k (R_k - R_(k-1)) P_k, that
    scikit-learn's ``average_precision_score`` computes (equal to it, tested), in numpy:
    importing scikit-learn costs a second of start-up on every run.
    """
    y, s = _arrays(labels, scores)
    if len(np.unique(y)) < 2:
        return None
    tps, fps = _ranked_counts(y, s)
    precision = tps / (tps + fps)
    recall_steps = np.diff(np.r_[0, tps]) / tps[-1]
    return float(np.sum(recall_steps * precision))


def roc_auc(labels, scores) -> float | None:
    """Area under the ROC curve (trapezoids over distinct thresholds, as scikit-learn's ``roc_auc_score``)."""
    y, s = _arrays(labels, scores)
    if len(np.unique(y)) < 2:
        return None
    tps, fps = _ranked_counts(y, s)
    tpr = np.r_[0, tps] / tps[-1]
    fpr = np.r_[0, fps] / fps[-1]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at each distinct threshold, from (0, 0) up; needs both classes.

    scikit-learn's ``roc_curve`` points (``drop_intermediate=False``; its default drops collinear
    ones, the same line): the plots draw them without importing it (a second of start-up, ~75 MB).
    """
    tps, fps = _ranked_counts(*_arrays(labels, scores))
    return np.r_[0, fps] / fps[-1], np.r_[0, tps] / tps[-1]


def pr_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at each distinct threshold, from the highest score down; needs both classes."""
    tps, fps = _ranked_counts(*_arrays(labels, scores))
    return tps / (tps + fps), tps / tps[-1]


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


def ufd_threshold(labels, scores) -> float | None:
    """The threshold UniversalFakeDetect's ``validate.py`` finds (``find_best_threshold``), reproduced.

    validate.py computes it on the test labels themselves, so it is an oracle threshold; its
    repository writes only AP and the accuracy at 0.5 (``ap.txt``, ``acc0.txt``), not the
    accuracy at this threshold, so no published number is made with it.

    Its ``find_best_threshold`` puts reals first, assumes the first half of the scores are
    reals, returns the midpoint when that half lies entirely below the other, and otherwise
    tries every score as a threshold with ``score >= t`` meaning fake, keeping the last of
    the best. Accuracy is then computed with ``score > t``, so it is not always the maximum
    (:func:`best_threshold` gives the exact maximiser).
    """
    y, s = _arrays(labels, scores)
    if len(np.unique(y)) < 2:
        return None
    ordered = np.concatenate([s[y == 0], s[y == 1]])
    truth = np.concatenate([np.zeros(int(np.sum(y == 0))), np.ones(int(np.sum(y == 1)))])
    half = len(ordered) // 2
    if ordered[:half].max() <= ordered[half:].min():
        return float((ordered[:half].max() + ordered[half:].min()) / 2)
    # For each candidate, correct = reals below it + fakes at or above it (ties included).
    real_sorted = np.sort(ordered[truth == 0])
    fake_sorted = np.sort(ordered[truth == 1])
    reals_below = np.searchsorted(real_sorted, ordered, side="left")
    fakes_at_or_above = len(fake_sorted) - np.searchsorted(fake_sorted, ordered, side="left")
    correct = reals_below + fakes_at_or_above
    best = correct.max()
    last = int(np.flatnonzero(correct == best)[-1])
    return float(ordered[last])


def threshold_for_fpr(real_scores, target_fpr: float) -> float | None:
    """The lowest threshold at which at most ``target_fpr`` of ``real_scores`` score above it.

    With ``k = floor(target_fpr * n)`` reals allowed above, the threshold is the (k+1)-th
    highest real score, so (without ties) exactly ``k`` reals are called fake: the FPR is
    within one image of the target.
    """
    s = np.sort(np.asarray(real_scores, dtype=np.float64).ravel())[::-1]
    if len(s) == 0:
        return None
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target FPR must be in [0, 1], got {target_fpr}")
    k = int(math.floor(target_fpr * len(s) + 1e-9))
    if k >= len(s):
        return float(np.nextafter(s[-1], -np.inf))
    return float(s[k])


def tpr_at_fpr(labels, scores, target_fpr: float) -> float | None:
    """Share of fakes called fake at the threshold :func:`threshold_for_fpr` sets on the reals."""
    y, s = _arrays(labels, scores)
    if len(np.unique(y)) < 2:
        return None
    threshold = threshold_for_fpr(s[y == 0], target_fpr)
    return float(np.mean(s[y == 1] > threshold))


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
    two_class = len(np.unique(y)) == 2
    ufd_t = ufd_threshold(y, s)
    out = {
        "n_real": int(np.sum(y == 0)),
        "n_fake": int(np.sum(y == 1)),
        "real_acc": at["real_acc"],
        "fake_acc": at["fake_acc"],
        # With one class, "accuracy" is that class's accuracy: shown in its own column only.
        "acc": at["acc"] if two_class else None,
        "ap": average_precision(y, s),
        "auc": roc_auc(y, s),
        "tpr_at_fpr1": tpr_at_fpr(y, s, 0.01),
        "tpr_at_fpr5": tpr_at_fpr(y, s, 0.05),
        "best_acc": best_acc,
        "best_threshold": best_t,
        "ufd_acc": accuracy_at(y, s, ufd_t)["acc"] if ufd_t is not None else None,
        "ufd_threshold": ufd_t,
        "val_threshold_acc": accuracy_at(y, s, val_threshold)["acc"] if val_threshold is not None and two_class else None,
        "ece": expected_calibration_error(y, s) if two_class else None,
        "threshold": threshold,
    }
    return out


def _defined(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def mean_row(rows: list[dict], keys: list[str]) -> dict:
    """Mean of each key over the rows where it is defined (the field's mAP / mAcc)."""
    out = {}
    for key in keys:
        values = [r[key] for r in rows if _defined(r.get(key))]
        out[key] = float(np.mean(values)) if values else None
    return out


def common_mean(rows: list[dict], keys: list[str], name_key: str = "domain") -> tuple[dict, list[str]]:
    """Means of ``keys`` over the rows where every one of them is defined, and those rows' names.

    All columns of the returned mean cover the same domains, so mAcc and mAP are never
    averaged over different sets of generators.
    """
    covered = [r for r in rows if all(_defined(r.get(k)) for k in keys)]
    means = {k: (float(np.mean([r[k] for r in covered])) if covered else None) for k in keys}
    return means, [r[name_key] for r in covered]


# Resamples of the bootstrap intervals: the 2.5th and 97.5th percentiles of 1000 resamples move by
# about a tenth of the interval's width from seed to seed, enough for an interval shown to 2 digits.
BOOTSTRAP_RESAMPLES = 1000
CI_LEVEL = 0.95
# Counts drawn per chunk of resamples (resamples x images): bounds the memory of a 720k-image pool.
_BOOTSTRAP_CHUNK = 1 << 22


def _resample_counts(rng: np.random.Generator, strata: list[np.ndarray], n: int, resamples: int) -> np.ndarray:
    """[resamples, n] how often each image is drawn when each stratum (positions) is resampled to its own size."""
    offsets = (np.arange(resamples) * n)[:, None]
    drawn = [at[rng.integers(0, len(at), size=(resamples, len(at)))] + offsets for at in strata if len(at)]
    return np.bincount(np.concatenate([d.ravel() for d in drawn]), minlength=resamples * n).reshape(resamples, n)


def _weighted_ap(y_sorted: np.ndarray, last: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AP per row of ``weights`` [B, n] (image counts, scores sorted from the highest down; ``last``: ends of ties)."""
    tps = np.cumsum(weights * y_sorted, axis=1)[:, last]
    fps = np.cumsum(weights, axis=1)[:, last] - tps
    drawn = tps + fps
    precision = np.divide(tps, drawn, out=np.zeros(tps.shape), where=drawn > 0)
    steps = np.diff(np.concatenate([np.zeros((len(tps), 1)), tps], axis=1), axis=1) / tps[:, -1:]
    return np.sum(steps * precision, axis=1)


def bootstrap_intervals(labels, scores, threshold: float, seed: int = 0,
                        resamples: int = BOOTSTRAP_RESAMPLES, level: float = CI_LEVEL) -> dict:
    """Percentile intervals of AP and of accuracy at ``threshold`` over bootstrap resamples of the images.

    Stratified by class: each resample draws as many reals from the reals and fakes from the fakes
    as there are, so every resample has both classes and AP is always defined. ``None`` bounds for
    a domain without both classes. The same ``seed`` gives the same intervals.
    """
    y, s = _arrays(labels, scores)
    none = {"ap_ci_low": None, "ap_ci_high": None, "acc_ci_low": None, "acc_ci_high": None}
    if len(np.unique(y)) < 2:
        return none
    order = np.argsort(s, kind="mergesort")[::-1]
    y_sorted, s_sorted = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    correct = ((s_sorted > threshold) == (y_sorted == 1)).astype(np.float64)
    real_at, fake_at = np.flatnonzero(y_sorted == 0), np.flatnonzero(y_sorted == 1)
    rng = np.random.default_rng(seed)
    aps, accs = [], []
    step = max(1, _BOOTSTRAP_CHUNK // len(y))
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        weights = _resample_counts(rng, [real_at, fake_at], len(y), b)
        aps.append(_weighted_ap(y_sorted, last, weights))
        accs.append(weights @ correct / len(y))
    tail = 100 * (1 - level) / 2
    ap_lo, ap_hi = np.percentile(np.concatenate(aps), [tail, 100 - tail])
    acc_lo, acc_hi = np.percentile(np.concatenate(accs), [tail, 100 - tail])
    return {"ap_ci_low": float(ap_lo), "ap_ci_high": float(ap_hi), "acc_ci_low": float(acc_lo),
            "acc_ci_high": float(acc_hi)}
