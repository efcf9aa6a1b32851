"""A checkpoint is the head plus the JSON config that made it.

``<name>.safetensors`` holds the head's tensors, ``<name>.json`` the tower id and revision
(or weight hash), preprocessing, head sizes, categories, seed, metrics and threshold, and
the sha256 of the weights file (``head_weights_sha256``): the two files are one unit, and a
pair whose hash does not match (a process killed between the two writes, one file replaced)
is refused. The config is written first, then the weights are renamed into place, so a crash
in between leaves a pair that is refused, never one that is silently wrong. A checkpoint
written before the hash existed still loads, with a warning.

Every field of the config is checked on load (:data:`CHECKPOINT_FIELDS`, one row per field):
a bad value is refused naming the file and the field. Nothing is ever unpickled: a
``.pth``/``.bin`` head is read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from deepfake.data.preprocess import FUSED_MODE, PREPROCESS_MODES
from deepfake.deepfake_dataset import DECODE_MODES
from deepfake.model.heads import head_from_config, head_kinds, required_head_fields
from deepfake.towers.base import TAP_FIRST_BLOCK
from deepfake.utils.fields import (
    FieldRule,
    boolean,
    check_fields,
    integer,
    mapping,
    nullable,
    number,
    sequence,
    sha256_hex,
    text,
)
from deepfake.utils.fileio import atomic_save_safetensors, atomic_write_json
from deepfake.utils.hashing import file_sha256
from deepfake.utils.runtime import DTYPES

log = logging.getLogger(__name__)

FORMAT = "deepfake-head/1"
BEST = "best"
# A pretrained-head folder (save_pretrained, hub repos): the names the hub expects.
PRETRAINED_WEIGHTS = "model.safetensors"
PRETRAINED_CONFIG = "config.json"
# The config field holding the sha256 of the weights file beside it.
WEIGHTS_HASH = "head_weights_sha256"
# What a training run or an import writes into its folder: all of it belongs to that run, and --overwrite removes it
# all (the resume state first, so that nothing of the old run can be continued), leaving other files alone.
RESUME_STATE = "resume_state"
RUN_FILES = (f"{RESUME_STATE}.safetensors", f"{BEST}.safetensors", f"{BEST}.json", f"{BEST}.calibration.json",
             "epoch_*.safetensors", "epoch_*.json", "run.json")
# An imported release also leaves its licence text: a new head must not stand beside another release's LICENSE.
IMPORTED_FILES = (*RUN_FILES, "LICENSE")
# Files a run folder holds that are not checkpoints, and what to pass instead.
_NOT_CHECKPOINTS = {"run.json": "the run's summary", "results.json": "an evaluation's results",
                    "calibration.json": "an evaluation's calibration"}


class CheckpointRefused(ValueError):
    """A head checkpoint that cannot be used; the message names the file and the reason."""


def write_checkpoint_pair(weights: str | os.PathLike, config_path: str | os.PathLike,
                          head_state: dict[str, torch.Tensor], config: dict) -> Path:
    """Write the weights and their config as one unit; returns the weights' path.

    The weights go to a temp file, the config recording their sha256 is written, and only then are
    the weights renamed into place: killed at any point, the folder holds the old pair, or a pair
    whose hash does not match (refused on load), never new weights under an old config.
    """
    def publish_config(tmp: str) -> None:
        atomic_write_json(config_path, {"format": FORMAT, **config, WEIGHTS_HASH: file_sha256(tmp)})

    return atomic_save_safetensors(weights, head_state, {"format": FORMAT}, before_replace=publish_config)


def save_checkpoint(directory: str | os.PathLike, name: str, head_state: dict[str, torch.Tensor], config: dict) -> Path:
    """Write ``name.safetensors`` and ``name.json`` as one unit (:func:`write_checkpoint_pair`); returns the weights' path."""
    directory = Path(directory)
    return write_checkpoint_pair(directory / f"{name}.safetensors", directory / f"{name}.json", head_state, config)


