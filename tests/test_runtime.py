"""One GPU per rank, bound to the process group; tables held once in fp16; listings written once."""

from __future__ import annotations

import torch
import torch.distributed as dist

from deepfake.deepfake_dataset import DeepfakeDataset, scan_categories
from deepfake.features.cache import FeatureCache
from deepfake.features.extraction import ExtractionSettings, extract_features
from deepfake.towers.loading import load_tower
from deepfake.utils import runtime

from .conftest import TOWER, make_forensynths


def fake_gpus(monkeypatch, count: int) -> list:
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(torch.device(device)))
    return current


def test_each_rank_gets_its_local_gpu_and_makes_it_current(monkeypatch):
    current = fake_gpus(monkeypatch, 8)
    monkeypatch.setenv("LOCAL_RANK", "3")
    for requested in (None, "cuda"):  # chosen, or asked for without an index
        assert runtime.choose_device(requested) == torch.device("cuda", 3)
    assert runtime.choose_device("cuda:5") == torch.device("cuda", 5)  # an explicit index wins
    assert current == [torch.device("cuda", 3), torch.device("cuda", 3), torch.device("cuda", 5)]


def test_process_group_is_bound_to_the_rank_gpu(monkeypatch):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    runtime.init_distributed(torch.device("cuda", 1))
    runtime.init_distributed(torch.device("cpu"))
    assert calls == [{"backend": "nccl", "device_id": torch.device("cuda", 1)}, {"backend": "gloo"}]


def test_tables_are_fp16_and_listings_are_written_once(tmp_path):
    root = make_forensynths(tmp_path / "data", n_train=2, n_val=1, n_test=1)
    tower = load_tower(TOWER)
    settings = ExtractionSettings(batch_size=4, progress=False)

    def cache():
        return FeatureCache(tmp_path / "c", {"tower": tower.cache_identity(), "features": settings.cache_info()})

    samples = {split: [s for g in scan_categories(root / split).values() for s in g] for split in ("train", "val")}
    table = extract_features(tower, DeepfakeDataset(samples["train"], tower.preprocess), settings, cache())
    assert table.embeds.dtype == torch.float16  # one copy, in the store dtype
    listings = {p: p.stat().st_mtime_ns for p in cache().dir.glob("*.jsonl")}
    extract_features(tower, DeepfakeDataset(samples["val"], tower.preprocess), settings, cache())
    assert {p: p.stat().st_mtime_ns for p in listings} == listings  # earlier listings are not rewritten
    assert len(list(cache().dir.glob("*.jsonl"))) == len(listings) + 1
    assert not (cache().dir / "manifest.json").exists()
