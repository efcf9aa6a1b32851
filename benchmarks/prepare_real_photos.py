"""Build a fixed train/val/test split of a public set of real photos and generated images.

    python benchmarks/prepare_real_photos.py /data/realphotos/realorai \
        --repo real-or-ai-game/.git --commit 269851655dae14acd2867195733d712c669dfa39 --path public/images
    python benchmarks/prepare_real_photos.py /data/realphotos/maskin \
        --repo maskinEllerMenneske_QuizApp/.git --commit 26dfb6b86ceb98c75b80105c2a9967cd18e1b26e \
        --path public/images/real --path public/images/fake

The images are taken from a clone of the set's repository (``--repo``, a work tree's ``.git``
or a bare clone, read at ``--commit`` with ``git archive``, so later commits change nothing) or
from a plain folder (``--source``), and only from the ``--path`` folders inside it: they must
hold label folders the tool reads (``real``/``ai``, ``real``/``fake``, ... optionally below
domain folders such as ``city/{real,ai}``), or ``--relabel`` says how a file's path names its
class and domain (``--label human=real`` for a set's own words). They are copied to ``OUT/images/`` and
``OUT/split/{train,val,test}/{domain}/{0_real,1_fake}/`` receives links to them, cut as
``python -m deepfake split`` cuts: each (domain, class) group sorted, shuffled with the seed and
cut at ``--ratios``, so the split is stratified, and the same files with the same seed give the
same split. ``OUT/split`` is the ``--data`` of ``benchmarks/spectral_real_photos.py`` and the
``--dataset_dir`` of ``train_ClassifierHead.py`` / ``test_ClassifierHead.py``.
``OUT/test.csv`` lists the held-out split as one domain (the pooled figure the tables report).
``OUT/provenance.json`` records the source, commit, ratios, seed, counts, each class's file
formats and sizes, and every file's split and SHA-256, so a reader can check that a redone
split is the same one.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from deepfake.cli.args import setup_logging  # noqa: E402
from deepfake.cli.split import LABEL_DIRS, SPLITS, parse_ratios, plan_split, write_split  # noqa: E402
from deepfake.data.layouts import LABEL_NAMES, LayoutError  # noqa: E402
from deepfake.utils.fileio import atomic_write_json, atomic_write_text  # noqa: E402

log = logging.getLogger("prepare_real_photos")

DEFAULT_RATIOS = (0.6, 0.2, 0.2)


def _common_root(paths: list[str]) -> str:
    """The deepest folder holding every ``--path`` (``""``: the repository's top)."""
    parts = [Path(p.strip("/")).parts for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    # A single --path is itself the root; several share their parent at most.
    if len(paths) > 1 and len(common) == min(len(p) for p in parts):
        common = common[:-1]
    return "/".join(common)


def extract_from_git(repo: Path, commit: str, paths: list[str], dest: Path) -> str:
    """Copy ``paths`` as they are at ``commit`` into ``dest``; returns the full commit id."""
    def git(*args: str) -> bytes:
        return subprocess.run(["git", "--git-dir", str(repo), *args], check=True, capture_output=True).stdout

    try:
        full = git("rev-parse", "--verify", f"{commit}^{{commit}}").decode().strip()
        archive = git("archive", "--format=tar", full, "--", *paths)
    except subprocess.CalledProcessError as exc:
        raise ValueError(f"{repo}: git could not read {paths} at {commit}: {exc.stderr.decode().strip()}") from None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        # The "data" filter refuses links and absolute paths out of dest (Pythons that have it).
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return full


def copy_from_folder(source: Path, paths: list[str], dest: Path) -> None:
    """Copy the ``paths`` folders of a plain ``source`` folder into ``dest``, keeping their relative paths."""
    for rel in paths:
        if not (source / rel).is_dir():
            raise ValueError(f"{source / rel}: not a folder")
        shutil.copytree(source / rel, dest / rel, symlinks=False)


def remove_excluded(images: Path, patterns: list[str]) -> int:
    """Delete the copied files whose path (relative to ``images``) matches a pattern; returns how many."""
    removed = 0
    for path in sorted(p for p in images.rglob("*") if p.is_file()):
        if any(fnmatch.fnmatch(path.relative_to(images).as_posix(), pat) for pat in patterns):
            path.unlink()
            removed += 1
    return removed


def parse_word(text: str) -> tuple[str, str]:
    """``WORD=real`` or ``WORD=fake`` -> (word in lower case, class)."""
    word, sep, label = text.partition("=")
    if not sep or not word or label not in ("real", "fake"):
        raise argparse.ArgumentTypeError(f"expected WORD=real or WORD=fake, got {text!r}")
    return word.lower(), label


def rearrange(root: Path, pattern: str, words: dict[str, str]) -> tuple[Path, int]:
    """Move each file under ``root`` to ``DOMAIN/LABEL/`` as the regex ``pattern`` reads its path.

    ``pattern`` is searched in the path relative to ``root``; its group ``label`` names the class
    (a word of ``words`` or a label folder name such as real, fake, ai) and its optional group
    ``domain`` the domain. The file keeps its whole relative path as its name (``/`` -> ``__``), so
    files of one name in two folders stay two files. Files it does not match are left out.
    Returns the new root and how many files were left out.
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--relabel {pattern!r}: {exc}") from None
    if "label" not in regex.groupindex:
        raise ValueError(f"--relabel {pattern!r}: needs a group named label, e.g. (?P<label>real|ai)")
    arranged, left_out = root.parent / (root.name + ".arranged"), 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        match = regex.search(rel)
        word = match.group("label").lower() if match else None
        label = words.get(word) or {0: "real", 1: "fake"}.get(LABEL_NAMES.get(word))
        if label is None:
            left_out += 1
            continue
        domain = match.groupdict().get("domain") or ""
        dest = arranged / domain / label / rel.replace("/", "__")
        dest.parent.mkdir(parents=True, exist_ok=True)
        path.rename(dest)
    shutil.rmtree(root)
    arranged.rename(root)
    return root, left_out


def write_test_manifest(plan: list[tuple[str, str, str, int, str]], out: Path) -> Path:
    """``out/test.csv``: the whole held-out split as one domain (its links, relative to ``out``).

    Per-domain test rows of a few images each say little; the pooled split is what the tables report.
    """
    lines = ["path,label"] + [f"split/test/{domain}/{LABEL_DIRS[label]}/{rel},{('real', 'fake')[label]}"
                              for split, domain, rel, label, _path in plan if split == "test"]
    return atomic_write_text(out / "test.csv", "\n".join(lines) + "\n")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(plan: list[tuple[str, str, str, int, str]], images: Path) -> tuple[dict, list[dict]]:
    """Per class: formats and sizes (from the file headers); per file: split, domain, label, path and SHA-256."""
    classes: dict[str, dict[str, collections.Counter]] = {}
    files = []
    for split, domain, _rel, label, path in plan:
        name = ("real", "fake")[label]
        with Image.open(path) as im:
            fmt, size = im.format, f"{im.width}x{im.height}"
        info = classes.setdefault(name, {"formats": collections.Counter(), "sizes": collections.Counter()})
        info["formats"][fmt] += 1
        info["sizes"][size] += 1
        files.append({"split": split, "domain": domain, "label": name,
                      "path": os.path.relpath(path, images), "sha256": _sha256(path)})
    summary = {name: {"images": sum(info["formats"].values()), "formats": dict(info["formats"]),
                      "distinct_sizes": len(info["sizes"]), "common_sizes": dict(info["sizes"].most_common(5))}
               for name, info in sorted(classes.items())}
    return summary, files


def prepare(out: Path, paths: list[str], ratios: tuple[float, ...], seed: int, repo: Path | None = None,
            commit: str | None = None, source: Path | None = None, name: str | None = None,
            exclude: list[str] | None = None, relabel: str | None = None,
            words: dict[str, str] | None = None) -> dict:
    """Copy the set into ``out/images``, link its split into ``out/split``; returns the provenance record."""
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; choose a new folder")
    images = out / "images"
    images.mkdir(parents=True)
    if repo is not None:
        commit = extract_from_git(repo, commit or "HEAD", paths, images)
    else:
        copy_from_folder(source, paths, images)
    excluded = remove_excluded(images, exclude or [])
    root = images / _common_root(paths)
    if relabel:
        root, unmatched = rearrange(root, relabel, words or {})
        excluded += unmatched
    plan = plan_split(root, ratios, seed, category=name and name.rsplit("/", 1)[-1])
    counts = write_split(plan, out / "split")
    write_test_manifest(plan, out)
    classes, files = describe(plan, images)
    record = {"name": name, "repository": str(repo) if repo else None, "commit": commit,
              "source": str(source) if source else None, "paths": paths,
              "exclude": exclude or [], "relabel": relabel, "label_words": words or {},
              "excluded_files": excluded, "ratios": list(ratios), "seed": seed,
              "counts": counts, "classes": classes, "files": files}
    atomic_write_json(out / "provenance.json", record)
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="new folder: images/, split/ and provenance.json")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", help="git directory of a clone of the set's repository (read with git archive)")
    where.add_argument("--source", help="a plain folder holding the set's files")
    p.add_argument("--commit", default=None, help="with --repo: the commit to read (default HEAD; recorded in full)")
    p.add_argument("--path", action="append", required=True,
                   help="folder inside the repository holding label folders (repeat for several)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out files matching this pattern, e.g. '*/lqip/*' for thumbnails (repeatable)")
    p.add_argument("--relabel", default=None, metavar="REGEX",
                   help="sets not laid out in label folders: a regex searched in each file's path, whose group "
                        "'label' names the class and optional group 'domain' the domain; unmatched files are left out")
    p.add_argument("--label", action="append", type=parse_word, default=[], metavar="WORD=real|fake",
                   help="with --relabel: a label word of the set's own, e.g. human=real (repeatable)")
    p.add_argument("--ratios", type=parse_ratios, default=DEFAULT_RATIOS, help="train,val,test (default 0.6,0.2,0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="the set's name, e.g. owner/repository (recorded; names a domain-less set)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        record = prepare(Path(args.out), args.path, args.ratios, args.seed,
                         repo=Path(args.repo) if args.repo else None, commit=args.commit,
                         source=Path(args.source) if args.source else None, name=args.name,
                         exclude=args.exclude, relabel=args.relabel, words=dict(args.label))
    except (FileExistsError, ValueError, LayoutError) as exc:
        log.error("%s", exc)
        return 2
    for split in SPLITS:
        for domain, c in sorted(record["counts"].get(split, {}).items()):
            print(f"{split:<6} {domain:<24} {c['real']:>5} real {c['fake']:>5} fake")
    for label, info in record["classes"].items():
        print(f"{label}: {info['images']} images, formats {info['formats']}, {info['distinct_sizes']} sizes")
    print(f"split in {Path(args.out) / 'split'}; provenance in {Path(args.out) / 'provenance.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
