"""The command-line outputs of this checkout equal the golden files.

``tests/golden/make_golden.py`` runs the demo, a train -> test -> predict run and every ``--help`` and stores the
normalized outputs in ``tests/data/golden/`` (first on commit 8ff602d, before the package refactor; last re-captured
through this test's own capture once the released detectors, provenance and fused towers were in). Here the same
capture runs on this checkout, in a tmp_path (every command runs there, with HOME and the caches there too: nothing
is written into the repository), and every file must equal its golden twin: text and JSON (as parsed objects)
exactly except for floats, which agree to ``FLOAT_RTOL``, after the intended changes since (``INTENDED_TEXT``,
``INTENDED_JSON``) are made to the golden side. Fields added on purpose whose values depend on the captured data
(``INTENDED_NEW_KEYS``: paths, ``*`` for any key) must be in the capture and are then left out of the comparison.
The capture takes a few minutes on 2 CPU cores (the demo's 40 epochs and 620 synthetic images dominate); both
tests share one capture. The floats are this machine's and torch build's: re-capture the goldens on another
machine before comparing there.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "golden"

# The goldens were last captured by this test's own capture (``captured`` below, with the flags PINNED keeps), once
# released detectors, provenance, fused towers, thread budgets and the numbers' intervals and OOD flags were in.
# What changes on purpose after that is listed here and made to the golden side before comparing; nothing else may
# differ.
INTENDED_TEXT: dict[str, list[tuple[str, str]]] = {}  # file -> [(old text, new text)]
INTENDED_JSON: dict[str, dict[tuple, object]] = {}  # file -> {path of a field: its new value}
INTENDED_NEW_KEYS: dict[str, list[tuple]] = {}  # file -> [path of a field added on purpose, ``*``: any key or item]
# Flags the capture passes to the demo and the training run, keeping defaults changed since the goldens were first
# made: --standardize off (the spectral towers standardise by default now), and the gray spectral analysis
# (`spectrum` reads colour now; `spectrum-tiles256` is the gray one, the demo's default).
PINNED = ("--standardize", "off", "--model", "spectrum-tiles256")


def _drop_new_key(doc, path: tuple, where: str = "$") -> str | None:
    """Remove the intended new key at ``path`` (``*``: every key, or every item of a list) from ``doc``; the first
    place it is missing."""
    head, *rest = path
    if isinstance(doc, list) and head == "*" and rest:  # every item of a list
        return next(filter(None, (_drop_new_key(item, tuple(rest), f"{where}[{i}]") for i, item in enumerate(doc))),
                    None)
    if isinstance(doc, list) and head == "*" and rest:
        for i, item in enumerate(doc):
            if found := _drop_new_key(item, tuple(rest), f"{where}[{i}]"):
                return found
        return None
    if not isinstance(doc, dict):
        return f"{where}: not an object"
    if head != "*" and head not in doc:
        return f"{where}: the intended new key {head!r} is missing"
    for key in list(doc) if head == "*" else [head]:
        if not rest:
            del doc[key]
        elif found := _drop_new_key(doc[key], tuple(rest), f"{where}.{key}"):
            return found
    return None


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
    make_golden.capture(out, REPO, work_dir=base / "work", pinned=PINNED)
    return out


# Since the capture the spectral tower computes its tiles one by one with a real FFT: the same features within
# float32 rounding (tests/test_spectrum.py compares them with the first formula), so scores, losses and thresholds
# move in their fifth digit. Anything that is not float rounding (a changed label, count, flag or option) still
# shows up: every other character must be equal.
FLOAT_RTOL = 1e-3
FLOAT_ATOL = 1e-12
_NUMBER = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")


def _close(expected: float, actual: float) -> bool:
    return math.isclose(expected, actual, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL) or (
        math.isnan(expected) and math.isnan(actual))


def _lines_match(expected: str, actual: str) -> bool:
    """Two text lines are equal outside their decimal numbers, and those agree to ``FLOAT_RTOL`` or to one unit
    of their last printed digit."""
    if _NUMBER.split(expected) != _NUMBER.split(actual):
        return False
    numbers = zip(_NUMBER.findall(expected), _NUMBER.findall(actual))
    return all(_close(float(e), float(a)) or abs(float(e) - float(a)) <= _last_digit(e) * 1.001 for e, a in numbers)


def _last_digit(printed: str) -> float:
    """One unit in the last printed place of a fixed-point number (0.0570 -> 1e-4): rounding may move it."""
    if "e" in printed.lower():
        return 0.0
    return 10.0 ** -len(printed.split(".")[1])


def _json_mismatch(expected, actual, where: str = "$") -> str | None:
    """The first place where two parsed JSON documents differ (floats to ``FLOAT_RTOL``, NaN equal to NaN), or None."""
    if isinstance(expected, float) and isinstance(actual, float):
        if _close(expected, actual):
            return None
        return f"{where}: expected {expected!r}, got {actual!r}"
    if type(expected) is not type(actual):
        return f"{where}: expected {type(expected).__name__} {expected!r}, got {type(actual).__name__} {actual!r}"
    if isinstance(expected, dict):
        # A JSON object's key order carries no meaning; it did change on purpose in train_args, which is
        # now the flattened typed config rather than the parsed command line (same keys, same values).
        if set(expected) != set(actual):
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
        actual_doc = json.loads(actual)
        for path in INTENDED_NEW_KEYS.get(name, ()):
            found = _drop_new_key(actual_doc, path)
            if found:
                return f"{name}: {found}"
        found = _json_mismatch(json.loads(expected), actual_doc)
        return f"{name}: {found}" if found else None
    expected_lines, actual_lines = expected.splitlines(), actual.splitlines()
    if len(expected_lines) == len(actual_lines) and all(map(_lines_match, expected_lines, actual_lines)):
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


def test_demo_train_test_predict_outputs_match_the_golden_files(captured):
    """stdout of demo/train/test/predict, best.json, run.json, results.json and the score CSVs are unchanged."""
    names = _golden_names(help_files=False)
    assert {"demo.txt", "train.txt", "test.txt", "predict.txt", "best.json", "run.json", "results.json",
            "scores.csv"} <= set(names)
    _assert_all_match(names, captured)


def test_every_command_help_matches_the_golden_text(captured):
    """``deepfake --help``, ``deepfake COMMAND --help`` for every command and both scripts' --help are unchanged."""
    names = _golden_names(help_files=True)
    assert {f"help_{c}.txt" for c in make_golden.COMMANDS} <= set(names)
    _assert_all_match(names, captured)


