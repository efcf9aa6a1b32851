"""Wall time and peak memory of whole commands as a user runs them: ``deepfake demo`` and ``deepfake predict``.

    python benchmarks/bench_commands.py                 # the demo, then predict on 100 photos of 1280x720
    python benchmarks/bench_commands.py --n 30 --size 1920x1080

Each command runs in a fresh process tree, start-up included. Memory is reported two ways:
the largest resident set any one process of the tree reached (``ru_maxrss``, what
``/usr/bin/time`` prints), and the peak of the whole tree's proportional set size (PSS: pages
shared between a parent and its forked workers counted once, split between them), sampled every
100 ms from ``/proc``. ``predict`` scores the photos with the head the demo trained (the spectral
tower); the photos are written first (``benchmarks/bench_spectrum.py``'s photo-like JPEGs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_spectrum import write_photos  # noqa: E402

SAMPLE_SECONDS = 0.1  # reading smaps costs time of its own: sampled no more often than this


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0  # the process ended between the listing and the read


def tree_pss_mib(root: int) -> float:
    """PSS of ``root`` and all its descendants, MiB."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _pss_kib(pid)
        todo.extend(_children(pid))
    return total / 1024


def run_measured(command: list[str]) -> dict:
    """Run ``command``; its wall seconds, peak tree PSS and largest single-process peak RSS (MiB)."""
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        peak = 0.0
        while True:
            # wait4's usage is this command's own: its ru_maxrss is the largest of its process tree.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_pss_mib(proc.pid))
            time.sleep(SAMPLE_SECONDS)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status):
            log.seek(0)
            sys.exit(f"{' '.join(command)} failed:\n{log.read().decode(errors='replace')[-3000:]}")
    return {"seconds": seconds, "tree_pss_mib": peak, "max_rss_mib": usage.ru_maxrss / 1024}


def report(name: str, r: dict) -> None:
    print(f"{name:<40} {r['seconds']:6.1f} s   peak RSS of its largest process {r['max_rss_mib']:5.0f} MiB"
          f"   peak PSS of the tree {r['tree_pss_mib']:5.0f} MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="photos for predict (default %(default)s)")
    parser.add_argument("--size", default="1280x720", help="photo size WxH (default %(default)s)")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    deepfake = [sys.executable, "-m", "deepfake"]
    print(f"on {os.cpu_count()} CPU cores; each command a fresh process tree")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        report("deepfake demo", run_measured([*deepfake, "demo", "--out", str(out)]))
        photos = Path(tmp) / "photos"
        photos.mkdir()
        write_photos(photos, args.n, (w, h))
        scores = Path(tmp) / "scores.csv"
        report(f"deepfake predict: {args.n} JPEGs of {w}x{h}",
               run_measured([*deepfake, "predict", str(photos), "--checkpoint", str(out / "run"),
                             "--output", str(scores)]))
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
