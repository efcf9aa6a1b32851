"""Head comparison from one feature cache: every head kind, same features, seed and split.

    python benchmarks/compare_heads.py --dataset_dir data/progan --model LanguageBind/LanguageBind_Image \
        --test_dir data/test --output_dir runs/compare_heads

On the offline synthetic benchmark with the tiny fixture tower (about a minute on 2 CPU cores):

    python -m deepfake.cli.synthetic --out data/synthetic
    python benchmarks/compare_heads.py --dataset_dir data/synthetic --model tests/languagebind-tiny/lora0

Prints one per-generator table with a column group (acc, AP) per head and the number of
tower passes; writes results.md, results.json and importance.png into --output_dir.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfake.cli.compare_heads import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
