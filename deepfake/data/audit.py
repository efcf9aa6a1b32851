"""Bias audit: what besides generation artefacts tells a data set's reals from its fakes.

Per domain and class: file formats and files whose extension is not their format, JPEG quality
and whether the quantisation tables are the IJG standard ones (:mod:`deepfake.data.jpeg_tables`),
the distribution of image sizes (short-side percentiles, distinct sizes, the most common ones) and
how many are smaller than the tower's input, colour modes, EXIF / camera metadata, and the origin
the files declare (:mod:`deepfake.data.provenance`: a generator or a capture, by C2PA or IPTC
metadata, and the files whose declaration contradicts their label). Each difference between reals
and fakes that a detector could learn instead of artefacts is flagged with a one-line explanation
that follows the tower's :class:`Preprocess` record (a resizing tower and a native-pixel one are
fooled by different things). Only file headers are decoded (Pillow opens lazily, the pixels never
are; the provenance reader reads a JPEG's or PNG's metadata segments, and a whole file only to check
a C2PA signature); a class with more than ``--max_per_group``
images is sampled, and the report says so. ``python -m deepfake audit`` prints it; it also runs, summarised,
at the top of every training and evaluation run and is saved with its results. Given the feature
cache root, the probes are remembered there (:mod:`deepfake.utils.stamp_memo`), so a rerun on
unchanged files opens none of them; the report is the same either way.
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deepfake.config import DataConfig
from deepfake.data.image_io import IMAGE_FORMATS
from deepfake.data.jpeg_tables import match_ijg
from deepfake.data.preprocess import Preprocess
from deepfake.data.provenance import SUMMARIES, read_provenance
from deepfake.utils.stamp_memo import memo_path, memoized
from deepfake.utils.text import pct

log = logging.getLogger(__name__)

DEFAULT_MAX_PER_GROUP = DataConfig.audit_max  # one default: the config's
CLASS_NAMES = ("real", "fake")
PROBE_VERSION = 3  # what a probe records; part of the memo's identity, so older memos are not reused
EXIF_MAKE, EXIF_MODEL = 271, 272
HEADER_EXIF_FORMATS = {"TIFF", "MPO"}  # EXIF lives in their main header
JPEG_FORMATS = {"JPEG", "MPO"}  # MPO: a JPEG with more pictures after the first
# What a file's extension promises; other extensions are not judged.
EXTENSION_FORMATS = {
    **dict.fromkeys((".jpg", ".jpeg", ".jpe", ".jfif"), JPEG_FORMATS), ".png": {"PNG"}, ".webp": {"WEBP"},
    ".tif": {"TIFF"}, ".tiff": {"TIFF"}, ".bmp": {"BMP", "DIB"}, ".gif": {"GIF"},
}
SHARE_GAP = 0.2  # a format, mode, metadata or table share this much apart between the classes is flagged
MINOR_GAP = 0.1  # shares of exceptions (too small, misnamed) this much apart are flagged
SIZE_RATIO = 1.1  # short sides this far apart at the 10th, 50th or 90th percentile are flagged
ONE_SIZE_GAP = 0.5  # a size held by this much more of one class than of the other is flagged
TOP_SIZES = 5  # the most common sizes recorded per class
QUALITY_GAP = 5  # median JPEG qualities this far apart are flagged
RESIZING_MODES = ("resize", "squash")  # the Preprocess modes that resample; the others read native pixels


def probe_image(image: Image.Image) -> dict:
    """Header facts of an opened image: format, mode, size, JPEG tables, EXIF and camera tags."""
    info = {"format": image.format or "unknown", "mode": image.mode, "size": image.size}
    if image.format in JPEG_FORMATS:
        match = match_ijg(getattr(image, "quantization", None))
        if match is not None:
            info.update(jpeg_quality=match.quality, jpeg_standard=match.standard, jpeg_distance=match.distance)
    # Only where the header already holds it: Pillow's PNG getexif() decodes the whole image to look.
    exif = image.getexif() if (image.format in HEADER_EXIF_FORMATS or "exif" in image.info) else {}
    info["exif"] = len(exif) > 0
    info["camera"] = bool(exif.get(EXIF_MAKE) or exif.get(EXIF_MODEL))
    return info


def probe(path: str) -> dict:
    """:func:`probe_image` of a file and its extension, reading its header only (no pixel is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The loader's formats only: what training would not open is not described either.
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                info = {**probe_image(image), "ext": os.path.splitext(path)[1].lower()}
        return {**info, "provenance": read_provenance(path).summary}
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as exc:
        return {"error": str(exc) or type(exc).__name__}


def probe_from_json(stored: dict) -> dict:
    """A probe as :func:`probe` returns it, from its JSON form (raises ``ValueError`` on anything else)."""
    if "error" in stored:
        raise ValueError("failed probes are not stored")
    size = stored["size"]
    jpeg_ok = ("jpeg_quality" not in stored or (
        isinstance(stored["jpeg_quality"], int) and isinstance(stored["jpeg_standard"], bool)
        and isinstance(stored["jpeg_distance"], (int, float))))
    if not (isinstance(stored["format"], str) and isinstance(stored["mode"], str) and len(size) == 2
            and all(isinstance(v, int) for v in size) and isinstance(stored["exif"], bool)
            and isinstance(stored["camera"], bool) and isinstance(stored.get("ext", ""), str) and jpeg_ok
            and stored.get("provenance") in SUMMARIES):
        raise ValueError("malformed probe record")
    return {**stored, "size": tuple(size)}


def misnamed(info: dict) -> str | None:
    """``".png is JPEG"`` when a probed file's extension promises another format than its content."""
    expected = EXTENSION_FORMATS.get(info.get("ext", ""))
    if expected is None or info["format"] in expected:
        return None
    return f"{info['ext']} is {info['format']}"


def _shares(counter: Counter, n: int) -> dict:
    return {k: v / n for k, v in counter.most_common()} if n else {}


def sample_group(paths: list[str], max_per_group: int, rng: random.Random) -> list[str]:
    """The paths whose headers are read: all of them, or a sorted sample of ``max_per_group``."""
    return sorted(rng.sample(paths, max_per_group)) if len(paths) > max_per_group else paths


def _jpeg_stats(jpegs: list[dict]) -> dict | None:
    """Quality (the nearest IJG one) and how many JPEGs do not use standard tables."""
    if not jpegs:
        return None
    qualities = [p["jpeg_quality"] for p in jpegs]
    odd = [p["jpeg_distance"] for p in jpegs if not p["jpeg_standard"]]
    return {"median": float(np.median(qualities)), "min": int(min(qualities)), "max": int(max(qualities)),
            "exact_share": (len(jpegs) - len(odd)) / len(jpegs),  # share with standard IJG tables
            "nonstandard": len(odd),
            "nonstandard_quality": float(np.median([p["jpeg_quality"] for p in jpegs if not p["jpeg_standard"]]))
            if odd else None,
            "nonstandard_distance": float(statistics.median(odd)) if odd else None}


def summarize_probes(probes: list[dict], crop: int, total: int | None = None) -> dict:
    """Statistics of one group from its probes (``total``: the group's size when the probes are a sample)."""
    total = len(probes) if total is None else total
    good = [p for p in probes if "error" not in p]
    n = len(good)
    short = np.array([min(p["size"]) for p in good]) if good else np.zeros(0)
    jpegs = [p for p in good if "jpeg_quality" in p]
    formats, modes = Counter(p["format"] for p in good), Counter(p["mode"] for p in good)
    sizes = Counter(f"{p['size'][0]}x{p['size'][1]}" for p in good)
    return {
        "n": total, "probed": len(probes), "sampled": total > len(probes), "unreadable": len(probes) - n,
        "formats": dict(formats.most_common()), "format_shares": _shares(formats, n),
        "modes": dict(modes.most_common()), "mode_shares": _shares(modes, n),
        "jpeg": len(jpegs), "jpeg_quality": _jpeg_stats(jpegs),
        "short_side": ({"min": int(short.min()), "p10": float(np.percentile(short, 10)), "median": float(np.median(short)),
                        "p90": float(np.percentile(short, 90)), "max": int(short.max())} if n else None),
        "sizes": dict(sizes.most_common(TOP_SIZES)), "distinct_sizes": len(sizes),
        "smaller_than_crop": int(np.sum(short < crop)) if n else 0,
        "misnamed": dict(Counter(m for p in good if (m := misnamed(p))).most_common()),
        "exif": sum(p["exif"] for p in good), "camera": sum(p["camera"] for p in good),
        "declares_generated": sum(p.get("provenance") == "declared-generated" for p in good),
        "declares_captured": sum(p.get("provenance") == "declared-captured" for p in good),
        "n_read": n,
    }


def _pct(x: float) -> str:
    return pct(x, 0, "%")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _top(shares: dict) -> str:
    return ", ".join(f"{_pct(v)} {k}" for k, v in list(shares.items())[:3]) or "none"


def _resizes(pre: Preprocess) -> bool:
    return pre.mode in RESIZING_MODES


def tower_view(pre: Preprocess) -> str:
    """What the tower does to an image's pixels, as the hints say it."""
    if pre.mode == "resize":
        return f"resizes the short side to {pre.resize_size or pre.size} px and crops {pre.size} px"
    if pre.mode == "squash":
        return f"resizes every image to {pre.size}x{pre.size} px"
    if pre.mode == "crop":
        return f"crops {pre.size} px without resizing"
    if pre.mode == "window":
        return f"reads a native window of up to {pre.size} px, never resized"
    return f"reads {pre.grid}x{pre.grid} native tiles of {pre.size} px, never resized"


def _jpeg_hint(pre: Preprocess) -> str:
    if _resizes(pre):
        return "the tower's resizing blurs JPEG's 8x8 block grid but does not remove it"
    return "JPEG's 8x8 block grid reaches this tower unresized"


def _size_hint(pre: Preprocess) -> str:
    if _resizes(pre):
        return (f"the tower {tower_view(pre)}, so each class is resampled by its own factors and carries its own "
                f"interpolation traces (--align size:S resizes both)")
    tiles = (f", and its tiles overlap below {pre.grid * pre.size} px and spread apart above"
             if pre.mode == "tiles" else "")
    return (f"the tower {tower_view(pre)}, so it sees a different share of each class's frame at each class's own "
            f"scale{tiles} (--align size:S resizes both, at the cost of the native pixel grid this tower reads)")


def _one_size_hint(pre: Preprocess, name: str) -> str:
    if _resizes(pre):
        return (f"the tower {tower_view(pre)}, so every {name} is resampled by the same factor and carries one "
                f"interpolation trace a detector can learn (--align size:S resizes both; test on {name}s of other "
                f"sizes)")
    return (f"the tower {tower_view(pre)}, so it sees every {name} at one frame layout and scale, a cue a detector "
            f"can tie to the class (test on {name}s of other sizes)")


def _smaller_hint(pre: Preprocess) -> str:
    if _resizes(pre):
        target = f"{pre.resize_size or pre.size} px" if pre.mode == "resize" else f"{pre.size}x{pre.size} px"
        return f"the tower upsamples them to {target}, leaving upsampling traces that only one class has"
    if pre.mode == "window":
        return "the tower's window shrinks to their size and masks the rest, a layout that only one class has"
    what = f"{pre.size} px tiles are" if pre.mode == "tiles" else f"{pre.size} px crop is"
    return f"the tower's {what} zero-padded on them: black borders that only one class has"


def _gap(a: dict, b: dict) -> float:
    return max((abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b)), default=0.0)


