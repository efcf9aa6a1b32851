"""A tower made of parts: several frozen towers read one image, and a head sees their features side by side.

``--model spectrum+spectrum-tiles256`` names a :class:`FusedTower` of two parts. It keeps the
contract of a single tower (``feature_dim``, ``preprocess``, ``identity``, ``forward``): its
feature is the parts' features concatenated in the order named, and its preprocessing is every
part's own (:class:`~deepfake.data.preprocess.FusedPreprocess`): each image is decoded once and
prepared once per part, as one flat tensor that :meth:`FusedTower.forward` cuts back into the
parts' inputs. Each part's features are cached under the key a run on that part alone uses
(:mod:`deepfake.features.extraction`), so fused and single runs share their extraction.

How a name is read (:func:`fused_parts`): a ``+`` joins parts; an existing file or folder whose
name holds a ``+`` is one tower (the path wins), and a hub id cannot hold one. A part cannot be a
path with ``+`` in it: link it under another name. A fused run reads each part's final feature
only: per-block tokens (``--feature_layers``, the ``layers`` and ``rine`` heads) are refused.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from deepfake.data.preprocess import FUSED_MODE, FusedPreprocess, Preprocess, part_shapes
from deepfake.towers.backbones import Backbone
from deepfake.towers.base import ImageTower, TowerOutput, requested_tap
from deepfake.towers.weights import WeightsError

SEPARATOR = "+"
FAMILY = FUSED_MODE  # the family a fused tower's identity names
# What a fused run supports, said wherever the rest is refused.
SUPPORTED = "a fused tower gives each part's final feature, concatenated: heads on it are mlp and linear"


def fused_parts(model: str) -> list[str] | None:
    """The part names of a fused ``model`` (``A+B[+C]``), or ``None`` for a single tower.

    An existing path is one tower, whatever its name holds; an empty part is an error.
    """
    if SEPARATOR not in model or Path(model).expanduser().exists():
        return None
    parts = [part.strip() for part in model.split(SEPARATOR)]
    if any(not part for part in parts):
        raise WeightsError(f"{model}: an empty part; a fused tower is written A+B[+C] (each part a tower name, "
                           "a local directory or a hub id)")
    if len(set(parts)) != len(parts):
        raise WeightsError(f"{model}: a part named twice; each part of a fused tower is a different tower")
    return parts


class FusedTower(ImageTower):
    """Frozen towers run on one decode of each image; the feature is their features concatenated."""

    def __init__(self, parts: list[ImageTower], name: str | None = None):
        super().__init__()
        if len(parts) < 2:
            raise ValueError("a fused tower needs at least two parts")
        # A plain tuple, not submodules: a part may be a deferred tower, moved only through .to().
        self.parts = tuple(parts)
        self.name = name or SEPARATOR.join(part.backbone.name for part in parts)
        self.num_layers, self.hidden_size, self.taps = 0, 0, ()

    @property
    def backbone(self) -> Backbone:
        return Backbone(self.name, FAMILY, "", None)

    @property
    def preprocess(self) -> FusedPreprocess:
        return FusedPreprocess(tuple(part.preprocess for part in self.parts))

    def set_preprocess(self, preprocess: FusedPreprocess) -> None:
        """Prepare images as ``preprocess`` says, part by part (a checkpoint's record)."""
        if len(preprocess.parts) != len(self.parts):
            raise ValueError(f"{self.name}: {len(preprocess.parts)} preprocessings for {len(self.parts)} parts")
        for part, spec in zip(self.parts, preprocess.parts):
            part.backbone = replace(part.backbone, preprocess=spec)

    @property
    def feature_dim(self) -> int:
        return sum(int(part.feature_dim) for part in self.parts)

    @property
    def widths(self) -> list[int]:
        """Each part's share of the feature, in order."""
        return [int(part.feature_dim) for part in self.parts]

    @property
    def identity(self) -> dict:
        return {"model": self.name, "family": FAMILY, "feature_dim": self.feature_dim,
                "feature": f"the features of its {len(self.parts)} parts, concatenated",
                "parts": [dict(part.identity) for part in self.parts]}

    def cache_identity(self) -> dict:
        # Never a cache key of its own: each part's features are cached under the part's key.
        return {"parts": [part.cache_identity() for part in self.parts]}

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0].dtype

    def to(self, *args, **kwargs) -> FusedTower:
        self.parts = tuple(part.to(*args, **kwargs) for part in self.parts)
        return self

    def _apply(self, fn, recurse: bool = True):
        for part in self.parts:
            part._apply(fn, recurse)
        return self

    def map_parts(self, step) -> FusedTower:
        """Replace every part by ``step(part)`` (preparing, fusing kernels); returns this tower."""
        self.parts = tuple(step(part) for part in self.parts)
        return self

    def fuse_for_inference(self) -> FusedTower:
        return self.map_parts(lambda part: part.fuse_for_inference())

    def release(self) -> None:
        """Drop every part built on demand (see :meth:`DeferredTower.release`)."""
        for part in self.parts:
            if hasattr(part, "release"):
                part.release()

    def subset(self, chosen: tuple[int, ...]) -> ImageTower:
        """A tower of the parts numbered ``chosen`` (one part: that part itself)."""
        if len(chosen) == 1:
            return self.parts[chosen[0]]
        return FusedTower([self.parts[j] for j in chosen])

    def split(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Each part's input from a batch of fused image tensors [B, sum of the parts' sizes]."""
        shapes = part_shapes(self.preprocess)
        sizes = [int(torch.Size(shape).numel()) for shape in shapes]
        if pixel_values.dim() != 2 or pixel_values.shape[1] != sum(sizes):
            raise ValueError(f"{self.name}: expected [batch, {sum(sizes)}] fused image tensors, "
                             f"got {list(pixel_values.shape)}")
        chunks = torch.split(pixel_values, sizes, dim=1)
        return [chunk.reshape(len(chunk), *shape) for chunk, shape in zip(chunks, shapes)]

    def forward(self, pixel_values: torch.Tensor, layers: bool | str = False) -> TowerOutput:
        if requested_tap(layers) is not None:
            raise ValueError(f"{self.name}: no per-block tokens; {SUPPORTED}")
        with torch.no_grad():
            embeds = [part(x, layers=False).embeds.float() for part, x in zip(self.parts, self.split(pixel_values))]
        return TowerOutput(embeds=torch.cat(embeds, dim=1))


def is_fused(tower) -> bool:
    """Whether ``tower`` is made of parts."""
    return isinstance(tower, FusedTower)


def part_preprocesses(preprocess: Preprocess | FusedPreprocess) -> tuple[Preprocess, ...]:
    """The preprocessing of each part (a single tower's: its own, alone)."""
    return preprocess.parts if isinstance(preprocess, FusedPreprocess) else (preprocess,)
