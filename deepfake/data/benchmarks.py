"""Benchmark files: which folders hold each test domain's fakes and reals, as the benchmark was published.

A benchmark file is JSON (the format every other file of this tool is written in, read by
the standard library on every supported Python; see the README)::

    {
      "format": "deepfake-benchmark/1",
      "name": "ufd",
      "title": "UniversalFakeDetect test sets",
      "source": "https://github.com/WisconsinAIVision/UniversalFakeDetect",
      "data_root": "the folder holding progan/, ... and diffusion_datasets/",
      "domains": [
        {"name": "progan", "family": "GAN", "categories": ["airplane", "bicycle"],
         "fake": ["progan/{category}/1_fake"], "real": ["progan/{category}/0_real"]},
        {"name": "guided", "family": "diffusion",
         "fake": ["diffusion_datasets/guided/1_fake"], "real": ["diffusion_datasets/imagenet/0_real"]}
      ]
    }

Folders are relative to ``--data_root`` (or to ``--real_root`` for a domain with
``"real_root": true``, as Synthbuster's RAISE reals are). ``{category}`` repeats a folder
for each listed category; images are found recursively. A list inside the folder list names
alternative layouts of one folder, the first present is read (GenImage's download nests
``ADM/imagenet_ai_0508_adm/val/ai`` where its README draws ``ADM/val/ai``). ``"layout_roots"``
names the folders of a published tree that may hold the domains, so the data root may be the
tree's top or one of them (UniversalFakeDetect's README puts the GAN sets in ``datasets/test/``
and ``diffusion_datasets/`` beside ``datasets/``; RINE's puts both in ``data/test/``).

A domain is present when a folder of its own is found; folders it shares with other domains
(UFD's ``laion`` reals, Synthbuster's RAISE reals) do not make it present, so a partial
download lists the absent domains as missing. Built-in presets live in
``deepfake/data/benchmark_presets/`` and are named by their file name. A preset whose folders are
only partly present evaluates what is there and lists what is missing.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from deepfake.data.image_io import walk_images
from deepfake.data.layouts import LayoutError
from deepfake.data.test_sets import TestSample

PRESET_DIR = Path(__file__).resolve().parent / "benchmark_presets"
FORMAT = "deepfake-benchmark/1"
DOMAIN_KEYS = {"name", "fake", "real", "family", "source", "categories", "real_root", "note"}
# A folder entry: its alternative layouts, the first present is read.
Folder = tuple[str, ...]


@dataclass(frozen=True)
class DomainSpec:
    """One test domain: its fake and real folders (each with its alternative layouts), family and source."""

    name: str
    fake: tuple[Folder, ...]
    real: tuple[Folder, ...]
    family: str = ""
    source: str = ""
    categories: tuple[str, ...] = ()
    real_root: bool = False


@dataclass(frozen=True)
class Benchmark:
    name: str
    domains: tuple[DomainSpec, ...]
    title: str = ""
    source: str = ""
    download: str = ""
    data_root: str = ""
    real_root: str = ""
    path: str = ""
    layout_roots: tuple[str, ...] = ()  # folders of the published tree that may hold the domains

    @property
    def families(self) -> list[str]:
        return list(dict.fromkeys(d.family for d in self.domains if d.family))

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "source": self.source, "download": self.download, "path": self.path,
                "domains": [d.name for d in self.domains]}


@dataclass
class Resolved:
    """What of a benchmark was found under the roots given."""

    samples: list[TestSample]
    present: list[str]
    missing: list[str] = field(default_factory=list)  # one line per absent domain or folder


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def _relative(value: str, where: str, key: str) -> str:
    if os.path.isabs(value) or ".." in Path(value).parts or "\0" in value:
        raise LayoutError(f"{where}: {key!r} folder {value!r} must be relative to the data root, without '..'")
    return value


def _categories(value, where: str) -> tuple[str, ...]:
    """The names that fill ``{category}``: each one folder name, so a filled folder stays under the data root."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise LayoutError(f"{where}: 'categories' must be a list of folder names (strings), got {json.dumps(value)[:80]}")
    for name in value:
        if not name.strip() or name in (".", "..") or any(c in name for c in "/\0"):
            raise LayoutError(f"{where}: category {name!r} must be one folder name (no '/', '.' or '..'): "
                              f"it fills {{category}} in a folder relative to the data root")
    if len(set(value)) != len(value):
        raise LayoutError(f"{where}: 'categories' lists a name twice")
    return tuple(value)


def _text(doc: dict, key: str, where: str) -> str:
    """An optional text field: a string (or absent / null), never a number read as one."""
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise LayoutError(f"{where}: {key!r} must be a string, got {json.dumps(value)[:80]}")
    return value or ""


