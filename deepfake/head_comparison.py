"""Train every head kind on the same cached features and compare them per generator.

    python benchmarks/compare_heads.py --dataset_dir data/progan --model LanguageBind/LanguageBind_Image \
        --test_dir data/test --output_dir runs/compare_heads

The tower runs once per image (train, val and test, with the CLS token of every chosen
block), through the feature cache that ``train_ClassifierHead.py`` and
``test_ClassifierHead.py`` use. Each head kind then trains from those features with the same
seed, split, batches and options; its best epoch (val AP) is saved as an ordinary checkpoint
under ``OUTPUT/<kind>/`` and scored on the test set. Printed and saved (results.md,
results.json): one per-generator table with a column group (acc, AP) per head, the tower
passes counted during the run, and the layers head's learned block importance
(``importance.png``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from deepfake.checkpoint import BEST, save_checkpoint
from deepfake.cli_args import add_cache_args, add_runtime_args, add_tower_args, setup_logging
from deepfake.deepfake_classifier import fake_probabilities
from deepfake.deepfake_dataset import DeepfakeDataset, Sample, training_samples
from deepfake.evaluation import discover_test_set, domain_rows, split_list
from deepfake.feature_cache import FeatureCache, read_header
from deepfake.features import ExtractionSettings, extract_features, parse_feature_layers, prepare_tower
from deepfake.fileio import atomic_write, atomic_write_json, atomic_write_text, display_path
from deepfake.heads import head_kinds, new_head
from deepfake.reports import format_importance, importance_figure, json_safe
from deepfake.run_helpers import feature_cache, versions
from deepfake.runtime import choose_device, resolve_precision, seed_everything
from deepfake.towers import load_tower
from deepfake.training import (
    CachedFeatures,
    FitState,
    TrainOptions,
    epoch_config,
    fit,
    make_optimizer,
    run_config,
    validation_metrics,
)

log = logging.getLogger(__name__)

RESULT_FILES = ("results.md", "results.json")
DEFAULT_HEADS = ("mlp", "layers", "linear")  # the seed's head first, the baseline probe last
COLUMNS = (("acc", "acc"), ("ap", "AP"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/compare_heads.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True, help="training data (its val/ split or --val_ratio holds out val)")
    p.add_argument("--test_dir", default=None, help="test root (default: DATASET/test when it exists)")
    p.add_argument("--output_dir", default="runs/compare_heads", help="results and one checkpoint folder per head")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --output_dir")
    p.add_argument("--heads", default=None, help="comma-separated head kinds (default: every kind, mlp first)")
    p.add_argument("--feature_layers", default="all", help="blocks the layers head reads (all, or e.g. 8,16,20,24)")
    p.add_argument("--categories", default=None, help="training categories (default: all)")
    p.add_argument("--val_ratio", type=float, default=0.1)
    p.add_argument("--num_epochs", type=int, default=20)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--lr_schedule", default="constant", choices=("constant", "cosine", "step"))
    p.add_argument("--patience", type=int, default=0)
    p.add_argument("--contrastive_weight", type=float, default=0.0, help="for the mlp and layers heads")
    p.add_argument("--proj_dim", type=int, default=256, help="layers head: shared projection width")
    p.add_argument("--seed", type=int, default=512)
    add_tower_args(p)
    add_runtime_args(p)
    add_cache_args(p)
    return p


class TowerPassCounter:
    """Counts images through the tower's forward (a hook: the tower itself is left as it is)."""

    def __init__(self, tower: torch.nn.Module):
        self.images = 0
        self.handle = tower.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.images += len(inputs[0]) if inputs else len(output.embeds)

    def close(self) -> None:
        self.handle.remove()


def cache_statistics(cache: FeatureCache | None) -> dict:
    """Images the cache knows and feature rows its shards hold: equal when no image went through twice."""
    if cache is None:
        return {}
    rows = 0
    for shard in cache.shard_files():
        tensors = read_header(shard).tensors
        rows += tensors["embeds"][1][0] if "embeds" in tensors else 0
    return {"dir": str(cache.dir), "images": cache.count_images(), "rows": rows}


