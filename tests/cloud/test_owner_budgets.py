"""Per-user and per-group cloud budgets (`cloud.burst.user_budget_usd`, `group_budget_usd`;
core/allowance.py) as the burst policy and the scheduler apply them: what an owner spent, what
their running cloud tasks will still cost and what this pass lets them take, at their share of
each node, may not pass their budget; refused tasks wait on-prem with the reason. Pure."""

from __future__ import annotations

from dataclasses import replace

from hybridctl.core import burst
from hybridctl.core.allowance import CloudGate, NodePrice, Purses, closed_gate, plan_within
from hybridctl.core.burst import CloudNode, Limits, Offer, World, decide
from hybridctl.core.model import ClusterView, GpuSlot, NodeView, PendingTask, Policy, Resources, RunningTask

NOW = 1_750_000_000.0  # mid-June 2025: the month has two weeks left
BASE = Limits(after=0, idle_timeout=600, max_nodes=8, max_hourly_usd=1000, budget_usd=100_000,
              allow_on_demand=True, count_preemption_loss=False, reclaim_per_h=0.0)
SPOT1 = Offer("simulated", "a100x1", "r1", "z-a", "A100", 1, 16, 128 * 1024, True, 1.00)
SPOT8 = Offer("simulated", "a100x8", "r1", "z-a", "A100", 8, 96, 1152 * 1024, True, 8.00)
FULL = NodeView("prem1", tuple(GpuSlot(i, "NVIDIA A100", free=False) for i in range(8)), 64, 64, 1 << 19, 1 << 19)


def task(job: int, user: str = "alice", group: str = "vision", hours: float = 2.0, gpus: int = 1,
         placement: str = "any") -> PendingTask:
    return PendingTask(job, 0, user, group, 0, NOW - 600, Resources(gpus=gpus, gpu_type="A100", cpus=1),
                       placement=placement, runtime_s=hours * 3600.0)


def decide_(pending: list[PendingTask], limits: Limits, offers: list[Offer] = [SPOT1], **kw: object) -> burst.BurstDecision:
    cluster = kw.pop("cluster", ClusterView((FULL,)))
    return decide(World(pending, cluster, offers=offers, **kw), limits, Policy(), NOW)  # type: ignore[arg-type]


def launched_for(d: burst.BurstDecision) -> set[int]:
    return {k[0] for r in d.launches for k in r.tasks}


def test_a_user_over_budget_waits_and_others_still_burst() -> None:
    d = decide_([task(1, hours=10), task(2, user="bob", hours=10)], replace(BASE, user_budget_usd={"alice": 5.0}))
    assert launched_for(d) == {2}  # alice's 10 h at $1/h would pass her $5
    (b,) = d.blocked
    assert (b.job_id, b.reason) == (1, "cloud: user alice's budget: $0.00 of $5.00 spent or committed this month;"
                                       " this run needs $10.00 more (cloud.burst.user_budget_usd)")
    assert d.gate is not None and d.gate.refused == {(1, 0): b.reason} and (1, 0) not in d.gate.cloud_ok


def test_no_owner_budget_changes_nothing() -> None:
    d = decide_([task(1, hours=10)], BASE)
    assert launched_for(d) == {1} and d.gate is None


def test_spent_counts_and_the_default_applies_to_everyone_not_named() -> None:
    limits = replace(BASE, user_budget_usd={"*": 5.0, "carol": 100.0})
    ok = decide_([task(1, hours=0.5)], limits, owner_spent={("user", "alice"): 4.4})
    assert launched_for(ok) == {1}  # 4.40 + 0.50 <= 5
    over = decide_([task(1, hours=0.5)], limits, owner_spent={("user", "alice"): 4.6})
    assert launched_for(over) == set() and "$4.60 of $5.00" in over.blocked[0].reason
    named = decide_([task(1, user="carol", hours=0.5)], limits, owner_spent={("user", "carol"): 50.0})
    assert launched_for(named) == {1}


