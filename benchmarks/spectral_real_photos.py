"""The spectral analyses compared on public sets of real photos and generated images, in-domain and across sets.

    python benchmarks/spectral_real_photos.py --data /data/realphotos/realorai --data /data/realphotos/maskin \
        --output_dir results/realphotos --cache_dir /tmp/realphotos-cache

Each ``--data`` is a set as ``benchmarks/prepare_real_photos.py`` writes it (``split/`` with
``{train,val,test}/{domain}/{0_real,1_fake}`` and ``test.csv``, the held-out split as one
domain), named by its folder (``NAME=PATH`` names it otherwise). For every spectral record
(``--records``, default: every ``spectrum*`` record; ``A+B`` fuses records, one head on both
parts' features; a released network's name, ``tiny-ladeda-wildrf``, once imported) and every set A, the head is trained on A's
train split with the default recipe of ``train_ClassifierHead.py`` (lr 1e-4, the default seed
and head; ``--num_epochs`` 50, as the README's commands) and validated on A's val split, then
evaluated as ``test_ClassifierHead.py`` evaluates on the held-out split of every set: A itself
(in-domain) and each other set (across sets). Any further flag goes to the training command
(e.g. ``--standardize on``). Features are extracted once per record and set into the shared
cache, so a rerun trains and tests heads only.

Prints one row per record and train set: the validation AP (the only figure to choose by), and
AP, ROC-AUC and accuracy (at the checkpoint's threshold) on each test split; then the
equivalent commands. Writes ``results.md`` and ``results.json`` in ``--output_dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfake.cli.args import setup_logging, train_config, train_parser  # noqa: E402
from deepfake.config import DataConfig, EvalConfig, RuntimeConfig  # noqa: E402
from deepfake.evaluation.run import evaluate  # noqa: E402
from deepfake.towers.backbones import KNOWN_BACKBONES  # noqa: E402
from deepfake.towers.fused import fused_parts  # noqa: E402
from deepfake.towers.loading import check_model  # noqa: E402
from deepfake.training.run import train  # noqa: E402
from deepfake.utils.fileio import atomic_write_json, atomic_write_text  # noqa: E402

log = logging.getLogger("spectral_real_photos")

METRICS = (("ap", "AP"), ("auc", "AUC"), ("acc", "acc"))
DEFAULT_EPOCHS = 50


def spectral_records() -> list[str]:
    """Every weight-free spectral record, the default first."""
    names = [name for name, b in KNOWN_BACKBONES.items() if b.family == "spectrum"]
    return sorted(names, key=lambda n: (n != "spectrum", n))


def parse_set(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named by its folder) -> (name, folder)."""
    name, sep, path = text.partition("=")
    if not sep:
        name, path = Path(text.rstrip("/")).name, text
    return name, Path(path)


def set_paths(root: Path) -> tuple[Path, Path]:
    """(training data, held-out test data) of a prepared set, or of a plain {train,val,test} root."""
    if (root / "split").is_dir():
        test = root / "test.csv"
        return root / "split", test if test.is_file() else root / "split"
    if (root / "train").is_dir():
        return root, root
    raise FileNotFoundError(f"{root}: neither a prepared set (split/, test.csv) nor a train/val/test folder")


def _result_row(result: dict) -> dict:
    """The pooled row of an evaluation: its single domain, or the mean over several."""
    level = result["levels"][0]
    rows = [r for r in level["rows"] if r.get("kind") == "domain"]
    row = rows[0] if len(rows) == 1 else level["mean"]
    return {key: row.get(key) for key, _ in METRICS} | {"n_real": row.get("n_real"), "n_fake": row.get("n_fake")}


def commands(record: str, train_dir: Path, run: Path, cache: Path, tests: dict[str, Path], extra: list[str],
             epochs: int) -> list[str]:
    """The train_ClassifierHead.py / test_ClassifierHead.py commands this row equals."""
    lines = [shlex.join(["python", "train_ClassifierHead.py", "--model", record, "--dataset_dir", str(train_dir),
                         "--output_dir", str(run), "--cache_dir", str(cache), "--num_epochs", str(epochs), *extra])]
    for test in tests.values():
        lines.append(shlex.join(["python", "test_ClassifierHead.py", "--checkpoint", str(run),
                                 "--dataset_dir", str(test), "--cache_dir", str(cache)]))
    return lines


