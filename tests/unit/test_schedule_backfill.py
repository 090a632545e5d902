"""Backfill with reservations and priority preemption in `schedule.plan` (core/backfill.py,
core/preempt.py): pure, so every case is a hand-made cluster."""

from __future__ import annotations

import random

from hybridctl.core import preempt as pre
from hybridctl.core.backfill import clock
from tests.unit.backfill_kit import H, NOW, easy_cluster, node, reasons, run, running, started, task


# ---- backfill with reservations ------------------------------------------------------------


def test_blocked_head_gets_reservation_and_long_tasks_do_not_delay_it() -> None:
    nodes, held = easy_cluster()
    pending = [task(10, 8, priority=10), task(11, 2), task(12, 2, runtime=0.5 * H)]
    d = run(nodes, held, pending)  # the default: one reservation (EASY)
    w = {w.job_id: w for w in d.waiting}
    assert w[10].starts_at == NOW + H and w[10].reserved_on == ("a",)
    assert w[10].reason == f"reserved: starts ~{clock(NOW + H)} on a (8 GPUs)"
    # The short task ends before the reservation: it backfills; the unbounded one would delay it.
    assert started(d) == {12: {"a"}}
    assert w[11].reason == (
        f"backfill: fits only on nodes held for job 10 (starts ~{clock(NOW + H)}) and would delay it"
    )
    # With a deeper queue of reservations the blocked task gets its own, on b at +2 h.
    w = {w.job_id: w for w in run(nodes, held, pending, backfill_depth=5).waiting}
    assert w[11].reserved_on == ("b",) and w[11].starts_at == NOW + 2 * H


def test_without_reservations_the_small_task_jumps_ahead() -> None:
    """The greedy baseline (depth 0) starts the unbounded 2-GPU task and starves the 8-GPU one."""
    nodes, held = easy_cluster()
    d = run(nodes, held, [task(10, 8, priority=10), task(11, 2)], backfill_depth=0)
    assert started(d) == {11: {"a"}}
    assert "reserved" not in reasons(d)[10]


def test_long_task_may_use_what_the_reservation_leaves_spare() -> None:
    nodes, held = easy_cluster()
    # The head needs 4 GPUs at +1 h on a, where 8 will be free: 4 spare, so a 2-GPU task that
    # runs past +1 h still fits; a second one too; a third would cut into the reservation.
    pending = [task(10, 4, priority=10), task(11, 2), task(12, 2), task(13, 1)]
    d = run(nodes, held, pending, backfill_depth=5)
    assert started(d) == {11: {"a"}}
    assert reasons(d)[10].startswith("reserved: starts")
    # After 11, a has no free GPU. At +1 h it has 8 - 2 (11 never ends) = 6: 4 for 10 and 2 for
    # 12, so 12 stacks on a; 13 gets b at +2 h.
    w = {w.job_id: w for w in d.waiting}
    assert (w[12].reserved_on, w[12].starts_at) == (("a",), NOW + H)
    assert (w[13].reserved_on, w[13].starts_at) == (("b",), NOW + 2 * H)


def test_reservation_goes_where_gpus_free_first() -> None:
    nodes = [node("a", busy=range(8)), node("b", busy=range(8))]
    held = [running(1, "a", range(8), ends=NOW + 3 * H), running(2, "b", range(8), ends=NOW + H)]
    d = run(nodes, held, [task(10, 8)])
    assert d.waiting[0].reserved_on == ("b",) and d.waiting[0].starts_at == NOW + H


def test_overdue_running_task_reserves_as_soon_as_possible() -> None:
    nodes = [node("a", busy=range(8))]
    d = run(nodes, [running(1, "a", range(8), ends=NOW - 60)], [task(10, 8), task(11, 1)])
    assert d.waiting[0].reason == "reserved: starts as soon as possible on a (8 GPUs)"
    assert d.waiting[0].starts_at == NOW


def test_unbounded_running_tasks_give_no_reservation() -> None:
    """Running tasks with neither a time limit nor an estimate never end, as far as reservations
    know: the head keeps its plain reason and smaller tasks backfill greedily."""
    nodes = [node("a", busy=range(6))]
    d = run(nodes, [running(1, "a", range(6))], [task(10, 8, priority=10), task(11, 2)])
    assert started(d) == {11: {"a"}}
    assert reasons(d)[10] == "resources: no node has 8 free GPUs"