def test_what_a_pass_lets_one_owner_take_adds_up() -> None:
    d = decide_([task(1), task(2), task(3)], replace(BASE, user_budget_usd={"alice": 4.5}))
    assert launched_for(d) == {1, 2}  # $2 + $2; the third would make $6
    assert [b.job_id for b in d.blocked] == [3]


def test_a_group_budget_binds_its_members_together() -> None:
    limits = replace(BASE, group_budget_usd={"vision": 3.0})
    d = decide_([task(1, user="alice"), task(2, user="bob"), task(3, user="dan", group="nlp")], limits)
    assert launched_for(d) == {1, 3}
    assert d.blocked[0].job_id == 2 and "group vision's budget" in d.blocked[0].reason
    assert "cloud.burst.group_budget_usd" in d.blocked[0].reason


def test_running_cloud_work_is_committed_at_the_owners_share_of_its_node() -> None:
    # alice holds 2 of an 8-GPU $8/h node for 3 more hours: $6 committed; her budget is $7.
    held = CloudNode("c1", SPOT8, NOW - 3600, up=True)
    view = replace(SPOT8.view("c1"), site="cloud")
    view = replace(view, gpus=tuple(replace(g, free=g.index >= 2) for g in view.gpus))
    run = RunningTask(9, 0, "alice", 0, "c1", (0, 1), 2, 1024, NOW - 3600, NOW + 3 * 3600, group="vision")
    cluster = ClusterView((FULL, view), running=(run,))
    limits = replace(BASE, user_budget_usd={"alice": 7.0})
    # A 1-GPU task for 2 h fits on the held node: 2 h x $8/8 = $2 more, $8 in all > $7.
    d = decide_([task(1)], limits, cloud=[held], cluster=cluster)
    assert d.covered == {} and "$6.00 of $7.00" in d.blocked[0].reason and "needs $2.00" in d.blocked[0].reason
    # A 1-hour one fits ($7.00), on the held node: no launch.
    d = decide_([task(1, hours=1.0)], limits, cloud=[held], cluster=cluster)
    assert d.covered == {(1, 0): "c1"} and not d.launches and d.gate is not None and (1, 0) in d.gate.cloud_ok


def test_a_task_packed_beside_another_on_a_node_rented_this_pass_is_counted() -> None:
    # Two 4-GPU tasks of alice for 2 h share one $8/h 8-GPU node: $8 each; budget $10.
    d = decide_([task(1, gpus=4), task(2, gpus=4)], replace(BASE, user_budget_usd={"alice": 10.0}), offers=[SPOT8])
    assert launched_for(d) == {1} and [b.job_id for b in d.blocked] == [2]


CLOUD = replace(SPOT8.view("c1"), site="cloud", market="spot")  # $8/h for 8 GPUs
PRICES = {"c1": NodePrice(8.0, 8, 96)}
EMPTY = NodeView("prem2", tuple(GpuSlot(i, "NVIDIA A100") for i in range(8)), 64, 64, 1 << 19, 1 << 19)


def gate(budget: float, ok: dict | None = None, refused: dict | None = None) -> CloudGate:
    return CloudGate(ok or {}, Purses({"alice": budget}, {}, "month"), refused or {}, PRICES, period_s=86400.0)


