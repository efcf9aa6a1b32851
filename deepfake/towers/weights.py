"""Where a tower's files are: a local directory or a hub id, single-file or sharded weights.

``resolve_weights`` returns a :class:`WeightFiles` with the config, the optional
``preprocessor_config.json``, the weight files (one file, or every shard named by
``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``) and, for a hub id, the
commit they were resolved at. Hub files go through huggingface_hub's cache, so
``HF_HUB_OFFLINE=1`` works from that cache and a miss is a clear error.

Offline is found at once (:func:`hub_offline_reason`): ``HF_HUB_OFFLINE`` set, or one TCP connection
to the hub (or the proxy) that fails or stays unanswered for a few seconds. Files are then read from
the cache only, instead of huggingface_hub's retries (about 25 s), and a miss says what works offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch

from deepfake.utils.hashing import file_sha256
from deepfake.utils.stamp_memo import memo_path, memoized

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
PREPROCESSOR_CONFIG = "preprocessor_config.json"
DEFAULT_ENDPOINT = "https://huggingface.co"
# Seconds one connection to the hub may take before it counts as offline, and how long an answer holds.
HUB_PROBE_TIMEOUT = 3.0
HUB_PROBE_TTL = 60.0
# What a user can do without the hub: named in every offline message about a tower.
OFFLINE_ALTERNATIVES = ("what works offline: --model spectrum (the weight-free spectral tower) or --model DIR "
                        "(a local checkpoint directory), and `deepfake demo` (the whole job on a synthetic "
                        "benchmark, no downloads)")
_TRUE = ("1", "ON", "YES", "TRUE")
_probed: dict[tuple[str, int], tuple[float, str | None]] = {}  # (host, port) -> (when, reason)


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded as an image tower; the message says why."""


class TowerOffline(WeightsError):
    """A hub tower that is not in the local hub cache while the hub cannot be reached.

    ``source`` and ``reason`` let a caller that knows the command say what works for it instead of
    the general :data:`OFFLINE_ALTERNATIVES`.
    """

    def __init__(self, source: str, reason: str, advice: str = OFFLINE_ALTERNATIVES):
        super().__init__(f"{source}: not in the local hub cache, and the Hugging Face hub cannot be reached "
                         f"({reason}); {advice}")
        self.source, self.reason = source, reason


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


def offline_env() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set to a true value (as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def _probe_target(endpoint: str | None = None) -> tuple[str, int]:
    """The host and port a request to ``endpoint`` (default: the hub's) connects to first: the proxy when
    one is set for its scheme, else the endpoint itself."""
    url = urlsplit(endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    names = ("HTTPS_PROXY", "https_proxy") if url.scheme != "http" else ("HTTP_PROXY", "http_proxy")
    for name in (*names, "ALL_PROXY", "all_proxy"):
        if os.environ.get(name) and not _bypasses_proxy(url.hostname or ""):
            proxy = urlsplit(os.environ[name] if "://" in os.environ[name] else f"http://{os.environ[name]}")
            return proxy.hostname or "", proxy.port or 80
    return url.hostname or "", url.port or (80 if url.scheme == "http" else 443)


def _bypasses_proxy(host: str) -> bool:
    """Whether ``NO_PROXY`` sends requests to ``host`` straight to it (as urllib reads it; loopback too)."""
    import urllib.request

    return host in ("127.0.0.1", "localhost", "::1") or bool(urllib.request.proxy_bypass(host))


def _probe(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout`` s, else why not.

    In a thread: name resolution has no timeout of its own and can hang on a machine without network.
    """
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"no connection to {host}:{port}: {exc.strerror or exc}")

    worker = threading.Thread(target=connect, name="hub-probe", daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return outcome[0] if outcome else f"no answer from {host}:{port} within {timeout:g} s"


def hub_offline_reason(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """Why the Hugging Face hub cannot be reached now, or None when it can.

    ``HF_HUB_OFFLINE`` answers at once; otherwise one connection to the hub's host (or the proxy)
    decides, within ``timeout`` seconds, instead of huggingface_hub's five retries. The answer
    holds for a minute, so the several files of one tower cost one probe.
    """
    if offline_env():
        return "HF_HUB_OFFLINE is set"
    return reachability(_probe_target(), timeout)


def url_offline_reason(url: str, timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """Why ``url`` cannot be fetched now (``HF_HUB_OFFLINE`` set, or its host or proxy unanswered within
    ``timeout`` s), or None: the hub's offline rule, for the other downloads (released detectors)."""
    if offline_env():
        return "HF_HUB_OFFLINE is set"
    return reachability(_probe_target(url), timeout)


def reachability(target: tuple[str, int], timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """One probe of ``(host, port)`` per minute: None when a connection opens, else why not."""
    host, port = target
    if not host:
        return None
    when, reason = _probed.get((host, port), (-HUB_PROBE_TTL, None))
    if time.monotonic() - when >= HUB_PROBE_TTL:
        reason = _probe(host, port, timeout)
        _probed[(host, port)] = (time.monotonic(), reason)
    return reason


def hub_download(repo_id: str, filename: str, revision: str | None, offline: bool) -> str:
    """``hf_hub_download``, from the local hub cache only when ``offline`` (no network attempt, no retries)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, local_files_only=offline)


def _offline_miss(source: str, reason: str) -> WeightsError:
    return TowerOffline(source, reason)


def unavailable_reason(source: str) -> str | None:
    """Why the tower ``source`` (a hub id or a folder) cannot be had now, or None when it can.

    A local folder is there or not; a hub id is available from the local hub cache, or when the
    hub answers (then it is downloaded on first use). Nothing is downloaded here.
    """
    local = Path(source).expanduser()
    if local.is_dir() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        return None if local.is_dir() else f"{source}: no such folder"
    reason = hub_offline_reason()
    if reason is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return None
    return f"{source} is not in the local hub cache, and the Hugging Face hub cannot be reached ({reason})"


def _hub(source: str, revision: str | None) -> WeightFiles:
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    reason = hub_offline_reason()
    try:
        config = Path(hub_download(source, "config.json", revision, reason is not None))
    except Exception as exc:  # network, auth, offline cache miss: all end the same way
        if reason is not None:
            raise _offline_miss(source, reason) from exc
        raise WeightsError(f"{source}: cannot fetch config.json: {exc}") from exc

    def optional(name: str) -> Path | None:
        try:
            return Path(hub_download(source, name, revision, reason is not None))
        except LocalEntryNotFoundError:
            # Offline, a file never fetched may simply not exist in the repository: the next candidate decides.
            if reason is not None:
                return None
            raise WeightsError(f"{source}: cannot fetch {name}: the hub did not answer") from None
        except EntryNotFoundError:
            return None
        except Exception as exc:
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
            shards = tuple(Path(optional(p.name) or _missing_shard(source, p.name, reason)) for p in _shards(index))
            return WeightFiles(index.parent, index.parent / "config.json", shards, index, preprocessor,
                                   index.parent.name)
    del config
    if reason is not None:
        raise _offline_miss(source, reason)
    raise WeightsError(f"{source}: the repository has none of {', '.join(WEIGHT_FILES + INDEX_FILES)}")


def _missing_shard(source: str, name: str, reason: str | None) -> Path:
    if reason is not None:
        raise _offline_miss(source, reason)
    raise WeightsError(f"{source}: shard {name} named by its index is not in the repository")


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


