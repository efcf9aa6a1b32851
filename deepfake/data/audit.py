"""Bias audit: what besides generation artefacts tells a data set's reals from its fakes.

Per domain and class: file formats, JPEG quality (estimated from the quantisation tables),
image sizes and how many are smaller than the crop, colour modes, and EXIF / camera metadata.
Each difference between reals and fakes that a detector could learn instead of artefacts is
flagged with a one-line explanation. Only file headers are read (Pillow opens lazily, the
pixels are never decoded); a class with more than ``--max_per_group`` images is sampled, and
the report says so. ``python -m deepfake audit`` prints it; it also runs, summarised, at the
top of every training and evaluation run and is saved with its results. Given the feature cache
root, the probes are remembered there (:mod:`deepfake.utils.stamp_memo`), so a rerun on unchanged
files opens none of them; the report is the same either way.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deepfake.config import DataConfig
from deepfake.utils.stamp_memo import memo_path, memoized
from deepfake.utils.text import pct

log = logging.getLogger(__name__)

DEFAULT_MAX_PER_GROUP = DataConfig.audit_max  # one default: the config's
CLASS_NAMES = ("real", "fake")
# The IJG (libjpeg) quality-50 tables in natural order; quality Q scales them (jcparam.c).
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
EXIF_MAKE, EXIF_MODEL = 271, 272
HEADER_EXIF_FORMATS = {"TIFF", "MPO"}  # EXIF lives in their main header
SHARE_GAP = 0.2  # a format, mode or metadata share this much apart between the classes is flagged
SIZE_RATIO = 1.1  # median short sides this far apart are flagged


def _ijg_table(quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((IJG_LUMA * scale + 50) // 100, 1, 255)


IJG_TABLES = {q: _ijg_table(q) for q in range(1, 101)}


def estimate_jpeg_quality(quantization: dict) -> tuple[int, bool] | None:
    """(quality, exact) of the IJG table closest to the luminance table; ``exact`` when it matches."""
    if not quantization or 0 not in quantization:
        return None
    table = np.asarray(list(quantization[0]), dtype=np.int64)
    if table.shape != (64,):
        return None
    errors = {q: int(np.abs(t - table).sum()) for q, t in IJG_TABLES.items()}
    best = min(errors, key=lambda q: (errors[q], -q))
    return best, errors[best] == 0


def probe_image(image: Image.Image) -> dict:
    """Header facts of an opened image: format, mode, size, JPEG quality, EXIF and camera tags."""
    info = {"format": image.format or "unknown", "mode": image.mode, "size": image.size}
    if image.format == "JPEG":
        quality = estimate_jpeg_quality(getattr(image, "quantization", None))
        if quality is not None:
            info["jpeg_quality"], info["jpeg_exact"] = quality
    # Only where the header already holds it: Pillow's PNG getexif() decodes the whole image to look.
    exif = image.getexif() if (image.format in HEADER_EXIF_FORMATS or "exif" in image.info) else {}
    info["exif"] = len(exif) > 0
    info["camera"] = bool(exif.get(EXIF_MAKE) or exif.get(EXIF_MODEL))
    return info


def probe(path: str) -> dict:
    """:func:`probe_image` of a file, reading its header only (the pixels are never decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                return probe_image(image)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as exc:
        return {"error": str(exc) or type(exc).__name__}


def probe_from_json(stored: dict) -> dict:
    """A probe as :func:`probe` returns it, from its JSON form (raises ``ValueError`` on anything else)."""
    if "error" in stored:
        raise ValueError("failed probes are not stored")
    size = stored["size"]
    if not (isinstance(stored["format"], str) and isinstance(stored["mode"], str) and len(size) == 2
            and all(isinstance(v, int) for v in size) and isinstance(stored["exif"], bool)
            and isinstance(stored["camera"], bool) and isinstance(stored.get("jpeg_quality", 0), int)
            and isinstance(stored.get("jpeg_exact", False), bool)):
        raise ValueError("malformed probe record")
    return {**stored, "size": tuple(size)}


def _shares(counter: Counter, n: int) -> dict:
    return {k: v / n for k, v in counter.most_common()} if n else {}


def sample_group(paths: list[str], max_per_group: int, rng: random.Random) -> list[str]:
    """The paths whose headers are read: all of them, or a sorted sample of ``max_per_group``."""
    return sorted(rng.sample(paths, max_per_group)) if len(paths) > max_per_group else paths


def summarize_probes(probes: list[dict], crop: int, total: int | None = None) -> dict:
    """Statistics of one group from its probes (``total``: the group's size when the probes are a sample)."""
    total = len(probes) if total is None else total
    chosen = probes
    good = [p for p in probes if "error" not in p]
    n = len(good)
    short = np.array([min(p["size"]) for p in good]) if good else np.zeros(0)
    qualities = [p["jpeg_quality"] for p in good if "jpeg_quality" in p]
    formats = Counter(p["format"] for p in good)
    out = {
        "n": total, "probed": len(chosen), "sampled": total > len(chosen), "unreadable": len(probes) - n,
        "formats": dict(formats.most_common()), "format_shares": _shares(formats, n),
        "modes": dict(Counter(p["mode"] for p in good).most_common()),
        "mode_shares": _shares(Counter(p["mode"] for p in good), n),
        "jpeg": len(qualities),
        "jpeg_quality": ({"median": float(np.median(qualities)), "min": int(min(qualities)), "max": int(max(qualities)),
                          "exact_share": float(np.mean([p.get("jpeg_exact", False) for p in good if "jpeg_quality" in p]))}
                         if qualities else None),
        "short_side": ({"min": int(short.min()), "p10": float(np.percentile(short, 10)), "median": float(np.median(short)),
                        "p90": float(np.percentile(short, 90)), "max": int(short.max())} if n else None),
        "sizes": dict(Counter(f"{p['size'][0]}x{p['size'][1]}" for p in good).most_common(5)),
        "smaller_than_crop": int(np.sum(short < crop)) if n else 0,
        "exif": sum(p["exif"] for p in good), "camera": sum(p["camera"] for p in good),
    }
    out["n_read"] = n
    return out


def _pct(x: float) -> str:
    return pct(x, 0, "%")


def _top(shares: dict) -> str:
    return ", ".join(f"{_pct(v)} {k}" for k, v in list(shares.items())[:3]) or "none"


def compare_classes(real: dict, fake: dict, crop: int) -> list[dict]:
    """Flags for every property in which reals and fakes differ enough for a detector to learn it."""
    flags = []
    if not real.get("n_read") or not fake.get("n_read"):
        return flags

    def gap(a: dict, b: dict) -> float:
        return max((abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b)), default=0.0)

    if gap(real["format_shares"], fake["format_shares"]) >= SHARE_GAP:
        flags.append({"property": "format", "message":
                      f"format: reals {_top(real['format_shares'])}, fakes {_top(fake['format_shares'])}; a detector "
                      f"can learn the file format instead of generation artefacts (--align jpeg:Q re-encodes both)"})
    rj, fj = real["jpeg"] / real["n_read"], fake["jpeg"] / fake["n_read"]
    rq, fq = real["jpeg_quality"], fake["jpeg_quality"]
    if abs(rj - fj) >= SHARE_GAP or (rq and fq and abs(rq["median"] - fq["median"]) >= 5):
        def q(share, stats):
            return f"{_pct(share)} JPEG" + (f" at median quality {stats['median']:.0f}" if stats else "")
        flags.append({"property": "jpeg_quality", "message":
                      f"JPEG quality: reals {q(rj, rq)}, fakes {q(fj, fq)}; compression strength separates the "
                      f"classes (--align jpeg:Q re-encodes both at one quality)"})
    rs, fs = real["short_side"]["median"], fake["short_side"]["median"]
    if max(rs, fs) / max(min(rs, fs), 1) >= SIZE_RATIO:
        flags.append({"property": "size", "message":
                      f"size: median short side reals {rs:.0f} px, fakes {fs:.0f} px; resizing to the tower's input "
                      f"leaves different interpolation traces per class (--align size:S resizes both)"})
    rc, fc = real["smaller_than_crop"] / real["n_read"], fake["smaller_than_crop"] / fake["n_read"]
    if abs(rc - fc) >= 0.1:
        flags.append({"property": "smaller_than_crop", "message":
                      f"smaller than {crop} px: {_pct(rc)} of reals, {_pct(fc)} of fakes; in crop mode they get black "
                      f"borders that only one class has"})
    if gap(real["mode_shares"], fake["mode_shares"]) >= SHARE_GAP:
        flags.append({"property": "mode", "message":
                      f"colour mode: reals {_top(real['mode_shares'])}, fakes {_top(fake['mode_shares'])}; "
                      f"grayscale, palette or alpha images convert to RGB with their own statistics"})
    re_, fe = real["exif"] / real["n_read"], fake["exif"] / fake["n_read"]
    if abs(re_ - fe) >= SHARE_GAP:
        flags.append({"property": "exif", "message":
                      f"metadata: EXIF in {_pct(re_)} of reals ({_pct(real['camera'] / real['n_read'])} with camera "
                      f"make/model), {_pct(fe)} of fakes; EXIF orientation rotates one class only, and any "
                      f"metadata-aware step separates the classes"})
    return flags