def _folders(value, where: str, key: str) -> tuple[Folder, ...]:
    """A folder, or a list of folders where an inner list names one folder's alternative layouts."""
    if isinstance(value, str):
        value = [value]
    entries = value if isinstance(value, list) and value else [None]
    folders = []
    for entry in entries:
        alternatives = [entry] if isinstance(entry, str) else entry
        if not isinstance(alternatives, list) or not alternatives or \
                not all(isinstance(v, str) and v.strip() for v in alternatives):
            raise LayoutError(f"{where}: {key!r} must be a folder or a list of folders (strings); a list inside "
                              "the list names one folder's alternative layouts")
        folders.append(tuple(_relative(v, where, key) for v in alternatives))
    return tuple(folders)


def _layout_roots(doc: dict, where: str) -> tuple[str, ...]:
    roots = doc.get("layout_roots") or []
    if not isinstance(roots, list) or not all(isinstance(r, str) and r.strip() for r in roots):
        raise LayoutError(f"{where}: 'layout_roots' must be a list of folders (strings)")
    return tuple(_relative(r, where, "layout_roots") for r in roots)


def parse_benchmark(doc: dict, where: str) -> Benchmark:
    """Validate a benchmark document; every problem names the file and the field."""
    if not isinstance(doc, dict):
        raise LayoutError(f"{where}: a benchmark file is a JSON object")
    if doc.get("format", FORMAT) != FORMAT:
        raise LayoutError(f"{where}: format {doc.get('format')!r} is not {FORMAT!r}")
    raw = doc.get("domains")
    if not isinstance(raw, list) or not raw:
        raise LayoutError(f"{where}: 'domains' must be a non-empty list")
    domains, seen = [], set()
    for i, d in enumerate(raw):
        at = f"{where}: domains[{i}]"
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or not d["name"].strip():
            raise LayoutError(f"{at}: each domain needs a 'name'")
        at = f"{where}: domain {d['name']!r}"
        unknown = set(d) - DOMAIN_KEYS
        if unknown:
            raise LayoutError(f"{at}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(DOMAIN_KEYS))}")
        if d["name"] in seen:
            raise LayoutError(f"{at}: named twice")
        seen.add(d["name"])
        if "fake" not in d or "real" not in d:
            raise LayoutError(f"{at}: needs both 'fake' and 'real' folders")
        categories = _categories(d.get("categories"), at)
        if not isinstance(d.get("real_root", False), bool):
            raise LayoutError(f"{at}: 'real_root' must be true or false")
        fake, real = _folders(d["fake"], at, "fake"), _folders(d["real"], at, "real")
        templated = any("{category}" in f for folder in fake + real for f in folder)
        if templated and not categories:
            raise LayoutError(f"{at}: folders use {{category}} but no 'categories' are listed")
        if categories and not templated:
            raise LayoutError(f"{at}: 'categories' listed but no folder uses {{category}}")
        _text(d, "note", at)
        domains.append(DomainSpec(d["name"], fake, real, _text(d, "family", at), _text(d, "source", at),
                                  categories, d.get("real_root", False)))
    text = {k: _text(doc, k, where) for k in ("title", "source", "download", "data_root", "real_root")}
    return Benchmark(_text(doc, "name", where) or Path(where).stem, tuple(domains), path=where,
                     layout_roots=_layout_roots(doc, where), **text)


def load_benchmark(name_or_path: str | os.PathLike) -> Benchmark:
    """A benchmark file, or a built-in preset by name."""
    path = Path(name_or_path)
    if not path.is_file():
        preset = PRESET_DIR / f"{name_or_path}.json"
        if not preset.is_file():
            raise LayoutError(f"{name_or_path}: neither a benchmark file nor a preset; presets: "
                              f"{', '.join(available_presets())}")
        path = preset
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return parse_benchmark(doc, str(path))


def _locate(root: Path, rel: str) -> Path | None:
    """``root/rel``; or, when ``root`` is itself the first folder of ``rel``, ``root/rest``."""
    if rel in (".", ""):
        return root if root.is_dir() else None
    candidate = root / rel
    if candidate.is_dir():
        return candidate
    parts = Path(rel).parts
    if len(parts) > 1 and parts[0] == root.name:
        candidate = root.joinpath(*parts[1:])
        if candidate.is_dir():
            return candidate
    return None


