"""Capture the "golden" outputs of the command-line entry points, to check that a refactor changes none of them.

    python tests/golden/make_golden.py [OUT_DIR]          (default OUT_DIR: tests/data/golden/)

Everything runs through the command line only (``python -m deepfake ...``, ``python train_ClassifierHead.py ...``,
``python test_ClassifierHead.py ...``) in subprocesses, so the capture does not depend on where the package keeps its
modules. In a scratch folder it runs:

* ``deepfake demo`` (the synthetic benchmark, the weight-free ``spectrum`` tower, 40 epochs);
* a small ``train_ClassifierHead.py`` -> ``test_ClassifierHead.py`` -> ``deepfake predict`` run on a subset of the
  demo's synthetic data (``--model spectrum``, 3 epochs);
* ``--help`` of ``deepfake``, of every ``deepfake COMMAND`` and of the two scripts (``COLUMNS=100``).

The commands' stdout, their JSON files (best.json, run.json, results.json) and score tables are normalized
(``normalize``: the scratch folder becomes ``<TMP>``, the repository ``<REPO>``, wall-clock seconds and library
versions are blanked) and written into OUT_DIR. Every command runs with the scratch folder as its working
directory and relative paths, and with HOME, DEEPFAKE_CACHE, HF_HOME and XDG_CACHE_HOME inside it, so nothing is
written into the repository or the user's caches. The floats are kept as they are: on one machine they are
bit-identical from run to run (checked), so the goldens belong to this machine and torch build.

``tests/test_golden.py`` calls ``capture`` into a tmp_path and compares each file with the stored one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "tests" / "data" / "golden"

# The commands of deepfake/__main__.py's COMMANDS, in its order (spelled out: the capture imports nothing of the package).
COMMANDS = ("train", "test", "predict", "demo", "serve", "push", "audit", "split")

# Wall-clock durations in the JSON files: the only numbers that differ between two runs of one commit.
TIMING_KEYS = frozenset({"feature_seconds", "seconds"})
# Digests of files whose bytes depend on every float of the weights (the floats themselves are compared elsewhere).
DIGEST_KEYS = frozenset({"head_weights_sha256"})
VERSION = "<VERSION>"
SECONDS = "<SECONDS>"
SHA256 = "<SHA256>"

# The train/test/predict run: a subset of the demo's data (files sorted by name, the first N of each folder).
SUBSET = {"train": (12, None), "val": (5, None), "test": (5, ("tconv", "nearest"))}
TIMEOUT_S = 900


def normalize(text: str, tmp: Path, repo: Path) -> str:
    """Make one command's text output comparable across runs, machines and checkouts.

    The scratch folder becomes ``<TMP>`` and the repository ``<REPO>`` (resolved and as given, longest first);
    ``deepfake X.Y.Z`` (the version in ``deepfake --help``) becomes ``deepfake <VERSION>``, and the
    ``--num_workers`` default that the help derives from this machine's CPU count becomes ``<N>``.
    """
    paths = {str(tmp): "<TMP>", str(tmp.resolve()): "<TMP>", str(repo): "<REPO>", str(repo.resolve()): "<REPO>"}
    for path in sorted(paths, key=len, reverse=True):
        text = text.replace(path, paths[path])
    text = re.sub(r"\bdeepfake \d+\.\d+[\w.+-]*", f"deepfake {VERSION}", text)
    text = re.sub(r"\(default: \d+ on(\s+)this(\s+)machine\)", r"(default: <N> on\1this\2machine)", text)
    return text


def normalize_json(obj, tmp: Path, repo: Path):
    """``normalize`` applied to every string of a parsed JSON document, plus: the values under ``versions``
    (python/torch/transformers) become ``<VERSION>``, wall-clock durations (``feature_seconds``, a level's
    ``seconds``) become ``<SECONDS>``, and a checkpoint's weights digest (``head_weights_sha256``) ``<SHA256>``.
    Keys are kept, so a key that appears or disappears still shows."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key == "versions" and isinstance(value, dict):
                out[key] = {name: VERSION for name in value}
            elif key in TIMING_KEYS and isinstance(value, (int, float)):
                out[key] = SECONDS
            elif key in DIGEST_KEYS and isinstance(value, str):
                out[key] = SHA256
            else:
                out[key] = normalize_json(value, tmp, repo)
        return out
    if isinstance(obj, list):
        return [normalize_json(value, tmp, repo) for value in obj]
    if isinstance(obj, str):
        return normalize(obj, tmp, repo)
    return obj


