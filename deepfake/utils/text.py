"""Text in and out: comma-separated lists parsed one way everywhere, and shares printed one way."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


def split_list(value: str | Iterable[str] | None) -> list[str] | None:
    """``"a, b"`` or ``("a", "b")`` -> ``["a", "b"]``; empty or ``None`` -> ``None``."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    items = [t.strip() for t in items if t.strip()]
    return items or None


def parse_list(text: str, kind: Callable[[str], T]) -> list[T]:
    """``"1,2, 3"`` -> ``[kind("1"), kind("2"), kind("3")]`` (empty items ignored)."""
    return [kind(t) for t in split_list(text) or []]


def pct(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """A share as a percentage (``0.1234`` -> ``12.34``); ``n/a`` for a missing or undefined one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.{digits}f}{suffix}"