def test_gang_reservation_waits_for_both_nodes() -> None:
    nodes = [node("a", busy=range(8)), node("b", busy=range(8)), node("c", busy=range(4))]
    held = [
        running(1, "a", range(8), ends=NOW + H),
        running(2, "b", range(8), ends=NOW + 2 * H),
        running(3, "c", range(4), ends=NOW + 3 * H),
    ]
    d = run(nodes, held, [task(10, 8, nodes=2), task(11, 4, runtime=1.5 * H), task(12, 4, runtime=3 * H)])
    w = {w.job_id: w for w in d.waiting}
    assert w[10].starts_at == NOW + 2 * H and set(w[10].reserved_on) == {"a", "b"}
    assert "8 GPUs each" in w[10].reason
    # c is not held: 12 may run long there; 11 ends before +2 h wherever it goes.
    assert started(d) == {12: {"c"}} or started(d) == {11: {"c"}}


def test_depth_limits_reservations_and_later_ones_wait_behind_earlier() -> None:
    nodes = [node(n, busy=range(8)) for n in "abc"]
    held = [running(i, n, range(8), ends=NOW + (i + 1) * H) for i, n in enumerate("abc")]
    pending = [task(10, 8, priority=3), task(11, 8, priority=2), task(12, 8, priority=1)]
    d = run(nodes, held, pending, backfill_depth=2)
    w = {w.job_id: w for w in d.waiting}
    assert w[10].reserved_on == ("a",) and w[11].reserved_on == ("b",)
    assert w[12].starts_at is None and w[12].reason == "priority: behind job 10"


def test_tasks_placed_in_the_pass_count_for_later_reservations() -> None:
    """A task placed now with a known runtime frees its GPUs at now + runtime."""
    nodes = [node("a")]
    d = run(nodes, [], [task(10, 8, runtime=2 * H, priority=5), task(11, 8)])
    assert started(d) == {10: {"a"}}
    assert d.waiting[0].starts_at == NOW + 2 * H


def test_no_reservation_ever_delays_the_head_random() -> None:
    """Over random clusters: every task started on a held node either ends before the
    reservation or leaves the head what it needs there (replayed from the decision)."""
    rng = random.Random(5)
    for _ in range(200):
        nodes, held = [], []
        for i in range(rng.randint(1, 5)):
            busy = sorted(rng.sample(range(8), rng.randint(0, 8)))
            nodes.append(node(f"n{i}", busy=busy))
            if busy:
                held.append(running(i, f"n{i}", busy, ends=rng.choice([NOW + H, NOW + 2 * H, None])))
        pending = [
            task(100 + j, rng.choice([1, 2, 4, 8]), runtime=rng.choice([None, 0.5 * H, 3 * H]),
                 priority=-j)
            for j in range(rng.randint(1, 12))
        ]  # fmt: skip
        d = run(nodes, held, pending, backfill_depth=rng.choice([1, 3]))
        by_job = {t.job_id: t for t in pending}
        for w in d.waiting:
            if w.starts_at is None or not w.reason.startswith("reserved"):
                continue
            need = by_job[w.job_id].resources.gpus
            for name in w.reserved_on:
                free_then = sum(1 for n in nodes if n.name == name for s in n.gpus if s.free)
                free_then += sum(
                    len(r.gpus) for r in held
                    if r.node == name and r.ends_at is not None and r.ends_at <= w.starts_at
                )  # fmt: skip
                for p in d.placements:
                    t = by_job[p.job_id]
                    ends = NOW + t.runtime_s if t.runtime_s is not None else float("inf")
                    if p.node == name and ends > w.starts_at:
                        free_then -= len(p.gpus)
                assert free_then >= need, (w, d.placements)


# ---- preemption -------------------------------------------------------------------------------


def test_high_priority_task_preempts_a_preemptible_one() -> None:
    nodes = [node("a", busy=range(8))]
    victim = running(7, "a", range(8), priority=-5, preemptible=True)
    d = run(nodes, [victim], [task(10, 8, priority=500), task(11, 1)])
    assert [(p.job_id, p.for_job) for p in d.preempt] == [(7, 10)]
    assert d.preempt[0].reason == "preempted by job 10 (priority 500) on a"
    assert reasons(d)[10] == "preempting: job 7 on a; starts once stopped"
    assert d.placements == ()


