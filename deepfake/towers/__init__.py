"""Frozen image towers: one record per backbone, their weight files, and one module per family under ``families/``."""
