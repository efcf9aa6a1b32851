"""The feature cache: invalidation, partial re-extraction, crash resume, torn shards, torchrun."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.multiprocessing as mp

from deepfake.deepfake_dataset import DeepfakeDataset, Sample, scan_categories
from deepfake.features.cache import FeatureCache
from deepfake.features.extraction import ExtractionSettings, extract_features
from deepfake.towers.loading import load_tower

from .conftest import FIXTURE, TOWER, make_forensynths

SETTINGS = ExtractionSettings(batch_size=4, num_workers=0, shard_size=8, progress=False)


@pytest.fixture
def data(tmp_path):
    root = make_forensynths(tmp_path / "data", n_train=3, n_val=1, n_test=1)
    samples = [s for group in scan_categories(root / "train").values() for s in group]
    return root, samples


def cache_for(root, tower, settings=SETTINGS) -> FeatureCache:
    return FeatureCache(root, {"tower": tower.cache_identity(), "features": settings.cache_info()})


def counting(monkeypatch, tower) -> list:
    """Record how many images go through the tower."""
    seen = []
    forward = type(tower).forward

    def spy(self, pixels, layers=False):
        seen.append(len(pixels))
        return forward(self, pixels, layers)

    monkeypatch.setattr(type(tower), "forward", spy)
    return seen


def test_second_run_reads_the_cache_and_matches(tmp_path, data, monkeypatch):
    _, samples = data
    tower = load_tower(TOWER)
    dataset = DeepfakeDataset(samples, tower.preprocess)
    first = extract_features(tower, dataset, SETTINGS, cache_for(tmp_path / "c", tower))
    seen = counting(monkeypatch, tower)
    second = extract_features(tower, dataset, SETTINGS, cache_for(tmp_path / "c", tower))
    assert seen == [] and torch.equal(first.embeds, second.embeds) and first.ok.all()
    plain = extract_features(tower, dataset, SETTINGS, None)
    assert torch.equal(first.embeds, plain.embeds)
    manifest = "".join(p.read_text() for p in cache_for(tmp_path / "c", tower).dir.glob("shard-*.jsonl"))
    assert '"category": "car"' in manifest and '"mtime_ns"' in manifest
    assert len(manifest.splitlines()) == len(samples)


def test_changing_preprocessing_or_tower_changes_the_key():
    base = load_tower(TOWER)
    crop = load_tower(TOWER, preprocess_mode="crop")
    other = load_tower(str(FIXTURE / "lora2"))
    keys = {cache_for("/tmp/x", t).key for t in (base, crop, other)}
    assert len(keys) == 3
    bf16 = ExtractionSettings(precision="bf16")
    assert cache_for("/tmp/x", base, bf16).key != cache_for("/tmp/x", base).key


def test_touching_one_image_reextracts_only_it(tmp_path, data, monkeypatch):
    _, samples = data
    tower = load_tower(TOWER)
    dataset = DeepfakeDataset(samples, tower.preprocess)
    before = extract_features(tower, dataset, SETTINGS, cache_for(tmp_path / "c", tower))
    changed = samples[5].path
    from PIL import Image

    Image.new("RGB", (64, 64), (250, 10, 10)).save(changed)
    stamp = time.time() + 5
    os.utime(changed, (stamp, stamp))
    seen = counting(monkeypatch, tower)
    after = extract_features(tower, dataset, SETTINGS, cache_for(tmp_path / "c", tower))
    assert seen == [1]
    assert not torch.equal(before.embeds[5], after.embeds[5])
    keep = torch.arange(len(samples)) != 5
    assert torch.equal(before.embeds[keep], after.embeds[keep])


def test_killed_extraction_resumes_with_identical_features(tmp_path, data, monkeypatch):
    _, samples = data
    tower = load_tower(TOWER)
    dataset = DeepfakeDataset(samples, tower.preprocess)
    reference = extract_features(tower, dataset, SETTINGS, None)
    cache = cache_for(tmp_path / "c", tower)
    write = FeatureCache.write_shard
    calls = []

    def crash_after_two(self, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return write(self, *args, **kwargs)

    monkeypatch.setattr(FeatureCache, "write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        extract_features(tower, dataset, SETTINGS, cache)
    monkeypatch.setattr(FeatureCache, "write_shard", write)
    assert len(cache.shard_files()) == 2
    assert not list(cache.dir.glob("*.tmp"))
    seen = counting(monkeypatch, tower)
    resumed = extract_features(tower, dataset, SETTINGS, cache_for(tmp_path / "c", tower))
    assert sum(seen) == len(samples) - 16  # two shards of 8 were kept
    assert torch.equal(resumed.embeds, reference.embeds)


def test_truncated_shard_is_detected_and_redone(tmp_path, data, caplog):
    _, samples = data
    tower = load_tower(TOWER)
    dataset = DeepfakeDataset(samples, tower.preprocess)
    reference = extract_features(tower, dataset, SETTINGS, cache_for(tmp_path / "c", tower))
    cache = cache_for(tmp_path / "c", tower)
    shard = cache.shard_files()[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    again = extract_features(tower, dataset, SETTINGS, cache_for(tmp_path / "c", tower))
    assert torch.equal(again.embeds, reference.embeds)
    assert "unreadable cache shard" in caplog.text
    assert shard.with_suffix(".corrupt").exists()


def test_corrupted_shard_bytes_fail_the_checksum(tmp_path, data):
    _, samples = data
    tower = load_tower(TOWER)
    dataset = DeepfakeDataset(samples, tower.preprocess)
    reference = extract_features(tower, dataset, SETTINGS, cache_for(tmp_path / "c", tower))
    shard = cache_for(tmp_path / "c", tower).shard_files()[0]
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF  # same length, one tensor byte flipped
    shard.write_bytes(bytes(raw))
    again = extract_features(tower, dataset, SETTINGS, cache_for(tmp_path / "c", tower))
    assert torch.equal(again.embeds, reference.embeds)


def test_skipped_files_are_cached_with_their_reason(tmp_path, data):
    root, samples = data
    broken = root / "train" / "car" / "0_real" / "broken.png"
    broken.write_bytes(b"not a png")
    samples = samples + [Sample(str(broken), 0, "car", "train")]
    tower = load_tower(TOWER)
    table = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), SETTINGS,
                             cache_for(tmp_path / "c", tower))
    assert not table.ok[-1] and table.skipped == {len(samples) - 1: "not an image Pillow can read"}
    again = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), SETTINGS,
                             cache_for(tmp_path / "c", tower))
    assert again.skipped == table.skipped


def test_layer_features_share_the_cache_machinery(tmp_path, data):
    _, samples = data
    tower = load_tower(TOWER)
    settings = ExtractionSettings(batch_size=4, num_workers=0, layers=(0, 1, 2, 3), progress=False)
    table = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), settings,
                             cache_for(tmp_path / "c", tower, settings))
    idx = torch.arange(len(samples))
    assert table.layer_ids == [0, 1, 2, 3] and table.layer_rows(idx).shape == (len(samples), 4, 64)
    again = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), settings,
                             cache_for(tmp_path / "c", tower, settings))
    assert torch.equal(table.layer_rows(idx), again.layer_rows(idx))


def _distributed_worker(rank: int, world: int, port: int, root: str, cache_root: str, paths, result_dir: str):
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from deepfake.utils.runtime import init_distributed

    init_distributed(torch.device("cpu"))
    tower = load_tower(TOWER)
    samples = [Sample(p, 0, "c") for p in paths]
    table = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), SETTINGS,
                             cache_for(cache_root, tower))
    torch.save(None if table is None else table.embeds, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_torch_distributed_extraction_matches_single_process(tmp_path, data):
    import socket

    _, samples = data
    paths = [s.path for s in samples]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_distributed_worker, args=(2, port, str(tmp_path), str(tmp_path / "dist-cache"), paths, str(tmp_path)),
             nprocs=2, join=True)
    tower = load_tower(TOWER)
    single = extract_features(tower, DeepfakeDataset([Sample(p, 0, "c") for p in paths], tower.preprocess),
                              SETTINGS, None)
    shards = cache_for(tmp_path / "dist-cache", tower).shard_files()
    assert {s.name.split("-")[1] for s in shards} == {"000", "001"}  # both ranks wrote shards
    assert torch.equal(torch.load(tmp_path / "rank0.pt"), single.embeds)
    assert torch.load(tmp_path / "rank1.pt") is None  # ranks > 0 never build the table


def test_parse_feature_layers():
    from deepfake.features.extraction import parse_feature_layers

    assert parse_feature_layers("none", 24) == [] and parse_feature_layers("all", 3) == [0, 1, 2, 3]
    assert parse_feature_layers("24,8, 16,20,8", 24) == [8, 16, 20, 24]
    with pytest.raises(ValueError, match="0..24"):
        parse_feature_layers("8,25", 24)
    with pytest.raises(ValueError, match="block numbers"):
        parse_feature_layers("eight", 24)


def test_layer_subset_is_stored_per_block_and_read_only_when_asked(tmp_path, data, monkeypatch):
    from safetensors import safe_open

    from deepfake.features.cache import CacheError

    _, samples = data
    tower = load_tower(TOWER)
    dataset = DeepfakeDataset(samples, tower.preprocess)
    subset = ExtractionSettings(batch_size=4, num_workers=0, layers=(1, 3), progress=False)
    everything = ExtractionSettings(batch_size=4, num_workers=0, layers=(0, 1, 2, 3), progress=False)
    table = extract_features(tower, dataset, subset, cache_for(tmp_path / "c", tower, subset))
    shard = cache_for(tmp_path / "c", tower, subset).shard_files()[0]
    with safe_open(str(shard), "pt") as handle:
        assert sorted(handle.keys()) == ["embeds", "layer.001", "layer.003"]
        assert handle.get_slice("layer.003").get_shape()[1] == tower.hidden_size
    idx = torch.tensor([5, 0, 7])
    full = extract_features(tower, dataset, everything, None)
    assert torch.equal(table.layer_rows(idx), full.layer_rows(idx)[:, [1, 3]])
    # The embeds-only table and a table of the subset come from the same shards: no tower pass.
    seen = counting(monkeypatch, tower)
    assert extract_features(tower, dataset, ExtractionSettings(batch_size=4, progress=False),
                            cache_for(tmp_path / "c", tower)).layer_ids == []
    assert seen == []
    monkeypatch.undo()
    # Per-layer tensors are not read until used: damage one and the table still builds ...
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF  # the last tensor in the file is a layer tensor
    shard.write_bytes(bytes(raw))
    again = extract_features(tower, dataset, subset, cache_for(tmp_path / "c", tower, subset))
    assert torch.equal(again.embeds, table.embeds)
    # ... and reading it names the shard and sets it aside.
    with pytest.raises(CacheError, match="set aside"):
        again.layer_rows(torch.arange(len(samples)))
    assert shard.with_suffix(".corrupt").exists()


def test_resolve_lets_the_newest_record_of_each_image_decide(tmp_path):
    files = []
    for name in "abcd":
        path = tmp_path / f"{name}.png"
        path.write_bytes(name.encode() * 10)
        files.append(str(path))
    cache = FeatureCache(tmp_path / "cache", {"tower": "t"})
    one = torch.ones(1, 4)
    limits = '{"max_pixels": 10}'
    cache.write_shard([files[0], files[1]], torch.cat([one, 2 * one]), None, [(files[2], "unreadable")], limits=limits)
    time.sleep(0.01)  # shard names order by creation time
    # b again: its newest record (row 0 here) decides; d skipped for a permission problem.
    cache.write_shard([files[1]], 5 * one, None, [(files[3], "permission denied")], limits=limits)
    rows = cache.resolve(files, range(4), limits=limits)
    assert rows.shard.itemsize == rows.row.itemsize == 4  # two int32 per image, not an object
    table = torch.zeros(4, 4, dtype=torch.float16)
    ok = cache.fill_embeds(table, rows)
    assert ok.tolist() == [True, True, False, False]
    assert table[:2, 0].tolist() == [1.0, 5.0]
    # The skip of c holds under the same limits; d's permission skip is retried, unless only reading.
    assert rows.skipped == {2: "unreadable"} and rows.unknown() == [3]
    assert cache.resolve(files, range(4), limits=limits, retry=False).skipped == {2: "unreadable", 3: "permission denied"}
    # Other loader limits: the skip is retried. A changed file: its row is stale.
    assert cache.resolve(files, range(4), limits='{"max_pixels": 99}').unknown() == [2, 3]
    os.utime(files[0], ns=(1, 1))
    assert cache.resolve(files, range(4), limits=limits).unknown() == [0, 3]
    # Rows must hold every block asked for: these shards hold none.
    assert cache.resolve(files, range(4), layers=(3,), limits=limits).unknown() == [0, 1, 3]
    assert cache.count_images() == 2
    # An older record with block 3 does not stand in for a newer one without it.
    time.sleep(0.01)
    cache.write_shard([files[2]], one, {3: one}, [], limits=limits)
    time.sleep(0.01)
    cache.write_shard([files[2]], one, None, [], limits=limits)
    assert 2 in cache.resolve(files, range(4), layers=(3,), limits=limits).unknown()


def test_a_file_listed_twice_is_found_for_both_samples(tmp_path, data, monkeypatch):
    _, samples = data
    tower = load_tower(TOWER)
    seen = counting(monkeypatch, tower)
    twice = [*samples, samples[0], samples[3]]
    cache = cache_for(tmp_path / "cache", tower)
    first = extract_features(tower, DeepfakeDataset(twice, tower.preprocess), SETTINGS, cache)
    before = len(seen)
    again = extract_features(tower, DeepfakeDataset(twice, tower.preprocess), SETTINGS, cache)
    assert len(seen) == before  # nothing through the tower on the second pass
    assert torch.equal(again.embeds, first.embeds) and torch.equal(again.embeds[-2], again.embeds[0])


@pytest.mark.parametrize("path", ["/data/a.png", "/data/./a.png", "/data/x/../a.png", "//data/a.png", "/data//a.png",
                                  "/data/.hidden/a.png", "data/a.png", "./a.png", "/data/dir/"])
def test_absolute_path_equals_abspath(path):
    from deepfake.features.cache import absolute_path

    assert absolute_path(path) == os.path.abspath(path)


def test_permission_skip_redone_after_a_torn_shard_is_read_as_a_skip(tmp_path, data, monkeypatch):
    from deepfake.data.image_io import ImageSkipped
    from deepfake.features.cache import CorruptShard

    _, samples = data
    locked = samples[0].path
    load = DeepfakeDataset.load

    def refuse(self, i):
        if self.samples[i].path == locked:
            raise ImageSkipped(locked, "permission denied")
        return load(self, i)

    monkeypatch.setattr(DeepfakeDataset, "load", refuse)
    fill = FeatureCache.fill_embeds
    torn = []

    def torn_once(self, out, rows):  # the shard is found torn once, as rank 0 may find another rank's
        if not torn:
            torn.append(1)
            raise CorruptShard(self.shard_files()[0])
        return fill(self, out, rows)

    monkeypatch.setattr(FeatureCache, "fill_embeds", torn_once)
    tower = load_tower(TOWER)
    settings = ExtractionSettings(batch_size=4, num_workers=0, shard_size=100, progress=False)
    table = extract_features(tower, DeepfakeDataset(samples, tower.preprocess), settings,
                             cache_for(tmp_path / "cache", tower, settings))
    assert table.skipped == {0: "permission denied"} and bool(table.ok[1:].all())