def clear_run(out: Path, patterns: tuple[str, ...] = RUN_FILES) -> list[str]:
    """Remove an earlier run's files (``patterns``) from ``out``; returns their names."""
    removed = []
    for pattern in patterns:
        for path in sorted(out.glob(pattern)):
            if path.is_file() or path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path.name)
    if removed:
        log.info("--overwrite: removed the earlier run's %d file(s) in %s (%s)", len(removed), out,
                 ", ".join(removed[:4]) + (", ..." if len(removed) > 4 else ""))
    return removed


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A run directory means its best checkpoint, a pretrained-head folder its weights, a ``.json`` the weights beside it."""
    path = Path(path)
    if path.is_dir():
        for name in (f"{BEST}.safetensors", PRETRAINED_WEIGHTS):
            if (path / name).is_file():
                return path / name
        epochs = sorted(path.glob("epoch_*.safetensors"), key=_epoch_number)
        if epochs:
            return epochs[-1]
        raise CheckpointRefused(
            f"{path}: no {BEST}.safetensors, epoch_*.safetensors or {PRETRAINED_WEIGHTS} in this directory")
    if path.suffix == ".json":
        return _weights_of_config(path)
    if not path.is_file():
        raise CheckpointRefused(f"{path}: no such checkpoint file")
    return path


def _weights_of_config(path: Path) -> Path:
    """The weights a ``.json`` names (``NAME.json`` -> ``NAME.safetensors``), refused in terms of what was passed."""
    weights = path.with_name(PRETRAINED_WEIGHTS) if path.name == PRETRAINED_CONFIG else path.with_suffix(".safetensors")
    if weights.is_file():
        return weights
    folder = path.parent
    found = sorted(p.name for p in folder.glob("*.safetensors") if not p.name.startswith("resume_state."))
    listed = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
    there = (f"checkpoints in {folder}: {listed}; pass the folder ({folder}) for its best one" if found
             else f"{folder} holds no checkpoint")
    if not path.is_file():
        raise CheckpointRefused(f"{path}: no such file ({there})")
    what = _NOT_CHECKPOINTS.get(path.name) or ("an evaluation's calibration"
                                               if path.name.endswith(".calibration.json") else None)
    if what:
        raise CheckpointRefused(f"{path}: {what}, not a checkpoint ({there})")
    raise CheckpointRefused(f"{path}: a checkpoint config without its weights: no {weights.name} beside it ({there})")


def _epoch_number(path: Path) -> tuple[int, str]:
    """``epoch_1000`` after ``epoch_999``: the number, not the name, orders epochs."""
    digits = path.stem.removeprefix("epoch_")
    return (int(digits), path.name) if digits.isdigit() else (-1, path.name)


def _sidecar(weights: Path) -> Path:
    """``name.json`` beside ``name.safetensors``; ``config.json`` beside ``model.safetensors``."""
    if weights.name == PRETRAINED_WEIGHTS and not weights.with_suffix(".json").is_file():
        return weights.with_name(PRETRAINED_CONFIG)
    return weights.with_suffix(".json")


def read_json_object(path: Path, what: str, fields: str) -> dict:
    """The JSON object in ``path`` (a ``what``, whose ``fields`` the refusal names); refused naming the file otherwise."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointRefused(f"{path}: unreadable {what}: {exc}") from exc
    if not isinstance(doc, dict):
        raise CheckpointRefused(f"{path}: {what} is a JSON {type(doc).__name__}, not an object of fields ({fields})")
    return doc


def _read_sidecar(weights: Path) -> dict | None:
    sidecar = _sidecar(weights)
    if not sidecar.is_file():
        return None
    return read_json_object(sidecar, "checkpoint config", "tower, preprocess, head, ...")


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """(head state dict, config, weights path) of a run directory or checkpoint file.

    The config is checked field by field, the weights against the sha256 the config records
    (``.safetensors``, the format this tool writes), and the head it describes against the
    weights' shapes; anything wrong raises :class:`CheckpointRefused` naming the file.
    """
    weights = resolve_checkpoint_path(path)
    state, config, where = _read_weights(weights)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointRefused(f"{weights}: expected a dict of tensors")
    if config is None:
        raise CheckpointRefused(f"{weights}: no config naming the tower and head (expected {_sidecar(weights)})")
    check_config(config, where)
    if weights.suffix == ".safetensors":
        check_pair(weights, where, config)
    check_head_size(config, where)
    return state, config, weights


def _read_weights(weights: Path) -> tuple[object, dict | None, Path]:
    """(tensors, config or None, the file the config came from) of a weights file, nothing unpickled."""
    if weights.suffix == ".safetensors":
        try:
            state = load_file(str(weights))
        except Exception as exc:
            raise CheckpointRefused(f"{weights}: not a readable safetensors file: {exc}") from exc
        return state, _read_sidecar(weights), _sidecar(weights)
    if weights.suffix not in (".pth", ".pt", ".bin"):
        raise CheckpointRefused(f"{weights}: unknown checkpoint type {weights.suffix!r}; use .safetensors")
    try:
        payload = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointRefused(
            f"{weights}: refused: not a plain tensor checkpoint (loading it would need to unpickle code): {exc}"
        ) from exc
    if isinstance(payload, dict) and isinstance(payload.get("head"), dict) and payload.get("config"):
        return payload["head"], payload["config"], weights  # the config travels inside the file
    if isinstance(payload, dict) and isinstance(payload.get("head"), dict):
        payload = payload["head"]
    return payload, _read_sidecar(weights), _sidecar(weights)


