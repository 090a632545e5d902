"""Which running tasks to stop so that a higher-priority task can start now (Slurm's
PreemptMode=REQUEUE): the victims are requeued, never charged to max_restarts.

A running task is a candidate when it is preemptible (`preemptible: true`, or below the config's
`scheduler.preempt_below`) and has a lower priority than the task that would otherwise wait.
On each node the candidates that lose the least work go first (GPUs x seconds since their last
checkpoint, else since their start), and any victim the node turns out not to need is let off
again; among nodes, those that lose the least work win. A task already told to stop costs
nothing: its resources are coming free anyway. Pure: no clock, `now` comes in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from hybridctl.core.model import Policy, RunningTask

_EPS = 1e-9

TaskKey = tuple[int, int]


@dataclass(frozen=True)
class Candidate:
    """One preemptible task's share of one node."""

    key: TaskKey
    priority: int
    gpus: int
    """Its GPUs on this node that the waiting task could use."""
    cpus: float
    memory_mb: int
    lost: float
    """GPU-seconds of work lost if it is stopped now; 0 if it is already stopping."""
    stopping: bool = False


@dataclass(frozen=True)
class NodeChoice:
    """The victims that free enough of one node, and the work they lose."""

    node: int
    victims: tuple[Candidate, ...]
    lost: float


def preemptible(rt: RunningTask, policy: Policy) -> bool:
    """Marked preemptible, or below the config's priority line."""
    return rt.preemptible or (policy.preempt_below is not None and rt.priority < policy.preempt_below)


def work_lost(rt: RunningTask, now: float) -> float:
    """GPU-seconds since the task's last checkpoint (its start when none is known); a task with
    no GPUs counts its CPU-seconds / 1000 so that it still sorts by age."""
    since = max(rt.started_at, rt.checkpoint_at or rt.started_at)
    age = max(0.0, now - since)
    return len(rt.gpus) * age if rt.gpus else age / 1000.0


def on_node(
    node: int,
    free: tuple[int, float, int],
    need: tuple[int, float, int],
    candidates: Sequence[Candidate],
) -> NodeChoice | None:
    """The cheapest victims on one node that, with its free resources, make room for `need`
    (GPUs, CPUs, MiB); None if all of them together do not."""
    g, c, m = free
    want_g, want_c, want_m = need

    def enough(g: float, c: float, m: float) -> bool:
        return g >= want_g and c + _EPS >= want_c and m >= want_m

    if enough(g, c, m):
        return NodeChoice(node, (), 0.0)
    taken: list[Candidate] = []
    for cand in sorted(candidates, key=lambda v: (v.lost, -v.gpus, v.key)):
        taken.append(cand)
        g, c, m = g + cand.gpus, c + cand.cpus, m + cand.memory_mb
        if enough(g, c, m):
            break
    else:
        return None
    # Never more than needed: let off the costliest victims the others make unnecessary.
    for cand in sorted(taken, key=lambda v: (-v.lost, v.key)):
        if enough(g - cand.gpus, c - cand.cpus, m - cand.memory_mb):
            taken.remove(cand)
            g, c, m = g - cand.gpus, c - cand.cpus, m - cand.memory_mb
    return NodeChoice(node, tuple(taken), sum(v.lost for v in taken))


def cheapest(choices: Sequence[NodeChoice], want: int) -> list[NodeChoice] | None:
    """The `want` nodes whose victims lose the least work (ties: fewer victims, then node)."""
    if len(choices) < want:
        return None
    return sorted(choices, key=lambda ch: (ch.lost, len(ch.victims), ch.node))[:want]
