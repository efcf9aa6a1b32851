"""Command-line flags shared by the scripts, so each is spelled and documented once."""

from __future__ import annotations

import argparse
import logging

from deepfake.backbones import DEFAULT_MODEL, PREPROCESS_MODES
from deepfake.image_io import DEFAULT_MAX_PIXELS
from deepfake.runtime import PRECISIONS


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available, else cpu)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="tower precision: auto = bf16 on GPUs and on CPUs with bf16 instructions, else fp32")
    parser.add_argument("--batch_size", type=int, default=64, help="images per batch")
    parser.add_argument("--num_workers", type=int, default=2, help="image decoding worker processes")
    parser.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels than this (decompression bombs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_tower_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="tower: Hugging Face id, local checkpoint directory, or 'spectrum' (default: %(default)s)")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of --model")
    parser.add_argument("--preprocess", default=None, choices=PREPROCESS_MODES,
                        help="resize: LanguageBind/CLIP transform (short side 224 + center crop); "
                             "crop: center crop 224 without resizing (UniversalFakeDetect test protocol)")


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache_dir", default=None,
                        help="feature cache (default: $DEEPFAKE_CACHE or ~/.cache/deepfake/features)")
    parser.add_argument("--no_cache", action="store_true", help="run the tower on every image every time")
    parser.add_argument("--compile", action="store_true", help="torch.compile the tower before extraction")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_pair(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    try:
        pair = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI integers, got {text!r}") from None
    if not 1 <= pair[0] <= pair[1] <= 100:
        raise argparse.ArgumentTypeError(f"JPEG qualities must satisfy 1 <= LO <= HI <= 100, got {text!r}")
    return pair
