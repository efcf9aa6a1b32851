"""Towers side by side: the same data, the same cache, the same head, one table.

    python benchmarks/compare_towers.py --models LanguageBind/LanguageBind_Image,facebook/dinov2-large,spectrum \
        --dataset_dir data/progan --test_root data/test --output_dir results/towers
    python benchmarks/compare_towers.py --demo --output_dir results/towers-demo   # offline, tiny towers

For each tower: features are extracted once into the shared cache (``--cache_dir``; a second
run extracts nothing), the seed's head is trained on them (``--seed``, same flags for every
tower; any further flag is passed on to the training command, e.g. ``--head``), and the head
is evaluated on ``--test_root``. Prints one per-generator table with a column group per
tower (AP, accuracy at the checkpoint's threshold, ROC-AUC), and writes it to
``results.md`` and ``results.json`` (with every tower's full results) in ``--output_dir``.

``--demo`` builds everything offline: a photo-sized synthetic benchmark (1024 px, weak
up-sampling traces, trained on ``tconv``, tested on ``tconv`` and ``pixelshuffle``) and a tiny
random tower of every family saved with transformers' ``save_pretrained`` (their features are
random projections: the run shows the machinery, not which tower is better), plus the spectral
baseline: its default tiles, the 256 px centre crop and the 512 px centred window; and two fused
towers beside their parts (``A+B``: one head on both parts' features, each part's own cache reused).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfake.cli.args import setup_logging, train_config, train_parser  # noqa: E402
from deepfake.config import DataConfig, EvalConfig, RuntimeConfig, TrainConfig  # noqa: E402
from deepfake.evaluation.run import evaluate  # noqa: E402
from deepfake.towers.fused import fused_parts  # noqa: E402
from deepfake.training.run import train  # noqa: E402
from deepfake.utils.fileio import atomic_write_json, atomic_write_text  # noqa: E402

log = logging.getLogger("compare_towers")

METRICS = (("ap", "AP"), ("acc", "acc"), ("auc", "AUC"))
DEMO_KINDS = ("clip", "siglip", "siglip2", "dinov2", "dinov2_registers", "dinov3")


def tower_label(model: str) -> str:
    """A short column-group name: the hub id's or folder's last part (of each part, for a fused tower)."""
    parts = fused_parts(model)
    if parts is not None:
        return "+".join(tower_label(part) for part in parts)
    return Path(model.rstrip("/")).name or model


def describe_preprocess(preprocess: dict) -> str:
    """``tiles 256``, or each part's for a fused tower (``tiles 256 + resize 224``)."""
    parts = preprocess.get("parts") or [preprocess]
    return " + ".join(f"{part['mode']} {part['size']}" for part in parts)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def comparison_rows(results: dict[str, dict]) -> list[dict]:
    """One row per generator (then the mean): for each tower, its AP, acc and AUC."""
    domains: list[str] = []
    for res in results.values():
        for row in res["levels"][0]["rows"]:
            if not row.get("category") and row["domain"] not in domains:
                domains.append(row["domain"])
    table = []
    for domain in [*domains, "mean"]:
        line = {"domain": domain}
        for label, res in results.items():
            level = res["levels"][0]
            row = level["mean"] if domain == "mean" else next(
                (r for r in level["rows"] if r["domain"] == domain and not r.get("category")), {})
            line[label] = {key: row.get(key) for key, _ in METRICS}
        table.append(line)
    return table


def format_console(table: list[dict], labels: list[str]) -> str:
    """Fixed-width table with a header line naming each tower above its column group."""
    width = max(9, *(len(r["domain"]) for r in table))
    cell = 7
    group = len(METRICS) * (cell + 1) - 1
    names = [label if len(label) <= group else label[: group - 1] + "~" for label in labels]
    lines = [" " * width + " | " + " | ".join(n.center(group) for n in names),
             "generator".ljust(width) + " | " + " | ".join(" ".join(h.rjust(cell) for _, h in METRICS) for _ in labels)]
    lines.append("-" * len(lines[1]))
    for row in table:
        cells = [" ".join(_pct(row[label][key]).rjust(cell) for key, _ in METRICS) for label in labels]
        lines.append(row["domain"].ljust(width) + " | " + " | ".join(cells))
    return "\n".join(lines)


