"""Command-line flags shared by the scripts, so each is spelled and documented once.

Every parser of the package is a :class:`CliParser`: each ``--flag_name`` is also accepted as
``--flag-name`` (without listing both in ``--help``), and a parse error prints its cause and a
one-line hint instead of the whole usage.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from deepfake.config import (
    LR_SCHEDULES,
    STANDARDIZE_CHOICES,
    AugmentConfig,
    DataConfig,
    DetectorsConfig,
    EvalConfig,
    HeadConfig,
    RuntimeConfig,
    ScheduleConfig,
    TowerConfig,
    TrainConfig,
    from_flags,
)
from deepfake.data.benchmarks import available_presets
from deepfake.data.preprocess import CLI_PREPROCESS_MODES
from deepfake.data.protocols import PROTOCOL_NAMES
from deepfake.features.cache import CacheError
from deepfake.model.heads import head_kinds
from deepfake.towers.loading import check_model
from deepfake.towers.weights import WeightsError
from deepfake.utils.runtime import PRECISIONS, terminate_as_interrupt
from deepfake.utils.text import parse_list

T = TypeVar("T")

# Each flag's default is read from the config it fills: one place for every default.
RUNTIME, TOWER, DATA, HEAD = RuntimeConfig(), TowerConfig(), DataConfig(), HeadConfig()
SCHEDULE, AUGMENT, TRAIN, EVAL = ScheduleConfig(), AugmentConfig(), TrainConfig(), EvalConfig()


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that takes ``--flag-name`` for ``--flag_name`` and says errors in two lines.

    The hyphenated spellings are rewritten before parsing (up to a ``--`` separator), so ``--help``
    lists each flag once. An error prints ``PROG: error: CAUSE`` (with the closest flag for a
    misspelt one) and where the flags are listed, not the 30-line usage; exit status 2.
    """

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
        self._seen = self._underscored(list(sys.argv[1:] if args is None else args))
        return super().parse_known_args(self._seen, namespace)

    def _underscored(self, args: list[str]) -> list[str]:
        out = []
        for i, token in enumerate(args):
            if token == "--":
                return out + args[i:]
            flag, eq, value = token.partition("=")
            if flag.startswith("--") and "-" in flag[2:] and flag not in self._option_string_actions:
                token = "--" + flag[2:].replace("-", "_") + eq + value
            out.append(token)
        return out

    def _unknown_flags(self) -> list[str]:
        """Flags of the last command line that name no option of this parser (nor a prefix of one)."""
        known = [k for k in self._option_string_actions if k.startswith("--")]
        flags = [t.partition("=")[0] for t in getattr(self, "_seen", []) if t.startswith("--") and t != "--"]
        return [f for f in flags if not any(k.startswith(f) for k in known)]

    def _closest(self, flag: str) -> str:
        known = [k for k in self._option_string_actions if k.startswith("--")]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        return f" (did you mean {close[0]}?)" if close else ""

    def error(self, message: str):
        unknown = self._unknown_flags()
        if unknown and message.startswith("unrecognized arguments"):
            message += "".join(self._closest(f) for f in unknown[:1])
        elif unknown:  # e.g. a required flag missing because its name was misspelt
            message += f"; not a flag of {self.prog}: {unknown[0]}{self._closest(unknown[0])}"
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists every flag)\n")


def model_name(text: str) -> str:
    """``--model``: a known tower name, a local directory or a hub id, checked before any data is read."""
    try:
        return check_model(text)
    except WeightsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None



