"""Train the deepfake classifier head on a frozen LanguageBind image tower.

    python train_ClassifierHead.py --dataset_dir data/progan --output_dir runs/progan \
        --categories car,cat,chair,horse --num_epochs 50

Features are extracted once into a cache; epochs then train the head from it.
The same command is installed as ``deepfake train``.
"""

from __future__ import annotations

import sys

from deepfake.cli import train as train_cli


def main(argv: list[str] | None = None) -> int:
    return train_cli.main(argv, prog="train_ClassifierHead.py")


if __name__ == "__main__":
    sys.exit(main())