def _flag(prop: str, finding: str, hint: str) -> dict:
    """A difference between the classes: what differs (``finding``) and why a detector could learn it (``hint``)."""
    return {"property": prop, "message": f"{finding}; {hint}", "hint": hint}


def _format_flags(real: dict, fake: dict, pre: Preprocess) -> list[dict]:
    """File formats and misnamed files."""
    flags = []
    if _gap(real["format_shares"], fake["format_shares"]) >= SHARE_GAP:
        jpeg = JPEG_FORMATS & (set(real["formats"]) | set(fake["formats"]))
        flags.append(_flag("format", f"format: reals {_top(real['format_shares'])}, fakes {_top(fake['format_shares'])}",
                           "a detector can learn the file format instead of generation artefacts ("
                           + (f"{_jpeg_hint(pre)}; " if jpeg else "") + "--align jpeg:Q re-encodes both)"))
    shares = [sum(s["misnamed"].values()) / s["n_read"] for s in (real, fake)]
    if abs(shares[0] - shares[1]) >= MINOR_GAP:
        def which(s: dict) -> str:
            return f" ({', '.join(f'{v} {k}' for k, v in s['misnamed'].items())})" if s["misnamed"] else ""
        flags.append(_flag("extension", f"file extension: {_pct(shares[0])} of reals{which(real)} and "
                           f"{_pct(shares[1])} of fakes{which(fake)} are not the format their extension names",
                           "one class went through another pipeline, and a step that trusts the extension (a format "
                           "filter, a lossless re-save) treats it differently"))
    return flags


