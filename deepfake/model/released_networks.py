"""Whole released detector networks (Tiny-LaDeDa, NPR), read into ordinary runs.

Unlike UFD's and RINE's heads (:mod:`deepfake.model.published`), these releases are the whole
network. The network up to its pooling runs as a frozen tower that loads from the release file
where it is (:mod:`deepfake.towers.released`; the run records its path, sha256 and licence and
never copies it), and the release's last linear layer (its tower family's ``head_key``: ``fc``,
``fc1``) becomes a one-logit ``linear`` head. :func:`import_network` writes the run
(``best.safetensors`` + ``best.json``); ``deepfake test``, ``predict``, ``serve`` then use it as any
run, and ``deepfake train --model FILE`` trains a new head on the same features. What each release
is (its URL, hash, licence, paper) is its record in :mod:`deepfake.model.releases`, which
:func:`deepfake.model.detectors.import_detector` checks before it calls this.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from deepfake.features.extraction import ExtractionSettings
from deepfake.model.checkpoint import BEST, save_checkpoint
from deepfake.model.heads import head_from_config
from deepfake.towers.registry import family as tower_family
from deepfake.towers.released import DEFAULT_MODE, NETWORK_MODES, NetworkTower, load_network_file, read_network_state, split_head
from deepfake.towers.weights import WeightsError
from deepfake.utils.fileio import atomic_write, refuse_overwrite
from deepfake.utils.runtime import versions

log = logging.getLogger(__name__)


class NetworkRefused(ValueError):
    """A release file that cannot be imported; the message names the file and the problem."""


def _tower(family: str, path: Path, mode: str) -> NetworkTower:
    if mode not in NETWORK_MODES:
        raise NetworkRefused(f"--preprocess {mode}: a released network runs at native size or at its paper's resize "
                             f"({', '.join(NETWORK_MODES)})")
    try:
        tower = load_network_file(str(path), mode)
    except (WeightsError, FileNotFoundError) as exc:
        raise NetworkRefused(str(exc)) from None
    if tower.identity["family"] != family:
        raise NetworkRefused(f"{path}: its keys and shapes are those of a {tower.identity['family']} network, "
                             f"not a {family} network")
    return tower


def _head(tower: NetworkTower, path: Path):
    """The release's last linear layer as a one-logit ``linear`` head on the tower's pooled features."""
    head_key = tower_family(tower.identity["family"]).head_key
    _, fc = split_head(read_network_state(path), head_key)
    head = head_from_config({"kind": "linear", "in_dim": tower.feature_dim, "num_classes": 1})
    try:
        head.load_state_dict({f"fc.{k}": v.float().contiguous() for k, v in fc.items()}, strict=True)
    except RuntimeError as exc:
        raise NetworkRefused(f"{path}: its {head_key} does not fit a one-logit linear head on "
                             f"{tower.feature_dim} features: {exc}") from None
    return head


def import_network(path: str | os.PathLike, family: str, out_dir: str | os.PathLike, overwrite: bool = False,
                   source: dict | None = None, mode: str | None = None) -> Path:
    """Import a released ``family`` network's ``.pth`` into the run folder ``out_dir``; returns the weights' path.

    ``source``: what the release's record says of it (name, URL, hashes, licence), stored in the
    run's provenance. ``mode``: the run's preprocessing, ``native`` or ``resize`` (the paper's
    transform); default :data:`~deepfake.towers.released.DEFAULT_MODE`. The tower loads from
    ``path`` where it is (keep the file there); a ``LICENSE`` beside it is copied into the run.
    """
    path, out, source = Path(path).expanduser(), Path(out_dir), dict(source or {})
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    refuse_overwrite(out, None, overwrite, hint="pass --overwrite to replace the run there or choose another --out")
    tower = _tower(family, path, mode or DEFAULT_MODE)
    head = _head(tower, path)
    out.mkdir(parents=True, exist_ok=True)
    licence, licence_copy = path.with_name("LICENSE"), None
    if licence.is_file():
        atomic_write(out / "LICENSE", lambda tmp: shutil.copyfile(licence, tmp))
        licence_copy = "LICENSE"
    terms = source.get("licence") or {}
    if terms.get("research_only"):
        log.warning("%s: %s is under a research-only licence (%s); read %s before any other use", path,
                    source.get("detector", family), terms.get("name"), terms.get("text"))
    provenance = {"release": source.get("detector", family), "variant": None, "whole_network": True,
                  "path": str(path.resolve()), "sha256": tower.identity["weights_sha256"], **source,
                  "licence": {**terms, "copy": licence_copy}}
    settings = ExtractionSettings(precision="fp32")
    config = {
        "tower": dict(tower.identity),
        "preprocess": tower.preprocess.to_dict(),
        "features": {**settings.cache_info(), "store_dtype": str(tower.feature_dtype).replace("torch.", ""), "layers": []},
        "head": head.config(),
        "categories": [],
        "threshold": 0.5,
        "published": provenance,
        "versions": versions(),
    }
    return save_checkpoint(out, BEST, head.state_dict(), config)
