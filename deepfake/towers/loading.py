"""Frozen image towers: load one from a hub id, a local directory or a weight-free name.

``load_tower("facebook/dinov2-large")`` looks the name up in :mod:`deepfake.towers.backbones`,
resolves the files (hub cache with ``HF_HUB_OFFLINE=1`` honoured, or a local directory;
single-file or sharded weights), finds the family from the config's ``model_type`` in
:mod:`deepfake.towers.registry`, reads the preprocessing from ``preprocessor_config.json``
(or the family's own when there is none), and lets the family build the frozen tower.

With ``defer=True`` the tower is named but not built (:class:`~deepfake.towers.deferred.DeferredTower`):
its identity and sizes come from the config, and the weights are read on its first forward.
A training run whose features are all cached therefore never builds it.
"""

from __future__ import annotations

import difflib
import logging
import re
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from deepfake.towers.backbones import KNOWN_BACKBONES, Backbone, backbone_for, preprocess_from_processor_config
from deepfake.towers.base import ImageTower, TowerOutput, TransformersTower, tower_identity
from deepfake.towers.deferred import DeferredTower
from deepfake.towers.fused import SEPARATOR, FusedTower, fused_parts
from deepfake.towers.registry import TowerFamily, family, family_for_config
from deepfake.towers.released import NETWORK_NAMES, is_network_file, load_network_file
from deepfake.towers.weights import WeightFiles, WeightsError, file_sha256, read_state_dict, resolve_weights

__all__ = [
    "WeightsError", "WeightFiles", "DeferredTower", "ImageTower", "TowerOutput", "TransformersTower",
    "check_model", "file_sha256", "load_tower", "read_state_dict", "resolve_weights",
]

log = logging.getLogger(__name__)

# A hub model id: org/name, letters, digits, '-', '_' and '.' (no leading '.' or '-').
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def check_model(model: str) -> str:
    """``model`` when it can name a tower: a known name, a local directory or a hub id ``org/name``.

    Checked before any data is read, so a typo costs nothing; the error lists the known names
    and the closest one. Whether a hub id exists is found when it is loaded.
    """
    if model in KNOWN_BACKBONES or Path(model).expanduser().is_dir() or is_network_file(model):
        return model
    if NETWORK_NAMES.known(model):
        NETWORK_NAMES.file(model)  # not in the cache yet: the message says how to put it there
        return model
    parts = fused_parts(model)
    if parts is not None:
        for number, part in enumerate(parts, 1):
            with part_named(model, number, part):
                check_model(part)
        return model
    if Path(model).expanduser().exists():
        raise WeightsError(f"{model}: a file, not a checkpoint directory (a tower is a folder holding "
                           "config.json and its weights, or a released network's .pth file: Tiny-LaDeDa, NPR)")
    if _HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        return model
    known = [*KNOWN_BACKBONES, *NETWORK_NAMES.names()]
    # Match whole names and the part after the org ("dinov2-large" -> facebook/dinov2-large), any case.
    names = {**{n.lower().split("/")[-1]: n for n in known}, **{n.lower(): n for n in known}}
    close = difflib.get_close_matches(model.lower(), list(names), n=1, cutoff=0.6)
    hint = f"did you mean {names[close[0]]}? " if close else ""
    looks_local = "/" in model or "\\" in model or model.startswith((".", "~"))
    what = "not a checkpoint directory nor a hub id (no such directory)" if looks_local else "not a known tower name"
    raise WeightsError(f"{model}: {what}; {hint}valid: {', '.join(known)}, a local checkpoint "
                       "directory, or a hub id org/name")



def _checkpoint_preprocess(files: WeightFiles, tower_family: TowerFamily, config: dict, name: str):
    processor = files.read_preprocessor()
    if processor is not None:
        try:
            return preprocess_from_processor_config(processor, str(files.preprocessor))
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{files.preprocessor}: {exc}") from exc
    if tower_family.default_preprocess is None:
        raise WeightsError(f"{name}: no {files.directory / 'preprocessor_config.json'} and the "
                              f"{tower_family.name} family has no default preprocessing")
    preprocess = tower_family.default_preprocess(config)
    log.warning("%s: no preprocessor_config.json; using the %s family's own transform (%s %d, mean %s)",
                name, tower_family.name, preprocess.mode, preprocess.size, list(preprocess.mean))
    return preprocess


