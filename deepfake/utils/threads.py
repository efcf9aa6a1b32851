"""The thread budget: how many threads and worker processes a command runs, decided here and nowhere else.

A process may use fewer CPUs than the machine has: its affinity (``taskset``, a batch system's
binding) and its cgroup's CPU quota (a container or a job given 4 CPUs of a 64-core node) bound
it. Torch, MKL and OpenBLAS start one thread per core of the machine; on a node shared with
other work those threads wait for each other at every parallel step, each wait a scheduler time
slice: ``deepfake predict`` beside two busy processes on 2 cores ran 3 to 9 times slower with two
threads than with one (docs/performance.md). So the budget is:

- ``cpus``: the CPUs this process may use (affinity, then the cgroup quota, rounded down);
- ``workers``: decode worker processes (``--num_workers``), each one thread;
- ``threads``: the main process's intra-op threads (torch, and the BLAS libraries through
  threadpoolctl): ``--threads`` when given, else the CPUs left after the workers and after what
  other processes were measured to use on those CPUs over the last interval (``/proc/stat``,
  less this process tree's own time), never fewer than 1. A chosen (not given) budget is measured
  again every :data:`REFRESH_SECONDS` by the loops that run long (:func:`refresh`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_STAT = Path("/proc/stat")
# How often a chosen budget is measured again, and the shortest window a measurement trusts.
REFRESH_SECONDS = 5.0
MIN_WINDOW_SECONDS = 0.2
# A CPU counts as free when others leave more than this share of it idle. The rounding leans to
# fewer threads: on 2 cores one thread too few cost 8% idle, one too many 3 to 9 times (docs/performance.md).
FREE_SHARE = 0.75
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def affinity_cpus() -> set[int]:
    """The CPU numbers this process may run on (its affinity; every CPU where that is not known)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """``{controller: path}`` from ``/proc/self/cgroup`` (``""`` for the v2 hierarchy)."""
    paths = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _ancestors(base: Path, path: str) -> list[Path]:
    """``base/path`` and each folder above it up to ``base`` (a quota anywhere above applies too)."""
    parts = [p for p in path.split("/") if p]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" or "200000 100000"
    if not text or text.split()[0] == "max":
        return None
    quota, period = (text.split() + ["100000"])[:2]
    return int(quota) / int(period) if int(period) > 0 else None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0 or int(period) <= 0:
        return None  # -1: no quota
    return int(quota) / int(period)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPUs the cgroup's quota allows this process (quota / period, the tightest on its path); None: no quota.

    cgroup v2: ``ROOT/PATH/cpu.max``; v1: ``ROOT/cpu/PATH/cpu.cfs_quota_us`` and ``cpu.cfs_period_us``
    (also under ``cpu,cpuacct``). PATH is this process's cgroup from ``/proc/self/cgroup``
    (``/`` inside a container, whose own cgroup is mounted at the root).
    """
    paths = _cgroup_paths(proc_cgroup)
    found = []
    for folder in _ancestors(root, paths.get("", "/")):
        found.append(_v2_quota(folder))
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        v1_path = paths.get("cpu", "/")
        for folder in _ancestors(root / name, v1_path):
            found.append(_v1_quota(folder))
    quotas = [q for q in found if q is not None]
    return min(quotas) if quotas else None


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The CPUs this process may use: its affinity, bounded by its cgroup quota (rounded down), at least 1."""
    cpus = len(affinity_cpus())
    quota = cgroup_cpu_quota(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.floor(quota + 1e-9))
    return max(1, cpus)


def default_workers(cpus: int | None = None) -> int:
    """Decode worker processes that leave the tower its cores: none on 2 usable CPUs, up to 8 on large ones."""
    return min(8, max(0, (cpus or usable_cpus()) - 2))


# --- what others use of our CPUs -------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """Busy time of this process's CPUs (all processes) and of this process tree, at one moment (seconds)."""

    wall: float
    busy: float
    own: float


def _busy_seconds(cpus: set[int], proc_stat: Path = PROC_STAT) -> float | None:
    """Seconds the CPUs ``cpus`` spent busy since boot (every process; idle and iowait excluded)."""
    text = _read(proc_stat)
    if text is None:
        return None
    ticks = 0
    for line in text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            ticks += sum(values) - values[3] - values[4]
    return ticks / _CLOCK_TICKS


