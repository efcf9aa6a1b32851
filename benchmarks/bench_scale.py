"""Bookkeeping at scale: N tiny images through train_ClassifierHead.py, cold cache then warm cache.

    python benchmarks/bench_scale.py            # 100,000 images (about 5 minutes on 2 cores)
    python benchmarks/bench_scale.py --n 20000  # quicker

The tower is a one-block CLIP with 16x16 inputs and a 768-d output (LanguageBind's feature
size), so the tower costs almost nothing and what is measured is the rest: scanning the
folders, stat'ing every file, decoding, cache shards, the manifest, the tables, one epoch.
It prints, from one run:

- the extraction cost per image (cold run minus warm run, divided by N);
- the wall time of the cache-hit rerun: ``python train_ClassifierHead.py ...`` exactly as a user
  runs it, a fresh process (start-up and imports included) that scans, stats, reads the cache
  and trains one epoch (the median of three);
- the peak RSS above the process's baseline, divided by the fp16 size of the N x 768 features,
  for the cold and the warm run, each in a probe process of its own. The baseline is read once
  the code the run will import is imported: the package, ``torch._dynamo`` (which torch's
  optimizers import on first use: 70 MB of code whatever N is) and, for the cold run, which
  builds the tower, transformers' CLIP modeling code. The warm run never builds the tower (its
  features are all cached), so it never imports transformers;
- the same peaks above those of a 1,000-image run (cold and warm): what grows with N. The
  baseline above still counts what any run costs once, whatever its size: library code paged
  in as it first runs (libtorch's kernels, the decoders) and the runtimes' set-up, ~50 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FEATURE_DIM = 768
SMALL_N = 1000  # the reference run: what a run costs whatever its size (code paged in, runtimes set up)
# Code the probes import before reading their baseline: torch's optimizers import torch._dynamo
# on first use, and a cold run builds the tower (transformers' CLIP modeling code).
WARM_PRELOAD = ("torch._dynamo",)
COLD_PRELOAD = ("torch._dynamo", "transformers.models.clip.modeling_clip")

# Runs train_ClassifierHead.main in a fresh process and reports its memory: the baseline
# is the resident set once the code is imported, the peak is the process's high-water mark.
PROBE = """
import json, resource, sys
sys.path.insert(0, {root!r})
import train_ClassifierHead
# Code is not data: the tower families are imported lazily on the first load, and the modeling
# code when a run builds its tower, so import what this run will import before the baseline is read.
import importlib
from deepfake.towers.registry import families
families()
for module in {preload!r}:
    importlib.import_module(module)

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

base = rss_kb()
code = train_ClassifierHead.main({argv!r})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("PROBE " + json.dumps({{"code": code, "base_kb": base, "peak_kb": peak}}))
"""


def make_tower(path: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 99, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 16, "patch_size": 16},
        projection_dim=FEATURE_DIM,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(path)


def make_images(root: Path, n: int) -> None:
    """DATASET/{car,cat}/{0_real,1_fake}/NNNNNN.png, 16x16 random images."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    folders = [root / c / lab for c in ("car", "cat") for lab in ("0_real", "1_fake")]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, format="PNG")
        (folders[i % 4] / f"{i:06d}.png").write_bytes(buffer.getvalue())


def run(argv: list[str], preload: tuple[str, ...] = ()) -> tuple[float, dict]:
    start = time.perf_counter()
    code = PROBE.format(root=str(ROOT), argv=argv, preload=list(preload))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    line = next((x for x in done.stdout.splitlines() if x.startswith("PROBE ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    probe = json.loads(line[6:])
    if probe["code"] != 0:
        sys.exit(f"train_ClassifierHead exited {probe['code']}:\n{done.stderr[-4000:]}")
    return wall, probe


def run_command(argv: list[str]) -> float:
    """Wall time of ``python train_ClassifierHead.py argv``, exactly as a user runs it."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "train_ClassifierHead.py"), *argv], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"train_ClassifierHead.py exited {done.returncode}:\n{done.stderr[-4000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="number of images (default %(default)s)")
    parser.add_argument("--workdir", default=None, help="where to build the data (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        make_tower(work / "tower")
        make_images(work / "data", args.n)
        make_images(work / "small", SMALL_N)
        print(f"{args.n} (and {SMALL_N}) images and the tiny tower written in {time.perf_counter() - start:.1f}s",
              flush=True)

        def command(data: str) -> list[str]:
            return ["--dataset_dir", str(work / data), "--output_dir", str(work / f"run-{data}"), "--model",
                    str(work / "tower"), "--cache_dir", str(work / f"cache-{data}"), "--num_epochs", "1",
                    "--batch_size", "256", "--num_workers", "0", "--precision", "fp32", "--quiet", "--overwrite"]

        probes = {}
        for data in ("small", "data"):
            probes[data, "cold"] = run(command(data), preload=COLD_PRELOAD)
            probes[data, "warm"] = run(command(data), preload=WARM_PRELOAD)
        reruns = sorted(run_command(command("data")) for _ in range(3))
    feature_mb = args.n * FEATURE_DIM * 2 / 2**20
    cold, warm = probes["data", "cold"][0], probes["data", "warm"][0]
    print(f"images: {args.n}; fp16 features: {feature_mb:.1f} MiB ({FEATURE_DIM}-d)")
    print(f"cold run (extract + 1 epoch):         {cold:7.2f} s")
    print(f"extraction cost per image:            {1e3 * (cold - warm) / args.n:7.3f} ms")
    print(f"cache-hit rerun (start-up, scan, stat, read, 1 epoch): {reruns[1]:7.2f} s "
          f"(median of {', '.join(f'{t:.2f}' for t in reruns)})")
    for kind in ("cold", "warm"):
        (_, big), (_, small) = probes["data", kind], probes["small", kind]
        above = (big["peak_kb"] - big["base_kb"]) / 1024
        growth = (big["peak_kb"] - small["peak_kb"]) / 1024
        print(f"peak RSS above baseline, {kind} run:    {above:7.1f} MiB = {above / feature_mb:5.2f} x the fp16 features")
        print(f"  above a {SMALL_N}-image {kind} run:        {growth:7.1f} MiB = {growth / feature_mb:5.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
