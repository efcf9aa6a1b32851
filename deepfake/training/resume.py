"""Resumable training state: head, optimizer moments, every RNG state and the run's identity.

A resumed run equals an uninterrupted one: the state is saved after every epoch as one
safetensors file, and a resume whose tower, preprocessing, data, seed or features differ is
refused before any work is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from deepfake.data.perturbations import BlurJpegAugment
from deepfake.deepfake_dataset import Sample
from deepfake.features.extraction import ExtractionSettings
from deepfake.model.checkpoint import RESUME_STATE
from deepfake.towers.base import ImageTower
from deepfake.utils.fileio import atomic_save_safetensors


def run_identity(tower: ImageTower, settings: ExtractionSettings, augment: BlurJpegAugment, n_views: int,
                 seed: int, no_cache: bool, train_samples: list[Sample], val_samples: list[Sample],
                 root: str = "") -> dict:
    """What must not change between a run and its resumption: tower, preprocessing, data, seed, features."""
    digest = hashlib.sha256()
    # Paths relative to --dataset_dir, whether or not it was spelled with a trailing slash: the
    # same data gives the same digest from any working directory, and a scan of 720k files is not
    # spent on relpath calls. The separator kept in front is the digest earlier runs recorded.
    prefix = os.path.join(root, "") if root else ""
    for split, samples in (("train", train_samples), ("val", val_samples)):
        # In chunks: the digest is the same, and 720k lines are never held at once.
        for start in range(0, len(samples), 4096):
            lines = "".join(f"{split}\t{_relative(s.path, root, prefix)}\t{s.label}\n"
                            for s in samples[start : start + 4096])
            digest.update(lines.encode("utf-8", "surrogateescape"))
    return {
        "tower": {k: v for k, v in tower.identity.items()},
        "preprocess": tower.preprocess.to_dict(),
        "features": settings.cache_info(),
        "data": {"n_train": len(train_samples), "n_val": len(val_samples), "sha256": digest.hexdigest()},
        "seed": seed,
        "augment": {**augment.to_dict(), "views": n_views} if augment.enabled else None,
        "no_cache": no_cache,
    }


def _relative(path: str, root: str, prefix: str) -> str:
    """``path`` under ``root`` as ``/rel/path`` (``prefix``: root ending in one separator); else absolute."""
    if prefix and path.startswith(prefix):
        return os.sep + path[len(prefix):]
    if root and path.startswith(root):  # a root spelled with several trailing separators
        return os.sep + os.path.relpath(path, root)
    return os.path.abspath(path)


# Hyper-parameters a resumed run may change; the new value applies from the next epoch.
RESUMABLE_CHANGES = ("learning_rate", "weight_decay", "batch_size", "num_epochs", "lr_schedule", "lr_milestones",
                     "lr_gamma", "patience", "keep_last")

# The command-line option behind each entry of an identity field, named when a resume is refused.
IDENTITY_OPTIONS = {"kind": "--head", "blocks": "--feature_layers", "proj_dim": "--proj_dim",
                    "importance": "--importance", "contrastive_weight": "--contrastive_weight",
                    "contrastive_temperature": "--contrastive_temperature", "standardize": "--standardize"}
# What a field a run does not record stands for (no ``loss``: no contrastive term).
IDENTITY_ABSENT = {"loss": {"contrastive_weight": 0.0}}
# What an entry a field does not record stands for (a head without ``standardize``: not standardised).
ENTRY_ABSENT = {"standardize": False}


def save_resume_state(out: Path, head, optimizer, generator, epoch: int, best: tuple, history: list,
                      identity: dict, hyper: dict) -> None:
    """Head, optimizer moments, every RNG state and the run's identity, as one safetensors file."""
    tensors = {f"head.{k}": v for k, v in head.state_dict().items()}
    opt_state = optimizer.state_dict()
    for pid, state in opt_state["state"].items():
        for name, value in state.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    if torch.cuda.is_available():
        for i, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = value
    meta = {"epoch": str(epoch), "best": json.dumps(list(best)), "history": json.dumps(history),
            "param_groups": json.dumps(opt_state["param_groups"]), "identity": json.dumps(identity),
            "hyper": json.dumps(hyper), "rng.numpy": json.dumps(_numpy_state()),
            "rng.python": json.dumps(_python_state())}
    atomic_save_safetensors(out / f"{RESUME_STATE}.safetensors", tensors, meta)


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def read_resume_meta(out: Path) -> dict | None:
    """The metadata of the run's resume state, or ``None`` when no epoch has finished yet."""
    path = out / f"{RESUME_STATE}.safetensors"
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            return handle.metadata() or {}
    except Exception as exc:
        raise ValueError(f"{path}: unreadable resume state ({exc}); start again with --overwrite") from exc


