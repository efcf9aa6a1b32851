"""Released detectors, found by name: one record per released weight file.

    ufd                     UniversalFakeDetect's linear probe on CLIP ViT-L/14 (CVPR 2023)
    rine-1class ... -ldm    RINE's four heads on CLIP ViT-L/14's ln_2 CLS tokens (ECCV 2024)
    tiny-ladeda-wildrf      Tiny-LaDeDa, the whole network, trained on WildRF (2024)
    tiny-ladeda-forensynth  Tiny-LaDeDa trained on ForenSynths' ProGAN
    npr                     NPR, the whole network, trained on ProGAN's four classes (CVPR 2024)

A record says where the file is (the repository at a pinned commit), how to check it (its size
and sha256 where the file was read here, and always its git blob id, which the tree at that commit
names and which fixes the bytes as surely), its licence, what it was trained on and what it needs
here: the head it becomes on a tower (``kind="head"``: a release of :mod:`deepfake.model.published`)
or the tower family its whole network becomes (``kind="network"``). Each paper is one module of
this package calling :func:`register`; the registry imports them all on first lookup, so adding a
release is one record and a new paper one module.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
from dataclasses import asdict, dataclass

GITHUB = "https://github.com"


@dataclass(frozen=True)
class Licence:
    """A release's terms: their name, where the text is, and whether they allow research use only."""

    name: str
    text: str | None  # the path of the licence text in the repository (None: the repository has none)
    research_only: bool = False
    note: str = ""

    def describe(self) -> str:
        """One line for messages and tables: ``MIT``, ``... (research use only)``."""
        words = self.name + (" (research use only)" if self.research_only else "")
        return f"{words}; {self.note}" if self.note else words


@dataclass(frozen=True)
class Detector:
    """One released weight file and everything needed to fetch, check, import and evaluate it."""

    name: str
    title: str
    paper: str
    year: int
    repository: str  # owner/name on GitHub
    commit: str  # the commit every path and hash below was read at
    path: str  # the file's path in the repository
    git_blob: str  # the file's git blob id at that commit (sha1 of "blob SIZE\0" + bytes)
    size: int | None  # bytes; None where the file could not be read here
    sha256: str | None  # None where the file could not be read here: the git blob id still checks it
    licence: Licence
    trained_on: str
    kind: str  # "head": a head on a tower (deepfake.model.published); "network": a whole network as a tower family
    network: str  # the tower (hub id) or tower family it runs on
    tap: str  # what the head reads from the tower
    preprocess: str  # the authors' test transform, in words
    head: str  # the head, in words
    protocol: str  # the test protocol of the paper's headline table
    reproduce: str = ""  # the command that evaluates it as the paper did, as far as this tool can
    release: str = ""  # kind "head": the release of deepfake.model.published (ufd, rine)
    variant: str = ""  # ... and its variant (rine: 1class, 2class, 4class, ldm)
    family: str = ""  # kind "network": the tower family its network becomes

    @property
    def url(self) -> str:
        """The file at the pinned commit (``DEEPFAKE_RELEASES_MIRROR`` may redirect it at download)."""
        return f"{GITHUB}/{self.repository}/raw/{self.commit}/{self.path}"

    @property
    def licence_url(self) -> str | None:
        """The licence text at the same commit, or None when the repository states none."""
        return f"{GITHUB}/{self.repository}/raw/{self.commit}/{self.licence.text}" if self.licence.text else None

    @property
    def file_name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def matches(self, data_sha256: str, data_git_blob: str) -> bool:
        """Whether a file is this release: its sha256 where known, else its git blob id."""
        return data_sha256 == self.sha256 if self.sha256 else data_git_blob == self.git_blob

    def expected_hash(self) -> str:
        """The hash a file is checked against, named: ``sha256 ...`` or ``git blob ...``."""
        return f"sha256 {self.sha256}" if self.sha256 else f"git blob {self.git_blob} (sha256 not recorded)"

    def to_dict(self) -> dict:
        return {**asdict(self), "url": self.url, "licence_url": self.licence_url}


def blob_hasher(size: int) -> hashlib._Hash:
    """A sha1 primed with git's blob header: fed the file's bytes, it gives the file's git blob id."""
    hasher = hashlib.sha1(usedforsecurity=False)
    hasher.update(f"blob {size}\0".encode())
    return hasher


class UnknownDetector(ValueError):
    """A name that is no released detector; the message lists the names."""


_DETECTORS: dict[str, Detector] = {}
_loaded = False


def register(*records: Detector) -> None:
    """Add released detectors (called by each module of this package at import)."""
    for record in records:
        if record.name in _DETECTORS:
            raise ValueError(f"released detector {record.name!r} registered twice")
        _DETECTORS[record.name] = record


def detectors() -> dict[str, Detector]:
    """Every record, by name, in the order the modules register them (by paper year, then name)."""
    global _loaded
    if not _loaded:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return dict(sorted(_DETECTORS.items(), key=lambda item: (item[1].year, item[0])))


def is_detector_name(name: object) -> bool:
    """Whether ``name`` is a released detector's name (``ufd``, ``rine-4class``, ...)."""
    return isinstance(name, str) and name in detectors()


def find(name: str) -> Detector:
    """The record called ``name``; :class:`UnknownDetector` lists the names otherwise."""
    found = detectors().get(name)
    if found is None:
        raise UnknownDetector(f"{name!r} is no released detector; known: {', '.join(detectors())} "
                              "(`deepfake detectors` lists them)")
    return found
