"""Feature extraction speed: the project's path vs a naive loop vs the machine's GEMM roofline.

    python benchmarks/bench_extract.py [--batch_size 16] [--images 32]

Tower: the real LanguageBind_Image architecture (ViT-L/14, hidden 1024, 24 layers, exact
gelu, projection 768) with random weights, which costs the same compute as the real one.
Measured side by side in one run:
- naive: fp32, one image at a time, each through the LanguageBind transform;
- project: the extraction path (DataLoader decoding and preprocessing, batched, --precision
  auto: bf16 where the CPU or GPU has it, blocks fused for inference by deepfake/towers/fast_clip.py);
- roofline: a bf16 and an fp32 GEMM of the tower's largest shape; the tower's FLOPs per
  image are computed from its config.
Prints, last: speed-up over naive and % of the bf16 roofline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfake.data.image_io import load_image  # noqa: E402
from deepfake.data.preprocess import preprocess_image  # noqa: E402
from deepfake.deepfake_dataset import DeepfakeDataset, Sample  # noqa: E402
from deepfake.features.extraction import ExtractionSettings, iterate_tower, prepare_tower  # noqa: E402
from deepfake.towers.backbones import backbone_for  # noqa: E402
from deepfake.towers.clip_tower import build_clip_tower  # noqa: E402
from deepfake.towers.clip_weights import vision_config_from  # noqa: E402
from deepfake.utils.runtime import DTYPES, choose_device, resolve_precision  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "deepfake" / "towers" / "configs" / "languagebind_image.json"


def tower_flops(cfg) -> float:
    """Multiply-adds x 2 of one image through the ViT (patch embedding, attention, MLP, projection)."""
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    d, m, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    patch = (tokens - 1) * 3 * cfg.patch_size**2 * d
    per_layer = tokens * (4 * d * d + 2 * d * m) + 2 * tokens * tokens * d
    return 2.0 * (patch + layers * per_layer + d * cfg.projection_dim)


def gemm_rate(dtype: torch.dtype, device: torch.device, m: int, k: int, n: int, seconds: float = 3.0) -> float:
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2.0 * m * k * n * count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--images", type=int, default=32, help="images through the project's path")
    p.add_argument("--naive_images", type=int, default=4)
    p.add_argument("--num_workers", type=int, default=0, help="decoding workers (0: on 2 cores they steal compute)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    device = choose_device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    cfg, _ = vision_config_from(json.loads(CONFIG.read_text()), str(CONFIG))
    flops = tower_flops(cfg)
    backbone = backbone_for("LanguageBind/LanguageBind_Image")
    print(f"device {device}, {torch.get_num_threads()} threads, precision {precision}; "
          f"tower ViT-L/14 {flops / 1e9:.1f} GFLOP per image")

    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        paths = []
        for i in range(max(args.images, args.naive_images)):
            path = Path(tmp) / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 256, (256 + 8 * (i % 5), 320, 3), dtype=np.uint8)).save(path, quality=95)
            paths.append(str(path))

        naive = build_clip_tower(cfg, backbone, {"model": "random"}).to(device)
        with torch.inference_mode():
            naive(preprocess_image(load_image(paths[0]), backbone.preprocess)[None].to(device))  # warm-up
            start = time.perf_counter()
            for path in paths[: args.naive_images]:
                naive(preprocess_image(load_image(path), backbone.preprocess)[None].to(device))
            naive_rate = args.naive_images / (time.perf_counter() - start)
        del naive
        print(f"naive (fp32, 1 image at a time):   {naive_rate:7.2f} img/s")

        tower = prepare_tower(build_clip_tower(cfg, backbone, {"model": "random"}), precision, device)
        dataset = DeepfakeDataset([Sample(p, 0, "x") for p in paths[: args.images]], backbone.preprocess)
        settings = ExtractionSettings(batch_size=args.batch_size, num_workers=args.num_workers,
                                      precision=precision, progress=False)
        list(iterate_tower(tower, dataset, list(range(args.batch_size)), settings))  # warm-up
        start = time.perf_counter()
        list(iterate_tower(tower, dataset, list(range(args.images)), settings))
        project_rate = args.images / (time.perf_counter() - start)
        print(f"project (batch {args.batch_size}, {precision}):        {project_rate:7.2f} img/s")

    tokens = args.batch_size * ((cfg.image_size // cfg.patch_size) ** 2 + 1)
    peak = {name: gemm_rate(DTYPES[name], device, tokens, cfg.hidden_size, cfg.intermediate_size)
            for name in ("bf16", "fp32")}
    for name, rate in peak.items():
        print(f"GEMM {tokens}x{cfg.hidden_size}x{cfg.intermediate_size} {name}: {rate / 1e9:8.1f} GFLOP/s "
              f"= {rate / flops:6.2f} img/s roofline")
    achieved = project_rate * flops
    reference = peak["bf16"] if precision in ("bf16", "fp16") else peak["fp32"]
    print(f"speed-up over naive: {project_rate / naive_rate:.2f}x")
    print(f"roofline: {100 * achieved / reference:.1f}% of the {'bf16' if reference is peak['bf16'] else 'fp32'} "
          f"GEMM roofline ({achieved / 1e9:.1f} GFLOP/s achieved)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