def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available, else cpu)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="tower precision: auto = bf16 on GPUs and on CPUs with bf16 instructions, else fp32 "
                             "(default: auto for training, the checkpoint's for test and predict)")
    parser.add_argument("--batch_size", type=int, default=RUNTIME.batch_size, help="images per batch")
    parser.add_argument("--num_workers", type=int, default=RUNTIME.num_workers,
                        help="image decoding worker processes (default: %(default)s on this machine)")
    add_threads_arg(parser)
    parser.add_argument("--max_pixels", type=int, default=RUNTIME.max_pixels,
                        help="refuse images with more pixels than this (decompression bombs)")
    parser.add_argument("--decode", default=None, choices=("exact", "fast"),
                        help="exact: full-resolution decode, then the resize; fast: JPEG draft / integer reduce "
                             "in uint8 to >= 2x the input size first (quicker on large photos, features move "
                             "slightly; see README). Default: exact for training, the checkpoint's for test/predict")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress lines; log warnings and errors only")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_threads_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--threads N``: the main process's compute threads (every command that runs a tower or trains)."""
    parser.add_argument("--threads", type=_positive_int, default=RUNTIME.threads,
                        help="compute threads of the main process (default: the CPUs this process may use, by "
                             "affinity and cgroup quota, less the decoding workers and what other processes "
                             "were measured to use of them; see docs/performance.md)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def add_tower_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=TOWER.model, type=model_name,
                        help="tower: Hugging Face id or local checkpoint directory of any supported family "
                             "(LanguageBind, CLIP, SigLIP/SigLIP 2, DINOv2, DINOv3), or 'spectrum'; A+B[+C] fuses "
                             "towers: one head on their features side by side (an existing path with '+' is one tower) "
                             "(default: %(default)s)")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of --model")
    parser.add_argument("--preprocess", default=None, choices=CLI_PREPROCESS_MODES,
                        help="resize: the tower's own transform (LanguageBind/CLIP/DINOv2: short side + center crop; "
                             "SigLIP/DINOv3: square resize); crop: center crop at the tower's size without "
                             "resizing (UniversalFakeDetect test protocol) (default: the tower's record)")


