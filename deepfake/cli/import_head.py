"""Import a released detector's file as a run: deepfake import NAME FILE [--out RUN].

    deepfake import rine-4class model_4class_trainable.pth           # into the cache: --checkpoint rine-4class
    deepfake import ufd fc_weights.pth --out runs/ufd                 # into a run folder of your own
    deepfake import rine model_4class_trainable.pth --out runs/rine   # --variant read from the file name
    deepfake import tiny-ladeda-wildrf WildRF_Tiny_LaDeDa.pth         # a whole network: its tower loads from FILE

NAME is a released detector (``deepfake detectors`` lists them), or ``rine`` with the variant read
from the file name (``model_<variant>_trainable.pth``) or given by ``--variant``. UniversalFakeDetect's
``pretrained_weights/fc_weights.pth`` (a linear probe on CLIP ViT-L/14's image embedding) and RINE's
``ckpt/model_{1class,2class,4class,ldm}_trainable.pth`` (a head on every block's ln_2 CLS token)
become an ordinary run folder (``best.safetensors`` + ``best.json``) on the tower
``openai/clip-vit-large-patch14`` with the authors' test transform (center crop 224, no resize).
The file is read with ``torch.load(weights_only=True)``: nothing in it is run, and its keys and
shapes must be exactly the release's. A file of that form whose hash is not the release's (your own
fine-tune) is imported with a warning naming both hashes; without ``--out`` (into the cache, where
``--checkpoint NAME`` finds it) only the release itself is. Then ``deepfake test --checkpoint RUN``,
``predict``, ``serve`` and ``push`` use it as any run. The whole released networks
(``tiny-ladeda-wildrf``, ``tiny-ladeda-forensynth``, ``npr``) become a run whose tower loads from
FILE where it is (``--preprocess`` picks native size or the paper's resize). Exit status: 0 on
success, 2 when the file or the options are refused. See docs/detectors.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from deepfake.cli.args import CliParser, run_job, setup_logging
from deepfake.model.detectors import import_detector
from deepfake.model.published import PUBLISHED_TOWER, RELEASES, ReleaseRefused, TargetTower, release_variant
from deepfake.model.releases import detectors
from deepfake.towers.loading import load_tower
from deepfake.towers.released import DEFAULT_MODE, NETWORK_MODES
from deepfake.towers.weights import WeightsError, unavailable_reason

log = logging.getLogger(__name__)
VARIANTS = sorted({v for r in RELEASES.values() for v in r.variants if v})


def build_parser(prog: str = "deepfake import") -> argparse.ArgumentParser:
    p = CliParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("release", choices=sorted({*RELEASES, *detectors()}), metavar="NAME",
                   help="the released detector (`deepfake detectors`), or rine (variant from the file name)")
    p.add_argument("file", help="the released .pth file, as downloaded")
    p.add_argument("--out", default=None,
                   help="run folder to write (best.safetensors + best.json); default: the cache, where "
                        "--checkpoint NAME finds it (the release's own file only)")
    p.add_argument("--variant", default=None, choices=VARIANTS,
                   help="rine: which checkpoint (default: read from the file name model_<variant>_trainable.pth)")
    p.add_argument("--tower", default=None, metavar="DIR",
                   help="run the head on this CLIP tower instead of openai/clip-vit-large-patch14 (a local copy "
                        "of it, or any CLIP or LanguageBind tower whose sizes fit the file); needs --out")
    p.add_argument("--preprocess", default=None, choices=NETWORK_MODES,
                   help="a whole network: native (the whole unresized image) or resize (its paper's 256 x 256 "
                        f"transform) (default: {DEFAULT_MODE}, measured in docs/published-detectors.md)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in a non-empty --out folder (its checkpoints, run.json and LICENSE go)")
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


def _warn_if_tower_unavailable() -> None:
    """Say at once when the published tower the head will run on cannot be had on this machine now (the import goes on)."""
    reason = unavailable_reason(PUBLISHED_TOWER)
    if reason:
        log.warning("the head will run on %s: %s; test, predict and serve need that tower: import the head onto a "
                    "local copy of it with --tower DIR, or use the run where the hub can be reached",
                    PUBLISHED_TOWER, reason)


def detector_name(release: str, variant: str | None, file: str) -> str:
    """The released detector a command line names: ``rine`` + its variant -> ``rine-4class``; ``ufd`` as it is."""
    if release in RELEASES and (release not in detectors() or variant):
        chosen = release_variant(RELEASES[release], variant, Path(file))
        return f"{release}-{chosen}" if chosen else release
    if variant:
        raise ReleaseRefused(f"{release} is one release file; --variant applies to `deepfake import rine` only")
    return release


def _import(args: argparse.Namespace) -> Path:
    name = detector_name(args.release, args.variant, args.file)
    if args.tower and args.out is None:
        raise ReleaseRefused("--tower makes a head for another tower: give it a run folder with --out")
    network = name in detectors() and detectors()[name].kind == "network"
    if args.preprocess and not network:
        raise ReleaseRefused(f"--preprocess is for the whole released networks, not {name}")
    if args.tower is None and not network:
        _warn_if_tower_unavailable()
    return import_detector(name, args.file, args.out, args.overwrite, _target(args.tower), mode=args.preprocess)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    code, weights = run_job("import", lambda: _import(args), "run the same command again")
    if weights is not None:
        use = weights.parent if args.out else detector_name(args.release, args.variant, args.file)
        print(f"imported {args.file} into {weights.parent}; use it with --checkpoint {use}")
    return code


if __name__ == "__main__":
    sys.exit(main())