def run_record(record: str, base, sets: dict[str, tuple[Path, Path]], out: Path) -> list[dict]:
    """Train one head per set with ``record`` and test each on every set's held-out split."""
    rows = []
    for train_name, (train_dir, _) in sets.items():
        run = out / "runs" / record / train_name
        start = time.perf_counter()
        # Each run's own tables stay in its folders; the console gets the comparison table.
        with contextlib.redirect_stdout(io.StringIO()):
            summary = train(replace(base, output_dir=str(run), data=replace(base.data, dataset_dir=str(train_dir)),
                                    tower=replace(base.tower, model=record)))
            tests = {}
            for test_name, (_, test_dir) in sets.items():
                result = evaluate(EvalConfig(
                    checkpoint=str(run), data=DataConfig(dataset_dir=str(test_dir)),
                    output_dir=str(out / "eval" / record / f"{train_name}-on-{test_name}"), no_plots=True,
                    overwrite=True, cache=base.cache, runtime=RuntimeConfig(quiet=base.runtime.quiet)))
                tests[test_name] = _result_row(result)
        rows.append({"record": record, "train": train_name, "val_ap": summary.get("best_val_ap"), "tests": tests,
                     "seconds": round(time.perf_counter() - start, 1), "run": str(run),
                     "preprocess": result["preprocess"], "analysis": result["tower"].get("analysis"),
                     **({"parts": summary["parts"]} if "parts" in summary else {})})
        log.info("%s trained on %s: val AP %.4f, %s", record, train_name, summary.get("best_val_ap") or float("nan"),
                 ", ".join(f"{t} AP {r['ap']:.4f}" for t, r in tests.items() if r["ap"] is not None))
    return rows


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def format_markdown(rows: list[dict], set_names: list[str]) -> str:
    """One line per (record, train set): val AP, then AP / AUC / acc on every set's held-out split."""
    header = ["record", "trained on", "val AP"] + [f"{h} on {t}" for t in set_names for _, h in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in rows:
        cells = [_pct(row["tests"][t][key]) for t in set_names for key, _ in METRICS]
        lines.append("| " + " | ".join([f"`{row['record']}`", row["train"], _pct(row["val_ap"]), *cells]) + " |")
    return "\n".join(lines) + "\n"


def cross_set_summary(rows: list[dict]) -> dict[str, dict]:
    """Per record: mean in-domain and mean across-set test AP and AUC."""
    summary: dict[str, dict] = {}
    for row in rows:
        entry = summary.setdefault(row["record"], {"in": [], "across": []})
        for test, metrics in row["tests"].items():
            entry["in" if test == row["train"] else "across"].append(metrics)

    def mean(items: list[dict], key: str):
        values = [m[key] for m in items if m.get(key) is not None]
        return sum(values) / len(values) if values else None

    return {record: {f"{side}_{key}": mean(e[side], key) for side in ("in", "across") for key in ("ap", "auc")}
            for record, e in summary.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, metavar="[NAME=]PATH",
                   help="a prepared set (benchmarks/prepare_real_photos.py); repeat for each set")
    p.add_argument("--records", default=None, help="comma-separated spectral records (default: every spectrum* record)")
    p.add_argument("--output_dir", required=True, help="runs, evaluations, results.md and results.json")
    p.add_argument("--cache_dir", default=None, help="shared feature cache (default: OUTPUT_DIR/cache)")
    p.add_argument("--num_epochs", type=int, default=DEFAULT_EPOCHS)
    p.add_argument("--overwrite", action="store_true", help="replace the runs and results of an earlier comparison")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args, extra = p.parse_known_args(argv)
    setup_logging()
    out = Path(args.output_dir)
    cache = Path(args.cache_dir) if args.cache_dir else out / "cache"
    if (out / "results.json").exists() and not args.overwrite:
        log.error("%s: holds an earlier comparison; pass --overwrite or choose another --output_dir", out)
        return 2
    records = [r.strip() for r in args.records.split(",") if r.strip()] if args.records else spectral_records()
    try:
        sets = dict(parse_set(text) for text in args.data)
        sets = {name: set_paths(root) for name, root in sets.items()}
        # A fused record (A+B) joins known records: one head on their features side by side. A released
        # network's name (tiny-ladeda-wildrf) is a record once its release is imported, as for --model.
        unknown = [r for r in records if any(part not in KNOWN_BACKBONES for part in fused_parts(r) or [r])]
        for record in unknown:
            check_model(record)
        # The flags are train_ClassifierHead.py's: its parser gives the default recipe, plus what was passed.
        base = train_config(train_parser().parse_args([
            "--dataset_dir", "unused", "--output_dir", str(out / "runs"), "--cache_dir", str(cache),
            "--num_epochs", str(args.num_epochs), "--overwrite", *(["--quiet"] if args.quiet else []), *extra]))
        rows = [row for record in records for row in run_record(record, base, sets, out)]
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    names = list(sets)
    table = format_markdown(rows, names)
    print(table)
    summary = cross_set_summary(rows)
    for record, s in summary.items():
        print(f"{record}: in-domain test AP {_pct(s['in_ap'])} AUC {_pct(s['in_auc'])}; "
              f"across sets AP {_pct(s['across_ap'])} AUC {_pct(s['across_auc'])}")
    listing = []
    for row in rows:
        tests = {t: test for t, (_, test) in sets.items()}
        listing += commands(row["record"], sets[row["train"]][0], Path(row["run"]), cache, tests, extra,
                            args.num_epochs)
    print("\ncommands:\n" + "\n".join(listing))
    atomic_write_text(out / "results.md", table + "\n```\n" + "\n".join(listing) + "\n```\n")
    atomic_write_json(out / "results.json", {"sets": {n: [str(a), str(b)] for n, (a, b) in sets.items()},
                                             "num_epochs": args.num_epochs, "extra_train_flags": extra,
                                             "rows": rows, "summary": summary})
    print(f"results in {out / 'results.md'} and {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
