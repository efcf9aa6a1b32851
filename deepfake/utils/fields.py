"""Checks of a stored JSON document, one table row per field: a loader reads what it expects or says why not.

A table lists each field by its dotted path (``preprocess.mean``) with a check and whether it is
required; :func:`check_fields` walks the rows in order and stops at the first field that is missing
or wrong, naming the file, the field, the value found and what was expected. A field whose parent
is absent is skipped (the parent's own row decides whether that is allowed). Adding a field is one
row; the checks are small factories (:func:`integer`, :func:`number`, :func:`sequence`, ...).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# A check returns None when the value is fine, else what was expected ("a whole number in 1..8").
Check = Callable[[Any], "str | None"]


@dataclass(frozen=True)
class FieldRule:
    """One field of a document: its dotted path, its check, and whether it must be there."""

    path: str
    check: Check
    required: bool = False


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_fields(doc: dict, rules: Iterable[FieldRule], where: str, what: str = "config",
                 error: type[Exception] = ValueError) -> None:
    """Raise ``error`` naming ``where`` and the first field of ``doc`` that breaks its rule."""
    if not isinstance(doc, dict):
        raise error(f"{where}: {what} is a JSON {type(doc).__name__}, not an object of fields")
    for rule in rules:
        parent_path, _, key = rule.path.rpartition(".")
        parent = doc
        for part in parent_path.split(".") if parent_path else ():
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        if key not in parent:
            if rule.required:
                raise error(f"{where}: {what} has no field {rule.path!r} (expected {rule.check(None) or 'a value'})")
            continue
        problem = rule.check(parent[key])
        if problem:
            raise error(f"{where}: {what} field {rule.path!r} is {_shown(parent[key])}: expected {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(lo: int, hi: int) -> Check:
    """A JSON whole number in ``lo..hi`` (``1e12`` is a float, and refused)."""
    return lambda v: None if _is_int(v) and lo <= v <= hi else f"a whole number in {lo}..{hi}"


def number(lo: float = -math.inf, hi: float = math.inf, above: bool = False) -> Check:
    """A finite number in [lo, hi] (``above``: strictly greater than ``lo``)."""
    low = f"> {lo:g}" if above else f">= {lo:g}"
    span = f"a finite number {low}" + (f" and <= {hi:g}" if hi != math.inf else "")
    return lambda v: None if _is_number(v) and (v > lo if above else v >= lo) and v <= hi else span


def text(*choices: str, pattern: str | None = None) -> Check:
    """A non-empty string (one of ``choices`` when given, or matching ``pattern``)."""
    regex = re.compile(pattern) if pattern else None
    if choices:
        return lambda v: None if v in choices else f"one of {', '.join(map(repr, choices))}"
    what = f"a string matching {pattern}" if pattern else "a non-empty string"
    return lambda v: None if isinstance(v, str) and v.strip() and (regex is None or regex.fullmatch(v)) else what


def sequence(item: Check, length: int | None = None, min_length: int = 0, item_what: str = "") -> Check:
    """A list of items passing ``item`` (exactly ``length`` of them, or at least ``min_length``)."""
    items = item_what or "items"
    what = (f"a list of {length} {items}" if length is not None
            else f"a list of at least {min_length} {items}" if min_length else f"a list of {items}")

    def check(value: Any) -> str | None:
        ok = isinstance(value, list) and (len(value) == length if length is not None else len(value) >= min_length)
        return None if ok and all(item(v) is None for v in value) else what

    return check


def mapping() -> Check:
    """A JSON object (its own fields have rows of their own)."""
    return lambda v: None if isinstance(v, dict) else "an object"


def boolean() -> Check:
    return lambda v: None if isinstance(v, bool) else "true or false"


def nullable(check: Check) -> Check:
    """``null`` or what ``check`` accepts."""

    def either(value: Any) -> str | None:
        problem = check(value) if value is not None else None
        return f"null or {problem}" if problem else None

    return either


def sha256_hex() -> Check:
    return text(pattern=r"[0-9a-f]{64}")
