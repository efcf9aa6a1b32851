"""Cost of the bias audit: header reads against decoding the same images, side by side.

    python benchmarks/bench_audit.py [--n 200] [--size 2048]

Writes N photo-sized JPEGs and PNGs to a temporary folder, then times the audit's header
probe of every file and a full decode of every file (what any pixel statistic would need),
and prints both rates and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfake.bias_audit import audit_samples, probe  # noqa: E402
from deepfake.image_io import load_image  # noqa: E402


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
        start = time.perf_counter()
        audit_samples([(p, "d", int(p.endswith(".png"))) for p in paths])
        full = time.perf_counter() - start
    n = len(paths)
    print(f"{n} images, {args.size * 3 // 2}x{args.size}")
    print(f"header probe:   {n / header:9.1f} img/s")
    print(f"full decode:    {n / decode:9.1f} img/s")
    print(f"audit (all):    {n / full:9.1f} img/s")
    print(f"header probe is {decode / header:.0f}x faster than decoding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
