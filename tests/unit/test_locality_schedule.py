"""Cache-aware placement inside the scheduling pass (core/schedule.plan with ClusterView.locality
and PendingTask.need): warm nodes win, a busy warm node is waited for only within max_wait, tasks
with nothing to move and locality off behave as before."""

from __future__ import annotations

import dataclasses

import pytest

from hybridctl.core.locality import CacheIndex, LocalityPolicy, LocalityView, Need, free_in_of
from hybridctl.core.model import ClusterView, GpuSlot, NodeView, PendingTask, Policy, Resources, RunningTask
from hybridctl.core.schedule import plan

GB = 10**9
NOW = 1.7e9
A100, H100 = "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"
POLICY = LocalityPolicy(weight=1.0, max_wait_s=120.0, bandwidth_bps={"onprem": 1e8, "cloud": 1e7})
NEED = Need({"env:e1": 2 * GB, "obj:d1": 12 * GB})


def node(name: str, free: int = 2, model: str = A100, site: str = "onprem") -> NodeView:
    gpus = tuple(GpuSlot(i, model, free=i < free) for i in range(2))
    return NodeView(name, gpus, 16.0, 16.0 - 8 * (2 - free), 64000, 64000, site=site)


def task(job: int, need: Need | None = NEED, gpus: int = 1, gpu_type: str | None = None, waited: float = 0.0,
         **kw: object) -> PendingTask:
    return PendingTask(job, 0, "u", "g", 0, NOW - waited, Resources(gpus=gpus, gpu_type=gpu_type, cpus=1.0,
                                                                      memory_mb=1000), need=need, **kw)


def view(nodes: list[NodeView], held: dict[str, list[str]], running: tuple[RunningTask, ...] = (),
         policy: LocalityPolicy | None = POLICY) -> ClusterView:
    loc = None if policy is None else LocalityView(CacheIndex(held), policy, {n.name: n.site for n in nodes},
                                                   free_in_of(running, NOW))
    return ClusterView(tuple(nodes), running=running, now=NOW, locality=loc)


def running_on(name: str, ends_in: float) -> RunningTask:
    return RunningTask(99, 0, "v", 0, name, (0, 1), 16.0, 1000, NOW - 60, NOW + ends_in)


def test_locality_off_is_the_best_fit_order_and_says_nothing() -> None:
    d = plan(view([node("n1"), node("n2")], {"n2": ["env:e1", "obj:d1"]}, policy=None), [task(1)], Policy())
    assert [(p.node, p.reason) for p in d.placements] == [("n1", "")]


def test_the_warm_node_wins_and_the_placement_says_why() -> None:
    d = plan(view([node("n1"), node("n2"), node("n3")], {"n3": ["env:e1", "obj:d1"], "n2": ["env:e1"]}),
             [task(1)], Policy())
    (p,) = d.placements
    assert p.node == "n3"
    assert p.reason == "n3: env warm, data 12 GB warm, moves 0 B, saved ~2.33 min of transfer"


def test_a_task_with_nothing_to_move_is_placed_as_before() -> None:
    nodes = [node("n1"), node("n2")]
    for need in (None, Need({})):
        d = plan(view(nodes, {"n2": ["env:e1", "obj:d1"]}), [task(1, need=need)], Policy())
        assert [(p.node, p.reason) for p in d.placements] == [("n1", "")]


def test_full_warm_nodes_are_passed_over_and_later_tasks_go_cold() -> None:
    # n2 holds the world and has room for two 1-GPU tasks; the third goes to the best cold fit.
    d = plan(view([node("n1"), node("n2")], {"n2": ["env:e1", "obj:d1"]}), [task(1), task(2), task(3)], Policy())
    assert [p.node for p in sorted(d.placements, key=lambda p: p.job_id)] == ["n2", "n2", "n1"]
    assert d.placements[-1].reason.startswith("n1: moves 14 GB")


@pytest.mark.parametrize("ends_in, waited, waits", [
    (30.0, 0.0, True),     # 30 s beats 140 s of transfer now
    (30.0, 100.0, False),  # but never past max_wait (100 + 30 > 120)
    (145.0, 0.0, False),   # beyond max_wait on its own
])
def test_a_busy_warm_node_is_waited_for_only_within_max_wait(ends_in: float, waited: float, waits: bool) -> None:
    nodes = [node("n1"), node("n2", free=0)]
    d = plan(view(nodes, {"n2": ["env:e1", "obj:d1"]}, (running_on("n2", ends_in),)), [task(1, waited=waited)],
             Policy())
    if waits:
        assert not d.placements
        assert [w.reason for w in d.waiting] == [
            "locality: waiting up to 30 s for n2: env warm, data 12 GB warm, moves 0 B"]
    else:
        assert [p.node for p in d.placements] == ["n1"]


