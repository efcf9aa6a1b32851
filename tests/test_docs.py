"""The README and docs/ stay true to the code: the CLI page is generated, every flag they name exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from deepfake.cli.docs import reference

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = ("architecture", "cli", "data-and-benchmarks", "demo", "detectors", "evaluation", "heads", "performance",
         "provenance", "published-detectors", "serving-and-sharing", "towers", "training")
# Flags of other programs the pages quote (pip, pytest, torchrun, git).
FOREIGN_FLAGS = {"--no-index", "--find-links", "--nproc_per_node", "--nnodes", "--node_rank", "--master_addr",
                 "--porcelain", "--help", "--version"}


def parser_flags() -> set[str]:
    """Every option string any parser of the repository defines (the package, the scripts, the benchmarks)."""
    flags = set()
    sources = [*ROOT.joinpath("deepfake").rglob("*.py"), *ROOT.joinpath("benchmarks").glob("*.py"),
               *ROOT.glob("*.py")]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                flags.update(a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("--"))
    return flags


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_the_generated_cli_page_is_current():
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == reference(), \
        "docs/cli.md is stale: run `python -m deepfake.cli.docs > docs/cli.md`"


def test_every_flag_named_in_the_readme_and_docs_exists_in_a_parser():
    known = parser_flags() | FOREIGN_FLAGS
    unknown = {}
    for page in documents():
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*", page.read_text(encoding="utf-8")):
            if flag not in known:
                unknown.setdefault(page.name, set()).add(flag)
    assert unknown == {}


def test_the_flag_check_finds_a_flag_no_parser_has():
    assert "--learning_rate" in parser_flags() and "--learning_rat" not in parser_flags()


def test_the_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for page in PAGES:
        assert (DOCS / f"{page}.md").is_file(), page
        assert f"docs/{page}.md" in readme, page


def test_every_relative_link_in_the_readme_and_docs_resolves():
    missing = []
    for page in documents():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.name}: {target}")
    assert missing == []


def test_every_page_gives_the_demo_one_and_the_same_run_time():
    """The time a reader is told the demo takes is one measured figure, wherever the command is shown."""
    comments = {str(path.relative_to(ROOT)): re.findall(r"^deepfake demo --out runs/demo\s+#\s*(.+)$",
                                                        path.read_text(encoding="utf-8"), re.M)
                for path in documents()}
    said = {text for found in comments.values() for text in found}
    assert len(said) == 1, f"the demo's time differs between pages: {comments}"
    assert re.search(r"\d+ s\b", said.pop())  # a figure in seconds, not "about a few minutes"
