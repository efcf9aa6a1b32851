"""A synthetic generator benchmark in the ForenSynths layout, built in seconds, offline.

    python -m deepfake.cli.synthetic --out data/synthetic
    python -m deepfake.cli.synthetic --out data/photos --photo --trace 0.25   # 1024-1536 px, weak traces

"Real" images are procedural scenes with natural-image statistics: a dead-leaves model
(occluding disks with power-law radii, which gives the 1/f spectrum of photographs) and
1/f textured waves, at varied sizes, some saved as JPEG. "Fake" images are other real-like
images put through what GAN and diffusion decoders do to pixels: downsample, then
re-synthesise through an up-sampling stage. Each up-sampling family is one generator:

    tconv         transposed convolution (stride 2, kernel 4): checkerboard artifacts
    nearest       nearest-neighbour up-sampling + 3x3 convolution
    bilinear      bilinear up-sampling + 3x3 convolution
    pixelshuffle  sub-pixel convolution (4 filters interleaved by pixel shuffle)

Layout::

    OUT/train/{category}/{0_real,1_fake}/   fakes from --train_family only
    OUT/val/{category}/{0_real,1_fake}/
    OUT/test/{family}/{category}/{0_real,1_fake}/   every family: the cross-generator question
"""

from __future__ import annotations

import functools
import logging
import math
import struct
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deepfake.utils.fileio import atomic_write
from deepfake.utils.threads import usable_cpus

log = logging.getLogger(__name__)

FAMILIES = ("tconv", "nearest", "bilinear", "pixelshuffle")
CATEGORIES = ("leaves", "waves")
GRAIN = 0.01  # std of the per-pixel noise every image ends with
# Sides of photo-sized images (1024 px and up: where a 256 px crop keeps under 6% of the pixels).
PHOTO_SIZES = (1024, 1536)


def detail_scale(h: int, w: int) -> float:
    """Pixels per unit of scene detail: 1 up to 320 px, then growing with the image.

    A photo has more pixels per object than a thumbnail of the same scene, not more objects:
    at 4000 px a 256 px crop may hold one smooth patch (sky, skin, defocused background). The
    scenes keep that property, so a small analysis window sees little of the image's detail.
    """
    return max(1.0, max(h, w) / 320)


