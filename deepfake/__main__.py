"""``deepfake COMMAND ...`` (also ``python -m deepfake COMMAND ...``): one entry point, one module per command.

Each command is a module with ``main(argv)``; ``deepfake COMMAND --help`` lists its flags.
"""

from __future__ import annotations

import importlib
import sys

from deepfake.cli.commands import COMMANDS, usage


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv and argv[0] == "--version":
        from deepfake.utils.version import __version__

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