def compare_heads(args: argparse.Namespace) -> dict:
    """Run the comparison described by the parsed command line; returns the results document."""
    start = time.perf_counter()
    out = Path(args.output_dir)
    existing = [n for n in RESULT_FILES if (out / n).exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{out}: holds earlier results ({', '.join(existing)}); pass --overwrite")
    kinds = split_list(args.heads) or [k for k in DEFAULT_HEADS if k in head_kinds()] + \
        [k for k in head_kinds() if k not in DEFAULT_HEADS]
    unknown = [k for k in kinds if k not in head_kinds()]
    if unknown:
        raise ValueError(f"--heads: unknown kind(s) {', '.join(unknown)}; known: {', '.join(head_kinds())}")
    test_dir = Path(args.test_dir) if args.test_dir else Path(args.dataset_dir) / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"{test_dir}: no test root; pass --test_dir")

    train_samples, val_samples = training_samples(args.dataset_dir, split_list(args.categories), args.val_ratio,
                                                  args.seed)
    test = discover_test_set(test_dir)
    test_samples = [Sample(s.path, s.label, s.generator) for s in test]
    device = choose_device(args.device)
    precision = resolve_precision(args.precision or "auto", device)
    tower = prepare_tower(load_tower(args.model, args.revision, args.preprocess), precision, device,
                          compile=args.compile)
    num_layers = int(getattr(tower, "num_layers", 0) or 0)
    if "layers" in kinds and not num_layers:
        log.warning("%s has no transformer blocks: the layers head is left out", args.model)
        kinds = [k for k in kinds if k != "layers"]
    blocks = parse_feature_layers(args.feature_layers, num_layers) if num_layers else []
    settings = ExtractionSettings(batch_size=args.batch_size, num_workers=args.num_workers, precision=precision,
                                  layers=tuple(blocks), progress=not args.quiet)

    # Every image through the tower once (or zero times when cached), all blocks kept for every head.
    counter = TowerPassCounter(tower)
    tables = {}
    for name, samples in (("train", train_samples), ("val", val_samples), ("test", test_samples)):
        dataset = DeepfakeDataset(samples, tower.preprocess)
        tables[name] = extract_features(tower, dataset, settings, feature_cache(args, tower, settings),
                                        desc=f"{name} features")
    counter.close()
    n_images = len(train_samples) + len(val_samples) + len(test_samples)
    feature_seconds = time.perf_counter() - start
    log.info("tower passes: %d for %d images", counter.images, n_images)

    opts = TrainOptions(num_epochs=args.num_epochs, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
                        batch_size=args.batch_size, lr_schedule=args.lr_schedule, patience=args.patience,
                        contrastive_weight=args.contrastive_weight)
    labels = torch.tensor([s.label for s in train_samples])
    val_table, val_labels = tables["val"], np.array([s.label for s in val_samples])
    test_ok = tables["test"].ok.numpy()
    heads = {}
    for kind in kinds:
        heads[kind] = train_and_test(kind, tower, settings, tables, labels, val_table, val_labels, test, test_ok,
                                     train_samples, opts, args, device, out / kind)
    results = {
        "dataset_dir": str(args.dataset_dir),
        "test_dir": str(test_dir),
        "tower": tower.identity,
        "preprocess": tower.preprocess.to_dict(),
        "precision": precision,
        "blocks": blocks,
        "seed": args.seed,
        "training": opts.to_dict(),
        "n_train": len(train_samples),
        "n_val": len(val_samples),
        "n_test": len(test_samples),
        "tower_passes": counter.images,
        "images": n_images,
        "cache": cache_statistics(feature_cache(args, tower, settings)),
        "feature_seconds": feature_seconds,
        "seconds": time.perf_counter() - start,
        "versions": versions(),
        "heads": heads,
    }
    write_results(results, out, plots=True)
    return results


