"""Import a published detector's released head as a run: deepfake import ufd|rine FILE --out RUN.

    deepfake import ufd fc_weights.pth --out runs/ufd
    deepfake import rine model_4class_trainable.pth --out runs/rine-4class   # --variant read from the name
    deepfake import tiny-ladeda-wildrf WildRF_Tiny_LaDeDa.pth --out runs/tiny-ladeda-wildrf   # a whole network

UniversalFakeDetect's ``pretrained_weights/fc_weights.pth`` (a linear probe on CLIP ViT-L/14's image
embedding) and RINE's ``ckpt/model_{1class,2class,4class,ldm}_trainable.pth`` (a head on every block's
ln_2 CLS token) become an ordinary run folder (``best.safetensors`` + ``best.json``) on the tower
``openai/clip-vit-large-patch14`` with the authors' test transform (center crop 224, no resize).
The file is read with ``torch.load(weights_only=True)``: nothing in it is run, and its keys and
shapes must be exactly the release's. The whole released networks (``tiny-ladeda-wildrf``,
``tiny-ladeda-forensynth``, ``npr``) become a run whose tower loads from FILE where it is.
Then ``deepfake test --checkpoint RUN``, ``predict``, ``serve``
and ``push`` use it as any run. Exit status: 0 on success, 2 when the file or the options are refused.
See docs/published-detectors.md.
"""

from __future__ import annotations

import argparse
import sys

from deepfake.cli.args import CliParser, run_job, setup_logging
from deepfake.model.published import RELEASES, TargetTower, import_release
from deepfake.model.released_networks import NETWORK_MODES, NETWORK_RELEASES, import_network
from deepfake.towers.loading import load_tower
from deepfake.towers.released import DEFAULT_MODE
from deepfake.towers.weights import WeightsError

VARIANTS = sorted({v for r in RELEASES.values() for v in r.variants if v})


def build_parser(prog: str = "deepfake import") -> argparse.ArgumentParser:
    p = CliParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("release", choices=sorted(RELEASES) + sorted(NETWORK_RELEASES),
                   help="whose head: ufd (UniversalFakeDetect) or rine (RINE); or a whole released network: "
                        + ", ".join(sorted(NETWORK_RELEASES)))
    p.add_argument("file", help="the released .pth file, as downloaded")
    p.add_argument("--out", required=True, help="run folder to write (best.safetensors + best.json)")
    p.add_argument("--variant", default=None, choices=VARIANTS,
                   help="rine: which checkpoint (default: read from the file name model_<variant>_trainable.pth)")
    p.add_argument("--tower", default=None, metavar="DIR",
                   help="run the head on this CLIP tower instead of openai/clip-vit-large-patch14 (a local copy "
                        "of it, or any CLIP or LanguageBind tower whose sizes fit the file)")
    p.add_argument("--preprocess", default=None, choices=NETWORK_MODES,
                   help="a whole network: native (the whole unresized image) or resize (its paper's 256 x 256 "
                        f"transform) (default: {DEFAULT_MODE}, measured in docs/published-detectors.md)")
    p.add_argument("--overwrite", action="store_true", help="replace the head in a non-empty --out folder")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _target(tower: str | None) -> TargetTower | None:
    """The tower named by ``--tower`` (read from its config; its weights are hashed, not built)."""
    if tower is None:
        return None
    try:
        return TargetTower.of(load_tower(tower, defer=True))
    except WeightsError as exc:
        raise ValueError(f"--tower {tower}: {exc}") from exc


def _import_network(args: argparse.Namespace):
    if args.variant or args.tower:
        raise ValueError(f"{args.release} is a whole network: --variant and --tower do not apply")
    return import_network(args.file, args.release, args.out, args.overwrite, args.preprocess)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if args.preprocess and args.release not in NETWORK_RELEASES:
        build_parser().error(f"--preprocess is for the whole released networks, not {args.release}")
    job = (lambda: _import_network(args)) if args.release in NETWORK_RELEASES else (
        lambda: import_release(args.file, args.release, args.out, args.variant, _target(args.tower), args.overwrite))
    code, weights = run_job("import", job, "run the same command again")
    if weights is not None:
        what = "network" if args.release in NETWORK_RELEASES else "head"
        print(f"imported the {args.release} {what} of {args.file} into {weights.parent}; "
              f"use it with --checkpoint {weights.parent}")
    return code


if __name__ == "__main__":
    sys.exit(main())
