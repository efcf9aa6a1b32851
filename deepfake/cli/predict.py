"""Score your own images: ``deepfake predict PATH... --checkpoint RUN``.

Files, folders (recursive) and glob patterns. Every readable image gets P(fake) and a
label at the decision threshold (default: the checkpoint's validation threshold); every
other file is listed with the reason it was skipped. ``--checkpoint`` takes a run
directory, a checkpoint file, a saved head folder, a hub repo id or a released detector's name
(``ufd``, ``rine-4class``, ...: ``deepfake detectors``). Exit status: 0 when
something was scored, 1 when nothing was (or, with ``--strict``, when anything was
skipped), 2 on a usage or checkpoint error. ``--heatmap DIR`` writes one PNG per image with the
patch scores over it, for detectors that score patches (Tiny-LaDeDa); any other exits 2.

The scores come from the same code path as ``test_ClassifierHead.py`` (deepfake.model.scoring):
the shared loader, the tower's batched feature pass, the head.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from deepfake.cli.args import CliParser, add_runtime_args, parse_threshold, setup_logging
from deepfake.config import RuntimeConfig, check_tiles, from_flags
from deepfake.data.image_io import expand_inputs
from deepfake.data.provenance import flat_record
from deepfake.deepfake_classifier import DeepfakeClassifier
from deepfake.evaluation.heatmaps import has_patch_scores, write_heatmaps
from deepfake.model.checkpoint import CheckpointRefused
from deepfake.model.ood import ood_config, ood_note
from deepfake.model.scoring import DEFAULT_MAX_TILES, FLAT_FIELDS, Prediction, refuse_fused_tiles, score
from deepfake.towers.weights import WeightsError
from deepfake.utils.fileio import atomic_write_text, display_path
from deepfake.utils.runtime import init_distributed
from deepfake.utils.threads import budget_threads

log = logging.getLogger(__name__)

OUTPUT_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl"}


def output_format(path: str | Path) -> str:
    """``csv``, ``json`` or ``jsonl`` from the file's extension; anything else is refused."""
    fmt = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown output format {Path(path).suffix or '(no extension)'!r}; "
                         f"use {', '.join(OUTPUT_FORMATS)}")
    return fmt


def prediction_record(p: Prediction) -> dict:
    """The JSON form of one prediction (``tiles`` only when tiles were scored, ``provenance`` when read)."""
    record = asdict(p)
    for optional in ("tiles", "provenance"):
        if record[optional] is None:
            record.pop(optional)
    return record


def write_predictions(path: Path, predictions: list[Prediction], threshold: float, checkpoint: str,
                      ood: dict | None = None) -> None:
    """Write ``.csv`` (flat columns), ``.json`` (one document) or ``.jsonl`` (a line each), atomically."""
    fmt = output_format(path)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(FLAT_FIELDS), lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for p in predictions:
            writer.writerow({**{k: ("" if v is None else v) for k, v in asdict(p).items()}, **flat_record(p.provenance)})
        atomic_write_text(path, buffer.getvalue())
    elif fmt == "json":
        doc = {"checkpoint": checkpoint, "threshold": threshold, "ood": ood,
               "predictions": [prediction_record(p) for p in predictions]}
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    else:
        atomic_write_text(path, "".join(json.dumps(prediction_record(p)) + "\n" for p in predictions))


