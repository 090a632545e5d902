"""A node is believed only about itself: the reconciler's ownership rule, the controller's guard on
release and finish, and the supervisor that restarts a failing task instead of ending the daemon."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Iterator

import pytest

from hybridctl.config import NodeConfig, Settings
from hybridctl.control.nodes import config_record
from hybridctl.control.service import Controller
from hybridctl.control.supervisor import supervise
from hybridctl.core.model import JobStatus
from hybridctl.core.reconcile import ActiveRank, AgentJob, Finished, Forget, Launch, Stop, Vanished, reconcile
from hybridctl.store.sqlite import Store
from tests.unit.controller_kit import ALICE, Clock, submit

S = JobStatus


# ---- the reconciler ------------------------------------------------------------------------------

def test_an_ended_job_of_another_node_is_only_forgotten_here() -> None:
    # Job 1 runs elsewhere: this node holds no allocation of it, so nothing may be released or copied.
    assert reconcile([], [AgentJob("1.a0.r0", False, 0)], held=set()) == [Forget("1.a0.r0", held=False)]


def test_a_stopped_rank_of_this_node_is_forgotten_and_released() -> None:
    # Cancelled here (its allocation still open on this node until the processes are gone).
    assert reconcile([], [AgentJob("1.a0.r0", False, None, 15, "cancelled")], held={"1.a0.r0"}) == [
        Forget("1.a0.r0", held=True)]


def test_a_running_job_of_another_node_is_stopped_on_the_reporting_node_only() -> None:
    assert reconcile([], [AgentJob("1.a0.r0", True)], held=set()) == [Stop("1.a0.r0")]


@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING])
def test_a_rank_with_an_unreadable_record_is_left_alone(state: JobStatus) -> None:
    """Neither relaunched, finished nor requeued as vanished: the node said something about it,
    just nothing believable."""
    r = ActiveRank(1, 0, 0, 0, state)
    assert reconcile([r], [], unreadable={"1.a0.r0"}) == []
    assert reconcile([r], [])[0] == (Launch(r) if state is S.STARTING else Vanished(1, 0))


def test_results_are_still_recorded_for_this_nodes_own_ranks() -> None:
    r = ActiveRank(2, 0, 0, 0, S.RUNNING)
    acts = reconcile([r], [AgentJob("2.a0.r0", False, 0), AgentJob("1.a0.r0", False, 0)], held={"2.a0.r0"})
    assert acts == [Finished(2, 0, S.SUCCEEDED, 0, "exit code 0", "2.a0.r0"), Forget("1.a0.r0", held=False)]


# ---- the controller's guard ----------------------------------------------------------------------

@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Controller]:
    clock = Clock()
    store = Store(tmp_path / "hybridctl.db")
    for name in ("n1", "n2"):
        store.add_node(config_record(NodeConfig(name=name, gpus="2xA100", cpus=8, memory="64G", simulated=True)),
                       clock())
    yield Controller(store, Settings(home=str(tmp_path)), clock=clock)
    store.close()


def placed(ctl: Controller) -> tuple[int, str, str]:
    """A 2-GPU job placed on one of the two nodes: (job, its node, the other node)."""
    job = submit(ctl, ALICE, resources={"accelerators": "A100:2"})
    ctl.schedule()
    (node,) = ctl.store.task_nodes(job, 0)
    return job, node, ({"n1", "n2"} - {node}).pop()


def test_another_node_cannot_release_a_rank(ctl: Controller) -> None:
    job, node, other = placed(ctl)
    ctl.lifecycle.preempt(job, 0, "reclaim notice")  # PREEMPTED, keeping its allocation until its node confirms
    ctl.lifecycle.release(f"{job}.a0.r0", node=other)
    assert ctl.store.task_nodes(job, 0) == [node]
    assert ctl.lifecycle.held_keys(node) == {f"{job}.a0.r0"} and ctl.lifecycle.held_keys(other) == set()
    ctl.lifecycle.release(f"{job}.a0.r0", node=node)
    assert ctl.store.task_nodes(job, 0) == []


def test_another_node_cannot_finish_a_rank(ctl: Controller) -> None:
    job, node, other = placed(ctl)
    ctl.lifecycle.rank_finished(f"{job}.a0.r0", 0, "exit code 0", S.SUCCEEDED, node=other)
    assert ctl.store.task_states(job, 0)[0].state is S.STARTING and ctl.store.task_nodes(job, 0) == [node]
    ctl.lifecycle.rank_finished(f"{job}.a0.r0", 0, "exit code 0", S.SUCCEEDED, node=node)
    assert ctl.store.task_states(job, 0)[0].state is S.SUCCEEDED


# ---- supervision ---------------------------------------------------------------------------------

async def test_a_task_that_raises_is_logged_once_with_its_traceback_and_restarted_with_backoff(
        caplog: pytest.LogCaptureFixture) -> None:
    runs = 0
    delays: list[float] = []
    healthy = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            raise OSError(24, "Too many open files")
        healthy.set()
        await asyncio.Event().wait()  # then runs until stopped

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    caplog.set_level(logging.ERROR, "hybridctl.supervisor")
    task = asyncio.create_task(supervise("schedule", flaky, first=0.5, cap=2.0, sleep=sleep, jitter=lambda: 0.5))
    await asyncio.wait_for(healthy.wait(), 5)
    assert not task.done()
    assert delays == [0.5, 1.0, 2.0, 2.0]  # doubling, bounded
    records = [r for r in caplog.records if "schedule" in r.getMessage()]
    assert len(records) == 4
    assert [r.exc_info is not None for r in records] == [True, False, False, False]  # the traceback once
    assert "Too many open files" in records[1].getMessage()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # only a stop ends it


async def test_a_task_that_returns_is_restarted_too(caplog: pytest.LogCaptureFixture) -> None:
    runs = 0
    third = asyncio.Event()

    async def quits() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            third.set()

    async def sleep(seconds: float) -> None:
        await asyncio.sleep(0)

    task = asyncio.create_task(supervise("monitor", quits, sleep=sleep))
    await asyncio.wait_for(third.wait(), 5)
    task.cancel()
    assert "returned although it should run until stopped" in caplog.text


async def test_a_long_healthy_run_resets_the_backoff() -> None:
    now = [0.0]
    runs = 0
    delays: list[float] = []
    done = asyncio.Event()

    async def fails_after(seconds: list[float]) -> None:
        nonlocal runs
        now[0] += seconds[runs]
        runs += 1
        if runs == len(seconds):
            done.set()
            await asyncio.Event().wait()
        raise RuntimeError("boom")

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    pattern = [1.0, 1.0, 120.0, 1.0, 0.0]
    task = asyncio.create_task(supervise("autoscaler", lambda: fails_after(pattern), first=1.0, cap=30.0,
                                         healthy_after=60.0, sleep=sleep, clock=lambda: now[0], jitter=lambda: 0.5))
    await asyncio.wait_for(done.wait(), 5)
    task.cancel()
    assert delays == [1.0, 2.0, 1.0, 2.0]