def test_plan_within_keeps_a_budgeted_owners_tasks_off_cloud_nodes_they_cannot_pay() -> None:
    view = ClusterView((FULL, CLOUD))
    refusal = "cloud: user alice's budget: ..."
    # alice has $1 left; the decision let task 4 through at $2 (what c1 costs it) and task 6 at
    # $0.50 (it assumed a cheaper node).
    g = gate(1.0, {(4, 0): 2.0, (6, 0): 0.5}, {(1, 0): refusal})
    pending = [task(1), task(2, placement="cloud"), task(3, user="bob"), task(4), task(5, hours=0.5), task(6)]
    d = plan_within(view, pending, Policy(), g)
    # bob has no budget; task 4 costs what the decision took; task 5 costs $0.50 of a GPU of c1;
    # task 1 was refused (kept on-prem, which is full), task 2 would cost $2, task 6 $1.50 more.
    assert {p.job_id: p.node for p in d.placements} == {3: "c1", 4: "c1", 5: "c1"}
    why = {w.job_id: w.reason for w in d.waiting}
    assert why[1].endswith("; " + refusal)
    assert why[2] == ("cloud: user alice's budget: $0.00 of $1.00 spent or committed this month;"
                      " this run needs $2.00 more (cloud.burst.user_budget_usd)")
    assert why[6].startswith("cloud: user alice's budget: $0.50 of $1.00") and "needs $1.50 more" in why[6]
    assert g.purses.used == {("user", "alice"): 0.5, ("group", "vision"): 0.5}
    # The next pass keeps task 2 off cloud nodes until the next decision, with the reason.
    assert {w.job_id: w.reason for w in plan_within(view, pending, Policy(), g).waiting}[2] == why[2]
    # Without a gate the same pass puts every one of them on the cloud node.
    assert {p.job_id for p in plan_within(view, pending, Policy(), None).placements} == {1, 2, 3, 4, 5, 6}


def test_only_cloud_placements_are_charged_and_each_task_once() -> None:
    # Placed on-prem: never charged, however many passes (a tiny budget changes nothing).
    g = gate(0.01)
    view = ClusterView((EMPTY, CLOUD))
    for _ in range(5):
        assert [p.node for p in plan_within(view, [task(1)], Policy(), g).placements] == ["prem2"]
    assert g.purses.used == {}
    # Placed on the cloud node pass after pass (nothing started it): charged once.
    g = gate(1.0)
    for _ in range(3):
        assert [p.node for p in plan_within(ClusterView((FULL, CLOUD)), [task(1, hours=0.6)], Policy(), g).placements] == ["c1"]
    assert g.purses.used[("user", "alice")] == 0.6
    # A budget no one reaches places exactly as no budget does.
    pending = [task(n, user=u, hours=h) for n, u, h in ((1, "alice", 3), (2, "bob", 1), (3, "alice", 9))]
    for v in (ClusterView((FULL, CLOUD)), ClusterView((EMPTY, CLOUD))):
        assert plan_within(v, pending, Policy(), gate(1e9)).placements == plan_within(v, pending, Policy(), None).placements


def test_what_the_plan_placed_is_charged_by_the_gpus_it_took_and_unknown_nodes_wait() -> None:
    # [H100:1, A100:4]: no H100 anywhere, so the plan takes 4 A100s of c1: $4/h x 2 h = $8.
    alt = replace(task(1), resources=Resources(gpus=1, gpu_type="H100", cpus=1,
                                               alternatives=(("H100", 1), ("A100", 4)), ordered=True))
    d = plan_within(ClusterView((FULL, CLOUD)), [alt], Policy(), gate(7.0))
    assert not d.placements and "this run needs $8.00 more" in d.waiting[0].reason
    # A node the decision did not price (rented since) is not taken by a budgeted owner's task,
    # one without GPUs included.
    other = replace(CLOUD, name="c9")
    closed = closed_gate({"*": 100.0}, {}, "month")
    assert closed is not None
    d = plan_within(ClusterView((replace(FULL, cpus_free=0), other)),
                    [task(1), replace(task(2), resources=Resources(gpus=0, cpus=1))], Policy(), closed)
    assert d.placements == () and {w.job_id for w in d.waiting} == {1, 2}
    assert {w.reason for w in d.waiting} == {"cloud: its owner has a cloud budget of their own, and the burst"
                                             " policy has not priced this cloud node yet"}
    assert closed_gate({}, {}, "month") is None


