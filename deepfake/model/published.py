"""Published detectors' released heads, read into ordinary runs: one record per release.

    ufd   UniversalFakeDetect (Ojha, Li, Lee, CVPR 2023): ``pretrained_weights/fc_weights.pth``, a
          linear probe (768 -> 1 logit) on CLIP ViT-L/14's ``encode_image`` (the projected CLS
          embedding, not normalised). Here: the ``linear`` head with ``num_classes=1``.
    rine  RINE (Koutlis & Papadopoulos, ECCV 2024): ``ckpt/model_{1class,2class,4class,ldm}_trainable.pth``,
          the trainable part of a head on the CLS token of every block's ``ln_2`` output of CLIP
          ViT-L/14 (24 x 1024 -> 1 logit). Here: the ``rine`` head, key for key.

Both test with ``CenterCrop(224)`` and no resize, then the CLIP mean and std: ``Preprocess(mode="crop",
size=224)``. :func:`import_release` reads a release file with ``torch.load(weights_only=True)`` (nothing
in it is run), checks its keys and shapes strictly against the record, and writes a run folder in
the project's checkpoint format (``best.safetensors`` + ``best.json``) naming the tower, the
preprocessing, the tap, the head, where the weights came from (path, release, sha256) and their
licence. ``deepfake test``, ``predict``, ``serve``, ``push`` and ``DeepfakeClassifier`` then use it as
any run.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deepfake.config import RINE_DROPOUT
from deepfake.data.preprocess import Preprocess
from deepfake.features.extraction import ExtractionSettings
from deepfake.model.checkpoint import BEST, IMPORTED_FILES, clear_run, save_checkpoint
from deepfake.model.heads import head_from_config, head_tap
from deepfake.towers.base import LN2_TAP, TowerShape, tower_identity
from deepfake.towers.released import read_network_state
from deepfake.towers.weights import WeightsError
from deepfake.utils.fileio import atomic_write, refuse_overwrite
from deepfake.utils.hashing import file_sha256
from deepfake.utils.runtime import versions

log = logging.getLogger(__name__)

# The tower both releases were trained on: OpenAI CLIP ViT-L/14 (the CLIP family record in
# deepfake/towers/backbones.py): 24 blocks of width 1024, a 768-d projected embedding, 224 px.
PUBLISHED_TOWER = "openai/clip-vit-large-patch14"
VIT_L14 = TowerShape(feature_dim=768, num_layers=24, hidden_size=1024, feature="projected", layer_token="cls",
                     taps=("block", LN2_TAP))
VIT_L14_SIZE = 224


class ReleaseRefused(ValueError):
    """A release file that cannot be imported; the message names the file and the problem."""


@dataclass(frozen=True)
class TargetTower:
    """The tower an imported head runs on: its identity (as a checkpoint records it), shape and input size."""

    identity: dict
    shape: TowerShape
    size: int

    @classmethod
    def published(cls) -> TargetTower:
        """CLIP ViT-L/14 from the hub, unpinned: any revision of it holds the same weights."""
        identity = tower_identity({"model": PUBLISHED_TOWER, "family": "clip"}, VIT_L14.feature_dim,
                                  VIT_L14.feature, VIT_L14.layer_token)
        return cls(identity, VIT_L14, VIT_L14_SIZE)

    @classmethod
    def of(cls, tower) -> TargetTower:
        """A loaded (or deferred) tower: e.g. a local copy of CLIP ViT-L/14, or a small CLIP tower for tests."""
        identity = dict(tower.identity)
        shape = TowerShape(int(tower.feature_dim), int(tower.num_layers), int(tower.hidden_size),
                           identity.get("feature", ""), identity.get("layer_token", ""), tuple(tower.taps))
        return cls(identity, shape, int(tower.preprocess.size))


def _ufd_shapes(sizes: dict, shape: TowerShape) -> dict[str, tuple[int, ...]]:
    return {"weight": (1, shape.feature_dim), "bias": (1,)}


def _rine_shapes(sizes: dict, shape: TowerShape) -> dict[str, tuple[int, ...]]:
    """RINE's ``Model`` parameters (its Sequential indices: Dropout first, then [Linear, ReLU, Dropout] each)."""
    pd, nproj = sizes["proj_dim"], sizes["nproj"]
    shapes = {"alpha": (1, shape.num_layers, pd)}
    for name, width in (("proj1", shape.hidden_size), ("proj2", pd)):
        for i in range(nproj):
            shapes[f"{name}.{1 + 3 * i}.weight"] = (pd, width if i == 0 else pd)
            shapes[f"{name}.{1 + 3 * i}.bias"] = (pd,)
    for index, out in ((0, pd), (3, pd), (6, 1)):
        shapes[f"head.{index}.weight"] = (out, pd)
        shapes[f"head.{index}.bias"] = (out,)
    return shapes


def _ufd_head(sizes: dict, shape: TowerShape) -> dict:
    return {"kind": "linear", "in_dim": shape.feature_dim, "num_classes": 1}