def _quality(share: float, stats: dict | None) -> str:
    """``"100% JPEG at median quality 90"``, saying when the tables are not the IJG ones."""
    text = f"{_pct(share)} JPEG"
    if stats:
        text += f" at median quality {stats['median']:.0f}"
        if stats["exact_share"] < 1:
            text += f" (nearest IJG; {_pct(1 - stats['exact_share'])} with non-standard tables)"
    return text


def _tables(stats: dict) -> str:
    text = f"{_pct(stats['exact_share'])} standard IJG tables"
    if stats["nonstandard"]:
        text += (f", {stats['nonstandard']} non-standard (nearest IJG quality {stats['nonstandard_quality']:.0f}, "
                 f"mean distance {stats['nonstandard_distance']:.1f} per coefficient)")
    return text


def _jpeg_flags(real: dict, fake: dict, pre: Preprocess) -> list[dict]:
    """JPEG share and quality; standard against non-standard quantisation tables."""
    flags = []
    rj, fj = real["jpeg"] / real["n_read"], fake["jpeg"] / fake["n_read"]
    rq, fq = real["jpeg_quality"], fake["jpeg_quality"]
    if abs(rj - fj) >= SHARE_GAP or (rq and fq and abs(rq["median"] - fq["median"]) >= QUALITY_GAP):
        flags.append(_flag("jpeg_quality", f"JPEG quality: reals {_quality(rj, rq)}, fakes {_quality(fj, fq)}",
                           f"compression strength separates the classes ({_jpeg_hint(pre)}; --align jpeg:Q re-encodes "
                           f"both at one quality)"))
    if rq and fq and abs(rq["exact_share"] - fq["exact_share"]) >= SHARE_GAP:
        flags.append(_flag("jpeg_tables", f"quantisation tables: reals' JPEGs {_tables(rq)}; fakes' {_tables(fq)}",
                           f"a detector can learn the encoder instead of generation artefacts ({_jpeg_hint(pre)}; "
                           f"--align jpeg:Q re-encodes both with standard tables)"))
    return flags