def test_a_task_without_gpus_cannot_rent_a_gpu_node_past_its_owners_budget() -> None:
    # 8 of a node's 96 CPUs for 10 h at $8/h: $6.67 of alice's $5. It used to pay nothing.
    cpu_only = replace(task(1, hours=10), resources=Resources(gpus=0, cpus=8))
    cluster = ClusterView((replace(FULL, cpus_free=0),))
    d = decide_([cpu_only], replace(BASE, user_budget_usd={"alice": 5.0}), [SPOT8], cluster=cluster)
    assert launched_for(d) == set()
    assert "this run needs $6.67 more (cloud.burst.user_budget_usd)" in d.blocked[0].reason
    assert launched_for(decide_([cpu_only], replace(BASE, user_budget_usd={"alice": 7.0}), [SPOT8],
                                cluster=cluster)) == {1}


DAY = replace(BASE, budget_period="day")


def test_a_run_without_a_time_limit_counts_as_a_whole_budget_period() -> None:
    # No limit (or only a history estimate, which bounds nothing): it may run a day, into the
    # next period too; counted whole, what carries over always fits the next period's budget.
    for t in (replace(task(1), runtime_s=None), replace(task(1, hours=1.0), estimated=True)):
        over = decide_([t], replace(DAY, user_budget_usd={"alice": 23.9}))
        assert launched_for(over) == set()
        assert over.blocked[0].reason.endswith(
            "this run needs $24.00 more (cloud.burst.user_budget_usd);"
            " without a time limit a run counts as a whole budget period")
        assert launched_for(decide_([t], replace(DAY, user_budget_usd={"alice": 24.1}))) == {1}
    # A time limit bounds it, whole: 12 h is $12 though the day has 8.9 h left.
    assert launched_for(decide_([task(1, hours=12.0)], replace(DAY, user_budget_usd={"alice": 11.9}))) == set()
    assert launched_for(decide_([task(1, hours=12.0)], replace(DAY, user_budget_usd={"alice": 12.1}))) == {1}


def test_running_cloud_work_without_a_time_limit_is_committed_as_a_whole_period() -> None:
    held = CloudNode("c1", SPOT1, NOW - 3600, up=True)
    view = replace(SPOT1.view("c1"), site="cloud")
    view = replace(view, gpus=tuple(replace(g, free=False) for g in view.gpus))
    for ends_at, estimated in ((None, False), (NOW + 600, True)):
        run = RunningTask(9, 0, "alice", 0, "c1", (0,), 1, 1024, NOW - 3600, ends_at, group="vision",
                          estimated=estimated)
        d = decide_([task(1, hours=1.0)], replace(DAY, user_budget_usd={"alice": 24.5}),
                    cloud=[held], cluster=ClusterView((FULL, view), running=(run,)))
        assert launched_for(d) == set() and "$24.00 of $24.50" in d.blocked[0].reason


def test_a_share_of_an_owners_budget_is_kept_for_deadlines_with_a_paced_budget() -> None:
    limits = replace(BASE, user_budget_usd={"alice": 10.0}, pace_budget=True, deadline_reserve=0.2)
    plain = decide_([task(1, hours=9.0, placement="cloud")], limits)
    assert launched_for(plain) == set()
    assert ("$0.00 of $10.00 spent or committed this month, 20% kept for jobs with a deadline;"
            " this run needs $9.00 more") in plain.blocked[0].reason
    urgent = decide_([task(1, hours=9.0, placement="cloud")], limits, deadlines={(1, 0): NOW + 86400})
    assert launched_for(urgent) == {1}


