"""Released detectors by name: import a release file, or download, check and import it once into the cache.

    deepfake predict photo.jpg --checkpoint rine-4class     # first use: download, check, import
    deepfake import rine-4class model_4class_trainable.pth  # a file obtained another way, into the cache

A name (:mod:`deepfake.model.releases`) becomes a run folder under ``<cache home>/detectors/NAME``
(``$DEEPFAKE_CACHE`` or ``~/.cache/deepfake``, :func:`deepfake.config.detectors_cache_dir`): the
release file and its licence text under ``release/``, the imported run beside them. The file is
downloaded from the record's URL at its pinned commit into a temporary file, and renamed into place
only once its size and hash are the record's (sha256 where recorded, else the git blob id the tree
at that commit names); a wrong file is removed and refused naming both hashes. Later uses read the
run and download nothing. Without network (``HF_HUB_OFFLINE`` set, the host unanswered within the
probe's 3 s, or a failed download) the refusal names the URL, the hash and the import command.

``DEEPFAKE_RELEASES_MIRROR=URL`` replaces ``https://github.com`` in every release URL (the same
``OWNER/REPO/raw/COMMIT/PATH`` below it): for machines behind a mirror, and for tests.

A name that is also an existing path means the path (local readings win, as for hub ids), with a
warning naming the cached run of the release.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from deepfake.config import detectors_cache_dir
from deepfake.model.checkpoint import BEST, CheckpointRefused
from deepfake.model.published import ReleaseRefused, import_release
from deepfake.model.released_networks import import_network
from deepfake.model.releases import GITHUB, Detector, blob_hasher, detectors, find, is_detector_name
from deepfake.towers.released import NETWORK_NAMES
from deepfake.towers.weights import WeightsError, url_offline_reason
from deepfake.utils.fileio import atomic_write
from deepfake.utils.version import __version__

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

MIRROR_ENV = "DEEPFAKE_RELEASES_MIRROR"
# Seconds a download may wait for the server's next bytes (the reachability probe has already answered).
DOWNLOAD_TIMEOUT = 30.0
RELEASE_DIR = "release"


class DetectorUnavailable(CheckpointRefused):
    """A released detector that cannot be fetched or is not the release; the message says what to do."""


def file_hashes(path: Path) -> tuple[str, str, int]:
    """(sha256, git blob id, size) of a file, in one read."""
    size = path.stat().st_size
    sha256, blob = hashlib.sha256(), blob_hasher(size)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            sha256.update(chunk)
            blob.update(chunk)
    return sha256.hexdigest(), blob.hexdigest(), size


def _source(record: Detector, sha256: str, blob: str) -> dict:
    """What the record adds to an imported run's provenance: the release, its hash, whether this file is it."""
    return {"detector": record.name, "url": record.url, "commit": record.commit, "sha256_release": record.sha256,
            "git_blob_release": record.git_blob, "git_blob": blob, "sha256_matches": record.matches(sha256, blob),
            "trained_on": record.trained_on, "protocol": record.protocol,
            "licence": {"name": record.licence.name, "text": record.licence_url,
                        "research_only": record.licence.research_only, "note": record.licence.note}}


def import_detector(name: str, path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                    overwrite: bool = False, target=None, mode: str | None = None) -> Path:
    """Import the release file ``path`` of the detector ``name`` into ``out_dir`` (default: the cache's run).

    A file whose keys and shapes fit but whose hash is not the release's (a fine-tune of it) is
    imported with a warning naming both hashes, except into the cache, where ``--checkpoint NAME``
    must mean the release. Returns the weights' path.
    """
    record, path = find(name), Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    sha256, blob, _ = file_hashes(path)
    matches = record.matches(sha256, blob)
    if out_dir is None:
        if not matches:
            raise ReleaseRefused(f"{path}: sha256 {sha256} is not the {name} release's ({record.expected_hash()}); "
                                 f"import it as your own head with --out RUN")
        out_dir, overwrite = cached_run_dir(name), True
    source = _source(record, sha256, blob)
    if record.kind == "network":
        weights = _import_network(record, path, Path(out_dir), overwrite, source, target, mode)
    else:
        weights = import_release(path, record.release, out_dir, record.variant or None, target, overwrite, source)
    if not matches:  # said once the file has passed every check of its form
        log.warning("%s: sha256 %s is not the %s release's (%s): imported as a head of that form (a fine-tune of "
                    "it?), not as the release", path, sha256, name, record.expected_hash())
    return weights