def _top_size_share(own: dict, other: dict) -> tuple[str, float, float | None]:
    """(own most common size, its share of own, its share of other: ``None`` when not recorded).

    ``other`` records only its most common sizes; when the size is not among them, its share there
    is at most that of the least common recorded one, which the comparison then assumes.
    """
    top, count = next(iter(own["sizes"].items()))
    if top in other["sizes"] or other["distinct_sizes"] <= len(other["sizes"]):
        return top, count / own["n_read"], other["sizes"].get(top, 0) / other["n_read"]
    return top, count / own["n_read"], None


def _size_flags(real: dict, fake: dict, pre: Preprocess) -> list[dict]:
    """Short-side percentiles beyond the median, and one size for a whole class."""
    flags = []
    rs, fs = real["short_side"], fake["short_side"]
    if any(max(rs[k], fs[k]) / max(min(rs[k], fs[k]), 1) >= SIZE_RATIO for k in ("p10", "median", "p90")):
        flags.append(_flag("size", f"size: median short side reals {rs['median']:.0f} px, fakes {fs['median']:.0f} px "
                           f"(10th-90th percentile {rs['p10']:.0f}-{rs['p90']:.0f} and {fs['p10']:.0f}-{fs['p90']:.0f} px)",
                           _size_hint(pre)))
    candidates = []
    for (name, own), (other_name, other) in ((("real", real), ("fake", fake)), (("fake", fake), ("real", real))):
        top, share, elsewhere = _top_size_share(own, other)
        bound = elsewhere if elsewhere is not None else min(other["sizes"].values()) / other["n_read"]
        if share - bound >= ONE_SIZE_GAP:
            at = f"{_pct(elsewhere)} at {top}" if elsewhere is not None else \
                f"{top} not among their {len(other['sizes'])} most common"
            candidates.append((share - bound, _flag("one_size", f"one size: {_pct(share)} of {name}s are {top}, "
                               f"{other_name}s come in {_count(other['distinct_sizes'], 'size')}, {at}",
                               _one_size_hint(pre, name))))
    if candidates:
        flags.append(max(candidates, key=lambda c: c[0])[1])
    rc, fc = real["smaller_than_crop"] / real["n_read"], fake["smaller_than_crop"] / fake["n_read"]
    if abs(rc - fc) >= MINOR_GAP:
        flags.append(_flag("smaller_than_crop", f"smaller than {pre.size} px: {_pct(rc)} of reals, {_pct(fc)} of fakes",
                           _smaller_hint(pre)))
    return flags