def _env(work: Path, repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYTHONSTARTUP", "PYTHONHOME", "DEEPFAKE_CACHE", "HF_HUB_CACHE", "HF_TOKEN", "TRANSFORMERS_CACHE"):
        env.pop(name, None)
    home = work / "home"
    home.mkdir(exist_ok=True)
    env.update({
        "PYTHONPATH": str(repo),             # the checkout's package, whatever the venv has installed
        "PYTHONDONTWRITEBYTECODE": "1",      # no __pycache__ written into the checkout
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "MPLCONFIGDIR": str(home / "mpl"),
        "HF_HOME": str(home / "hf"),
        "DEEPFAKE_CACHE": str(work / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "COLUMNS": "100",
        "LINES": "50",
        "CUDA_VISIBLE_DEVICES": "",
    })
    return env


# ``--precision auto`` resolves to bf16 on a CPU with native bf16 (AVX512-BF16, AMX) and to fp32 on one without, and
# the runs record which: every command runs as on a CPU without it (the machine the goldens were captured on), so the
# capture is the same on both kinds. ``python -c BOOT ARGS`` then runs ``python ARGS`` (``-m MODULE ...`` or
# ``SCRIPT ...``); a checkout without ``cpu_has_bf16`` (an old commit) runs unchanged.
BOOT = """
import runpy, sys
try:
    import deepfake.utils.runtime as runtime
    runtime.cpu_has_bf16 = lambda: False
except ImportError:
    pass
args = sys.argv[1:]
if args[0] == "-m":
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
else:
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")
"""


def _run(args: list[str], work: Path, env: dict[str, str], log: list[str]) -> str:
    """Run ``python ARGS`` in WORK as on a CPU without native bf16 (``BOOT``); return its stdout, or raise with its
    stderr when it fails."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BOOT, *args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    log.append(f"{time.perf_counter() - start:6.1f}s  python {' '.join(args)}")
    if proc.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
                           f"--- stderr\n{proc.stderr}")
    return proc.stdout


def _copy_subset(src: Path, dst: Path) -> None:
    """The first N files (by name) of each label folder of the demo's data, for a quick train/test run."""
    for split, (n, domains) in SUBSET.items():
        roots = [src / split / d for d in domains] if domains else [src / split]
        for root in roots:
            for label_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
                out = dst / label_dir.relative_to(src)
                out.mkdir(parents=True, exist_ok=True)
                for f in sorted(label_dir.iterdir())[:n]:
                    shutil.copyfile(f, out / f.name)


def capture(out_dir: Path, repo: Path, work_dir: Path | None = None, log: list[str] | None = None,
            pinned: tuple[str, ...] = ()) -> None:
    """Run every command of the capture against the checkout REPO and write the normalized outputs into OUT_DIR.

    WORK_DIR: the scratch folder (default: a temporary folder, removed afterwards); LOG collects one line per command
    with its wall time; PINNED: flags added to the demo and the training run that keep a default changed since the
    goldens at its earlier behaviour (none for the old commit, which does not know them)."""
    out_dir, repo = Path(out_dir), Path(repo).resolve()
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="deepfake-golden-") as tmp:
            return capture(out_dir, repo, Path(tmp), log, pinned)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = [] if log is None else log
    env = _env(work, repo)
    train_script, test_script = str(repo / "train_ClassifierHead.py"), str(repo / "test_ClassifierHead.py")

    def write_text(name: str, text: str) -> None:
        (out_dir / name).write_text(normalize(text, work, repo), encoding="utf-8")

    def write_json(name: str, src: Path) -> None:
        doc = normalize_json(json.loads(src.read_text(encoding="utf-8")), work, repo)
        (out_dir / name).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def write_file(name: str, src: Path) -> None:
        write_text(name, src.read_text(encoding="utf-8"))

    # a. the demo: synthetic data, 40 epochs of the spectrum tower on tconv fakes, every family tested.
    write_text("demo.txt", _run(["-m", "deepfake", "demo", "--out", "demo", *pinned], work, env, log))
    write_json("demo_best.json", work / "demo" / "run" / "best.json")
    write_json("demo_run.json", work / "demo" / "run" / "run.json")
    write_json("demo_results.json", work / "demo" / "eval" / "results.json")
    write_file("demo_scores.csv", work / "demo" / "eval" / "scores.csv")

    # b. train -> test -> predict on a subset of the demo's data.
    _copy_subset(work / "demo" / "data", work / "data")
    write_text("train.txt", _run([train_script, "--dataset_dir", "data", "--output_dir", "run", "--model", "spectrum",
                                  "--num_epochs", "3", "--learning_rate", "1e-3", "--batch_size", "16", "--seed", "0",
                                  "--precision", "fp32", "--num_workers", "0", "--cache_dir", "cache2", *pinned],
                                 work, env, log))
    write_json("best.json", work / "run" / "best.json")
    write_json("run.json", work / "run" / "run.json")
    write_text("test.txt", _run([test_script, "--checkpoint", "run", "--dataset_dir", "data/test", "--output_dir", "eval",
                                 "--num_workers", "0", "--no_plots", "--cache_dir", "cache2"], work, env, log))
    write_json("results.json", work / "eval" / "results.json")
    write_file("test_scores.csv", work / "eval" / "scores.csv")
    (work / "notes.txt").write_text("not an image\n", encoding="utf-8")
    write_text("predict.txt", _run(["-m", "deepfake", "predict", "data/test/tconv/waves/1_fake",
                                    "data/test/nearest/waves/0_real/00002.png", "data/test/*/leaves/*/*.jpg",
                                    "notes.txt", "missing.png", "--checkpoint", "run", "--output", "scores.csv",
                                    "--num_workers", "0"], work, env, log))
    write_file("scores.csv", work / "scores.csv")

    # c. every --help.
    write_text("help_deepfake.txt", _run(["-m", "deepfake", "--help"], work, env, log))
    for command in COMMANDS:
        write_text(f"help_{command}.txt", _run(["-m", "deepfake", command, "--help"], work, env, log))
    write_text("help_train_ClassifierHead.txt", _run([train_script, "--help"], work, env, log))
    write_text("help_test_ClassifierHead.txt", _run([test_script, "--help"], work, env, log))
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", nargs="?", type=Path, default=DEFAULT_OUT, help="folder for the golden files")
    p.add_argument("--repo", type=Path, default=REPO, help="checkout whose commands are run (default: this one)")
    p.add_argument("--keep", type=Path, default=None, help="scratch folder to use and keep (default: a temporary one)")
    args = p.parse_args(argv)
    log: list[str] = []
    start = time.perf_counter()
    capture(args.out_dir, args.repo, args.keep, log)
    print("\n".join(log))
    print(f"{time.perf_counter() - start:.1f}s in all; golden files in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
