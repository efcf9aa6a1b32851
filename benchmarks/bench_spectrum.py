"""The spectral tower on photos: the naive path against the project's, img/s and peak RSS side by side.

    python benchmarks/bench_spectrum.py                      # 100 photos of 1280x720, four spectrum records
    python benchmarks/bench_spectrum.py --n 30 --models spectrum

The naive path is the spectral tower as first written, kept here as the reference formula
(``tests/test_spectrum.py`` checks the project's features against it for every spectrum
record): the whole photo converted to float, every tile cut from it and stacked, batches of
``--batch_size`` images whatever their size, and the whole batch through one 3x3 convolution,
one complex FFT, an ``fftshift`` and a ring sum. The project's path is
:func:`deepfake.features.extraction.extract_features` as ``deepfake predict`` runs it: tiles
cut from the decoded image one by one, batches bounded by a pixel budget, the FFT fed a chunk of
tiles at a time. Each path runs in a fresh process of its own (so each peak RSS is its own:
the process's high-water mark, imports included) on the same JPEG files, one after the other.
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
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deepfake.data.preprocess import (  # noqa: E402
    Preprocess,
    center_crop,
    normalize,
    resize_short_side,
    resize_square,
)

MODELS = ("spectrum", "spectrum-tiles256", "spectrum-window512", "spectrum-crop256")


# --- the naive path: the reference formula -------------------------------------------------


def naive_pixels(image: Image.Image, spec: Preprocess) -> torch.Tensor:
    """The first implementation's preprocessing: the whole image as float first (three full-size copies on the way)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
    if spec.mode == "window":  # [4, S, S]: RGB and a plane marking the image's own square
        side = min(spec.size, *x.shape[-2:])
        out = x.new_zeros(4, spec.size, spec.size)
        out[:3, :side, :side] = normalize(center_crop(x, side).contiguous(), spec.mean, spec.std)
        out[3, :side, :side] = 1.0
        return out
    if spec.mode == "tiles":  # [grid * grid, S, S] gray tiles ([grid * grid * 3, S, S] RGB ones in colour)
        h, w = x.shape[-2:]
        tops = np.linspace(0, max(h - spec.size, 0), spec.grid).round().astype(int)
        lefts = np.linspace(0, max(w - spec.size, 0), spec.grid).round().astype(int)
        tiles = [center_crop(x[:, t : t + spec.size, left : left + spec.size], spec.size) for t in tops for left in lefts]
        tiles = normalize(torch.stack(tiles).contiguous(), spec.mean, spec.std)
        return tiles.flatten(0, 1) if spec.colour else tiles.mean(dim=1)
    if spec.mode == "resize":
        x = resize_short_side(x, spec.resize_size or spec.size, spec.interpolation)
    elif spec.mode == "squash":
        x = resize_square(x, spec.size, spec.interpolation)
    return normalize(center_crop(x, spec.size).contiguous(), spec.mean, spec.std)


def _naive_spectrum(gray: torch.Tensor) -> torch.Tensor:
    """[B, H, W] -> centred full complex FFT of the residual (3x3 mean by convolution; Hann window if square)."""
    kernel = torch.full((1, 1, 3, 3), 1.0 / 9.0, dtype=gray.dtype)
    residual = gray - F.conv2d(F.pad(gray[:, None], (1, 1, 1, 1), mode="reflect"), kernel)[:, 0]
    h, w = residual.shape[-2:]
    window = torch.hann_window(w)
    window = window[None, :] * torch.hann_window(h)[:, None] if h == w else 1.0
    return torch.fft.fftshift(torch.fft.fft2(residual * window), dim=(-2, -1))


def _naive_rings(values: torch.Tensor, bins: int) -> torch.Tensor:
    """[B, H, W] centred-plane values -> [B, bins]: mean per ring (index_add), pooled or interpolated to ``bins``."""
    h, w = values.shape[-2:]
    rings = max(1, min(h, w) // 2)
    ys = torch.arange(h, dtype=torch.float32) - h // 2
    xs = torch.arange(w, dtype=torch.float32) - w // 2
    ring = torch.clamp((torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2) / (min(h, w) / 2) * rings).long(), max=rings)
    sums = torch.zeros(values.shape[0], rings + 1).index_add_(1, ring.flatten(), values.flatten(1))
    profile = (sums / torch.bincount(ring.flatten(), minlength=rings + 1).clamp(min=1))[:, :rings]
    if rings > bins:
        profile = F.adaptive_avg_pool1d(profile[:, None], bins)[:, 0]
    elif rings < bins:
        profile = F.interpolate(profile[:, None], size=bins, mode="linear", align_corners=True)[:, 0]
    return profile


