"""The IJG (libjpeg) standard quantisation tables, and how near a JPEG's own tables are to them.

libjpeg's ``jpeg_set_quality`` (jcparam.c) scales the example tables of the JPEG standard (ITU-T
T.81 Annex K.1 luminance, K.2 chrominance) for quality Q by ``5000 / Q`` below 50 and
``200 - 2 Q`` from 50 (integer division), takes ``(base * scale + 50) / 100`` (integer division),
raises zeros to 1 and clamps at 255 for baseline JPEG (what Pillow, ImageMagick and most software
write) or, without ``force_baseline`` (cjpeg's default), only at 32767: the two differ below
quality 24. Tables equal to these for one quality are *standard*: libjpeg, or software copying
its tables, wrote the file at that quality. Anything else (a camera's, Photoshop's, mozjpeg's or
a service's own encoder) is *non-standard*; its nearest IJG quality is then only a description,
given with the mean absolute difference per coefficient to that quality's tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Annex K.1 and K.2, in natural (row-major) order, as Pillow's ``Image.quantization`` lists them.
ANNEX_K_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
ANNEX_K_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32, dtype=np.int64)
QUALITIES = np.arange(1, 101)
BASELINE_MAX, EXTENDED_MAX = 255, 32767


def ijg_scale(quality: int) -> int:
    """libjpeg's ``jpeg_quality_scaling``: the percentage the Annex K tables are scaled by."""
    quality = min(max(int(quality), 1), 100)
    return 5000 // quality if quality < 50 else 200 - 2 * quality


def ijg_table(base: np.ndarray, quality: int, baseline: bool = True) -> np.ndarray:
    """``base`` (an Annex K table) scaled to ``quality`` as ``jpeg_add_quant_table`` does."""
    return np.clip((base * ijg_scale(quality) + 50) // 100, 1, BASELINE_MAX if baseline else EXTENDED_MAX)


# [clamp (baseline, extended), quality 1..100, table kind (luma, chroma), 64]
_CANDIDATES = np.array([[[ijg_table(base, int(q), baseline) for base in (ANNEX_K_LUMA, ANNEX_K_CHROMA)]
                         for q in QUALITIES] for baseline in (True, False)])


@dataclass(frozen=True)
class TableMatch:
    """A JPEG's quantisation tables against the IJG ones."""

    quality: int  # the nearest IJG quality (the exact one when ``standard``)
    standard: bool  # every table equals the IJG table of that quality
    distance: float  # mean |difference| per coefficient to that quality's tables (0.0 when standard)


def match_ijg(quantization: Mapping[int, Sequence[int]] | None) -> TableMatch | None:
    """The IJG quality whose tables are nearest to a JPEG's (``None`` without 64-entry tables).

    Table 0 is compared with the luminance table and every other with the chrominance one, as
    libjpeg assigns them. Ties go to the higher quality.
    """
    if not quantization:
        return None
    ids = sorted(quantization)
    tables = np.array([list(quantization[i]) for i in ids], dtype=np.int64)
    if tables.ndim != 2 or tables.shape[1] != 64 or 0 not in quantization:
        return None
    kinds = np.minimum(np.array(ids), 1)
    # Mean |difference| for every quality, the nearer of the baseline and the extended clamp.
    errors = np.abs(_CANDIDATES[:, :, kinds, :] - tables).mean(axis=(2, 3)).min(axis=0)
    best = len(QUALITIES) - 1 - int(np.argmin(errors[::-1]))  # the highest quality among the nearest
    distance = float(errors[best])
    return TableMatch(int(QUALITIES[best]), distance == 0.0, round(distance, 3))
