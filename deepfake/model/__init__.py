"""The trainable part and what it is saved as: heads (one module per kind), checkpoints, calibration, scoring, the hub."""