def test_an_owners_deadline_reserve_is_for_a_deadline_the_wait_would_miss() -> None:
    """As for the lab's budget: a job whose deadline leaves slack to wait on-prem is paced like any
    other and may not spend its owner's reserve; one the on-prem wait would make late may."""
    limits = replace(BASE, user_budget_usd={"alice": 10.0}, pace_budget=True, deadline_reserve=0.2,
                     wait_value_usd=4.0)
    prem = NodeView("prem1", tuple(GpuSlot(i, "NVIDIA A100", free=False) for i in range(8)), 64, 64, 1 << 19, 1 << 19)
    frees = [burst.Freeing("prem1", tuple(range(8)), 8, 0, NOW + 6 * 3600)]  # 6 h of waiting ($24) costs more than $9.50
    kw = dict(cluster=ClusterView((prem,)), freeing=frees)
    roomy = decide_([task(1, hours=9.5)], limits, deadlines={(1, 0): NOW + 30 * 86400}, **kw)
    assert launched_for(roomy) == set() and "20% kept for jobs with a deadline" in roomy.blocked[0].reason
    late = decide_([task(1, hours=9.5)], limits, deadlines={(1, 0): NOW + 12 * 3600}, **kw)
    assert launched_for(late) == {1}


def test_a_held_node_is_charged_by_the_candidate_the_plan_takes_on_it() -> None:
    # [H100:1, A100:4] on an idle 8 x A100 node at $8/h: 4 GPUs for 10 h are $40, not $10.
    held = CloudNode("c1", SPOT8, NOW - 3600, up=True, idle_since=NOW - 60)
    alt = replace(task(1, hours=10.0), resources=Resources(gpus=1, gpu_type="H100", cpus=1,
                                                           alternatives=(("H100", 1), ("A100", 4)), ordered=True))
    cluster = ClusterView((FULL, replace(SPOT8.view("c1"), site="cloud")))
    d = decide_([alt], replace(BASE, user_budget_usd={"alice": 20.0}), offers=[SPOT8], cloud=[held], cluster=cluster)
    assert d.covered == {} and "this run needs $40.00 more" in d.blocked[0].reason


def test_on_a_held_node_too_an_owners_deadline_reserve_is_for_a_pressing_deadline() -> None:
    """A task covered by an idle rented node is charged to its owners like a new rental, and the
    reserve rule is the same: a deadline with slack to wait on-prem does not open it (before, any
    deadline did on this path, so a far one was a way into the reserve)."""
    limits = replace(BASE, user_budget_usd={"alice": 10.0}, pace_budget=True, deadline_reserve=0.2,
                     wait_value_usd=4.0)
    held = CloudNode("c1", SPOT8, NOW - 3600, up=True, idle_since=NOW - 60)
    prem = NodeView("prem1", tuple(GpuSlot(i, "NVIDIA A100", free=False) for i in range(8)), 64, 64, 1 << 19, 1 << 19)
    frees = [burst.Freeing("prem1", tuple(range(8)), 8, 0, NOW + 6 * 3600)]
    kw = dict(cluster=ClusterView((prem, replace(SPOT8.view("c1"), site="cloud"))), freeing=frees, offers=[SPOT8],
              cloud=[held])
    roomy = decide_([task(1, hours=9.5)], limits, deadlines={(1, 0): NOW + 30 * 86400}, **kw)  # $9.50 of 1/8 node
    # Not on the held node; a node of its own would cost the same, so it waits within its slack.
    assert roomy.covered == {} and not roomy.launches and not roomy.blocked
    assert roomy.gate is not None and roomy.gate.avoid == {(1, 0): frozenset({"c1"})} and not roomy.gate.refused
    assert "1 task wait on-prem" in roomy.notes[0]
    late = decide_([task(1, hours=9.5)], limits, deadlines={(1, 0): NOW + 12 * 3600}, **kw)
    assert late.covered == {(1, 0): "c1"} and not late.blocked


OD8 = Offer("simulated", "a100x8-od", "r1", "z-a", "A100", 8, 96, 1152 * 1024, False, 32.00)


