"""Artifacts that cannot lie: cache stamps, --overwrite, checkpoint pairs, checked configs and benchmarks, temp files."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import test_ClassifierHead
import train_ClassifierHead
from deepfake import DeepfakeClassifier
from deepfake.__main__ import main as deepfake_main
from deepfake.data.benchmarks import parse_benchmark
from deepfake.data.layouts import LayoutError
from deepfake.deepfake_dataset import DeepfakeDataset, scan_categories
from deepfake.features.cache import FeatureCache
from deepfake.features.extraction import ExtractionSettings, extract_features
from deepfake.model.checkpoint import CHECKPOINT_FIELDS, WEIGHTS_HASH, CheckpointRefused
from deepfake.towers.clip_tower import CLIPTower
from deepfake.towers.loading import load_tower
from deepfake.utils.fileio import atomic_write, atomic_write_json, is_stale_temp, remove_stale_temp_files
from deepfake.utils.hashing import file_sha256

from .conftest import TOWER, labelled_image, make_forensynths, train_args

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ExtractionSettings(batch_size=2, num_workers=0, progress=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return make_forensynths(tmp_path_factory.mktemp("artifacts-data"), n_train=2, n_val=1, n_test=1)


def counting_forward(monkeypatch) -> list[int]:
    """Patch the tower's forward to count the images that go through it."""
    seen: list[int] = []
    forward = CLIPTower.forward
    monkeypatch.setattr(CLIPTower, "forward", lambda self, p, layers=False: seen.append(len(p)) or forward(self, p,
                                                                                                           layers))
    return seen


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter from the repository root (a process that may be killed)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


# --- 5: the cache's file stamp is taken before the image is read ---------------------------------


