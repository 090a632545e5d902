"""What the store's queries return: named rows instead of bare tuples.

Each is a NamedTuple whose fields are in the order the old tuples had, so `for j, t, n, ... in`
callers keep working while new code reads `row.node`. The state lists that queries inline (for
index probes on `tasks_state`) come from `JobStatus`, never from string literals."""

from __future__ import annotations

from typing import NamedTuple

from hybridctl.core.model import JobStatus


def sql_states(states: "frozenset[JobStatus] | list[JobStatus]") -> str:
    """`'A', 'B'`: states as an inline SQL list (enum values only, never user input)."""
    return ", ".join(f"'{s.value}'" for s in sorted(states, key=lambda s: s.value))


TERMINAL_SQL = sql_states([s for s in JobStatus if s.is_terminal()])
"""SUCCEEDED, FAILED, CANCELLED, TIMEOUT: from `JobStatus.is_terminal`, the one terminal set."""
ACTIVE_SQL = sql_states([s for s in JobStatus if s.is_active()])
"""STARTING, RUNNING: a task that holds resources on a node."""
NOT_SUCCEEDED_SQL = sql_states([s for s in JobStatus if s is not JobStatus.SUCCEEDED])
"""Every state but SUCCEEDED (a dependency not met yet, or never to be)."""
FAILED_END_SQL = sql_states([s for s in JobStatus if s.is_terminal() and s is not JobStatus.SUCCEEDED])
"""The terminal states but SUCCEEDED: a dependency that will never be met."""

NOT_TERMINAL_SQL = sql_states([s for s in JobStatus if not s.is_terminal()])
"""Every state but the terminal ones: a task not finished yet (for afterany, afternotok, singleton)."""


class TaskState(NamedTuple):
    task: int
    state: JobStatus
    attempt: int


class RankResult(NamedTuple):
    rank: int
    end: float | None
    exit_code: int | None


class ActiveRank(NamedTuple):
    """A held allocation on a node whose task is STARTING or RUNNING."""

    job_id: int
    task: int
    attempt: int
    rank: int
    state: str


class TaskOnNode(NamedTuple):
    job_id: int
    task: int
    state: str


class FailedDependency(NamedTuple):
    """A pending task whose dependency `dep` ended in a state other than SUCCEEDED."""

    job_id: int
    task: int
    dep: int
    why: str = ""
    """The cancel reason; '' = 'dependency DEP did not succeed' (afterok)."""


class Allocation(NamedTuple):
    """A held allocation: the GPUs, CPUs and memory one rank of a task holds on one node."""

    job_id: int
    task: int
    node: str
    gpus: list[int]
    cpus: float
    memory_mb: int
    user: str
    group: str


class UsageRecord(NamedTuple):
    """GPU use of one allocation that overlaps a window (for fair share and `usage`)."""

    user: str
    group: str
    start: float
    end: float
    gpus: float


class CloudAllocation(NamedTuple):
    """An allocation on a cloud node, for billing (`cloud.cost.Held` takes the same fields)."""

    job_id: int
    task: int
    user: str
    gpus: int
    cpus: float
    start: float
    end: float | None
    group: str = ""


class RunningAllocation(NamedTuple):
    """A held allocation with its job's time limit (when it is expected to end at the latest)."""

    node: str
    gpus: list[int]
    cpus: float
    memory_mb: int
    start: float
    time_limit: int | None
    job_id: int
    task: int
