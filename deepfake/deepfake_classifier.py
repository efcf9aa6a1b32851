"""DeepfakeClassifier: a frozen image tower plus a small trainable head.

    head = Linear(D, 256) -> ReLU -> Dropout(0.1) -> Linear(256, 2)

with ``D`` read from the tower's config (768 for LanguageBind_Image): the default ``mlp``
head. Other kinds (``layers``: per-block CLS tokens with learned block importance,
``linear``: a linear probe, ``rine``: RINE's head) live in :mod:`deepfake.model.heads`. Class 1
is "fake".

    >>> from deepfake import DeepfakeClassifier
    >>> clf = DeepfakeClassifier.from_pretrained("runs/progan")
    >>> clf.predict("photo.jpg").probability
    >>> clf.save_pretrained("my-head")          # model.safetensors + config.json + README.md
    >>> clf = DeepfakeClassifier.from_pretrained("org/deepfake-head")   # a hub repo
    >>> head = DeepfakeClassifier.from_pretrained("runs/ufd", tower=False)   # the head alone
    >>> head.probability_from_features(features)   # P(fake) of cached or external tower features
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from deepfake.config import HEAD_DROPOUT, HEAD_HIDDEN
from deepfake.data.preprocess import Preprocess
from deepfake.features.batch import FeatureBatch, tower_batch
from deepfake.features.extraction import prepare_tower
from deepfake.model.calibration import calibration_mismatch, read_calibration
from deepfake.model.checkpoint import CheckpointRefused, load_checkpoint
from deepfake.model.detectors import checkpoint_source
from deepfake.model.heads import head_from_config, head_tap
from deepfake.model.hub import fetch_head, is_repo_id, push_head, save_head_folder
from deepfake.model.scoring import Prediction, batch_probabilities, fake_probabilities, score
from deepfake.towers.base import ImageTower, layers_request
from deepfake.towers.fused import FAMILY as FUSED_FAMILY
from deepfake.towers.fused import fused_parts
from deepfake.towers.loading import check_model, load_fused, load_tower
from deepfake.towers.weights import TowerOffline, WeightsError
from deepfake.utils.runtime import choose_device, resolve_precision

log = logging.getLogger(__name__)

__all__ = ["DeepfakeClassifier", "batch_probabilities", "build_head", "fake_probabilities", "head_config",
           "resolve_threshold"]
THRESHOLD_NAMES = ("val", "calibrated")

def build_head(in_dim: int, hidden: int = HEAD_HIDDEN, dropout: float = HEAD_DROPOUT, num_classes: int = 2) -> nn.Module:
    """The classifier head: Linear(in_dim, hidden) -> ReLU -> Dropout -> Linear(hidden, num_classes)."""
    return head_from_config({"kind": "mlp", "in_dim": in_dim, "hidden": hidden, "dropout": dropout,
                             "num_classes": num_classes})


def head_config(head: nn.Module) -> dict:
    """The head's kind and sizes, as a checkpoint records them."""
    return head.config()


CALIBRATE_HINT = ("fit one on known-real images of your domain with `deepfake test --checkpoint RUN --dataset_dir TEST "
                  "--calibrate_real REAL_DIR --target_fpr 0.05`")


