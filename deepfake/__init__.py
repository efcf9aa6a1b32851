"""Detect AI-generated images with a frozen LanguageBind image tower and a small trainable head.

The public API, loaded lazily: ``from deepfake import DeepfakeClassifier`` imports the
classifier and what it needs, never the training or command-line code::

    from deepfake import DeepfakeClassifier, DataConfig, TrainConfig, EvalConfig, train, evaluate

    summary = train(TrainConfig(data=DataConfig(dataset_dir="data/progan"), output_dir="runs/progan"))
    results = evaluate(EvalConfig(checkpoint="runs/progan", data=DataConfig(dataset_dir="data/test")))
    DeepfakeClassifier.from_pretrained("runs/progan").predict("photo.jpg").probability
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from deepfake.utils.version import __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "DeepfakeClassifier": "deepfake.deepfake_classifier",
    "DeepfakeDataset": "deepfake.deepfake_dataset",
    "Prediction": "deepfake.model.scoring",
    "load_tower": "deepfake.towers.loading",
    "train": "deepfake.training.run",
    "evaluate": "deepfake.evaluation.run",
    "TrainConfig": "deepfake.config",
    "EvalConfig": "deepfake.config",
    "CompareConfig": "deepfake.config",
    "DataConfig": "deepfake.config",
    "TowerConfig": "deepfake.config",
    "HeadConfig": "deepfake.config",
    "ScheduleConfig": "deepfake.config",
    "AugmentConfig": "deepfake.config",
    "PerturbConfig": "deepfake.config",
    "CacheConfig": "deepfake.config",
    "RuntimeConfig": "deepfake.config",
}

__all__ = [
    "AugmentConfig", "CacheConfig", "CompareConfig", "DataConfig", "DeepfakeClassifier", "DeepfakeDataset",
    "EvalConfig", "HeadConfig", "PerturbConfig", "Prediction", "RuntimeConfig", "ScheduleConfig", "TowerConfig",
    "TrainConfig", "__version__", "evaluate", "load_tower", "train",
]

if TYPE_CHECKING:  # for type checkers and editors only; at run time names load on first use
    from deepfake.config import (
        AugmentConfig,
        CacheConfig,
        CompareConfig,
        DataConfig,
        EvalConfig,
        HeadConfig,
        PerturbConfig,
        RuntimeConfig,
        ScheduleConfig,
        TowerConfig,
        TrainConfig,
    )
    from deepfake.deepfake_classifier import DeepfakeClassifier
    from deepfake.deepfake_dataset import DeepfakeDataset
    from deepfake.evaluation.run import evaluate
    from deepfake.model.scoring import Prediction
    from deepfake.towers.loading import load_tower
    from deepfake.training.run import train


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deepfake' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