def test_the_capture_writes_exactly_the_golden_file_set(captured):
    """No golden file is missing from the capture and the capture writes no file the goldens lack."""
    assert sorted(p.name for p in captured.iterdir()) == sorted(p.name for p in GOLDEN.iterdir() if p.is_file())


def test_the_capture_runs_precision_auto_as_on_a_cpu_without_bf16_whatever_the_cpu(tmp_path):
    """On a CPU with native bf16 ``--precision auto`` resolves to bf16 and the runs record it; the goldens hold fp32.

    A ``sitecustomize`` makes every Python started here see such a CPU; the capture's commands must still resolve
    ``auto`` to fp32, so the capture is the same on both kinds of CPU."""
    simulated = tmp_path / "bf16-cpu"
    simulated.mkdir()
    (simulated / "sitecustomize.py").write_text(
        "import deepfake.utils.runtime as runtime\nruntime.cpu_has_bf16 = lambda: True\n", encoding="utf-8")
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\nfrom deepfake.utils.runtime import resolve_precision\n"
                     "print(resolve_precision('auto', torch.device('cpu')))\n", encoding="utf-8")
    env = make_golden._env(tmp_path, REPO)
    env["PYTHONPATH"] = f"{simulated}{os.pathsep}{REPO}"
    assert make_golden._run([str(probe)], tmp_path, env, []).strip() == "fp32"
    direct = subprocess.run([sys.executable, str(probe)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, check=True)
    assert direct.stdout.strip() == "bf16"  # the simulated CPU is seen outside the capture


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_a_run_records_what_precision_auto_resolved_to_on_this_cpu(tmp_path, monkeypatch, has_bf16, expected):
    """Both resolutions of ``--precision auto`` on the CPU: bf16 with native bf16, fp32 without; the checkpoint and
    run.json record the one used (what the golden capture pins to fp32)."""
    from deepfake.cli import train
    from deepfake.utils import runtime

    from .conftest import make_forensynths

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has_bf16)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == expected
    data = make_forensynths(tmp_path / "data", n_train=4, n_val=2, n_test=1)
    out = tmp_path / "run"
    assert train.main(["--dataset_dir", str(data), "--output_dir", str(out), "--model", "spectrum-tiles256",
                       "--cache_dir", str(tmp_path / "cache"), "--num_epochs", "1", "--batch_size", "8",
                       "--num_workers", "0", "--precision", "auto", "--device", "cpu", "--quiet"]) == 0
    assert json.loads((out / "best.json").read_text())["features"]["precision"] == expected
    assert json.loads((out / "run.json").read_text())["config"]["features"]["precision"] == expected
