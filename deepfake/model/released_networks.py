"""Whole released detector networks, read into ordinary runs: one record per release file.

    tiny-ladeda-wildrf      Tiny-LaDeDa trained on WildRF (Cavia et al. 2024)
    tiny-ladeda-forensynth  Tiny-LaDeDa trained on ForenSynths' ProGAN images
    npr                     NPR (Tan et al., CVPR 2024), ProGAN's four classes

Unlike UFD's and RINE's heads (:mod:`deepfake.model.published`), these releases are the whole
network. The network up to its pooling runs as a frozen tower that loads from the release file
where it is (:mod:`deepfake.towers.released`; the run records its path, sha256 and licence and
never copies it), and the release's last linear layer (``fc``, ``fc1``) becomes a one-logit
``linear`` head. :func:`import_network` writes the run (``best.safetensors`` + ``best.json``);
``deepfake test``, ``predict``, ``serve`` then use it as any run, and ``deepfake train --model FILE``
trains a new head on the same features.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from deepfake.features.extraction import ExtractionSettings
from deepfake.model.checkpoint import BEST, save_checkpoint
from deepfake.model.heads import head_from_config
from deepfake.towers.released import (
    DEFAULT_MODE,
    NetworkTower,
    load_network_file,
    read_network_state,
    split_head,
)
from deepfake.towers.weights import WeightsError
from deepfake.utils.fileio import atomic_write, refuse_overwrite
from deepfake.utils.runtime import versions

log = logging.getLogger(__name__)

LADEDA_PAPER = "Cavia, Horwitz, Reiss, Hoshen: Real-Time Deepfake Detection in the Real-World, 2024"
LADEDA_REPO = "https://github.com/barcavia/RealTime-DeepfakeDetection-in-the-RealWorld"
LADEDA_COMMIT = "e734562bbb6763f5bb2951099e9dc9a38df5e7dd"
LADEDA_LICENCE = "Yissum SOFTWARE RESEARCH LICENSE: research use only (no commercial use, no redistribution)"
NETWORK_MODES = ("native", "resize")
PAPER_TRANSFORM = "Resize((256, 256)) bilinear on the PIL image, no crop, ImageNet mean and std"


class NetworkRefused(ValueError):
    """A release file that cannot be imported; the message names the file and the problem."""


@dataclass(frozen=True)
class NetworkRelease:
    """One released network file: where it is published, what it is, its licence and its paper's protocol."""

    name: str
    title: str
    paper: str
    repository: str
    commit: str
    path: str  # in the repository at ``commit``
    size: int | None  # bytes; None where not checked here
    sha256: str | None  # None where not checked here
    licence: str
    licence_text: str  # where the licence's text is
    research_only: bool
    trained_on: str
    family: str  # the tower family (deepfake/towers/families)
    head_key: str  # the release's last linear layer
    protocol: str  # the paper's test transform
    git_blob: str | None = None  # the file's git blob id at ``commit``, where its sha256 is not known here

    @property
    def url(self) -> str:
        return f"{self.repository}/raw/{self.commit}/{self.path}"


NETWORK_RELEASES: dict[str, NetworkRelease] = {
    r.name: r
    for r in (
        NetworkRelease("tiny-ladeda-wildrf", "Tiny-LaDeDa (WildRF)", LADEDA_PAPER, LADEDA_REPO, LADEDA_COMMIT,
                       "weights/Tiny_LaDeDa/WildRF_Tiny_LaDeDa.pth", 11654,
                       "5e063100564d2ddfe9bf48074e351c8f2b38855552574a18a0738e7f2a764d80", LADEDA_LICENCE,
                       f"{LADEDA_REPO}/blob/{LADEDA_COMMIT}/LICENSE", True,
                       "WildRF (real and generated images collected from Reddit, Facebook and X)", "tiny-ladeda", "fc",
                       PAPER_TRANSFORM),
        NetworkRelease("tiny-ladeda-forensynth", "Tiny-LaDeDa (ForenSynths)", LADEDA_PAPER, LADEDA_REPO, LADEDA_COMMIT,
                       "weights/Tiny_LaDeDa/ForenSynth_Tiny_LaDeDa.pth", 12405,
                       "4624258c70489cbff2778153ce6fc7f5ed16170b59a541a06dc3d4c759fd68a6", LADEDA_LICENCE,
                       f"{LADEDA_REPO}/blob/{LADEDA_COMMIT}/LICENSE", True,
                       "ForenSynths (CNNDetection's ProGAN training set)", "tiny-ladeda", "fc", PAPER_TRANSFORM),
        NetworkRelease("npr", "NPR", "Tan, Zhao, Wei, Gu, Liu, Wei: Rethinking the Up-Sampling Operations in CNN-based "
                       "Generative Network for Generalizable Deepfake Detection, CVPR 2024",
                       "https://github.com/chuangchuangtan/NPR-DeepfakeDetection",
                       "73cde1ced21291bfb504a2add2b53fbe99c4f433", "NPR.pth", None, None,
                       "none stated in the repository (all rights reserved by default)",
                       "https://github.com/chuangchuangtan/NPR-DeepfakeDetection (no LICENSE file)", False,
                       "ForenSynths ProGAN, four classes (car, cat, chair, horse)", "npr", "fc1",
                       PAPER_TRANSFORM + " (ForenSynths, UniversalFakeDetect, DiffusionForensics); no resize for "
                       "GANGen-Detection", git_blob="2430d34a6d6a1143d46d4276a05536770b1a2a97"),
    )
}


