"""The burst policy (`core.burst`) as tables: saturation and `after`, placement rules, cheapest /
spread / packing / back-off / on-demand fallback, every limit with its visible reason, idle
scale-down, budget stop, and the "wait or pay" estimate. Pure: `now` is passed in."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from hybridctl.cloud.cost import Held, hourly_by_job, split
from hybridctl.core import burst
from hybridctl.core.burst import CloudNode, Freeing, Limits, Offer, World, decide
from hybridctl.core.model import ClusterView, GpuSlot, NodeView, PendingTask, Policy, Resources

NOW = 1_750_000_000.0
LIMITS = Limits(after=120, idle_timeout=600, max_nodes=4, max_hourly_usd=100, budget_usd=1000)
POLICY = Policy()


def node(name: str, gpus: int = 8, model: str = "NVIDIA A100", busy: int = 0, site: str = "onprem",
         cpus: float = 64, mem: int = 512 * 1024) -> NodeView:
    slots = tuple(GpuSlot(i, model, free=i >= busy) for i in range(gpus))
    return NodeView(name, slots, cpus, cpus, mem, mem, site=site)


def task(job: int, gpus: int = 1, gpu_type: str | None = "A100", placement: str = "any", waited: float = 300,
         priority: int = 0, use_spot: bool = True, num_nodes: int = 1, user: str = "alice", cpus: float = 1,
         deps: tuple[int, ...] = ()) -> PendingTask:
    return PendingTask(job, 0, user, "lab", priority, NOW - waited,
                       Resources(gpus=gpus, gpu_type=gpu_type, cpus=cpus, use_spot=use_spot), num_nodes, placement,
                       None, deps)


def offer(itype: str, gpus: int, model: str, price: float, zone: str = "z-a", spot: bool = True,
          cpus: float = 16, mem_gb: int = 128) -> Offer:
    return Offer("simulated", itype, "r1", zone, model, gpus, cpus, mem_gb * 1024, spot, price)


OFFERS = [
    offer("a100x1", 1, "A100", 1.20, "z-a"),
    offer("a100x1", 1, "A100", 1.25, "z-b"),
    offer("a100x8", 8, "A100", 11.0, "z-a", cpus=96, mem_gb=1152),
    offer("l40sx1", 1, "L40S", 0.92, "z-a"),
    offer("a100x1", 1, "A100", 3.00, "z-a", spot=False),
    offer("a100x8", 8, "A100", 32.0, "z-a", spot=False, cpus=96, mem_gb=1152),
]

FULL = (node("prem1", busy=8),)  # an on-prem fleet with nothing free
EMPTY = (node("prem1"),)


def world(pending: list[PendingTask], nodes: tuple[NodeView, ...] = FULL, **kw: object) -> World:
    kw.setdefault("offers", OFFERS)
    return World(pending, ClusterView(nodes), **kw)  # type: ignore[arg-type]


def launched(d: burst.BurstDecision) -> list[tuple[str, str, str]]:
    return [(r.offer.instance_type, r.offer.zone, r.offer.market) for r in d.launches]


# ---- saturation, after, placement -------------------------------------------------------------------


@pytest.mark.parametrize(
    "nodes, t, launches, note",
    [
        (EMPTY, task(1), [], None),                                           # fits on-prem: no burst
        (FULL, task(1), [("a100x1", "z-a", "spot")], None),                   # saturated and waited
        (FULL, task(1, waited=60), [], "waited less than burst.after"),       # not long enough yet
        (FULL, task(1, placement="onprem"), [], None),                        # never bursts
        (EMPTY, task(1, placement="cloud", waited=0), [("a100x1", "z-a", "spot")], None),  # straight to cloud
        (FULL, task(1, deps=(7,)), [], None),                                 # waits for a dependency
        ((), task(1), [("a100x1", "z-a", "spot")], None),                     # no on-prem nodes at all
        (FULL, task(1, gpus=1, gpu_type="L40S"), [("l40sx1", "z-a", "spot")], None),  # model matters
        (FULL, task(1, gpus=1, gpu_type=None), [("l40sx1", "z-a", "spot")], None),    # any model: cheapest
        (FULL, task(1, gpus=4), [("a100x8", "z-a", "spot")], None),           # smallest that holds it
        (FULL, task(1, gpus=1, cpus=32), [("a100x8", "z-a", "spot")], None),  # CPUs count too
    ],
)
def test_saturation_after_and_placement(nodes: tuple[NodeView, ...], t: PendingTask,
                                        launches: list[tuple[str, str, str]], note: str | None) -> None:
    d = decide(world([t], nodes), LIMITS, POLICY, NOW)
    assert launched(d) == launches
    assert not d.blocked
    if note:
        assert any(note in n for n in d.notes)


def test_requeued_task_waits_after_from_when_it_became_pending_again() -> None:
    t = task(1, waited=3600)
    d = decide(world([t], pending_since={(1, 0): NOW - 10}), LIMITS, POLICY, NOW)
    assert launched(d) == []


def test_freeing_on_prem_counts_only_when_the_policy_says_so() -> None:
    t = task(1, gpus=8)
    soon = [Freeing("prem1", tuple(range(8)), 8, 0, NOW + 300)]
    assert launched(decide(world([t], freeing=soon), LIMITS, POLICY, NOW)) == [("a100x8", "z-a", "spot")]
    waiting = replace(LIMITS, count_freeing_within=600)
    assert launched(decide(world([t], freeing=soon), waiting, POLICY, NOW)) == []


# ---- which offers ---------------------------------------------------------------------------------


def test_capacity_back_off_moves_to_the_next_offer() -> None:
    backoff = {OFFERS[0].pool: NOW + 300}
    d = decide(world([task(1)], backoff=backoff), LIMITS, POLICY, NOW)
    assert launched(d) == [("a100x1", "z-b", "spot")]
    # the back-off expires
    d = decide(world([task(1)], backoff=backoff), LIMITS, POLICY, NOW + 301)
    assert launched(d) == [("a100x1", "z-a", "spot")]


def test_spot_refused_falls_back_to_on_demand_only_when_allowed() -> None:
    backoff = {o.pool: NOW + 300 for o in OFFERS if o.spot and o.gpu_type == "A100"}
    d = decide(world([task(1)], backoff=backoff), LIMITS, POLICY, NOW)
    assert launched(d) == []
    [b] = d.blocked
    assert "backing off after capacity errors" in b.reason and "burst.allow_on_demand" in b.reason
    d = decide(world([task(1)], backoff=backoff), replace(LIMITS, allow_on_demand=True), POLICY, NOW)
    assert launched(d) == [("a100x1", "z-a", "on-demand")]


def test_job_asking_for_on_demand() -> None:
    t = task(1, use_spot=False)
    [b] = decide(world([t]), LIMITS, POLICY, NOW).blocked
    assert "use_spot: false" in b.reason
    d = decide(world([t]), replace(LIMITS, allow_on_demand=True), POLICY, NOW)
    assert launched(d) == [("a100x1", "z-a", "on-demand")]


def test_several_nodes_spread_over_pools_of_similar_price() -> None:
    d = decide(world([task(1), task(2), task(3)]), LIMITS, POLICY, NOW)
    assert sorted(launched(d)) == [("a100x1", "z-a", "spot"), ("a100x1", "z-a", "spot"), ("a100x1", "z-b", "spot")]
    assert len({r.offer.pool for r in d.launches}) == 2
    no_spread = decide(world([task(1), task(2), task(3)]), replace(LIMITS, spread_penalty=0), POLICY, NOW)
    assert launched(no_spread) == [("a100x1", "z-a", "spot")] * 3


def test_tasks_pack_onto_a_node_rented_in_the_same_pass() -> None:
    offers = [offer("a100x2", 2, "A100", 1.5), offer("a100x1", 1, "A100", 2.0)]
    d = decide(world([task(1), task(2)], offers=offers), LIMITS, POLICY, NOW)
    assert launched(d) == [("a100x2", "z-a", "spot")]
    assert d.launches[0].tasks == ((1, 0),)


def test_multi_node_job_rents_a_gang_in_one_pool() -> None:
    d = decide(world([task(1, gpus=8, num_nodes=2)]), LIMITS, POLICY, NOW)
    assert launched(d) == [("a100x8", "z-a", "spot")] * 2
    assert len({r.group for r in d.launches}) == 1


def test_a_task_fitting_no_offer_is_blocked_with_the_reason() -> None:
    [b] = decide(world([task(1, gpus=16)]), LIMITS, POLICY, NOW).blocked
    assert b.reason == "cloud: no cloud offer has 16 A100 GPUs"


def test_a_starting_node_covers_the_task_instead_of_renting_another() -> None:
    starting = CloudNode("cloud-1", OFFERS[0], NOW - 30)
    d = decide(world([task(1)], cloud=[starting]), LIMITS, POLICY, NOW)
    assert launched(d) == [] and d.covered == {(1, 0): "cloud-1"}
    d = decide(world([task(1), task(2)], cloud=[starting]), LIMITS, POLICY, NOW)
    assert len(d.launches) == 1 and d.launches[0].tasks == ((2, 0),)


def test_a_quota_holds_the_task_back_and_nothing_is_rented() -> None:
    policy = Policy(user_gpu_quota={"alice": 8})
    view = ClusterView(FULL, gpus_in_use_by_user={"alice": 8})
    d = decide(World([task(1)], view, offers=OFFERS), LIMITS, policy, NOW)
    assert launched(d) == [] and not d.blocked
    assert any("quota" in n for n in d.notes)


# ---- limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits, held, spent, reason",
    [
        (replace(LIMITS, max_nodes=0), 0, 0.0, "cloud: max_nodes: 0 of 0 cloud nodes in use"),
        (replace(LIMITS, max_nodes=1), 1, 0.0, "cloud: max_nodes: 1 of 1 cloud nodes in use"),
        (replace(LIMITS, max_hourly_usd=1.0), 0, 0.0, "cloud: max_hourly_usd: cloud nodes cost $0.00/h now"),
        (replace(LIMITS, max_hourly_usd=2.0), 1, 0.0, "would pass the $2.00/h limit"),
        (replace(LIMITS, budget_usd=10.0), 0, 9.5, "cloud: budget: $9.50 of $10.00 spent this month"),
        (replace(LIMITS, budget_usd=0.0), 0, 0.0, "cloud: budget: $0.00 of $0.00 spent this month"),
    ],
)
def test_limits_block_with_a_visible_reason(limits: Limits, held: int, spent: float, reason: str) -> None:
    cloud = [CloudNode(f"c{i}", OFFERS[1], NOW - 100, up=True) for i in range(held)]
    busy = tuple(node(c.name, 1, "NVIDIA A100", busy=1, site="cloud", cpus=16) for c in cloud)
    d = decide(world([task(1)], FULL + busy, cloud=cloud, spent=spent), limits, POLICY, NOW)
    assert launched(d) == []
    [b] = d.blocked
    assert b.job_id == 1 and reason in b.reason


def test_a_gang_larger_than_max_nodes_says_how_many_it_needs() -> None:
    assert len(decide(world([task(1, gpus=8, num_nodes=3)]), LIMITS, POLICY, NOW).launches) == 3
    [b] = decide(world([task(1, gpus=8, num_nodes=5)]), LIMITS, POLICY, NOW).blocked
    assert "the job needs 5" in b.reason


# ---- scale-down ---------------------------------------------------------------------------------


def cloud_node(name: str, idle_for: float | None, busy: bool = False) -> tuple[CloudNode, NodeView]:
    c = CloudNode(name, OFFERS[0], NOW - 3600, up=True, idle_since=None if idle_for is None else NOW - idle_for)
    return c, node(name, 1, "NVIDIA A100", busy=1 if busy else 0, site="cloud", cpus=16)


@pytest.mark.parametrize("idle_for, gone", [(None, False), (599, False), (600, True), (3600, True)])
def test_idle_nodes_are_given_back_after_the_timeout(idle_for: float | None, gone: bool) -> None:
    c, v = cloud_node("c1", idle_for, busy=idle_for is None)
    d = decide(world([], EMPTY + (v,), cloud=[c]), LIMITS, POLICY, NOW)
    assert [s.node for s in d.scale_down] == (["c1"] if gone else [])
    if gone:
        assert "idle for" in d.scale_down[0].reason and "burst.idle_timeout" in d.scale_down[0].reason


def test_an_idle_node_a_waiting_task_is_about_to_use_stays() -> None:
    c, v = cloud_node("c1", 3600)
    d = decide(world([task(1)], FULL + (v,), cloud=[c]), LIMITS, POLICY, NOW)
    assert d.scale_down == () and d.launches == () and d.covered == {(1, 0): "c1"}


def test_budget_about_to_run_out_gives_every_node_back() -> None:
    c, v = cloud_node("c1", None, busy=True)
    d = decide(world([task(1)], FULL + (v,), cloud=[c], spent=999.99), LIMITS, POLICY, NOW)
    assert [s.node for s in d.scale_down] == ["c1"] and d.launches == ()
    assert d.scale_down[0].reason.startswith("budget:")


@pytest.mark.parametrize(
    "period, when, start",
    [
        ("day", "2025-06-18T15:30:00", "2025-06-18T00:00:00"),
        ("week", "2025-06-18T15:30:00", "2025-06-16T00:00:00"),  # a Wednesday; weeks start Monday
        ("month", "2025-06-18T15:30:00", "2025-06-01T00:00:00"),
    ],
)
def test_budget_periods_are_utc_calendar_periods(period: str, when: str, start: str) -> None:
    utc = dt.timezone.utc
    t = dt.datetime.fromisoformat(when).replace(tzinfo=utc).timestamp()
    assert burst.period_start(t, period) == dt.datetime.fromisoformat(start).replace(tzinfo=utc).timestamp()


# ---- wait or pay ----------------------------------------------------------------------------------


def test_wait_estimate_replays_the_scheduler_over_expected_ends() -> None:
    n = node("prem1", busy=8)
    running = [burst.Running("prem1", tuple(range(4)), 1, 0, NOW + 600),
               burst.Running("prem1", tuple(range(4, 8)), 1, 0, NOW + 2400)]
    ahead = task(1, gpus=4, waited=900)
    me = task(2, gpus=4, waited=60)
    wait, n_ahead = burst.estimate_wait(me, [ahead, me], [n], running, POLICY, NOW, {(1, 0): 3600})
    # job 1 takes the first 4 GPUs to free (at +600); job 2 gets the next 4 (at +2400)
    assert (wait, n_ahead) == (2400, 1)
    never = task(3, gpus=16)
    assert burst.estimate_wait(never, [never], [n], running, POLICY, NOW) == (None, 0)


def test_wait_or_pay_line() -> None:
    t = task(1, gpus=1, gpu_type="L40S")
    o = Offer("aws", "g6e.xlarge", "us-east-2", "us-east-2a", "L40S", 1, 4, 32768, True, 0.92)
    assert burst.wait_or_pay(t, 2400, 3, o, "") == "local: ~40 min behind 3 jobs; cloud: L40S spot in us-east-2 at $0.92/h"
    assert burst.wait_or_pay(replace(t, placement="onprem"), None, 0, o, "") == \
        "local: unknown; cloud: not allowed (placement: onprem)"


def test_cost_split_adds_up_and_keeps_idle_time_apart() -> None:
    held = [Held(1, 0, "alice", 1, 1, NOW, NOW + 1800), Held(2, 0, "bob", 1, 1, NOW + 900, None)]
    charges = split(2.0, NOW, NOW + 3600, 2, 16, held)
    by = {c.user: c.usd for c in charges}
    assert by == pytest.approx({"alice": 0.5, "bob": 0.75, "": 0.75})
    assert sum(by.values()) == pytest.approx(2.0)


def test_a_rank_without_gpus_pays_its_cpus_on_a_gpu_node_and_the_whole_is_never_passed() -> None:
    # It used to pay nothing there: a CPU-only job rented a GPU node past its owner's budget.
    alone = split(8.0, NOW, NOW + 3600, 8, 96, [Held(1, 0, "alice", 0, 24, NOW, None)])
    assert {c.user: c.usd for c in alone} == pytest.approx({"alice": 2.0, "": 6.0})
    # Beside ranks that took every GPU the shares come to 1.25 of the node: all are scaled to 1.
    full = [Held(1, 0, "alice", 0, 24, NOW, None), Held(2, 0, "bob", 8, 8, NOW, None)]
    by = {c.user: c.usd for c in split(8.0, NOW, NOW + 3600, 8, 96, full)}
    assert by == pytest.approx({"alice": 1.6, "bob": 6.4})
    assert {c.user: c.usd for c in hourly_by_job(8.0, 8, 96, full)} == pytest.approx(by)
