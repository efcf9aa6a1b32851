"""Operating points for deployment: a threshold calibrated on known-real images of the target domain.

``test_ClassifierHead.py --calibrate_real DIR --target_fpr 0.05`` scores the images in DIR and
sets the threshold that calls that share of them fake. It is written into the evaluation's
``results.json`` and ``calibration.json``, and beside the checkpoint as
``<checkpoint>.calibration.json``, where :func:`read_calibration` (and ``predict``) find it.
The record holds the sha256 of the weights it was fitted on: a head retrained into the same
run directory does not inherit the old head's operating point. It also holds the preprocessing and
alignment of the images it was fitted on (``--protocol ufd`` crops, the tower's transform resizes):
:func:`calibration_mismatch` names the difference when the threshold is used on images prepared
otherwise, where it would not give its false-positive rate.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from deepfake.data.preprocess import Preprocess
from deepfake.model.checkpoint import CheckpointRefused, read_json_object, resolve_checkpoint_path, threshold_check
from deepfake.utils.fields import FieldRule, check_fields, integer, mapping, nullable, number, sha256_hex, text
from deepfake.utils.fileio import atomic_write_json
from deepfake.utils.hashing import file_sha256

log = logging.getLogger(__name__)

FORMAT = "deepfake-calibration/1"

_COUNT = integer(0, 1 << 40)
# Every field a calibration record is read for, as deepfake.model.checkpoint checks a checkpoint's.
CALIBRATION_FIELDS: tuple[FieldRule, ...] = (
    FieldRule("threshold", threshold_check, required=True),
    FieldRule("format", text(FORMAT)),
    FieldRule("checkpoint", nullable(text())),
    FieldRule("weights_sha256", nullable(sha256_hex())),
    FieldRule("real_dir", nullable(text())),
    FieldRule("target_fpr", number(0.0, 1.0)),
    FieldRule("achieved_fpr", number(0.0, 1.0)),
    FieldRule("n_false_positives", _COUNT),
    FieldRule("n_images", _COUNT),
    FieldRule("n_unreadable", _COUNT),
    *(FieldRule(name, nullable(mapping())) for name in ("tower", "preprocess", "align")),
)


def calibration_record(real_dir: str, threshold: float, target_fpr: float, scores: np.ndarray,
                       n_unreadable: int = 0) -> dict:
    """What a calibration found: the threshold and the FPR it gives on the calibration images."""
    scores = np.asarray(scores, dtype=np.float64)
    false_positives = int(np.sum(scores > threshold))
    return {"real_dir": str(real_dir), "threshold": float(threshold), "target_fpr": float(target_fpr),
            "achieved_fpr": false_positives / len(scores), "n_false_positives": false_positives,
            "n_images": int(len(scores)), "n_unreadable": int(n_unreadable)}


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """``runs/x/best.safetensors`` -> ``runs/x/best.calibration.json``."""
    path = Path(checkpoint)
    return path.with_name(path.stem + ".calibration.json")



def write_calibration(out_dir: Path, checkpoint: str | None, calibration: dict, results: dict,
                      overwrite: bool = False) -> list[Path]:
    """Write ``calibration.json`` into ``out_dir`` and beside the checkpoint (never over another one unasked)."""
    doc = {"format": FORMAT, "checkpoint": checkpoint,
           "weights_sha256": file_sha256(checkpoint) if checkpoint and Path(checkpoint).is_file() else None,
           **calibration, "tower": results.get("tower"), "preprocess": results.get("preprocess"),
           "align": results.get("align")}
    written = [atomic_write_json(Path(out_dir) / "calibration.json", doc)]
    if checkpoint:
        side = sidecar_path(checkpoint)
        if side.exists() and not overwrite:
            log.warning("%s: an earlier calibration is there and was kept; pass --overwrite to replace it "
                        "(this one is in %s)", side, written[0])
        else:
            written.append(atomic_write_json(side, doc))
    return written


def _read_json(path: Path) -> dict:
    """A calibration or results file as a JSON object; refused naming the file otherwise."""
    return read_json_object(path, "calibration file", "threshold, target_fpr, ...")


def read_calibration(path: str | os.PathLike) -> dict | None:
    """The calibration of a checkpoint (its file or run directory), or read from a calibration/results JSON.

    A checkpoint's sidecar counts only when it was fitted on these very weights (same sha256);
    one left from an earlier head in the same place is ignored with a warning.
    """
    path = Path(path)
    weights = None
    if path.is_dir():
        weights = resolve_checkpoint_path(path)
    elif path.suffix != ".json" or not path.name.endswith(("calibration.json", "results.json")):
        weights = path
    if weights is not None:
        path = sidecar_path(weights)
    if not path.is_file():
        return None
    doc = _read_json(path)
    if doc.get("format") != FORMAT:
        found = doc.get("calibration")  # a results.json
        if found is not None:
            check_fields(found, CALIBRATION_FIELDS, str(path), "calibration", CheckpointRefused)
        return found
    check_fields(doc, CALIBRATION_FIELDS, str(path), "calibration", CheckpointRefused)
    if weights is not None and Path(weights).is_file():
        fitted_on = doc.get("weights_sha256")
        if fitted_on != file_sha256(weights):
            why = (f"records no weights hash to tie it to {weights}" if fitted_on is None
                   else f"was fitted on other weights than {weights} (sha256 differs)")
            log.warning("%s: calibration ignored: it %s; run --calibrate_real again for this head", path, why)
            return None
    return doc


def _preparation(preprocess: Preprocess, align: dict | None) -> str:
    """One line naming how images were prepared: the preprocessing record and the --align steps."""
    fields = ", ".join(f"{k}={v}" for k, v in preprocess.to_dict().items() if k not in ("mode", "mean", "std"))
    aligned = [f"{k}:{align[k]}" for k in ("size", "jpeg_quality") if (align or {}).get(k) is not None]
    return f"{preprocess.mode} ({fields}), --align {','.join(aligned) or 'none'}"


def calibration_mismatch(calibration: dict, preprocess: Preprocess, align: dict | None = None) -> str | None:
    """Why a calibrated threshold does not hold for images prepared with ``preprocess`` and ``align``; None if it does.

    A threshold fitted on centre crops (``--protocol``) calls a different share of reals fake on images the tower
    resizes, and one fitted on aligned images on unaligned ones. A record without the preprocessing it was
    fitted under (written before it was recorded) is taken as the tower's own.
    """
    fitted = calibration.get("preprocess")
    fitted_pre = Preprocess.from_dict(fitted) if isinstance(fitted, dict) else preprocess
    fitted_align = calibration.get("align") or {}
    key = ("size", "jpeg_quality")
    if fitted_pre == preprocess and all(fitted_align.get(k) == (align or {}).get(k) for k in key):
        return None
    return (f"the calibrated threshold was fitted on images prepared as {_preparation(fitted_pre, fitted_align)}, "
            f"but these are prepared as {_preparation(preprocess, align)}: it would not give its "
            f"{100 * float(calibration.get('target_fpr', 0)):g}% false-positive rate here. Fit one for this "
            "preparation: `deepfake test --checkpoint RUN --dataset_dir TEST --calibrate_real REAL_DIR "
            "--target_fpr 0.05` with the same --protocol and --align as the images it will score (none for "
            "predict, serve and DeepfakeClassifier.predict)")
