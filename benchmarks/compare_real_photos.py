"""Tiny-LaDeDa's two releases beside a spectral head trained on another set, on public real photographs.

    python benchmarks/compare_real_photos.py --wildrf WildRF_Tiny_LaDeDa.pth \
        --forensynth ForenSynth_Tiny_LaDeDa.pth --train /data/realphotos/realorai \
        --data /data/realphotos/aidi --data /data/realphotos/aiornot --data /data/realphotos/maskin \
        --output_dir results/released-real-photos

Each set is one ``benchmarks/prepare_real_photos.py`` writes (``split/`` and ``test.csv``, its
held-out split), named by its folder (``NAME=PATH`` names it otherwise). The script imports both
releases into run folders under ``--output_dir`` (the weights stay where they are), trains a
``--model spectrum`` head on ``--train``'s train split with the default recipe (``--num_epochs``
50, as ``benchmarks/spectral_real_photos.py``), writes ``test.csv``: the held-out split of every
``--data`` set and of the training set, each set one domain, and runs ``deepfake compare`` of the
three on it, which prints the table (one row per set) and writes its results under
``OUTPUT_DIR/compare``. Every step is a ``deepfake`` command, printed before it runs.
"""

from __future__ import annotations

import argparse
import csv
import io
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spectral_real_photos import DEFAULT_EPOCHS, parse_set  # noqa: E402

from deepfake.utils.fileio import atomic_write_text  # noqa: E402


def held_out_manifest(sets: dict[str, Path]) -> str:
    """One CSV of every set's held-out split (``test.csv``), absolute paths, each set a domain."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label", "domain"])
    for name, root in sets.items():
        listing = root / "test.csv"
        if not listing.is_file():
            raise SystemExit(f"{root}: no test.csv (make the set with benchmarks/prepare_real_photos.py)")
        with open(listing, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                writer.writerow([str((root / row["path"]).resolve()), row["label"], name])
    return out.getvalue()


def deepfake(*args: str) -> None:
    """Run one ``deepfake`` command (printed first); stop on its failure."""
    print("$ deepfake " + shlex.join(args), flush=True)
    code = subprocess.call([sys.executable, "-m", "deepfake", *args])
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wildrf", required=True, help="WildRF_Tiny_LaDeDa.pth")
    p.add_argument("--forensynth", required=True, help="ForenSynth_Tiny_LaDeDa.pth")
    p.add_argument("--train", required=True, metavar="[NAME=]PATH", help="the set the spectral head is trained on")
    p.add_argument("--data", action="append", required=True, metavar="[NAME=]PATH", help="a test set (repeat)")
    p.add_argument("--output_dir", required=True, help="runs, test.csv and compare/")
    p.add_argument("--cache_dir", default=None, help="feature cache (default: OUTPUT_DIR/cache)")
    p.add_argument("--num_epochs", type=int, default=DEFAULT_EPOCHS)
    args = p.parse_args(argv)
    out = Path(args.output_dir)
    cache = args.cache_dir or str(out / "cache")
    train_name, train_root = parse_set(args.train)
    sets = dict(parse_set(text) for text in args.data) | {train_name: train_root}
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "test.csv"
    atomic_write_text(manifest, held_out_manifest(sets))
    runs = {"tiny-ladeda-wildrf": args.wildrf, "tiny-ladeda-forensynth": args.forensynth}
    for name, weights in runs.items():
        deepfake("import", name, weights, "--out", str(out / "runs" / name), "--overwrite")
    spectral = out / "runs" / f"spectrum-{train_name}"
    deepfake("train", "--model", "spectrum", "--dataset_dir", str(train_root / "split"), "--output_dir", str(spectral),
             "--cache_dir", cache, "--num_epochs", str(args.num_epochs), "--overwrite", "--quiet")
    deepfake("compare", *(str(out / "runs" / name) for name in runs), str(spectral), "--dataset_dir", str(manifest),
             "--output_dir", str(out / "compare"), "--cache_dir", cache, "--overwrite", "--quiet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