def _memo_identity(groups: dict[tuple[str, int], list[str]], seed: int, max_per_group: int) -> dict:
    """What decides the sample: the data set's folder, the groups, the seed and the sample size."""
    ends = [p for paths in groups.values() for p in (paths[0], paths[-1])]  # each group is sorted
    try:
        # The common folder of the lexicographically first and last path is that of every path between.
        root = os.path.abspath(os.path.commonpath(ends))
    except ValueError:  # absolute and relative paths mixed: relative ones are relative to here
        root = os.getcwd()
    return {"root": os.fsdecode(root), "seed": seed, "max_per_group": max_per_group,
            "groups": sorted([domain, label] for domain, label in groups)}


def audit_samples(items: list[tuple[str, str, int]], crop: int = 224, max_per_group: int = DEFAULT_MAX_PER_GROUP,
                  seed: int = 0, cache_root: str | os.PathLike | None = None) -> dict:
    """Audit ``(path, domain, label)`` items: statistics per domain and class, and flags per domain.

    With several domains, all of them pooled are audited too (as ``all``). ``cache_root``: the
    feature cache root, where the header probes are remembered between runs (``None``: no memo).
    """
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

    report = {"crop": crop, "max_per_group": max_per_group, "seed": seed, "domains": {}, "flags": []}
    pooled: dict[str, dict] = {}
    for is_pooled, domain, name, total, chosen in plan:
        stats = summarize_probes([probes[p] for p in chosen], crop, total)
        if is_pooled:
            pooled[name] = stats
        else:
            report["domains"].setdefault(domain, {})[name] = stats
    for domain, entry in report["domains"].items():
        if len(entry) == 2:
            report["flags"].extend({"domain": domain, **f} for f in compare_classes(entry["real"], entry["fake"], crop))
    if len(domains) > 1:
        report["pooled"] = pooled
        if len(pooled) == 2:
            report["flags"].extend({"domain": "all", **f} for f in compare_classes(pooled["real"], pooled["fake"], crop))
    report["sampled"] = sorted({f"{d}/{name}" for d, entry in report["domains"].items()
                                for name, s in entry.items() if s["sampled"]})
    return report


