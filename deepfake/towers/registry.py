"""The tower families, looked up by name or by a checkpoint's ``model_type``.

Each family is one module of :mod:`deepfake.towers.families` that calls :func:`register` when
imported; this registry imports every module of that package on first lookup, so no other
module imports a family by name, and no family imports the loader. Adding a family is one new
module in that folder.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from deepfake.data.preprocess import Preprocess
from deepfake.towers.backbones import Backbone
from deepfake.towers.base import ImageTower, TowerShape
from deepfake.towers.weights import WeightFiles, WeightsError

FAMILY_PACKAGE = "deepfake.towers.families"


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
    load: Callable[[WeightFiles | None, Backbone, dict], ImageTower]
    default_preprocess: Callable[[dict], Preprocess] | None = None
    feature: str = ""  # what the feature is, in words, for messages and the README table
    fused: bool = False  # whether deepfake/towers/fast_clip.py rewrites its blocks
    weightless: bool = False
    shape: Callable[[dict, str], TowerShape] | None = None  # None: built at load time
    # A whole released network, named by its .pth file: whether a state dict is this family's, and
    # the tower built from it (deepfake/towers/released.py).
    fits_state: Callable[[dict], bool] | None = None
    from_state: Callable[[dict, Backbone, dict], ImageTower] | None = None
    head_key: str = ""  # a released network: its last linear layer, which becomes the head


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
        package = importlib.import_module(FAMILY_PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{FAMILY_PACKAGE}.{info.name}")
        _loaded = True


def families() -> dict[str, TowerFamily]:
    """Every registered family by name."""
    _load_all()
    return dict(_FAMILIES)


def family(name: str) -> TowerFamily:
    _load_all()
    if name not in _FAMILIES:
        raise WeightsError(f"unknown tower family {name!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def supported_model_types() -> list[str]:
    return sorted(t for f in families().values() for t in f.model_types)


def family_for_config(config: dict, where: str) -> TowerFamily:
    """The family whose ``model_types`` include the config's ``model_type``; anything else is refused."""
    model_type = config.get("model_type")
    for candidate in families().values():
        if model_type in candidate.model_types:
            return candidate
    raise WeightsError(
        f"{where}: model_type {model_type!r} is not an image tower this project loads; "
        f"supported model_types: {', '.join(supported_model_types())}"
    )


def family_for_state(state: dict, where: str) -> TowerFamily:
    """The released-network family whose keys and shapes ``state`` has; anything else is refused."""
    networks = [f for f in families().values() if f.fits_state is not None]
    for candidate in networks:
        if candidate.fits_state(state):
            return candidate
    raise WeightsError(f"{where}: not the weights of a released network this project runs (its keys and shapes are "
                       f"not those of {', '.join(f.name for f in networks)})")
