"""Device, precision, seeding and torch.distributed: chosen once, in one place."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import random
import signal
import threading
from importlib import metadata

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def local_rank() -> int:
    """This process's GPU slot on its node (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def choose_device(requested: str | None = None) -> torch.device:
    """``cuda`` when available, else ``cpu``; an explicit request wins (and is checked).

    A bare ``cuda`` (asked for or chosen) means this rank's own GPU, ``cuda:LOCAL_RANK``, and
    becomes the current device, so that library calls that use "the current GPU" use it too.
    """
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available on this machine")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        return torch.device("cpu")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank())
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(device)
    return device


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn ``auto`` into what this device runs fastest with acceptable accuracy."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ValueError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def terminate_as_interrupt():
    """Inside the block, SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does (main thread only).

    Batch schedulers stop jobs with SIGTERM; treating it as Ctrl-C lets the code that is
    running save what it has finished before the process ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse rather than hand them back to the system.

    By default every block over 128 KB gets pages of its own and returns them when freed, so a
    loop that makes and drops a few MB of arrays per image pays a page fault on every 4 KB, every
    time: a sixth of the synthetic benchmark's time. Blocks under ``mmap_threshold`` are then
    carved from the heap, which is trimmed only when more than ``trim_threshold`` is free at
    its top; the resident set grows by the loop's working set, not by the number of images.
    Forked workers inherit the setting. Returns whether it applied (glibc only).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, 64 << 20)))


# --- torch.distributed ---------------------------------------------------------------


def init_distributed(device: torch.device) -> None:
    """Join the process group that torchrun describes in the environment (no-op without it)."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        # device_id binds the NCCL communicator to this rank's GPU (no guessing "GPU 0").
        extra = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **extra)
        log.info("rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@functools.cache
def _libc_malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to hand back this way


def release_free_heap() -> None:
    """Hand the heap pages freed so far back to the OS (glibc; elsewhere a no-op).

    Extraction allocates and frees many small buffers (decoded images, batches, shard
    listings); glibc keeps the freed pages, fragmented, in the process. Returned before the
    feature table is allocated, they do not add to the run's peak.
    """
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)


def versions() -> dict:
    """The versions that decide a run's numbers: Python, torch, transformers."""
    # From the installed package's metadata: a run whose features are all cached never imports
    # transformers (a second of start-up), and need not to learn its version.
    try:
        transformers = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        transformers = None
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers}
