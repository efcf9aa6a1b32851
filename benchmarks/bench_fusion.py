"""A fused tower against its parts run one after another: decode + extraction time, side by side.

    python benchmarks/bench_fusion.py                                   # 48 photos of 1600x1200, spectrum+spectrum-tiles256
    python benchmarks/bench_fusion.py --model spectrum+spectrum-crop256 --n 96
    python benchmarks/bench_fusion.py --tiny clip                       # a tiny CLIP tower + spectrum-tiles256

Both paths are :func:`deepfake.features.extraction.extract_features` without a cache, on the same
JPEG files in one process, ``--repeats`` times in alternating order (the best time of each is kept): the
fused tower decodes each image once and prepares it for every part; the parts one after another
decode every image once per part. The features of the two paths are checked to be equal.
Prints seconds and images per second of each, and the ratio (parts / fused).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deepfake.deepfake_dataset import DeepfakeDataset, Sample  # noqa: E402
from deepfake.features.extraction import ExtractionSettings, extract_features  # noqa: E402
from deepfake.towers.loading import load_tower  # noqa: E402


def write_photos(folder: Path, n: int, width: int, height: int) -> list[Sample]:
    """``n`` JPEG photos with fine texture (quality 90), as a camera's would be stored."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        base = rng.normal(128, 40, (height // 8, width // 8, 3))
        image = np.kron(base, np.ones((8, 8, 1))) + rng.normal(0, 6, (height, width, 3))
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
        samples.append(Sample(str(path), i % 2, "bench"))
    return samples


def timed(towers, samples: list[Sample], settings: ExtractionSettings) -> tuple[float, torch.Tensor]:
    """Seconds to decode and extract ``samples`` through each tower of ``towers`` in turn, and the joined features."""
    start = time.perf_counter()
    tables = [extract_features(t, DeepfakeDataset(samples, t.preprocess), settings).embeds for t in towers]
    return time.perf_counter() - start, torch.cat(tables, dim=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spectrum+spectrum-tiles256", help="a fused tower A+B[+C]")
    p.add_argument("--tiny", default=None, help="a tiny random tower family (clip, siglip, dinov2, ...) as first part")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--size", default="1600x1200", help="photo width x height")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    settings = ExtractionSettings(batch_size=args.batch_size, num_workers=0, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.tiny:
            from deepfake.towers.tiny import save_tower

            model = f"{save_tower(args.tiny, Path(tmp) / f'tiny-{args.tiny}')}+{model.split('+')[-1]}"
        photos = Path(tmp) / "photos"
        photos.mkdir()
        samples = write_photos(photos, args.n, width, height)
        fused = load_tower(model)
        parts = list(fused.parts)
        best = {"fused": float("inf"), "parts": float("inf")}
        for repeat in range(args.repeats):
            # Alternated, so that a machine whose load changes favours neither.
            order = ("fused", "parts") if repeat % 2 == 0 else ("parts", "fused")
            features = {}
            for what in order:
                seconds, features[what] = timed([fused] if what == "fused" else parts, samples, settings)
                best[what] = min(best[what], seconds)
            if not torch.equal(features["fused"], features["parts"]):
                raise SystemExit("the fused features differ from the parts' features side by side")
    names = " + ".join(part.backbone.name for part in parts)
    print(f"{args.n} JPEG photos of {width}x{height}, {names} ({fused.feature_dim}-d), best of {args.repeats}:")
    for what, seconds in (("fused (one decode)", best["fused"]), ("parts one after another", best["parts"])):
        print(f"  {what:<26} {seconds:7.2f} s  {args.n / seconds:7.1f} img/s")
    print(f"  ratio parts / fused: {best['parts'] / best['fused']:.2f}x (features equal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
