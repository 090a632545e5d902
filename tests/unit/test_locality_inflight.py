"""What a node will hold, not only what it last reported (issue 15's locality bug): a job placed on
a node counts toward that node's cache while its copy is in flight and until the node's own
report can say so (core/locality.WillHold, bounded by SRC_TRUST_S or the job still running there);
a capped cache that must take it evicts its least recently used objects, as the agent does; the
free-in of a busy warm node and the line of tasks waiting for it come from history."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hybridctl.config import FleetConfig, LocalityConfig, Settings
from hybridctl.control import mounts
from hybridctl.core.locality import (SRC_TRUST_S, CacheIndex, LocalityPolicy, LocalityView, Need, NodeCache,
                                     WillHold, expected_holdings, free_in_history, parse_cache_listing)
from hybridctl.core.model import ClusterView, GpuSlot, JobStatus, NodeView, PendingTask, Policy, Resources, RunningTask
from hybridctl.core.schedule import plan
from tests.unit.control.parts import ALICE, Parts, build
from tests.unit.locality_kit import memo  # noqa: F401 - autouse

SHA = "c" * 64
SIZE = 40 * 10**9  # 320 s at the default 1 Gbit/s: worth waiting a minute for the node that has it
SPEC = {"file_mounts": {"/d": "/p/data"}, "time_limit": "60s"}


def parts(tmp_path: Path) -> Parts:
    settings = Settings(home=str(tmp_path), fleet=FleetConfig(poll_interval=0.02, checkpoint_sync_interval=3600),
                        locality=LocalityConfig(weight=1.0))
    p = build(tmp_path, settings=settings)
    reports = {"n1": NodeCache({}, {}, 0), "n2": NodeCache({}, {}, 0)}  # neither lists the data (yet)
    p.scheduler.caches = lambda: reports
    return p


def test_a_second_job_follows_the_first_while_its_copy_is_in_flight(tmp_path: Path) -> None:
    p = parts(tmp_path)
    first, node = p.place(**SPEC)
    # Its launch has read the source (now named by its contents), the copy is under way: no
    # cache listing says the node holds it yet.
    mounts._TREES[("/p/data", ALICE.uid)] = ("m", {"x": [SHA, SIZE]})
    second = p.submit(**SPEC)
    p.scheduler.schedule()
    assert p.store.task_nodes(second, 0) == []  # not copied again to the other node
    reason = p.ctl.op_show(ALICE, str(second))["tasks"][0]["reason"]
    assert reason.startswith("locality: waiting up to ") and f"for {node}: data 40 GB warm, moves 0 B" in reason


def test_what_was_placed_counts_while_it_runs_there_then_for_a_bounded_age(tmp_path: Path) -> None:
    p = parts(tmp_path)
    mounts._TREES[("/p/data", ALICE.uid)] = ("m", {"x": [SHA, SIZE]})
    first, node = p.place(**SPEC)

    def holders() -> set[str]:
        view, pending = p.scheduler.with_locality(p.scheduler.cluster(p.clock()), p.store.pending())
        assert view.locality is not None
        return view.locality.index.by_artifact.get(f"obj:{SHA}", set())

    second = p.submit(**SPEC)  # something pending, so the pass builds its index
    p.clock.t += 10 * SRC_TRUST_S
    assert holders() == {node}  # still running there: its objects are pinned on the node
    p.lifecycle.finish(first, 0, 0, "done", status=JobStatus.SUCCEEDED)
    p.clock.t += 1
    assert holders() == set()  # ended long after placement: only the node's report counts now
    p.scheduler.schedule()
    (again,) = p.store.task_nodes(second, 0)
    p.lifecycle.finish(second, 0, 1, "mount failed")
    p.submit(**SPEC)
    p.clock.t += SRC_TRUST_S / 2
    assert holders() == {again}  # its copy may have landed: believed for SRC_TRUST_S ...
    p.clock.t += SRC_TRUST_S
    assert holders() == set()  # ... then the node is believed about itself


def test_will_hold_forgets_by_age_unless_the_task_runs_there() -> None:
    w = WillHold(trust_s=30.0)
    w.assign((1, 0), "a", 100.0, "w1")
    w.assign((2, 0), "b", 100.0, "w2")
    assert sorted(w.current(120.0, [])) == [("a", "w1"), ("b", "w2")]
    assert w.current(131.0, [(2, 0, "b"), (1, 0, "other")]) == [("b", "w2")]
    assert len(w) == 1


def test_a_capped_cache_taking_new_data_is_expected_to_evict_its_least_recently_used() -> None:
    A, B, C = "a" * 64, "b" * 64, "d" * 64
    cache, problems = parse_cache_listing({"objects": [{"sha256": A, "size": 30, "last_used": 1.0},
                                                       {"sha256": B, "size": 10, "last_used": 2.0}],
                                           "envs": [], "max_bytes": 50})
    assert not problems and cache is not None and cache.used == {A: 1.0, B: 2.0}
    held, room = expected_holdings(cache, {f"obj:{C}": 30, "src:1:/x": 1 << 30})
    assert sorted(held) == sorted([f"obj:{B}", f"obj:{C}", "src:1:/x"]) and room == 10
    held, room = expected_holdings(cache, {f"obj:{A}": 30})  # pinned by what comes: nothing goes
    assert sorted(held) == [f"obj:{A}", f"obj:{B}"] and room == 10
    assert expected_holdings(NodeCache({A: 5}, {}, 0), {}) == ([f"obj:{A}"], None)


NOW = 1.7e9


def running(node: str, started_ago: float, limit: float, job: int = 99) -> RunningTask:
    return RunningTask(job, 0, "v", 0, node, (0, 1), 16.0, 1000, NOW - started_ago, NOW - started_ago + limit)


def test_free_in_comes_from_history_capped_by_the_time_limit() -> None:
    r = running("n1", 10.0, 600.0)
    assert free_in_history([r], NOW, {}) == {"n1": 590.0}  # no history: the limit, as before
    assert free_in_history([r], NOW, {(99, 0): 15.0}) == {"n1": 5.0}
    assert free_in_history([r], NOW, {(99, 0): 5.0}) == {"n1": 590.0}  # overdue on history: the limit
    assert free_in_history([r], NOW, {(99, 0): 900.0}) == {"n1": 590.0}  # the limit is a hard end


def test_tasks_waiting_for_one_warm_node_queue_behind_each_other() -> None:
    gpus = tuple(GpuSlot(i, "A100", free=False) for i in range(2))
    busy = NodeView("n1", gpus, 16.0, 0.0, 64000, 0)
    free = NodeView("n2", tuple(dataclasses.replace(g, free=True) for g in gpus), 16.0, 16.0, 64000, 64000)
    need = Need({"obj:d1": 14 * 10**9})  # 140 s to copy at 1e8 B/s
    policy = LocalityPolicy(weight=1.0, max_wait_s=120.0, bandwidth_bps={"onprem": 1e8})
    loc = LocalityView(CacheIndex({"n1": ["obj:d1"]}), policy, {"n1": "onprem", "n2": "onprem"},
                       free_in_history([running("n1", 50.0, 3600.0)], NOW, {(99, 0): 60.0}),
                       runtimes={1: 70.0, 2: 70.0, 3: 70.0})
    tasks = [PendingTask(j, 0, "u", "g", 0, NOW, Resources(gpus=1, cpus=1.0, memory_mb=1000), need=need,
                         runtime_s=3600.0) for j in (1, 2, 3)]
    d = plan(ClusterView((busy, free), now=NOW, locality=loc), tasks, Policy())
    # n1 frees in 10 s (history), not in an hour (its limit); the 2nd waits 10 + 70 s behind the
    # 1st; the 3rd would wait 150 s, more than copying costs (140 s): it goes to n2 and copies.
    assert [w.job_id for w in d.waiting] == [1, 2]
    assert "waiting up to 10 s for n1" in d.waiting[0].reason and "waiting up to 80 s" in d.waiting[1].reason
    assert [(p.job_id, p.node) for p in d.placements] == [(3, "n2")]


def test_two_tasks_of_one_data_set_in_one_pass_share_the_first_copy() -> None:
    def one_free(name: str) -> NodeView:
        gpus = (GpuSlot(0, "A100", free=True), GpuSlot(1, "A100", free=False))
        return NodeView(name, gpus, 16.0, 8.0, 64000, 32000)

    need = Need({"obj:d1": 14 * 10**9})  # held nowhere yet: 140 s to copy anywhere
    policy = LocalityPolicy(weight=1.0, max_wait_s=120.0, bandwidth_bps={"onprem": 1e8})
    loc = LocalityView(CacheIndex({}), policy, {"n1": "onprem", "n2": "onprem"}, {})
    tasks = [PendingTask(j, 0, "u", "g", 0, NOW, Resources(gpus=1, cpus=1.0, memory_mb=1000), need=need,
                         runtime_s=30.0) for j in (1, 2)]
    d = plan(ClusterView((one_free("n1"), one_free("n2")), now=NOW, locality=loc), tasks, Policy())
    (placed,) = d.placements
    (waits,) = d.waiting
    assert waits.job_id == 2 and waits.reason.startswith(f"locality: waiting up to 30 s for {placed.node}")