def _child_seconds(pid: int) -> float:
    """CPU seconds of ``pid``'s live descendants (decode workers), from ``/proc``."""
    total, todo = 0.0, [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            stat = _read(Path(f"/proc/{child}/stat"))
            if stat:
                fields = stat.rsplit(")", 1)[-1].split()
                total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
            todo.append(int(child))
    return total


def cpu_sample(cpus: set[int] | None = None, proc_stat: Path = PROC_STAT) -> CpuSample | None:
    """A :class:`CpuSample` now; None where ``/proc/stat`` cannot be read (not Linux)."""
    busy = _busy_seconds(cpus if cpus is not None else affinity_cpus(), proc_stat)
    if busy is None:
        return None
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system + _child_seconds(os.getpid())
    return CpuSample(time.monotonic(), busy, own)


def busy_elsewhere(before: CpuSample, after: CpuSample) -> float:
    """CPUs (a fraction of each) that other processes kept busy between two samples."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / wall)


# --- the budget ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThreadBudget:
    """Threads and worker processes of one command, and what they were decided from."""

    cpus: int  # usable CPUs (affinity and cgroup quota)
    threads: int  # intra-op threads of the main process
    workers: int  # decode worker processes
    busy: float | None = None  # CPUs other processes were measured to use; None: not measured
    fixed: bool = False  # --threads was given: never measured again

    def describe(self) -> str:
        why = "as asked" if self.fixed else (f"{self.busy:.1f} CPUs busy elsewhere" if self.busy is not None
                                            else "nothing measured")
        return f"{self.threads} thread(s) + {self.workers} decode worker(s) on {self.cpus} usable CPU(s) ({why})"


def decide(cpus: int, workers: int, threads: int | None = None, busy: float | None = None,
           visible: int | None = None) -> ThreadBudget:
    """The budget from plain numbers: ``threads`` (``--threads``) wins, capped at ``cpus``; else the CPUs
    left after ``workers`` and after ``busy`` CPUs others use of the ``visible`` ones measured (default ``cpus``)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        return ThreadBudget(cpus, min(threads, cpus), workers, busy, fixed=True)
    room = cpus - workers
    if busy is not None:
        free = (visible or cpus) - busy  # what others leave of the CPUs measured
        room = min(room, math.floor(free + (1 - FREE_SHARE)) - workers)
    return ThreadBudget(cpus, max(1, room), workers, busy)


_applied: dict = {}  # the budget in force, its last CPU sample, and the CPUs measured


def apply(budget: ThreadBudget) -> ThreadBudget:
    """Set torch's intra-op threads and the BLAS/OpenMP libraries' pools (threadpoolctl) to ``budget.threads``."""
    import torch

    if torch.get_num_threads() != budget.threads:
        torch.set_num_threads(budget.threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # torch's own pools are set; numpy's BLAS keeps its default
        pass
    else:
        threadpool_limits(limits=budget.threads)
    _applied["budget"] = budget
    return budget


def budget_threads(threads: int | None = None, workers: int | None = None, cpus: int | None = None) -> ThreadBudget:
    """Decide this process's budget (``--threads``, ``--num_workers``), measure what others use, apply it, log it.

    The measurement window runs from the last sample (the first: when this module was imported,
    before the command loaded torch) to now, at least :data:`MIN_WINDOW_SECONDS`.
    """
    # Ranks of one node (torchrun) share its CPUs; an OMP_NUM_THREADS set by the user (or torchrun) is a --threads.
    cpus = cpus or max(1, usable_cpus() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    workers = default_workers(cpus) if workers is None else workers
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    visible = affinity_cpus()
    busy = None
    if threads is None:
        busy = _measure(visible, _applied.get("sample") or _START)
    budget = apply(decide(cpus, workers, threads, busy, len(visible)))
    log.info("threads: %s", budget.describe())
    return budget


def _measure(visible: set[int], before: CpuSample | None) -> float | None:
    if before is None:
        return None
    wait = MIN_WINDOW_SECONDS - (time.monotonic() - before.wall)
    if wait > 0:
        time.sleep(wait)
    after = cpu_sample(visible)
    if after is None:
        return None
    _applied["sample"] = after
    return busy_elsewhere(before, after)


def refresh() -> ThreadBudget | None:
    """Measure a chosen budget again if :data:`REFRESH_SECONDS` have passed (long loops call it each step).

    Returns the budget in force; None where no budget was applied (a library caller's own threads
    are left alone) or ``--threads`` fixed it.
    """
    budget = _applied.get("budget")
    if budget is None or budget.fixed:
        return budget
    last = _applied.get("sample")
    if last is not None and time.monotonic() - last.wall < REFRESH_SECONDS:
        return budget
    visible = affinity_cpus()
    busy = _measure(visible, last)
    if busy is None:
        return budget
    # While this process runs, its own threads hold part of what it can see: they are not "others".
    new = decide(budget.cpus, budget.workers, None, busy, len(visible))
    if new.threads != budget.threads:
        log.debug("threads: %s", new.describe())
        return apply(new)
    _applied["budget"] = replace(budget, busy=busy)
    return _applied["budget"]


_START = cpu_sample()
