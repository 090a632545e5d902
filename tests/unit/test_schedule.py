"""The scheduler core: ordering, placement, limits, wait reasons, and invariants over random
clusters."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any, Sequence

import pytest

from hybridctl.core.fit import gpu_type_matches
from hybridctl.core.model import (
    ClusterView,
    NodeState,
    NodeView,
    PendingTask,
    Policy,
    Resources,
    ScheduleDecision,
    task_label,
)
from hybridctl.core.schedule import decayed_usage, never_fits, plan, priority_key
from tests.unit.schedule_kit import G, node, random_cluster, task

G1 = "g1 with 8× A100, 64 CPUs, 512G"
GPU03 = "gpu03 with 8× A100 80GB, 64 CPUs, 512G"


def run(
    nodes: Sequence[NodeView],
    tasks: Sequence[PendingTask],
    policy: Policy | None = None,
    **view: Any,
) -> ScheduleDecision:
    return plan(ClusterView(tuple(nodes), **view), tasks, policy or Policy())


def placed(d: ScheduleDecision) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    out: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for p in sorted(d.placements, key=lambda p: p.rank):
        out.setdefault(task_label(p.job_id, p.task), []).append((p.node, p.gpus))
    return out


def reasons(d: ScheduleDecision) -> dict[str, str]:
    return {task_label(w.job_id, w.task): w.reason for w in d.waiting}


# ---- order -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tasks", "usage", "winner"),
    [
        ([task(1, priority=0), task(2, priority=5)], {}, "2"),
        ([task(1, user="bob"), task(2, user="alice")], {"bob": 10.0, "alice": 2.0}, "2"),
        ([task(1, user="bob"), task(2, user="alice")], {"alice": 2.0}, "1"),  # unknown = 0 used
        ([task(1, at=20.0), task(2, at=10.0)], {}, "2"),
        ([task(2, at=5.0), task(1, at=5.0)], {}, "1"),
        ([task(7, index=3, at=5.0), task(7, index=2, at=5.0)], {}, "7_2"),
        ([task(1, priority=1, user="bob"), task(2)], {"bob": 99.0}, "1"),  # priority beats usage
    ],
)
def test_order_priority_fairshare_submit_time(
    tasks: list[PendingTask], usage: dict[str, float], winner: str
) -> None:
    d = run([node("n1", gpus=1)], tasks, usage_by_user=usage)
    assert list(placed(d)) == [winner]


def test_priority_key_sorts_like_plan() -> None:
    tasks = [task(3), task(1, priority=2), task(2, user="bob")]
    order = sorted(tasks, key=lambda t: priority_key(t, {"alice": 1.0}))
    assert [t.job_id for t in order] == [1, 2, 3]


# ---- GPUs: types, models, best fit -------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu_type", "model", "ok"),
    [
        ("A100", "A100", True),
        ("a100", "A100-80GB", True),
        ("A100", "NVIDIA A100-SXM4-80GB", True),
        ("A100-80GB", "NVIDIA A100-SXM4-80GB", True),
        ("A100-80GB", "NVIDIA A100-SXM4-40GB", False),
        ("A10", "A100", False),
        ("A10", "NVIDIA A10G", False),
        ("A10G", "NVIDIA A10G", True),
        ("RTX3090", "NVIDIA GeForce RTX 3090", True),
        ("3090", "NVIDIA GeForce RTX 3090", True),
        ("A6000", "NVIDIA RTX A6000", True),
        ("H100", "NVIDIA A100-SXM4-80GB", False),
        ("", "A100", False),
    ],
)
def test_gpu_type_matching_rule(gpu_type: str, model: str, ok: bool) -> None:
    assert gpu_type_matches(gpu_type, model) is ok


MIXED = node("mix", models=["RTX 3090", "RTX 3090", "RTX A6000"])


@pytest.mark.parametrize(
    ("t", "gpus"),
    [
        (task(1, 1, "A6000"), (2,)),
        (task(1, 2, "3090"), (0, 1)),
        (task(1, 2), (0, 1)),  # one model when one has enough
        (task(1, 3), (0, 1, 2)),  # mixing only when none has
        (task(1, 1), (2,)),  # the model with fewest free GPUs: keeps the pair together
        (task(1, 3, "3090"), None),
        (task(1, 2, "A6000"), None),
    ],
)
def test_mixed_model_node(t: PendingTask, gpus: tuple[int, ...] | None) -> None:
    got = placed(run([MIXED], [t]))
    assert got.get("1") == (None if gpus is None else [("mix", gpus)])


def test_untyped_job_prefers_one_model_over_a_tighter_mixed_fit() -> None:
    nodes = [node("a", models=["A100", "V100"]), node("b", gpus=4)]
    assert placed(run(nodes, [task(1, 2)])) == {"1": [("b", (0, 1))]}


@pytest.mark.parametrize(
    ("free_per_node", "want", "expected"),
    [
        ({"n1": 8, "n2": 3, "n3": 2}, 2, "n3"),
        ({"n1": 8, "n2": 3, "n3": 2}, 3, "n2"),
        ({"n1": 8, "n2": 3, "n3": 2}, 4, "n1"),
        ({"n2": 4, "n1": 4}, 1, "n1"),  # ties by name
    ],
)
def test_best_fit_leaves_fewest_free_gpus(
    free_per_node: dict[str, int], want: int, expected: str
) -> None:
    nodes = [node(n, busy=range(8 - free)) for n, free in free_per_node.items()]
    assert placed(run(nodes, [task(1, want)]))["1"][0][0] == expected


def test_busy_and_unhealthy_gpus_are_skipped() -> None:
    n = node("n1", busy=range(6), sick=[6])
    d = run([n], [task(1, 1), task(2, 1)])
    assert placed(d) == {"1": [("n1", (7,))]}
    assert reasons(d)["2"] == "resources: no node has 1 free GPU"


def test_cpu_only_task_goes_where_no_gpu_is_free() -> None:
    d = run([node("a", gpus=2), node("b", gpus=2, busy=[0, 1])], [task(1, 0, cpus=4)])
    assert placed(d) == {"1": [("b", ())]}


@pytest.mark.parametrize(
    ("t", "where", "reason"),
    [
        (task(1, cpus=8), "big", None),
        (task(1, mem_g=100), "big", None),
        (task(1, cpus=128), None, "resources: no node with 1 free GPU also has 128 free CPUs"),
        (task(1, mem_g=400), None, "resources: no node with 1 free GPU also has 400G free memory"),
        (
            task(1, cpus=32, mem_g=300),
            None,
            "resources: no node with 1 free GPU also has 32 free CPUs",
        ),
        (
            task(1, cpus=32, mem_g=400),
            None,
            "resources: no node with 1 free GPU also has 32 free CPUs and 400G free memory",
        ),
        (
            task(1, cpus=8, mem_g=300),
            None,  # each exists, not on the same node
            "resources: no node with 1 free GPU also has 8 free CPUs and 300G free memory",
        ),
        (
            task(1, 0, cpus=600),
            None,
            "resources: no node can ever hold 600 CPUs: "
            "the largest is big with 8× A100, 256 CPUs, 1024G",
        ),
    ],
)
def test_cpus_and_memory_must_fit(t: PendingTask, where: str | None, reason: str | None) -> None:
    nodes = [
        node("big", cpus=256, cpus_free=16, mem_g=1024, mem_free_g=200),
        node("small", cpus=64, cpus_free=4, mem_g=512, mem_free_g=350),
    ]
    d = run(nodes, [t])
    assert placed(d).get("1", [(None,)])[0][0] == where
    assert reasons(d).get("1") == reason


def test_cpu_reason_counts_nodes_dropped_for_lack_of_cpus() -> None:
    # t1 leaves `a` with 1 CPU, less than any pending task needs, so `a` leaves the search
    # indexes; its 7 free GPUs and 512G must still count when t2's reason is written.
    nodes = [node("a", cpus_free=4), node("b", busy=range(6), cpus_free=1)]
    d = run(nodes, [task(1, 1, cpus=3), task(2, 4, cpus=2, mem_g=100)])
    assert placed(d) == {"1": [("a", (0,))]}
    assert reasons(d) == {"2": "resources: no node with 4 free GPUs also has 2 free CPUs"}


def test_gang_cpu_reason() -> None:
    nodes = [node("a", cpus_free=40), node("b", cpus_free=8), node("c", gpus=4)]
    d = run(nodes, [task(1, 8, cpus=32, nodes=2)])
    assert reasons(d) == {
        "1": "resources: fewer than 2 nodes with 8 free GPUs also have 32 free CPUs"
    }


# ---- node state, sites, fleet make-up ------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "t", "reason"),
    [
        ([], task(1), "no nodes in the fleet yet"),
        ([node("g1")], task(1, placement="cloud"), "no cloud nodes yet"),
        ([node("c1", site="cloud")], task(1, placement="onprem"), "no on-prem nodes yet"),
        (
            [node("g1", state=NodeState.DRAINING), node("g2", gpus=2)],
            task(1, 4),
            "all nodes that fit are drained or unhealthy: g1 (DRAINING)",
        ),
        (
            [node("g1", sick=[3]), node("g2", state=NodeState.UNREACHABLE)],
            task(1, 8),
            "all nodes that fit are drained or unhealthy: g1 (1 GPU unhealthy), g2 (UNREACHABLE)",
        ),
        (
            [node("g1", gpus=8)],
            task(1, 16),
            f"resources: no node can ever hold 16 GPUs: the largest is {G1}",
        ),
        (
            [node("g1")],
            task(1, 1, "H100"),
            f"resources: no node can ever hold 1 H100 GPU: the largest is {G1}",
        ),
        (
            [node("g1")],
            task(1, placement="moon"),
            "placement: 'moon' is not one of onprem, cloud, any",
        ),
    ],
)
def test_fleet_reasons(nodes: list[NodeView], t: PendingTask, reason: str) -> None:
    d = run(nodes, [t])
    assert not d.placements
    assert reasons(d) == {"1": reason}


@pytest.mark.parametrize(
    ("placement", "free_sites", "expected"),
    [
        ("any", ("onprem", "cloud"), "on1"),
        ("any", ("cloud",), "cl1"),
        ("cloud", ("onprem", "cloud"), "cl1"),
        ("onprem", ("cloud",), None),
    ],
)
def test_placement_sites(placement: str, free_sites: tuple[str, ...], expected: str | None) -> None:
    nodes = [
        node("on1", busy=[] if "onprem" in free_sites else range(8)),
        node("cl1", site="cloud", busy=[] if "cloud" in free_sites else range(8)),
    ]
    d = run(nodes, [task(1, placement=placement)])
    assert placed(d).get("1", [(None,)])[0][0] == expected


# ---- policy: quotas, arrays, dependencies ------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "in_use", "tasks", "expected"),
    [
        (
            Policy(user_gpu_quota={"alice": 8}),
            {"alice": 8},
            [task(1)],
            {"1": "quota: user alice uses 8 of 8 GPUs"},
        ),
        (
            Policy(user_gpu_quota={"*": 4}),
            {"alice": 2},
            [task(1, 4)],
            {"1": "quota: user alice uses 2 of 4 GPUs, this task needs 4"},
        ),
        (Policy(user_gpu_quota={"*": 4, "alice": 16}), {"alice": 8}, [task(1, 4)], {}),
        (
            Policy(user_gpu_quota={"*": 4}),
            {},
            [task(1, 4), task(2, 1), task(3, 1, user="bob")],
            {"2": "quota: user alice uses 4 of 4 GPUs"},
        ),  # this pass's placements count
        (
            Policy(group_gpu_quota={"*": 4}),
            {},
            [task(1, 3), task(2, 2, user="bob")],
            {"2": "quota: group ml uses 3 of 4 GPUs, this task needs 2"},
        ),
        (Policy(group_gpu_quota={"ml": 4}), {}, [task(1, 4), task(2, 4, group="cv")], {}),
        (Policy(user_gpu_quota={"*": 0}), {}, [task(1, 0, cpus=2)], {}),  # CPU-only: no GPU quota
    ],
)
def test_quotas(
    policy: Policy, in_use: dict[str, int], tasks: list[PendingTask], expected: dict[str, str]
) -> None:
    d = run([node("g1", gpus=8), node("g2", gpus=8)], tasks, policy, gpus_in_use_by_user=in_use)
    assert reasons(d) == expected
    assert len(placed(d)) == len(tasks) - len(expected)


def test_array_throttle_counts_running_and_this_pass() -> None:
    tasks = [task(5, index=i, throttle=3) for i in range(1, 6)]
    d = run([node("g1")], tasks, running_tasks_by_array={5: 1})
    assert list(placed(d)) == ["5_1", "5_2"]
    assert reasons(d) == {
        "5_3": "array throttle: 3 of 3 tasks running",
        "5_4": "array throttle: 3 of 3 tasks running",
        "5_5": "array throttle: 3 of 3 tasks running",
    }


@pytest.mark.parametrize(
    ("deps", "reason"),
    [((12,), "dependency: waiting for job 12"), ((12, 13), "dependency: waiting for jobs 12, 13")],
)
def test_dependencies(deps: tuple[int, ...], reason: str) -> None:
    assert reasons(run([node("g1")], [task(20, deps=deps)])) == {"20": reason}


# ---- gangs ------------------------------------------------------------------------------


def test_gang_gets_all_ranks_on_distinct_nodes() -> None:
    d = run([node("g1"), node("g2"), node("g3", gpus=4)], [task(1, 8, nodes=2)])
    assert placed(d) == {"1": [("g1", tuple(range(8))), ("g2", tuple(range(8)))]}
    assert [p.rank for p in d.placements] == [0, 1]


def test_gang_is_all_or_nothing_and_smaller_jobs_still_start() -> None:
    d = run(
        [node("g1"), node("g2", busy=[0])], [task(1, 8, nodes=2), task(2, 4), task(3, 8, nodes=2)]
    )
    assert placed(d) == {"2": [("g2", (1, 2, 3, 4))]}
    assert reasons(d) == {
        "1": "resources: only 1 node has 8 free GPUs, the job needs 2",
        "3": "priority: behind job 1",
    }


def test_gang_stays_on_one_site() -> None:
    d = run([node("on1"), node("cl1", site="cloud")], [task(1, 8, nodes=2)])
    assert reasons(d) == {
        "1": "resources: the 2 nodes of a job must be on one site, and no site has 2 that can hold"
        " 8 GPUs"
    }


@pytest.mark.parametrize(
    ("down", "up", "num_nodes", "reason"),
    [
        (
            1,
            1,
            2,
            "only 1 of the 2 nodes the job needs is up and healthy; the others that fit are"
            " drained or unhealthy: g0 (DRAINED)",
        ),
        (
            7,
            0,
            1,
            "all nodes that fit are drained or unhealthy: g0 (DRAINED), g1 (DRAINED),"
            " g2 (DRAINED), g3 (DRAINED), g4 (DRAINED) and 2 more",
        ),
    ],
)
def test_drained_reasons_name_the_nodes(down: int, up: int, num_nodes: int, reason: str) -> None:
    nodes = [
        node(f"g{i}", state=NodeState.DRAINED if i < down else NodeState.UP)
        for i in range(down + up)
    ]
    assert reasons(run(nodes, [task(1, 8, nodes=num_nodes)])) == {"1": reason}


# ---- reasons: Resources vs Priority ------------------------------------------------------


def test_first_blocked_task_of_a_shape_says_resources_later_ones_priority() -> None:
    tasks = [
        task(41, 4, "A100"),
        task(42, 4, "A100"),
        task(43, 8),
        task(44, 1),
        task(50, 4, "A100", index=2),
    ]
    d = run([node("g1", busy=range(5))], tasks)
    assert placed(d) == {"44": [("g1", (5,))]}
    assert reasons(d) == {
        "41": "resources: no node has 4 free A100 GPUs",
        "42": "priority: behind job 41",
        "43": "resources: no node has 8 free GPUs",
        "50_2": "priority: behind job 41",
    }


def test_structural_reasons_repeat_instead_of_pointing_behind() -> None:
    d = run([node("g1", gpus=8)], [task(1, 16), task(2, 16)])
    assert reasons(d)["2"] == reasons(d)["1"]


# ---- never_fits and decayed usage ----------------------------------------------------------

FLEET = [
    node("gpu01", gpus=4, model="A100 80GB"),
    node("gpu03", gpus=8, model="A100 80GB", cpus=64),
    node("gpu02", models=["RTX 3090", "RTX 3090", "RTX A6000"], cpus=32, mem_g=128),
]


@pytest.mark.parametrize(
    ("res", "n", "message"),
    [
        (Resources(8), 1, None),
        (
            Resources(16),
            1,
            f"no node can ever hold 16 GPUs: the largest is {GPU03}",
        ),
        (
            Resources(2, "A6000"),
            1,
            "no node can ever hold 2 A6000 GPUs: the largest is gpu02"
            " with 2× RTX 3090 + 1× RTX A6000, 32 CPUs, 128G",
        ),
        (
            Resources(4, cpus=100),
            1,
            f"no node can ever hold 4 GPUs with 100 CPUs: the largest is {GPU03}",
        ),
        (
            Resources(1, memory_mb=600 * G),
            1,
            f"no node can ever hold 1 GPU with 600G memory: the largest is {GPU03}",
        ),
        (
            Resources(8),
            2,
            f"only 1 node can ever hold 8 GPUs, the job needs 2: the largest is {GPU03}",
        ),
        (Resources(4, "A100"), 2, None),
    ],
)
def test_never_fits(res: Resources, n: int, message: str | None) -> None:
    assert never_fits(FLEET, res, n) == message


def test_never_fits_ignores_load_state_and_health() -> None:
    n = node("g1", busy=range(8), sick=[1], state=NodeState.DRAINED, cpus_free=0)
    assert never_fits([n], Resources(8, cpus=64), 1) is None
    assert never_fits([], Resources(64), 1) is None


H = 3600.0


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([("a", 100 * H - H, 100 * H, 1)], {"a": 1.0}),  # (just) now: ~1 GPU-hour
        ([("a", 90 * H - H, 90 * H, 1)], {"a": 0.5}),  # one half-life ago: half
        ([("a", 80 * H - H, 80 * H, 4)], {"a": 1.0}),  # two half-lives, 4 GPUs
        ([("a", 99 * H, 105 * H, 2)], {"a": 2.0}),  # the part after `now` does not count
        ([("a", 50 * H, 50 * H, 8), ("b", 1, 0, 1)], {"a": 0.0, "b": 0.0}),
        ([("a", 99 * H, 100 * H, 1), ("a", 89 * H, 90 * H, 2)], {"a": 2.0}),
    ],
)
def test_decayed_usage_half_life(
    records: list[tuple[str, float, float, float]], expected: dict[str, float]
) -> None:
    got = decayed_usage(records, now=100 * H, half_life_h=10)
    # The integral over the hour itself decays a little: exact factor for a 1-hour record.
    hour = (1 - 2 ** (-1 / 10)) / (math.log(2) / 10)
    assert got.keys() == expected.keys()
    for user, value in expected.items():
        assert got[user] == pytest.approx(value * hour, rel=1e-9)


def test_decayed_usage_one_half_life_is_half_exactly() -> None:
    now = 1000 * H
    recent = decayed_usage([("a", now - 60, now, 1)], now, 24)["a"]
    old = decayed_usage([("a", now - 24 * H - 60, now - 24 * H, 1)], now, 24)["a"]
    assert old == pytest.approx(recent / 2, rel=1e-12)
    with pytest.raises(ValueError, match="half-life"):
        decayed_usage([], now, 0)


# ---- determinism and invariants over random clusters ---------------------------------------


def test_same_input_same_output_whatever_the_input_order() -> None:
    rng = random.Random(3)
    nodes = [node(f"n{i}", busy=rng.sample(range(8), rng.randrange(8))) for i in range(20)]
    tasks = [task(j, rng.choice([1, 2, 4, 8]), at=float(j % 5)) for j in range(60)]
    first = run(nodes, tasks)
    assert run(nodes, tasks) == first
    rng.shuffle(nodes)
    rng.shuffle(tasks)
    assert run(nodes, tasks) == first


def check_invariants(
    view: ClusterView, tasks: list[PendingTask], policy: Policy, d: ScheduleDecision
) -> None:
    by_label = {task_label(t.job_id, t.task): t for t in tasks}
    nodes = {n.name: n for n in view.nodes}
    got, why = placed(d), reasons(d)
    assert not got.keys() & why.keys() and got.keys() | why.keys() == by_label.keys()
    assert all(r and "\n" not in r for r in why.values())
    free = {n.name: {s.index: s for s in n.gpus if s.free and s.healthy} for n in view.nodes}
    cpus = {n.name: n.cpus_free for n in view.nodes}
    mem = {n.name: n.memory_free_mb for n in view.nodes}
    user_gpus: dict[str, int] = {}
    group_gpus: dict[str, int] = {}
    arrays: dict[int, int] = {}
    for p in d.placements:
        t, n = by_label[task_label(p.job_id, p.task)], nodes[p.node]
        res = t.resources
        assert not t.deps_unmet and n.state.accepts_jobs() and len(p.gpus) == res.gpus
        assert t.placement == "any" or n.site == t.placement
        assert (p.cpus, p.memory_mb) == (res.cpus, res.memory_mb)
        for g in p.gpus:
            slot = free[p.node].pop(g)  # KeyError: given twice, busy, or unhealthy
            assert res.gpu_type is None or gpu_type_matches(res.gpu_type, slot.model)
        cpus[p.node] -= p.cpus
        mem[p.node] -= p.memory_mb
        assert cpus[p.node] >= -1e-9 and mem[p.node] >= 0
        user_gpus[t.user] = user_gpus.get(t.user, 0) + res.gpus
        group_gpus[t.group] = group_gpus.get(t.group, 0) + res.gpus
        if t.array_throttle is not None and p.rank == 0:
            arrays[t.job_id] = arrays.get(t.job_id, 0) + 1
    for label, ranks in got.items():
        t = by_label[label]
        assert len(ranks) == t.num_nodes and len({n for n, _ in ranks}) == t.num_nodes
        assert len({nodes[n].site for n, _ in ranks}) == 1
    for quota, used, gpus in (
        (policy.user_gpu_quota, view.gpus_in_use_by_user, user_gpus),
        (policy.group_gpu_quota, view.gpus_in_use_by_group, group_gpus),
    ):
        for who, count in gpus.items():
            limit = quota.get(who, quota.get("*"))
            assert not count or limit is None or used.get(who, 0) + count <= limit
    for job, count in arrays.items():
        throttle = next(t.array_throttle for t in tasks if t.job_id == job)
        assert throttle is not None and view.running_tasks_by_array.get(job, 0) + count <= throttle
    # Nothing was left waiting for resources that are still free at the end (capacity only
    # shrinks during a pass, so "fits at the end" would have meant "fitted at its turn").
    for label, reason in why.items():
        if reason.startswith("priority: behind job "):
            assert why[reason.removeprefix("priority: behind job ")].startswith("resources:")
        if reason.startswith(("quota:", "array throttle:", "dependency:", "placement:")):
            continue
        t = by_label[label]
        res = t.resources
        per_site: dict[str, int] = {}
        for n in view.nodes:
            kind = [
                s
                for s in free[n.name].values()
                if not res.gpus or res.gpu_type is None or gpu_type_matches(res.gpu_type, s.model)
            ]
            if (
                n.state.accepts_jobs()
                and t.placement in ("any", n.site)
                and len(kind) >= res.gpus
                and cpus[n.name] + 1e-9 >= res.cpus
                and mem[n.name] >= res.memory_mb
            ):
                per_site[n.site] = per_site.get(n.site, 0) + 1
        assert max(per_site.values(), default=0) < t.num_nodes, (label, reason)


def test_invariants_over_random_clusters() -> None:
    rng = random.Random(20240601)
    for _ in range(500):
        view, tasks, policy = random_cluster(rng)
        d = plan(view, tasks, policy)
        check_invariants(view, tasks, policy, d)
        shuffled = dataclasses.replace(view, nodes=tuple(reversed(view.nodes)))
        assert plan(shuffled, list(reversed(tasks)), policy) == d
