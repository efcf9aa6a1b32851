"""benchmarks/compare_towers.py: one table, a column group per tower, features extracted once."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from deepfake.towers.tiny import save_tower

from .conftest import CATEGORIES, make_forensynths

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compare_towers.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_towers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_towers_writes_one_table_with_a_column_group_per_tower_and_reuses_the_cache(tmp_path, capsys):
    compare_towers = _load_script()
    data = make_forensynths(tmp_path / "data", n_train=3, n_val=1, n_test=2)
    towers = [save_tower("dinov2_registers", tmp_path / "tiny-dinov2r", sharded=True),
              save_tower("siglip", tmp_path / "tiny-siglip")]
    models = ",".join([*(str(t) for t in towers), "spectrum"])
    out = tmp_path / "compare"
    argv = ["--models", models, "--dataset_dir", str(data), "--test_root", str(data / "test"),
            "--output_dir", str(out), "--num_epochs", "2", "--quiet", "--learning_rate", "1e-3"]
    assert compare_towers.main(argv) == 0
    printed = capsys.readouterr().out
    labels = ["tiny-dinov2r", "tiny-siglip", "spectrum"]
    # The console table: a line naming each tower over its column group, then the column names.
    lines = printed.splitlines()
    at = next(i for i, line in enumerate(lines) if all(label in line for label in labels))
    assert [name.strip() for name in lines[at].split("|")[1:]] == labels
    assert lines[at + 1].split("|")[1].split() == ["AP", "acc", "AUC"]
    document = json.loads((out / "results.json").read_text())
    assert list(document["towers"]) == labels
    assert document["towers"]["tiny-dinov2r"]["tower"]["feature"] == "cls+mean_patch"
    assert document["extra_train_flags"] == ["--learning_rate", "1e-3"]
    assert [row["domain"] for row in document["table"]] == [*sorted(CATEGORIES), "mean"]
    for row in document["table"]:
        assert set(row) == {"domain", *labels}
        assert all(0.0 <= row[label]["ap"] <= 1.0 for label in labels)
    markdown = (out / "results.md").read_text()
    assert markdown.splitlines()[0].count(" AP") == len(labels)
    assert all(f"| {c} |" in markdown for c in CATEGORIES)

    # A second comparison finds every feature in the cache: no shard is written again.
    shards = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.safetensors")}
    assert shards
    assert compare_towers.main([*argv, "--overwrite"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.safetensors")} == shards


def test_compare_towers_refuses_an_earlier_comparison_without_overwrite(tmp_path):
    compare_towers = _load_script()
    (tmp_path / "results.json").write_text("{}")
    assert compare_towers.main(["--models", "spectrum", "--dataset_dir", "x", "--test_root", "y",
                                "--output_dir", str(tmp_path)]) == 2
    assert (tmp_path / "results.json").read_text() == "{}"