def check_resumable(out: Path, meta: dict, identity: dict, hyper: dict) -> list[str]:
    """Refuse a resume whose tower, preprocessing, data, seed or features differ; list changed hyper-parameters."""
    saved = json.loads(meta.get("identity", "null"))
    path = out / f"{RESUME_STATE}.safetensors"
    if saved is None:
        raise ValueError(f"{path}: written by an older version without the run's identity; "
                         f"cannot check it is the same run, start again with --overwrite")
    # Both sides' fields: a field only some runs record (align, loss) must not vanish unnoticed.
    for field_name in dict.fromkeys([*identity, *saved]):
        if saved.get(field_name) != identity.get(field_name):
            was, now = (saved.get(field_name) or IDENTITY_ABSENT.get(field_name, {}),
                        identity.get(field_name) or IDENTITY_ABSENT.get(field_name, {}))
            options = _changed_options(was, now) if isinstance(was, dict) and isinstance(now, dict) else []
            named = f" ({'; '.join(options)})" if options else ""
            raise ValueError(f"{path}: cannot resume: {field_name} differs{named} from the run being resumed "
                             f"(saved {json.dumps(saved.get(field_name))[:200]}, now "
                             f"{json.dumps(identity.get(field_name))[:200]}); use a new --output_dir or --overwrite")
    before = json.loads(meta.get("hyper", "{}"))
    changes = []
    for name in RESUMABLE_CHANGES:
        if name in before and before[name] != hyper[name]:
            changes.append(f"--{name} {before[name]} -> {hyper[name]}")
    return changes


def _changed_options(was: dict, now: dict) -> list[str]:
    """``--option old -> new`` for each entry of an identity field that a command-line option sets and that changed."""
    changed = []
    for key in dict.fromkeys([*was, *now]):
        before, after = was.get(key, ENTRY_ABSENT.get(key)), now.get(key, ENTRY_ABSENT.get(key))
        if key in IDENTITY_OPTIONS and before is not None and after is not None and before != after:
            values = [("on" if v else "off") if key == "standardize" else json.dumps(v) for v in (before, after)]
            changed.append(f"{IDENTITY_OPTIONS[key]} {values[0]} -> {values[1]}")
    return changed


def load_resume_state(out: Path, head, optimizer, generator, hyper: dict) -> tuple[int, tuple, list]:
    """Restore head, optimizer, RNG states; the current ``hyper`` values (learning rate, weight decay) apply."""
    path = out / f"{RESUME_STATE}.safetensors"
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    tensors = load_file(str(path))
    saved = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
    # A state saved before heads kept out-of-distribution statistics has none: the ones just fitted
    # from the same rows (deterministic) stand in.
    saved = {**{k: v for k, v in head.state_dict().items() if k.startswith("ood.")}, **saved}
    head.load_state_dict(saved)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    for group in optimizer.param_groups:
        group["lr"] = hyper["learning_rate"]
        group["weight_decay"] = hyper["weight_decay"]
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    cuda_states = [tensors[k] for k in cuda_keys]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if "rng.numpy" in meta:
        kind, keys, pos, has_gauss, gauss = json.loads(meta["rng.numpy"])
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "rng.python" in meta:
        version, internal, gauss = json.loads(meta["rng.python"])
        random.setstate((version, tuple(internal), gauss))
    return int(meta["epoch"]), tuple(json.loads(meta["best"])), json.loads(meta["history"])
