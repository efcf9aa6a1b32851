"""Evaluation outputs: console table, results.json/.csv/.md, scores.csv and PNG plots.

Every number in results.json is a function of scores.csv (path, generator, category,
label, probability per perturbation level), so anyone can recompute or re-threshold it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

import numpy as np

from deepfake.evaluation.domains import SMALL_DOMAIN
from deepfake.evaluation.plots import write_plots
from deepfake.model.releases import is_detector_name
from deepfake.utils.fileio import atomic_write_json, atomic_write_text, display_path, refuse_overwrite
from deepfake.utils.text import pct

log = logging.getLogger(__name__)

RESULT_FILES = ("results.json", "results.csv", "results.md", "scores.csv")
COLUMNS = [  # key, header, kind
    ("n_real", "n_real", "int"),
    ("n_fake", "n_fake", "int"),
    ("real_acc", "real_acc", "pct"),
    ("fake_acc", "fake_acc", "pct"),
    ("acc", "acc", "pct"),
    ("acc_ci", "acc 95% CI", "ci"),
    ("ap", "AP", "pct"),
    ("ap_ci", "AP 95% CI", "ci"),
    ("auc", "AUC", "pct"),
    ("tpr_at_fpr1", "TPR@1%", "pct"),
    ("tpr_at_fpr5", "TPR@5%", "pct"),
    ("best_acc", "max_acc", "pct"),
    ("best_threshold", "max_thr", "thr"),
    ("ufd_acc", "ufd_acc", "pct"),
    ("val_threshold_acc", "val_thr_acc", "pct"),
    ("ece", "ECE", "thr"),
    ("ood", "OOD", "pct"),
]
CSV_FIELDS = (["level", "domain", "generator", "category", "family", "kind", "threshold"]
              + [k for key, _, kind in COLUMNS for k in ((f"{key}_low", f"{key}_high") if kind == "ci" else (key,))]
              + ["small"])
SMALL_MARK = " *"
HEADLINE_COLUMNS = [("n_real", "n_real", "int"), ("n_fake", "n_fake", "int"), ("real_acc", "real_acc", "pct"),
                    ("fake_acc", "fake_acc", "pct"), ("acc", "acc", "pct"), ("ap", "AP", "pct")]
LEGEND = ("max_acc: accuracy at the threshold that maximises it on these very labels (the exact maximiser, an upper "
          "bound that no deployed detector reaches); ufd_acc: accuracy at the threshold UniversalFakeDetect's "
          "validate.py searches on these labels (find_best_threshold), also an oracle number: its repository writes "
          "only AP and the accuracy at 0.5 (ap.txt, acc0.txt), so compare those (--protocol ufd prints them first); "
          "TPR@k%: fakes caught at the threshold letting k% of the reals through.")


def default_output_dir(checkpoint: str, dataset_dir: str) -> Path:
    """``RUN/eval_DATASET``: the results folder beside the checkpoint's run; ``eval_NAME_DATASET`` here for a
    released detector's name (its run lies in the cache, where nobody would look for results)."""
    path = Path(checkpoint)
    if is_detector_name(checkpoint) and not path.exists():
        return Path(f"eval_{checkpoint}_{Path(dataset_dir).resolve().name}")
    run_dir = path if path.is_dir() else path.parent
    return run_dir / f"eval_{Path(dataset_dir).resolve().name}"


def prepare_output_dir(checkpoint: str, dataset_dir: str, output_dir: str | None, output: str | None,
                       overwrite: bool) -> Path:
    """The results folder; refuses to write over earlier results without ``overwrite``."""
    out = Path(output_dir) if output_dir else default_output_dir(checkpoint, dataset_dir)
    extra = [output] if output and Path(output).exists() else []
    refuse_overwrite(out, RESULT_FILES, overwrite, extra=extra)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value, kind: str) -> str:
    if kind == "ci":
        low, high = value
        return "n/a" if _missing(low) or _missing(high) else f"{pct(low)}-{pct(high)}"
    if _missing(value):
        return "n/a"
    if kind == "int":
        return str(int(value))
    if kind == "pct":
        return pct(value)
    return f"{value:.3f}"


def ordered_rows(level: dict) -> list[dict]:
    """Rows in reading order: each family's domains (categories after their domain) and its mean, then the mean."""
    family_means = level.get("family_means") or []
    pooled = [level["pooled"]] if level.get("pooled") else []
    if not family_means:
        return level["rows"] + [level["mean"]] + pooled
    out = []
    for fm in family_means:
        out.extend(r for r in level["rows"] if r.get("family") == fm["family"])
        out.append(fm)
    out.extend(r for r in level["rows"] if r.get("family") not in {fm["family"] for fm in family_means})
    return out + [level["mean"]] + pooled


def coverage_notes(level: dict) -> list[str]:
    """One line per mean that leaves domains out, naming them."""
    notes = []
    for row in (level.get("family_means") or []) + [level["mean"]]:
        if row.get("not_covered"):
            notes.append(f"{row['domain']}: over {', '.join(row['covers']) or 'no domain'}; left out (one class, "
                         f"metrics undefined): {', '.join(row['not_covered'])}")
    return notes


