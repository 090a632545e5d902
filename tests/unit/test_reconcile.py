"""The reconciler: dispatch, adoption, results and stragglers as one pure function."""

from __future__ import annotations

import pytest

from hybridctl.core.model import JobStatus
from hybridctl.core.reconcile import (
    ActiveRank,
    AgentJob,
    Finished,
    Forget,
    Launch,
    Started,
    Stop,
    Vanished,
    job_key,
    outcome,
    parse_key,
    reconcile,
)

S = JobStatus


def rank(job: int, state: JobStatus, task: int = 0, attempt: int = 0) -> ActiveRank:
    return ActiveRank(job, task, attempt, 0, state)


@pytest.mark.parametrize("key, parsed", [
    ("42.a0.r0", (42, 0, 0, 0)), ("42_7.a1.r2", (42, 7, 1, 2)), ("x.a0.r0", None), ("42.a0", None),
])
def test_keys_round_trip(key: str, parsed: tuple[int, int, int, int] | None) -> None:
    assert parse_key(key) == parsed
    if parsed:
        assert job_key(*parsed) == key


def test_placed_task_unknown_to_agent_is_launched() -> None:
    r = rank(1, S.STARTING)
    assert reconcile([r], []) == [Launch(r)]


def test_running_on_agent_is_adopted_not_relaunched() -> None:
    assert reconcile([rank(1, S.STARTING)], [AgentJob("1.a0.r0", True)]) == [Started(1, 0)]
    assert reconcile([rank(1, S.RUNNING)], [AgentJob("1.a0.r0", True)]) == []


def test_result_that_came_while_away_is_recorded() -> None:
    acts = reconcile([rank(1, S.RUNNING)], [AgentJob("1.a0.r0", False, exit_code=3)])
    assert acts == [Finished(1, 0, S.FAILED, 3, "exit code 3", "1.a0.r0")]


def test_running_task_the_agent_forgot_vanished() -> None:
    assert reconcile([rank(5, S.RUNNING)], []) == [Vanished(5, 0)]


def test_stragglers_are_stopped_then_forgotten() -> None:
    # An old attempt still running (the job was requeued and runs elsewhere) and a finished one.
    agent = [AgentJob("9.a0.r0", True), AgentJob("8.a0.r0", False, exit_code=0)]
    assert reconcile([rank(9, S.RUNNING, attempt=1)], agent + [AgentJob("9.a1.r0", True)]) == [
        Stop("9.a0.r0"), Forget("8.a0.r0")]


@pytest.mark.parametrize("job, expected", [
    (AgentJob("k", False, 0), (S.SUCCEEDED, "exit code 0")),
    (AgentJob("k", False, 1), (S.FAILED, "exit code 1")),
    (AgentJob("k", False, None, signal=9), (S.FAILED, "killed by signal 9")),
    (AgentJob("k", False, None, 15, "timeout"), (S.TIMEOUT, "time limit reached")),
    (AgentJob("k", False, None, 15, "cancelled"), (S.CANCELLED, "cancelled on the node")),
    (AgentJob("k", False, None, None, "lost: supervisor died"), (S.FAILED, "lost: supervisor died")),
])
def test_outcomes(job: AgentJob, expected: tuple[JobStatus, str]) -> None:
    assert outcome(job) == expected