def _image_flags(real: dict, fake: dict) -> list[dict]:
    """Colour modes and metadata."""
    flags = []
    if _gap(real["mode_shares"], fake["mode_shares"]) >= SHARE_GAP:
        flags.append(_flag("mode", f"colour mode: reals {_top(real['mode_shares'])}, fakes {_top(fake['mode_shares'])}",
                           "grayscale, palette or alpha images convert to RGB with their own statistics"))
    re_, fe = real["exif"] / real["n_read"], fake["exif"] / fake["n_read"]
    if abs(re_ - fe) >= SHARE_GAP:
        flags.append(_flag("exif", f"metadata: EXIF in {_pct(re_)} of reals ({_pct(real['camera'] / real['n_read'])} "
                           f"with camera make/model), {_pct(fe)} of fakes",
                           "EXIF orientation rotates one class only, and any metadata-aware step separates the classes"))
    return flags


# The declaration that contradicts each class's label.
CONTRADICTING = {"real": "declared-generated", "fake": "declared-captured"}
MAX_EXAMPLES = 5  # contradicting files named per class


def contradicting(name: str, paths: list[str], probes: dict[str, dict]) -> list[str]:
    """The ``paths`` of class ``name`` whose files declare the other class's origin (reals a generator, fakes a camera)."""
    return [p for p in paths if probes[p].get("provenance") == CONTRADICTING[name]]


def _provenance_flags(real: dict, fake: dict) -> list[dict]:
    """Declared origins (C2PA, IPTC XMP): apart between the classes, or against a file's label."""
    flags = []
    shares = {k: (real.get(k, 0) / real["n_read"], fake.get(k, 0) / fake["n_read"])
              for k in ("declares_generated", "declares_captured")}
    if any(abs(r - f) >= SHARE_GAP for r, f in shares.values()):
        (rg, fg), (rc, fc) = shares.values()
        flags.append({"property": "provenance", "message":
                      f"declared origin: a generator in {_pct(rg)} of reals and {_pct(fg)} of fakes, a capture in "
                      f"{_pct(rc)} of reals and {_pct(fc)} of fakes (C2PA or IPTC metadata); anything that reads "
                      f"the file's metadata gets the label free, though the pixels this tower reads do not carry it"})
    classes = (("real", real), ("fake", fake))
    wrong = [(name, s.get("contradicting", 0), s.get("contradicting_examples", [])) for name, s in classes]
    if any(n for _, n, _ in wrong):
        flags.append({"property": "provenance-label", "message": "declared origin against the label: " + "; ".join(
            f"{_count(n, name)} declaring {'a generator' if name == 'real' else 'a capture'} "
            f"(e.g. {', '.join(examples)})" for name, n, examples in wrong if n)})
    return flags


