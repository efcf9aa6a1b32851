"""The trainable part and what it is saved as: heads (one module per kind), checkpoints, calibration, scoring, the hub."""

# Registers the released whole networks' names as tower names (`--model tiny-ladeda-wildrf`) with
# the towers layer below, which cannot import this one: whatever loads a model loads this package first.
from deepfake.model import detectors as _detectors  # noqa: E402,F401
