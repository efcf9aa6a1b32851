"""Typed configs: what a training run, an evaluation or a head comparison is made of.

Every default lives here, once: the command-line parsers read theirs from these classes
(``deepfake/cli/args.py``), and a test checks that they agree. Library functions take these
frozen dataclasses or plain values, never the parsed command line, so a run is as easy to
start from Python as from the command line::

    from deepfake import TrainConfig, DataConfig, train
    train(TrainConfig(data=DataConfig(dataset_dir="data/progan", categories="car,cat"), output_dir="runs/x"))

A field is named after its command-line flag (``metadata["flag"]`` where the two differ), so
:func:`to_flags` gives back the flat ``{flag: value}`` record a checkpoint keeps as ``train_args``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepfake.utils.threads import default_workers

DEFAULT_MODEL = "LanguageBind/LanguageBind_Image"
# Pillow's own bomb limit (its default ``Image.MAX_IMAGE_PIXELS``, ~89.5 MP): above any
# camera or generator output the field uses (a 50 MP photo passes), and a decompression
# bomb is refused before it is decoded. Decoding that many pixels takes ~270 MB as uint8
# and ~1 GB as the float tensor the exact transform resizes.
DEFAULT_MAX_PIXELS = 89_478_485
# The most bytes the provenance reader (deepfake.data.provenance) reads of one file: above any
# photo or generator output (a 50 MP JPEG is ~25 MB, a 16-bit TIFF of it ~300 MB is refused), so a
# file padded with a giant manifest costs a bounded read and gets `unreadable` with the reason.
DEFAULT_PROVENANCE_MAX_BYTES = 256 << 20
# What one batch of preprocessed images may hold, in float32 values (planes x pixels): 64 MB.
# Batches of --batch_size images are made smaller where their tensors are larger (the spectral
# tower's tiles: 16 images of 4 x 4 tiles of 256 px), so a folder of photos never needs gigabytes.
DEFAULT_BATCH_PIXELS = 1 << 24
# The card's head: Linear(D, 256) -> ReLU -> Dropout(0.1) -> Linear(256, 2).
HEAD_HIDDEN = 256
HEAD_DROPOUT = 0.1
# RINE's head (--head rine): its projections' depth and every Dropout's p, as RINE trains it.
RINE_NPROJ = 4
RINE_DROPOUT = 0.5
DEFAULT_SEED = 512
LR_SCHEDULES = ("constant", "cosine", "step")
# --standardize: auto follows the tower's record (its features' offsets and spreads), on and off force it.
STANDARDIZE_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how fast the tower runs, and how much is said about it."""

    device: str | None = None  # None: cuda when available, else cpu
    precision: str | None = None  # None: auto for training, the checkpoint's for test and predict
    batch_size: int = 64
    num_workers: int = field(default_factory=default_workers)
    threads: int | None = None  # None: the CPUs this process may use, less workers and others' use (utils/threads.py)
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode: str | None = None  # None: exact for training, the checkpoint's for test and predict
    quiet: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        # Checked where every command's flags become a config: 0 is not "the default" here.
        _at_least("batch_size", self.batch_size, 1)
        _at_least("num_workers", self.num_workers, 0)
        _at_least("max_pixels", self.max_pixels, 1)


@dataclass(frozen=True)
class TowerConfig:
    """Which frozen tower, and how images are prepared for it (None: the tower's record)."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    preprocess: str | None = None


@dataclass(frozen=True)
class CacheConfig:
    """Where features are cached once, so later epochs and runs never run the tower again."""

    cache_dir: str | None = None  # None: $DEEPFAKE_CACHE or ~/.cache/deepfake/features
    no_cache: bool = False
    compile: bool = False

    def root(self) -> Path | None:
        """The cache root (``None`` with ``no_cache``)."""
        if self.no_cache:
            return None
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


def cache_home() -> Path:
    """``$DEEPFAKE_CACHE``, else ``$XDG_CACHE_HOME/deepfake`` (``~/.cache`` by default): every cache lies under it."""
    if os.environ.get("DEEPFAKE_CACHE"):
        return Path(os.environ["DEEPFAKE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepfake"


def default_cache_dir() -> Path:
    """The feature cache: ``$DEEPFAKE_CACHE`` itself (as it always was), else ``~/.cache/deepfake/features``."""
    return cache_home() if os.environ.get("DEEPFAKE_CACHE") else cache_home() / "features"


def detectors_cache_dir() -> Path:
    """Released detectors, downloaded and imported by name: ``<cache home>/detectors/NAME``.

    Feature cache keys are hex digests, so this folder never meets one under ``$DEEPFAKE_CACHE``."""
    return cache_home() / "detectors"


@dataclass(frozen=True)
class DataConfig:
    """Which labelled images, and how a real/fake bias is removed before the tower."""

    dataset_dir: str = ""
    categories: str | tuple[str, ...] | None = None  # "car,cat" or ("car", "cat"); None: all found
    label_dirs: tuple[str, ...] | None = None  # ("real=camera,photos", "fake=generated")
    align: tuple[str, ...] | None = None  # ("size:256", "jpeg:95")
    audit_max: int = 2000  # headers the bias audit reads per domain and class


@dataclass(frozen=True)
class HeadConfig:
    """The head trained on the tower's features."""

    kind: str = field(default="mlp", metadata={"flag": "head"})
    proj_dim: int = HEAD_HIDDEN  # layers and rine heads: projection width
    importance: str = "block"  # layers head: one weight per block, or per block and feature
    nproj: int = RINE_NPROJ  # rine head: [Linear, ReLU, Dropout] stages in each of its two projections
    # Per-dimension standardisation of what the head reads, from the training features (stored in the head).
    standardize: str = "auto"

    def __post_init__(self) -> None:
        if self.standardize not in STANDARDIZE_CHOICES:
            raise ValueError(f"standardize {self.standardize!r}: choose from {', '.join(STANDARDIZE_CHOICES)}")

    def options(self) -> dict:
        """Every size option; a head kind takes the ones it declares (``deepfake.model.heads.head_sizes``)."""
        return {"proj_dim": self.proj_dim, "importance": self.importance, "nproj": self.nproj}


