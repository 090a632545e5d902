"""`schedule.window`: a pass that sees only the first few pending tasks of each job decides
exactly what a pass over all of them would, and the last reason it gives a job is the one every
task it did not look at would have got."""

from __future__ import annotations

import dataclasses
import random

from hybridctl.core.model import ClusterView, PendingTask, Policy, ScheduleDecision
from hybridctl.core.schedule import plan, window
from tests.unit.schedule_kit import node, random_cluster, task


def windowed(view: ClusterView, tasks: list[PendingTask]) -> tuple[list[PendingTask], dict[int, int]]:
    """What `Store.pending(window=...)` hands the scheduler: per job its first `window(head)`
    pending tasks by index; and per job the last index it handed over."""
    size = window(view)
    by_job: dict[int, list[PendingTask]] = {}
    for t in tasks:
        by_job.setdefault(t.job_id, []).append(t)
    out: list[PendingTask] = []
    last: dict[int, int] = {}
    for job, ts in by_job.items():
        ts.sort(key=lambda t: t.task)
        seen = ts[: max(1, size(ts[0]))]
        out += seen
        last[job] = seen[-1].task
    return out, last


def assert_same_as_full(view: ClusterView, tasks: list[PendingTask], policy: Policy) -> ScheduleDecision:
    full = plan(view, tasks, policy)
    seen, last = windowed(view, tasks)
    part = plan(view, seen, policy)
    assert part.placements == full.placements
    full_why = {(w.job_id, w.task): w.reason for w in full.waiting}
    part_why = {(w.job_id, w.task): w.reason for w in part.waiting}
    assert all(full_why[k] == r for k, r in part_why.items())
    # Every task not looked at waits, for the reason the job's last looked-at task got.
    job_reason = {}
    for w in part.waiting:
        job_reason[w.job_id] = w.reason  # waiting is in priority order: a job's tasks ascending
    for t in tasks:
        if t.task > last[t.job_id]:
            assert full_why[(t.job_id, t.task)] == job_reason[t.job_id], (t.job_id, t.task)
    return part


def widen(rng: random.Random, tasks: list[PendingTask]) -> list[PendingTask]:
    """Each job of a random cluster becomes an array of 1 to 60 tasks (some requeued ones: gaps)."""
    out = []
    for t in {t.job_id: t for t in tasks}.values():
        n = rng.choice([1, 2, 5, 20, 60])
        out += [dataclasses.replace(t, task=i) for i in range(n) if rng.random() < 0.9 or i == 0]
    return out


def test_a_window_decides_what_the_whole_queue_would_over_random_clusters() -> None:
    rng = random.Random(12)
    for _ in range(400):
        view, tasks, policy = random_cluster(rng)
        assert_same_as_full(view, widen(rng, tasks), policy)


def test_a_huge_array_is_read_as_what_could_start_plus_two() -> None:
    view = ClusterView(tuple(node(f"n{i}", busy=range(i)) for i in range(4)))  # 8+7+6+5 free GPUs
    big = [task(1, 1, index=i) for i in range(1, 20_001)]
    seen, _ = windowed(view, big)
    assert [t.task for t in seen] == list(range(1, 29))  # 26 could start, 2 more for the reasons
    d = assert_same_as_full(view, big, Policy())
    assert len(d.placements) == 26
    assert [w.reason for w in d.waiting] == ["resources: no node has 1 free GPU", "priority: behind job 1_27"]


def test_throttle_and_dependencies_shrink_the_window() -> None:
    view = ClusterView(tuple(node(f"n{i}") for i in range(4)), running_tasks_by_array={1: 2})
    throttled = [task(1, 1, index=i, throttle=3) for i in range(500)]
    blocked = [task(2, 1, index=i, deps=(9,)) for i in range(500)]
    seen, _ = windowed(view, throttled + blocked)
    assert sum(t.job_id == 1 for t in seen) == 3 and sum(t.job_id == 2 for t in seen) == 2
    assert_same_as_full(view, throttled + blocked, Policy())


def test_cpu_only_and_quota_bound_jobs_match_the_full_pass() -> None:
    view = ClusterView(tuple(node(f"n{i}", cpus=16, cpus_free=10.5) for i in range(3)),
                       gpus_in_use_by_user={"alice": 3})
    cpu_only = [task(1, 0, index=i, cpus=0.5) for i in range(400)]
    quota = [task(2, 1, index=i) for i in range(400)]
    other = [task(3, 2, index=i, user="bob", priority=5) for i in range(50)]
    assert_same_as_full(view, cpu_only + quota + other, Policy(user_gpu_quota={"alice": 8}))
