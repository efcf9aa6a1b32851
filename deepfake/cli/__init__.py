"""The command line: argument parsers (defaults read from :mod:`deepfake.config`) and one module per command."""