def _naive_log_power(spectrum: torch.Tensor, bins: int) -> torch.Tensor:
    profile = _naive_rings(torch.log1p(spectrum.abs() ** 2), bins)
    return profile - profile.mean(dim=1, keepdim=True)


def naive_profile(gray: torch.Tensor, bins: int) -> torch.Tensor:
    """[B, H, W] -> [B, bins]: 3x3 mean by convolution, full complex FFT, fftshift, index_add over rings."""
    return _naive_log_power(_naive_spectrum(gray), bins)


def naive_colour_profile(rgb: torch.Tensor, bins: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 5 * bins]: each plane's full FFT; gray, R-G, B-G log ring power; R/G, B/G coherence."""
    red, green, blue = (_naive_spectrum(rgb[:, c]) for c in range(3))
    for plane in (red, green, blue):  # the DC term (centred), as the project drops it
        plane[:, plane.shape[1] // 2, plane.shape[2] // 2] = 0

    def coherence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        cross = _naive_rings((a * b.conj()).real, bins)
        power = _naive_rings(a.abs() ** 2, bins) * _naive_rings(b.abs() ** 2, bins)
        return torch.where(power > 0, cross / torch.sqrt(power), torch.zeros_like(cross))  # no power: 0

    def log_ring_power(spectrum: torch.Tensor) -> torch.Tensor:
        power = _naive_rings(spectrum.abs() ** 2, bins)
        profile = torch.log(power + torch.clamp(power.mean(dim=1, keepdim=True) * 1e-4, min=1e-12))
        return profile - profile.mean(dim=1, keepdim=True)

    gray = (red + green + blue) / 3
    return torch.cat([log_ring_power(gray), log_ring_power(red - green), log_ring_power(blue - green),
                      coherence(red, green), coherence(blue, green)], dim=1)


def naive_features(pixels: torch.Tensor, spec: Preprocess, bins: int = 128) -> torch.Tensor:
    """The first implementation's tower: a batch of :func:`naive_pixels` -> [B, bins] features ([B, 5 * bins] in colour)."""
    x = pixels.float()
    if spec.mode == "tiles" and spec.colour:
        b, s = len(x), spec.size
        return naive_colour_profile(x.view(-1, 3, s, s), bins).view(b, -1, 5 * bins).mean(dim=1)
    if spec.mode == "tiles":
        b, t = x.shape[:2]
        return naive_profile(x.flatten(0, 1), bins).view(b, t, -1).mean(dim=1)
    if spec.mode != "window":
        return naive_profile(x.mean(dim=1), bins)
    sides = x[:, 3, :, 0].sum(dim=1).round().long()
    out = x.new_empty(len(x), bins)
    for side in sides.unique().tolist():
        group = (sides == side).nonzero().flatten()
        out[group] = naive_profile(x[group, :3, :side, :side].mean(dim=1), bins)
    return out


# --- one measured run, in its own process --------------------------------------------------


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def measure(path: str, model: str, folder: str, batch_size: int) -> dict:
    """Features of every photo in ``folder`` by one path; the seconds they took and the process's peak RSS."""
    from torch.utils.data import DataLoader

    from deepfake.deepfake_dataset import DeepfakeDataset, Sample, collate
    from deepfake.features.extraction import ExtractionSettings, extract_features
    from deepfake.towers.loading import load_tower

    tower = load_tower(model)
    samples = [Sample(str(p), -1, "") for p in sorted(Path(folder).glob("*.jpg"))]
    start = time.perf_counter()
    if path == "naive":
        class Naive(DeepfakeDataset):
            def load(self, index: int) -> torch.Tensor:
                return naive_pixels(self.read(index), self.preprocess)

        loader = DataLoader(Naive(samples, tower.preprocess), batch_size=batch_size, collate_fn=collate)
        with torch.inference_mode():
            feats = torch.cat([naive_features(b["pixel_values"], tower.preprocess, tower.bins) for b in loader])
        feats = feats.half().float()  # rounded as the project's features are for the cache
    else:
        settings = ExtractionSettings(batch_size=batch_size, num_workers=0, progress=False)
        feats = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), settings).embeds.float()
    seconds = time.perf_counter() - start
    return {"images": len(feats), "seconds": seconds, "peak_mib": _peak_mib(), "features": feats.flatten().tolist()}