def format_audit(report: dict, brief: bool = False) -> str:
    """The audit as text: the flags (brief), or a line per domain and class followed by the flags."""
    lines = []
    if not brief:
        for domain, entry in report["domains"].items():
            for name, s in entry.items():
                q = s["jpeg_quality"]
                side = s["short_side"]
                sampled = f" ({s['probed']} sampled)" if s["sampled"] else ""
                lines.append(
                    f"{domain}/{name}: {s['n']} images{sampled}; "
                    f"{_top(s['format_shares'])}"
                    + (f"; JPEG q {q['min']}-{q['max']} (median {q['median']:.0f})" if q else "")
                    + (f"; short side {side['min']}-{side['max']} px (median {side['median']:.0f}), "
                       f"{s['smaller_than_crop']} below {report['crop']}" if side else "")
                    + f"; modes {_top(s['mode_shares'])}; EXIF {s['exif']}, camera {s['camera']}"
                    + (f"; {s['unreadable']} unreadable" if s["unreadable"] else ""))
    flags = report["flags"]
    if flags:
        lines.append(f"bias audit: {len(flags)} difference(s) between reals and fakes a detector could learn "
                     f"instead of generation artefacts:")
        lines.extend(f"  [{f['domain']}] {f['message']}" for f in flags)
    else:
        lines.append("bias audit: no format, quality, size, mode or metadata difference flagged between reals and fakes")
    if report.get("sampled"):
        lines.append(f"  (audited a sample of up to {report['max_per_group']} headers per class in: "
                     f"{', '.join(report['sampled'][:8])}{' ...' if len(report['sampled']) > 8 else ''})")
    return "\n".join(lines)
