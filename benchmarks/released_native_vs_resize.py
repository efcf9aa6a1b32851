"""A released whole network at its paper's 256 x 256 resize and at native size, on public sets of real photographs.

    python benchmarks/released_native_vs_resize.py WildRF_Tiny_LaDeDa.pth \
        --data /data/realphotos/aidi --data /data/realphotos/realorai --data /data/realphotos/maskin

WEIGHTS is a release file (``tiny-ladeda-wildrf``'s ``WildRF_Tiny_LaDeDa.pth``, or any of
:mod:`deepfake.model.released_networks`); its network runs as a frozen tower and its last linear
layer scores the pooled features, exactly as ``deepfake import NAME WEIGHTS`` sets them up. Each
``--data`` is a set as ``benchmarks/prepare_real_photos.py`` writes it; the images scored are its
held-out ``test`` split (``--splits train,val,test``: every image, the release having been trained
elsewhere). For each
mode (``resize``: the paper's transform; ``native``: no resize, the mean over every position)
prints AP, ROC-AUC and accuracy at 0.5 per set and over all sets pooled, then the mean of the
per-set figures. This is what chose ``predict``'s default (docs/published-detectors.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from deepfake.cli.args import setup_logging  # noqa: E402
from deepfake.data.image_io import walk_images  # noqa: E402
from deepfake.deepfake_classifier import DeepfakeClassifier  # noqa: E402
from deepfake.evaluation.metrics import accuracy_at, average_precision, roc_auc  # noqa: E402
from deepfake.model.heads import head_from_config  # noqa: E402
from deepfake.model.scoring import score  # noqa: E402
from deepfake.towers.registry import family_for_state  # noqa: E402
from deepfake.towers.released import load_network_file, read_network_state, split_head  # noqa: E402

MODES = ("resize", "native")
HEAD_KEYS = {"tiny-ladeda": "fc", "npr": "fc1"}


def labelled_images(root: Path, splits: list[str]) -> tuple[list[str], np.ndarray]:
    """Every image under ``root/split/{splits}/*/{0_real,1_fake}``, with its label (1: generated)."""
    paths, labels = [], []
    for label, folder in ((0, "0_real"), (1, "1_fake")):
        for directory in sorted(d for s in splits for d in (root / "split" / s).glob(f"*/{folder}")):
            found = walk_images(str(directory))
            paths += found
            labels += [label] * len(found)
    if not paths:
        raise SystemExit(f"{root}: no split/{{{','.join(splits)}}}/*/0_real or 1_fake images "
                         "(make it with benchmarks/prepare_real_photos.py)")
    return paths, np.asarray(labels)


def classifier(weights: str, mode: str) -> DeepfakeClassifier:
    """The release's network in ``mode`` with its last linear layer as a one-logit head."""
    state = read_network_state(Path(weights))
    _, fc = split_head(state, HEAD_KEYS[family_for_state(state, weights).name])
    tower = load_network_file(weights, mode)
    head = head_from_config({"kind": "linear", "in_dim": tower.feature_dim, "num_classes": 1})
    head.load_state_dict({f"fc.{k}": v.float() for k, v in fc.items()})
    return DeepfakeClassifier(tower, head, {"threshold": 0.5})


def figures(labels: np.ndarray, scores: np.ndarray) -> dict:
    return {"n": len(labels), "ap": average_precision(labels, scores), "auc": roc_auc(labels, scores),
            "acc": accuracy_at(labels, scores, 0.5)["acc"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="a released network's .pth file")
    p.add_argument("--data", action="append", required=True, help="a set made by prepare_real_photos.py (repeat)")
    p.add_argument("--splits", default="test", help="which splits of each set to score (default: test)")
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args(argv)
    setup_logging(False, True)
    sets = {Path(d).name: labelled_images(Path(d), args.splits.split(",")) for d in args.data}
    print(f"{Path(args.weights).name}: AP, ROC-AUC and accuracy at 0.5 ({args.splits} split of each set)")
    print("| mode | set | images | AP | AUC | acc |\n|---|---|---:|---:|---:|---:|", flush=True)
    rows = []
    for mode in MODES:
        clf = classifier(args.weights, mode)
        scores = {}
        for name, (paths, labels) in sets.items():
            predictions = score(clf, paths, batch_size=args.batch_size, threshold=0.5)
            keep = np.asarray([q.probability is not None for q in predictions])
            scores[name] = (labels[keep], np.asarray([q.probability for q in predictions if q.probability is not None]))
            rows.append((mode, name, figures(*scores[name])))
            print_row(*rows[-1])
        pooled = figures(np.concatenate([s[0] for s in scores.values()]), np.concatenate([s[1] for s in scores.values()]))
        print_row(mode, "all sets pooled", pooled)
        per_set = [r[2] for r in rows if r[0] == mode]
        print_row(mode, "mean of the sets", {k: float(np.mean([f[k] for f in per_set])) for k in ("n", "ap", "auc", "acc")})
    return 0


def print_row(mode: str, name: str, f: dict) -> None:
    print(f"| {mode} | {name} | {f['n']:.0f} | {f['ap']:.3f} | {f['auc']:.3f} | {f['acc']:.3f} |", flush=True)


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
