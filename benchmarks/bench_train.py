"""Training wall time: 50 epochs from the feature cache (extraction included) vs the --no_cache loop.

    python benchmarks/bench_train.py [--num_epochs 50] [--images 64]

Same 64 images, same ViT-B/16-sized tower with random weights (hidden 768, 12 layers,
patch 16, projection 512), same seed, both through train_ClassifierHead.main.
Prints, last: the ratio of the two wall times.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_ClassifierHead  # noqa: E402


def make_tower(path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              patch_size=16, image_size=224, projection_dim=512, hidden_act="gelu")
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(config).save_pretrained(path)


def make_images(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        label = ("0_real", "1_fake")[i % 2]
        folder = root / ("car", "cat")[(i // 2) % 2] / label
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        if label == "1_fake":
            pixels[::2, ::2] = 255 - pixels[::2, ::2]
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")


def timed_run(argv: list[str]) -> float:
    start = time.perf_counter()
    assert train_ClassifierHead.main(argv) == 0
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num_epochs", type=int, default=50)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_tower(tmp / "tower")
        make_images(tmp / "data", args.images)
        common = ["--dataset_dir", str(tmp / "data"), "--model", str(tmp / "tower"), "--num_epochs",
                  str(args.num_epochs), "--batch_size", str(args.batch_size), "--num_workers", "1", "--quiet"]
        cached = timed_run(common + ["--output_dir", str(tmp / "cached"), "--cache_dir", str(tmp / "cache")])
        plain = timed_run(common + ["--output_dir", str(tmp / "plain"), "--no_cache"])
    print(f"{args.num_epochs} epochs, {args.images} images, ViT-B/16-sized tower")
    print(f"cached (extraction included): {cached:8.1f} s")
    print(f"--no_cache loop:              {plain:8.1f} s")
    print(f"speed-up of the cache: {plain / cached:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