def test_a_task_its_owners_cannot_pay_on_a_held_node_rents_one_they_can_and_keeps_off_the_dear_one() -> None:
    """A held on-demand node's share (1/8 of $32/h for 10 h: $40) is past alice's $20, a spot
    node of her own ($1/h: $10) is not. It used to be refused and wait; it rents the cheap node,
    the scheduler keeps it off the dear one until then (else it would take the share there, be
    refused by the gate, and never reach its node), and the next decision covers it with the node
    rented for it rather than renting again."""
    limits = replace(BASE, user_budget_usd={"alice": 20.0})
    c1 = CloudNode("c1", OD8, NOW - 3600, up=True, idle_since=NOW - 60)
    c1_view = replace(OD8.view("c1"), site="cloud")
    d = decide_([task(1, hours=10)], limits, offers=[SPOT1, OD8], cloud=[c1], cluster=ClusterView((FULL, c1_view)))
    assert d.covered == {} and not d.blocked
    assert [(r.offer.instance_type, r.tasks) for r in d.launches] == [("a100x1", ((1, 0),))]
    assert d.gate is not None and d.gate.avoid == {(1, 0): frozenset({"c1"})} and d.gate.cloud_ok == {(1, 0): 10.0}
    # The scheduler's pass before the node is up: not on c1 (on-prem is full), and nothing charged.
    s = plan_within(ClusterView((FULL, c1_view)), [task(1, hours=10)], Policy(), d.gate)
    assert s.placements == () and [w.job_id for w in s.waiting] == [1]
    assert s.waiting[0].reason.endswith("; kept off c1: its share there is past its owners' cloud budget"
                                        " (cloud.burst.user_budget_usd, group_budget_usd)")
    assert d.gate.purses.used == {("user", "alice"): 10.0, ("group", "vision"): 10.0}
    # The next decision, the node rented for it booting: covered by it, no second rental.
    c2 = CloudNode("c2", SPOT1, NOW, up=False)
    again = decide_([task(1, hours=10)], limits, offers=[SPOT1, OD8], cloud=[c1, c2],
                    cluster=ClusterView((FULL, c1_view)))
    assert again.covered == {(1, 0): "c2"} and not again.launches and not again.blocked and again.gate is not None
    # Up: the scheduler places it there and charges nothing more than the decision took.
    c2_view = replace(SPOT1.view("c2"), site="cloud")
    s = plan_within(ClusterView((FULL, c1_view, c2_view)), [task(1, hours=10)], Policy(), again.gate)
    assert [p.node for p in s.placements] == ["c2"]
    assert again.gate.purses.used == {("user", "alice"): 10.0, ("group", "vision"): 10.0}
    # Where no node she can pay exists, it is refused as before, with the cheapest price named.
    none = decide_([task(1, hours=10)], limits, offers=[OD8], cloud=[c1], cluster=ClusterView((FULL, c1_view)))
    assert none.covered == {} and not none.launches and "this run needs $40.00 more" in none.blocked[0].reason


def test_a_task_too_dear_on_one_held_node_takes_another_held_node_it_can_pay() -> None:
    """c1 (on-demand, one GPU busy) is the tighter fit, so the plan tries it first: $40 of alice's
    $20. c2 (idle spot, $8/h for 8 GPUs) costs her $10: covered there, nothing rented."""
    limits = replace(BASE, user_budget_usd={"alice": 20.0})
    c1 = CloudNode("c1", OD8, NOW - 3600, up=True)
    c2 = CloudNode("c2", SPOT8, NOW - 3600, up=True, idle_since=NOW - 60)
    busy = OD8.view("c1")
    busy = replace(busy, site="cloud", gpus=(replace(busy.gpus[0], free=False), *busy.gpus[1:]))
    running = (RunningTask(9, 0, "bob", 0, "c1", (0,), 1, 0, NOW - 600),)
    cluster = ClusterView((FULL, busy, replace(SPOT8.view("c2"), site="cloud")), running=running)
    d = decide_([task(1, hours=10)], limits, offers=[SPOT1, OD8, SPOT8], cloud=[c1, c2], cluster=cluster)
    assert d.covered == {(1, 0): "c2"} and not d.launches and not d.blocked
    assert d.gate is not None and d.gate.avoid == {(1, 0): frozenset({"c1"})} and d.gate.cloud_ok == {(1, 0): 10.0}
