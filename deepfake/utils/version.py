"""The package version, in one place: ``deepfake.__version__`` and ``deepfake --version`` read it."""

__version__ = "0.1.0"
