"""Converging a node's agent to what the database says, as a pure function.

Dispatch is not a separate code path: a placed task is simply one the database says is active on
a node while the agent has no record of it, so the reconciler answers "launch". The same rules
adopt jobs that kept running while the controller or the link was away, record results that came
in meanwhile, and stop stragglers the database no longer wants — so nothing is started twice.

A node is believed only about itself: a record acts on the database (finish, release, copy logs
and checkpoints) only for a rank whose open allocation is on that node (`held`); anything else it
reports is merely stopped or forgotten on that same node."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection, Sequence, Union

from hybridctl.core.model import JobStatus, task_label

_KEY = re.compile(r"([0-9]{1,19})(?:_([0-9]{1,19}))?\.a([0-9]{1,19})\.r([0-9]{1,19})\Z")
r"""What `job_key` makes and nothing else: ASCII digits ([0-9], never \d, which reads '٣' as 3), each
at most 2**63 - 1 (SQLite's INTEGER), and \Z, never $ (which matches before a trailing newline).
A node may not name another job's rank with a key hybridctl never made."""
_MAX_ID = 2**63 - 1


def job_key(job_id: int, task: int, attempt: int, rank: int) -> str:
    """The agent-side name of one rank of one attempt: '42.a0.r0', '42_7.a1.r0'."""
    return f"{task_label(job_id, task)}.a{attempt}.r{rank}"


def parse_key(key: str) -> tuple[int, int, int, int] | None:
    """(job_id, task, attempt, rank), or None for a key hybridctl did not make."""
    m = _KEY.match(key) if isinstance(key, str) else None
    if m is None:
        return None
    parsed = int(m.group(1)), int(m.group(2) or 0), int(m.group(3)), int(m.group(4))
    return parsed if max(parsed) <= _MAX_ID else None


@dataclass(frozen=True)
class ActiveRank:
    """One rank of a task the database holds as STARTING or RUNNING on this node."""

    job_id: int
    task: int
    attempt: int
    rank: int
    state: JobStatus

    @property
    def key(self) -> str:
        return job_key(self.job_id, self.task, self.attempt, self.rank)


@dataclass(frozen=True)
class AgentJob:
    """A job record as the agent reports it."""

    key: str
    running: bool
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Launch:
    rank: ActiveRank


@dataclass(frozen=True)
class Started:
    job_id: int
    task: int


@dataclass(frozen=True)
class Finished:
    job_id: int
    task: int
    status: JobStatus
    exit_code: int | None
    reason: str
    key: str


@dataclass(frozen=True)
class Vanished:
    """The database says running but the agent has no record: the node lost it."""

    job_id: int
    task: int


@dataclass(frozen=True)
class Stop:
    """The agent runs something the database does not want (cancelled, rerun elsewhere, unknown)."""

    key: str


@dataclass(frozen=True)
class Forget:
    """The agent holds an ended job the database does not want (any more) on this node: tell the
    agent to forget it. Only with `held` (the rank's open allocation is on this very node: a
    cancelled or preempted rank whose processes are now gone) does the controller also keep its
    logs and checkpoint and release the allocation."""

    key: str
    held: bool = False


Action = Union[Launch, Started, Finished, Vanished, Stop, Forget]


def outcome(job: AgentJob) -> tuple[JobStatus, str]:
    """The final state and reason of an exited agent job."""
    reason = job.reason or ""
    if reason == "cancelled":
        return JobStatus.CANCELLED, "cancelled on the node"
    if reason == "timeout":
        return JobStatus.TIMEOUT, "time limit reached"
    if job.exit_code == 0 and not reason:
        return JobStatus.SUCCEEDED, "exit code 0"
    if reason:
        return JobStatus.FAILED, reason
    if job.signal:
        return JobStatus.FAILED, f"killed by signal {job.signal}"
    return JobStatus.FAILED, f"exit code {job.exit_code}"


def reconcile(active: Sequence[ActiveRank], agent: Sequence[AgentJob], held: Collection[str] | None = None,
              unreadable: Collection[str] = ()) -> list[Action]:
    """What to do so the agent matches the database. `agent` must be a listing taken after every
    launch this controller has already confirmed (launch is idempotent, so a repeat is harmless).
    `held`: the keys of every rank whose allocation on this node is still open, whatever its
    task's state (default: the active ones). `unreadable`: keys the agent reported in a record
    that could not be believed; those ranks are left exactly as they are (neither launched,
    finished nor requeued) until the node reports them sanely."""
    actions: list[Action] = []
    by_key = {j.key: j for j in agent}
    wanted = {r.key for r in active}
    held = wanted if held is None else set(held) | wanted
    for r in active:
        if r.key in unreadable:
            continue
        job = by_key.get(r.key)
        if job is None:
            if r.state is JobStatus.STARTING:
                actions.append(Launch(r))
            else:
                actions.append(Vanished(r.job_id, r.task))
        elif job.running:
            if r.state is JobStatus.STARTING:
                actions.append(Started(r.job_id, r.task))
        else:
            status, reason = outcome(job)
            actions.append(Finished(r.job_id, r.task, status, job.exit_code, reason, job.key))
    for job in agent:
        if job.key in wanted:
            continue
        actions.append(Stop(job.key) if job.running else Forget(job.key, held=job.key in held))
    return actions