def train_and_test(kind, tower, settings, tables, labels, val_table, val_labels, test, test_ok, train_samples,
                   opts, args, device, run_dir: Path) -> dict:
    """Train one head kind from the shared tables; save its best epoch; score it on the test set."""
    seed_everything(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    head_blocks = tuple(settings.layers) if kind == "layers" else ()
    sizes = {"proj_dim": args.proj_dim} if kind == "layers" else {}
    head = new_head(kind, tower, head_blocks, **sizes).to(device)
    run_opts = opts if kind != "linear" else TrainOptions(**{**opts.to_dict(), "contrastive_weight": 0.0})
    base = run_config(tower, settings, head, run_opts, train_samples, args.seed)
    best: dict = {}

    def keep_best(result, is_best: bool) -> None:
        if is_best:
            best.update(state=copy.deepcopy(head.state_dict()), config=epoch_config(base, head, result))

    log.info("training the %s head", kind)
    state = fit(head, CachedFeatures([tables["train"]], generator, head_blocks), labels,
                lambda h: validation_metrics(h, val_table, val_labels[val_table.ok.numpy()]), run_opts, generator,
                device, make_optimizer(head, run_opts), FitState(), keep_best, progress=not args.quiet)
    head.load_state_dict(best["state"])
    save_checkpoint(run_dir, BEST, head.state_dict(), best["config"])
    probs = np.full(len(test), np.nan)
    probs[test_ok] = fake_probabilities(head, tables["test"], tables["test"].ok.nonzero().flatten())
    rows, mean, _ = domain_rows(test, probs, test_ok, 0.5, best["config"].get("val_threshold"))
    return {
        "checkpoint": str(run_dir / f"{BEST}.safetensors"),
        "head": head.config(),
        "parameters": sum(p.numel() for p in head.parameters()),
        "best_epoch": best["config"]["epoch"],
        "best_val_ap": state.best[0],
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "block_importance": best["config"].get("block_importance"),
        "rows": [r for r in rows if not r["category"]],
        "mean": mean,
    }


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def format_comparison(results: dict, markdown: bool = False) -> str:
    """One row per generator (mean last), a column group (acc, AP) per head."""
    heads = results["heads"]
    kinds = list(heads)
    names = [r["domain"] for r in heads[kinds[0]]["rows"]] + ["mean"]

    def cell(kind: str, name: str, key: str) -> str:
        row = heads[kind]["mean"] if name == "mean" else next(r for r in heads[kind]["rows"] if r["domain"] == name)
        return _pct(row.get(key))

    header = ["generator"] + [f"{k} {title}" for k in kinds for _, title in COLUMNS]
    body = [[name] + [cell(k, name, key) for k in kinds for key, _ in COLUMNS] for name in names]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule] + [line(r) for r in body[:-1]] + [rule, line(body[-1])])


def summary_lines(results: dict) -> list[str]:
    lines = [f"tower passes: {results['tower_passes']} for {results['images']} images "
             f"(train {results['n_train']}, val {results['n_val']}, test {results['n_test']})"]
    if results.get("cache"):
        lines.append(f"cache: {results['cache']['rows']} feature rows for {results['cache']['images']} images")
    for kind, r in results["heads"].items():
        lines.append(f"{kind}: {r['parameters']} parameters, best epoch {r['best_epoch']} of {r['epochs_run']}, "
                     f"val AP {_pct(r['best_val_ap'])}")
    lines.append(f"features {results['feature_seconds']:.1f}s, total {results['seconds']:.1f}s")
    return lines


def write_results(results: dict, out: Path, plots: bool = True) -> None:
    """Print the table; write results.md, results.json and (layers head) importance.png, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    table = format_comparison(results)
    print(table)
    print("\n".join(summary_lines(results)))
    importance = next((r["block_importance"] for r in results["heads"].values() if r.get("block_importance")), None)
    md = [f"Tower `{results['tower'].get('model')}`, data `{results['dataset_dir']}`, test `{results['test_dir']}`, "
          f"seed {results['seed']}, {results['training']['num_epochs']} epochs, lr {results['training']['learning_rate']}"
          f" ({results['training']['lr_schedule']}); acc at 0.5 and AP in %, best epoch by val AP.\n",
          format_comparison(results, markdown=True), "", *[f"- {line}" for line in summary_lines(results)], ""]
    if importance:
        print(format_importance(importance))
        md += ["### Block importance (layers head)", "", "![block importance](importance.png)", "",
               format_importance(importance, markdown=True), ""]
        if plots:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig = importance_figure(plt, importance)
            fig.tight_layout()
            atomic_write(out / "importance.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))
            plt.close(fig)
    atomic_write_text(out / "results.md", "\n".join(md))
    atomic_write_json(out / "results.json", json_safe(results))
    print(f"results in {display_path(out)}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        compare_heads(args)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    return 0
