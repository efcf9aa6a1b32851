"""Evaluation outputs: console table, results.json/.csv/.md, scores.csv and PNG plots.

Every number in results.json is a function of scores.csv (path, generator, category,
label, probability per perturbation level), so anyone can recompute or re-threshold it.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
from pathlib import Path

import numpy as np

from deepfake.fileio import atomic_write, atomic_write_json, atomic_write_text, display_path

log = logging.getLogger(__name__)

RESULT_FILES = ("results.json", "results.csv", "results.md", "scores.csv")
COLUMNS = [  # key, header, kind
    ("n_real", "n_real", "int"),
    ("n_fake", "n_fake", "int"),
    ("real_acc", "real_acc", "pct"),
    ("fake_acc", "fake_acc", "pct"),
    ("acc", "acc", "pct"),
    ("ap", "AP", "pct"),
    ("auc", "AUC", "pct"),
    ("tpr_at_fpr1", "TPR@1%", "pct"),
    ("tpr_at_fpr5", "TPR@5%", "pct"),
    ("best_acc", "max_acc", "pct"),
    ("best_threshold", "max_thr", "thr"),
    ("ufd_acc", "ufd_acc", "pct"),
    ("val_threshold_acc", "val_thr_acc", "pct"),
    ("ece", "ECE", "thr"),
]
CSV_FIELDS = ["level", "domain", "generator", "category", "family", "kind", "threshold"] + [c[0] for c in COLUMNS]
LEGEND = ("max_acc: accuracy at the threshold that maximises it on these very labels (the exact maximiser, an upper "
          "bound that no deployed detector reaches); ufd_acc: UniversalFakeDetect's validate.py procedure for the same "
          "idea, comparable with its paper; TPR@k%: fakes caught at the threshold letting k% of the reals through.")


def default_output_dir(args: argparse.Namespace) -> Path:
    checkpoint = Path(args.checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return run_dir / f"eval_{Path(args.dataset_dir).resolve().name}"


def prepare_output_dir(args: argparse.Namespace) -> Path:
    """The results folder; refuses to write over earlier results without ``--overwrite``."""
    out = Path(args.output_dir) if args.output_dir else default_output_dir(args)
    existing = [name for name in RESULT_FILES if (out / name).exists()]
    if args.output and Path(args.output).exists():
        existing.append(str(args.output))
    if existing and not args.overwrite:
        raise FileExistsError(f"{out}: holds earlier results ({', '.join(existing)}); "
                              f"pass --overwrite to replace them or choose another --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _fmt(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if kind == "int":
        return str(int(value))
    if kind == "pct":
        return f"{100 * value:.2f}"
    return f"{value:.3f}"


def ordered_rows(level: dict) -> list[dict]:
    """Rows in reading order: each family's domains (categories after their domain) and its mean, then the mean."""
    family_means = level.get("family_means") or []
    if not family_means:
        return level["rows"] + [level["mean"]]
    out = []
    for fm in family_means:
        out.extend(r for r in level["rows"] if r.get("family") == fm["family"])
        out.append(fm)
    out.extend(r for r in level["rows"] if r.get("family") not in {fm["family"] for fm in family_means})
    return out + [level["mean"]]


def coverage_notes(level: dict) -> list[str]:
    """One line per mean that leaves domains out, naming them."""
    notes = []
    for row in (level.get("family_means") or []) + [level["mean"]]:
        if row.get("not_covered"):
            notes.append(f"{row['domain']}: over {', '.join(row['covers']) or 'no domain'}; left out (one class, "
                         f"metrics undefined): {', '.join(row['not_covered'])}")
    return notes


def format_table(level: dict, markdown: bool = False) -> str:
    """One aligned table: a row per domain (categories indented), family means, the mean row last."""
    header = ["domain"] + [c[1] for c in COLUMNS]
    body, means = [], []
    for row in ordered_rows(level):
        name = row["domain"]
        if row.get("category") and not markdown:
            name = "  " + row["category"]
        body.append([name] + [_fmt(row.get(key), kind) for key, _, kind in COLUMNS])
        means.append(row.get("kind") == "mean")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(COLUMNS)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    def line(cells):
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))
    rule = "-" * len(line(header))
    out = [line(header), rule]
    for cells, is_mean in zip(body, means):
        if is_mean:
            out.append(rule)
        out.append(line(cells))
    return "\n".join(out)


