"""The thread budget: usable CPUs from affinity and cgroup quotas, --threads, others' load, applied to torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from deepfake.cli import args as cli_args
from deepfake.cli import demo, predict, serve
from deepfake.config import RuntimeConfig
from deepfake.utils import threads


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "_applied", {})
    yield
    torch.set_num_threads(before)
    threads.apply(threads.ThreadBudget(before, before, 0))  # the BLAS pools too
    threads._applied.clear()


def fake_cgroup(tmp_path: Path, files: dict[str, str], membership: str = "0::/\n") -> tuple[Path, Path]:
    """A cgroup tree under ``tmp_path/cg`` with ``files`` (relative paths) and a ``/proc/self/cgroup``."""
    root = tmp_path / "cg"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(membership)
    return root, proc


def test_usable_cpus_are_the_affinity_when_no_quota_is_set(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5})
    root, proc = fake_cgroup(tmp_path, {"cpu.max": "max 100000\n", "cpu/cpu.cfs_quota_us": "-1\n",
                                        "cpu/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_quota(root, proc) is None
    assert threads.usable_cpus(root, proc) == 3


def test_a_cgroup_v2_quota_bounds_the_cpus_rounded_down(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    root, proc = fake_cgroup(tmp_path, {"cpu.max": "400000 100000\n"})
    assert threads.cgroup_cpu_quota(root, proc) == 4.0
    assert threads.usable_cpus(root, proc) == 4
    root, proc = fake_cgroup(tmp_path / "half", {"cpu.max": "150000 100000\n"})
    assert threads.usable_cpus(root, proc) == 1  # 1.5 CPUs: a second thread would be throttled


def test_a_quota_on_a_parent_cgroup_applies_to_the_job_below_it(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    root, proc = fake_cgroup(tmp_path, {"slurm/job_7/cpu.max": "600000 100000\n", "slurm/job_7/step_0/cpu.max": "max 100000\n",
                                        "cpu.max": "max 100000\n"}, membership="0::/slurm/job_7/step_0\n")
    assert threads.usable_cpus(root, proc) == 6


def test_a_cgroup_v1_quota_bounds_the_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    root, proc = fake_cgroup(tmp_path, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
                                        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"},
                             membership="4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n")
    assert threads.cgroup_cpu_quota(root, proc) == 2.5
    assert threads.usable_cpus(root, proc) == 2


def test_affinity_below_the_quota_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    root, proc = fake_cgroup(tmp_path, {"cpu.max": "800000 100000\n"})
    assert threads.usable_cpus(root, proc) == 1


def test_threads_and_workers_never_exceed_the_usable_cpus():
    for cpus in range(1, 17):
        for workers in range(0, cpus):
            for busy in (None, 0.0, 0.5, cpus / 2, float(cpus), 3.0 * cpus):
                budget = threads.decide(cpus, workers, busy=busy)
                assert 1 <= budget.threads <= cpus - workers, (cpus, workers, busy)
        for asked in (1, cpus, 4 * cpus):
            assert threads.decide(cpus, 0, threads=asked).threads == min(asked, cpus)


def test_the_default_leaves_the_cpus_others_keep_busy():
    assert threads.decide(2, 0, busy=0.0).threads == 2  # idle: every CPU
    assert threads.decide(2, 0, busy=2.0).threads == 1  # two busy loops on two cores: one thread
    assert threads.decide(2, 0, busy=1.0).threads == 1
    assert threads.decide(16, 8, busy=0.0).threads == 8  # the decode workers hold the other eight
    assert threads.decide(16, 2, busy=10.0).threads == 4
    assert threads.decide(4, 0, busy=2.0, visible=64).threads == 4  # a busy node beyond a 4-CPU quota leaves room


def test_threads_flag_is_used_as_given_and_refused_below_one():
    budget = threads.decide(8, 2, threads=3, busy=8.0)
    assert (budget.threads, budget.fixed) == (3, True)
    with pytest.raises(SystemExit):
        predict.build_parser().parse_args(["x.jpg", "--checkpoint", "run", "--threads", "0"])


def test_busy_time_is_counted_on_this_process_cpus_only_and_less_its_own(tmp_path):
    def stat(user0: int, user1: int, user2: int) -> Path:
        path = tmp_path / f"stat-{user0}-{user1}-{user2}"
        lines = ["cpu  0 0 0 0 0 0 0 0 0 0"] + [f"cpu{i} {u} 0 0 1000 0 0 0 0 0 0" for i, u in enumerate((user0, user1, user2))]
        path.write_text("\n".join(lines) + "\nintr 0\n")
        return path

    ticks = threads._CLOCK_TICKS
    assert threads._busy_seconds({0, 2}, stat(ticks, 5 * ticks, 2 * ticks)) == pytest.approx(3.0)
    before, after = threads.CpuSample(10.0, 100.0, 1.0), threads.CpuSample(12.0, 103.0, 2.0)
    assert threads.busy_elsewhere(before, after) == pytest.approx(1.0)  # 3 s busy in 2 s, 1 s of it ours
    assert threads.busy_elsewhere(after, threads.CpuSample(14.0, 103.5, 3.0)) == 0.0


def test_the_budget_is_applied_to_torch_and_the_blas_pools(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    budget = threads.budget_threads(threads=1, workers=0, cpus=2)
    assert torch.get_num_threads() == 1
    assert all(pool["num_threads"] == 1 for pool in threadpoolctl.threadpool_info())
    monkeypatch.setattr(threads, "_measure", lambda visible, before: 0.0)
    budget = threads.budget_threads(workers=0, cpus=2)
    assert (budget.threads, torch.get_num_threads()) == (2, 2)


def test_a_measured_budget_follows_others_load_and_a_given_one_does_not(monkeypatch):
    load = {"busy": 0.0}
    monkeypatch.setattr(threads, "_measure", lambda visible, before: load["busy"])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads, "REFRESH_SECONDS", 0.0)
    assert threads.budget_threads(workers=0, cpus=2).threads == 2
    load["busy"] = 2.0  # two busy loops start beside it
    assert threads.refresh().threads == 1 and torch.get_num_threads() == 1
    load["busy"] = 0.0
    assert threads.refresh().threads == 2 and torch.get_num_threads() == 2
    threads.budget_threads(threads=2, workers=0, cpus=2)
    load["busy"] = 2.0
    assert threads.refresh().threads == 2


def test_omp_num_threads_and_torchrun_ranks_are_honoured(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.budget_threads(workers=0, cpus=4).threads == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    monkeypatch.setattr(threads, "_measure", lambda visible, before: 0.0)
    assert threads.budget_threads(workers=0).cpus == 2  # four ranks share the node's 8 CPUs


def test_every_command_that_computes_takes_threads_into_its_config():
    config = cli_args.train_config(cli_args.train_parser().parse_args(["--dataset_dir", "d", "--output_dir", "o",
                                                                       "--threads", "3"]))
    assert config.runtime.threads == 3
    assert cli_args.eval_config(cli_args.test_parser().parse_args(["--checkpoint", "c", "--dataset_dir", "d",
                                                                   "--threads", "2"])).runtime.threads == 2
    assert RuntimeConfig().threads is None
    assert predict.build_parser().parse_args(["x", "--checkpoint", "c", "--threads", "2"]).threads == 2
    assert serve.build_parser().parse_args(["--checkpoint", "c", "--threads", "2"]).threads == 2
    train_config, eval_config = demo.demo_configs(Path("out"), "spectrum", 1, 0, threads=2)
    assert train_config.runtime.threads == eval_config.runtime.threads == 2


def test_the_demo_trains_on_the_cpus_its_writers_leave(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo, "budget_threads", lambda t, w: calls.append((t, w)))
    monkeypatch.setattr(demo, "usable_cpus", lambda: 2)
    monkeypatch.setattr(demo, "generation_jobs", lambda data, **kw: [("train", 1), ("test", 2)])
    monkeypatch.setattr(demo, "write_folder", _written)
    monkeypatch.setattr(demo, "train", lambda config: {"trained_with": torch.get_num_threads()})
    train_config, _ = demo.demo_configs(tmp_path, "spectrum", 1, 0)
    demo.generate_and_train(tmp_path / "data", 0, "tconv", train_config)
    workers = train_config.runtime.num_workers
    assert calls == [(None, workers + 2), (None, workers)]  # the two writers count as workers while they write


def _written(job) -> int:
    return job