def test_file_replaced_between_its_decode_and_the_shard_write_is_extracted_again(tmp_path, monkeypatch):
    data = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=1)
    samples = [s for group in scan_categories(data / "train").values() for s in group][:6]
    tower = load_tower(TOWER)
    dataset = DeepfakeDataset(samples, tower.preprocess)
    cache = FeatureCache(tmp_path / "cache", {"tower": tower.cache_identity(), "features": SETTINGS.cache_info()})
    replaced = Path(samples[1].path)
    write = FeatureCache.write_shard

    def replace_then_write(self, *args, **kwargs):
        # The image was decoded and went through the tower; now, before its shard is written, the file changes.
        labelled_image(np.random.default_rng(99), fake=False, size=96).save(replaced)
        os.utime(replaced, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
        return write(self, *args, **kwargs)

    monkeypatch.setattr(FeatureCache, "write_shard", replace_then_write)
    extract_features(tower, dataset, SETTINGS, cache)
    monkeypatch.setattr(FeatureCache, "write_shard", write)
    seen = counting_forward(monkeypatch)
    again = extract_features(tower, dataset, SETTINGS, cache)
    assert sum(seen) == 1  # the replaced file alone went through the tower again
    fresh = extract_features(tower, DeepfakeDataset([samples[1]], tower.preprocess), SETTINGS, None)
    assert torch.equal(again.embeds[1], fresh.embeds[0])


# --- 6: --overwrite clears the old run, its resume state included ---------------------------------


def test_overwrite_interrupted_during_extraction_then_resume_does_not_continue_the_old_run(
        tmp_path, small, monkeypatch, caplog):
    out = tmp_path / "run"
    assert train_ClassifierHead.main(train_args(small, out, tmp_path / "c1", "--num_epochs", "2")) == 0
    new = ("--num_epochs", "3", "--learning_rate", "0.01")

    def interrupted(self, pixels, layers=False):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(CLIPTower, "forward", interrupted)  # a new cache: the new run extracts, and is stopped there
        assert train_ClassifierHead.main(train_args(small, out, tmp_path / "c2", *new, "--overwrite")) == 130
    assert sorted(p.name for p in out.iterdir()) == []  # nothing of the old run is left to continue
    caplog.clear()
    assert train_ClassifierHead.main(train_args(small, out, tmp_path / "c2", *new, "--resume")) == 0
    assert "no finished epoch to resume" in caplog.text and "resuming after epoch" not in caplog.text
    assert train_ClassifierHead.main(train_args(small, tmp_path / "whole", tmp_path / "c2", *new)) == 0
    history = [json.loads((run / "run.json").read_text())["history"] for run in (out, tmp_path / "whole")]
    assert [h["epoch"] for h in history[0]] == [1, 2, 3] and history[0] == history[1]
    resumed, whole = load_file(str(out / "best.safetensors")), load_file(str(tmp_path / "whole" / "best.safetensors"))
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_overwrite_removes_the_old_runs_epochs_and_keeps_other_files(tmp_path, small):
    out = tmp_path / "run"
    assert train_ClassifierHead.main(train_args(small, out, tmp_path / "c", "--num_epochs", "3")) == 0
    (out / "notes.txt").write_text("mine")
    assert train_ClassifierHead.main(train_args(small, out, tmp_path / "c", "--num_epochs", "1", "--overwrite")) == 0
    assert sorted(p.name for p in out.glob("epoch_*")) == ["epoch_001.json", "epoch_001.safetensors"]
    assert (out / "notes.txt").read_text() == "mine"


# --- 7: a checkpoint's two files are one unit ---------------------------------------------------


KILL_BETWEEN_THE_TWO_WRITES = """
import json, os
from safetensors.torch import load_file
from deepfake.model.checkpoint import save_checkpoint
run = {run!r}
renamed = []
real_replace = os.replace

def replace(src, dst, *args, **kwargs):
    if os.path.basename(dst) in ("best.safetensors", "best.json"):
        if renamed:
            os._exit(9)  # killed after the first file of the pair was in place, before the second
        renamed.append(dst)
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
state = {{k: v + 0.5 for k, v in load_file(os.path.join(run, "best.safetensors")).items()}}
config = json.load(open(os.path.join(run, "epoch_001.json")))
save_checkpoint(run, "best", state, config)
"""


def test_checkpoint_pair_torn_by_a_kill_between_its_two_writes_is_refused_by_predict_and_test(
        trained_run, tmp_path, caplog):
    run = copy_run(trained_run["run"], tmp_path / "run")
    killed = run_python(KILL_BETWEEN_THE_TWO_WRITES.format(run=str(run)))
    assert killed.returncode == -9 or killed.returncode == 9, killed.stderr
    image = str(next((trained_run["data"] / "test").rglob("*.png")))
    assert deepfake_main(["predict", image, "--checkpoint", str(run), "--quiet", "--num_workers", "0"]) == 2
    assert f"{run / 'best.safetensors'} and {run / 'best.json'} are not one pair" in caplog.text
    caplog.clear()
    code = test_ClassifierHead.main(["--checkpoint", str(run), "--dataset_dir", str(trained_run["data"] / "test"),
                                     "--output_dir", str(tmp_path / "eval"), "--quiet"])
    assert code == 2 and "are not one pair" in caplog.text


def test_weights_replaced_under_their_config_are_refused_naming_both_files(trained_run, tmp_path):
    run = copy_run(trained_run["run"], tmp_path / "run")
    shutil.copy(run / "epoch_001.safetensors", run / "best.safetensors")  # new weights, the old epoch's config
    with pytest.raises(CheckpointRefused, match="best.safetensors and .*best.json are not one pair"):
        DeepfakeClassifier.from_pretrained(run, tower=False)


def test_checkpoint_records_the_sha256_of_its_weights_and_a_shared_folder_too(trained_run, tmp_path):
    run = trained_run["run"]
    for name in ("best", "epoch_006"):
        assert json.loads((run / f"{name}.json").read_text())[WEIGHTS_HASH] == file_sha256(run / f"{name}.safetensors")
    folder = DeepfakeClassifier.from_pretrained(run, tower=False).save_pretrained(tmp_path / "shared")
    assert json.loads((folder / "config.json").read_text())[WEIGHTS_HASH] == file_sha256(folder / "model.safetensors")


def test_checkpoint_written_before_weight_hashes_loads_with_a_warning(trained_run, tmp_path, caplog):
    run = copy_run(trained_run["run"], tmp_path / "run")
    config = json.loads((run / "best.json").read_text())
    del config[WEIGHTS_HASH]
    (run / "best.json").write_text(json.dumps(config))
    clf = DeepfakeClassifier.from_pretrained(run, tower=False)
    assert clf.head is not None and "records no sha256 of best.safetensors" in caplog.text


# --- 9: every field of a checkpoint or calibration config is checked on load ------------------------


MALFORMED = [
    ("preprocess.mean", 5), ("preprocess.mean", [0.5]), ("preprocess.std", [0, 0, 0]), ("preprocess.size", 0),
    ("preprocess.mode", "zoom"), ("preprocess.interpolation", 3), ("head.in_dim", 1e12), ("head.in_dim", 10**12),
    ("head.kind", ["mlp"]), ("head.standardize", "yes"), ("head.dropout", 1.5), ("head.num_classes", 3),
    ("tower.model", 5), ("tower.model", ""), ("features", "x"), ("features.precision", "fp8"),
    ("val_threshold", 7), ("threshold", float("nan")), ("categories", "car"), ("calibration", 5),
    (WEIGHTS_HASH, "abc"), ("metrics", [1]),
]


def _set(config: dict, dotted: str, value) -> None:
    *parents, key = dotted.split(".")
    for parent in parents:
        config = config[parent]
    config[key] = value


@pytest.mark.parametrize("field, value", MALFORMED, ids=[f"{f}={v!r}" for f, v in MALFORMED])
def test_malformed_checkpoint_config_field_exits_2_naming_the_file_and_the_field(trained_run, tmp_path, caplog,
                                                                                 field, value):
    run = copy_run(trained_run["run"], tmp_path / "run")
    config = json.loads((run / "best.json").read_text())
    _set(config, field, value)
    (run / "best.json").write_text(json.dumps(config))
    image = str(next((trained_run["data"] / "test").rglob("*.png")))
    assert deepfake_main(["predict", image, "--checkpoint", str(run), "--quiet", "--num_workers", "0"]) == 2
    assert f"{run / 'best.json'}: checkpoint config field {field!r} is" in caplog.text


def test_head_config_too_large_to_build_is_refused_before_it_is_allocated(trained_run, tmp_path, monkeypatch):
    run = copy_run(trained_run["run"], tmp_path / "run")
    config = json.loads((run / "best.json").read_text())
    config["head"].update(in_dim=65536, hidden=65536)  # each in range; together a 17 GB head
    (run / "best.json").write_text(json.dumps(config))
    reset = torch.nn.Linear.reset_parameters

    def only_on_meta(self):
        assert self.weight.is_meta, "a head of the config's sizes was allocated"
        reset(self)

    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", only_on_meta)
    dim = config["head"].get("ood", {}).get("dim", 0)  # its out-of-distribution statistics: mean, std, whitening
    values = 4_295_163_906 + 2 * dim + dim * dim
    with pytest.raises(CheckpointRefused, match=f"field 'head' describes a head of {values:,} values"):
        DeepfakeClassifier.from_pretrained(run, tower=False)


def test_checkpoint_config_holding_a_list_exits_2(trained_run, tmp_path, caplog):
    run = copy_run(trained_run["run"], tmp_path / "run")
    (run / "best.json").write_text("[1, 2]")
    image = str(next((trained_run["data"] / "test").rglob("*.png")))
    assert deepfake_main(["predict", image, "--checkpoint", str(run), "--quiet"]) == 2
    assert "best.json: checkpoint config is a JSON list" in caplog.text


@pytest.mark.parametrize("doc, named", [([0.5], "calibration file is a JSON list"),
                                        ({"format": "deepfake-calibration/1", "threshold": 7}, "'threshold' is 7"),
                                        ({"format": "deepfake-calibration/1"}, "has no field 'threshold'"),
                                        ({"format": "deepfake-calibration/1", "threshold": 0.4, "n_images": -1},
                                         "'n_images' is -1")])
def test_malformed_calibration_file_exits_2_naming_the_file(trained_run, tmp_path, caplog, doc, named):
    run = copy_run(trained_run["run"], tmp_path / "run")
    (run / "best.calibration.json").write_text(json.dumps(doc))
    image = str(next((trained_run["data"] / "test").rglob("*.png")))
    assert deepfake_main(["predict", image, "--checkpoint", str(run), "--quiet"]) == 2
    assert "best.calibration.json: calibration" in caplog.text and named in caplog.text


def test_the_field_table_checks_every_field_a_checkpoint_is_written_with(trained_run):
    config = json.loads((trained_run["run"] / "best.json").read_text())
    listed = {rule.path for rule in CHECKPOINT_FIELDS}
    inner = {f"{k}.{name}" for k, v in config.items() if k in ("tower", "preprocess", "features", "head")
             for name in v}
    assert {k for k in config if k not in listed} | {f for f in inner if f not in listed} == set()


# --- 10: benchmark values are checked like folder templates ----------------------------------------


@pytest.mark.parametrize("categories, problem", [(["../../elsewhere"], "must be one folder name"),
                                                 ([".."], "must be one folder name"),
                                                 (["a/b"], "must be one folder name"),
                                                 (5, "'categories' must be a list"),
                                                 ("car", "'categories' must be a list"),
                                                 (["car", "car"], "lists a name twice")])
def test_benchmark_categories_cannot_leave_the_data_root_or_be_other_than_names(categories, problem):
    doc = {"domains": [{"name": "x", "categories": categories, "fake": ["x/{category}/1_fake"],
                        "real": ["x/{category}/0_real"]}]}
    with pytest.raises(LayoutError, match=f"bench.json: domain 'x': .*{problem}"):
        parse_benchmark(doc, "bench.json")


@pytest.mark.parametrize("domain, problem", [({"family": 5}, "'family' must be a string"),
                                             ({"real_root": "yes"}, "'real_root' must be true or false")])
def test_benchmark_domain_values_of_the_wrong_type_are_refused(domain, problem):
    with pytest.raises(LayoutError, match=problem):
        parse_benchmark({"domains": [{"name": "x", "fake": ["f"], "real": ["r"], **domain}]}, "bench.json")


def test_benchmark_file_with_numeric_categories_exits_2(trained_run, tmp_path, caplog):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"domains": [{"name": "x", "categories": 5, "fake": ["{category}/1_fake"],
                                              "real": ["{category}/0_real"]}]}))
    code = test_ClassifierHead.main(["--checkpoint", str(trained_run["run"]), "--benchmark", str(bench),
                                     "--dataset_dir", str(trained_run["data"] / "test"),
                                     "--output_dir", str(tmp_path / "eval"), "--quiet"])
    assert code == 2 and "'categories' must be a list" in caplog.text