def compare_classes(real: dict, fake: dict, preprocess: Preprocess) -> list[dict]:
    """Flags for every property in which reals and fakes differ enough for a detector to learn it.

    The hints say what the difference does to what this tower reads (``preprocess``: its record).
    """
    if not real.get("n_read") or not fake.get("n_read"):
        return []
    parts = getattr(preprocess, "parts", None)
    if parts:  # a fused tower: what each part reads, each flag once
        flags: list[dict] = []
        for part in parts:
            flags += [flag for flag in compare_classes(real, fake, part) if flag not in flags]
        return flags
    return (_format_flags(real, fake, preprocess) + _jpeg_flags(real, fake, preprocess)
            + _size_flags(real, fake, preprocess) + _image_flags(real, fake) + _provenance_flags(real, fake))


def _memo_identity(groups: dict[tuple[str, int], list[str]], seed: int, max_per_group: int) -> dict:
    """What decides the sample: the data set's folder, the groups, the seed and the sample size."""
    ends = [p for paths in groups.values() for p in (paths[0], paths[-1])]  # each group is sorted
    try:
        # The common folder of the lexicographically first and last path is that of every path between.
        root = os.path.abspath(os.path.commonpath(ends))
    except ValueError:  # absolute and relative paths mixed: relative ones are relative to here
        root = os.getcwd()
    return {"root": os.fsdecode(root), "seed": seed, "max_per_group": max_per_group,
            "groups": sorted([domain, label] for domain, label in groups), "probe": PROBE_VERSION}


def audit_samples(items: list[tuple[str, str, int]], preprocess: Preprocess | None = None,
                  max_per_group: int = DEFAULT_MAX_PER_GROUP, seed: int = 0,
                  cache_root: str | os.PathLike | None = None) -> dict:
    """Audit ``(path, domain, label)`` items: statistics per domain and class, and flags per domain.

    ``preprocess``: the record of the tower the images are for (``None``: the default tower's
    resize to 224 px); images smaller than its size are counted and the hints follow its mode.
    With several domains, all of them pooled are audited too (as ``all``). ``cache_root``: the
    feature cache root, where the header probes are remembered between runs (``None``: no memo).
    """
    preprocess = preprocess or Preprocess()
    crop = preprocess.size
    groups: dict[tuple[str, int], list[str]] = {}
    for path, domain, label in items:
        groups.setdefault((domain, label), []).append(path)
    for paths in groups.values():
        paths.sort()
    domains = list(dict.fromkeys(d for _, d, _ in items))
    # Which headers each group reads: (pooled, domain, class name, the group's size, the sample).
    plan: list[tuple[bool, str, str, int, list[str]]] = []
    for domain in domains:
        for label in (0, 1):
            paths = groups.get((domain, label), [])
            if paths:
                plan.append((False, domain, CLASS_NAMES[label], len(paths),
                             sample_group(paths, max_per_group, random.Random(f"{seed}:{domain}:{label}"))))
    if len(domains) > 1:
        for label in (0, 1):
            paths = sorted({p for (d, lab), ps in groups.items() if lab == label for p in ps})
            if paths:
                plan.append((True, "all", CLASS_NAMES[label], len(paths),
                             sample_group(paths, max_per_group, random.Random(f"{seed}:all:{label}"))))
    identity = _memo_identity(groups, seed, max_per_group) if cache_root is not None and groups else None
    memo = memo_path(Path(cache_root), "audit", identity) if identity is not None else None
    # Reals shared by several domains (and the pooled groups) are read once.
    probes = memoized((p for *_, chosen in plan for p in chosen), probe, memo, identity, probe_from_json)

    view = {k: v for k, v in preprocess.to_dict().items() if k in ("mode", "size", "resize_size", "grid")}
    report = {"crop": crop, "preprocess": view, "max_per_group": max_per_group, "seed": seed, "domains": {}, "flags": []}
    pooled: dict[str, dict] = {}
    for is_pooled, domain, name, total, chosen in plan:
        stats = summarize_probes([probes[p] for p in chosen], crop, total)
        against = contradicting(name, chosen, probes)
        stats.update(contradicting=len(against), contradicting_examples=against[:MAX_EXAMPLES])
        if is_pooled:
            pooled[name] = stats
        else:
            report["domains"].setdefault(domain, {})[name] = stats
    for domain, entry in report["domains"].items():
        if len(entry) == 2:
            report["flags"].extend({"domain": domain, **f} for f in compare_classes(entry["real"], entry["fake"],
                                                                                    preprocess))
    if len(domains) > 1:
        report["pooled"] = pooled
        if len(pooled) == 2:
            report["flags"].extend({"domain": "all", **f} for f in compare_classes(pooled["real"], pooled["fake"],
                                                                                 preprocess))
    report["sampled"] = sorted({f"{d}/{name}" for d, entry in report["domains"].items()
                                for name, s in entry.items() if s["sampled"]})
    return report


