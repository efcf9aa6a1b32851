"""Patch-score heatmaps (``deepfake predict --heatmap DIR``) for detectors whose tower scores patches.

Tiny-LaDeDa's positions each see a 9 x 9 patch of the image, and its head scores every position
(the paper's patch scores); the image's score is the head on the mean feature. A heatmap shows
each position's logit (> 0: fake) over the image it came from, one PNG per image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfake.data.image_io import load_image
from deepfake.data.preprocess import preprocess_image
from deepfake.features.batch import FeatureBatch
from deepfake.utils.fileio import atomic_write

log = logging.getLogger(__name__)

MAX_SIDE = 1200  # the image's long side in the PNG, in pixels (larger images are shown smaller)
DPI = 100
# Tiny-LaDeDa's position (i, j) sees input rows 2i .. 2i + 8: the map's stride and receptive field.
PATCH_STRIDE, PATCH_FIELD = 2, 9


def has_patch_scores(classifier) -> bool:
    """Whether the classifier's tower scores patches (its head applies at every position of a feature map)."""
    tower = getattr(classifier, "tower", None)
    return bool(getattr(tower, "patch_scores", False)) and not getattr(classifier, "blocks", ())


@torch.no_grad()
def patch_logits(classifier, image: Image.Image) -> np.ndarray:
    """[h, w] fake logit of every position of the tower's feature map for ``image``, as the head scores it."""
    tower, head = classifier.tower, classifier.head
    x = preprocess_image(image, classifier.preprocess)[None].to(tower.device)
    fmap = tower.feature_map(x)[0].float()  # [D, h, w]
    d, h, w = fmap.shape
    rows = fmap.permute(1, 2, 0).reshape(h * w, d).cpu()
    head.eval()
    logits = head(FeatureBatch(rows.to(next(head.parameters()).device))).float().cpu()
    fake = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
    return fake.reshape(h, w).numpy()


def heatmap_size(width: int, height: int) -> tuple[int, int]:
    """The PNG's (width, height) in pixels for an image of ``width`` x ``height``: the image (long side at most
    :data:`MAX_SIDE`) plus a strip for the colour bar on the right and one for the title above."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return w + 160, h + 60


def draw_heatmap(path: Path, image: Image.Image, logits: np.ndarray, probability: float, title: str,
                 input_size: tuple[int, int]) -> None:
    """Write ``path``: ``image`` with ``logits`` over it (a diverging map centred on 0), a colour bar and the score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    width, height = heatmap_size(image.width, image.height)
    img_w, img_h = width - 160, height - 60
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, img_w / width, img_h / height))
    bar = fig.add_axes(((img_w + 20) / width, 0.05, 20 / width, 0.8 * img_h / height))
    ax.imshow(image, extent=(0, image.width, image.height, 0), interpolation="antialiased")
    # Position (i, j) covers input pixels [2i, 2i + 9); the input is the image resized or not.
    sx, sy = image.width / input_size[0], image.height / input_size[1]
    h, w = logits.shape
    extent = (0, (PATCH_STRIDE * (w - 1) + PATCH_FIELD) * sx, (PATCH_STRIDE * (h - 1) + PATCH_FIELD) * sy, 0)
    limit = float(np.percentile(np.abs(logits), 99)) or 1.0
    shown = ax.imshow(logits, extent=extent, cmap="coolwarm", alpha=0.55, interpolation="nearest",
                      norm=TwoSlopeNorm(0.0, -limit, limit))
    ax.set_xlim(0, image.width)
    ax.set_ylim(image.height, 0)
    ax.axis("off")
    fig.colorbar(shown, cax=bar, extend="both").set_label("patch logit (> 0: fake)")
    fig.text(0.01, 1 - 8 / height, f"{title}: P(fake) {probability:.4f}", va="top", fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    plt.close(fig)


def heatmap_name(path: str, taken: set[str]) -> str:
    """``<stem>.png``, with a counter where two images share a stem."""
    stem, name, k = Path(path).stem, f"{Path(path).stem}.png", 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}.png"
    taken.add(name)
    return name


def write_heatmaps(classifier, predictions, out_dir: str | Path, max_pixels: int) -> list[Path]:
    """One PNG per scored prediction in ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, taken = [], set()
    for p in predictions:
        if p.probability is None:
            continue
        image = load_image(p.path, max_pixels)
        logits = patch_logits(classifier, image)
        pre = classifier.preprocess  # native: the image's own pixels; the paper's transform: the whole image squashed
        input_size = (image.width, image.height) if pre.mode == "native" else (pre.size, pre.size)
        target = out / heatmap_name(p.path, taken)
        draw_heatmap(target, image, logits, p.probability, Path(p.path).name, input_size)
        written.append(target)
    return written
