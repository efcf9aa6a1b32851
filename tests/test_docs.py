"""The README and docs/ stay true to the code: the CLI page is generated, every flag they name exists."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from deepfake.cli.commands import COMMANDS
from deepfake.cli.docs import SCRIPTS, reference

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


# How an example runs a command, and the module whose parser reads its flags.
_RUNNERS = {**{rf"(?:python -m )?deepfake {name}": module for name, module in COMMANDS.items()},
            r"(?:python )?train_ClassifierHead\.py": COMMANDS["train"],
            r"(?:python )?test_ClassifierHead\.py": COMMANDS["test"],
            **{re.escape(runner): module for runner, module in SCRIPTS.items()}}
_INVOCATION = re.compile(r"(?<![\w./-])(" + "|".join(f"(?:{r})" for r in _RUNNERS) + r")(?![\w.-])")
_FLAG = r"(?<![\w-])--[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*"


def command_flags(module: str) -> set[str]:
    """The option strings of one command's parser (each also as written with hyphens)."""
    actions = importlib.import_module(module).build_parser()._option_string_actions
    return set(actions) | {flag.replace("_", "-") for flag in actions}


def examples(text: str) -> list[tuple[str, str]]:
    """(runner, the rest of its command line) for every command an example runs: fenced code blocks line by
    line (backslash continuations joined, shell comments dropped) and inline code spans; a pipe, ``&&`` or
    ``;`` ends a command."""
    spans = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
        # A shell comment is prose about the command, not part of it.
        spans += [re.sub(r"(^|\s)#.*$", "", line) for line in block.replace("\\\n", " ").splitlines()]
    spans += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    found = []
    for span in spans:
        for segment in re.split(r"\||&&|;", span):
            match = _INVOCATION.search(segment)
            if match:
                found.append((match.group(1), segment[match.end():]))
    return found


def _module_of(runner: str) -> str:
    return next(module for pattern, module in _RUNNERS.items() if re.fullmatch(pattern, runner))


def misplaced_flags(text: str) -> set[tuple[str, str]]:
    """(runner, flag) for every flag an example gives a command whose parser does not define it."""
    return {(runner, flag) for runner, rest in examples(text) for flag in re.findall(_FLAG, rest)
            if flag not in command_flags(_module_of(runner)) | FOREIGN_FLAGS}


def test_every_flag_in_a_command_example_belongs_to_the_command_it_runs():
    """A flag that some other command has is no help to the one an example runs (``deepfake demo --quiet``)."""
    wrong = {page.name: found for page in documents() if (found := misplaced_flags(page.read_text(encoding="utf-8")))}
    assert wrong == {}


def test_the_example_check_reads_the_command_each_example_runs():
    text = ("Run `deepfake demo --quiet` or\n```bash\npython -m deepfake predict x.png --checkpoint RUN \\\n"
            "    --tiles 4 --num_epochs 3 | tee log\npython train_ClassifierHead.py --dataset_dir D --tiles 2\n```\n")
    assert misplaced_flags(text) == {("deepfake demo", "--quiet"), ("python -m deepfake predict", "--num_epochs"),
                                     ("python train_ClassifierHead.py", "--tiles")}
    assert misplaced_flags("`deepfake predict x.png --checkpoint RUN --max-pixels 10` then `deepfake.cli --x`") == set()


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
