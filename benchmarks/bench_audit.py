"""Cost of the bias audit: header reads against decoding the same images, side by side.

    python benchmarks/bench_audit.py [--n 200] [--size 2048]

Writes N photo-sized JPEGs and PNGs to a temporary folder, then times the audit's header
probe of every file and a full decode of every file (what any pixel statistic would need),
and prints both rates and their ratio. Then the whole audit three ways, side by side: without
a memo (every run today with ``--no_cache``), with an empty memo (the first run on a data set:
probes, then writes the memo) and with a filled one (every later run: stats, opens nothing).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfake.data.audit import audit_samples, probe  # noqa: E402
from deepfake.data.image_io import load_image  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="images per format")
    p.add_argument("--size", type=int, default=2048, help="short side in pixels")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        base = np.clip(rng.normal(128, 40, (args.size // 16, args.size * 3 // 32, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(base).resize((args.size * 3 // 2, args.size), Image.BICUBIC)
        for i in range(args.n):
            for ext, kw in ((".jpg", {"quality": 90}), (".png", {"compress_level": 1})):
                path = Path(tmp) / f"{i:05d}{ext}"
                image.save(path, **kw)
                paths.append(str(path))
        start = time.perf_counter()
        for path in paths:
            probe(path)
        header = time.perf_counter() - start
        start = time.perf_counter()
        for path in paths:
            load_image(path)
        decode = time.perf_counter() - start
        items = [(p, "d", int(p.endswith(".png"))) for p in paths]
        cache = Path(tmp) / "cache"

        def timed(cache_root: Path | None) -> float:
            start = time.perf_counter()
            audit_samples(items, cache_root=cache_root)
            return time.perf_counter() - start

        plain = [timed(None)]
        cold = timed(cache)
        warm = min(timed(cache) for _ in range(3))
        plain.append(timed(None))
        shutil.rmtree(cache)
        cold = min(cold, timed(cache))
        full = min(plain)
    n = len(paths)
    print(f"{n} images, {args.size * 3 // 2}x{args.size}")
    print(f"header probe:   {n / header:9.1f} img/s")
    print(f"full decode:    {n / decode:9.1f} img/s")
    print(f"audit (all):    {n / full:9.1f} img/s")
    print(f"header probe is {decode / header:.0f}x faster than decoding")
    print(f"audit_samples, no memo:      {1000 * full:8.1f} ms")
    print(f"audit_samples, memo written: {1000 * cold:8.1f} ms")
    print(f"audit_samples, memo read:    {1000 * warm:8.1f} ms  ({full / warm:.1f}x faster than no memo)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
