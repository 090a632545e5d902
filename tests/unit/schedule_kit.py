"""Builders for scheduler tests: nodes and pending tasks in one line, and random clusters for the
invariant tests (shared by test_schedule.py and test_schedule_window.py)."""

from __future__ import annotations

import random
from typing import Any, Sequence

from hybridctl.core.model import ClusterView, GpuSlot, NodeState, NodeView, PendingTask, Policy, Resources

G = 1024  # MiB per GiB


def node(
    name: str,
    gpus: int = 8,
    model: str = "A100",
    *,
    models: Sequence[str] = (),
    busy: Sequence[int] = (),
    sick: Sequence[int] = (),
    cpus: float = 64,
    cpus_free: float | None = None,
    mem_g: int = 512,
    mem_free_g: int | None = None,
    state: NodeState = NodeState.UP,
    site: str = "onprem",
) -> NodeView:
    names = list(models) or [model] * gpus
    slots = tuple(
        GpuSlot(i, m, free=i not in busy, healthy=i not in sick) for i, m in enumerate(names)
    )
    return NodeView(
        name,
        slots,
        cpus,
        cpus if cpus_free is None else cpus_free,
        mem_g * G,
        (mem_g if mem_free_g is None else mem_free_g) * G,
        state,
        site,
    )


def task(
    job: int,
    gpus: int = 1,
    gpu_type: str | None = None,
    *,
    index: int = 0,
    cpus: float = 1,
    mem_g: int = 0,
    user: str = "alice",
    group: str = "ml",
    priority: int = 0,
    at: float | None = None,
    nodes: int = 1,
    placement: str = "any",
    throttle: int | None = None,
    deps: tuple[int, ...] = (),
) -> PendingTask:
    return PendingTask(
        job,
        index,
        user,
        group,
        priority,
        float(job) if at is None else at,
        Resources(gpus, gpu_type, cpus, mem_g * G),
        nodes,
        placement,
        throttle,
        deps,
    )


MODELS = ["A100", "NVIDIA A100-SXM4-80GB", "H100", "RTX 3090"]
TYPES = [None, None, None, "A100", "H100", "3090", "A100-80GB"]
STATES = [NodeState.DRAINING, NodeState.DRAINED, NodeState.UNREACHABLE, NodeState.LOST]


def random_cluster(rng: random.Random) -> tuple[ClusterView, list[PendingTask], Policy]:
    nodes = []
    for i in range(rng.choice([0, 1, 2, 3, 4, 5, 6, 8])):
        count = rng.choice([0, 1, 2, 4, 8])
        models = (
            [rng.choice(MODELS) for _ in range(count)]
            if rng.random() < 0.3
            else [rng.choice(MODELS)] * count
        )
        cpus, mem_g = rng.choice([8, 16, 64]), rng.choice([64, 256])
        nodes.append(
            node(
                f"n{i}",
                models=models,
                busy=[g for g in range(count) if rng.random() < 0.2],
                sick=[g for g in range(count) if rng.random() < 0.05],
                cpus=cpus,
                cpus_free=rng.choice([0, 2, 4.5, cpus, cpus]),
                mem_g=mem_g,
                mem_free_g=rng.choice([0, 32, mem_g, mem_g]),
                state=NodeState.UP if rng.random() < 0.85 else rng.choice(STATES),
                site="onprem" if rng.random() < 0.75 else "cloud",
            )
        )
    tasks = []
    for job in range(1, rng.randrange(2, 16)):
        kw: dict[str, Any] = dict(
            gpu_type=rng.choice(TYPES),
            cpus=rng.choice([0.5, 1, 2, 4, 16]),
            mem_g=rng.choice([0, 8, 128]),
            user=rng.choice("abc"),
            group=rng.choice("xy"),
            priority=rng.choice([0, 0, 5]),
            at=float(rng.randrange(5)),
            nodes=2 if rng.random() < 0.15 else 1,
            placement=rng.choice(["any", "any", "onprem", "cloud"]),
            deps=(job + 100,) if rng.random() < 0.05 else (),
        )
        gpus = rng.choice([0, 1, 1, 2, 4, 8])
        if rng.random() < 0.15:
            throttle = rng.choice([1, 2])
            tasks += [task(job, gpus, index=i, throttle=throttle, **kw) for i in range(1, 4)]
        else:
            tasks.append(task(job, gpus, **kw))

    def quota() -> dict[str, int]:
        return {
            k: rng.choice([2, 8, 16]) for k in rng.sample(["*", "a", "b", "x"], rng.randrange(3))
        }

    policy = Policy(user_gpu_quota=quota(), group_gpu_quota=quota())
    view = ClusterView(
        tuple(nodes),
        gpus_in_use_by_user={u: rng.randrange(4) for u in "ab"},
        gpus_in_use_by_group={"x": rng.randrange(4)},
        running_tasks_by_array={j: rng.randrange(2) for j in range(1, 16)},
    )
    return view, tasks, policy
