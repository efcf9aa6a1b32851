"""One record per backbone: where its weights come from and how images are prepared for it.

A record is looked up by the string a user passes to ``--model``. A record may leave its
preprocessing to the checkpoint (``preprocess=None``): it is then read from the checkpoint's
``preprocessor_config.json`` (size, crop, resample, mean, std) when the tower is loaded.
Names not listed here (another hub id, a local directory) get a record whose family is read
from the checkpoint's ``config.json`` (its ``model_type``) and whose preprocessing comes from
that ``preprocessor_config.json``, or from the family's own training statistics when the
checkpoint has none (logged, never silently another family's).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

from deepfake.data.preprocess import NATIVE_MODES, PREPROCESS_MODES, Preprocess

log = logging.getLogger(__name__)

# PIL resample codes, as preprocessor_config.json stores them, to the interpolations used here.
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
# Lanczos, box and hamming have no torch form; bicubic is the nearest in frequency response.
_RESAMPLE_APPROX = {1: "lanczos", 4: "box", 5: "hamming"}


def _side(value, where: str, field: str) -> int | tuple[str, int]:
    """A square side from a processor size field: an int, {"height", "width"} or {"shortest_edge"}."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return ("shortest_edge", int(value["shortest_edge"]))
        if "height" in value and "width" in value:
            if int(value["height"]) != int(value["width"]):
                raise ValueError(f"{where}: {field} {value} is not square; only square tower inputs are supported")
            return int(value["height"])
    raise ValueError(f"{where}: cannot read {field}={value!r} (expected an int, height/width or shortest_edge)")


def preprocess_from_processor_config(data: dict, where: str) -> Preprocess:
    """The :class:`Preprocess` a transformers ``preprocessor_config.json`` describes."""
    resample = int(data.get("resample", 3))
    interpolation = _RESAMPLE.get(resample)
    if interpolation is None:
        name = _RESAMPLE_APPROX.get(resample, f"code {resample}")
        log.warning("%s: resample %s has no torch form; using bicubic", where, name)
        interpolation = "bicubic"
    if data.get("do_normalize", True):
        if "image_mean" not in data or "image_std" not in data:
            raise ValueError(f"{where}: do_normalize without image_mean and image_std")
        mean, std = tuple(float(v) for v in data["image_mean"]), tuple(float(v) for v in data["image_std"])
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if data.get("do_rescale", True) is False:
        raise ValueError(f"{where}: do_rescale false (pixels in 0..255) is not supported; towers here see [0, 1]")
    size = _side(data["size"], where, "size") if data.get("do_resize", True) and "size" in data else None
    if size is None and data.get("max_num_patches"):
        # NaFlex (SigLIP 2): up to max_num_patches patches; a square image of sqrt(N) patches a side.
        size = math.isqrt(int(data["max_num_patches"])) * int(data.get("patch_size", 16))
    crop = _side(data["crop_size"], where, "crop_size") if data.get("do_center_crop") and "crop_size" in data else None
    if isinstance(crop, tuple):
        raise ValueError(f"{where}: crop_size must give the crop's height and width")
    if isinstance(size, tuple):  # short side, then (optionally) the center crop
        return Preprocess("resize", crop or size[1], mean, std, interpolation,
                          resize_size=size[1] if crop and crop != size[1] else None)
    if size is not None:
        if crop is not None and crop != size:
            # Resize to a square, then crop a smaller square: the short side is the square's.
            return Preprocess("resize", crop, mean, std, interpolation, resize_size=size)
        return Preprocess("squash", size, mean, std, interpolation)
    if crop is not None:
        return Preprocess("crop", crop, mean, std, interpolation)
    raise ValueError(f"{where}: neither a resize size nor a crop size; cannot tell the tower's input size")


@dataclass(frozen=True)
class Backbone:
    """A named tower: the family that loads it, its weight source and its preprocessing.

    ``family`` is ``"auto"`` when the checkpoint's config decides; ``preprocess`` is ``None``
    when the checkpoint's ``preprocessor_config.json`` (or the family's default) decides.
    ``options`` holds family settings that change the features (e.g. the spectral analysis).
    ``standardize`` says that a head should standardise the features per dimension (``--standardize
    auto``): true where they have large offsets and small spreads (log power spectra), false where
    they are already of a scale a head trains on (CLIP-like embeddings).
    """

    name: str
    family: str
    source: str  # hub id or local directory; "" for towers without weights
    preprocess: Preprocess | None
    revision: str | None = None
    options: tuple[tuple[str, object], ...] = ()
    standardize: bool = False

    def with_mode(self, mode: str | None) -> Backbone:
        """This record with another preprocessing mode (``None`` keeps the record's own).

        ``resize`` means the tower's own resizing transform (``resize`` or ``squash``).
        """
        if mode is None or self.preprocess is None:
            return self
        if mode == "resize" and self.preprocess.mode in ("resize", "squash"):
            return self
        if mode == self.preprocess.mode:
            return self
        if mode == "native":
            raise ValueError(f"{self.name}: --preprocess native (the whole unresized image) is for the fully "
                             "convolutional released networks (a Tiny-LaDeDa or NPR .pth file as --model)")
        if self.preprocess.mode in NATIVE_MODES and mode not in PREPROCESS_MODES[2:]:
            raise ValueError(f"{self.name}: this tower analyses native pixels; --preprocess {mode} does not apply")
        tiles = mode == "tiles"
        return replace(self, preprocess=replace(self.preprocess, mode=mode, resize_size=None,
                                                grid=self.preprocess.grid if tiles else None,
                                                colour=self.preprocess.colour and tiles))

    def option(self, key: str, default=None):
        return dict(self.options).get(key, default)


