"""A 20,000-task array through the controller in-process (real SQLite, injected clock): every
task starts, in index order, as capacity frees; the tasks a pass did not look at still show why
they wait; and no pass reads more than a window of the array."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from hybridctl.config import LimitsConfig, NodeConfig, Settings
from hybridctl.control.identity import Caller
from hybridctl.control.nodes import config_record
from hybridctl.control.service import Controller
from hybridctl.core.model import JobStatus
from hybridctl.store.sqlite import Store

ALICE = Caller(1001, 1001, "alice", "lab", admin=False)
TASKS = 20_000
SLOTS = 4 * 8


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Controller]:
    limits = LimitsConfig(max_array_tasks=TASKS, max_pending_tasks_per_user=TASKS)
    store = Store(tmp_path / "hybridctl.db")
    clock = Clock()
    for i in range(4):
        store.add_node(config_record(NodeConfig(name=f"n{i}", gpus="8xA100", cpus=32, memory="256G",
                                                simulated=True)), clock())
    yield Controller(store, Settings(home=str(tmp_path), limits=limits), clock=clock)
    store.close()


def finish(ctl: Controller, started: list[tuple[int, int]]) -> None:
    """The node reports each started task ran and exited 0 (its GPUs are released)."""
    now = ctl.clock()
    with ctl.store.tx() as c:
        for job, t in started:
            ctl.store.transition(job, t, JobStatus.RUNNING, reason="", actor_uid=None, now=now, conn=c)
            ctl.store.transition(job, t, JobStatus.SUCCEEDED, reason="", actor_uid=None, now=now, exit_code=0,
                                 conn=c)


def reasons(ctl: Controller, job: int) -> dict[int, str]:
    return {r["task"]: r["reason"] for r in ctl.op_queue(ALICE) if r["job_id"] == job and r["state"] == "PENDING"}


def test_every_task_of_a_20k_array_starts_in_order_as_gpus_free(ctl: Controller) -> None:
    job = int(ctl.op_submit(ALICE, {"run": "true", "resources": {"accelerators": 1}, "array": f"1-{TASKS}"})["id"])
    seen = []
    reads = []
    real_pending = ctl.store.pending

    def counting(*a: object, **kw: object) -> list:
        got = real_pending(*a, **kw)  # type: ignore[arg-type]
        reads.append(len(got))
        return got

    ctl.store.pending = counting  # type: ignore[method-assign]
    d = ctl.schedule()
    first = [(p.job_id, p.task) for p in d.placements]
    assert [t for _, t in first] == list(range(1, SLOTS + 1))
    why = reasons(ctl, job)
    assert len(why) == TASKS - SLOTS
    assert why[SLOTS + 1] == "resources: no node has 1 free GPU"
    # Tasks the pass never looked at show the array's reason, not an empty or stale one.
    assert {why[t] for t in range(SLOTS + 2, TASKS + 1)} == {f"priority: behind job {job}_{SLOTS + 1}"}
    assert ctl.store.job(job)["tasks"][-1]["reason"] == f"priority: behind job {job}_{SLOTS + 1}"
    seen += first
    started = first
    while started:
        finish(ctl, started)
        ctl.clock.t += 1  # type: ignore[attr-defined]
        started = [(p.job_id, p.task) for p in ctl.schedule().placements]
        seen += started
    assert [t for _, t in seen] == list(range(1, TASKS + 1))
    assert max(reads) <= SLOTS + 2  # never the whole array
    assert reasons(ctl, job) == {}


def test_a_failed_dependency_cancels_a_large_array_over_several_passes(ctl: Controller) -> None:
    first = int(ctl.op_submit(ALICE, {"run": "false", "resources": {"accelerators": 1}})["id"])
    after = int(ctl.op_submit(ALICE, {"run": "true", "array": "1-5000", "depends_on": [first],
                                      "resources": {"accelerators": 1}})["id"])
    woken = []
    ctl = Controller(ctl.store, ctl.settings, ctl.clock, on_change=lambda: woken.append(1))
    ctl.schedule()
    assert reasons(ctl, after)[5000] == f"dependency: waiting for job {first}"
    now = ctl.clock()
    ctl.store.transition(first, 0, JobStatus.RUNNING, reason="", actor_uid=None, now=now)
    ctl.store.transition(first, 0, JobStatus.FAILED, reason="exit 1", actor_uid=None, now=now, exit_code=1)
    passes = 0
    while reasons(ctl, after):
        ctl.schedule()
        passes += 1
        assert passes < 10
    assert passes == 3 and len(woken) == 2  # 2000 per pass, a wake-up while more remain
    states = {r.state for r in ctl.store.task_states(after)}
    assert states == {JobStatus.CANCELLED}