def add_cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache_dir", default=None,
                        help="feature cache (default: $DEEPFAKE_CACHE or ~/.cache/deepfake/features)")
    parser.add_argument("--no_cache", action="store_true", help="run the tower on every image every time")
    parser.add_argument("--compile", action="store_true", help="torch.compile the tower before extraction")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Flags that say how labelled images are found and prepared, shared by training and evaluation."""
    parser.add_argument("--label_dirs", nargs="+", default=None, metavar="CLASS=NAMES",
                        help="label folder names when the defaults (0_real/1_fake, real/fake, nature/ai) do not fit, "
                             "e.g. --label_dirs real=camera,photos fake=generated")
    parser.add_argument("--align", action="append", default=None, metavar="jpeg:Q|size:S",
                        help="remove a real/fake bias before the tower: jpeg:Q re-encodes every image at quality Q, "
                             "size:S resizes every image to short side S (repeatable; size first, then JPEG)")
    parser.add_argument("--audit_max", type=int, default=DATA.audit_max,
                        help="image headers read per domain and class by the bias audit (a seeded sample beyond)")


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """INFO diagnostics on stderr; ``verbose``: DEBUG; ``quiet``: warnings and errors only."""
    # No force=True: a host application's (or pytest's) handlers stay in place.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_job(name: str, job: Callable[[], T], continue_hint: str) -> tuple[int, T | None]:
    """Run a command's job with the scripts' exit statuses: (0, result), (2, None) for bad
    input named in one line, (130, None) when interrupted, saying how to continue."""
    log = logging.getLogger(name)
    try:
        with terminate_as_interrupt():
            return 0, job()
    except (FileExistsError, FileNotFoundError, ValueError, CacheError) as exc:
        log.error("%s", exc)
        return 2, None
    except KeyboardInterrupt as exc:
        message = str(exc) if str(exc).startswith("interrupted") else "interrupted"
        log.error("%s; %s", message, continue_hint)
        return 130, None


def parse_threshold(text: str) -> str | float:
    """``val``, ``calibrated`` or a number in [0, 1] (resolved against the checkpoint later)."""
    name = text.strip().lower()
    if name in ("val", "calibrated"):
        return name
    try:
        value = float(name)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected val, calibrated or a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be in [0, 1], got {text!r}")
    return value


def parse_pair(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(",")
    try:
        pair = (int(lo), int(hi or lo))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI integers, got {text!r}") from None
    if not 1 <= pair[0] <= pair[1] <= 100:
        raise argparse.ArgumentTypeError(f"JPEG qualities must satisfy 1 <= LO <= HI <= 100, got {text!r}")
    return pair


def train_parser(description: str | None = None) -> argparse.ArgumentParser:
    """Flags of train_ClassifierHead.py."""
    p = CliParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True,
                   help="DATASET/{category}/{0_real,1_fake}, DATASET/{train,val,test}/{category}/{0_real,1_fake}, "
                        "or a CSV / JSON Lines manifest (path,label[,domain,category,split])")
    p.add_argument("--output_dir", required=True, help="run directory for checkpoints (epoch_NNN, best)")
    p.add_argument("--num_epochs", type=int, default=SCHEDULE.num_epochs)
    p.add_argument("--learning_rate", type=float, default=SCHEDULE.learning_rate)
    p.add_argument("--weight_decay", type=float, default=SCHEDULE.weight_decay, help="AdamW weight decay (0: plain Adam)")
    p.add_argument("--seed", type=int, default=TRAIN.seed)
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all found)")
    p.add_argument("--val_ratio", type=float, default=TRAIN.val_ratio, help="held-out share when there is no val/ split")
    add_data_args(p)
    add_tower_args(p)
    add_runtime_args(p)
    p.add_argument("--extract_batch_size", type=int, default=None, help="tower batch size (default: --batch_size)")
    add_cache_args(p)
    p.add_argument("--feature_layers", default=TRAIN.feature_layers,
                   help="none, all, or block numbers like 8,16,20,24 (0 = embedding output): also cache those "
                        "blocks' CLS tokens, one memory-mapped tensor per block (the layers head reads them; "
                        "its default: all). With --head rine: the blocks whose ln_2 output it reads "
                        "(1..N; default all)")
    head = p.add_argument_group("head")
    head.add_argument("--head", default=HEAD.kind, choices=head_kinds(),
                      help="mlp: Linear-ReLU-Dropout-Linear on the final embedding (default); layers: per-block "
                           "CLS tokens with learned block importance (RINE-style); linear: linear probe (UFD); "
                           "rine: RINE's exact head on every block's ln_2 CLS token (CLIP and LanguageBind towers)")
    head.add_argument("--proj_dim", type=int, default=HEAD.proj_dim,
                      help="layers and rine heads: projection width")
    head.add_argument("--nproj", type=int, default=HEAD.nproj,
                      help="rine head: [Linear, ReLU, Dropout] stages in each of its two projections")
    head.add_argument("--importance", default=HEAD.importance, choices=("block", "feature"),
                      help="layers head: one weight per block, or per block and feature (RINE's exact estimator)")
    add_standardize_arg(head)
    head.add_argument("--contrastive_weight", type=float, default=SCHEDULE.contrastive_weight,
                      help="weight of the supervised contrastive term on the head's representation (RINE; 0: off)")
    head.add_argument("--contrastive_temperature", type=float, default=SCHEDULE.contrastive_temperature)
    sched = p.add_argument_group("schedule, early stopping, retention")
    sched.add_argument("--lr_schedule", default=SCHEDULE.lr_schedule, choices=LR_SCHEDULES,
                       help="constant (default), cosine to 0 over --num_epochs, or step decay at --lr_milestones")
    sched.add_argument("--lr_milestones", type=_ints, default=SCHEDULE.lr_milestones,
                       help="step: epochs from which the rate is multiplied by --lr_gamma (default: half, 3/4)")
    sched.add_argument("--lr_gamma", type=float, default=SCHEDULE.lr_gamma, help="step: decay factor")
    sched.add_argument("--patience", type=int, default=SCHEDULE.patience,
                       help="stop after N epochs without a higher val AP (default 0: run every epoch)")
    sched.add_argument("--keep_last", type=int, default=SCHEDULE.keep_last,
                       help="keep only the last N epoch checkpoints (best is always kept; default 0: keep all)")
    aug = p.add_argument_group("augmentation (CNNDetection's blur + JPEG)")
    aug.add_argument("--blur_prob", type=float, default=AUGMENT.blur_prob)
    aug.add_argument("--blur_sigma", type=float, default=AUGMENT.blur_sigma, help="sigma drawn from U[0, blur_sigma]")
    aug.add_argument("--jpeg_prob", type=float, default=AUGMENT.jpeg_prob)
    aug.add_argument("--jpeg_quality", type=parse_pair, default=AUGMENT.jpeg_quality, help="LO,HI quality range")
    aug.add_argument("--aug_views", type=int, default=AUGMENT.aug_views, help="augmented views cached per image")
    p.add_argument("--overwrite", action="store_true", help="write checkpoints into a non-empty output dir")
    p.add_argument("--resume", action="store_true", help="continue the run in --output_dir")
    return p


def add_standardize_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--standardize auto|on|off``: per-dimension standardisation of the head's features (train, demo)."""
    parser.add_argument("--standardize", default=HEAD.standardize, choices=STANDARDIZE_CHOICES,
                        help="standardise each feature dimension with the training features' mean and std, "
                             "stored in the head (auto, the default: where the tower's record asks for it, "
                             "as the spectral towers' does)")


def _floats(text: str) -> list[float]:
    return parse_list(text, float)


def _ints(text: str) -> list[int]:
    return parse_list(text, int)