# Spectral baseline: no weights, the full-resolution pixel grid matters, so no resizing and no
# CLIP normalisation. The default reads 4 x 4 tiles of 256 px spread over the whole image in
# colour: the log power of the gray, R-G and B-G residuals and the R/G, B/G coherence, averaged
# over the tiles ("spectrum-colour" names that analysis for good). It was chosen on public sets of
# real photos (benchmarks/spectral_real_photos.py; docs/towers.md), where colour beat every gray
# analysis. The gray analyses: "spectrum-tiles256" (the same tiles, gray: the default until colour
# took its place, and the demo's tower), "spectrum-crop256" (a 256 px centre crop),
# "spectrum-tiles512" (2 x 2 tiles of 512 px), "spectrum-window512" / "-window1024" (the largest
# centred square up to 512 / 1024 px). See deepfake/towers/families/spectrum.py.
# Log power spectra have large offsets and small spreads: a head standardises them (docs/heads.md).
_SPECTRUM_PIXELS = {"mean": (0.0,) * 3, "std": (1.0,) * 3}

KNOWN_BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("LanguageBind/LanguageBind_Image", "languagebind", "LanguageBind/LanguageBind_Image", Preprocess()),
        # UniversalFakeDetect's tower.
        Backbone("openai/clip-vit-large-patch14", "clip", "openai/clip-vit-large-patch14", Preprocess()),
        # Towers of the 2025-2026 detectors; their repositories carry preprocessor_config.json.
        Backbone("laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "clip", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", None),
        Backbone("google/siglip-so400m-patch14-384", "siglip", "google/siglip-so400m-patch14-384", None),
        Backbone("google/siglip2-so400m-patch14-384", "siglip", "google/siglip2-so400m-patch14-384", None),
        Backbone("facebook/dinov2-large", "dinov2", "facebook/dinov2-large", None),
        Backbone("facebook/dinov2-with-registers-large", "dinov2", "facebook/dinov2-with-registers-large", None),
        Backbone("facebook/dinov3-vitl16-pretrain-lvd1689m", "dinov3", "facebook/dinov3-vitl16-pretrain-lvd1689m",
                 None),
        Backbone("spectrum", "spectrum", "",
                 Preprocess(mode="tiles", size=256, grid=4, colour=True, **_SPECTRUM_PIXELS), standardize=True),
        Backbone("spectrum-crop256", "spectrum", "", Preprocess(mode="crop", size=256, **_SPECTRUM_PIXELS),
                 standardize=True),
        Backbone("spectrum-window512", "spectrum", "", Preprocess(mode="window", size=512, **_SPECTRUM_PIXELS),
                 standardize=True),
        Backbone("spectrum-tiles256", "spectrum", "", Preprocess(mode="tiles", size=256, grid=4, **_SPECTRUM_PIXELS),
                 standardize=True),
        Backbone("spectrum-tiles512", "spectrum", "", Preprocess(mode="tiles", size=512, grid=2, **_SPECTRUM_PIXELS),
                 standardize=True),
        Backbone("spectrum-window1024", "spectrum", "", Preprocess(mode="window", size=1024, **_SPECTRUM_PIXELS),
                 standardize=True),
        Backbone("spectrum-colour", "spectrum", "",
                 Preprocess(mode="tiles", size=256, grid=4, colour=True, **_SPECTRUM_PIXELS), standardize=True),
    )
}


def backbone_for(model: str, revision: str | None = None, mode: str | None = None) -> Backbone:
    """The record for ``--model``; unknown ids and directories are resolved from their files."""
    record = KNOWN_BACKBONES.get(model)
    if record is None:
        # Family and preprocessing are read from the checkpoint when it is loaded.
        record = Backbone(model, "auto", model, None)
    if revision is not None:
        record = replace(record, revision=revision)
    return record.with_mode(mode)
