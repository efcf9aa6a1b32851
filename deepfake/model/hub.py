"""Heads as Hugging Face model repos: ``model.safetensors`` + ``config.json`` + a model card.

A pretrained-head folder (what :meth:`DeepfakeClassifier.save_pretrained` writes and what a
hub repo holds) is only the head: the tower is named in ``config.json`` (id and revision or
weight hash) and loaded from its own source, as the field ships detectors. Hub repos are
fetched with ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE=1`` and tokens honoured);
nothing is unpickled. Offline (``HF_HUB_OFFLINE`` set, or the hub unreachable) is found at once
(:func:`~deepfake.towers.weights.hub_offline_reason`): heads are then read from the cache only,
and an upload is refused with :class:`HubUnavailable` before any attempt.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path

import torch

from deepfake.model.checkpoint import (
    PRETRAINED_CONFIG,
    PRETRAINED_WEIGHTS,
    CheckpointRefused,
    write_checkpoint_pair,
)
from deepfake.towers.weights import hub_download, hub_offline_reason
from deepfake.utils.fileio import atomic_write_text
from deepfake.utils.text import pct as percent

log = logging.getLogger(__name__)

WEIGHTS_NAME = PRETRAINED_WEIGHTS
CONFIG_NAME = PRETRAINED_CONFIG
CARD_NAME = "README.md"
HUB_FILES = (WEIGHTS_NAME, CONFIG_NAME)
# Keys the loader adds to a config at run time; they describe one session, not the head.
RUNTIME_KEYS = ("checkpoint", "precision")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Keys of train_args that hold local paths; a shared config keeps only their base names.
_PATH_SUFFIXES = ("_dir", "_root", "_manifest", "_path", "_file")
_LOCAL_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


def is_repo_id(text: str) -> bool:
    """``org/name`` (optionally ``org/name@revision``) that cannot be read as a local path.

    Local readings win: an existing path, one starting with ``./``, ``../``, ``/`` or ``~``, or
    one whose first component exists here (``runs/typo`` beside a ``runs`` folder) is never
    sent to the hub.
    """
    text = str(text)
    name = text.split("@", 1)[0]
    if not _REPO_ID.match(name) or text.startswith(_LOCAL_PREFIXES):
        return False
    return not os.path.exists(text) and not os.path.exists(name.split("/", 1)[0])


class HubUnavailable(ConnectionError):
    """The hub cannot be reached for an upload; the message says why and what to do instead."""


def fetch_head(repo: str, revision: str | None = None) -> Path:
    """The local path of a hub repo's head weights, downloaded into (or read from) the hub cache.

    Offline, the cache alone answers at once (no retries)."""
    if "@" in repo and revision is None:
        repo, revision = repo.split("@", 1)
    reason = hub_offline_reason()
    paths = []
    for name in HUB_FILES:
        try:
            paths.append(Path(hub_download(repo, name, revision, reason is not None)))
        except Exception as exc:  # network, auth, missing file, offline cache miss: all end the same way
            if reason is not None:
                raise CheckpointRefused(f"no such local directory {repo}, and not fetchable as hub repo {repo}: "
                                        f"{reason} and it is not in the hub cache ({name} missing there)") from exc
            raise CheckpointRefused(f"no such local directory {repo}, and not fetchable as hub repo "
                                    f"{repo}: {name}: {exc}") from exc
    return paths[0]


def _base_name(path: str) -> str:
    """``/data/users/me/GenImage/`` -> ``GenImage``: the data set's name without where it lies."""
    return os.path.basename(os.path.normpath(os.path.expanduser(path))) or path


def _is_path_key(key: str) -> bool:
    return key.endswith(_PATH_SUFFIXES)


def _is_local_path(text: str) -> bool:
    """A string naming a place on this machine: absolute, home-relative, or an existing relative path."""
    expanded = os.path.expanduser(text)
    return os.path.isabs(expanded) or re.match(r"^[A-Za-z]:[\\/]", text) is not None or (
        ("/" in text or "\\" in text) and os.path.exists(expanded))


def _without_local_paths(value):
    """Every string in ``value`` that names a local path, replaced by its base name (nested dicts and lists too)."""
    if isinstance(value, dict):
        return {k: _without_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_local_paths(v) for v in value]
    if isinstance(value, str) and _is_local_path(value):
        return _base_name(value)
    return value