def test_config_rule_makes_low_priority_preemptible() -> None:
    nodes = [node("a", busy=range(8))]
    victim = running(7, "a", range(8), priority=-5)
    assert run(nodes, [victim], [task(10, 8, priority=500)]).preempt == ()
    d = run(nodes, [victim], [task(10, 8, priority=500)], preempt_below=0)
    assert [p.job_id for p in d.preempt] == [7]


def test_never_preempts_equal_or_higher_priority() -> None:
    nodes = [node("a", busy=range(8))]
    victim = running(7, "a", range(8), priority=5, preemptible=True)
    d = run(nodes, [victim], [task(10, 8, priority=5)])
    assert d.preempt == ()


def test_least_work_lost_first_checkpoint_counts() -> None:
    nodes = [node("a", busy=range(8))]
    old = running(7, "a", range(4), preemptible=True, started=NOW - 10 * H)
    new = running(8, "a", range(4, 8), preemptible=True, started=NOW - H)
    d = run(nodes, [old, new], [task(10, 4, priority=1)])
    assert [p.job_id for p in d.preempt] == [8]
    # The old one checkpointed a minute ago: it loses least.
    old = running(7, "a", range(4), preemptible=True, started=NOW - 10 * H, checkpoint=NOW - 60)
    d = run(nodes, [old, new], [task(10, 4, priority=1)])
    assert [p.job_id for p in d.preempt] == [7]


def test_holds_the_rest_of_the_node_for_the_preemptor() -> None:
    """2 GPUs free and a 6-GPU victim: the 8-GPU preemptor needs all; a later task may not take
    the 2 free ones (it would delay the preemptor)."""
    nodes = [node("a", busy=range(6))]
    victim = running(7, "a", range(6), priority=-5, preemptible=True)
    d = run(nodes, [victim], [task(10, 8, priority=500), task(11, 2, runtime=60)])
    assert [p.job_id for p in d.preempt] == [7]
    assert d.placements == ()
    assert reasons(d)[11].startswith("backfill: fits only on nodes held for job 10 (starts now)")


def test_stopping_victims_are_not_preempted_twice() -> None:
    nodes = [node("a", busy=range(8))]
    victim = running(7, "a", range(8), priority=-5, preemptible=True, stopping=True)
    d = run(nodes, [victim], [task(10, 8, priority=500)])
    assert d.preempt == ()
    assert reasons(d)[10] == "preempting: job 7 on a; starts once stopped"


def test_picks_the_node_that_loses_least() -> None:
    nodes = [node("a", busy=range(8)), node("b", busy=range(8))]
    held = [
        running(7, "a", range(8), preemptible=True, started=NOW - 5 * H),
        running(8, "b", range(8), preemptible=True, started=NOW - 2 * H),
    ]
    d = run(nodes, held, [task(10, 8, priority=1), task(11, 8, priority=1)])
    assert [(p.job_id, p.for_job) for p in d.preempt] == [(8, 10), (7, 11)]


def test_on_node_never_takes_more_than_needed() -> None:
    small = pre.Candidate((1, 0), -5, 2, 0.0, 0, lost=10.0)
    big = pre.Candidate((2, 0), -5, 4, 0.0, 0, lost=20.0)
    choice = pre.on_node(0, (0, 64.0, 0), (4, 1.0, 0), [small, big])
    assert choice is not None and [v.key for v in choice.victims] == [(2, 0)]
    assert pre.on_node(0, (1, 64.0, 0), (8, 1.0, 0), [small, big]) is None
    assert pre.on_node(0, (8, 64.0, 0), (8, 1.0, 0), [small]) == pre.NodeChoice(0, (), 0.0)


def test_preemptible_key_in_a_job_spec() -> None:
    from hybridctl.core.errors import SpecError
    from hybridctl.core.model import spec_from_dict
    from hybridctl.core.spec import parse_spec

    spec, _ = parse_spec({"run": "true", "preemptible": True})
    assert spec.preemptible and spec_from_dict(spec.to_dict()).preemptible
    assert not parse_spec({"run": "true"})[0].preemptible
    try:
        parse_spec({"run": "true", "preemptible": "yes"})
    except SpecError as exc:
        assert "preemptible" in str(exc) and "true or false" in str(exc)
    else:
        raise AssertionError("a non-boolean preemptible was accepted")


