"""Share a trained head on the Hugging Face hub: ``deepfake push RUN ORG/NAME``.

Uploads ``model.safetensors`` (the head), ``config.json`` (tower, preprocessing, head
sizes, metrics, thresholds) and a model card written from the run's own numbers. The
tower is not uploaded: the config names it. Log in first (``hf auth login``) or pass
``--token`` / set ``HF_TOKEN``. ``--save_dir DIR`` writes the same files locally instead.

Anyone can then score with ``deepfake predict IMAGES --checkpoint ORG/NAME``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from deepfake.cli.args import CliParser, setup_logging
from deepfake.model.checkpoint import CheckpointRefused, load_checkpoint
from deepfake.model.detectors import checkpoint_source
from deepfake.model.hub import HubUnavailable, push_head, save_head_folder

log = logging.getLogger(__name__)


def run_summary_beside(weights: Path) -> dict | None:
    summary = weights.parent / "run.json"
    try:
        return json.loads(summary.read_text()) if summary.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="deepfake push", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run directory (uses best), checkpoint file, saved head folder or a released "
                                      "detector's name (`deepfake detectors`)")
    p.add_argument("repo_id", nargs="?", default=None, help="hub model repo, ORG/NAME (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--token", default=None, help="hub token (default: HF_TOKEN or the stored login)")
    p.add_argument("--commit_message", default="Upload deepfake detector head")
    p.add_argument("--save_dir", default=None, help="write the files into this folder instead of uploading")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if not args.repo_id and not args.save_dir:
        parser.error("give a REPO_ID to upload to, or --save_dir")
    try:
        state, config, weights = load_checkpoint(checkpoint_source(args.checkpoint))
    except CheckpointRefused as exc:
        log.error("%s", exc)
        return 2
    summary = run_summary_beside(weights)
    if args.save_dir:
        print(save_head_folder(args.save_dir, state, config, summary))
        return 0
    try:
        url = push_head(state, config, args.repo_id, summary, private=args.private, token=args.token,
                        commit_message=args.commit_message)
    except HubUnavailable as exc:  # offline: said at once, with what to do instead
        log.error("%s", exc)
        return 2
    except Exception as exc:  # auth, network, permissions: the hub's message says which
        log.error("%s: upload failed: %s", args.repo_id, exc)
        return 1
    print(f"uploaded {weights} to {args.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
