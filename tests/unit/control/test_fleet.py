"""The fleet's node sessions in-process, against fake agents and a real store: converge launches,
records ends and stops what the database no longer wants; a node is believed only about the ranks
it holds; silence turns into UNREACHABLE, then LOST."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from hybridctl import config
from hybridctl.config import FleetConfig
from hybridctl.core.model import JobStatus, NodeState
from hybridctl.core.reconcile import job_key
from tests.unit.control.parts import ALICE, Parts, build, stop_sessions
from tests.waiting import wait_for_async

S = JobStatus


async def running(parts: Parts) -> tuple[int, str, str]:
    """A 2-GPU job launched on its node and RUNNING there: (job, node, its rank's key)."""
    job, node = parts.place()
    await parts.session(node).poll()
    assert parts.state(job) is S.RUNNING
    return job, node, job_key(job, 0, 0, 0)


async def test_converge_launches_a_placed_rank_with_its_payload_and_marks_it_running(parts: Parts) -> None:
    job, node = parts.place(envs={"SEED": "7"})
    assert parts.state(job) is S.STARTING
    await parts.session(node).poll()
    (launch,) = parts.agents[node].ops("launch")
    payload = launch["job"]
    assert payload["key"] == job_key(job, 0, 0, 0) and payload["user"] == ALICE.user
    assert payload["envs"]["SEED"] == "7" and len(payload["gpus"]) == 2
    assert parts.state(job) is S.RUNNING
    other = ({"n1", "n2"} - {node}).pop()
    assert parts.agents[other].calls == []


async def test_an_exit_is_recorded_its_logs_copied_and_the_rank_forgotten(parts: Parts) -> None:
    job, node, key = await running(parts)
    parts.agents[node].exit(key, 0)
    await parts.session(node).poll()
    assert parts.state(job) is S.SUCCEEDED
    assert parts.lifecycle.log_path(key, "stdout").read_text() == f"log of {key}\n"
    assert parts.agents[node].ops("forget") == [{"key": key}]
    assert parts.store.task_nodes(job, 0) == []  # its GPUs are free again


async def test_a_non_zero_exit_fails_the_job_without_restarts(parts: Parts) -> None:
    job, node, key = await running(parts)
    parts.agents[node].exit(key, 3)
    await parts.session(node).poll()
    assert parts.state(job) is S.FAILED
    assert parts.ctl.op_show(ALICE, str(job))["tasks"][0]["exit_code"] == 3


async def test_a_rank_the_agent_no_longer_knows_is_requeued_as_a_recovery(parts: Parts) -> None:
    job, node, key = await running(parts)
    parts.agents[node].jobs.clear()  # e.g. the node rebooted
    await parts.session(node).poll()
    assert parts.state(job) is S.PENDING
    assert parts.store.retry_usage(job, 0).restarts == 0


async def test_cancel_stops_the_processes_and_frees_the_gpus_once_the_node_confirms(parts: Parts) -> None:
    job, node, key = await running(parts)
    s = parts.session(node)
    parts.ctl.op_cancel(ALICE, [str(job)])
    assert parts.state(job) is S.CANCELLED
    assert parts.store.task_nodes(job, 0) == [node]  # held until the node says the processes are gone
    await s.poll()
    # the fleet's generic stop grace: only a preempted job gets a preemption grace
    assert parts.agents[node].ops("cancel") == [{"key": key, "grace": parts.settings.fleet.poll_interval * 10}]
    await s.poll()  # the agent now lists it as exited (cancelled): forget it, release the allocation
    assert parts.agents[node].ops("forget") == [{"key": key}]
    assert parts.store.task_nodes(job, 0) == []


@pytest.mark.parametrize("env, grace", [({}, 30.0), ({"HYBRIDCTL_SCHEDULER__PREEMPT_GRACE": "45"}, 45.0)])
async def test_an_on_prem_priority_preemption_stops_the_job_with_scheduler_preempt_grace(
        tmp_path: Path, env: dict[str, str], grace: float) -> None:
    """A job preempted on an on-prem node by a higher-priority one gets `scheduler.preempt_grace`
    to write its final checkpoint, not the fleet's generic stop grace (`fleet.poll_interval` x 10:
    0.2 s here, which cut the checkpoint of a job preempted for `preempt_checkpointing` short)."""
    settings = dataclasses.replace(config.load(None, env=env), home=str(tmp_path),
                                   fleet=FleetConfig(poll_interval=0.02, checkpoint_sync_interval=3600))
    parts = build(tmp_path, names=("n1",), settings=settings)
    try:
        victim, node = parts.place(preemptible=True)
        s = parts.session(node)
        await s.poll()
        assert parts.state(victim) is S.RUNNING
        parts.submit(priority=50)
        parts.scheduler.schedule()
        assert parts.state(victim) is S.PREEMPTED
        await s.poll()
        assert parts.agents[node].ops("cancel") == [{"key": job_key(victim, 0, 0, 0), "grace": grace}]
    finally:
        parts.store.close()


async def test_a_node_reporting_a_rank_it_does_not_hold_is_not_believed(parts: Parts,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    job, node, key = await running(parts)
    liar = ({"n1", "n2"} - {node}).pop()
    # The other node claims the job ended there with success: it is only told to forget it.
    parts.agents[liar].jobs[key] = {"key": key, "state": "exited", "exit_code": 0}
    with caplog.at_level(logging.WARNING):
        await parts.session(liar).poll()
    assert parts.state(job) is S.RUNNING and parts.store.task_nodes(job, 0) == [node]
    assert parts.agents[liar].ops("forget") == [{"key": key}]
    assert f"reported job {key} as ended, but that rank was placed on {node}" in caplog.text
    assert not parts.lifecycle.log_path(key, "stdout").exists()  # nothing copied from the wrong node
    # ... and claims it runs there: stopped on that node only.
    parts.agents[liar].jobs[key] = {"key": key, "state": "running", "pid": 77}
    await parts.session(liar).poll()
    assert [c["key"] for c in parts.agents[liar].ops("cancel")] == [key]
    assert parts.agents[node].ops("cancel") == [] and parts.state(job) is S.RUNNING


async def test_release_and_finish_from_the_wrong_node_are_ignored(parts: Parts) -> None:
    job, node, key = await running(parts)
    liar = ({"n1", "n2"} - {node}).pop()
    parts.lifecycle.rank_finished(key, 0, "exit code 0", S.SUCCEEDED, node=liar)
    parts.lifecycle.release(key, node=liar)
    assert parts.state(job) is S.RUNNING and parts.store.task_nodes(job, 0) == [node]


@pytest.mark.parametrize("record", [
    {"state": "exited", "exit_code": 300},  # out of range
    {"state": "bogus"},
    {"state": "running", "pid": -1},
])
async def test_a_malformed_record_of_a_running_rank_leaves_it_alone(parts: Parts, record: dict[str, object]) -> None:
    job, node, key = await running(parts)
    parts.agents[node].jobs[key] = {"key": key, **record}
    await parts.session(node).poll()
    assert parts.state(job) is S.RUNNING  # neither finished nor requeued as vanished
    assert parts.agents[node].ops("forget") == [] and parts.agents[node].ops("cancel") == []


@pytest.mark.parametrize("answer", [{"jobs": "none"}, ["not", "an", "object"], {"jobs": None}])
async def test_an_unusable_listing_never_reads_as_no_jobs(parts: Parts, answer: object) -> None:
    job, node, key = await running(parts)
    parts.agents[node].listing = lambda: answer
    await parts.session(node).poll()
    assert parts.state(job) is S.RUNNING


async def test_a_listing_that_names_a_rank_twice_leaves_it_alone(parts: Parts) -> None:
    job, node, key = await running(parts)
    parts.agents[node].listing = lambda: {"jobs": [{"key": key, "state": "exited", "exit_code": 0},
                                                   {"key": key, "state": "running", "pid": 5}]}
    await parts.session(node).poll()
    assert parts.state(job) is S.RUNNING and parts.agents[node].ops("forget") == []


async def test_silence_makes_a_node_unreachable_then_lost_and_its_jobs_requeued(parts: Parts) -> None:
    job, node, key = await running(parts)
    s = parts.session(node)
    s.last_ok = 0.0
    parts.mono.t = parts.settings.fleet.unreachable_after + 1
    parts.fleet.on_silence(s, "no answer")
    assert parts.store.node(node).link_state is NodeState.UNREACHABLE and parts.state(job) is S.RUNNING
    parts.mono.t = parts.settings.fleet.lost_after + 1
    parts.fleet.on_silence(s, "no answer")
    assert parts.store.node(node).link_state is NodeState.LOST
    assert parts.state(job) is S.PENDING and parts.store.task_nodes(job, 0) == []
    await s.poll()  # it answers again
    assert parts.store.node(node).link_state is NodeState.UP


async def test_every_answer_of_an_up_node_moves_its_last_seen_without_a_scheduling_pass(parts: Parts) -> None:
    """The TUI showed an UP node, sending telemetry, as 'seen 1:16 ago': `last_seen` moved only
    when the node came (back) UP. Now each answer moves it, written at most every SEEN_EVERY s."""
    s = parts.session("n1")
    came_up = parts.store.node("n1").last_seen
    await s.poll()
    assert parts.store.node("n1").last_seen == came_up  # within SEEN_EVERY: no write
    parts.clock.t += 76
    changes = len(parts.changes)
    await s.poll()
    assert parts.store.node("n1").last_seen == parts.clock.t and len(parts.changes) == changes
    parts.clock.t += 1
    await s.poll()
    assert parts.store.node("n1").last_seen == parts.clock.t - 1
    s.last_ok = 0.0
    parts.mono.t = parts.settings.fleet.unreachable_after + 1
    parts.fleet.on_silence(s, "no answer")  # a silent node's last_seen stays where it was
    parts.clock.t += 60
    parts.fleet.on_silence(s, "no answer")
    assert parts.store.node("n1").last_seen == parts.clock.t - 61


async def test_sessions_run_hello_launch_and_record_an_end_through_the_watcher(parts: Parts) -> None:
    """The whole session loop (connect, hello, poll, watch) on fake links, in milliseconds."""
    parts.agents["n1"].hello["cpus"] = 6.0
    parts.fleet.sync()
    try:
        assert set(parts.fleet.sessions) == {"n1", "n2"}
        await wait_for_async(lambda: parts.store.node("n1").cpus == 8.0 and parts.fleet.telemetry().keys() == {"n1", "n2"},
                             what="both hellos and a sample")  # cpus: the config's count wins over the agent's
        job, node = parts.place()
        parts.fleet.kick(node)
        await wait_for_async(lambda: parts.state(job) is S.RUNNING, what="the launch")
        parts.agents[node].exit(job_key(job, 0, 0, 0), 0)
        await wait_for_async(lambda: parts.state(job) is S.SUCCEEDED, what="the end, seen by the watcher")
        assert parts.fleet.link_state(node) == ("", "none: in-process test")
        assert (await parts.fleet.call_agent(node, "hello"))["node"] == node
    finally:
        await stop_sessions(parts.fleet)
    assert parts.fleet.sessions == {} and parts.fleet.link_state("n1") is None
