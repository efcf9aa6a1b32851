"""The outputs of ``deepfake compare``: one table (console, results.md, results.csv), results.json,
scores.csv (every detector's P(fake) per image) and ap.png (AP per generator, one bar per detector)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from deepfake.evaluation.reports import _csv_text, json_safe
from deepfake.utils.fileio import atomic_write, atomic_write_json, atomic_write_text
from deepfake.utils.text import pct

COMPARE_FILES = ("results.json", "results.csv", "results.md", "scores.csv", "ap.png")


def table_columns(results: dict) -> list[tuple[str, str, str]]:
    """(detector, metric key, header) per column: AP and acc at 0.5, and acc at the validation threshold where defined."""
    columns = []
    for record in results["detectors"]:
        name = record["name"]
        columns += [(name, "ap", f"{name} AP"), (name, "acc", f"{name} acc")]
        if record.get("val_threshold") is not None:
            columns.append((name, "val_threshold_acc", f"{name} acc@val"))
    return columns


def table_rows(results: dict) -> list[dict]:
    """One flat row per generator, then the mean: n_real, n_fake and ``DETECTOR:metric`` cells."""
    per = results["results"]
    first = per[results["detectors"][0]["name"]]
    out = []
    for i, row in enumerate([*first["rows"], first["mean"]]):
        flat = {"domain": row["domain"], "kind": row["kind"], "n_real": row["n_real"], "n_fake": row["n_fake"]}
        for name, value in per.items():
            cells = value["rows"][i] if i < len(first["rows"]) else value["mean"]
            flat.update({f"{name}:{k}": cells.get(k) for k in ("ap", "acc", "val_threshold_acc")})
        out.append(flat)
    return out


def format_comparison(results: dict, markdown: bool = False) -> str:
    """The table: a row per generator and the mean; per detector AP and accuracy (percent)."""
    columns = table_columns(results)
    header = ["domain", "n_real", "n_fake"] + [h for _, _, h in columns]
    body = [[r["domain"], str(r["n_real"]), str(r["n_fake"])] + [pct(r.get(f"{n}:{k}")) for n, k, _ in columns]
            for r in table_rows(results)]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(c) for c in body[:-1]), rule, line(body[-1])])


def _scores_csv(samples: list, probs: dict[str, np.ndarray]) -> str:
    rows = [{"path": s.path, "generator": s.generator, "category": s.category, "label": s.label,
             **{name: ("" if math.isnan(p[i]) else repr(float(p[i]))) for name, p in probs.items()}}
            for i, s in enumerate(samples)]
    return _csv_text(rows, ["path", "generator", "category", "label", *probs])


def write_comparison(results: dict, samples: list, probs: dict[str, np.ndarray], out: Path) -> None:
    """Print the table and write every output file into ``out`` (each write atomic)."""
    passes = results["passes"]
    title = (f"{len(results['detectors'])} detector(s) on {results['dataset_dir']} ({results['label']}), "
             f"{len(passes)} tower pass(es); acc at {results['threshold']:g}, acc@val at each head's validation "
             f"threshold")
    print(f"\n{title}\n{format_comparison(results)}")
    atomic_write_json(out / "results.json", json_safe(results))
    atomic_write_text(out / "results.md", f"{title}\n\n{format_comparison(results, markdown=True)}\n")
    rows = table_rows(results)
    fields = list(rows[0]) if rows else ["domain"]
    atomic_write_text(out / "results.csv", _csv_text(json_safe(rows), fields))
    atomic_write_text(out / "scores.csv", _scores_csv(samples, probs))
    write_ap_figure(results, out / "ap.png")
    print(f"\nresults in {out}")


def write_ap_figure(results: dict, path: Path) -> None:
    """AP per generator and the mean, one bar per detector (grouped); the mean's values written on its bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = table_rows(results)
    names = [r["name"] for r in results["detectors"]]
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 + len(rows) * (0.35 + 0.22 * len(names))), 3.8))
    x = np.arange(len(rows))
    for j, name in enumerate(names):
        values = [100 * (r.get(f"{name}:ap") if r.get(f"{name}:ap") is not None else float("nan")) for r in rows]
        bars = ax.bar(x + (j - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, labels=[f"{values[-1]:.1f}" if k == len(rows) - 1 else "" for k in range(len(rows))],
                     fontsize=7, padding=1, rotation=90 if len(names) > 2 else 0)
    ax.axhline(50, color="k", ls=":", lw=0.8)
    ax.axvline(len(rows) - 1.5, color="0.6", lw=0.8)  # the mean apart from the generators
    ax.set_xticks(x, [r["domain"] for r in rows], rotation=30 if len(rows) > 6 else 0, ha="right" if len(rows) > 6 else "center")
    ax.set(ylabel="AP (%)", ylim=(0, 112), title=f"AP per generator ({results['label']}; dotted: 50%, chance with as "
                                                 f"many fakes as reals)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