def test_parser(description: str | None = None) -> argparse.ArgumentParser:
    """Flags of test_ClassifierHead.py."""
    p = CliParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="run directory (uses best), checkpoint file or a released detector's name (`deepfake detectors`)")
    add_test_set_args(p)
    p.add_argument("--output", default=None, help="also write results.json to this path")
    p.add_argument("--output_dir", default=None, help="results folder (default: CHECKPOINT_RUN/eval_DATASET)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --output_dir")
    p.add_argument("--threshold", type=parse_threshold, default=None,
                   help="threshold of the acc columns: val (the checkpoint's validation threshold), calibrated "
                        "(when the checkpoint has one) or a number (default: the checkpoint's, 0.5)")
    add_protocol_args(p)
    op = p.add_argument_group("operating point")
    op.add_argument("--calibrate_real", default=None, metavar="DIR",
                    help="known-real images of the target domain: sets the threshold giving --target_fpr on them")
    op.add_argument("--target_fpr", type=float, default=EVAL.target_fpr, help="false-positive rate for --calibrate_real")
    pert = p.add_argument_group("robustness (applied in this order: blur, JPEG, resize, as CNNDetection and UFD do)")
    add_perturbation_args(pert)
    pert.add_argument("--robustness", action="store_true", help="sweep JPEG quality and blur; one table per level")
    pert.add_argument("--sweep_jpeg", type=_ints, default=None, help="sweep JPEG qualities (default 95,75,50,30)")
    pert.add_argument("--sweep_sigma", type=_floats, default=None, help="sweep blur sigmas (default 1,2,3)")
    pert.add_argument("--sweep_resize", type=_floats, default=None, help="sweep resize factors (default none)")
    p.add_argument("--feature_layers", default=EVAL.feature_layers,
                   help="also cache these blocks' CLS tokens (none, all, 8,16,...): lets heads share one cache; "
                        "the blocks a layers head reads are always extracted")
    p.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    add_runtime_args(p)
    add_cache_args(p)
    return p


def add_test_set_args(p: argparse.ArgumentParser) -> None:
    """The test set of ``test`` and ``compare``: a folder, manifest or benchmark, and which of its domains."""
    p.add_argument("--dataset_dir", "--data_root", dest="dataset_dir", required=True,
                   help="test root (see README for the layouts), a manifest, or the data root of --benchmark")
    p.add_argument("--benchmark", default=None,
                   help="benchmark file (JSON) or preset: " + ", ".join(available_presets()))
    p.add_argument("--real_root", default=None, help="reals published apart from the benchmark (Synthbuster: RAISE-1k)")
    p.add_argument("--allow_one_class", action="store_true",
                   help="evaluate domains with one class only, with the metrics one class defines")
    add_data_args(p)
    p.add_argument("--categories", default=None, help="comma-separated categories to evaluate")
    p.add_argument("--generators", default=None, help="comma-separated generators to evaluate")


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """A published test protocol and the sampling of ``test`` and ``compare``."""
    p.add_argument("--protocol", default=EVAL.protocol, choices=PROTOCOL_NAMES,
                   help="evaluate as a published benchmark repository does: its preprocessing (ufd, cnndetection, "
                        "rine: center crop 224 without resizing; aigcdetect: short side 256, then crop 224), sampling "
                        "(ufd: 1000 images per class, 100 when a class has fewer, equal counts; the others: every "
                        "image), its uint8 blur, and its headline numbers (accuracy at 0.5 and AP) printed first; "
                        "RINE's figures: --benchmark rine --protocol rine (default: none)")
    p.add_argument("--max_sample", type=int, default=EVAL.max_sample,
                   help="at most N images per generator and class (with --protocol ufd: its max_sample, default 1000)")
    p.add_argument("--seed", type=int, default=EVAL.seed, help="seed for --max_sample")


def add_perturbation_args(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One degradation level of ``test`` and ``compare`` (blur, then JPEG, then resize)."""
    group.add_argument("--jpeg_quality", type=int, default=None, help="re-encode as JPEG at this quality")
    group.add_argument("--gaussian_sigma", type=float, default=None, help="Gaussian blur of this sigma")
    group.add_argument("--resize_scale", type=float, default=None, help="resize by this factor")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The typed config of a parsed ``train`` command line."""
    return from_flags(TrainConfig, vars(args))


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The typed config of a parsed ``test`` command line."""
    return from_flags(EvalConfig, vars(args))


def detectors_config(args: argparse.Namespace) -> DetectorsConfig:
    """The typed config of a parsed ``compare`` command line."""
    return DetectorsConfig(tuple(args.detectors), eval_config(args))