def resolve_threshold(spec: str | float | None, config: dict, fallback: bool = False,
                      preprocess: Preprocess | None = None, align: dict | None = None) -> float:
    """A threshold spec against a checkpoint config: ``val``, ``calibrated``, a number in [0, 1], or ``None``.

    ``calibrated`` on a checkpoint with no calibrated operating point raises, saying how to fit one;
    with ``fallback`` it gives the default threshold instead (the validation one), with a warning naming it.
    Given the ``preprocess`` and ``align`` of the images it will label, a calibration fitted on images
    prepared otherwise is refused (``ValueError`` naming both), fallback or not.
    """
    if spec is None:
        spec = "val" if config.get("val_threshold") is not None else float(config.get("threshold", 0.5))
    if isinstance(spec, str) and spec.strip().lower() in THRESHOLD_NAMES:
        name = spec.strip().lower()
        value = config.get("val_threshold") if name == "val" else (config.get("calibration") or {}).get("threshold")
        if value is not None and name == "calibrated" and preprocess is not None:
            problem = calibration_mismatch(config["calibration"], preprocess, align)
            if problem:
                raise ValueError(f"{config.get('checkpoint', 'this head')}: {problem}")
        if value is None and name == "calibrated" and fallback:
            value = resolve_threshold(None, config)
            log.warning("%s: no calibrated threshold (%s); labels use the %s threshold, %.4g",
                        config.get("checkpoint", "this head"), CALIBRATE_HINT,
                        "validation" if config.get("val_threshold") is not None else "reporting", value)
        if value is None:
            have = [n for n in THRESHOLD_NAMES if n == "val" and config.get("val_threshold") is not None
                    or n == "calibrated" and (config.get("calibration") or {}).get("threshold") is not None]
            hint = f"; {CALIBRATE_HINT}" if name == "calibrated" else ""
            raise ValueError(f"the checkpoint has no {name} threshold{hint}; or use a number"
                             + (f" or {' / '.join(have)}" if have else ""))
        return float(value)
    try:
        value = float(spec)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be 'val', 'calibrated' or a number in [0, 1], got {spec!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {value}")
    return value


def _loadable(model: str) -> bool:
    try:
        check_model(model)
    except WeightsError:
        return False
    return True


def _head_of(config: dict, path: Path) -> nn.Module:
    """The head a checkpoint config describes (weights not loaded yet)."""
    try:
        return head_from_config(config["head"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointRefused(f"{path}: head config {config['head']!r} cannot be built: {exc}") from exc


def _load_weights(head: nn.Module, state: dict, path: Path) -> nn.Module:
    """``head`` with the checkpoint's weights loaded strictly."""
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointRefused(f"{path}: head weights do not fit the head in its config: {exc}") from exc
    return head


def _offline_advice(config: dict, path: Path) -> str:
    """What works offline for a head whose tower cannot be had: a local copy of that tower, named how this head allows."""
    published = (config.get("published") or {}).get("release")
    if published:
        return (f"what works offline for {path}: a local copy of that tower (a folder with its config.json and "
                f"weights), with the head imported onto it: `deepfake import {published} FILE --tower DIR --out RUN`, "
                f"then --checkpoint RUN")
    return (f"what works offline for {path}: that tower in this machine's hub cache (copied from a machine that has "
            f"it), or its local folder: DeepfakeClassifier.from_pretrained(..., model=DIR)")


def _matching_tower(config: dict, path: Path, model: str | None) -> ImageTower:
    """The tower a checkpoint names (or ``model``, refused unless it is the same), preparing images as it says."""
    saved_tower = config["tower"]
    if saved_tower.get("family") == FUSED_FAMILY:
        return _matching_fused(config, path, model)
    if model is None and saved_tower.get("weights_sha256") and not _loadable(str(saved_tower.get("model"))):
        # A shared head names a local tower by its folder's name only (no machine's paths leave it),
        # and a run's tower folder may have moved: the user says where it is, its hash decides.
        raise CheckpointRefused(
            f"{path}: the head was trained on a local tower, {saved_tower.get('model')!r} (weights sha256 "
            f"{str(saved_tower['weights_sha256'])[:12]}...), which is not found here; pass that tower's "
            "directory: DeepfakeClassifier.from_pretrained(..., model=DIR)")
    preprocess = Preprocess.from_dict(config["preprocess"])
    try:
        tower = load_tower(model or saved_tower["model"], saved_tower.get("revision") if model is None else None,
                           preprocess.mode)
    except TowerOffline as exc:
        raise TowerOffline(exc.source, exc.reason, _offline_advice(config, path)) from None
    # The checkpoint says how its training images were prepared: use exactly that. First: a spectral tower's
    # features (gray or colour) follow its preprocessing, and the check compares them.
    tower.backbone = replace(tower.backbone, preprocess=preprocess)
    problem = tower.recorded_problem(saved_tower)
    if problem:
        raise CheckpointRefused(f"{path}: {problem}")
    return tower


def _matching_fused(config: dict, path: Path, model: str | None) -> ImageTower:
    """The parts a fused head names, each loaded as one tower is (and checked to be the one it was trained on).

    ``model``: the parts' towers joined by ``+`` (local directories where the head names local towers).
    """
    saved = config["tower"]["parts"]
    given = fused_parts(model) if model else None
    if model and (given is None or len(given) != len(saved)):
        raise CheckpointRefused(f"{path}: the head was trained on a fused tower of {len(saved)} parts "
                                f"({config['tower'].get('model')}); --model {model} names another number of towers")
    parts = [(given[j], None) if given else (str(part.get("model")), part.get("revision")) for j, part in enumerate(saved)]
    preprocess = Preprocess.from_dict(config["preprocess"])
    try:
        tower = load_fused(parts, name=config["tower"].get("model"))
    except WeightsError as exc:
        raise CheckpointRefused(f"{path}: {exc}") from exc
    tower.set_preprocess(preprocess)
    for number, (part, loaded) in enumerate(zip(saved, tower.parts), 1):
        problem = loaded.recorded_problem(part)
        if problem:
            raise CheckpointRefused(f"{path}: part {number} of the head's tower: {problem}")
    return tower


def checkpoint_precision(config: dict, device: torch.device, precision: str | None = None) -> str:
    """The precision a head's tower runs in: ``precision``, else the one its features were made in (fp16: auto on a CPU)."""
    if precision is None:
        precision = config.get("features", {}).get("precision", "auto")
        if precision == "fp16" and device.type == "cpu":
            precision = "auto"
    return resolve_precision(precision, device)


class DeepfakeClassifier(nn.Module):
    """Frozen tower + trainable head; ``forward`` maps pixel tensors to the head's logits (two, or one).

    ``tower`` is ``None`` for a head loaded alone (``from_pretrained(..., tower=False)``): it scores
    tower features (:meth:`probability_from_features`), not images.
    """

    def __init__(self, tower: ImageTower | None, head: nn.Module | None = None, config: dict | None = None):
        super().__init__()
        if tower is None and head is None:
            raise ValueError("a classifier without a tower needs its head")
        self.tower = tower
        self.head = head if head is not None else build_head(tower.feature_dim)
        self.config = config or {}

    @property
    def threshold(self) -> float:
        """The checkpoint's reporting threshold (0.5, the field's convention for accuracy)."""
        return float(self.config.get("threshold", 0.5))

    def decision_threshold(self, spec: str | float | None = None, fallback: bool = False,
                           preprocess: Preprocess | None = None, align: dict | None = None) -> float:
        """The threshold for labels: ``val``, ``calibrated``, a number, or (``None``) the default.

        The default is the validation threshold the checkpoint stores (the one that maximised
        validation accuracy), and the reporting threshold for a checkpoint without one.
        ``calibrated`` without a calibrated operating point raises (saying how to fit one), or
        with ``fallback`` gives the default with a warning naming it; one fitted on images prepared
        otherwise than ``preprocess`` and ``align`` (default: :meth:`predict`'s, the tower's
        transform without alignment) raises naming both.
        """
        return resolve_threshold(spec, self.config, fallback, preprocess or self.preprocess, align)

    @property
    def preprocess(self) -> Preprocess:
        if self.tower is None:
            return Preprocess.from_dict(self.config["preprocess"])
        return self.tower.preprocess

    @property
    def blocks(self) -> tuple[int, ...]:
        """The blocks whose CLS tokens the head reads (empty: the final embedding only)."""
        return tuple(getattr(self.head, "blocks", ()))

    @property
    def tap(self) -> str:
        """Which per-block tokens the head reads: ``block`` (outputs) or ``ln2`` (ln_2 outputs, the rine head)."""
        return head_tap(self.head)

    def _tower(self) -> ImageTower:
        if self.tower is None:
            raise ValueError("this classifier was loaded without its tower (tower=False): score tower features "
                             "with probability_from_features, or load it with its tower to score images")
        return self.tower

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # One tower pass, with the per-block tokens only when the head reads them.
        with torch.no_grad():
            out = self._tower()(pixel_values, layers=layers_request(self.tap, self.blocks))
            batch = tower_batch(out, self.blocks, self.tap).to(next(self.head.parameters()).device)
        return self.head(batch)

    def probability_from_features(self, features: torch.Tensor | np.ndarray | FeatureBatch) -> np.ndarray:
        """P(fake) per row of tower features, as the head scores them (eval mode, float32).

        ``features``: [N, D] final embeddings for a head on the embedding (mlp, linear), or
        [N, blocks, hidden] per-block tokens, in the head's block order and tap, for a head that
        reads blocks (layers: block outputs; rine: ln_2 outputs); or a ``FeatureBatch``.
        """
        batch = features if isinstance(features, FeatureBatch) else FeatureBatch(*self._feature_rows(features))
        return batch_probabilities(self.head, batch)

    def _feature_rows(self, features) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embeds, layers) of a plain feature array, checked against what the head reads."""
        x = torch.as_tensor(features).float()
        if not self.blocks:
            width = self.config.get("head", {}).get("in_dim")
            if x.dim() != 2 or (width is not None and x.shape[1] != int(width)):
                raise ValueError(f"the {self.head.kind} head reads [N, {width or 'D'}] final embeddings, "
                                 f"got {list(x.shape)}")
            return x, None
        shape = (len(self.blocks), int(getattr(self.head, "hidden_size", x.shape[-1])))
        if x.dim() != 3 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"the {self.head.kind} head reads [N, {shape[0]}, {shape[1]}] per-block tokens "
                             f"({self.tap} tap of blocks {list(self.blocks)}), got {list(x.shape)}")
        return x.new_zeros(len(x), 0), x

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | os.PathLike,
        model: str | None = None,
        device: str | torch.device | None = None,
        precision: str | None = None,
        revision: str | None = None,
        tower: bool = True,
    ) -> DeepfakeClassifier:
        """Load a head and the tower it names (or ``model``, if it is the same tower).

        ``checkpoint``: a run directory (its ``best``), a checkpoint file, a folder written by
        :meth:`save_pretrained`, a released detector's name (``ufd``, ``rine-4class``, ...: downloaded,
        checked and imported into the cache on first use, :mod:`deepfake.model.detectors`), or a hub
        repo id (``org/name``, ``@revision`` optional) fetched
        with ``huggingface_hub`` into its cache (``HF_HUB_OFFLINE=1`` honoured). Nothing is
        unpickled, and a head trained on another tower is refused. ``precision`` defaults to
        the one the head's training features were computed in, so scores match the
        validation numbers; ``auto`` picks the device's fastest. ``tower=False`` loads the head
        alone (no tower weights are read): it scores features with :meth:`probability_from_features`.
        """
        source = checkpoint_source(checkpoint)  # a released detector's name: its cached run, fetched on first use
        if isinstance(checkpoint, str) and is_repo_id(checkpoint):
            source = fetch_head(checkpoint, revision)
        state, config, path = load_checkpoint(source)
        calibration = read_calibration(path)  # an operating point fitted later (--calibrate_real), if any
        if calibration is not None:
            config = {**config, "calibration": calibration}
        if "tower" not in config or "preprocess" not in config:
            raise CheckpointRefused(f"{path}: config names no tower or preprocessing")
        device = choose_device(str(device) if device else None)
        head = _head_of(config, path)
        if not tower:
            head = _load_weights(head, state, path)
            clf = cls(None, head.to(device), {**config, "checkpoint": str(path), "precision": "fp32"})
            return clf.eval()
        loaded = _matching_tower(config, path, model)
        # The tower first: a head made for another tower is refused naming the tower, not a weight shape.
        problem = head.check_tower(loaded)
        if problem:
            raise CheckpointRefused(f"{path}: {problem}")
        head = _load_weights(head, state, path)
        precision = checkpoint_precision(config, device, precision)
        loaded = prepare_tower(loaded, precision, device)
        clf = cls(loaded, head.to(device), {**config, "checkpoint": str(path), "precision": precision})
        clf.eval()
        return clf

    def _run_summary(self) -> dict | None:
        """The run's ``run.json`` (image counts) when the head was loaded from a run directory."""
        checkpoint = self.config.get("checkpoint")
        summary = Path(checkpoint).parent / "run.json" if checkpoint else None
        if summary is None or not summary.is_file():
            return None
        try:
            return json.loads(summary.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the head as a shareable folder: ``model.safetensors``, ``config.json``, ``README.md`` (model card)."""
        return save_head_folder(directory, self.head.state_dict(), self.config, self._run_summary())

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload deepfake detector head") -> str:
        """Upload the head folder to the hub repo ``repo_id`` (created when needed); returns the commit URL."""
        return push_head(self.head.state_dict(), self.config, repo_id, self._run_summary(), private=private,
                         token=token, commit_message=commit_message)

    def predict(
        self,
        inputs: str | os.PathLike | Image.Image | list[str | os.PathLike | Image.Image],
        batch_size: int = 32,
        num_workers: int = 0,
        tiles: int = 0,
        threshold: str | float | None = None,
        max_pixels: int | None = None,
        provenance: bool = True,
    ) -> Prediction | list[Prediction]:
        """Score one path or PIL image (one :class:`~deepfake.model.scoring.Prediction`) or a list (a list, skips included).

        ``threshold``: ``val``, ``calibrated``, a number, or ``None`` for :meth:`decision_threshold`'s default.
        ``calibrated`` on a head with no calibrated operating point uses that default, with a
        warning naming it and how to calibrate. ``provenance``: also read what each file declares
        about its origin (``Prediction.provenance``; ``None`` for a PIL image, which has no file).
        An input that cannot be scored (missing, unreadable, too large) comes back with
        ``probability=None`` and its reason in ``skipped``, and a warning naming it is logged.
        """
        self._tower()  # a head loaded without its tower scores features, not images
        single = isinstance(inputs, (str, os.PathLike, Image.Image))
        results = score(self, [inputs] if single else list(inputs), batch_size=batch_size, num_workers=num_workers,
                        tiles=tiles, threshold=self.decision_threshold(threshold, fallback=True),
                        max_pixels=max_pixels, provenance=provenance)
        for result in results:
            if result.probability is None:  # the list keeps it, so a caller that reads only probabilities is told
                log.warning("%s: not scored: %s", result.path, result.skipped)
        return results[0] if single else results

    def predict_proba(
        self, inputs: str | os.PathLike | Image.Image | list[str | os.PathLike | Image.Image], **kwargs
    ) -> float | np.ndarray:
        """P(fake) per input (NaN for inputs that could not be read); a float for a single input."""
        single = isinstance(inputs, (str, os.PathLike, Image.Image))
        results = self.predict([inputs] if single else inputs, **kwargs)
        probs = np.array([p.probability if p.probability is not None else np.nan for p in results])
        return float(probs[0]) if single else probs