def _rine_head(sizes: dict, shape: TowerShape) -> dict:
    return {"kind": "rine", "hidden_size": shape.hidden_size, "blocks": list(range(1, shape.num_layers + 1)),
            "proj_dim": sizes["proj_dim"], "nproj": sizes["nproj"], "dropout": RINE_DROPOUT}


@dataclass(frozen=True)
class Release:
    """One published head: where it is, its licence, its tensors, and the head and tap it becomes here."""

    name: str
    title: str
    paper: str
    repository: str
    weights: str  # path in the repository ({variant} filled in)
    licence: str  # SPDX identifier; the text is the repository's LICENSE
    reads: str  # what the head reads, in words
    feature: str | None  # the tower feature the head reads (None: per-block tokens)
    precision: str  # the backbone precision the authors ran it in
    shapes: Callable[[dict, TowerShape], dict[str, tuple[int, ...]]]
    head: Callable[[dict, TowerShape], dict]
    keys: dict[str, str] = field(default_factory=dict)  # release key -> head key (absent: the same)
    variants: dict[str, dict] = field(default_factory=lambda: {"": {}})  # variant -> head sizes
    commit: str = "main"  # the repository commit the files were checked at (their hashes: deepfake.model.releases)

    @property
    def licence_url(self) -> str:
        return f"{self.repository}/blob/{self.commit}/LICENSE"

    def weights_url(self, variant: str) -> str:
        return f"{self.repository}/raw/{self.commit}/{self.weights.format(variant=variant)}"


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("ufd", "UniversalFakeDetect", "Ojha, Li, Lee: Towards Universal Fake Image Detectors that Generalize "
                "Across Generative Models, CVPR 2023", "https://github.com/WisconsinAIVision/UniversalFakeDetect",
                "pretrained_weights/fc_weights.pth", "MIT",
                "the projected image embedding, CLIP ViT-L/14 encode_image (768-d, not normalised)", "projected", "fp32",
                _ufd_shapes, _ufd_head, keys={"weight": "fc.weight", "bias": "fc.bias"},
                commit="76a0e3e60a8a06458707a625d269ba815a2e5919"),
        Release("rine", "RINE", "Koutlis, Papadopoulos: Leveraging Representations from Intermediate Encoder-blocks "
                "for Synthetic Image Detection, ECCV 2024", "https://github.com/mever-team/rine",
                "ckpt/model_{variant}_trainable.pth", "Apache-2.0",
                "the CLS token of every block's ln_2 output (CLIP ViT-L/14: 24 x 1024)", None, "fp16",
                _rine_shapes, _rine_head,
                variants={"1class": {"nproj": 4, "proj_dim": 1024}, "2class": {"nproj": 4, "proj_dim": 128},
                          "4class": {"nproj": 2, "proj_dim": 1024}, "ldm": {"nproj": 4, "proj_dim": 1024}},
                commit="9b7fd5857cc205d0412be6aeee0d7611b95bd620"),
    )
}


def release_variant(release: Release, variant: str | None, path: Path) -> str:
    """The variant asked for, else the one the file's name says (RINE: ``model_<variant>_trainable.pth``)."""
    names = [v for v in release.variants if v]
    if not names:
        if variant:
            raise ReleaseRefused(f"{release.name} has one release file; --variant does not apply")
        return ""
    if variant is None:
        found = re.fullmatch(r"model_(\w+?)_trainable\.pth", path.name)
        variant = found.group(1) if found else None
        if variant not in release.variants:
            raise ReleaseRefused(f"{path}: cannot tell the {release.name} variant from the file name; "
                                 f"pass --variant ({', '.join(names)})")
    if variant not in release.variants:
        raise ReleaseRefused(f"unknown {release.name} variant {variant!r}; known: {', '.join(names)}")
    return variant


def read_release_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save`` file, read with ``weights_only=True``: nothing in the file is run."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return read_network_state(path)
    except WeightsError as exc:
        raise ReleaseRefused(str(exc)) from None


