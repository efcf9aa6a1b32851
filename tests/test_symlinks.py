"""Data sets assembled from symlinks: generator, category and label folders are followed alike."""

from __future__ import annotations

import os
import shutil

from deepfake.data.image_io import walk_images
from deepfake.data.test_sets import discover_test_set

from .conftest import make_forensynths


def table(root):
    return sorted((os.path.relpath(s.path, root), s.label, s.generator, s.category)
                  for s in discover_test_set(root))


def test_test_root_built_from_symlinks_gives_the_same_table_as_a_copy(tmp_path):
    data = make_forensynths(tmp_path / "data", n_train=1, n_val=1, n_test=2)
    copied = tmp_path / "copied"
    linked = tmp_path / "linked"
    for gen in ("progan", "stylegan"):
        shutil.copytree(data / "test", copied / gen)
    (linked / "progan").mkdir(parents=True)
    for category in os.listdir(data / "test"):  # category folders as links
        os.symlink(data / "test" / category, linked / "progan" / category)
    os.symlink(data / "test", linked / "stylegan")  # a whole generator as a link
    assert {s.generator for s in discover_test_set(linked)} == {"progan", "stylegan"}
    assert table(linked) == table(copied)


def test_symlink_loops_are_left_out(tmp_path):
    data = make_forensynths(tmp_path / "data", n_train=1, n_val=1, n_test=1)
    root = tmp_path / "root"
    shutil.copytree(data / "test", root / "gen")
    os.symlink(root, root / "gen" / "loop")  # gen/loop -> root -> gen -> ...
    os.symlink(root / "gen" / "car" / "0_real", root / "gen" / "car" / "0_real" / "again")
    samples = discover_test_set(root)
    assert len(samples) == len(discover_test_set(data / "test")) and {s.generator for s in samples} == {"gen"}
    assert len(walk_images(root / "gen" / "car" / "0_real")) == 1
