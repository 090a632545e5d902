"""`Store.stopped_runs`: per PENDING task placed before, the longest run one of its earlier attempts
made before it was stopped without finishing (the burst policy's `World.ran`, read with
`Limits.lindy`). A real SQLite store in tmp_path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

from hybridctl.core.fields import parse_array
from hybridctl.core.model import JobSpec, JobStatus, Placement
from hybridctl.store.sqlite import Store, Submitter

WHO = Submitter(1000, "alice", 1000, "lab")
T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "hybridctl.db")
    yield s
    s.close()


def attempt(store: Store, job: int, task: int, starts: list[float], ends: list[float | None],
            then: JobStatus = JobStatus.PENDING) -> None:
    """One attempt of a task: its ranks placed at `starts` (all at the first: `start` places a gang
    at once, the later starts are written as a late rank's would be), RUNNING, stopped as at a
    reclaim notice (PREEMPTED, holding its GPUs), each rank released at its end (None: never),
    then requeued (`then`)."""
    store.start([Placement(job, task, f"n{r}", (0,), 1.0, 0, rank=r) for r in range(len(starts))], starts[0])
    with store.tx() as c:
        for r, s in enumerate(starts):
            c.execute("UPDATE allocations SET start=? WHERE job_id=? AND task=? AND rank=? AND end IS NULL",
                      (s, job, task, r))
    store.transition(job, task, JobStatus.RUNNING, reason="", actor_uid=None, now=starts[0])
    store.transition(job, task, JobStatus.PREEMPTED, reason="spot reclaim", actor_uid=None, now=starts[0] + 1,
                     release=False)
    (a,) = {st.attempt for st in store.task_states(job, task)}
    for r, e in enumerate(ends):
        if e is not None:
            store.release_rank(job, task, a, r, e)
    if then is not JobStatus.PREEMPTED:
        store.transition(job, task, then, reason="requeued", actor_uid=None, now=max(e or 0 for e in ends),
                         release=False, recovery="preemption")


def test_the_longest_ended_attempt_of_each_pending_task_and_nothing_for_others(store: Store) -> None:
    gang = store.submit(JobSpec(run="train", num_nodes=2), WHO, T0)
    attempt(store, gang, 0, [T0 + 100, T0 + 110], [T0 + 1000, T0 + 1200])  # its ranks span 1,100 s
    attempt(store, gang, 0, [T0 + 2000, T0 + 2000], [T0 + 2500, T0 + 2400])  # a shorter second one
    fresh = store.submit(JobSpec(run="x"), WHO, T0)  # never placed
    open_rank = store.submit(JobSpec(run="y", num_nodes=2), WHO, T0)
    attempt(store, open_rank, 0, [T0, T0], [T0 + 900, None])  # one rank never confirmed gone
    running = store.submit(JobSpec(run="z"), WHO, T0)
    attempt(store, running, 0, [T0], [T0 + 700])
    store.start([Placement(running, 0, "n0", (0,), 1.0, 0)], T0 + 800)  # placed again: not pending
    stopped = store.submit(JobSpec(run="w"), WHO, T0)
    attempt(store, stopped, 0, [T0], [T0 + 300], then=JobStatus.PREEMPTED)  # not requeued yet
    assert store.stopped_runs() == {(gang, 0): 1100.0}
    assert store.stopped_runs(gang) == {(gang, 0): 1100.0}
    assert store.stopped_runs(fresh) == {} and store.stopped_runs(open_rank) == {}
    store.transition(running, 0, JobStatus.RUNNING, reason="", actor_uid=None, now=T0 + 800)
    store.transition(running, 0, JobStatus.PENDING, reason="exit 1, restarting", actor_uid=None, now=T0 + 5000,
                     count_restart=True)  # its second attempt outlived the first, and failed
    assert store.stopped_runs() == {(gang, 0): 1100.0, (running, 0): 4200.0}


def test_array_tasks_are_kept_apart(store: Store) -> None:
    arr = store.submit(JobSpec(run="x", array=parse_array("0-2")), WHO, T0)
    attempt(store, arr, 1, [T0], [T0 + 60])
    attempt(store, arr, 2, [T0], [T0 + 7200])
    assert store.stopped_runs() == {(arr, 1): 60.0, (arr, 2): 7200.0}
    assert store.stopped_runs(arr + 1) == {}


def test_it_reads_pending_tasks_through_the_state_index_and_allocations_through_theirs(store: Store) -> None:
    """10,000 pending tasks cost one index range and one keyed look-up each, never a scan of allocations."""
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    try:
        store.stopped_runs()
    finally:
        store.conn.set_trace_callback(None)
    (sql,) = [q for q in seen if "allocations" in q]
    plan = " ".join(str(r[-1]) for r in store.conn.execute("EXPLAIN QUERY PLAN " + sql))
    assert "INDEX tasks_state" in plan and "INDEX allocations_task" in plan, plan
    assert not re.search(r"SCAN (a|t|allocations|tasks)\b(?! USING)", plan), plan