def git_blob_id(path: Path) -> str:
    """The file's git blob id (sha1 of ``blob <size>\\0`` + its bytes): what a repository's tree lists."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_identity(release: NetworkRelease, path: Path, sha256: str) -> dict:
    """Compare the file with the release's hash; a fine-tune (keys and shapes right, other bytes) gets a warning."""
    if release.sha256 is not None:
        matches = sha256 == release.sha256
        if not matches:
            log.warning("%s: sha256 %s is not the %s release's (%s); its keys and shapes fit, so it is imported "
                        "as a network of that layout (a fine-tune?)", path, sha256, release.name, release.sha256)
        return {"sha256_release": release.sha256, "sha256_matches": matches}
    blob = git_blob_id(path) if release.git_blob else None
    matches = blob == release.git_blob if blob else None
    if matches is False:
        log.warning("%s: git blob %s is not the %s release's (%s); its keys and shapes fit, so it is imported "
                    "as a network of that layout (a fine-tune?)", path, blob, release.name, release.git_blob)
    return {"sha256_release": None, "git_blob": blob, "git_blob_release": release.git_blob, "sha256_matches": matches}


def _provenance(release: NetworkRelease, path: Path, sha256: str, licence_copy: str | None) -> dict:
    return {
        "release": release.name, "variant": None, "title": release.title, "paper": release.paper,
        "repository": release.repository, "commit": release.commit, "file": release.path, "url": release.url,
        "path": str(path.resolve()), "sha256": sha256, **_check_identity(release, path, sha256),
        "trained_on": release.trained_on, "protocol": release.protocol, "whole_network": True,
        "licence": {"name": release.licence, "text": release.licence_text, "copy": licence_copy,
                    "research_only": release.research_only},
    }


def _tower(release: NetworkRelease, path: Path, mode: str) -> NetworkTower:
    if mode not in NETWORK_MODES:
        raise NetworkRefused(f"--preprocess {mode}: a released network runs at native size or at its paper's resize "
                             f"({', '.join(NETWORK_MODES)})")
    try:
        tower = load_network_file(str(path), mode)
    except (WeightsError, FileNotFoundError) as exc:
        raise NetworkRefused(str(exc)) from None
    if tower.identity["family"] != release.family:
        raise NetworkRefused(f"{path}: its keys and shapes are those of a {tower.identity['family']} network, "
                             f"not {release.title}'s ({release.family})")
    return tower


def import_network(path: str | os.PathLike, release: str, out_dir: str | os.PathLike, overwrite: bool = False,
                   mode: str | None = None) -> Path:
    """Import a released network's ``.pth`` into the run folder ``out_dir``; returns the weights' path.

    ``mode``: the run's preprocessing, ``native`` or ``resize`` (the paper's transform); default
    :data:`~deepfake.towers.released.DEFAULT_MODE`.
    The tower loads from ``path`` where it is (keep the file there); a ``LICENSE`` beside it is
    copied into the run. A file whose sha256 is not the release's but whose keys and shapes fit
    is imported with a warning naming both hashes.
    """
    path, out = Path(path).expanduser(), Path(out_dir)
    if release not in NETWORK_RELEASES:
        raise NetworkRefused(f"unknown released network {release!r}; known: {', '.join(NETWORK_RELEASES)}")
    record = NETWORK_RELEASES[release]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    refuse_overwrite(out, None, overwrite, hint="pass --overwrite to replace the run there or choose another --out")
    tower = _tower(record, path, mode or DEFAULT_MODE)
    _, fc = split_head(read_network_state(path), record.head_key)
    head = head_from_config({"kind": "linear", "in_dim": tower.feature_dim, "num_classes": 1})
    try:
        head.load_state_dict({f"fc.{k}": v.float().contiguous() for k, v in fc.items()}, strict=True)
    except RuntimeError as exc:
        raise NetworkRefused(f"{path}: its {record.head_key} does not fit a one-logit linear head on "
                             f"{tower.feature_dim} features: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    licence, licence_copy = path.with_name("LICENSE"), None
    if licence.is_file():
        atomic_write(out / "LICENSE", lambda tmp: shutil.copyfile(licence, tmp))
        licence_copy = "LICENSE"
    if record.research_only:
        log.warning("%s: %s is under a research-only licence (%s); read %s before any other use", path,
                    record.title, record.licence, record.licence_text)
    settings = ExtractionSettings(precision="fp32")
    config = {
        "tower": dict(tower.identity),
        "preprocess": tower.preprocess.to_dict(),
        "features": {**settings.cache_info(), "store_dtype": str(tower.feature_dtype).replace("torch.", ""), "layers": []},
        "head": head.config(),
        "categories": [],
        "threshold": 0.5,
        "published": _provenance(record, path, tower.identity["weights_sha256"], licence_copy),
        "versions": versions(),
    }
    return save_checkpoint(out, BEST, head.state_dict(), config)
