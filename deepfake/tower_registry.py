"""The tower families, looked up by name or by a checkpoint's ``model_type``.

Each family is one module that calls :func:`register` when imported; this registry only
knows the modules' names (``FAMILY_MODULES``) and imports them on first lookup, so the
loader (:mod:`deepfake.towers`) never imports a family, and no family imports the loader.
Adding a family is one new module plus one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from deepfake.backbones import Backbone, Preprocess
from deepfake.tower_base import ImageTower, TowerShape
from deepfake.tower_files import CheckpointError, CheckpointFiles

FAMILY_MODULES = (
    "deepfake.tower_languagebind",
    "deepfake.tower_clip",
    "deepfake.tower_siglip",
    "deepfake.tower_dinov2",
    "deepfake.tower_dinov3",
    "deepfake.spectrum",
)


@dataclass(frozen=True)
class TowerFamily:
    """How one family is recognised, loaded and fed.

    ``load(files, backbone, identity)`` builds the frozen tower from resolved checkpoint files
    (``files`` is ``None`` for a family without weights); ``default_preprocess(config)`` is the
    family's own training transform, used when a checkpoint has no ``preprocessor_config.json``;
    ``shape(config, where)`` says what the built tower will be from the checkpoint's config alone
    (sizes read from it, never a table), so a run whose features are all cached never builds it.
    A family module imports no transformers modeling code at import time: only ``load`` needs it.
    """

    name: str
    model_types: tuple[str, ...]
    load: Callable[[CheckpointFiles | None, Backbone, dict], ImageTower]
    default_preprocess: Callable[[dict], Preprocess] | None = None
    feature: str = ""  # what the feature is, in words, for messages and the README table
    fused: bool = False  # whether deepfake/fast_clip.py rewrites its blocks
    weightless: bool = False
    shape: Callable[[dict, str], TowerShape] | None = None  # None: built at load time


_FAMILIES: dict[str, TowerFamily] = {}
_loaded = False


def register(family: TowerFamily) -> TowerFamily:
    """Add ``family`` to the registry (called by each family module at import)."""
    clash = [t for other in _FAMILIES.values() if other.name != family.name for t in other.model_types
             if t in family.model_types]
    if clash:
        raise ValueError(f"tower family {family.name!r}: model_type(s) {clash} already registered")
    _FAMILIES[family.name] = family
    return family


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for module in FAMILY_MODULES:
            importlib.import_module(module)
        _loaded = True


def families() -> dict[str, TowerFamily]:
    """Every registered family by name."""
    _load_all()
    return dict(_FAMILIES)


def family(name: str) -> TowerFamily:
    _load_all()
    if name not in _FAMILIES:
        raise CheckpointError(f"unknown tower family {name!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def supported_model_types() -> list[str]:
    return sorted(t for f in families().values() for t in f.model_types)


def family_for_config(config: dict, where: str) -> TowerFamily:
    """The family whose ``model_types`` include the config's ``model_type``; anything else is refused."""
    model_type = config.get("model_type")
    for candidate in families().values():
        if model_type in candidate.model_types:
            return candidate
    raise CheckpointError(
        f"{where}: model_type {model_type!r} is not an image tower this project loads; "
        f"supported model_types: {', '.join(supported_model_types())}"
    )