@dataclass(frozen=True)
class ScheduleConfig:
    """How the head is optimised: epochs, rate and its schedule, early stopping, retention, loss."""

    num_epochs: int = 10
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    lr_milestones: tuple[int, ...] | None = None  # step: default half and three quarters of the run
    lr_gamma: float = 0.1
    patience: int = 0
    keep_last: int = 0
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.07

    def __post_init__(self) -> None:
        # Checked here, not after minutes of feature extraction.
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule {self.lr_schedule!r}: choose from {', '.join(LR_SCHEDULES)}")
        if isinstance(self.lr_milestones, str):
            try:
                object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones.split(",") if m.strip()))
            except ValueError:
                raise ValueError(f"lr_milestones {self.lr_milestones!r}: expected epochs like 3,6") from None
        elif self.lr_milestones is not None:
            object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))


@dataclass(frozen=True)
class AugmentConfig:
    """CNNDetection's blur + JPEG augmentation, cached as ``aug_views`` views per image."""

    blur_prob: float = 0.0
    blur_sigma: float = 3.0
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 100)
    aug_views: int = 4


@dataclass(frozen=True)
class TrainConfig:
    """One training run: ``train(TrainConfig(...))`` or ``train_ClassifierHead.py``."""

    data: DataConfig = field(default_factory=DataConfig)
    output_dir: str = ""
    seed: int = DEFAULT_SEED
    val_ratio: float = 0.1
    tower: TowerConfig = field(default_factory=TowerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    extract_batch_size: int | None = None  # None: runtime.batch_size
    feature_layers: str = "none"
    head: HeadConfig = field(default_factory=HeadConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    overwrite: bool = False
    resume: bool = False


@dataclass(frozen=True)
class PerturbConfig:
    """Test-time degradations (blur, JPEG, resize, in that order), one level or a sweep."""

    jpeg_quality: int | None = None
    gaussian_sigma: float | None = None
    resize_scale: float | None = None
    robustness: bool = False
    sweep_jpeg: tuple[int, ...] | None = None
    sweep_sigma: tuple[float, ...] | None = None
    sweep_resize: tuple[float, ...] | None = None


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation: ``evaluate(EvalConfig(...))`` or ``test_ClassifierHead.py``."""

    checkpoint: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    benchmark: str | None = None
    real_root: str | None = None
    allow_one_class: bool = False
    generators: str | tuple[str, ...] | None = None
    output: str | None = None
    output_dir: str | None = None  # None: CHECKPOINT_RUN/eval_DATASET
    overwrite: bool = False
    threshold: str | float | None = None  # "val", "calibrated" or a number; None: the checkpoint's
    # A published test protocol (ufd, cnndetection, aigcdetect: deepfake/data/protocols.py): its
    # preprocessing, sampling and blur; None: the tower's own preprocessing, every image.
    protocol: str | None = None
    max_sample: int | None = None  # None: every image (with --protocol ufd: UFD's 1000)
    seed: int = DEFAULT_SEED
    calibrate_real: str | None = None
    target_fpr: float = 0.05
    perturb: PerturbConfig = field(default_factory=PerturbConfig)
    feature_layers: str = "none"
    no_plots: bool = False
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)


@dataclass(frozen=True)
class DetectorsConfig:
    """Detectors side by side on one test set (``deepfake compare``): each a run folder or checkpoint file.

    ``evaluation`` holds the test set, protocol, perturbation, runtime and cache, as ``test`` takes them.
    """

    detectors: tuple[str, ...] = ()
    evaluation: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class CompareConfig:
    """Every head kind trained on one feature cache and compared per generator."""

    dataset_dir: str = ""
    test_dir: str | None = None  # None: DATASET/test
    output_dir: str = "runs/compare_heads"
    overwrite: bool = False
    heads: str | tuple[str, ...] | None = None  # None: every kind, mlp first
    feature_layers: str = "all"
    categories: str | tuple[str, ...] | None = None
    val_ratio: float = 0.1
    num_epochs: int = 20
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    patience: int = 0
    contrastive_weight: float = 0.0
    proj_dim: int = HEAD_HIDDEN
    importance: str = HeadConfig.importance  # layers head: one weight per block, or per block and feature
    seed: int = DEFAULT_SEED
    tower: TowerConfig = field(default_factory=TowerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)


def _at_least(name: str, value: Any, low: float, kind: type = int) -> None:
    """Refuse a limit below ``low`` (or not a number of ``kind``), naming its flag."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and value != float("inf")
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or value < low:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"--{name} must be {what} >= {low:g}, got {value!r}")


def check_tiles(tiles: Any) -> None:
    """``--tiles`` of predict and serve: a tile budget of 0 (no tiles) or more."""
    _at_least("tiles", tiles, 0)


@dataclass(frozen=True)
class ServeConfig:
    """What ``deepfake serve`` binds to, what one request may ask and how much it holds at once.

    Every limit is checked when the config is made, so a bad flag stops the server before
    the model loads (``deepfake serve --max_batch 0`` exits 2 naming the flag).
    """

    host: str = "127.0.0.1"  # this machine only: the server has no authentication
    port: int = 8000
    allow_host: tuple[str, ...] = ()  # further Host names answered (a reverse proxy's, a LAN name)
    allow_origin: tuple[str, ...] = ()  # further origins whose POSTs are accepted (a reverse proxy's public URL)
    # Peers (addresses or networks) whose X-Forwarded-Proto / X-Forwarded-Host are believed: reverse proxies.
    forwarded_allow_ips: tuple[str, ...] = ()
    tiles: int = 0
    max_upload_mb: float = 20.0  # request body; larger ones get 413 before they are read
    max_files: int = 64
    max_batch: int = 16  # images per scoring pass
    # Per image: lower than predict's, a server holds many requests at once.
    max_pixels: int = 64_000_000
    # Per request, and per scoring pass: the pixels the worker decodes before it looks at the queue again.
    max_request_pixels: int = 128_000_000
    max_queue: int = 64  # requests waiting to be scored; one more gets 503 with Retry-After
    max_connections: int = 256  # open connections; more get 503 (uploads in progress are spooled to disk)
    timeout: float = 60.0  # seconds for a request's headers, and again for its body

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"--host must name an address, got {self.host!r}")
        _at_least("port", self.port, 0)
        if self.port > 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port!r}")
        object.__setattr__(self, "allow_host", tuple(self.allow_host or ()))
        object.__setattr__(self, "allow_origin", tuple(o.strip().rstrip("/").lower() for o in self.allow_origin or ()))
        for origin in self.allow_origin:
            if not origin.startswith(("http://", "https://")) or "/" in origin.split("://", 1)[1]:
                raise ValueError(f"--allow_origin must be a scheme and host, like https://detector.example.org, "
                                 f"got {origin!r}")
        object.__setattr__(self, "forwarded_allow_ips", tuple(self.forwarded_allow_ips or ()))
        for address in self.forwarded_allow_ips:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ValueError(f"--forwarded_allow_ips must be an address or network, got {address!r}") from None
        for name in ("max_files", "max_batch", "max_pixels", "max_request_pixels", "max_queue", "max_connections"):
            _at_least(name, getattr(self, name), 1)
        check_tiles(self.tiles)
        _at_least("max_upload_mb", self.max_upload_mb, 1e-3, float)
        _at_least("timeout", self.timeout, 0.1, float)
        if self.max_request_pixels < self.max_pixels:
            raise ValueError(f"--max_request_pixels ({self.max_request_pixels}) is below --max_pixels "
                             f"({self.max_pixels}): the largest image allowed could never be scored")

    @property
    def max_upload_bytes(self) -> int:
        """The request body limit in bytes."""
        return int(self.max_upload_mb * (1 << 20))


def flag_name(f: dataclasses.Field) -> str:
    """The command-line destination a config field stands for."""
    return f.metadata.get("flag", f.name)


def to_flags(config: Any) -> dict:
    """The flat ``{flag: value}`` record of a config (nested configs flattened; paths as strings)."""
    flat: dict = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(to_flags(value))
        else:
            flat[flag_name(f)] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return flat


def flag_defaults(cls: type) -> dict:
    """``{flag: default}`` of a config class, nested configs flattened."""
    return to_flags(cls())


def from_flags(cls: type, values: dict) -> Any:
    """Build ``cls`` from a flat ``{flag: value}`` mapping (missing flags keep their defaults).

    Lists become tuples: a config is frozen, and JSON records it the same either way.
    """
    kwargs = {}
    for f in dataclasses.fields(cls):
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            kwargs[f.name] = from_flags(f.default_factory, values)
        elif flag_name(f) in values:
            value = values[flag_name(f)]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)

