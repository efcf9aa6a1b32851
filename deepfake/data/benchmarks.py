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
for each listed category; images are found recursively. Built-in presets live in
``deepfake/data/benchmark_presets/`` and are named by their file name. A preset whose folders are
only partly present evaluates what is there and lists what is missing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from deepfake.data.image_io import walk_images
from deepfake.data.layouts import LayoutError
from deepfake.data.test_sets import TestSample

PRESET_DIR = Path(__file__).resolve().parent / "benchmark_presets"
FORMAT = "deepfake-benchmark/1"
DOMAIN_KEYS = {"name", "fake", "real", "family", "source", "categories", "real_root", "note"}


@dataclass(frozen=True)
class DomainSpec:
    """One test domain: its fake and real folders, family and source."""

    name: str
    fake: tuple[str, ...]
    real: tuple[str, ...]
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


def _strings(value, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise LayoutError(f"{where}: {key!r} must be a folder or a list of folders (strings)")
    for v in value:
        if os.path.isabs(v) or ".." in Path(v).parts:
            raise LayoutError(f"{where}: {key!r} folder {v!r} must be relative to the data root, without '..'")
    return tuple(value)


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
        categories = tuple(d.get("categories") or ())
        fake, real = _strings(d["fake"], at, "fake"), _strings(d["real"], at, "real")
        templated = any("{category}" in f for f in fake + real)
        if templated and not categories:
            raise LayoutError(f"{at}: folders use {{category}} but no 'categories' are listed")
        if categories and not templated:
            raise LayoutError(f"{at}: 'categories' listed but no folder uses {{category}}")
        domains.append(DomainSpec(d["name"], fake, real, str(d.get("family") or ""), str(d.get("source") or ""),
                                  categories, bool(d.get("real_root", False))))
    text = {k: str(doc.get(k) or "") for k in ("title", "source", "download", "data_root", "real_root")}
    return Benchmark(str(doc.get("name") or Path(where).stem), tuple(domains), path=where, **text)


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


def resolve_benchmark(bench: Benchmark, data_root: str | os.PathLike, real_root: str | os.PathLike | None = None,
                      domains: list[str] | None = None) -> Resolved:
    """The test samples of every domain present under the roots; absent domains and folders listed.

    A domain counts as present when any of its folders is found; one whose reals (or fakes)
    are all missing comes back with one class, for :func:`deepfake.data.test_sets.check_pairing` to judge.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise LayoutError(f"{data_root}: no such directory (the --data_root of benchmark {bench.name!r})")
    if domains:
        known = [d.name for d in bench.domains]
        unknown = [g for g in domains if g not in known]
        if unknown:
            raise LayoutError(f"{bench.path}: unknown domain(s) {', '.join(unknown)}; the benchmark has {', '.join(known)}")
    listing: dict[Path, list[str]] = {}  # reals shared by several domains are listed once

    def images(folder: Path) -> list[str]:
        if folder not in listing:
            listing[folder] = walk_images(folder)
        return listing[folder]

    samples: list[TestSample] = []
    present, missing = [], []
    for spec in bench.domains:
        if domains and spec.name not in domains:
            continue
        found_any, absent = False, []
        for category in spec.categories or ("",):
            for label, folders in ((0, spec.real), (1, spec.fake)):
                from_real_root = label == 0 and spec.real_root
                base = Path(real_root) if (from_real_root and real_root is not None) else data_root
                for rel in folders:
                    rel = rel.replace("{category}", category)
                    if from_real_root and real_root is None:
                        absent.append(f"reals {rel} (from --real_root{': ' + bench.real_root if bench.real_root else ''})")
                        continue
                    folder = _locate(base, rel)
                    files = images(folder) if folder is not None else []
                    if not files:
                        absent.append(str(base / rel) + ("" if folder is None else " (no images)"))
                        continue
                    found_any = True
                    samples.extend(TestSample(p, label, spec.name, category, spec.family) for p in files)
        if found_any:
            present.append(spec.name)
            missing.extend(f"{spec.name}: {a}" for a in absent)
        else:
            missing.append(f"{spec.name}: not found ({', '.join(absent[:2])}{', ...' if len(absent) > 2 else ''})")
    return Resolved(samples, present, missing)