def _jpeg_line(q: dict | None) -> str:
    if not q:
        return ""
    text = f"; JPEG q {q['min']}-{q['max']} (median {q['median']:.0f}"
    if not q["nonstandard"]:
        return text + ", standard IJG tables)"
    return text + (f"; {q['nonstandard']} with non-standard quantisation tables, nearest IJG quality "
                   f"{q['nonstandard_quality']:.0f} at a mean distance of {q['nonstandard_distance']:.1f})")


def _size_line(s: dict, crop: int) -> str:
    side = s["short_side"]
    if not side:
        return ""
    top, count = next(iter(s["sizes"].items()))
    common = (f"1 size ({top})" if s["distinct_sizes"] == 1 else
              f"{_count(s['distinct_sizes'], 'size')} (most common {top}, {_pct(count / s['n_read'])})")
    return (f"; short side {side['min']}-{side['max']} px (median {side['median']:.0f}), {common}, "
            f"{s['smaller_than_crop']} below {crop}")


def format_class(domain: str, name: str, s: dict, crop: int) -> str:
    """One line of a domain and class's statistics."""
    sampled = f" ({s['probed']} sampled)" if s["sampled"] else ""
    misnamed_files = sum(s["misnamed"].values())
    return (f"{domain}/{name}: {s['n']} images{sampled}; {_top(s['format_shares'])}"
            + (f" ({misnamed_files} misnamed: {', '.join(f'{v} {k}' for k, v in s['misnamed'].items())})"
               if misnamed_files else "")
            + _jpeg_line(s["jpeg_quality"]) + _size_line(s, crop)
            + f"; modes {_top(s['mode_shares'])}; EXIF {s['exif']}, camera {s['camera']}"
            + (f"; declares generated {s['declares_generated']}, captured {s['declares_captured']}"
               if s.get("declares_generated") or s.get("declares_captured") else "")
            + (f"; {s['unreadable']} unreadable" if s["unreadable"] else ""))


def _flag_lines(flags: list[dict]) -> list[str]:
    """A line per flag; an explanation already given (the same property in another domain) is not repeated."""
    said, lines = set(), []
    for f in flags:
        hint = f.get("hint")
        if hint and hint in said and f["message"].endswith(f"; {hint}"):
            lines.append(f"  [{f['domain']}] {f['message'][: -len(hint) - 2]} (as above)")
        else:
            lines.append(f"  [{f['domain']}] {f['message']}")
        said.add(hint)
    return lines


def format_audit(report: dict, brief: bool = False) -> str:
    """The audit as text: the flags (brief), or a line per domain and class followed by the flags."""
    lines = []
    if not brief:
        lines.extend(format_class(domain, name, s, report["crop"])
                     for domain, entry in report["domains"].items() for name, s in entry.items())
    flags = report["flags"]
    if flags:
        lines.append(f"bias audit: {len(flags)} difference(s) between reals and fakes a detector could learn "
                     f"instead of generation artefacts:")
        lines.extend(_flag_lines(flags))
    else:
        lines.append("bias audit: no format, quality, size, mode, metadata or declared-origin difference flagged "
                     "between reals and fakes")
    if report.get("sampled"):
        lines.append(f"  (audited a sample of up to {report['max_per_group']} headers per class in: "
                     f"{', '.join(report['sampled'][:8])}{' ...' if len(report['sampled']) > 8 else ''})")
    return "\n".join(lines)