def test_gang_preempts_on_one_site_using_free_nodes_too() -> None:
    nodes = [node("a"), node("b", busy=range(8)), node("c", busy=range(8))]
    held = [
        running(7, "b", range(8), preemptible=True, started=NOW - 3 * H),
        running(8, "c", range(8), preemptible=True, started=NOW - H),
    ]
    d = run(nodes, held, [task(10, 8, priority=9, nodes=2)])
    assert [p.job_id for p in d.preempt] == [8]
    assert set(d.waiting[0].reserved_on) == {"a", "c"}


def test_preemption_invariants_random() -> None:
    """Victims are preemptible, of lower priority than their preemptor, stopped once, and on a
    single-node preemption none could have been spared."""
    rng = random.Random(9)
    for _ in range(300):
        nodes, held = [], []
        job = 1
        for i in range(rng.randint(1, 4)):
            busy = sorted(rng.sample(range(8), rng.randint(4, 8)))
            nodes.append(node(f"n{i}", busy=busy))
            at = 0
            while at < len(busy):
                k = rng.randint(1, len(busy) - at)
                held.append(running(job, f"n{i}", busy[at : at + k], priority=rng.choice([-5, 0, 5]),
                                    preemptible=rng.random() < 0.6, started=NOW - rng.uniform(60, 9 * H)))
                job, at = job + 1, at + k
        pending = [task(100 + j, rng.choice([1, 2, 4, 8]), priority=rng.choice([0, 3, 10]))
                   for j in range(rng.randint(1, 6))]  # fmt: skip
        d = run(nodes, held, pending)
        by_key = {r.job_id: r for r in held}
        prio = {t.job_id: t.priority for t in pending}
        keys = [p.job_id for p in d.preempt]
        assert len(keys) == len(set(keys))
        for p in d.preempt:
            v = by_key[p.job_id]
            assert v.preemptible and v.priority < prio[p.for_job]
        for w in d.waiting:
            if not w.reason.startswith("preempting") or len(w.reserved_on) != 1:
                continue
            (name,) = w.reserved_on
            mine = [by_key[p.job_id] for p in d.preempt if p.for_job == w.job_id]
            need = next(t for t in pending if t.job_id == w.job_id).resources.gpus
            free = sum(s.free for n in nodes if n.name == name for s in n.gpus)
            ahead = (-prio[w.job_id], w.job_id)  # tasks placed before it took GPUs there first
            free -= sum(len(p.gpus) for p in d.placements
                        if p.node == name and (-prio[p.job_id], p.job_id) < ahead)  # fmt: skip
            total = free + sum(len(v.gpus) for v in mine)
            assert total >= need
            assert all(total - len(v.gpus) < need for v in mine), (w, mine)


def test_a_later_reservation_reuses_a_node_after_the_earlier_one_ends() -> None:
    """Holds are a coarse time map: a 1 h task reserved at +1 h on a leaves a free from +2 h, and
    a short task that ends before +1 h may run there before it."""
    nodes = [node("a", busy=range(8)), node("b", busy=range(8))]
    held = [running(1, "a", range(8), ends=NOW + H), running(2, "b", range(8), ends=NOW + 5 * H)]
    pending = [task(10, 8, runtime=H, priority=3), task(11, 8, runtime=H, priority=2)]
    w = {w.job_id: w for w in run(nodes, held, pending, backfill_depth=2).waiting}
    assert (w[10].reserved_on, w[10].starts_at) == (("a",), NOW + H)
    assert (w[11].reserved_on, w[11].starts_at) == (("a",), NOW + 2 * H)
    # Unbounded, the second must go to b, after the first would never end.
    pending = [task(10, 8, priority=3), task(11, 8, runtime=H, priority=2)]
    w = {w.job_id: w for w in run(nodes, held, pending, backfill_depth=2).waiting}
    assert (w[11].reserved_on, w[11].starts_at) == (("b",), NOW + 5 * H)