def head_config_for_sharing(config: dict) -> dict:
    """The checkpoint config without session keys and without local paths (a shared repo may be public).

    Path-valued training options, a local tower's directory and the calibration folder keep only
    their base names, so a reader still sees which data set, tower and options made the head, not
    the machine's layout. A local tower stays identified by its weights' sha256.
    """
    shared = {k: v for k, v in config.items() if k not in RUNTIME_KEYS and k != "format"}
    if isinstance(shared.get("train_args"), dict):
        train_args = dict(shared["train_args"])
        for key, value in train_args.items():
            if isinstance(value, str) and (_is_path_key(key) or key == "model" and not is_repo_id(value)):
                train_args[key] = _base_name(value)
        shared["train_args"] = train_args
    if isinstance(shared.get("tower"), dict) and isinstance(shared["tower"].get("model"), str):
        model = shared["tower"]["model"]
        if not is_repo_id(model) and ("/" in model or "\\" in model):  # a local directory, not a hub id nor a name
            shared["tower"] = {**shared["tower"], "model": _base_name(model)}
    if isinstance(shared.get("published"), dict) and isinstance(shared["published"].get("path"), str):
        # An imported release keeps the file's name and sha256, not where it lay on this machine.
        shared["published"] = {**shared["published"], "path": _base_name(shared["published"]["path"])}
    if isinstance(shared.get("calibration"), dict):
        calibration = {k: v for k, v in shared["calibration"].items() if k != "checkpoint"}
        if isinstance(calibration.get("real_dir"), str):
            calibration["real_dir"] = _base_name(calibration["real_dir"])
        shared["calibration"] = calibration
    return _without_local_paths(shared)


def save_head_folder(directory: str | os.PathLike, head_state: dict[str, torch.Tensor], config: dict,
                     run_summary: dict | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` (model card) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = head_config_for_sharing(config)
    state = {k: v.detach().cpu().contiguous() for k, v in head_state.items()}
    # One unit, as a run's checkpoints: config.json records the sha256 of the weights written here.
    write_checkpoint_pair(directory / WEIGHTS_NAME, directory / CONFIG_NAME, state, config)
    atomic_write_text(directory / CARD_NAME, model_card(config, run_summary))
    return directory


def upload_head_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
                       commit_message: str = "Upload deepfake detector head") -> str:
    """Create ``repo_id`` when needed and upload the head files of ``folder``; returns the commit URL.

    Raises :class:`HubUnavailable` at once when the hub cannot be reached, and when the connection
    fails on the way (never a bare network error)."""
    import huggingface_hub

    reason = hub_offline_reason()
    if reason is not None:
        raise _unavailable(repo_id, reason)
    api = huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 allow_patterns=[WEIGHTS_NAME, CONFIG_NAME, CARD_NAME])
    except Exception as exc:
        if not _network_error(exc):
            raise  # the hub answered (auth, permissions, a bad name): its message says which
        raise _unavailable(repo_id, str(exc) or type(exc).__name__) from exc
    return str(getattr(info, "commit_url", info))


def _network_error(exc: Exception) -> bool:
    """A failure to reach the hub (refused, reset, timed out, offline mode), not an answer from it."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "HfHubHTTPError" in names:  # an HTTP answer: the request itself was refused
        return False
    return isinstance(exc, (ConnectionError, TimeoutError)) or bool(
        names & {"TransportError", "NetworkError", "ConnectError", "ConnectionError", "ConnectTimeout", "Timeout",
                 "OfflineModeIsEnabled"})


def _unavailable(repo_id: str, reason: str) -> HubUnavailable:
    return HubUnavailable(f"{repo_id}: cannot upload, the Hugging Face hub cannot be reached ({reason}); "
                          "write the files locally with `deepfake push RUN --save_dir DIR` (or save_pretrained) "
                          "and upload that folder when online")


def push_head(head_state: dict[str, torch.Tensor], config: dict, repo_id: str, run_summary: dict | None = None,
              **kwargs) -> str:
    """Write the head folder to a temporary directory and upload it to ``repo_id``."""
    with tempfile.TemporaryDirectory(prefix="deepfake-push-") as tmp:
        save_head_folder(tmp, head_state, config, run_summary)
        return upload_head_folder(tmp, repo_id, **kwargs)


# --- the model card --------------------------------------------------------------------


def _num(value, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return percent(value, 2, "%") if pct else f"{value:.4f}"


def model_card(config: dict, run_summary: dict | None = None) -> str:
    """A model card (hub README.md) written from the checkpoint config: every number is the run's own."""
    model = config.get("tower", {}).get("model", "unknown")
    terms = (config.get("published") or {}).get("licence") or {}
    # The hub's metadata takes licence identifiers; research-only terms, or none stated, are "other".
    spdx = terms.get("name") and not terms.get("research_only") and " " not in terms["name"]
    licence = terms["name"] if spdx else ("other" if terms else None)
    lines = [*_card_front(model, licence), *_card_source(config), *_card_tower(config), *_card_training(config, run_summary),
             *_card_metrics(config), *_card_limits(config)]
    return "\n".join(lines)


def _card_source(config: dict) -> list[str]:
    """Where an imported published head comes from and its licence (nothing for a head trained here)."""
    source = config.get("published")
    if not isinstance(source, dict):
        return []
    licence = source.get("licence") or {}
    return [
        "## Source and licence",
        "",
        f"- the released head of {source.get('title')} ({source.get('paper')}), not trained by this project: "
        f"`{source.get('file')}` of {source.get('repository')}, sha256 `{source.get('sha256')}`",
        f"- reads {source.get('reads')}",
        f"- licence: {licence.get('name')}" + (" (research use only: no commercial use)" if licence.get("research_only")
                                               else "") + f"; its text: {licence.get('text') or 'none in the repository'}",
        *([f"- {licence['note']}"] if licence.get("note") else []),
        "",
    ]


def _card_front(model: str, licence: str | None = None) -> list[str]:
    """The hub metadata, what the head is, and how to use it."""
    base = [f"base_model: {model}"] if is_repo_id(model) and "/" in model else []
    base += [f"license: {licence.lower()}"] if licence else []
    return [
        "---",
        "library_name: deepfake",
        "pipeline_tag: image-classification",
        "tags:",
        "- deepfake-detection",
        "- ai-generated-image-detection",
        "- image-forensics",
        *base,
        "---",
        "",
        "# Deepfake detector head",
        "",
        f"A small classifier head on the frozen `{model}` image tower: it gives P(fake), the probability "
        "that an image was generated by a model rather than taken by a camera. This repository holds only "
        "the head; the tower is loaded from its own source.",
        "",
        "## Use",
        "",
        "```python",
        "from deepfake import DeepfakeClassifier",
        "clf = DeepfakeClassifier.from_pretrained(\"REPO_ID\")",
        "print(clf.predict(\"photo.jpg\").probability)",
        "```",
        "",
        "or `deepfake predict photo.jpg --checkpoint REPO_ID`.",
        "",
    ]


