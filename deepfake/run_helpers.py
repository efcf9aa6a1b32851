"""What every run shares: library versions, the feature cache location, and skip reports."""

from __future__ import annotations

import logging
import os
import platform
from importlib import metadata
from pathlib import Path

import torch

from deepfake.feature_cache import FeatureCache
from deepfake.features import ExtractionSettings
from deepfake.fileio import display_path
from deepfake.towers import ImageTower

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$DEEPFAKE_CACHE``, else ``$XDG_CACHE_HOME/deepfake/features`` (``~/.cache`` by default)."""
    if os.environ.get("DEEPFAKE_CACHE"):
        return Path(os.environ["DEEPFAKE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepfake" / "features"


def versions() -> dict:
    """The versions that decide a run's numbers: Python, torch, transformers."""
    # From the installed package's metadata: a run whose features are all cached never imports
    # transformers (a second of start-up), and need not to learn its version.
    try:
        transformers = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        transformers = None
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers}


def cache_root(args) -> Path | None:
    """The feature cache root of a run (``--cache_dir`` or the default), ``None`` with ``--no_cache``."""
    if args.no_cache:
        return None
    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def feature_cache(args, tower: ImageTower, settings: ExtractionSettings, extra: dict | None = None) -> FeatureCache | None:
    """The cache for this tower, preprocessing, precision and view (``None`` with ``--no_cache``)."""
    root = cache_root(args)
    if root is None:
        return None
    info = {"tower": tower.cache_identity(), "features": settings.cache_info(), **(extra or {})}
    return FeatureCache(root, info)


def report_skipped(what: str, samples: list, skipped: dict[int, str]) -> list[dict]:
    """Log files that could not be read; they are left out and listed, never silently counted."""
    records = [{"path": samples[i].path, "reason": r} for i, r in sorted(skipped.items())]
    if records:
        log.warning("%s: %d file(s) skipped and left out:", what, len(records))
        for r in records[:20]:
            log.warning("  %s: %s", display_path(r["path"]), r["reason"])
    return records