def check_pair(weights: Path, config_path: Path, config: dict) -> None:
    """Refuse weights whose sha256 is not the one their config records; warn when it records none."""
    recorded = config.get(WEIGHTS_HASH)
    if recorded is None:
        log.warning("%s: records no sha256 of %s (a checkpoint written before weight hashes were recorded): "
                    "loaded without checking that the two files are one pair", config_path, weights.name)
        return
    actual = file_sha256(weights)
    if actual != recorded:
        raise CheckpointRefused(
            f"{weights} and {config_path} are not one pair: the config records weights with sha256 {recorded[:12]}..., "
            f"the file has {actual[:12]}... (a write interrupted between the two files, or one of them replaced); "
            f"use another checkpoint of the run (an epoch_NNN.safetensors) or train again")


# --- the config's fields ----------------------------------------------------------------

_WIDTH = integer(1, 1 << 16)  # a head's widths: far above any tower's (ViT-g: 1,536; a 7B ViT: 4,096)
_SIDE = integer(1, 8192)  # an input side in pixels
_BLOCK = integer(0, 4096)  # a block number
# 1 GB of fp32: a hundred times RINE's head on ViT-L/14, the largest published here.
MAX_HEAD_PARAMETERS = 1 << 28
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def threshold_check(value) -> str | None:
    """A threshold on P(fake): in [0, 1] (the validation search may put it just below 0: everything is fake)."""
    ok = number(-1e-9, 1.0)(value) is None
    return None if ok else "a number in [0, 1]"


def _head_kind(value) -> str | None:
    return None if isinstance(value, str) and value in head_kinds() else f"one of {', '.join(head_kinds())}"


def _dropout(value) -> str | None:
    return None if number(0.0, 1.0)(value) is None and value < 1 else "a number in [0, 1)"


# Every field a loader reads, checked in this order: the first wrong one is named. A field not
# listed is kept as it is (a newer version's, or a note). Add a field: add its row here.
CHECKPOINT_FIELDS: tuple[FieldRule, ...] = (
    FieldRule("format", text(pattern=r"deepfake-head/\d+")),
    FieldRule(WEIGHTS_HASH, sha256_hex()),
    FieldRule("tower", mapping(), required=True),
    FieldRule("tower.model", text(), required=True),
    FieldRule("tower.family", nullable(text())),
    FieldRule("tower.revision", nullable(text())),
    FieldRule("tower.weights_sha256", nullable(sha256_hex())),
    FieldRule("tower.feature_dim", _WIDTH),
    FieldRule("tower.feature", text()),
    FieldRule("tower.layer_token", text()),
    FieldRule("preprocess", mapping(), required=True),
    FieldRule("preprocess.mode", text(*PREPROCESS_MODES), required=True),
    FieldRule("preprocess.size", _SIDE, required=True),
    FieldRule("preprocess.mean", sequence(number(), 3, item_what="finite numbers (R, G, B)"), required=True),
    FieldRule("preprocess.std", sequence(number(0.0, above=True), 3, item_what="numbers > 0 (R, G, B)"),
              required=True),
    FieldRule("preprocess.interpolation", text(*INTERPOLATIONS)),
    FieldRule("preprocess.resize_size", nullable(_SIDE)),
    FieldRule("preprocess.grid", nullable(integer(1, 64))),
    FieldRule("preprocess.colour", boolean()),
    FieldRule("features", mapping()),
    FieldRule("features.precision", text("auto", *DTYPES)),
    FieldRule("features.feature_kind", text()),
    FieldRule("features.store_dtype", text()),
    FieldRule("features.decode", text(*DECODE_MODES)),
    FieldRule("features.layers", sequence(_BLOCK, item_what="block numbers")),
    FieldRule("features.tap", text(*TAP_FIRST_BLOCK)),
    FieldRule("head", mapping(), required=True),
    FieldRule("head.kind", _head_kind),
    FieldRule("head.in_dim", _WIDTH),
    FieldRule("head.hidden", _WIDTH),
    FieldRule("head.hidden_size", _WIDTH),
    FieldRule("head.proj_dim", _WIDTH),
    FieldRule("head.nproj", integer(1, 64)),
    FieldRule("head.blocks", sequence(_BLOCK, min_length=1, item_what="block numbers")),
    FieldRule("head.num_classes", integer(1, 2)),
    FieldRule("head.dropout", _dropout),
    FieldRule("head.importance", text("block", "feature")),
    FieldRule("head.tap", text(*TAP_FIRST_BLOCK)),
    FieldRule("head.standardize", boolean()),
    FieldRule("head.ood", mapping()),
    FieldRule("head.ood.dim", _WIDTH, required=True),
    FieldRule("head.ood.distance", text()),
    FieldRule("head.ood.threshold", nullable(number(0.0))),
    FieldRule("head.ood.target_rate", number(0.0, 1.0)),
    FieldRule("head.ood.n_train", integer(0, 1 << 40)),
    FieldRule("head.ood.n_calibration", integer(0, 1 << 40)),
    FieldRule("head.ood.shrinkage", number(0.0, 1.0)),
    FieldRule("head.ood.achieved_rate", nullable(number(0.0, 1.0))),
    FieldRule("standardize", boolean()),
    FieldRule("threshold", threshold_check),
    FieldRule("val_threshold", nullable(threshold_check)),
    FieldRule("calibration", nullable(mapping())),
    FieldRule("calibration.threshold", threshold_check),
    FieldRule("categories", sequence(text(), item_what="category names")),
    FieldRule("seed", nullable(integer(-(1 << 63), (1 << 64) - 1))),
    FieldRule("epoch", integer(0, 1 << 31)),
    *(FieldRule(name, nullable(mapping())) for name in ("align", "metrics", "training", "train_args", "versions",
                                                        "published", "block_importance")),
)