def format_markdown(table: list[dict], labels: list[str]) -> str:
    header = ["generator"] + [f"{label} {h}" for label in labels for _, h in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in table:
        cells = [_pct(row[label][key]) for label in labels for key, _ in METRICS]
        lines.append("| " + " | ".join([row["domain"], *cells]) + " |")
    return "\n".join(lines) + "\n"


def build_demo(root: Path, seed: int) -> tuple[list[str], Path, Path]:
    """Tiny towers of every family and a photo-sized synthetic benchmark under ``root``."""
    from deepfake.data.synthetic import generate
    from deepfake.towers.tiny import save_tower

    models = ["spectrum-tiles256", "spectrum-crop256", "spectrum-window512"]  # the gray analyses
    for kind in DEMO_KINDS:
        # One of them sharded, as large checkpoints are on the hub.
        models.append(str(save_tower(kind, root / "towers" / f"tiny-{kind}", sharded=kind == "dinov2_registers")))
    # Fused entries beside their parts: two spectral analyses, and a semantic tower with the spectral one.
    models += ["spectrum-tiles256+spectrum-crop256", f"{root / 'towers' / 'tiny-clip'}+spectrum-tiles256"]
    data = root / "data"
    if not (data / "test").is_dir():
        generate(data, n_train=10, n_val=2, n_test=6, seed=seed, sizes=(1024, 1024), jpeg_share=0.0, trace=0.15,
                 test_families=("tconv", "pixelshuffle"))
    return models, data, data / "test"


def compare(models: list[str], base: TrainConfig, test_root: Path, out: Path, extra: list[str]) -> dict:
    """Train (``base``, one run per tower) and evaluate one head per tower; returns {"table", "towers"} and writes
    the outputs. ``extra``: the training flags given beyond the defaults, recorded with the results."""
    dataset_dir, seed, num_epochs = base.data.dataset_dir, base.seed, base.schedule.num_epochs
    labels: list[str] = []
    results: dict[str, dict] = {}
    towers: dict[str, dict] = {}
    for model in models:
        label = tower_label(model)
        if label in labels:
            raise ValueError(f"two towers named {label!r}; give them folders with different names")
        labels.append(label)
        run_dir, eval_dir = out / "runs" / label, out / "eval" / label
        start = time.perf_counter()
        # Each tower's own tables stay in its eval folder; the console gets the one comparison table.
        with contextlib.redirect_stdout(io.StringIO()):
            summary = train(replace(base, output_dir=str(run_dir), tower=replace(base.tower, model=model)))
            train_seconds = time.perf_counter() - start
            results[label] = evaluate(EvalConfig(
                checkpoint=str(run_dir), data=DataConfig(dataset_dir=str(test_root)), output_dir=str(eval_dir),
                no_plots=True, overwrite=base.overwrite, cache=base.cache, runtime=RuntimeConfig(quiet=base.runtime.quiet)))
        tower = results[label]["tower"]
        towers[label] = {"model": model, "tower": tower, "preprocess": results[label]["preprocess"],
                         "best_val_ap": summary.get("best_val_ap"), "train_seconds": round(train_seconds, 2)}
        log.info("%s: %s feature, %d-d, val AP %.4f; per-category table in %s", label, tower.get("feature"),
                 tower.get("feature_dim"), summary.get("best_val_ap") or float("nan"), eval_dir / "results.md")
    table = comparison_rows(results)
    console = format_console(table, labels)
    print(console)
    markdown = format_markdown(table, labels)
    described = "\n".join(f"- `{label}`: {t['tower'].get('family')} tower, feature {t['tower'].get('feature')} "
                          f"({t['tower'].get('feature_dim')}-d), preprocessing {describe_preprocess(t['preprocess'])}"
                          for label, t in towers.items())
    atomic_write_text(out / "results.md", f"{markdown}\n{described}\n")
    document = {"dataset_dir": str(dataset_dir), "test_root": str(test_root), "seed": seed, "num_epochs": num_epochs,
                "extra_train_flags": extra, "towers": towers, "table": table,
                "results": {label: {k: v for k, v in r.items() if k != "levels"} | {
                    "levels": [{k: v for k, v in lv.items() if k != "probabilities"} for lv in r["levels"]]}
                    for label, r in results.items()}}
    atomic_write_json(out / "results.json", document)
    return document


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated towers: hub ids, local directories, spectrum")
    p.add_argument("--dataset_dir", default=None, help="training data (any layout train_ClassifierHead.py reads)")
    p.add_argument("--test_root", default=None, help="test data (any layout test_ClassifierHead.py reads)")
    p.add_argument("--output_dir", required=True, help="runs, evaluations, results.md and results.json")
    p.add_argument("--cache_dir", default=None, help="shared feature cache (default: OUTPUT_DIR/cache)")
    p.add_argument("--seed", type=int, default=512)
    p.add_argument("--num_epochs", type=int, default=None, help="head epochs (default 10; 30 with --demo)")
    p.add_argument("--overwrite", action="store_true", help="replace the runs and results of an earlier comparison")
    p.add_argument("--demo", action="store_true", help="offline: tiny towers of every family + synthetic photos")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args, extra = p.parse_known_args(argv)
    setup_logging()
    out = Path(args.output_dir)
    results_json = out / "results.json"
    if results_json.exists() and not args.overwrite:
        log.error("%s: holds an earlier comparison; pass --overwrite or choose another --output_dir", out)
        return 2
    cache_dir = Path(args.cache_dir) if args.cache_dir else out / "cache"
    try:
        num_epochs = args.num_epochs or (30 if args.demo else 10)
        if args.demo:
            demo_models, dataset_dir, test_root = build_demo(out / "demo", args.seed)
            if not any(flag.startswith("--learning_rate") for flag in extra):
                extra = ["--learning_rate", "1e-3", *extra]  # a few dozen images: larger steps than the default
            models = [m.strip() for m in args.models.split(",")] if args.models else demo_models
            dataset_dir = Path(args.dataset_dir) if args.dataset_dir else dataset_dir
            test_root = Path(args.test_root) if args.test_root else test_root
        else:
            if not (args.models and args.dataset_dir and args.test_root):
                p.error("--models, --dataset_dir and --test_root are required (or --demo)")
            models = [m.strip() for m in args.models.split(",") if m.strip()]
            dataset_dir, test_root = Path(args.dataset_dir), Path(args.test_root)
        # The extra flags are train_ClassifierHead.py's: its parser reads them, into the one config every tower shares.
        base = train_config(train_parser().parse_args([
            "--dataset_dir", str(dataset_dir), "--output_dir", str(out / "runs"), "--seed", str(args.seed),
            "--num_epochs", str(num_epochs), "--cache_dir", str(cache_dir), *(["--quiet"] if args.quiet else []),
            *(["--overwrite"] if args.overwrite or args.demo else []), *extra]))
        compare(models, base, test_root, out, extra)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(f"results in {out / 'results.md'} and {results_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
