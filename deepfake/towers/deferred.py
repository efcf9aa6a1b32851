"""A tower that is named but not yet built: built on its first forward, only if one is needed.

``load_tower(..., defer=True)`` returns a :class:`DeferredTower` when the family can say what
its tower is from the checkpoint's config alone (:class:`~deepfake.towers.base.TowerShape`).
It has everything a run reads before extraction (``preprocess``, ``identity``,
``cache_identity()``, ``feature_dim``, ``num_layers``, ``hidden_size``, ``taps``, a target ``device`` and
``dtype``), so a run whose features are all cached never imports the modeling code nor reads
the weights. The first ``forward`` (or ``materialize()``) builds the real tower once, checks
that it is what the config said, then applies the moves and rewrites asked for meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from deepfake.towers.backbones import Backbone
from deepfake.towers.base import ImageTower, TowerOutput, TowerShape

log = logging.getLogger(__name__)

# What the built tower must agree on with the deferred one; a difference would file features
# under another tower's cache key.
CHECKED_FIELDS = ("feature_dim", "num_layers", "hidden_size", "taps", "cache_identity")


class DeferredTower(ImageTower):
    """Stands for the tower ``build(backbone)`` makes, with the identity and sizes read from its config."""

    def __init__(self, backbone: Backbone, identity: dict, shape: TowerShape,
                 build: Callable[[Backbone], ImageTower]):
        super().__init__()
        self.backbone = backbone
        self.identity = identity
        self.feature_dim = int(shape.feature_dim)
        self.num_layers = int(shape.num_layers)
        self.hidden_size = int(shape.hidden_size)
        self.taps = tuple(shape.taps)
        self._build = build
        self._steps: list[Callable[[ImageTower], ImageTower]] = []
        self._device = torch.device("cpu")
        self._dtype = torch.float32
        self.built: ImageTower | None = None

    @property
    def is_built(self) -> bool:
        return self.built is not None

    @property
    def device(self) -> torch.device:
        return self.built.device if self.built is not None else self._device

    @property
    def dtype(self) -> torch.dtype:
        return self.built.dtype if self.built is not None else self._dtype

    def after_build(self, step: Callable[[ImageTower], ImageTower], device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> DeferredTower:
        """Apply ``step`` to the tower once built (now, if it is); ``device``/``dtype``: where it leaves it."""
        self._steps.append(step)  # kept: a released tower is rebuilt the same way
        if device is not None:
            self._device = torch.device(device)
        if dtype is not None:
            self._dtype = dtype
        if self.built is not None:
            self.built = step(self.built)
        return self

    def to(self, *args, **kwargs) -> DeferredTower:
        # Recorded even once built: a released tower is rebuilt where it was moved.
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        return self.after_build(lambda tower: tower.to(*args, **kwargs), device,
                                dtype if dtype is not None and dtype.is_floating_point else None)

    def _apply(self, fn, recurse: bool = True):
        # .half(), .cuda(), .float() ... would act on the built tower without being recorded (or,
        # before the build, on nothing at all): moves and casts go through .to().
        raise TypeError(f"{type(self).__name__}: move or cast a deferred tower with .to(device, dtype)")

    def fuse_for_inference(self) -> DeferredTower:
        return self.after_build(lambda tower: tower.fuse_for_inference())

    def materialize(self) -> ImageTower:
        """The real tower: built on the first call (then checked against the config), the same one after."""
        if self.built is None:
            # The first forward may come inside inference_mode: the weights must load as they do
            # eagerly. Models are initialised randomly before their weights are read: that must not
            # draw from the run's random stream (a head's dropout masks would change with the timing).
            with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
                tower = self._build(self.backbone)
                self._check(tower)
                for step in self._steps:
                    tower = step(tower)
            self.built = tower
        return self.built

    def release(self) -> None:
        """Drop the built tower (its weights: 1.2 GB for LanguageBind in fp32) once every feature
        a run needs is in hand; a later forward builds it again, prepared the same way."""
        if self.built is not None:
            device = self.built.device
            self.built = None
            if device.type == "cuda":
                torch.cuda.empty_cache()

    def _check(self, tower: ImageTower) -> None:
        for field in CHECKED_FIELDS:
            mine, built = getattr(self, field), getattr(tower, field)
            if callable(mine):
                mine, built = mine(), built()
            if mine == built:
                continue
            if isinstance(mine, dict) and isinstance(built, dict):
                keys = sorted(k for k in mine.keys() | built.keys() if mine.get(k) != built.get(k))
                mine, built = ({k: d.get(k) for k in keys} for d in (mine, built))
            raise RuntimeError(
                f"{self.backbone.name}: the built tower's {field} ({built!r}) differs from the one read "
                f"from its config ({mine!r}); the {self.identity.get('family')} family's shape and its "
                f"tower disagree"
            )

    def forward(self, pixel_values: torch.Tensor, layers: bool | str = False) -> TowerOutput:
        return self.materialize()(pixel_values, layers=layers)
