"""One record per backbone: where its weights come from and how images are prepared for it.

A record is looked up by the string a user passes to ``--model``. Names not listed here
(another hub id, a local directory) get a record built from the checkpoint's own config,
with the OpenAI CLIP image statistics that every CLIP-family tower was trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Preprocessing modes. "resize": short side to `size` (bicubic, antialiased), center crop:
# the LanguageBind / CLIP transform. "crop": center crop `size` without resizing, zero
# padding smaller images: the UniversalFakeDetect test protocol, which keeps the
# generator's pixel grid intact.
PREPROCESS_MODES = ("resize", "crop")


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the tensor a tower sees."""

    mode: str = "resize"
    size: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.mode not in PREPROCESS_MODES:
            raise ValueError(f"unknown preprocessing mode {self.mode!r}; choose one of {PREPROCESS_MODES}")

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        return cls(
            mode=data["mode"],
            size=int(data["size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
            interpolation=data.get("interpolation", "bicubic"),
        )


@dataclass(frozen=True)
class Backbone:
    """A named tower: the family that loads it, its weight source and its preprocessing."""

    name: str
    family: str  # "languagebind", "clip" or "spectrum"
    source: str  # hub id or local directory; "" for towers without weights
    preprocess: Preprocess
    revision: str | None = None

    def with_mode(self, mode: str | None) -> Backbone:
        """This record with another preprocessing mode (``None`` keeps the record's own)."""
        if mode is None or mode == self.preprocess.mode:
            return self
        return replace(self, preprocess=replace(self.preprocess, mode=mode))


DEFAULT_MODEL = "LanguageBind/LanguageBind_Image"

KNOWN_BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("LanguageBind/LanguageBind_Image", "languagebind", "LanguageBind/LanguageBind_Image", Preprocess()),
        # UniversalFakeDetect's tower.
        Backbone("openai/clip-vit-large-patch14", "clip", "openai/clip-vit-large-patch14", Preprocess()),
        # Frequency-analysis baseline: no weights, the full-resolution pixel grid matters,
        # so no resizing and no CLIP normalisation.
        Backbone("spectrum", "spectrum", "", Preprocess(mode="crop", size=256, mean=(0.0,) * 3, std=(1.0,) * 3)),
    )
}


def backbone_for(model: str, revision: str | None = None, mode: str | None = None) -> Backbone:
    """The record for ``--model``; unknown ids and directories get CLIP preprocessing."""
    record = KNOWN_BACKBONES.get(model)
    if record is None:
        # The family is read from the checkpoint's config when it is loaded.
        record = Backbone(model, "auto", model, Preprocess())
    if revision is not None:
        record = replace(record, revision=revision)
    return record.with_mode(mode)