def test_a_warm_node_of_the_wrong_gpu_model_is_neither_used_nor_waited_for() -> None:
    nodes = [node("n1", model=H100), node("n2", model=A100), node("n3", free=0, model=A100)]
    held = {"n2": ["env:e1", "obj:d1"], "n3": ["env:e1", "obj:d1"]}
    d = plan(view(nodes, held, (running_on("n3", 5.0),)), [task(1, gpu_type="H100")], Policy())
    assert [p.node for p in d.placements] == ["n1"]


def test_exclusive_and_multi_node_tasks_are_left_to_the_plain_pass() -> None:
    nodes = [node("n1"), node("n2")]
    d = plan(view(nodes, {"n2": ["env:e1", "obj:d1"]}), [task(1, num_nodes=2)], Policy())
    assert sorted(p.node for p in d.placements) == ["n1", "n2"] and all(not p.reason for p in d.placements)


def test_a_cloud_node_pays_its_slower_link() -> None:
    # Both cold: the on-prem node (1e8 B/s) wins over the cloud one (1e7 B/s) that holds only the env.
    nodes = [node("c1", site="cloud"), node("n1")]
    d = plan(view(nodes, {"c1": ["env:e1"]}), [dataclasses.replace(task(1), placement="any")], Policy())
    assert [p.node for p in d.placements] == ["n1"]


def test_a_cold_task_goes_where_the_cache_has_room_rather_than_evicting() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    v = view(nodes, {"n1": [], "n2": [], "n3": []})
    assert v.locality is not None
    v.locality.room.update({"n1": 1 * GB, "n2": 20 * GB, "n3": 15 * GB})  # capped caches: n1 would evict
    d = plan(v, [task(1), task(2, need=Need({"obj:d2": 10 * GB}))], Policy())
    # the first takes n2 (most room), leaving it 6 GB; the second then fits only n3's room
    assert [(p.job_id, p.node) for p in d.placements] == [(1, "n2"), (2, "n3")]
    assert v.locality.room == {"n1": 1 * GB, "n2": 6 * GB, "n3": 5 * GB}


def test_a_source_not_read_yet_is_held_where_this_pass_placed_it() -> None:
    src = Need({"src:1000:/lab/corpus": 1 << 30})  # ~10.7 s to copy at 1e8 B/s
    nodes = [node("n1", free=1), node("n2", free=1), node("n3", free=1)]
    tasks = [task(1, need=src, runtime_s=5.0), task(2, need=src, runtime_s=5.0)]
    d = plan(view(nodes, {"n3": []}), tasks, Policy())
    # the first goes cold to n1; the second waits ~5 s for n1 rather than copy the corpus again
    assert [(p.job_id, p.node) for p in d.placements] == [(1, "n1")]
    assert [(w.job_id, w.reason) for w in d.waiting] == [
        (2, "locality: waiting up to 5 s for n1: data on its way, moves 0 B")]
    # with max_wait under the first's runtime, the second is copied to n2
    short = dataclasses.replace(POLICY, max_wait_s=3.0)
    d = plan(view(nodes, {"n3": []}, policy=short), tasks, Policy())
    assert sorted((p.job_id, p.node) for p in d.placements) == [(1, "n1"), (2, "n2")]


def test_when_no_cache_has_room_the_roomiest_takes_the_cold_task() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    v = view(nodes, {"n1": [], "n2": [], "n3": []})
    assert v.locality is not None
    v.locality.room.update({"n1": 1 * GB, "n2": 3 * GB, "n3": 5 * GB})  # none holds 14 GB
    d = plan(v, [task(1)], Policy())
    assert [p.node for p in d.placements] == ["n3"]


def test_show_does_not_claim_a_size_for_data_not_read_yet() -> None:
    src = Need({"src:1000:/lab/corpus": 1 << 30, "env:e1": 2 * GB})
    d = plan(view([node("n1"), node("n2")], {"n2": ["env:e1"]}), [task(1, need=src)], Policy())
    assert [(p.node, p.reason) for p in d.placements] == [
        ("n2", "n2: env warm, moves 1 file_mount not read yet, saved ~20 s of transfer")]
