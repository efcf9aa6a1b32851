"""The published test protocols: how UniversalFakeDetect, CNNDetection and AIGCDetectBenchmark
prepare, sample and degrade their test images, so that a number computed here is computed as theirs.

=============  =================================  ==========================  ==========================
protocol       image -> tensor                    images per domain           degradation
=============  =================================  ==========================  ==========================
ufd            CenterCrop(224), no resize         1000 per class, 100 when a  blur (uint8), then JPEG
                                                  class has fewer; equal
cnndetection   CenterCrop(224), no resize         all                         blur (uint8), then JPEG
aigcdetect     short side to 256 (PIL bilinear),  all                         blur (uint8), then JPEG
               then CenterCrop(224)
rine           CenterCrop(224), no resize         all                         none (as requested: blur
                                                                              (uint8), then JPEG)
=============  =================================  ==========================  ==========================

Where each rule is written upstream (the files read; commits in docs/evaluation.md):

- UFD ``validate.py``: ``RealFakeDataset.__init__`` builds ``CenterCrop(224), ToTensor(), Normalize``;
  ``read_path`` keeps ``max_sample`` (``--max_sample``, default 1000) of each class after shuffling,
  falls back to 100 when a class has fewer than ``max_sample``, and asserts equal counts;
  ``__getitem__`` blurs (``gaussian_blur``: ``scipy.ndimage.gaussian_filter`` into the uint8 array)
  and then JPEG-compresses (``png2jpg``, Pillow); ``validate`` writes the accuracy at 0.5 and AP.
- CNNDetection ``eval.py`` sets ``opt.no_resize = True``; ``data/datasets.py`` ``binary_dataset``
  then applies ``data_augment`` (blur, then JPEG) and ``CenterCrop(opt.cropSize=224)``.
- AIGCDetectBenchmark ``data/process.py`` ``processing``: ``custom_resize`` (``TF.resize(img, 256,
  BILINEAR)`` on the PIL image: short side 256, long side ``int(256 * long / short)``) and
  ``CenterCrop(224)``; ``data/datasets.py`` ``custom_augment`` degrades first (one of resize, blur,
  JPEG per run, its ``--noise_type``).
- RINE ``scripts/validation.py``: ``get_transforms()``'s second transform (``CenterCrop(224),
  ToTensor(), Normalize``) on every image of each of ``src/utils.py`` ``get_generators()``'s 20 sets
  (UFD's 19 and ``stylegan2``: the ``rine`` benchmark preset), listed by ``src/data.py``
  ``EvaluationDataset`` (``Image.open(...).convert("RGB")``, no sampling, no perturbation);
  ``evaluation`` prints the accuracy at 0.5 and AP per set and their means.

The crop is :func:`deepfake.data.preprocess.center_crop` (torchvision's ``CenterCrop``, bit for
bit: zero padding ``(size - W) // 2`` left and ``(size - W + 1) // 2`` right, offsets rounded half
to even); the normalisation is the tower's own mean and std.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

from PIL import Image

from deepfake.data.perturbations import Perturbation
from deepfake.data.preprocess import FUSED_MODE, NATIVE_MODES, Preprocess, short_side_shape
from deepfake.data.test_sets import TestSample


@dataclass(frozen=True)
class Protocol:
    """One published test protocol: preprocessing, sampling, blur and the numbers it reports."""

    name: str
    title: str
    crop: int = 224
    resize_short: int | None = None  # short side before the crop (PIL bilinear, as torchvision resizes a PIL image)
    max_sample: int | None = None  # images per class and domain (UFD: 1000) ...
    fallback: int | None = None  # ... or this many when a class has fewer (UFD: 100); both classes equal
    headline: str = ""  # what the repository writes: accuracy at 0.5 and AP
    sources: tuple[str, ...] = ()  # the upstream files each rule is read from

    def to_dict(self) -> dict:
        return {**asdict(self), "sources": list(self.sources)}


PROTOCOLS = {
    "ufd": Protocol(
        "ufd", "UniversalFakeDetect (Ojha et al., CVPR 2023), validate.py", max_sample=1000, fallback=100,
        headline="validate.py writes AP (ap.txt) and real, fake and overall accuracy at 0.5 (acc0.txt)",
        sources=("WisconsinAIVision/UniversalFakeDetect validate.py: RealFakeDataset (transform, read_path, "
                 "__getitem__), gaussian_blur, png2jpg, validate, --max_sample",)),
    "cnndetection": Protocol(
        "cnndetection", "CNNDetection (Wang et al., CVPR 2020), eval.py",
        headline="eval.py writes accuracy at 0.5 and AP per test set",
        sources=("PeterWang512/CNNDetection eval.py (opt.no_resize = True), validate.py, "
                 "data/datasets.py: binary_dataset, data_augment, gaussian_blur",)),
    "aigcdetect": Protocol(
        "aigcdetect", "AIGCDetectBenchmark (Zhong et al., PatchCraft), eval_all.py", resize_short=256,
        headline="eval_all.py writes accuracy at 0.5, AP, real and fake accuracy at 0.5",
        sources=("Ekko-zn/AIGCDetectBenchmark data/process.py: processing, custom_resize (loadSize 256, "
                 "rz_interp bilinear), CenterCrop(CropSize 224); data/datasets.py: custom_augment, gaussian_blur",)),
    "rine": Protocol(
        "rine", "RINE (Koutlis & Papadopoulos, ECCV 2024), scripts/validation.py",
        headline="validation.py prints accuracy at 0.5 and AP per set and their means (on --benchmark rine)",
        sources=("mever-team/rine scripts/validation.py; src/utils.py: get_transforms (transforms_test_1: "
                 "CenterCrop(224)), get_generators, evaluation; src/data.py: EvaluationDataset",)),
}
PROTOCOL_NAMES = tuple(PROTOCOLS)


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOL_NAMES)}")
    return PROTOCOLS[name]


def protocol_preprocess(tower: Preprocess, protocol: Protocol) -> Preprocess:
    """The protocol's image -> tensor: a centre crop without resizing, at the tower's input size,
    normalised with the tower's mean and std (the published crop is 224, every 224 tower's size)."""
    if tower.mode == FUSED_MODE:
        raise ValueError(f"--protocol {protocol.name} crops a {protocol.crop}px square for one tower; a fused tower's "
                         "parts each take their own preprocessing, so the protocol does not apply")
    if tower.mode in NATIVE_MODES:
        raise ValueError(f"--protocol {protocol.name} crops a {protocol.crop}px square; this tower analyses native "
                         f"pixels ({tower.mode} preprocessing), so the protocol does not apply")
    return Preprocess(mode="crop", size=tower.size, mean=tower.mean, std=tower.std, interpolation=tower.interpolation)


def protocol_resize(protocol: Protocol, size: int) -> int | None:
    """The short side before the crop, scaled with the crop when the tower's input is not 224."""
    if protocol.resize_short is None:
        return None
    return protocol.resize_short * size // protocol.crop


