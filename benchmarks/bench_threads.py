"""The thread budget's default against fixed thread counts, on an idle machine and beside busy processes.

    python benchmarks/bench_threads.py                       # 60 JPEGs of 1280x720, threads 1..cores
    python benchmarks/bench_threads.py --n 127 --repeats 2

Two commands, each a fresh process as a user runs it: ``deepfake predict`` of ``--n`` photo-like
JPEGs with a ``spectrum`` head, and a short spectral training (``deepfake train --model spectrum``
on 64 photo-sized JPEGs, features extracted afresh each run, ``--num_epochs`` epochs). Each runs
with the default budget and with ``--threads 1``, ``2``, ... up to the usable CPUs (the last is what
torch chose before the budget existed: one thread per core), first idle, then beside N busy-loop
processes (N = the usable CPUs). Settings are interleaved within each repeat, and the fastest of the
repeats is kept. The load average before each condition is printed with its figures: on a shared
machine "idle" means "without our busy loops", and the other processes count too. Printed, last:
per command and condition, the default's time against the best fixed setting's and against one
thread per core's, as ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deepfake.utils.threads import usable_cpus  # noqa: E402

DEEPFAKE = [sys.executable, "-m", "deepfake"]


def write_jpegs(folder: Path, n: int, size: tuple[int, int], seed: int, trace: bool = False) -> None:
    """``n`` photo-like JPEGs (q90): smooth colour fields and grain; ``trace`` adds a faint 2-pixel period."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        coarse = rng.normal(128, 50, (h // 32 + 2, w // 32 + 2, 3)).clip(0, 255).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        field = field + rng.integers(-6, 7, field.shape, dtype=np.int16)
        if trace:
            field[::2, ::2] += 4
        Image.fromarray(field.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)


def prepare(tmp: Path, n: int, size: tuple[int, int]) -> dict:
    """The photos to score, a labelled training set and a spectrum head trained on it (not measured)."""
    write_jpegs(tmp / "photos", n, size, seed=0)
    train = tmp / "train"
    for seed, split, count in ((1, "train", 24), (3, "val", 8)):
        write_jpegs(train / split / "photos" / "0_real", count, size, seed=seed)
        write_jpegs(train / split / "photos" / "1_fake", count, size, seed=seed + 1, trace=True)
    head = tmp / "head"
    subprocess.run([*DEEPFAKE, "train", "--dataset_dir", str(train), "--output_dir", str(head), "--model", "spectrum",
                    "--cache_dir", str(tmp / "head-cache"), "--num_epochs", "1", "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    return {"photos": tmp / "photos", "train": train, "head": head, "tmp": tmp}


def command(name: str, where: dict, run_id: str, epochs: int) -> list[str]:
    tmp = where["tmp"]
    if name == "predict":
        return [*DEEPFAKE, "predict", str(where["photos"]), "--checkpoint", str(where["head"]), "--quiet",
                "--output", str(tmp / f"scores-{run_id}.csv"), "--overwrite"]
    return [*DEEPFAKE, "train", "--dataset_dir", str(where["train"]), "--output_dir", str(tmp / f"run-{run_id}"),
            "--model", "spectrum", "--cache_dir", str(tmp / f"cache-{run_id}"), "--num_epochs", str(epochs),
            "--quiet", "--overwrite"]


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def timed(cmd: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return seconds


@contextmanager
def busy_loops(n: int):
    """``n`` processes that spin on a CPU each, for as long as the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(1.0)  # let them reach the scheduler's run queue
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def measure(where: dict, names: list[str], settings: list[str], repeats: int, epochs: int, label: str) -> dict:
    """Fastest of ``repeats`` seconds per (command, setting); settings interleaved within each repeat."""
    best: dict = {}
    for r in range(repeats):
        for name in names:
            for setting in settings:
                cmd = command(name, where, f"{label}-{setting}-{r}", epochs)
                if setting != "default":
                    cmd += ["--threads", setting]
                seconds = timed(cmd)
                key = (name, setting)
                best[key] = min(best.get(key, float("inf")), seconds)
                print(f"  {label:<5} {name:<8} threads={setting:<8} {seconds:7.1f} s   load {os.getloadavg()[0]:5.2f}",
                      flush=True)
    return best


def report(results: dict, names: list[str], settings: list[str], cpus: int) -> None:
    fixed = [s for s in settings if s != "default"]
    print(f"\n{'condition':<10} {'command':<8} " + " ".join(f"{s:>9}" for s in settings)
          + "   default / best fixed   default / one per core")
    for label, best in results.items():
        for name in names:
            row = [best[(name, s)] for s in settings]
            best_fixed = min(best[(name, s)] for s in fixed)
            per_core = best[(name, str(cpus))]
            print(f"{label:<10} {name:<8} " + " ".join(f"{v:8.1f}s" for v in row)
                  + f"   {best[(name, 'default')] / best_fixed:20.2f}x   {best[(name, 'default')] / per_core:22.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60, help="photos for predict (default %(default)s)")
    parser.add_argument("--size", default="1280x720", help="photo size WxH (default %(default)s)")
    parser.add_argument("--num_epochs", type=int, default=20, help="epochs of the short training (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setting; the fastest is kept")
    parser.add_argument("--commands", default="predict,train", help="predict, train or both (default %(default)s)")
    parser.add_argument("--conditions", default="idle,busy", help="idle, busy or both (default %(default)s)")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    cpus = usable_cpus()
    settings = ["default"] + [str(t) for t in range(1, cpus + 1)]
    names = args.commands.split(",")
    print(f"{cpus} usable CPUs ({os.cpu_count()} on the machine); load average {load()}; "
          f"predict: {args.n} JPEGs of {args.size}; train: 64 JPEGs of {args.size}, {args.num_epochs} epochs")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        where = prepare(Path(tmp), args.n, size)
        for label in args.conditions.split(","):
            print(f"{label}: load average {load()} before" + (f", {cpus} busy loops beside" if label == "busy" else ""),
                  flush=True)
            if label == "busy":
                with busy_loops(cpus):
                    results[label] = measure(where, names, settings, args.repeats, args.num_epochs, label)
            else:
                results[label] = measure(where, names, settings, args.repeats, args.num_epochs, label)
    report(results, names, settings, cpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