def _tower_pin(tower: dict) -> str:
    """What pins the tower's features: a hub commit, a local checkpoint's weight hash, or a weight-free version."""
    if tower.get("weights_sha256"):
        return f"a local checkpoint, weights sha256 `{tower['weights_sha256']}`"
    revision = tower.get("revision")
    if revision and _weightless(tower.get("family")):
        return f"weight-free, analysis version {revision}"
    return f"revision `{revision}`" if revision else "no revision pinned"


def _weightless(name) -> bool:
    from deepfake.towers.registry import families

    found = families().get(name) if isinstance(name, str) else None
    return bool(found and found.weightless)


def _card_tower(config: dict) -> list[str]:
    """The tower the head is only valid with, and how images are prepared for it."""
    tower, pre, head = config.get("tower", {}), config.get("preprocess", {}), config.get("head", {})
    model = tower.get("model", "unknown")
    family = f"{tower['family']} family" if tower.get("family") else "unknown family"
    head_desc = ", ".join(f"{k} {v}" for k, v in head.items())
    return [
        "## Tower and preprocessing",
        "",
        f"- tower: `{model}` ({family}; {_tower_pin(tower)}), "
        f"feature dimension {tower.get('feature_dim', head.get('in_dim', 'n/a'))}",
        *(_card_preprocess(pre, tower)),
        f"- features: {json.dumps(config.get('features', {}))}",
        f"- head: {head_desc}",
        *(["- the tower is a local checkpoint, named here by its folder's name: load the head with "
           "`DeepfakeClassifier.from_pretrained(\"REPO_ID\", model=\"DIR\")`, DIR holding that tower "
           "(its weights' sha256 is checked)"] if tower.get("weights_sha256") else []),
        "",
    ]


def _card_preprocess(pre: dict, tower: dict) -> list[str]:
    """How images are prepared: one line, or one per part of a fused tower (each part's own)."""
    def line(spec: dict) -> str:
        return (f"mode `{spec.get('mode')}`, size {spec.get('size')}, interpolation `{spec.get('interpolation')}`, "
                f"mean {spec.get('mean')}, std {spec.get('std')}")
    if not isinstance(pre.get("parts"), list):
        return [f"- preprocessing: {line(pre)}"]
    parts = tower.get("parts") if isinstance(tower.get("parts"), list) else [{}] * len(pre["parts"])
    return ["- a fused tower: each image is decoded once and prepared for each part; the head reads the parts' "
            "features concatenated, in this order:"] + [
        f"  - part {number}: `{part.get('model')}` ({part.get('family')} family; {_tower_pin(part)}), "
        f"{part.get('feature_dim')}-d; preprocessing {line(spec)}"
        for number, (part, spec) in enumerate(zip(parts, pre["parts"]), 1)]


