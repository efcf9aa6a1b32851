"""Protocol fidelity: perturbation order and blur padding against references; TPR@FPR, UFD's threshold."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from deepfake.data.perturbations import Perturbation, gaussian_blur
from deepfake.data.preprocess import Preprocess
from deepfake.deepfake_dataset import DeepfakeDataset, Sample
from deepfake.evaluation.metrics import best_threshold, threshold_for_fpr, tpr_at_fpr, ufd_threshold

CROP = Preprocess(mode="crop")


def reference_blur(array: np.ndarray, sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter semantics by hand: truncate 4, 'reflect' = numpy 'symmetric' padding."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    padded = np.pad(array.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    h, w = array.shape[:2]
    rows = sum(k[i] * padded[:, i:i + w] for i in range(len(k)))
    out = sum(k[i] * rows[i:i + h] for i in range(len(k)))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def pil_jpeg(array: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def to_tensor_like(array: np.ndarray) -> np.ndarray:
    """What crop preprocessing gives for an image of exactly the crop size: normalised CHW."""
    x = array.astype(np.float32).transpose(2, 0, 1) / 255.0
    return (x - np.array(CROP.mean, dtype=np.float32)[:, None, None]) / np.array(CROP.std, dtype=np.float32)[:, None, None]


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.normal(128, 40, (56, 56, 3))
    array = np.clip(np.kron(base, np.ones((4, 4, 1))) + rng.normal(0, 12, (224, 224, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path)
    return path, array


@pytest.mark.parametrize("sigma", [0.7, 2.0, 3.0])
def test_blur_matches_scipy_reflect_reference(sigma, photo):
    _, array = photo
    ours = np.asarray(gaussian_blur(Image.fromarray(array), sigma))
    assert np.abs(ours.astype(int) - reference_blur(array, sigma).astype(int)).max() <= 1
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    expected = np.stack([scipy_ndimage.gaussian_filter(array[..., c].astype(np.float64), sigma, mode="reflect")
                         for c in range(3)], axis=-1)
    assert np.abs(ours.astype(float) - np.rint(expected)).max() <= 1


def test_blur_padding_is_scipy_reflect_not_mirror_on_a_tiny_image():
    # A 3x3 image with a radius-12 kernel: the padding is far wider than the image.
    array = np.arange(27, dtype=np.uint8).reshape(3, 3, 3) * 9
    ours = np.asarray(gaussian_blur(Image.fromarray(array), 3.0))
    assert np.array_equal(ours, reference_blur(array, 3.0))
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    expected = np.stack([scipy_ndimage.gaussian_filter(array[..., c].astype(np.float64), 3.0, mode="reflect")
                         for c in range(3)], axis=-1)
    assert np.array_equal(ours, np.rint(expected).astype(np.uint8))


def test_perturbation_blurs_first_then_compresses(photo):
    path, array = photo
    perturb = Perturbation(jpeg_quality=40, gaussian_sigma=1.5)
    tensor = DeepfakeDataset([Sample(str(path), 1, "c")], CROP, perturb=perturb).load(0).numpy()
    blur_then_jpeg = to_tensor_like(pil_jpeg(reference_blur(array, 1.5), 40))
    jpeg_then_blur = to_tensor_like(reference_blur(pil_jpeg(array, 40), 1.5))
    right = np.abs(tensor - blur_then_jpeg).mean()
    wrong = np.abs(tensor - jpeg_then_blur).mean()
    assert right < 0.01 < wrong
    assert perturb.label() == "blur1.5+jpeg40"


def test_tpr_at_fpr_by_hand():
    # 20 reals: the top 1 (5% of 20) may score above the threshold, which is then the 2nd highest real, 0.80.
    reals = [0.01 * i for i in range(19)] + [0.95]
    reals[18] = 0.80
    fakes = [0.99, 0.9, 0.85, 0.81, 0.80, 0.5, 0.2, 0.1]
    labels = [0] * 20 + [1] * 8
    scores = reals + fakes
    assert threshold_for_fpr(reals, 0.05) == pytest.approx(0.80)
    assert tpr_at_fpr(labels, scores, 0.05) == pytest.approx(4 / 8)  # 0.99, 0.9, 0.85, 0.81 are > 0.80
    # At 1%, floor(0.2) = 0 reals may pass: the threshold is the highest real, 0.95.
    assert tpr_at_fpr(labels, scores, 0.01) == pytest.approx(1 / 8)
    assert tpr_at_fpr([1, 1], [0.3, 0.9], 0.05) is None


def test_calibration_threshold_reaches_the_target_within_one_image():
    rng = np.random.default_rng(0)
    for n in (37, 200, 1001):
        reals = rng.random(n)
        for target in (0.01, 0.05, 0.1, 0.33):
            t = threshold_for_fpr(reals, target)
            false_positives = int(np.sum(reals > t))
            assert false_positives <= target * n and abs(false_positives - target * n) < 1


def ufd_reference(labels, scores):
    """UniversalFakeDetect's find_best_threshold, line by line, on reals-first ordered arrays."""
    y = np.array(labels)
    s = np.array(scores, dtype=float)
    y_true = np.concatenate([y[y == 0], y[y == 1]])
    y_pred = np.concatenate([s[y == 0], s[y == 1]])
    n = len(y_true)
    if y_pred[: n // 2].max() <= y_pred[n // 2:].min():
        return (y_pred[: n // 2].max() + y_pred[n // 2:].min()) / 2
    best_acc, best_thres = 0, 0
    for thres in y_pred:
        temp = (y_pred >= thres).astype(int)
        acc = (temp == y_true).sum() / n
        if acc >= best_acc:
            best_thres, best_acc = thres, acc
    return best_thres


def test_ufd_threshold_reproduces_its_procedure_and_differs_from_the_exact_maximiser():
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.integers(0, 2, 40)
        labels[:2] = [0, 1]
        scores = np.round(np.clip(labels * 0.3 + rng.normal(0.4, 0.2, 40), 0, 1), 2)
        assert ufd_threshold(labels, scores) == pytest.approx(ufd_reference(labels, scores))
    # A case where UFD's ">=" search and ">" scoring disagree: its printed accuracy is below the maximum.
    labels, scores = [0, 0, 1, 1], [0.2, 0.7, 0.6, 0.9]
    t = ufd_threshold(labels, scores)
    ufd_acc = np.mean((np.array(scores) > t) == np.array(labels))
    assert best_threshold(labels, scores)[1] == 0.75 and ufd_acc == 0.5
