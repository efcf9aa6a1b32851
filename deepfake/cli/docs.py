"""Write the command-line reference (``docs/cli.md``) from the parsers themselves.

    python -m deepfake.cli.docs > docs/cli.md

Every command's ``--help``, at a fixed width so the page does not depend on the terminal.
A test regenerates it and fails when the committed page is stale.
"""

from __future__ import annotations

import importlib
import os
import re
import sys

from deepfake.cli.commands import COMMANDS, usage

WIDTH = "100"
# Commands run as scripts or modules rather than as ``deepfake COMMAND``.
SCRIPTS = {
    "python -m deepfake.cli.synthetic": "deepfake.cli.synthetic",
    "python benchmarks/compare_heads.py": "deepfake.cli.compare_heads",
}


def command_help(module: str) -> str:
    """The ``--help`` text of one command module, as its parser prints it (machine-specific defaults in words)."""
    text = importlib.import_module(module).build_parser().format_help().rstrip()
    return re.sub(r"\(default: \d+ on this\s+machine\)", "(default: the CPU cores less 2, at most 8)", text)


def reference() -> str:
    """The whole page: ``deepfake --help``, then every command's flags."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse wraps help to the terminal's width
    try:
        parts = ["# Command-line reference", "",
                 "Generated from the parsers by `python -m deepfake.cli.docs > docs/cli.md`; do not edit by hand.",
                 "`python train_ClassifierHead.py` and `python test_ClassifierHead.py` take the flags of "
                 "`deepfake train` and `deepfake test`. Every flag is also accepted with hyphens in place of its underscores.",
                 "", "## deepfake", "", "```", usage(), "```"]
        for name, module in COMMANDS.items():
            parts += ["", f"## deepfake {name}", "", "```", command_help(module), "```"]
        for name, module in SCRIPTS.items():
            parts += ["", f"## {name}", "", "```", command_help(module), "```"]
        return "\n".join(parts) + "\n"
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous


def main(argv: list[str] | None = None) -> int:
    sys.stdout.write(reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