def format_predictions(predictions: list[Prediction], threshold: float, ood: dict | None = None) -> str:
    """The printed table (P(fake), label, OOD flag per file) and the lines saying what the label and flag mean."""
    width = min(80, max([len(display_path(p.path)) for p in predictions] + [4]))
    tiles = any(p.tile_probability is not None for p in predictions)
    provenance = any(p.provenance is not None for p in predictions)
    head = (f"{'path'.ljust(width)}  P(fake)  label  OOD    " + ("  P(fake) tiles" if tiles else "")
            + ("  provenance" if provenance else ""))
    lines = [head, "-" * len(head)]
    for p in predictions:
        name = display_path(p.path)
        name = name if len(name) <= width else "..." + name[-(width - 3):]
        if p.probability is None:
            lines.append(f"{name.ljust(width)}  skipped: {p.skipped}")
        else:
            row = f"{name.ljust(width)}  {p.probability:7.4f}  {p.label:5s}  {p.ood or 'unknown':7s}"
            if tiles:
                row += f"  {p.tile_probability:14.4f}" if p.tile_probability is not None else " " * 16
            if p.provenance is not None:
                row += f"  {p.provenance.describe()}"
            lines.append(row.rstrip())
    lines.append(f"threshold {threshold:g}: labelled fake when P(fake) is above it")
    note = ood_note(ood)
    lines.append(f"OOD out: {note}" if note else
                 "OOD unknown: this head stores no statistics of its training features to tell")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="deepfake predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", required=True,
                   help="run directory (uses best), checkpoint file, saved head folder, hub repo id or a released "
                        "detector's name (`deepfake detectors` lists them; fetched into the cache on first use)")
    p.add_argument("--output", default=None, help="also write the results: .csv, .json or .jsonl (by extension)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--threshold", type=parse_threshold, default=None,
                   help="decision threshold: val (the checkpoint's validation threshold, the default), "
                        "calibrated (when the checkpoint has one) or a number in [0, 1]")
    p.add_argument("--tiles", type=int, nargs="?", const=DEFAULT_MAX_TILES, default=0,
                   help=f"also score the mean of up to N 224px crops (default N={DEFAULT_MAX_TILES})")
    p.add_argument("--strict", action="store_true", help="exit 1 if any file was skipped")
    p.add_argument("--no_provenance", dest="provenance", action="store_false",
                   help="skip reading what each file declares about its origin (C2PA manifest, IPTC XMP)")
    p.add_argument("--heatmap", default=None, metavar="DIR",
                   help="write one PNG per image into DIR: the image with its patch scores over it, a colour bar "
                        "and its score (detectors whose tower scores patches: Tiny-LaDeDa)")
    add_runtime_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:  # the checks serve's flags get (deepfake.config), before the model loads
        from_flags(RuntimeConfig, vars(args))
        check_tiles(args.tiles)
        if args.output:
            output_format(args.output)
    except ValueError as exc:
        log.error("deepfake predict: %s", exc)
        return 2
    if args.output:
        if Path(args.output).exists() and not args.overwrite:
            log.error("%s: exists; pass --overwrite to replace it", args.output)
            return 2
    try:
        classifier = DeepfakeClassifier.from_pretrained(args.checkpoint, device=args.device, precision=args.precision)
        threshold = classifier.decision_threshold(args.threshold)
        refuse_fused_tiles(classifier, args.tiles)
    except (CheckpointRefused, WeightsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    if args.heatmap and not has_patch_scores(classifier):
        log.error("--heatmap: %s has no patch scores (its tower is %s); detectors with patch scores: Tiny-LaDeDa "
                  "(tiny-ladeda-wildrf, tiny-ladeda-forensynth), whose head scores every position",
                  args.checkpoint, classifier.tower.identity.get("family"))
        return 2
    budget_threads(args.threads, args.num_workers)
    # Under torchrun every rank scores a share of the files; rank 0 prints and writes.
    init_distributed(classifier.tower.device)
    files, missing = expand_inputs(args.paths)
    predictions = score(classifier, files, batch_size=args.batch_size, num_workers=args.num_workers,
                        tiles=args.tiles, threshold=threshold, max_pixels=args.max_pixels,
                        progress=not args.quiet, collective=True, decode=args.decode,
                        provenance=args.provenance) if files else []
    if predictions is None:
        return 0
    predictions += [Prediction(path, None, None, None, reason) for path, reason in missing]
    print(format_predictions(predictions, threshold, ood_config(classifier.head)))
    scored = sum(p.probability is not None for p in predictions)
    skipped = len(predictions) - scored
    print(f"scored {scored}, skipped {skipped}")
    if args.output:
        write_predictions(Path(args.output), predictions, threshold, classifier.config.get("checkpoint", ""),
                          ood_config(classifier.head))
    if args.heatmap:
        print(f"heatmaps: {len(write_heatmaps(classifier, predictions, args.heatmap, args.max_pixels))} PNG in {args.heatmap}")
    if scored == 0 or (args.strict and skipped):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
