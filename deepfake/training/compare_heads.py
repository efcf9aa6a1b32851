"""Every head kind trained on one feature cache and compared per generator: ``compare_heads(config)``.

What it prints and writes, and its command line, are in :mod:`deepfake.cli.compare_heads`.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from deepfake.config import CompareConfig, HeadConfig, ScheduleConfig
from deepfake.data.test_sets import discover_test_set
from deepfake.deepfake_dataset import DeepfakeDataset, Sample, training_samples
from deepfake.evaluation.domains import domain_rows
from deepfake.evaluation.plots import importance_figure
from deepfake.evaluation.reports import format_importance, json_safe
from deepfake.features.cache import FeatureCache, read_header
from deepfake.features.extraction import (
    ExtractionSettings,
    extract_features,
    feature_cache,
    parse_feature_layers,
    prepare_tower,
)
from deepfake.model.checkpoint import BEST, save_checkpoint
from deepfake.model.heads import head_kinds, head_sizes, kind_tap, new_head, resolve_standardize
from deepfake.model.scoring import fake_probabilities
from deepfake.towers.base import ImageTower
from deepfake.towers.loading import load_tower
from deepfake.training.loop import epoch_config, fit, run_config, validation_metrics
from deepfake.training.ood import fit_ood
from deepfake.training.schedule import FitState, TrainOptions, make_optimizer
from deepfake.training.sources import CachedFeatures
from deepfake.training.standardize import fit_standardizer
from deepfake.utils.fileio import atomic_write, atomic_write_json, atomic_write_text, display_path, refuse_overwrite
from deepfake.utils.runtime import choose_device, resolve_precision, seed_everything, versions
from deepfake.utils.text import pct, split_list

log = logging.getLogger(__name__)

RESULT_FILES = ("results.md", "results.json")
DEFAULT_HEADS = ("mlp", "layers", "linear")  # the seed's head first, the baseline probe last
COLUMNS = (("acc", "acc"), ("ap", "AP"))


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


def compare_heads(config: CompareConfig) -> dict:
    """Run the comparison; returns the results document."""
    start = time.perf_counter()
    out = Path(config.output_dir)
    refuse_overwrite(out, RESULT_FILES, config.overwrite)
    kinds = _head_kinds(config)
    test_dir = Path(config.test_dir) if config.test_dir else Path(config.dataset_dir) / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"{test_dir}: no test root; pass --test_dir")
    train_samples, val_samples = training_samples(config.dataset_dir, split_list(config.categories), config.val_ratio,
                                                  config.seed)
    test = discover_test_set(test_dir)
    test_samples = [Sample(s.path, s.label, s.generator) for s in test]
    device = choose_device(config.runtime.device)
    precision = resolve_precision(config.runtime.precision or "auto", device)
    tower = prepare_tower(load_tower(config.tower.model, config.tower.revision, config.tower.preprocess), precision,
                          device, compile=config.cache.compile)
    num_layers = int(getattr(tower, "num_layers", 0) or 0)
    if "layers" in kinds and not num_layers:
        log.warning("%s has no transformer blocks: the layers head is left out", config.tower.model)
        kinds = [k for k in kinds if k != "layers"]
    blocks = parse_feature_layers(config.feature_layers, num_layers) if num_layers else []
    settings = ExtractionSettings.for_run(config.runtime, precision, blocks)
    cache = feature_cache(config.cache.root(), tower, settings)
    # Every image through the tower once (or zero times when cached), all blocks kept for every head.
    counter = TowerPassCounter(tower)
    tables = {name: extract_features(tower, DeepfakeDataset(samples, tower.preprocess), settings, cache,
                                     desc=f"{name} features")
              for name, samples in (("train", train_samples), ("val", val_samples), ("test", test_samples))}
    counter.close()
    n_images = len(train_samples) + len(val_samples) + len(test_samples)
    feature_seconds = time.perf_counter() - start
    log.info("tower passes: %d for %d images", counter.images, n_images)
    opts = TrainOptions.from_config(ScheduleConfig(
        num_epochs=config.num_epochs, learning_rate=config.learning_rate, weight_decay=config.weight_decay,
        lr_schedule=config.lr_schedule, patience=config.patience, contrastive_weight=config.contrastive_weight),
        config.runtime.batch_size)
    shared = _Shared(config, tower, settings, tables, train_samples, [s.label for s in val_samples], test, opts, device)
    heads = {kind: train_and_test(kind, shared, out / kind) for kind in kinds}
    results = {
        "dataset_dir": str(config.dataset_dir), "test_dir": str(test_dir), "tower": tower.identity,
        "preprocess": tower.preprocess.to_dict(), "precision": precision, "blocks": blocks, "seed": config.seed,
        "training": opts.to_dict(), "n_train": len(train_samples), "n_val": len(val_samples),
        "n_test": len(test_samples), "tower_passes": counter.images, "images": n_images,
        "cache": cache_statistics(cache), "feature_seconds": feature_seconds,
        "seconds": time.perf_counter() - start, "versions": versions(), "heads": heads,
    }
    write_results(results, out, plots=True)
    return results


def _head_kinds(config: CompareConfig) -> list[str]:
    """The kinds to compare, mlp first and the linear probe last by default; unknown kinds refused.

    The comparison shares one cache of block outputs: kinds that read another tap (rine: ln_2
    outputs) are left out by default and refused when asked for.
    """
    shared = [k for k in head_kinds() if kind_tap(k) in (None, "block")]
    kinds = split_list(config.heads) or [k for k in DEFAULT_HEADS if k in shared] + \
        [k for k in shared if k not in DEFAULT_HEADS]
    unknown = [k for k in kinds if k not in head_kinds()]
    if unknown:
        raise ValueError(f"--heads: unknown kind(s) {', '.join(unknown)}; known: {', '.join(head_kinds())}")
    other_tap = [k for k in kinds if k not in shared]
    if other_tap:
        raise ValueError(f"--heads: {', '.join(other_tap)} read(s) the {kind_tap(other_tap[0])} tap, not the block "
                         f"outputs this comparison caches; train it with deepfake train --head {other_tap[0]}")
    return kinds


@dataclass
class _Shared:
    """What every head of one comparison trains and is scored on."""

    config: CompareConfig
    tower: ImageTower
    settings: ExtractionSettings
    tables: dict
    train_samples: list[Sample]
    val_labels: list[int]
    test: list
    opts: TrainOptions
    device: torch.device


def train_and_test(kind: str, shared: _Shared, run_dir: Path) -> dict:
    """Train one head kind from the shared tables; save its best epoch; score it on the test set."""
    config, tables = shared.config, shared.tables
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    head_blocks = tuple(shared.settings.layers) if kind == "layers" else ()
    sizes = head_sizes(kind, HeadConfig(kind=kind, proj_dim=config.proj_dim, importance=config.importance).options())
    # Standardised as a training run's head is by default: where the tower's record asks for it.
    standardize = resolve_standardize(HeadConfig.standardize, shared.tower)
    head = new_head(kind, shared.tower, head_blocks, standardize, **sizes)
    source = CachedFeatures([tables["train"]], generator, head_blocks)
    if standardize:
        fit_standardizer(head, source, config.runtime.batch_size)
    fit_ood(head, source, tables["val"], config.runtime.batch_size)  # as a training run's head: every head has them
    head = head.to(shared.device)
    run_opts = shared.opts if kind != "linear" else replace(shared.opts, contrastive_weight=0.0)
    base = run_config(shared.tower, shared.settings, head, run_opts, shared.train_samples, config.seed)
    best: dict = {}

    def keep_best(result, is_best: bool) -> None:
        if is_best:
            best.update(state=copy.deepcopy(head.state_dict()), config=epoch_config(base, head, result))

    log.info("training the %s head", kind)
    val_table, val_labels = tables["val"], np.array(shared.val_labels)
    labels = torch.tensor([s.label for s in shared.train_samples])
    state = fit(head, source, labels,
                lambda h: validation_metrics(h, val_table, val_labels[val_table.ok.numpy()]), run_opts, generator,
                shared.device, make_optimizer(head, run_opts), FitState(), keep_best, progress=not config.runtime.quiet)
    head.load_state_dict(best["state"])
    save_checkpoint(run_dir, BEST, head.state_dict(), best["config"])
    test_ok = tables["test"].ok.numpy()
    probs = np.full(len(shared.test), np.nan)
    probs[test_ok] = fake_probabilities(head, tables["test"], tables["test"].ok.nonzero().flatten())
    rows, mean, _ = domain_rows(shared.test, probs, test_ok, 0.5, best["config"].get("val_threshold"))
    return {
        "checkpoint": str(run_dir / f"{BEST}.safetensors"), "head": head.config(),
        "parameters": sum(p.numel() for p in head.parameters()), "best_epoch": best["config"]["epoch"],
        "best_val_ap": state.best[0], "epochs_run": state.epoch, "stopped_early": state.stopped_early,
        "block_importance": best["config"].get("block_importance"),
        "rows": [r for r in rows if not r["category"]], "mean": mean,
    }


def format_comparison(results: dict, markdown: bool = False) -> str:
    """One row per generator (mean last), a column group (acc, AP) per head."""
    heads = results["heads"]
    kinds = list(heads)
    names = [r["domain"] for r in heads[kinds[0]]["rows"]] + ["mean"]

    def cell(kind: str, name: str, key: str) -> str:
        row = heads[kind]["mean"] if name == "mean" else next(r for r in heads[kind]["rows"] if r["domain"] == name)
        return pct(row.get(key))

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
                     f"val AP {pct(r['best_val_ap'])}")
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
