"""The command-line outputs of this checkout equal the golden files captured before the package refactor.

``tests/golden/make_golden.py`` ran the demo, a train -> test -> predict run and every ``--help`` on commit 8ff602d
and stored the normalized outputs in ``tests/data/golden/``. Here the same capture runs on this checkout, in a
tmp_path (every command runs there, with HOME and the caches there too: nothing is written into the repository),
and every file must equal its golden twin: text exactly, JSON as parsed objects with floats compared exactly,
after the refactor's intended changes (``INTENDED_TEXT``, ``INTENDED_JSON``) are made to the golden side.
The capture takes a few minutes on 2 CPU cores (the demo's 40 epochs and 620 synthetic images dominate); both
tests share one capture. The floats are this machine's and torch build's: regenerate the goldens from the old
commit's worktree (``python tests/golden/make_golden.py``) before comparing on another machine.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "golden"

# What the refactor changed on purpose, applied to the pre-refactor goldens before comparing; nothing else may differ.
INTENDED_TEXT = {
    # The commands' descriptions name the modules they point to by their new paths.
    "help_predict.txt": [("(deepfake.scoring)", "(deepfake.model.scoring)")],
    "help_split.txt": [(":mod:`deepfake.layouts`", ":mod:`deepfake.data.layouts`")],
}
# The bias audit counts the images smaller than the tower's input (256 px: the spectral tower's tiles),
# no longer smaller than a fixed 224.
INTENDED_JSON = {name: {("audit", "crop"): 256} for name in ("run.json", "results.json", "demo_run.json",
                                                             "demo_results.json")}


def _load_make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", REPO / "tests" / "golden" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no __pycache__ beside the script
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


make_golden = _load_make_golden()


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> Path:
    """The capture of this checkout, normalized like the golden files (one run for the whole module)."""
    base = tmp_path_factory.mktemp("golden")
    out = base / "out"
    make_golden.capture(out, REPO, work_dir=base / "work")
    return out


def _json_mismatch(expected, actual, where: str = "$") -> str | None:
    """The first place where two parsed JSON documents differ (floats exactly, NaN equal to NaN), or None."""
    if isinstance(expected, float) and isinstance(actual, float):
        if expected == actual or (math.isnan(expected) and math.isnan(actual)):
            return None
        return f"{where}: expected {expected!r}, got {actual!r}"
    if type(expected) is not type(actual):
        return f"{where}: expected {type(expected).__name__} {expected!r}, got {type(actual).__name__} {actual!r}"
    if isinstance(expected, dict):
        if set(expected) != set(actual):  # a JSON object's key order carries no meaning
            return f"{where}: keys differ: expected {sorted(expected)}, got {sorted(actual)}"
        for key in expected:
            found = _json_mismatch(expected[key], actual[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return f"{where}: expected {len(expected)} items, got {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            found = _json_mismatch(e, a, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if expected == actual else f"{where}: expected {expected!r}, got {actual!r}"


def _intended(name: str, expected: str) -> str:
    """The golden text with this refactor's intended changes made."""
    for old, new in INTENDED_TEXT.get(name, ()):
        assert old in expected, f"{name}: the intended change {old!r} -> {new!r} no longer applies"
        expected = expected.replace(old, new)
    if name in INTENDED_JSON:
        doc = json.loads(expected)
        for (*parents, key), value in INTENDED_JSON[name].items():
            node = doc
            for parent in parents:
                node = node[parent]
            node[key] = value
        expected = json.dumps(doc)
    return expected


def _mismatch(name: str, captured: Path) -> str | None:
    expected = _intended(name, (GOLDEN / name).read_text(encoding="utf-8"))
    actual_path = captured / name
    if not actual_path.is_file():
        return f"{name}: not written by the capture"
    actual = actual_path.read_text(encoding="utf-8")
    if name.endswith(".json"):
        found = _json_mismatch(json.loads(expected), json.loads(actual))
        return f"{name}: {found}" if found else None
    if expected == actual:
        return None
    diff = difflib.unified_diff(expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                                f"golden/{name}", f"captured/{name}")
    return "".join(diff)


def _golden_names(help_files: bool) -> list[str]:
    names = sorted(p.name for p in GOLDEN.iterdir() if p.is_file())
    return [n for n in names if n.startswith("help_") == help_files]


def _assert_all_match(names: list[str], captured: Path) -> None:
    assert names, f"no golden files in {GOLDEN}"
    problems = [found for name in names if (found := _mismatch(name, captured))]
    assert not problems, "\n".join(problems)


def test_demo_train_test_predict_outputs_match_the_pre_refactor_golden_files(captured):
    """stdout of demo/train/test/predict, best.json, run.json, results.json and the score CSVs are unchanged."""
    names = _golden_names(help_files=False)
    assert {"demo.txt", "train.txt", "test.txt", "predict.txt", "best.json", "run.json", "results.json",
            "scores.csv"} <= set(names)
    _assert_all_match(names, captured)


def test_every_command_help_matches_the_pre_refactor_golden_text(captured):
    """``deepfake --help``, ``deepfake COMMAND --help`` for every command and both scripts' --help are unchanged."""
    names = _golden_names(help_files=True)
    assert {f"help_{c}.txt" for c in make_golden.COMMANDS} <= set(names)
    _assert_all_match(names, captured)


def test_the_capture_writes_exactly_the_golden_file_set(captured):
    """No golden file is missing from the capture and the capture writes no file the goldens lack."""
    assert sorted(p.name for p in captured.iterdir()) == sorted(p.name for p in GOLDEN.iterdir() if p.is_file())
