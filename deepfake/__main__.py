"""``python -m deepfake COMMAND ...``: predict (score images), demo (synthetic benchmark end to end),
audit (real-vs-fake biases of a data set), split (flat folders -> train/val/test)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "predict": "deepfake.predict",
    "demo": "deepfake.demo",
    "audit": "deepfake.audit",
    "split": "deepfake.split",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m deepfake {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