def resize_short_side_pil(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``Resize(size)`` on a PIL image, as AIGCDetectBenchmark's ``custom_resize`` calls it.

    Short side to ``size``, long side ``int(size * long / short)``; an image already that size is
    returned as it is; otherwise Pillow's bilinear resize (antialiased), in uint8.
    """
    h, w = short_side_shape(image.height, image.width, size)
    if (h, w) == (image.height, image.width):
        return image
    return image.resize((w, h), Image.BILINEAR)


@dataclass(frozen=True)
class ProtocolImage:
    """What a protocol does to the decoded image before the crop: the degradation, then its resize."""

    perturb: Perturbation
    resize_short: int | None = None

    def __call__(self, image: Image.Image) -> Image.Image:
        image = self.perturb(image)
        if self.resize_short is not None:
            image = resize_short_side_pil(image, self.resize_short)
        return image

    @property
    def is_identity(self) -> bool:
        return self.perturb.is_identity and self.resize_short is None


def protocol_perturbation(perturb: Perturbation) -> Perturbation:
    """A degradation as the published repositories apply it: their uint8 blur, then JPEG."""
    return replace(perturb, blur="uint8")


def _cut(reals: list[TestSample], fakes: list[TestSample], max_sample: int, fallback: int,
         seed: int) -> tuple[int, int, int]:
    """UFD's ``read_path`` count for one domain (shuffling ``reals`` and ``fakes`` in place):
    (images kept per class, the count validate.py asked for, reals and fakes kept)."""
    n = max_sample if len(reals) >= max_sample and len(fakes) >= max_sample else fallback
    rng = random.Random(seed)  # validate.py re-seeds before each domain, then shuffles reals, then fakes
    rng.shuffle(reals)
    rng.shuffle(fakes)
    if reals and fakes:
        k = min(n, len(reals), len(fakes))
        return n, k, k
    return n, min(n, len(reals)), min(n, len(fakes))


def equal_class_sample(samples: list[TestSample], max_sample: int, fallback: int,
                       seed: int) -> tuple[list[TestSample], dict, list[str]]:
    """UniversalFakeDetect's sampling, per domain: ``max_sample`` reals and as many fakes, drawn at
    random; ``fallback`` of each when either class has fewer than ``max_sample``; always equal counts.

    Where a class has fewer than ``fallback`` images UFD's ``validate.py`` stops on its equal-count
    assert; here both classes are cut to the smaller count and a note says so. Each domain's lists
    are sorted and shuffled with ``seed``, so reals shared by several domains (UFD's LAION reals)
    are drawn the same for each, as validate.py draws them (it re-seeds before each domain). The
    images drawn are not UFD's own draw: its lists come in the file system's order.
    Returns the kept samples (in their order), counts ``{domain: {real|fake: {used, found}}}`` and notes.
    """
    groups: dict[str, tuple[list, list]] = {}
    for s in samples:
        groups.setdefault(s.generator, ([], []))[s.label].append(s)
    kept, counts, notes = set(), {}, []
    for generator, (reals, fakes) in groups.items():
        found = (len(reals), len(fakes))
        reals, fakes = sorted(reals, key=lambda s: s.path), sorted(fakes, key=lambda s: s.path)
        n, k_real, k_fake = _cut(reals, fakes, max_sample, fallback, seed)
        note = []
        if n != max_sample:
            note.append(f"fewer than {max_sample} in a class, so {fallback} of each (validate.py's fallback)")
        if reals and fakes and k_real < n:
            note.append(f"fewer than {n} in a class, where UFD's validate.py stops (its equal-count assert): "
                        f"both classes cut to {k_real}")
        if note:
            notes.append(f"{generator}: {found[0]} real, {found[1]} fake: " + "; ".join(note))
        kept.update(id(s) for s in reals[:k_real] + fakes[:k_fake])
        counts[generator] = {name: {"used": used, "found": total}
                             for name, used, total in (("real", k_real, found[0]), ("fake", k_fake, found[1])) if total}
    return [s for s in samples if id(s) in kept], counts, notes
