"""The house rules, checked on the source: layers import one way, variants only through their
registries, small top level, short functions, and argparse only at the command line."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "deepfake"

# Lowest first: a module may import its own layer and the layers before it, never one after it.
LAYERS = ("utils", "config", "data", "towers", "features", "model", "evaluation", "serving", "training", "cli", "api")
# Where the faithful face and the entry points sit.
TOP_LEVEL = {"deepfake.config": "config", "deepfake.deepfake_dataset": "data",
             "deepfake.deepfake_classifier": "model", "deepfake": "api", "deepfake.__main__": "api"}
# Variants found only through a registry: nothing in the package imports them by name.
VARIANT_PACKAGES = ("deepfake.towers.families", "deepfake.model.heads")
MAX_FUNCTION_LINES = 60


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def layer_of(name: str) -> str:
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    return name.split(".")[1]


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every deepfake module ``path`` imports anywhere (module level, functions, ``TYPE_CHECKING``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                # ``from deepfake.towers import weights`` imports the submodule, not the package.
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m == "deepfake" or m.startswith("deepfake.")}


def import_violations(root: Path = PACKAGE) -> list[str]:
    """Upward imports, variants imported by name, and cycles, as readable lines."""
    modules = package_modules(root)
    graph = {name: imports_of(path, name, modules) - {name} for name, path in modules.items()}
    problems = []
    for name, targets in graph.items():
        for target in sorted(targets):
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(name)):
                problems.append(f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)}), a higher layer")
            variant = next((v for v in VARIANT_PACKAGES if target.startswith(v + ".")), None)
            if variant:
                problems.append(f"{name} imports the variant {target} by name; look it up in {variant}'s registry")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected part of the import graph (Tarjan)."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                part.append(item)
                if item == node:
                    break
            if len(part) > 1:
                cycles.append(sorted(part) + [sorted(part)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_every_import_runs_down_the_layers_without_cycles_or_named_variants():
    assert import_violations() == []


@pytest.mark.parametrize("planted, expected", [
    ("from deepfake.cli.args import train_parser\n", "imports deepfake.cli.args (cli), a higher layer"),
    ("from deepfake.towers.families import clip\n", "imports the variant deepfake.towers.families.clip by name"),
    ("import deepfake.utils.fileio\n", "import cycle"),
])
def test_the_import_check_catches_a_planted_violation(tmp_path, planted, expected):
    copy = tmp_path / "deepfake"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "utils" / "text.py"
    if "cycle" in expected:
        # fileio importing text, and text importing fileio, close a circle.
        fileio = copy / "utils" / "fileio.py"
        fileio.write_text(fileio.read_text() + "\n\ndef _planted():\n    import deepfake.utils.text\n")
    target.write_text(target.read_text() + "\n\ndef _planted():\n    " + planted)
    assert import_violations() == []
    assert any(expected in line for line in import_violations(copy)), import_violations(copy)


def test_the_top_of_the_package_holds_at_most_six_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 6, top
    assert {"__init__.py", "__main__.py", "deepfake_classifier.py", "deepfake_dataset.py"} <= set(top)


def _argument_lines(node: ast.AST) -> set[int]:
    """Lines of ``add_argument(...)`` calls: a parser's argument table is data, not logic."""
    lines = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and getattr(sub.func, "attr", "") == "add_argument":
            lines.update(range(sub.lineno, sub.end_lineno + 1))
    return lines


def long_functions(root: Path = PACKAGE, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1 - len(_argument_lines(node))
                if length > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_library_function_is_longer_than_sixty_lines():
    assert long_functions() == []


def test_the_length_check_counts_a_long_function(tmp_path):
    (tmp_path / "long.py").write_text("def f():\n" + "    x = 1\n" * 61)
    (tmp_path / "table.py").write_text("def parser(p):\n" + "    p.add_argument('--x')\n" * 80 + "    return p\n")
    assert long_functions(tmp_path) == [f"{tmp_path.name}/long.py:1 f: 62 lines"]


def test_argparse_and_namespaces_stay_in_the_cli_package():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path, PACKAGE)
        if layer_of(name) in ("cli", "api"):
            continue
        text = path.read_text(encoding="utf-8")
        if "argparse" in text or "Namespace" in text:
            offenders.append(name)
    assert offenders == []


def test_from_deepfake_import_classifier_loads_no_training_or_cli_code():
    import subprocess
    import sys

    code = ("import sys; from deepfake import DeepfakeClassifier; "
            "print(','.join(m for m in sys.modules if m.startswith(('deepfake.training', 'deepfake.cli', "
            "'deepfake.evaluation', 'deepfake.serving'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == ""


def test_the_public_api_names_every_export_once_and_each_resolves():
    import deepfake

    assert set(deepfake.__all__) == set(deepfake._EXPORTS) | {"__version__"}
    for name in deepfake._EXPORTS:
        assert getattr(deepfake, name).__name__ == name