def _import_network(record: Detector, path: Path, out: Path, overwrite: bool, source: dict, target,
                    mode: str | None) -> Path:
    if target is not None:
        raise ReleaseRefused(f"{record.name} is a whole network (the {record.family} tower family): --tower does not apply")
    return import_network(path, record.family, out, overwrite=overwrite, source=source, mode=mode)


# --- the cache ------------------------------------------------------------------------


def cached_run_dir(name: str) -> Path:
    """Where the run of the released detector ``name`` lies (or will): ``<cache home>/detectors/NAME``."""
    return detectors_cache_dir() / name


def cached_run(name: str) -> Path | None:
    """The cache's run of ``name`` when it holds the release at the record's commit, else None."""
    run, record = cached_run_dir(name), find(name)
    try:
        provenance = json.loads((run / f"{BEST}.json").read_text(encoding="utf-8")).get("published") or {}
    except (OSError, ValueError, AttributeError):
        return None
    fits = provenance.get("sha256_matches") is True and provenance.get("commit") == record.commit
    return run if fits and (run / f"{BEST}.safetensors").is_file() else None


def release_url(url: str) -> str:
    """``url`` with ``https://github.com`` replaced by ``$DEEPFAKE_RELEASES_MIRROR`` when it is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip().rstrip("/")
    return mirror + url[len(GITHUB):] if mirror and url.startswith(GITHUB) else url


def checkpoint_source(checkpoint: str | os.PathLike) -> str | os.PathLike:
    """What a ``--checkpoint`` value names: a released detector's cached run (fetched on first use), or itself."""
    if not is_detector_name(checkpoint):
        return checkpoint
    if os.path.exists(checkpoint):
        log.warning("%s: a local path of that name exists and is used; the released detector %s is the run %s",
                    checkpoint, checkpoint, cached_run_dir(str(checkpoint)))
        return checkpoint
    return named_run(str(checkpoint))


def named_run(name: str) -> Path:
    """The cache's run of the released detector ``name``, downloaded, checked and imported on first use."""
    found = cached_run(name)
    if found is not None:
        return found
    run = cached_run_dir(name)
    with _locked(run.parent):
        found = cached_run(name)  # another process may have fetched it while this one waited
        if found is not None:
            return found
        record = find(name)
        weights = download_release(record, run / RELEASE_DIR)
        try:
            import_detector(name, weights, run, overwrite=True)
        except ReleaseRefused as exc:
            raise DetectorUnavailable(f"{name}: the downloaded release cannot be imported: {exc}") from exc
    return run


def network_names() -> list[str]:
    """The released whole networks' names: each is also a ``--model`` tower name once in the cache."""
    return [name for name, record in detectors().items() if record.kind == "network"]


def network_release_file(name: str) -> Path:
    """The release file the cache's run of the whole network ``name`` reads, checked against the record.

    Not in the cache (never imported, nor used by name), or its file gone or changed since: the
    message names the command that puts it there. Nothing is downloaded for ``--model``.
    """
    record, run = find(name), cached_run(name)
    how = (f"`deepfake import {name} FILE` (FILE: the release's {record.file_name}) puts it there, "
           f"as does its first use by name, `deepfake predict IMAGE --checkpoint {name}`, which downloads it")
    if run is None:
        raise WeightsError(f"{name}: the {record.title} release is not in the cache ({cached_run_dir(name)}); {how}")
    try:
        path = Path(json.loads((run / f"{BEST}.json").read_text(encoding="utf-8"))["tower"]["model"])
        sha256, blob, _ = file_hashes(path)
    except (OSError, ValueError, KeyError, TypeError):
        raise WeightsError(f"{name}: the release file the cached run {run} was imported from is gone; {how}") from None
    if not record.matches(sha256, blob):
        raise WeightsError(f"{name}: {path} changed since it was imported (sha256 {sha256}, the release's is "
                           f"{record.expected_hash()}); {how}")
    return path


