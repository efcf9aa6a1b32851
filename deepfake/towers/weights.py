"""Where a tower's files are: a local directory or a hub id, single-file or sharded weights.

``resolve_weights`` returns a :class:`WeightFiles` with the config, the optional
``preprocessor_config.json``, the weight files (one file, or every shard named by
``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``) and, for a hub id, the
commit they were resolved at. Hub files go through huggingface_hub's cache, so
``HF_HUB_OFFLINE=1`` works from that cache and a miss is a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from deepfake.utils.hashing import file_sha256
from deepfake.utils.stamp_memo import memo_path, memoized

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
PREPROCESSOR_CONFIG = "preprocessor_config.json"


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded as an image tower; the message says why."""


@dataclass(frozen=True)
class WeightFiles:
    """The files of one checkpoint, all in one directory (a hub snapshot or the user's folder)."""

    directory: Path
    config: Path
    weights: tuple[Path, ...]
    index: Path | None = None
    preprocessor: Path | None = None
    revision: str | None = None  # hub commit; None for a local directory

    def read_config(self) -> dict:
        return read_json(self.config)

    def read_preprocessor(self) -> dict | None:
        return read_json(self.preprocessor) if self.preprocessor is not None else None

    def weights_sha256(self, memo_root: Path | None = None) -> str:
        """One hash for the weights: the file's, or over the index and every shard's for a sharded checkpoint.

        ``memo_root``: a cache root where each file's hash is remembered by its stamp
        (:mod:`deepfake.utils.stamp_memo`): hashing a 1.2 GB checkpoint on every run would cost
        seconds that a run whose features are all cached otherwise never spends.
        """
        files = ([self.index] if self.index else []) + sorted(self.weights)
        identity = {"checkpoint": str(self.directory.resolve())}
        memo = memo_path(memo_root, "sha256", identity) if memo_root is not None else None
        hashes = memoized((str(f) for f in files), lambda f: {"sha256": file_sha256(Path(f))}, memo, identity,
                          _stored_sha256)
        if self.index is None and len(self.weights) == 1:
            return hashes[str(self.weights[0])]["sha256"]
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode())
            digest.update(hashes[str(path)]["sha256"].encode())
        return digest.hexdigest()


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: unreadable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _shards(index: Path) -> tuple[Path, ...]:
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsError(f"{index}: no weight_map in this index")
    return tuple(index.parent / name for name in sorted(set(weight_map.values())))


def _local(directory: Path) -> WeightFiles:
    config = directory / "config.json"
    if not config.is_file():
        raise WeightsError(f"{directory}: no config.json in this directory")
    preprocessor = directory / PREPROCESSOR_CONFIG
    preprocessor = preprocessor if preprocessor.is_file() else None
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return WeightFiles(directory, config, (directory / name,), None, preprocessor)
    for name in INDEX_FILES:
        index = directory / name
        if index.is_file():
            shards = _shards(index)
            missing = [p.name for p in shards if not p.is_file()]
            if missing:
                raise WeightsError(f"{index}: shard(s) missing from {directory}: {', '.join(missing)}")
            return WeightFiles(directory, config, shards, index, preprocessor)
    raise WeightsError(f"{directory}: no weights; expected one of {', '.join(WEIGHT_FILES + INDEX_FILES)}")


def _hub_file(repo_id: str, filename: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision)


def _hub(source: str, revision: str | None) -> WeightFiles:
    from huggingface_hub.errors import EntryNotFoundError

    try:
        config = Path(_hub_file(source, "config.json", revision))
    except Exception as exc:  # network, auth, offline cache miss: all end the same way
        offline = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise WeightsError(f"{source}: cannot fetch config.json{offline}: {exc}") from exc

    def optional(name: str) -> Path | None:
        try:
            return Path(_hub_file(source, name, revision))
        except EntryNotFoundError:
            return None
        except Exception as exc:
            if name == PREPROCESSOR_CONFIG and os.environ.get("HF_HUB_OFFLINE"):
                return None  # offline and never fetched: the repository may simply not have one
            raise WeightsError(f"{source}: cannot fetch {name}: {exc}") from exc

    preprocessor = optional(PREPROCESSOR_CONFIG)
    for name in WEIGHT_FILES:
        weights = optional(name)
        if weights is not None:
            # Hub caches keep files under snapshots/<commit>/: that commit is the revision.
            return WeightFiles(weights.parent, weights.parent / "config.json", (weights,), None, preprocessor,
                                   weights.parent.name)
    for name in INDEX_FILES:
        index = optional(name)
        if index is not None:
            shards = tuple(Path(_hub_file(source, p.name, revision)) for p in _shards(index))
            return WeightFiles(index.parent, index.parent / "config.json", shards, index, preprocessor,
                                   index.parent.name)
    del config
    raise WeightsError(f"{source}: the repository has none of {', '.join(WEIGHT_FILES + INDEX_FILES)}")


def resolve_weights(source: str, revision: str | None = None) -> WeightFiles:
    """The files of a local checkpoint directory or a hub id (``org/name``)."""
    local = Path(source).expanduser()
    if local.is_dir():
        return _local(local)
    if local.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise WeightsError(f"{source}: not a checkpoint directory nor a hub id of the form org/name")
    return _hub(source, revision)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load weights without ever unpickling code: safetensors, or torch.load(weights_only=True)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a plain tensor state dict (refused to unpickle): {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def read_weights(files: WeightFiles) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, shards merged (a key in two shards is an error)."""
    state: dict[str, torch.Tensor] = {}
    for path in files.weights:
        part = read_state_dict(path)
        twice = sorted(set(part) & set(state))
        if twice:
            raise WeightsError(f"{path}: keys also in another shard: {', '.join(twice[:5])}")
        state.update(part)
    return state


def _stored_sha256(record: dict) -> dict:
    if not isinstance(record.get("sha256"), str):
        raise ValueError("malformed hash record")
    return record


