"""The table of ``deepfake`` subcommands (one module each) and the top-level usage text.

Kept apart from ``deepfake/__main__.py`` so that the command-line package itself (``deepfake.cli.docs``)
can read it without importing the entry point.
"""

from __future__ import annotations

import ast
import importlib.util

COMMANDS = {
    "train": "deepfake.cli.train",
    "test": "deepfake.cli.test",
    "predict": "deepfake.cli.predict",
    "demo": "deepfake.cli.demo",
    "serve": "deepfake.cli.serve",
    "push": "deepfake.cli.push",
    "audit": "deepfake.cli.audit",
    "split": "deepfake.cli.split",
    "import": "deepfake.cli.import_head",
    "detectors": "deepfake.cli.detectors",
    "compare": "deepfake.cli.compare",
}


def summary(module: str) -> str:
    """First line of a command module's docstring, read without importing it (no torch for --help)."""
    try:
        spec = importlib.util.find_spec(module)
        with open(spec.origin, encoding="utf-8") as handle:
            doc = ast.get_docstring(ast.parse(handle.read())) or ""
    except (ImportError, AttributeError, OSError, SyntaxError, TypeError):
        return ""
    return doc.strip().splitlines()[0].rstrip(".").replace("``", "") if doc.strip() else ""


def usage(prog: str = "deepfake") -> str:
    from deepfake.utils.version import __version__

    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: {prog} COMMAND [ARGS...]", "",
             f"Detect AI-generated images with a frozen image tower and a small head (deepfake {__version__}).", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {summary(module)}" for name, module in COMMANDS.items()]
    lines += ["", f"`{prog} COMMAND --help` lists a command's flags."]
    return "\n".join(lines)