NETWORK_NAMES.register(network_names, network_release_file)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An advisory lock on the detectors folder itself (no lock file is left behind): one process (of several
    ranks, say) downloads and imports; the others wait, then read its run."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # no advisory locks (Windows): concurrent first uses each download; every write is atomic
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _unavailable(record: Detector, url: str, reason: str) -> DetectorUnavailable:
    return DetectorUnavailable(
        f"released detector {record.name}: cannot download {url} ({reason}). The file is {record.path} of "
        f"{GITHUB}/{record.repository} at commit {record.commit}, {record.expected_hash()}; with the file "
        f"obtained another way, `deepfake import {record.name} FILE` puts it where --checkpoint {record.name} "
        f"finds it (or set {MIRROR_ENV} to a mirror of {GITHUB})")


def download_release(record: Detector, folder: Path) -> Path:
    """Download the release file (and its licence text) into ``folder``; the file is there only once checked."""
    url = release_url(record.url)
    kept = folder / record.file_name
    with contextlib.suppress(DetectorUnavailable, OSError):
        if kept.is_file():  # an earlier download whose import did not finish: checked again, not fetched again
            check_download(kept, record, str(kept))
            return kept
    reason = url_offline_reason(url)
    if reason is not None:
        raise _unavailable(record, url, reason)
    _announce_licence(record)
    created = not folder.exists()
    try:
        if record.licence_url:
            _fetch_licence(release_url(record.licence_url), folder / "LICENSE")
        return _fetch(url, folder / record.file_name, record)
    except DetectorUnavailable:
        if created:
            _remove_folder(folder)
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if created:
            _remove_folder(folder)
        raise _unavailable(record, url, str(getattr(exc, "reason", None) or exc)) from exc


def _announce_licence(record: Detector) -> None:
    """The licence, shown once: at the first download. Research-only terms and missing licences as warnings."""
    licence = record.licence
    text = f"its text: {record.licence_url}" if record.licence_url else "the repository has no licence text"
    if licence.research_only or not licence.text:
        log.warning("%s: licence %s (%s); it is recorded in the run and in any model card made from it",
                    record.name, licence.describe(), text)
    else:
        log.info("%s: licence %s (%s); recorded in the run", record.name, licence.describe(), text)


def _open(url: str):
    request = urllib.request.Request(url, headers={"User-Agent": f"deepfake/{__version__}"})
    return urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT)  # noqa: S310 (a release URL: https or the mirror)


def _fetch_licence(url: str, dest: Path) -> None:
    """The licence text beside the file (the import copies it into the run); a missing text is only a warning."""
    try:
        with _open(url) as response:
            text = response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        log.warning("%s: licence text not fetched (HTTP %s); the run records where it is", url, exc.code)
        return
    atomic_write(dest, lambda tmp: Path(tmp).write_bytes(text))


def _fetch(url: str, dest: Path, record: Detector) -> Path:
    """Stream ``url`` into a temporary file beside ``dest``; renamed onto it only if size and hash are the record's."""
    from tqdm import tqdm

    with _open(url) as response:
        total = int(response.headers.get("Content-Length") or 0) or record.size

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle, tqdm(total=total, unit="B", unit_scale=True, desc=record.name,
                                                  disable=not sys.stderr.isatty(), leave=False) as bar:
                while chunk := response.read(1 << 20):
                    handle.write(chunk)
                    bar.update(len(chunk))

        return atomic_write(dest, write, before_replace=lambda tmp: check_download(Path(tmp), record, url))


def check_download(path: Path, record: Detector, url: str) -> None:
    """Refuse a downloaded file whose size or hash is not the record's, naming both hashes."""
    sha256, blob, size = file_hashes(path)
    if record.matches(sha256, blob) and (record.size is None or size == record.size):
        return
    got = f"sha256 {sha256}" if record.sha256 else f"git blob {blob} (sha256 {sha256})"
    raise DetectorUnavailable(
        f"released detector {record.name}: {url} gave {size} bytes with {got}; the release is "
        f"{record.size if record.size is not None else 'of unrecorded size'} bytes with {record.expected_hash()}. "
        "The download was removed; nothing was imported (a proxy's error page, a truncated transfer or a "
        f"changed file: check {MIRROR_ENV} if set)")


def _remove_folder(folder: Path) -> None:
    """Remove what a failed first download left (the licence text, empty folders), up to the cache root."""
    with contextlib.suppress(OSError):
        (folder / "LICENSE").unlink(missing_ok=True)
    for path in (folder, folder.parent):
        with contextlib.suppress(OSError):
            path.rmdir()