def _bases(data_root: Path, layout_roots: tuple[str, ...]) -> list[Path]:
    """Where a benchmark's folders may start: the data root, each layout root below it, and the
    top of the published tree when the data root is one of its layout roots (UFD's ``datasets/test``)."""
    bases = [data_root] + [data_root / r for r in layout_roots]
    absolute = Path(os.path.abspath(data_root))  # the names as given: a symlinked root keeps its place
    for root in layout_roots:
        parts = Path(root).parts
        if len(absolute.parts) > len(parts) and absolute.parts[-len(parts):] == parts:
            bases.append(absolute.parents[len(parts) - 1])
    return list(dict.fromkeys(bases))


def _find(bases: list[Path], alternatives: Folder) -> Path | None:
    """The first alternative layout found under any base."""
    for rel in alternatives:
        for base in bases:
            folder = _locate(base, rel)
            if folder is not None:
                return folder
    return None


def _shared_folders(bench: Benchmark) -> set[tuple[bool, Folder]]:
    """Folders (after ``{category}``) that more than one domain reads: shared reals, never a domain's own."""
    uses: Counter = Counter()
    for spec in bench.domains:
        uses.update({(label == 0 and spec.real_root, tuple(f.replace("{category}", c) for f in folder))
                     for c in spec.categories or ("",) for label, folders in ((0, spec.real), (1, spec.fake))
                     for folder in folders})
    return {key for key, n in uses.items() if n > 1}


@dataclass
class _Roots:
    """What resolving one domain needs: the bases of each root, the listing memo, the shared folders."""

    data: list[Path]
    real: list[Path] | None
    real_hint: str
    shared: set[tuple[bool, Folder]]
    listing: dict[Path, list[str]] = field(default_factory=dict)  # reals shared by several domains: listed once

    def images(self, folder: Path) -> list[str]:
        if folder not in self.listing:
            self.listing[folder] = walk_images(folder)
        return self.listing[folder]


def _resolve_domain(spec: DomainSpec, roots: _Roots) -> tuple[list[TestSample], bool, list[str]]:
    """A domain's samples, whether a folder of its own was found, and its absent folders."""
    samples: list[TestSample] = []
    found_own, found_any, has_own, absent, absent_own = False, False, False, [], []
    for category in spec.categories or ("",):
        for label, folders in ((0, spec.real), (1, spec.fake)):
            from_real_root = label == 0 and spec.real_root
            bases = roots.real if from_real_root else roots.data
            for folder in folders:
                alternatives = tuple(f.replace("{category}", category) for f in folder)
                own = (from_real_root, alternatives) not in roots.shared
                has_own = has_own or own
                if bases is None:
                    hint = f": {roots.real_hint}" if roots.real_hint else ""
                    absent.append(f"reals {alternatives[0]} (from --real_root{hint})")
                    continue
                path = _find(bases, alternatives)
                files = roots.images(path) if path is not None else []
                if not files:
                    more = f" (or {len(alternatives) - 1} other layout(s))" if len(alternatives) > 1 else ""
                    absent.append(str(bases[0] / alternatives[0]) + ("" if path is None else " (no images)") + more)
                    absent_own += [absent[-1]] if own else []
                    continue
                found_any, found_own = True, found_own or own
                samples.extend(TestSample(p, label, spec.name, category, spec.family) for p in files)
    present = found_own if has_own else found_any
    return samples, present, (absent if present else absent_own or absent)


def resolve_benchmark(bench: Benchmark, data_root: str | os.PathLike, real_root: str | os.PathLike | None = None,
                      domains: list[str] | None = None) -> Resolved:
    """The test samples of every domain present under the roots; absent domains and folders listed.

    A domain counts as present when a folder of its own is found (its shared reals alone do not
    count); one whose reals (or fakes) are all missing comes back with one class, for
    :func:`deepfake.data.test_sets.check_pairing` to judge.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise LayoutError(f"{data_root}: no such directory (the --data_root of benchmark {bench.name!r})")
    if domains:
        known = [d.name for d in bench.domains]
        unknown = [g for g in domains if g not in known]
        if unknown:
            raise LayoutError(f"{bench.path}: unknown domain(s) {', '.join(unknown)}; the benchmark has {', '.join(known)}")
    roots = _Roots(_bases(data_root, bench.layout_roots), None if real_root is None else [Path(real_root)],
                   bench.real_root, _shared_folders(bench))
    samples: list[TestSample] = []
    present, missing = [], []
    for spec in bench.domains:
        if domains and spec.name not in domains:
            continue
        found, is_present, absent = _resolve_domain(spec, roots)
        if is_present:
            present.append(spec.name)
            samples.extend(found)
            missing.extend(f"{spec.name}: {a}" for a in absent)
        else:
            missing.append(f"{spec.name}: not found ({', '.join(absent[:2])}{', ...' if len(absent) > 2 else ''})")
    return Resolved(samples, present, missing)