def _clean(obj):
    """JSON-safe copy: NaN -> None, numpy scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def json_safe(obj):
    """JSON-safe copy of a results document (NaN -> null, numpy numbers -> Python numbers)."""
    return _clean(obj)


def _csv_text(rows: list[dict], fields: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_outputs(results: dict, samples: list, out: Path, args: argparse.Namespace) -> None:
    """Print the tables and write every result file (each atomically)."""
    levels = results["levels"]
    md_parts = [f"Checkpoint: `{results['checkpoint']}`  \nTower: `{results['tower'].get('model')}`, "
                f"preprocessing `{results['preprocess']['mode']}`, threshold {results['threshold']}\n"]
    csv_rows, score_rows = [], []
    for level in levels:
        print(f"\n== {level['label']} ==")
        print(format_table(level))
        notes = coverage_notes(level)
        for note in notes:
            print(note)
        md_notes = "".join(f"\n- {n}" for n in notes)
        md_parts.append(f"### {level['label']}\n\n{format_table(level, markdown=True)}\n{md_notes}\n")
        for row in ordered_rows(level):
            csv_rows.append({"level": level["label"], "threshold": results["threshold"],
                             **{k: ("" if v is None else v) for k, v in row.items() if not isinstance(v, list)}})
        skipped = {r["path"]: r["reason"] for r in level["skipped"]}
        for sample, prob in zip(samples, level["probabilities"]):
            score_rows.append({
                "level": level["label"], "path": sample.path, "generator": sample.generator,
                "category": sample.category, "label": sample.label,
                "probability": "" if np.isnan(prob) else repr(float(prob)), "skipped": skipped.get(sample.path, ""),
            })
        n_skipped = len(level["skipped"])
        if n_skipped:
            print(f"{n_skipped} file(s) could not be read and are not counted (see scores.csv)")
    importance = results.get("block_importance")
    if importance:
        print("\n" + format_importance(importance))
        image = "" if args.no_plots else "![block importance](importance.png)\n\n"
        md_parts.insert(2, f"### Block importance (learned by the layers head)\n\n{image}"
                           f"{format_importance(importance, markdown=True)}\n")
    print(LEGEND)
    md_parts.append(LEGEND + "\n")
    doc = _clean({**results, "levels": [{k: v for k, v in lv.items() if k != "probabilities"} for lv in levels]})
    atomic_write_json(out / "results.json", doc)
    atomic_write_text(out / "results.csv", _csv_text(csv_rows, CSV_FIELDS))
    atomic_write_text(out / "results.md", "\n".join(md_parts))
    atomic_write_text(out / "scores.csv", _csv_text(
        score_rows, ["level", "path", "generator", "category", "label", "probability", "skipped"]))
    if args.output:
        atomic_write_json(args.output, doc)
    if not args.no_plots:
        write_plots(levels, samples, out, results.get("block_importance"), threshold=results["threshold"])
    print(f"\nresults in {display_path(out)}")


def format_importance(importance: dict, markdown: bool = False) -> str:
    """The layers head's share per block, as a table (block, importance in %)."""
    pairs = list(zip(importance["blocks"], importance["importance"]))
    if markdown:
        return "\n".join(["| block | importance |", "|---:|---:|"] + [f"| {b} | {100 * w:.2f} |" for b, w in pairs])
    top = max(pairs, key=lambda p: p[1])[0]
    return "block importance: " + "  ".join(f"{b}:{100 * w:.1f}%" for b, w in pairs) + f"  (most: block {top})"


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
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    from deepfake.metrics import average_precision

    level = levels[0]
    labels = np.array([s.label for s in samples])
    generators = np.array([s.generator for s in samples])
    probs = level["probabilities"]
    names = list(dict.fromkeys(generators.tolist()))
    fig_roc, ax_roc = plt.subplots(figsize=(6, 5))
    fig_pr, ax_pr = plt.subplots(figsize=(6, 5))
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig_hist, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    curves = 0
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
        # ROC and PR are undefined without both classes: such domains get no curve at all.
        if len(present) == 2:
            fpr, tpr, _ = roc_curve(y, s)
            ax_roc.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
            precision, recall, _ = precision_recall_curve(y, s)
            ax_pr.plot(recall, precision, label=f"{name} (AP {average_precision(y, s):.3f})")
            curves += 1
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].axis("off")
    # One legend for all panels, above them: inside a panel it covered the bars near 0 or 1.
    legend = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig_hist.legend(list(legend.values()), list(legend), loc="upper right", ncol=len(legend), fontsize=7,
                        frameon=False)
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC ({level['label']})")
    ax_pr.set(xlabel="recall", ylabel="precision", title=f"Precision-recall ({level['label']})")
    if curves:
        for ax in (ax_roc, ax_pr):
            ax.legend(fontsize=7)
    fig_hist.suptitle(f"P(fake) per domain ({level['label']})")
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
        fig.tight_layout(rect=(0, 0, 1, 0.9) if name == "histograms.png" else (0, 0, 1, 1))
        atomic_write(out / name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)


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
