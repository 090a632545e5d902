"""Builders for the backfill and preemption tests (test_schedule_backfill.py,
test_attack_backfill.py): hand-made nodes, running and pending tasks, one planning pass."""

from __future__ import annotations

from typing import Sequence

from hybridctl.core.model import (
    ClusterView,
    GpuSlot,
    NodeView,
    PendingTask,
    Policy,
    Resources,
    RunningTask,
    ScheduleDecision,
)
from hybridctl.core.schedule import plan

NOW = 1_800_000_000.0
H = 3600.0


def node(name: str, busy: Sequence[int] = (), gpus: int = 8, model: str = "A100") -> NodeView:
    slots = tuple(GpuSlot(i, model, free=i not in busy) for i in range(gpus))
    share = len(busy) / gpus
    return NodeView(name, slots, 64.0, 64.0 * (1 - share), 512 * 1024, int(512 * 1024 * (1 - share)))


def running(
    job: int,
    on: str,
    gpus: Sequence[int],
    *,
    ends: float | None = None,
    priority: int = 0,
    preemptible: bool = False,
    started: float = NOW - H,
    checkpoint: float | None = None,
    stopping: bool = False,
) -> RunningTask:
    share = len(gpus) / 8
    return RunningTask(
        job, 0, "bob", priority, on, tuple(gpus), 64.0 * share, int(512 * 1024 * share),
        started, ends, preemptible, checkpoint, stopping,
    )  # fmt: skip


def task(
    job: int, gpus: int = 1, *, runtime: float | None = None, priority: int = 0, nodes: int = 1
) -> PendingTask:
    return PendingTask(
        job, 0, "alice", "ml", priority, NOW - 1000 + job, Resources(gpus=gpus, cpus=1.0),
        num_nodes=nodes, runtime_s=runtime,
    )  # fmt: skip


def run(
    nodes: Sequence[NodeView],
    run: Sequence[RunningTask],
    pending: Sequence[PendingTask],
    **policy: object,
) -> ScheduleDecision:
    view = ClusterView(tuple(nodes), running=tuple(run), now=NOW)
    return plan(view, pending, Policy(**policy))  # type: ignore[arg-type]


def started(d: ScheduleDecision) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for p in d.placements:
        out.setdefault(p.job_id, set()).add(p.node)
    return out


def reasons(d: ScheduleDecision) -> dict[int, str]:
    return {w.job_id: w.reason for w in d.waiting}



def easy_cluster() -> tuple[list[NodeView], list[RunningTask]]:
    """a: 6 of 8 GPUs busy until +1 h; b: all 8 busy until +2 h."""
    nodes = [node("a", busy=range(6)), node("b", busy=range(8))]
    return nodes, [running(1, "a", range(6), ends=NOW + H), running(2, "b", range(8), ends=NOW + 2 * H)]