# --- 11: temp files of killed writes are removed by the next run -------------------------------------


KILLED_SHARD_WRITE = """
import os
from deepfake.utils.fileio import atomic_write

def write(tmp):
    with open(tmp, "wb") as handle:
        handle.write(b"half a shard")
    os._exit(9)  # killed in the middle of the write

atomic_write({target!r}, write)
"""


def test_temp_file_of_a_killed_cache_write_is_removed_by_the_next_run(tmp_path):
    info = {"tower": {"model": "x"}, "features": {}}
    cache = FeatureCache(tmp_path / "cache", info)
    killed = run_python(KILLED_SHARD_WRITE.format(target=str(cache.dir / "shard-000-1-abc.safetensors")))
    assert killed.returncode in (-9, 9), killed.stderr
    left = list(cache.dir.glob(".shard-000-1-abc.safetensors.*.tmp"))
    assert len(left) == 1
    run_python(f"from deepfake.features.cache import FeatureCache; FeatureCache({str(tmp_path / 'cache')!r}, {info!r})")
    assert not left[0].exists()


def test_temp_file_of_a_killed_run_folder_write_is_removed_by_the_next_write_there(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    killed = run_python(KILLED_SHARD_WRITE.format(target=str(run / "best.json")))
    assert killed.returncode in (-9, 9), killed.stderr
    assert len(list(run.glob(".best.json.*.tmp"))) == 1
    run_python(f"from deepfake.utils.fileio import atomic_write_json; atomic_write_json({str(run / 'x.json')!r}, 1)")
    assert sorted(p.name for p in run.iterdir()) == ["x.json"]


def test_temp_files_of_live_writers_and_recent_foreign_ones_are_kept(tmp_path):
    host = re.sub(r"[^A-Za-z0-9]", "-", socket.gethostname())[:32]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {"live": f".shard-a.safetensors.{host}-{live.pid}.abcd1234.tmp",  # another rank, writing now
                 "mine": f".shard-b.safetensors.{host}-{os.getpid()}.abcd1234.tmp",  # this process, writing now
                 "foreign": ".shard-c.safetensors.otherhost-12.abcd1234.tmp",  # another host, a minute old
                 "old": ".shard-d.safetensors.otherhost-12.abcd1234.tmp",  # another host, two days old
                 "older_format": ".best.json.abcd1234.tmp",  # an earlier version's name, two days old
                 "older_format_alone": ".notes.txt.abcd1234.tmp",  # the same, but no notes.txt: maybe not ours
                 "not_ours": "shard-e.tmp"}
        (tmp_path / "best.json").write_text("{}")
        for key, name in names.items():
            (tmp_path / name).write_bytes(b"x")
            if key in ("old", "older_format", "older_format_alone"):
                os.utime(tmp_path / name, (time.time() - 2 * 86400,) * 2)
            elif key == "foreign":
                os.utime(tmp_path / name, (time.time() - 60,) * 2)
        removed = {p.name for p in remove_stale_temp_files(tmp_path)}
        assert removed == {names["old"], names["older_format"]}
        live.kill()
        live.wait()
        assert is_stale_temp(tmp_path / names["live"])  # its writer is gone now
    finally:
        live.kill()


# --- 15: --checkpoint names what the user passed ----------------------------------------------------


@pytest.mark.parametrize("name, problem", [("run.json", "the run's summary, not a checkpoint"),
                                           ("nothing.json", "no such file")])
def test_checkpoint_given_as_a_json_that_is_no_checkpoint_is_named_as_passed(trained_run, caplog, name, problem):
    image = str(next((trained_run["data"] / "test").rglob("*.png")))
    given = trained_run["run"] / name
    assert deepfake_main(["predict", image, "--checkpoint", str(given), "--quiet"]) == 2
    assert f"{given}: {problem}" in caplog.text and "best.safetensors" in caplog.text
    assert name.replace(".json", ".safetensors") not in caplog.text


def test_a_temp_file_whose_writer_holds_its_lock_is_kept_even_when_its_pid_is_dead_here(tmp_path):
    """Two containers with one host name and separate PID namespaces share a cache: the other's writer has a PID
    that is dead (or someone else) here. Its lock, not its PID, says it is writing; released, the file is stale."""
    host = re.sub(r"[^A-Za-z0-9]", "-", socket.gethostname())[:32]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    temp = tmp_path / f".shard-x.safetensors.{host}-{int(gone.stdout)}.abcd1234.tmp"  # that PID is dead here
    temp.write_bytes(b"half a shard")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"f = open({str(temp)!r}, 'rb'); fcntl.flock(f, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert not is_stale_temp(temp)
        assert remove_stale_temp_files(tmp_path) == [] and temp.exists()
        atomic_write_json(tmp_path / "index.json", {"shards": 0})  # a write's first sweep of the folder, too
        assert temp.exists()
    finally:
        holder.kill()
        holder.wait()
    assert is_stale_temp(temp)  # the writer is gone: its lock with it
    assert remove_stale_temp_files(tmp_path) == [temp] and not temp.exists()


def test_an_atomic_write_holds_its_temp_files_lock_until_the_rename(tmp_path):
    seen = []

    def write(tmp: str) -> None:
        Path(tmp).write_text("{}")
        seen.append(is_stale_temp(tmp))
        with open(tmp, "rb") as other:  # another open of the file (another process's, for flock) cannot lock it
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)

    atomic_write(tmp_path / "x.json", write)
    assert seen == [False] and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
