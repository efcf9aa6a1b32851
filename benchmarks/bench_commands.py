"""Wall time and peak memory of whole commands as a user runs them: ``deepfake demo`` and ``deepfake predict``.

    python benchmarks/bench_commands.py                 # the demo, then predict on 100 photos of 1280x720
    python benchmarks/bench_commands.py --n 30 --size 1920x1080

Each command runs in a fresh process tree, start-up included. Memory is reported two ways:
the largest resident set any one process of the tree reached (``ru_maxrss``, what
``/usr/bin/time`` prints), and the whole tree's proportional set size (PSS: pages shared between
a parent and its forked workers counted once, split between them) each time its resident set
passes its high by 5% (sampled every 50 ms from ``/proc``). ``predict`` scores the photos (``benchmarks/bench_spectrum.py``'s
photo-like JPEGs) with the head the demo trained (the gray ``spectrum-tiles256``), then with a head of
the default ``spectrum`` tower (colour), trained for one epoch on the demo's images beforehand.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_spectrum import write_photos  # noqa: E402

SAMPLE_SECONDS = 0.05


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pids.append(todo.pop())
        todo.extend(_children(pids[-1]))
    return pids


def _read_kib(path: str, field: str | None) -> int:
    """``field``'s kB from a /proc status file, or (``None``) statm's resident pages in kB; 0 if the process ended."""
    try:
        with open(path) as f:
            if field is None:
                return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
            return next(int(line.split()[1]) for line in f if line.startswith(field))
    except (OSError, StopIteration, IndexError):
        return 0


def run_measured(command: list[str]) -> dict:
    """Run ``command``; its wall seconds, peak tree PSS and largest single-process peak RSS (MiB).

    The tree's resident set is read every :data:`SAMPLE_SECONDS` from ``statm`` (cheap); its PSS
    from ``smaps_rollup`` (which costs milliseconds per process and holds the process's memory map
    lock, slowing what it measures) only when the resident set passes its high by 5%.
    """
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        high_rss = peak_pss = 0
        while True:
            # wait4's usage is this command's own: its ru_maxrss is the largest of its process tree.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            pids = _tree(proc.pid)
            rss = sum(_read_kib(f"/proc/{p}/statm", None) for p in pids)
            if rss > high_rss * 1.05:
                high_rss = rss
                peak_pss = max(peak_pss, sum(_read_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
            time.sleep(SAMPLE_SECONDS)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status):
            log.seek(0)
            sys.exit(f"{' '.join(command)} failed:\n{log.read().decode(errors='replace')[-3000:]}")
    return {"seconds": seconds, "tree_pss_mib": peak_pss / 1024, "max_rss_mib": usage.ru_maxrss / 1024}


def report(name: str, r: dict) -> None:
    print(f"{name:<68} {r['seconds']:6.1f} s   peak RSS of its largest process {r['max_rss_mib']:5.0f} MiB"
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
        # The default tower reads colour: a head for it, trained on the demo's images (not measured).
        colour = Path(tmp) / "colour"
        subprocess.run([sys.executable, str(ROOT / "train_ClassifierHead.py"), "--dataset_dir", str(out / "data"),
                        "--output_dir", str(colour), "--model", "spectrum", "--num_epochs", "1", "--quiet"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, run in (("demo's head, spectrum-tiles256", out / "run"), ("a spectrum head", colour)):
            report(f"deepfake predict ({name}): {args.n} JPEGs of {w}x{h}",
                   run_measured([*deepfake, "predict", str(photos), "--checkpoint", str(run),
                                 "--output", str(Path(tmp) / f"scores-{run.name}.csv")]))
        shutil.rmtree(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
