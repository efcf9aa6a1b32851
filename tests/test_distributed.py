"""torch.distributed (gloo, 2 processes): sharding that holds whatever the ranks' timing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import test_ClassifierHead
import train_ClassifierHead
from deepfake.deepfake_dataset import DeepfakeDataset, Sample, scan_categories
from deepfake.features.cache import FeatureCache
from deepfake.features.extraction import ExtractionSettings, extract_features
from deepfake.towers.loading import load_tower

from .conftest import TOWER, make_forensynths, train_args

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ExtractionSettings(batch_size=4, num_workers=0, shard_size=8, progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world: int, port: int) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from deepfake.utils.runtime import init_distributed

    init_distributed(torch.device("cpu"))


def cache_for(root, tower) -> FeatureCache:
    return FeatureCache(root, {"tower": tower.cache_identity(), "features": SETTINGS.cache_info()})


def _two_extractions(rank: int, world: int, port: int, cache_root: str, sets: dict, result_dir: str):
    import torch.distributed as dist

    join_group(rank, world, port)
    tower = load_tower(TOWER)
    out = {}
    for name in ("train", "val"):
        samples = [Sample(p, 0, "c") for p in sets[name]]
        # A fresh cache object per call, as training makes one per extraction.
        table = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), SETTINGS,
                                 cache_for(cache_root, tower))
        out[name] = None if table is None else (table.embeds.clone(), table.ok.clone())
        if rank == 0 and name == "train":
            time.sleep(3)  # rank 0 lags behind (a slow file system, a long manifest write)
    torch.save(out, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_extractions_with_a_slow_rank_0_match_one_process(tmp_path):
    root = make_forensynths(tmp_path / "data", n_train=3, n_val=2, n_test=1)
    sets = {split: [s.path for group in scan_categories(root / split).values() for s in group]
            for split in ("train", "val")}
    mp.spawn(_two_extractions, args=(2, free_port(), str(tmp_path / "cache"), sets, str(tmp_path)),
             nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt")
    assert torch.load(tmp_path / "rank1.pt") == {"train": None, "val": None}
    tower = load_tower(TOWER)
    for name in ("train", "val"):
        single = extract_features(tower, DeepfakeDataset([Sample(p, 0, "c") for p in sets[name]], tower.preprocess),
                                  SETTINGS, None)
        embeds, ok = rank0[name]
        assert ok.all() and torch.equal(embeds, single.embeds)


def torchrun(script: str, *argv: str) -> None:
    """Run a command script under ``torchrun --nproc_per_node 2`` (gloo on the CPU)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / script), *argv]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def numbers(results: dict) -> list:
    return [(level["label"], level["rows"], level["mean"]) for level in results["levels"]]


def test_train_and_test_scripts_under_torchrun_match_one_process(tmp_path):
    data = make_forensynths(tmp_path / "data", n_train=3, n_val=2, n_test=2)
    runs = {}
    for world in (1, 2):
        out, cache = tmp_path / f"run{world}", tmp_path / f"cache{world}"
        argv = train_args(data, out, cache, "--num_epochs", "3", "--blur_prob", "0.5", "--jpeg_prob", "0.5",
                          "--aug_views", "2")
        if world == 1:
            assert train_ClassifierHead.main(argv) == 0
        else:
            torchrun("train_ClassifierHead.py", *argv)
        runs[world] = out
    one, two = (load_file(str(runs[w] / "best.safetensors")) for w in (1, 2))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    summaries = [json.loads((runs[w] / "run.json").read_text()) for w in (1, 2)]
    assert summaries[0]["history"] == summaries[1]["history"]
    assert json.loads((runs[1] / "best.json").read_text())["metrics"] == \
        json.loads((runs[2] / "best.json").read_text())["metrics"]

    results = {}
    for world in (1, 2):
        argv = ["--checkpoint", str(runs[1]), "--dataset_dir", str(data / "test"), "--output_dir",
                str(tmp_path / f"eval{world}"), "--cache_dir", str(tmp_path / f"eval-cache{world}"),
                "--num_workers", "0", "--quiet", "--no_plots"]
        if world == 1:
            assert test_ClassifierHead.main(argv) == 0
        else:
            torchrun("test_ClassifierHead.py", *argv)
        results[world] = json.loads((tmp_path / f"eval{world}" / "results.json").read_text())
    assert numbers(results[1]) == numbers(results[2])