def _augmentation(train_args: dict) -> str:
    """The augmentation options in effect (none when both probabilities are 0), never the idle ones."""
    on = []
    if (train_args.get("blur_prob") or 0) > 0:
        on.append(f"Gaussian blur with probability {train_args['blur_prob']}, sigma up to {train_args.get('blur_sigma')}")
    if (train_args.get("jpeg_prob") or 0) > 0:
        on.append(f"JPEG with probability {train_args['jpeg_prob']}, quality {train_args.get('jpeg_quality')}")
    if not on:
        return "none" if "blur_prob" in train_args or "jpeg_prob" in train_args else "n/a"
    return "; ".join(on) + f" ({train_args.get('aug_views', 'n/a')} augmented views cached per image)"


def _card_training(config: dict, run_summary: dict | None) -> list[str]:
    """The data and recipe that trained the head."""
    train_args = config.get("train_args", {})
    lines = [
        "## Training data",
        "",
        f"- data set: `{train_args.get('dataset_dir', 'n/a')}`",
        f"- categories: {', '.join(config.get('categories', [])) or 'n/a'}",
    ]
    if run_summary:
        lines.append(f"- images: {run_summary.get('n_train', 'n/a')} training, {run_summary.get('n_val', 'n/a')} validation")
    return lines + [
        f"- epochs: {train_args.get('num_epochs', 'n/a')} (this head: epoch {config.get('epoch', 'n/a')}), "
        f"learning rate {train_args.get('learning_rate', 'n/a')}, batch size {train_args.get('batch_size', 'n/a')}, "
        f"seed {config.get('seed', 'n/a')}",
        f"- augmentation: {_augmentation(train_args)}",
        "",
    ]


def _card_metrics(config: dict) -> list[str]:
    """Validation metrics, the default threshold and any calibrated operating point."""
    metrics, calibration = config.get("metrics", {}), config.get("calibration") or {}
    return [
        "## Validation metrics",
        "",
        "| metric | value |",
        "| --- | ---: |",
        f"| accuracy at 0.5 | {_num(metrics.get('val_acc'), pct=True)} |",
        f"| average precision | {_num(metrics.get('val_ap'), pct=True)} |",
        f"| best-threshold accuracy | {_num(metrics.get('val_best_acc'), pct=True)} |",
        f"| loss | {_num(metrics.get('val_loss'))} |",
        f"| expected calibration error | {_num(metrics.get('val_ece'))} |",
        "",
        "## Threshold and calibration",
        "",
        f"- default threshold of `deepfake predict`: the validation threshold, {_num(config.get('val_threshold'))} "
        "(maximises validation accuracy); `--threshold 0.5` gives the field's fixed threshold "
        f"({_num(config.get('threshold'))} is the checkpoint's reporting threshold)",
        f"- calibration: expected calibration error {_num(metrics.get('val_ece'))} on the validation set"
        + (f"; operating point {_num(calibration.get('threshold'))} (`--threshold calibrated`): "
           f"false-positive rate {_num(calibration.get('achieved_fpr'), pct=True)} on {calibration.get('n_images', 'n/a')} "
           f"known-real images of `{calibration.get('real_dir', 'n/a')}` (target "
           f"{_num(calibration.get('target_fpr'), pct=True)})"
           if calibration.get("threshold") is not None else "; no operating point calibrated on known-real images"),
        "",
    ]


def _card_limits(config: dict) -> list[str]:
    """What the head is for, what it is not, and the software that made it."""
    return [
        "## Intended use and limits",
        "",
        "- Intended for research on AI-generated image detection and as one signal for people who "
        "check images (editors, moderators, fact-checkers), never as sole proof that an image is or is not generated.",
        "- Scores are only as good as the training data: generators, content and post-processing "
        "(JPEG, resizing, screenshots, social-media recompression) unlike the training set lower accuracy, "
        "and a threshold learned on one generator rarely transfers to others.",
        "- Validation numbers come from the same distribution as the training data; "
        "evaluate on your own held-out generators before relying on it.",
        "- The head is only valid with the exact tower and preprocessing above; the loader refuses other towers.",
        "",
        f"Software: {json.dumps(config.get('versions', {}))}",
        "",
    ]
