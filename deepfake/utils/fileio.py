"""Atomic writes: a reader sees the old file or the new one, never half of either.

A write goes to ``.NAME.<host>-<pid>.XXXXXXXX.tmp`` beside its target, then is renamed onto it, and
holds an advisory lock (``flock``) on that file the whole time. A process killed mid-write leaves
the file behind and its lock released (the kernel drops it with the process); the first atomic
write of a later process into the same folder removes it once it is sure the write is dead: it can
take the lock, and its process is gone from this host, or (another host's, or a name without host
and pid) it is over a day old. The lock is what cannot collide: two containers with one host name
and separate PID namespaces sharing a cache see each other's PIDs as dead, but not each other's
locks. A write in progress, such as another rank's shard in a shared cache, is never touched: a
cleaner removes a file only while it holds its lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

log = logging.getLogger(__name__)

_UMASK_LOCK = threading.Lock()
# Temporary files of atomic writes: ``.NAME.<host>-<pid>.XXXXXXXX.tmp`` (and, from earlier versions,
# ``.NAME.XXXXXXXX.tmp``); the 8 characters are mkstemp's.
_TEMP_NAME = re.compile(
    r"^\.(?P<name>.+?)(?:\.(?P<host>[A-Za-z0-9-]{1,32})-(?P<pid>\d{1,10}))?\.[A-Za-z0-9_]{8}\.tmp$")
# A leftover temp file of another host (or of an earlier version) is stale after this long: no write lasts a day.
STALE_TEMP_SECONDS = 24 * 3600
_SWEPT: set[str] = set()  # folders this process has already cleared of leftover temp files
_SWEPT_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (reading it means setting it; the lock keeps threads from seeing 0)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None],
                 before_replace: Callable[[str], None] | None = None, durable: bool = True) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one rename.

    The file gets the permissions a plain ``open`` would give it (0666 less the umask), not
    ``mkstemp``'s private 0600, so a lab can share run folders and caches as it shares others.
    ``before_replace(tmp_path)`` runs once the bytes are on disk, just before the rename (a
    checkpoint writes the config recording the weights' hash there); if it raises, nothing is renamed.
    ``durable=False`` skips the ``fsync``: the file is still whole or absent after a crash of the
    process, but may be lost to a power cut (for data that is cheaper to make again than to sync).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temp_files_once(path.parent)
    lock, tmp = _locked_temp(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            # After the write: some writers (safetensors) create the file anew with their own mode.
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            if durable:
                os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        os.close(lock)  # after the rename or the unlink: the lock covered the file's whole life under its name
    return path


def _locked_temp(path: Path) -> tuple[int, str]:
    """A new temp file for ``path`` and an open descriptor holding its exclusive lock (close it to release).

    Between the file's creation and the lock a cleaner may have taken the lock and removed the file: then the
    name no longer leads to the locked file, and another is made."""
    for _ in range(100):
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held by a cleaner at most while it removes the file
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            return fd, tmp  # a file system without locks: such files are judged by name and age alone
        if _same_file(tmp, fd):
            return fd, tmp
        os.close(fd)
    raise OSError(f"{path.parent}: could not create a temp file for {path.name} that stays (removed as made)")


def _same_file(path: str | os.PathLike, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def _unlocked(path: str | os.PathLike) -> Iterator[bool | None]:
    """Hold ``path``'s lock for the block if no writer holds it: True (taken), False (a writer holds it), or None
    (the file is gone, or its file system has no locks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:
            yield None
            return
        yield _same_file(path, fd)  # the file held, still under this name
    finally:
        os.close(fd)


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
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
    before_replace: Callable[[str], None] | None = None,
) -> Path:
    """Save ``tensors`` as a safetensors file atomically (``before_replace``: as :func:`atomic_write`)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), before_replace)


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "-", socket.gethostname())[:32] or "host"


def _temp_prefix(name: str) -> str:
    """``.NAME.<host>-<pid>.``: who writes it, so that a later process can tell a dead write from a live one."""
    if len(os.fsencode(name)) > 160:  # the temp name must stay under the file system's 255 bytes
        name = name[:60]
    return f".{name}.{_host_tag()}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or an unusable number): leave it alone
    return True


def is_stale_temp(path: str | os.PathLike, now: float | None = None) -> bool:
    """Whether ``path`` is a temp file of an atomic write that will never finish.

    Never while a writer holds its lock (a live write, whichever PID namespace it runs in). Then,
    of this host: its process is gone. Of another host (a shared folder): older than
    ``STALE_TEMP_SECONDS``. Without host and pid (an earlier version's name, which other programs'
    temp files may share): older than that, and only beside the file it was to become. This
    process's own writes are never stale.
    """
    with _unlocked(path) as taken:
        return taken is not False and _stale_by_name(path, now)


def _stale_by_name(path: str | os.PathLike, now: float | None = None) -> bool:
    """:func:`is_stale_temp`'s rules of name, process and age (the lock aside)."""
    found = _TEMP_NAME.match(os.path.basename(path))
    if found is None:
        return False
    pid = int(found["pid"]) if found["pid"] else None
    if found["host"] == _host_tag() and pid is not None:
        return pid != os.getpid() and not _pid_alive(pid)
    if pid is None and not os.path.lexists(os.path.join(os.path.dirname(path), found["name"])):
        return False
    try:
        age = (time.time() if now is None else now) - os.lstat(path).st_mtime
    except OSError:
        return False
    return age > STALE_TEMP_SECONDS


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the leftover temp files of killed atomic writes in ``folder`` (see :func:`is_stale_temp`)."""
    removed = []
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.name.endswith(".tmp") and entry.is_file()]
    except OSError:
        return removed
    for name in names:
        path = Path(folder) / name
        if not _TEMP_NAME.match(name):
            continue
        # Removed while its lock is held here: a writer that got the name meanwhile waits, then makes another.
        with _unlocked(path) as taken:
            if taken is not False and _stale_by_name(path):
                with contextlib.suppress(FileNotFoundError):  # another process removed it first
                    path.unlink()
                    removed.append(path)
    if removed:
        log.info("%s: removed %d temp file(s) left by interrupted writes (%s)", folder, len(removed),
                 ", ".join(p.name for p in removed[:3]) + (", ..." if len(removed) > 3 else ""))
    return removed


def sweep_temp_files_once(folder: str | os.PathLike) -> None:
    """The first write of this process into ``folder`` clears it of dead writes' temp files."""
    key = os.path.abspath(folder)
    with _SWEPT_LOCK:
        if key in _SWEPT:
            return
        _SWEPT.add(key)
    try:
        remove_stale_temp_files(folder)
    except OSError as exc:  # a read-only or vanishing folder: the write itself says what is wrong
        log.debug("%s: leftover temp files not checked (%s)", folder, exc)


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