# A fused tower's config: the parts' towers and preprocessings in two lists, each part checked with the
# rules of a single tower's ``tower`` and ``preprocess`` fields (deepfake/towers/fused.py).
_PART_FIELDS = tuple(rule for rule in CHECKPOINT_FIELDS if rule.path.split(".")[0] in ("tower", "preprocess"))
_FUSED_FIELDS = (
    FieldRule("tower.parts", sequence(mapping(), min_length=2, item_what="tower objects"), required=True),
    FieldRule("preprocess.parts", sequence(mapping(), min_length=2, item_what="preprocessing objects"), required=True),
    *(rule for rule in CHECKPOINT_FIELDS if not rule.path.startswith("preprocess.")),
)


def _check_fused(config: dict, where: Path) -> None:
    """The fields of a fused tower's checkpoint config, part by part (the part is named)."""
    check_fields(config, _FUSED_FIELDS, str(where), "checkpoint config", CheckpointRefused)
    towers, preprocesses = config["tower"]["parts"], config["preprocess"]["parts"]
    if len(towers) != len(preprocesses):
        raise CheckpointRefused(f"{where}: checkpoint config names {len(towers)} tower parts and "
                                f"{len(preprocesses)} preprocessings")
    for position, (tower, preprocess) in enumerate(zip(towers, preprocesses), 1):
        check_fields({"tower": tower, "preprocess": preprocess}, _PART_FIELDS, str(where),
                     f"checkpoint config (part {position}, {tower.get('model')!r})", CheckpointRefused)


def check_config(config: dict, where: Path) -> None:
    """Refuse a checkpoint config with a missing or wrong field, naming the file and the field."""
    if isinstance(config, dict) and isinstance(config.get("preprocess"), dict) \
            and config["preprocess"].get("mode") == FUSED_MODE:
        _check_fused(config, where)
    else:
        check_fields(config, CHECKPOINT_FIELDS, str(where), "checkpoint config", CheckpointRefused)
    # A head's own required fields depend on its kind (an old config without a kind is the MLP head).
    missing = [k for k in required_head_fields(config["head"]) if k not in config["head"]]
    if missing:
        raise CheckpointRefused(f"{where}: checkpoint config field 'head' lacks {', '.join(map(repr, missing))}")


def check_head_size(config: dict, where: Path) -> None:
    """Refuse a head config too large to build, before any memory is spent on it.

    The head is built on the meta device (shapes only): each width is in range, but two of them
    together (``in_dim`` and ``hidden`` of 65,536) would ask for a 17 GB head. Weights that do not
    fit a head of a reasonable size are left to the strict load, which names the tensors.
    """
    try:
        with torch.device("meta"):
            numel = sum(t.numel() for t in head_from_config(config["head"]).state_dict().values())
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointRefused(f"{where}: checkpoint config field 'head' cannot be built: {exc}") from exc
    if numel > MAX_HEAD_PARAMETERS:
        raise CheckpointRefused(f"{where}: checkpoint config field 'head' describes a head of {numel:,} values "
                                f"(at most {MAX_HEAD_PARAMETERS:,}): its sizes are not a head's")