def dead_leaves(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Occluding disks with radii ~ r^-3 (scale invariance), flat colours plus fine grain."""
    image = np.empty((h, w, 3), dtype=np.float32)
    image[:] = rng.uniform(0, 1, 3)
    scale = detail_scale(h, w)
    r_min, r_max = 2.0 * scale, max(h, w) / 3
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    inner, outer = 1.0 / r_min**2, 1.0 / r_min**2 - 1.0 / r_max**2
    for _ in range(int(h * w / (180 * scale**2))):
        # The draws of rng.uniform(), rng.uniform(0, h), rng.uniform(0, w) in one call (the same numbers).
        u, fy, fx = rng.random(3).tolist()
        # Inverse-CDF draw from p(r) ~ r^-3 on [r_min, r_max].
        r = 1.0 / math.sqrt(inner - u * outer)
        cy, cx = h * fy, w * fx
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r + 1, h))
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r + 1, w))
        if y0 >= y1 or x0 >= x1:
            continue
        # Squares in float32, compared in float64 (as against numpy's r * r).
        mask = (ys[y0:y1] - cy) ** 2 + (xs[:, x0:x1] - cx) ** 2 <= np.float64(r * r)
        # np.clip's own values, without its Python-level dispatch (hundreds of disks per image).
        colour = np.minimum(np.maximum(rng.normal(0.5, 0.25, 3), 0.0), 1.0)
        image[y0:y1, x0:x1][mask] = colour
    return image


@functools.lru_cache(maxsize=8)
def _falloff(h: int, w: int, exponent: float) -> np.ndarray:
    """f**exponent over the real FFT's half plane (1 at DC): the same for every field of one size."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    falloff = f**exponent
    falloff.flags.writeable = False
    return falloff


def pink_noise(rng: np.random.Generator, h: int, w: int, exponent: float = 1.0) -> np.ndarray:
    """Noise with a 1/f^exponent amplitude spectrum, scaled to [0, 1]."""
    falloff = _falloff(h, w, exponent)
    spectrum = (rng.normal(size=falloff.shape) + 1j * rng.normal(size=falloff.shape)) / falloff
    field = np.fft.irfft2(spectrum, s=(h, w))
    field -= field.min()
    return (field / max(field.max(), 1e-8)).astype(np.float32)


def waves(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth coloured 1/f fields with a few oriented edges: a second, texture-like scene type."""
    image = np.stack([pink_noise(rng, h, w, 1.4) for _ in range(3)], axis=-1)
    ys, xs = np.arange(h, dtype=np.float32)[:, None] - h / 2, np.arange(w, dtype=np.float32)[None, :] - w / 2
    blend = np.empty_like(image)
    for _ in range(rng.integers(2, 6)):
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(-0.5, 0.5) * max(h, w)
        side = (np.float32(np.cos(angle)) * xs + np.float32(np.sin(angle)) * ys) > offset
        # float32 * 0.6 plus a float64 colour, rounded to float32 where ``side`` holds: the values
        # of ``image[side] = image[side] * 0.6 + 0.4 * colour``, without gathering and scattering.
        np.multiply(image, np.float32(0.6), out=blend)
        np.copyto(image, blend + 0.4 * rng.uniform(0, 1, 3), where=side[..., None], casting="same_kind")
    return image


SCENES = {"leaves": dead_leaves, "waves": waves}


def real_image(rng: np.random.Generator, category: str, h: int, w: int) -> np.ndarray:
    """A real-like image [h, w, 3] in [0, 1]: scene, fine sensor-like grain, slight optical blur."""
    image = SCENES[category](rng, h, w)
    # [1, 2, 1] / 4 binomial blur, separably (as fast at photo sizes as a memory pass can be).
    padded = np.pad(image, ((1, 1), (0, 0), (0, 0)), mode="reflect")
    image = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    padded = np.pad(image, ((0, 0), (1, 1), (0, 0)), mode="reflect")
    image = 0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:]
    image += GRAIN * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 1, out=image)


def _smoothing_kernel(rng: np.random.Generator, size: int) -> torch.Tensor:
    """A learned-looking kernel: a blur with random per-tap perturbations, per colour channel."""
    base = torch.tensor(np.outer(np.hanning(size + 2)[1:-1], np.hanning(size + 2)[1:-1]), dtype=torch.float32)
    kernels = []
    for _ in range(3):
        k = base * torch.from_numpy(rng.uniform(0.7, 1.3, (size, size)).astype(np.float32))
        kernels.append(k / k.sum())
    return torch.stack(kernels)[:, None]  # [3, 1, size, size]


def upsample(family: str, small: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Re-synthesise [1, 3, h, w] at twice the size through one decoder up-sampling family."""
    if family == "tconv":
        # Stride-2 transposed conv with a 4x4 kernel: uneven overlap -> checkerboard.
        kernel = _smoothing_kernel(rng, 4) * 4.0
        return F.conv_transpose2d(small, kernel, stride=2, padding=1, groups=3)
    if family == "nearest":
        up = F.interpolate(small, scale_factor=2, mode="nearest")
    elif family == "bilinear":
        up = F.interpolate(small, scale_factor=2, mode="bilinear", align_corners=False)
    elif family == "pixelshuffle":
        # Four slightly different filters, one per sub-pixel position.
        kernels = torch.cat([_smoothing_kernel(rng, 3) for _ in range(4)])  # [12, 1, 3, 3]
        feats = F.conv2d(F.pad(small, (1, 1, 1, 1), mode="reflect").repeat_interleave(4, dim=1), kernels, groups=12)
        return F.pixel_shuffle(feats, 2)
    else:
        raise ValueError(f"unknown generator family {family!r}; choose from {FAMILIES}")
    return F.conv2d(F.pad(up, (1, 1, 1, 1), mode="reflect"), _smoothing_kernel(rng, 3), groups=3)


def fake_image(rng: np.random.Generator, category: str, family: str, h: int, w: int,
               trace: float = 1.0) -> np.ndarray:
    """A real-like scene, downsampled by 2, then re-synthesised by ``family``'s up-sampling.

    ``trace`` < 1 blends the re-synthesis with the scene it came from, for a weaker trace.
    """
    source = torch.from_numpy(real_image(rng, category, h, w)).permute(2, 0, 1)[None]
    small = F.avg_pool2d(source, 2)
    image = upsample(family, small, rng)[0, :, :h, :w]
    if trace != 1.0:
        image = source[0] + trace * (image - source[0])
    # The same sensor-like grain as the reals: what remains to find is the up-sampling trace itself.
    image = image + torch.from_numpy(rng.normal(0, GRAIN, image.shape).astype(np.float32))
    return image.permute(1, 2, 0).clamp(0, 1).numpy()


def stored_png(rgb: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> the bytes of a PNG file holding it stored (zlib level 0), no row filter.

    Pillow's encoder picks a filter for every row even when it does not compress, which costs
    ten times the rest of writing a synthetic image; any PNG reader gives back the same pixels.
    """
    h, w, _ = rgb.shape
    rows = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    rows[:, 0] = 0  # filter type 0 (None) at the start of each row
    rows[:, 1:] = rgb.reshape(h, -1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlacing
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 0))
            + chunk(b"IEND", b""))


def save(image: np.ndarray, path: Path, jpeg_quality: int | None) -> None:
    """Write ``image`` ([H, W, 3] in [0, 1], scaled in place) as a JPEG or a stored PNG.

    Atomically but not synced: a benchmark is rebuilt in seconds, and a sync per image is most
    of the time its writing takes.
    """
    image *= 255
    image += 0.5
    rgb = image.astype(np.uint8)
    if jpeg_quality:
        path = path.with_suffix(".jpg")
        atomic_write(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="JPEG", quality=jpeg_quality),
                     durable=False)
    else:
        # Stored, not deflated: the pixels are the same, written and read several times faster.
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(stored_png(rgb)), durable=False)


def generation_jobs(out: str | Path, n_train: int = 60, n_val: int = 15, n_test: int = 20, seed: int = 0,
                    train_family: str = "tconv", sizes: tuple[int, int] = (256, 320), jpeg_share: float = 0.2,
                    trace: float = 1.0, test_families: tuple[str, ...] = FAMILIES) -> list[tuple[str, tuple]]:
    """(split, job) for every folder :func:`generate` writes, the training and validation folders first;
    :func:`write_folder` writes one."""
    out = Path(out)
    unknown = [f for f in (train_family, *test_families) if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown generator famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                         f"choose from {', '.join(FAMILIES)}")
    plan = [("train", None, n_train), ("val", None, n_val)] + [("test", f, n_test) for f in test_families]
    jobs = []
    for step, (split, family, count) in enumerate(plan):
        for c, category in enumerate(CATEGORIES):
            for label in (0, 1):
                folder = out / split / (family or "") / category / ("0_real", "1_fake")[label]
                # One random stream per folder: the result does not depend on how folders are scheduled.
                jobs.append((split, (folder, [seed, step, c, label], category,
                                     family or train_family if label else None, count, sizes, jpeg_share, trace)))
    return jobs


def generate(out: str | Path, n_train: int = 60, n_val: int = 15, n_test: int = 20, seed: int = 0,
             train_family: str = "tconv", sizes: tuple[int, int] = (256, 320), jpeg_share: float = 0.2,
             trace: float = 1.0, test_families: tuple[str, ...] = FAMILIES) -> Path:
    """Write the benchmark under ``out``; counts are per category and label. Returns ``out``.

    ``sizes`` bounds each side (``PHOTO_SIZES`` for photo-sized images); ``trace`` < 1 weakens
    the fakes' up-sampling trace (see :func:`fake_image`); ``test_families`` picks the test generators.
    """
    jobs = generation_jobs(out, n_train, n_val, n_test, seed, train_family, sizes, jpeg_share, trace, test_families)
    with ProcessPoolExecutor(max_workers=usable_cpus()) as pool:
        list(pool.map(write_folder, [job for _, job in jobs]))
    log.info("synthetic benchmark written to %s", out)
    return Path(out)


def write_folder(job: tuple) -> None:
    """Write one folder of :func:`generation_jobs` (in a worker process: one torch thread)."""
    folder, stream, category, family, count, sizes, jpeg_share, trace = job
    torch.set_num_threads(1)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(stream)
    for i in range(count):
        h, w = (int(v) // 2 * 2 for v in rng.integers(sizes[0], sizes[1] + 1, 2))
        image = real_image(rng, category, h, w) if family is None else fake_image(rng, category, family, h, w, trace)
        quality = int(rng.integers(85, 96)) if rng.uniform() < jpeg_share else None
        save(image, folder / f"{i:05d}.png", quality)