def _cell(row: dict, key: str, kind: str):
    return (row.get(f"{key}_low"), row.get(f"{key}_high")) if kind == "ci" else row.get(key)


def format_table(level: dict, markdown: bool = False, columns: list[tuple[str, str, str]] = COLUMNS) -> str:
    """One aligned table: a row per domain (categories indented), family means, the mean row last."""
    header = ["domain"] + [c[1] for c in columns]
    body, means = [], []
    for row in ordered_rows(level):
        name = row["domain"]
        if row.get("category") and not markdown:
            name = "  " + row["category"]
        name += SMALL_MARK if row.get("small") else ""
        body.append([name] + [_fmt(_cell(row, key, kind), kind) for key, _, kind in columns])
        means.append(row.get("kind") == "mean")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
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


def headline_title(protocol: dict) -> str:
    """The line above the headline table: which repository's numbers, at which threshold."""
    return f"published headline, --protocol {protocol['name']} ({protocol['headline']}; threshold 0.5):"


def certainty_notes(level: dict, results: dict) -> list[str]:
    """The lines under the table: the mean of domains beside the pooled images, small domains, the thresholds."""
    notes = []
    mean, pooled = level["mean"], level.get("pooled")
    if pooled and pooled.get("ap") is not None:
        ci = _fmt(_cell(pooled, "ap_ci", "ci"), "ci")
        notes.append(f"AP: {_fmt(mean.get('ap'), 'pct')} as the mean of {len(mean.get('covers') or [])} domain(s); "
                     f"{_fmt(pooled['ap'], 'pct')} (95% CI {ci}) over the {pooled['n_real'] + pooled['n_fake']} "
                     "images pooled")
    small = [r["domain"] for r in level["rows"] if r.get("small")]
    if small:
        notes.append(f"*{', '.join(small[:6])}{', ...' if len(small) > 6 else ''}: fewer than {SMALL_DOMAIN} images "
                     "of a class, too few for its AP and accuracy to mean much (see their 95% intervals)")
    notes.append(threshold_note(results))
    ood = results.get("ood") or {}
    notes.append(f"OOD: share of images whose features lie outside the head's training distribution ({ood['note']})"
                 if ood.get("note") else "OOD: n/a, the head stores no statistics of its training features")
    return notes


def threshold_note(results: dict) -> str:
    """Which threshold labels each column, and the one predict, serve and the API label at."""
    val = results.get("val_threshold")
    val_text = (f"val_thr_acc at the validation threshold {val:.4g}, the one predict, serve and the API label at "
                "by default" if val is not None else "the checkpoint stores no validation threshold")
    source = results.get("threshold_source") or "checkpoint"
    source = "the checkpoint's reporting threshold" if source == "checkpoint" else f"from {source}"
    return (f"real_acc, fake_acc, acc and the histograms: fake when P(fake) > {results['threshold']:.4g} "
            f"({source}); {val_text}")


def _print_level(level: dict, protocol: dict | None, results: dict | None = None) -> str:
    """Print one level's tables (the published headline first under --protocol); its results.md part."""
    print(f"\n== {level['label']} ==")
    md = f"### {level['label']}\n\n"
    headline = level.get("headline")
    if headline is not None and protocol is not None:
        print(headline_title(protocol))
        print(format_table(headline, columns=HEADLINE_COLUMNS))
        print("\nevery column (acc columns at the evaluation's threshold):")
        md += f"{headline_title(protocol)}\n\n{format_table(headline, True, HEADLINE_COLUMNS)}\n\nEvery column:\n\n"
    print(format_table(level))
    notes = coverage_notes(level) + (certainty_notes(level, results) if results is not None else [])
    for note in notes:
        print(note)
    md_notes = "".join(f"\n- {n}" for n in notes)
    return md + f"{format_table(level, markdown=True)}\n{md_notes}\n"


def write_outputs(results: dict, samples: list, out: Path, output: str | None = None, plots: bool = True) -> None:
    """Print the tables and write every result file (each atomically)."""
    levels = results["levels"]
    md_parts = [f"Checkpoint: `{results['checkpoint']}`  \nTower: `{results['tower'].get('model')}`, "
                f"preprocessing `{results['preprocess']['mode']}`, threshold {results['threshold']}\n"]
    csv_rows, score_rows = [], []
    for level in levels:
        md_parts.append(_print_level(level, results.get("protocol"), results))
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
        image = "" if not plots else "![block importance](importance.png)\n\n"
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
    if output:
        atomic_write_json(output, doc)
    if plots:
        write_plots(levels, samples, out, results.get("block_importance"), threshold=results["threshold"])
    print(f"\nresults in {display_path(out)}")


def format_importance(importance: dict, markdown: bool = False) -> str:
    """The layers head's share per block, as a table (block, importance in %)."""
    pairs = list(zip(importance["blocks"], importance["importance"]))
    if markdown:
        return "\n".join(["| block | importance |", "|---:|---:|"] + [f"| {b} | {100 * w:.2f} |" for b, w in pairs])
    top = max(pairs, key=lambda p: p[1])[0]
    return "block importance: " + "  ".join(f"{b}:{100 * w:.1f}%" for b, w in pairs) + f"  (most: block {top})"
