"""The figures of an evaluation: ROC, PR, score histograms, robustness curves and block importance (PNG)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from deepfake.evaluation.metrics import average_precision, pr_curve, roc_auc, roc_curve
from deepfake.utils.fileio import atomic_write


def importance_figure(plt, importance: dict):
    """One bar per block: how much the layers head relies on that depth."""
    blocks, weights = importance["blocks"], importance["importance"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(blocks) + 1.5), 3.2))
    ax.bar(range(len(blocks)), [100 * w for w in weights], color="tab:purple")
    ax.set_xticks(range(len(blocks)), [str(b) for b in blocks])
    ax.axhline(100 / len(blocks), color="k", ls=":", lw=0.8, label="uniform")
    ax.set(xlabel="block (0 = embedding output)", ylabel="importance (%)", title="Learned block importance")
    ax.legend(fontsize=7)
    return fig


def write_plots(levels: list[dict], samples: list, out: Path, importance: dict | None = None,
                threshold: float | None = None) -> None:
    """ROC and PR curves (AUC / AP in the legends) and score histograms per domain (first level,
    with the decision ``threshold`` drawn); AP vs strength for sweeps; the learned block
    importance of a layers head."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    level = levels[0]
    fig_hist = histogram_figure(plt, level, samples, threshold)
    fig_roc, fig_pr, ax_roc, ax_pr, curves = _curve_figures(plt, level, samples)
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({level['label']})")
    ax_pr.set(xlabel="recall", ylabel="precision", title=f"Precision-recall ({level['label']})")
    if curves:
        for ax in (ax_roc, ax_pr):
            ax.legend(fontsize=7)
    figures = {"histograms.png": fig_hist}
    if curves:
        figures.update({"roc.png": fig_roc, "pr.png": fig_pr})
    else:
        plt.close(fig_roc)
        plt.close(fig_pr)
    if importance:
        figures["importance.png"] = importance_figure(plt, importance)
    if len(levels) > 1:
        figures["robustness.png"] = _robustness_figure(plt, levels)
    for name, fig in figures.items():
        if name != "histograms.png":  # laid out as it is drawn
            fig.tight_layout()
        atomic_write(out / name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)


def histogram_figure(plt, level: dict, samples: list, threshold: float | None):
    """A panel per domain: the histogram of P(fake) for its reals and fakes, with the decision ``threshold``."""
    labels = np.array([s.label for s in samples])
    generators = np.array([s.generator for s in samples])
    probs = level["probabilities"]
    names = list(dict.fromkeys(generators.tolist()))
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    # Constrained layout places the title and the legend above the panels with no band reserved by guess.
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows + 0.4), squeeze=False, layout="constrained")
    for i, name in enumerate(names):
        sel = (generators == name) & ~np.isnan(probs)
        y, s = labels[sel], probs[sel]
        ax = axes[i // cols][i % cols]
        present = [(c, lab, col) for c, lab, col in ((0, "real", "tab:blue"), (1, "fake", "tab:red")) if np.any(y == c)]
        if present:
            ax.hist([s[y == c] for c, _, _ in present], bins=20, range=(0, 1), label=[lab for _, lab, _ in present],
                    color=[col for _, _, col in present])
        if threshold is not None:
            ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
        ax.set_title(name if len(present) == 2 else f"{name} ({present[0][1] if present else 'no'} images only)",
                     fontsize=9)
        ax.set_xlabel("P(fake)", fontsize=8)
        ax.set_ylabel("images", fontsize=8)
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].axis("off")
    # One legend for all panels, above them: inside a panel it covered the bars near 0 or 1.
    legend = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside upper right", ncol=len(legend), fontsize=7,
                   frameon=False)
    fig.suptitle(f"P(fake) per domain ({level['label']})")
    return fig


def _curve_figures(plt, level: dict, samples: list) -> tuple:
    """ROC and PR curves of every domain where both classes are present (undefined otherwise)."""
    labels = np.array([s.label for s in samples])
    generators = np.array([s.generator for s in samples])
    probs = level["probabilities"]
    fig_roc, ax_roc = plt.subplots(figsize=(6, 5))
    fig_pr, ax_pr = plt.subplots(figsize=(6, 5))
    curves = 0
    for name in dict.fromkeys(generators.tolist()):
        sel = (generators == name) & ~np.isnan(probs)
        y, s = labels[sel], probs[sel]
        if np.any(y == 0) and np.any(y == 1):
            fpr, tpr = roc_curve(y, s)
            ax_roc.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, s):.3f})")
            precision, recall = pr_curve(y, s)
            ax_pr.plot(recall, precision, label=f"{name} (AP {average_precision(y, s):.3f})")
            curves += 1
    return fig_roc, fig_pr, ax_roc, ax_pr, curves


def _robustness_figure(plt, levels: list[dict]):
    """Mean AP and per-generator AP against each perturbation's strength."""
    kinds = [("jpeg_quality", "JPEG quality"), ("gaussian_sigma", "blur sigma"), ("resize_scale", "resize scale")]
    used = [(k, t) for k, t in kinds if any(lv["perturbation"].get(k) is not None for lv in levels)]
    fig, axes = plt.subplots(1, len(used), figsize=(5 * len(used), 4), squeeze=False)
    clean = next((lv for lv in levels if all(v is None for v in lv["perturbation"].values())), None)
    for ax, (key, title) in zip(axes[0], used):
        series = [lv for lv in levels if lv["perturbation"].get(key) is not None]
        clean_x = {"jpeg_quality": 100, "gaussian_sigma": 0.0, "resize_scale": 1.0}[key]
        points = ([(clean_x, clean)] if clean else []) + [(lv["perturbation"][key], lv) for lv in series]
        points.sort(key=lambda p: p[0], reverse=key == "jpeg_quality")
        xs = [p[0] for p in points]
        for name in [r["domain"] for r in points[0][1]["rows"] if not r["category"]]:
            ys = [next((r["ap"] for r in lv["rows"] if r["domain"] == name), None) for _, lv in points]
            ax.plot(xs, [np.nan if y is None else y for y in ys], marker=".", lw=0.8, alpha=0.7, label=name)
        ax.plot(xs, [np.nan if lv["mean"]["ap"] is None else lv["mean"]["ap"] for _, lv in points],
                "k-", lw=2, marker="o", label="mean")
        ax.set(xlabel=title, ylabel="AP", title=f"AP vs {title}", ylim=(0, 1.02))
        if key == "jpeg_quality":
            ax.invert_xaxis()
        ax.legend(fontsize=7)
    return fig
