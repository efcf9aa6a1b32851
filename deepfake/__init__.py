"""Detect AI-generated images with a frozen LanguageBind image tower and a small trainable head."""

from deepfake.deepfake_classifier import DeepfakeClassifier
from deepfake.deepfake_dataset import DeepfakeDataset

__all__ = ["DeepfakeClassifier", "DeepfakeDataset"]
__version__ = "0.1.0"