def _build(tower_family: TowerFamily, files: WeightFiles, backbone: Backbone, identity: dict,
           name: str) -> ImageTower:
    tower = tower_family.load(files, backbone, identity)
    log.info("loaded %s tower from %s (%d layers, feature dim %d: %s)", tower_family.name, name,
             tower.num_layers, tower.feature_dim, tower.identity.get("feature", ""))
    return tower


def load_tower(
    model: str,
    revision: str | None = None,
    preprocess_mode: str | None = None,
    device: torch.device | str = "cpu",
    defer: bool = False,
    memo_root: Path | None = None,
) -> ImageTower:
    """Load the frozen tower named by ``model`` (hub id, local directory, or a weight-free name).

    Everything about the checkpoint's files (config, model_type, family, weight files) is
    checked here either way. With ``defer`` a family that can read its tower's shape from the
    config gives a :class:`DeferredTower`, built on its first forward; a problem found only in
    the weights themselves (a missing key, a wrong shape) is then raised at that build.
    ``memo_root``: a cache root where the hash of a local directory's weights is remembered by
    their stamps (:mod:`deepfake.utils.stamp_memo`), so that naming the tower does not read them again.
    """
    check_model(model)
    if is_network_file(model):
        return load_network_file(model, preprocess_mode).to(device)
    if NETWORK_NAMES.known(model):
        return load_network_file(str(NETWORK_NAMES.file(model)), preprocess_mode).to(device)
    parts = fused_parts(model)
    if parts is not None:
        if revision is not None:
            raise WeightsError(f"{model}: --revision names one tower's commit; a fused tower's parts are loaded "
                               "at their own (name a part by its local directory to pin one)")
        return load_fused([(part, None) for part in parts], preprocess_mode, device, defer, memo_root)
    backbone = backbone_for(model, revision)
    if backbone.family != "auto" and family(backbone.family).weightless:
        tower = family(backbone.family).load(None, backbone.with_mode(preprocess_mode), {})
        return tower.to(device)
    files = resolve_weights(backbone.source, backbone.revision)
    config = files.read_config()
    tower_family = family_for_config(config, str(files.config))
    if backbone.family not in ("auto", tower_family.name):
        raise WeightsError(f"{files.config}: model_type {config.get('model_type')!r} is a "
                              f"{tower_family.name} tower, but the record for {model} says {backbone.family}")
    if backbone.preprocess is None:
        backbone = replace(backbone, preprocess=_checkpoint_preprocess(files, tower_family, config, model))
    backbone = replace(backbone, family=tower_family.name).with_mode(preprocess_mode)
    is_local = Path(backbone.source).expanduser().is_dir()
    name = str(Path(backbone.source).expanduser().resolve()) if is_local else model
    identity = {"model": name, "family": tower_family.name, "revision": files.revision or revision}
    if files.revision is None:
        # A local directory has no commit: its weights' hash identifies it.
        identity["weights_sha256"] = files.weights_sha256(memo_root)
    if defer and tower_family.shape is not None:
        shape = tower_family.shape(config, str(files.config))
        deferred = DeferredTower(backbone, tower_identity(identity, shape.feature_dim, shape.feature, shape.layer_token),
                                 shape, lambda chosen: _build(tower_family, files, chosen, identity, name))
        return deferred.to(device)
    return _build(tower_family, files, backbone, identity, name).to(device)


@contextmanager
def part_named(model: str, number: int, part: str):
    """Re-raise a part's loading error naming the part and the fused tower it belongs to."""
    try:
        yield
    except WeightsError as exc:
        raise WeightsError(f"{model}: part {number} ({part}) cannot be loaded: {exc}") from exc


def load_fused(parts: list[tuple[str, str | None]], preprocess_mode: str | None = None,
               device: torch.device | str = "cpu", defer: bool = False, memo_root: Path | None = None,
               name: str | None = None) -> FusedTower:
    """A :class:`FusedTower` of ``parts`` ((model, revision) each), every part loaded as :func:`load_tower` does."""
    model = name or SEPARATOR.join(part for part, _ in parts)
    towers = []
    for number, (part, revision) in enumerate(parts, 1):
        with part_named(model, number, part):
            if fused_parts(part) is not None:
                raise WeightsError("a part cannot itself be a fused tower")
            towers.append(load_tower(part, revision, preprocess_mode, device, defer, memo_root))
    return FusedTower(towers, model)