def _matches(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> bool:
    return set(state) == set(shapes) and all(tuple(state[k].shape) == shapes[k] for k in shapes)


def identify(state: dict[str, torch.Tensor], shape: TowerShape = VIT_L14) -> list[str]:
    """Every release (and variant) whose keys and shapes ``state`` has exactly: ``rine --variant 2class``, ``ufd``."""
    return [f"{r.name}" + (f" --variant {v}" if v else "") for r in RELEASES.values()
            for v, sizes in r.variants.items() if _matches(state, r.shapes(sizes, shape))]


def check_release_tensors(state: dict[str, torch.Tensor], release: Release, variant: str, shape: TowerShape,
                          where: Path) -> None:
    """Refuse a file whose keys or shapes are not exactly the release's, naming what differs and what it is."""
    expected = release.shapes(release.variants[variant], shape)
    problems = []
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing keys {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected keys {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
    wrong = [f"{k} {list(state[k].shape)} (expected {list(expected[k])})" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    if wrong:
        problems.append(f"shapes differ: {', '.join(wrong[:6])}" + (" ..." if len(wrong) > 6 else ""))
    not_float = [k for k, v in state.items() if k in expected and not v.is_floating_point()]
    if not_float:
        problems.append(f"not floating-point tensors: {', '.join(not_float)}")
    if problems and shape != VIT_L14 and _matches(state, release.shapes(release.variants[variant], VIT_L14)):
        # The file is as released; the tower chosen for it is not the one it was trained on.
        raise ReleaseRefused(f"{where}: the file is {release.title}'s {variant + ' ' if variant else ''}head as "
                             f"released, for CLIP ViT-L/14 ({release.reads}); the tower chosen gives "
                             f"{shape.feature_dim}-d features and {shape.num_layers} blocks of width {shape.hidden_size}, "
                             f"which it does not fit: pass --tower a local copy of {PUBLISHED_TOWER}, or leave --tower out")
    if problems:
        others = identify(state, shape)
        hint = f"; its keys and shapes are those of `deepfake import {others[0]}`" if others else ""
        raise ReleaseRefused(f"{where}: not {release.title}'s {variant + ' ' if variant else ''}head: "
                             + "; ".join(problems) + hint)


def imported_config(release: Release, variant: str, target: TargetTower, head, provenance: dict) -> dict:
    """The run config of an imported head: tower, the published preprocessing, the features (tap), head, provenance."""
    blocks = list(getattr(head, "blocks", ()))
    settings = ExtractionSettings(precision=release.precision, layers=tuple(blocks),
                                  tap=head_tap(head))
    return {
        "tower": dict(target.identity),
        # The authors' test transform: CenterCrop at the tower's size, no resize, CLIP mean and std.
        "preprocess": Preprocess(mode="crop", size=target.size).to_dict(),
        "features": {**settings.cache_info(), "layers": blocks},
        "head": head.config(),
        "categories": [],
        "threshold": 0.5,
        "published": provenance,
        "versions": versions(),
    }


def _provenance(release: Release, variant: str, path: Path, sha256: str, licence_copy: str | None) -> dict:
    return {
        "release": release.name, "variant": variant or None, "title": release.title, "paper": release.paper,
        "repository": release.repository, "file": release.weights.format(variant=variant),
        "url": release.weights_url(variant), "path": str(path.resolve()), "sha256": sha256,
        "reads": release.reads, "backbone_precision": release.precision,
        "licence": {"name": release.licence, "text": release.licence_url, "copy": licence_copy},
    }


def import_release(path: str | os.PathLike, release: str, out_dir: str | os.PathLike, variant: str | None = None,
                   target: TargetTower | None = None, overwrite: bool = False, source: dict | None = None) -> Path:
    """Read a published head file into a run folder ``out_dir`` (``best.safetensors`` + ``best.json``).

    ``target``: the tower the head will run on (default: CLIP ViT-L/14, as published); the file's
    shapes must fit it. A ``LICENSE`` beside the file is copied into the run. ``source``: what the
    released detector's record adds to the provenance (its name, the release's hash and whether this
    file is it, the licence's terms). ``overwrite`` replaces the run in ``out_dir``: once the file
    has passed every check, every file an earlier run or import left there is removed (checkpoints,
    resume state, run.json, LICENSE), so nothing of it loads or describes the new head. Returns the weights' path.
    """
    path, out = Path(path), Path(out_dir)
    if release not in RELEASES:
        raise ReleaseRefused(f"unknown release {release!r}; known: {', '.join(RELEASES)}")
    record, target = RELEASES[release], target or TargetTower.published()
    variant = release_variant(record, variant, path)
    head = head_from_config(record.head(record.variants[variant], target.shape))
    _check_target(record, target, head)
    refuse_overwrite(out, None, overwrite, hint="pass --overwrite to replace the head there or choose another --out")
    state = read_release_file(path)
    check_release_tensors(state, record, variant, target.shape, path)
    head.load_state_dict({record.keys.get(k, k): v.float().contiguous() for k, v in state.items()}, strict=True)
    sha256 = file_sha256(path)
    if overwrite and out.is_dir():
        clear_run(out, IMPORTED_FILES)
    out.mkdir(parents=True, exist_ok=True)
    licence = path.with_name("LICENSE")
    licence_copy = None
    if licence.is_file():
        atomic_write(out / "LICENSE", lambda tmp: shutil.copyfile(licence, tmp))
        licence_copy = "LICENSE"
    provenance = _provenance(record, variant, path, sha256, licence_copy)
    if source:
        provenance = {**provenance, **source, "licence": {**provenance["licence"], **source.get("licence", {})}}
    config = imported_config(record, variant, target, head, provenance)
    return save_checkpoint(out, BEST, head.state_dict(), config)


def _check_target(release: Release, target: TargetTower, head) -> None:
    """The tower must give what the release reads: CLIP's projected embedding (UFD), the ln_2 tap (RINE)."""
    where = target.identity.get("model")
    if release.feature and target.shape.feature != release.feature:
        raise ReleaseRefused(f"{where}: {release.title} reads {release.reads}; this tower's feature is "
                             f"{target.shape.feature!r}, not {release.feature!r}")
    problem = head.check_tower(target.shape)
    if problem:
        raise ReleaseRefused(f"{where}: {problem}")
