"""``deepfake COMMAND ...`` (also ``python -m deepfake COMMAND ...``): one entry point, one module per command.

Each command is a module with ``main(argv)``; ``deepfake COMMAND --help`` lists its flags.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys

COMMANDS = {
    "train": "deepfake.cli.train",
    "test": "deepfake.cli.test",
    "predict": "deepfake.cli.predict",
    "demo": "deepfake.cli.demo",
    "serve": "deepfake.cli.serve",
    "push": "deepfake.cli.push",
    "audit": "deepfake.cli.audit",
    "split": "deepfake.cli.split",
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
    from deepfake import __version__

    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: {prog} COMMAND [ARGS...]", "",
             f"Detect AI-generated images with a frozen image tower and a small head (deepfake {__version__}).", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {summary(module)}" for name, module in COMMANDS.items()]
    lines += ["", f"`{prog} COMMAND --help` lists a command's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv and argv[0] == "--version":
        from deepfake import __version__

        print(f"deepfake {__version__}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        if argv:
            print(f"deepfake: unknown command {argv[0]!r}", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