def measure_decode(path: str, model: str, photo: str) -> dict:
    """Decode and preprocess one large photo by one path: the process's peak RSS above what it held before."""
    from deepfake.data.image_io import load_image
    from deepfake.data.preprocess import preprocess_image
    from deepfake.towers.backbones import backbone_for

    spec = backbone_for(model).preprocess or Preprocess()
    before = _rss_mib()
    image = load_image(photo)
    x = (naive_pixels if path == "naive" else preprocess_image)(image, spec)
    return {"peak_mib": _peak_mib() - before, "shape": list(x.shape)}


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def write_photos(folder: Path, n: int, size: tuple[int, int]) -> None:
    """``n`` photo-like JPEGs (q90): smooth colour fields, edges and sensor-like grain."""
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(n):
        coarse = rng.normal(128, 50, (h // 32 + 2, w // 32 + 2, 3)).clip(0, 255).astype(np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        field = field + rng.integers(-6, 7, field.shape, dtype=np.int16)
        Image.fromarray(field.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=90)


def run_child(path: str, model: str, *where: str) -> dict:
    """One measurement in a fresh process: ``where`` is ``--folder DIR --batch_size B`` or ``--photo FILE``."""
    done = subprocess.run([sys.executable, __file__, "--child", path, "--models", model, *where],
                          capture_output=True, text=True, env=os.environ)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"{path} {model} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(line[7:])


def compare_folders(models: list[str], folder: Path, batch_size: int) -> None:
    print(f"{'record':<20} {'path':<8} {'img/s':>7} {'peak RSS':>10}")
    for model in models:
        rows = {path: run_child(path, model, "--folder", str(folder), "--batch_size", str(batch_size))
                for path in ("naive", "project")}
        for path, r in rows.items():
            print(f"{model:<20} {path:<8} {r['images'] / r['seconds']:7.2f} {r['peak_mib']:7.0f} MiB", flush=True)
        naive, project = rows["naive"], rows["project"]
        print(f"{'':<20} speed-up {naive['seconds'] / project['seconds']:.2f}x, peak RSS "
              f"{project['peak_mib'] / naive['peak_mib']:.2f}x the naive path's; fp16 features differ by at most "
              f"{max(abs(a - b) for a, b in zip(naive['features'], project['features'])):.1e}", flush=True)


def compare_decode(models: list[str], photo: Path) -> None:
    print(f"{'record':<34} {'naive':>9} {'project':>9}  (peak RSS above the process before the photo)")
    for model in models:
        naive, project = (run_child(path, model, "--photo", str(photo))["peak_mib"] for path in ("naive", "project"))
        print(f"{model:<34} {naive:5.0f} MiB {project:5.0f} MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="photos (default %(default)s)")
    parser.add_argument("--size", default="1280x720", help="photo size WxH (default %(default)s)")
    parser.add_argument("--models", default=",".join(MODELS), help="spectrum records (default: all four)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per batch asked for (predict's default)")
    parser.add_argument("--child", choices=("naive", "project"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--photo", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.photo:
            result = measure_decode(args.child, args.models, args.photo)
        else:
            result = measure(args.child, args.models, args.folder, args.batch_size)
        print("RESULT " + json.dumps(result))
        return 0
    w, h = (int(v) for v in args.size.lower().split("x"))
    models = args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        write_photos(Path(tmp), args.n, (w, h))
        print(f"{args.n} JPEG photos of {w}x{h}, --batch_size {args.batch_size}, each path in a process of its own")
        compare_folders(models, Path(tmp), args.batch_size)
        big = Path(tmp) / "big"
        big.mkdir()
        write_photos(big, 1, (8192, 6144))
        print("\none 50 MP JPEG (8192x6144): decode and preprocess")
        compare_decode([*models, "LanguageBind/LanguageBind_Image"], next(big.glob("*.jpg")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
