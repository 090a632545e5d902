"""Whether a task that stopped before its end runs again, and what that costs it: one pure rule.

A stop the job did not cause (a spot reclaim, a scale-down the controller made, a lost node) is a
*recovery*: requeued without touching `max_restarts`, as SkyPilot's managed jobs and Slurm's
`JobRequeue=1` do, up to a sanity cap (`recovery.max_recoveries`) so that a job that kills every
node it lands on cannot loop for ever. A stop the job caused (a non-zero exit) is a *restart*,
charged to `max_restarts`, unless its code is in `recover_on_exit_codes` (then it is a recovery).
A time limit is final, as in Slurm, which never requeues TIMEOUT; but a job that asks for a requeue
(a Slurm batch script's `scontrol requeue`, or its stop after `--signal` with `--requeue`: the
pattern PyTorch Lightning's SLURM plugin uses) is a recovery, like a preemption."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Collection

MAX_RECOVERIES_KEY = "recovery.max_recoveries"
"""The config key of the sanity cap, named in the reason of a job that reaches it."""


class Cause(str, enum.Enum):
    """Why a task stopped before it ended by itself."""

    PREEMPTION = "preemption"
    """Its node was reclaimed (spot), or the controller gave the node back (a budget scale-down):
    hybridctl marks both PREEMPTED."""
    NODE_LOSS = "node loss"
    """Its node stopped answering for good, or its agent no longer knew the job (a reboot)."""
    EXIT = "exit"
    """Its own processes exited non-zero."""
    TIMEOUT = "timeout"
    """It ran past its time limit."""
    REQUEUE = "requeue"
    """It asked to run again (Slurm's `scontrol requeue`, or a stop after `--signal` with
    `--requeue`; the agent's reason starts with 'requeue:'): resumes from its checkpoint."""


class Charge(str, enum.Enum):
    """Which counter a requeue uses up."""

    RESTART = "restart"
    """`tasks.restarts`, limited per job by `max_restarts`."""
    RECOVERY = "recovery"
    """`tasks.recoveries`, limited per controller by `recovery.max_recoveries`."""


@dataclass(frozen=True)
class RequeueDecision:
    """What to do with a task that stopped: requeue it (a new attempt) or let it end."""

    requeue: bool
    """Back to PENDING; else it ends (FAILED, or TIMEOUT for a time limit)."""
    charge: Charge | None
    """The counter the requeue uses up; None when it ends."""
    kind: str
    """What a recovery is recorded as in `tasks.recovery_causes` (and shown by `show`):
    'preemption', 'node loss', 'exit code 75'."""
    note: str
    """Appended to the stop's own reason for the event log; may be empty."""


def decide(
    cause: Cause,
    *,
    restarts_used: int,
    max_restarts: int,
    recoveries_used: int,
    max_recoveries: int,
    exit_code: int | None = None,
    recover_codes: Collection[int] = (),
) -> RequeueDecision:
    """Requeue or end a task that stopped for `cause`, given what it has used so far. Performs
    no I/O: `control/lifecycle.py` applies the decision (`Lifecycle.requeue_or_fail`, `finish`)."""
    if cause is Cause.TIMEOUT:
        return RequeueDecision(False, None, "", "")
    if cause is Cause.EXIT and exit_code not in recover_codes:
        if restarts_used < max_restarts:
            return RequeueDecision(True, Charge.RESTART, "", f"requeued (restart {restarts_used + 1} of {max_restarts})")
        note = f"no restarts left (max_restarts {max_restarts})" if max_restarts else ""
        return RequeueDecision(False, None, "", note)
    kind = f"exit code {exit_code}" if cause is Cause.EXIT else cause.value
    if recoveries_used >= max_recoveries:
        return RequeueDecision(
            False, None, kind,
            f"not requeued: already recovered {recoveries_used} time{'' if recoveries_used == 1 else 's'}, "
            f"the most {MAX_RECOVERIES_KEY} ({max_recoveries}) allows",
        )
    n = recoveries_used + 1
    if cause is Cause.EXIT:
        note = f"exit code {exit_code} is in recover_on_exit_codes: requeued (recovery {n} of at most {max_recoveries})"
    else:
        note = f"requeued (recovery {n} of at most {max_recoveries}; {kind} does not use max_restarts)"
    return RequeueDecision(True, Charge.RECOVERY, kind, note)

