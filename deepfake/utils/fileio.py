"""Atomic writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (reading it means setting it; the lock keeps threads from seeing 0)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    The file gets the permissions a plain ``open`` would give it (0666 less the umask), not
    ``mkstemp``'s private 0600, so a lab can share run folders and caches as it shares others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            # After the write: some writers (safetensors) create the file anew with their own mode.
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8; undecodable file names kept as they came) atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
            handle.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Save ``tensors`` as a safetensors file atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def display_path(path: str | os.PathLike) -> str:
    """A printable form of a path whose name may not be valid UTF-8."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


@contextlib.contextmanager
def removed_if_left_empty(path: str | os.PathLike | None) -> Iterator[None]:
    """Remove ``path`` if the block fails after creating it and nothing was written into it."""
    existed = path is None or os.path.lexists(path)
    try:
        yield
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # fails, as it should, when anything is inside
        raise


def refuse_overwrite(folder: str | os.PathLike, names: Iterable[str] | None = None, overwrite: bool = False,
                     extra: Iterable[str] = (),
                     hint: str = "pass --overwrite to replace them or choose another --output_dir") -> None:
    """The one rule before a run writes into ``folder``: never replace what a user made unless told to.

    With ``names``, the listed result files (and the ``extra`` paths, already found to exist)
    are what would be replaced; without, anything in the folder. Raises ``FileExistsError``
    naming the folder, what is there, and ``hint``.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: exists and is not a directory")
    if overwrite:
        return
    if names is None:
        if folder.is_dir() and any(folder.iterdir()):
            raise FileExistsError(f"{folder}: output directory is not empty; {hint}")
        return
    existing = [name for name in names if (folder / name).exists()] + list(extra)
    if existing:
        raise FileExistsError(f"{folder}: holds earlier results ({', '.join(existing)}); {hint}")
