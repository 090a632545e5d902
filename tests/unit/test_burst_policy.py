"""The burst policy's pricing of spot reclaims, wait-or-pay, deadlines, budget pacing and
accelerator candidates. Pure: `now` is passed in."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from hybridctl.core import burst
from hybridctl.core.burst import CloudNode, Freeing, Limits, Offer, World, decide, expected_loss_h
from hybridctl.core.model import ClusterView, GpuSlot, NodeState, NodeView, PendingTask, Policy, Resources

NOW = dt.datetime(2026, 11, 4, 12, tzinfo=dt.timezone.utc).timestamp()  # a Wednesday
SPOT = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, True, 12.0, 0.06)
OD = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, False, 32.0)
SMALL = Offer("sim", "a100x1", "r1", "r1a", "A100", 1, 12, 1 << 17, True, 1.3, 0.04)
L40S = Offer("sim", "l40sx8", "r1", "r1b", "L40S", 8, 192, 1 << 20, True, 12.0, 0.04)
NEW = Limits(after=0, max_nodes=16, max_hourly_usd=1000, budget_usd=10_000, allow_on_demand=True,
             count_preemption_loss=True)


def busy(name: str = "a1", model: str = "NVIDIA A100-SXM4-80GB") -> NodeView:
    return NodeView(name, tuple(GpuSlot(i, model, free=False) for i in range(8)), 128, 0, 1 << 20, 0, NodeState.UP)


def task(job: int = 1, gpus: int = 8, gpu_type: str | None = "A100", nodes: int = 1, **res: object) -> PendingTask:
    return PendingTask(job, 0, "u", "lab", 0, NOW - 3600, Resources(gpus=gpus, gpu_type=gpu_type, cpus=2 * gpus, **res),  # type: ignore[arg-type]
                       num_nodes=nodes)


def world(*tasks: PendingTask, offers: tuple[Offer, ...] = (SPOT, OD), **kw: object) -> World:
    return World(list(tasks), ClusterView((busy(),)), offers=list(offers), **kw)  # type: ignore[arg-type]


def test_expected_loss_grows_with_run_time_and_shrinks_with_checkpoints() -> None:
    assert expected_loss_h(1.0, 0.0, 0.0) == 0.0
    short = expected_loss_h(1.0, 0.05, 0.0)
    long = expected_loss_h(10.0, 0.05, 0.0)
    assert 0.02 < short < 0.03  # about rate x T^2 / 2
    assert long / 10.0 > 5 * short  # the fraction lost grows with the run time
    assert expected_loss_h(10.0, 0.05, 0.5) < long / 10  # checkpoints every 30 min: small
    assert expected_loss_h(10.0, 0.2, 0.5) > expected_loss_h(10.0, 0.05, 0.5)  # k nodes: k x the rate


def test_a_long_job_without_checkpoints_goes_on_demand_and_says_why() -> None:
    key = (1, 0)
    d = decide(world(task(), runtime={key: 12 * 3600.0}), NEW, Policy(), NOW)
    assert [r.offer.spot for r in d.launches] == [False]
    assert "on-demand" in d.launches[0].why and "no checkpoints" in d.launches[0].why
    # The same job checkpointing every 20 minutes stays on spot.
    d = decide(world(task(), runtime={key: 12 * 3600.0}, checkpoint_every={key: 1200.0}), NEW, Policy(), NOW)
    assert [r.offer.spot for r in d.launches] == [True] and d.launches[0].why.startswith("spot: expected loss")
    # Asked for spot whatever the risk.
    d = decide(world(task(), runtime={key: 12 * 3600.0}, spot_insist=frozenset({key})), NEW, Policy(), NOW)
    assert [r.offer.spot for r in d.launches] == [True]


def test_a_risky_job_waits_on_prem_when_on_demand_is_off() -> None:
    d = decide(world(task(), runtime={(1, 0): 12 * 3600.0}), replace(NEW, allow_on_demand=False), Policy(), NOW)
    assert d.launches == () and "waits on-prem" in d.blocked[0].reason and "max_spot_loss" in d.blocked[0].reason


def test_multi_node_risk_counts_k_times() -> None:
    key = (1, 0)
    kw = dict(runtime={key: 2 * 3600.0}, checkpoint_every={key: 3600.0})
    one = decide(world(task(), **kw), replace(NEW, max_spot_loss=0.1), Policy(), NOW)  # type: ignore[arg-type]
    four = decide(world(task(nodes=4), **kw), replace(NEW, max_spot_loss=0.1), Policy(), NOW)  # type: ignore[arg-type]
    assert [r.offer.spot for r in one.launches] == [True]
    assert [r.offer.spot for r in four.launches] == [False] * 4
    assert len({r.offer.pool for r in four.launches}) == 1  # one pool, one zone, one region


def test_wait_or_pay_weighs_the_expected_wait_against_the_price() -> None:
    lim = replace(NEW, wait_value_usd=4.0)
    key = (1, 0)
    soon = [Freeing("a1", tuple(range(8)), 16, 0, NOW + 600)]  # the node frees in 10 min
    late = [Freeing("a1", tuple(range(8)), 16, 0, NOW + 20 * 3600)]
    kw = dict(runtime={key: 4 * 3600.0}, checkpoint_every={key: 600.0})
    d = decide(world(task(), freeing=soon, **kw), lim, Policy(), NOW)  # type: ignore[arg-type]
    assert d.launches == () and any("wait on-prem" in n for n in d.notes)
    d = decide(world(task(), freeing=late, **kw), lim, Policy(), NOW)  # type: ignore[arg-type]
    assert len(d.launches) == 1
    # `after` stays a minimum.
    d = decide(world(task(), freeing=late, **kw), replace(lim, after=7200), Policy(), NOW)  # type: ignore[arg-type]
    assert d.launches == ()


def test_deadline_spot_while_slack_then_on_demand() -> None:
    key = (1, 0)
    lim = replace(NEW, wait_value_usd=4.0)
    late = [Freeing("a1", tuple(range(8)), 16, 0, NOW + 20 * 3600)]
    kw = dict(runtime={key: 2 * 3600.0}, checkpoint_every={key: 600.0}, freeing=late)
    roomy = decide(world(task(), deadlines={key: NOW + 10 * 3600}, **kw), lim, Policy(), NOW)  # type: ignore[arg-type]
    tight = decide(world(task(), deadlines={key: NOW + 2.2 * 3600}, **kw), lim, Policy(), NOW)  # type: ignore[arg-type]
    assert [r.offer.spot for r in roomy.launches] == [True]
    assert [r.offer.spot for r in tight.launches] == [False] and "deadline" in tight.launches[0].why
    # Enough slack to wait for the on-prem node: no rent.
    soon = [Freeing("a1", tuple(range(8)), 16, 0, NOW + 600)]
    d = decide(world(task(), deadlines={key: NOW + 10 * 3600}, **{**kw, "freeing": soon}), lim, Policy(), NOW)  # type: ignore[arg-type]
    assert d.launches == ()


def test_a_deadline_narrows_the_wait_and_never_widens_it() -> None:
    """A job with a deadline waits on-prem only while waiting is both worth less than renting
    (as anyone's) and within its slack: a far deadline is no reason to wait hours."""
    key = (1, 0)
    lim = replace(NEW, wait_value_usd=4.0)
    late = [Freeing("a1", tuple(range(8)), 16, 0, NOW + 6 * 3600)]  # the node frees in 6 h
    kw = dict(runtime={key: 2 * 3600.0}, checkpoint_every={key: 600.0}, freeing=late)
    # 6 h x 8 GPUs x $4 = $192 of waiting against ~$24 of spot: it rents, deadline or not.
    for deadlines in ({}, {key: NOW + 30 * 3600}):
        d = decide(world(task(), deadlines=deadlines, **kw), lim, Policy(), NOW)  # type: ignore[arg-type]
        assert [r.offer.spot for r in d.launches] == [True], deadlines
    # Waiting 10 minutes is worth less than the rent: it waits, deadline or not.
    soon = [Freeing("a1", tuple(range(8)), 16, 0, NOW + 600)]
    for deadlines in ({}, {key: NOW + 30 * 3600}):
        d = decide(world(task(), deadlines=deadlines, **{**kw, "freeing": soon}), lim, Policy(), NOW)  # type: ignore[arg-type]
        assert d.launches == (), deadlines
    # Without a wait value the slack alone decides, as before.
    d = decide(world(task(), deadlines={key: NOW + 30 * 3600}, **kw), replace(lim, wait_value_usd=0.0), Policy(), NOW)  # type: ignore[arg-type]
    assert d.launches == ()


def test_a_deadline_job_with_slack_is_paced_and_takes_the_reserve_only_when_pressed() -> None:
    lim = replace(NEW, budget_usd=7000.0, budget_period="week", pace_budget=True, pace_ahead=0.0,
                  deadline_reserve=0.2, wait_value_usd=4.0)
    key = (1, 0)
    late = [Freeing("a1", tuple(range(8)), 16, 0, NOW + 20 * 3600)]
    kw = dict(runtime={key: 3600.0}, checkpoint_every={key: 600.0}, freeing=late, spent=2175.0)
    # $2179 allowed by now (see below): a deadline two days out can wait for the pace.
    d = decide(world(task(), deadlines={key: NOW + 48 * 3600}, **kw), lim, Policy(), NOW)  # type: ignore[arg-type]
    assert d.launches == () and "budget pacing" in d.blocked[0].reason and "kept for deadlines" in d.blocked[0].reason
    # A deadline the on-prem wait would miss spends the reserve.
    d = decide(world(task(), deadlines={key: NOW + 3 * 3600}, **kw), lim, Policy(), NOW)  # type: ignore[arg-type]
    assert len(d.launches) == 1


def test_budget_is_paced_over_the_period_and_deadlines_keep_a_reserve() -> None:
    lim = replace(NEW, budget_usd=7000.0, budget_period="week", pace_budget=True, pace_ahead=0.0,
                  deadline_reserve=0.2)
    key = (1, 0)
    late = [Freeing("a1", tuple(range(8)), 16, 0, NOW + 20 * 3600)]
    kw = dict(runtime={key: 3600.0}, checkpoint_every={key: 600.0}, freeing=late)
    # Wednesday noon: 2.5 of 7 days gone, so 0.2 x 4.5/7 = 12.9 % is still kept for deadlines
    # -> 0.357 x 0.871 x $7000 = $2179 allowed so far.
    d = decide(world(task(), spent=2175.0, **kw), lim, Policy(), NOW)  # type: ignore[arg-type]
    assert d.launches == () and "budget pacing" in d.blocked[0].reason and "(13% kept for deadlines)" in d.blocked[0].reason
    d = decide(world(task(), spent=2175.0, deadlines={key: NOW + 3 * 3600}, **kw), lim, Policy(), NOW)  # type: ignore[arg-type]
    assert len(d.launches) == 1
    d = decide(world(task(), spent=1000.0, **kw), lim, Policy(), NOW)  # type: ignore[arg-type]
    assert len(d.launches) == 1


def test_the_deadline_reserve_shrinks_as_the_period_runs_out() -> None:
    """What is kept for deadlines is `deadline_reserve` of the budget as the period starts and
    shrinks with what is left of it: on Sunday noon, jobs without a deadline may spend past 80 %."""
    lim = replace(NEW, budget_usd=7000.0, budget_period="week", pace_budget=True, pace_ahead=0.5,
                  deadline_reserve=0.2)
    key = (1, 0)
    kw = dict(runtime={key: 3600.0}, checkpoint_every={key: 600.0},
              freeing=[Freeing("a1", tuple(range(8)), 16, 0, NOW + 200 * 3600)])
    sunday = NOW + 4 * 86400  # 6.5 of 7 days gone: 0.2 x 0.5/7 = 1.4 % kept, $6900 allowed
    d = decide(world(task(), spent=6500.0, **kw), lim, Policy(), sunday)  # type: ignore[arg-type]
    assert len(d.launches) == 1
    d = decide(world(task(), spent=6890.0, **kw), lim, Policy(), sunday)  # type: ignore[arg-type]
    assert d.launches == () and "(1% kept for deadlines)" in d.blocked[0].reason
    # On Monday morning the whole reserve is kept again: $5600 of the new week's $7000 at most.
    monday = NOW + 5 * 86400 - 12 * 3600 + 60
    d = decide(world(task(), spent=5599.0, **kw), replace(lim, pace_ahead=1.0), Policy(), monday)  # type: ignore[arg-type]
    assert d.launches == () and "(20% kept for deadlines)" in d.blocked[0].reason


def test_paced_budget_never_gives_back_busy_nodes() -> None:
    lim = replace(NEW, budget_usd=100.0, pace_budget=True)
    nodes = [CloudNode("c1", SPOT, NOW - 7200, up=True, idle_since=None),
             CloudNode("c2", SPOT, NOW - 7200, up=True, idle_since=NOW - 60)]
    w = World([], ClusterView((busy(),)), nodes, [SPOT], spent=99.9)
    d = decide(w, lim, Policy(), NOW)
    assert [s.node for s in d.scale_down] == ["c2"] and d.scale_down[0].reason.startswith("budget:")
    d = decide(w, replace(lim, pace_budget=False), Policy(), NOW)
    assert sorted(s.node for s in d.scale_down) == ["c1", "c2"]  # the old rule: everything back


def test_small_jobs_rent_small_shapes_and_candidates_pick_the_cheapest() -> None:
    hour = {(1, 0): 3600.0}  # an hour-long job: spot is safe enough, the shape is the question
    d = decide(world(task(gpus=1), offers=(SPOT, SMALL), runtime=hour), NEW, Policy(), NOW)
    assert [r.offer.instance_type for r in d.launches] == ["a100x1"]
    # Any of A100:8 or L40S:8: the cheaper candidate wins and the request says which.
    t = task(gpus=8, alternatives=(("A100", 8), ("L40S", 8)))
    d = decide(world(t, offers=(replace(SPOT, price_hourly=20.0), L40S), runtime=hour), NEW, Policy(), NOW)
    assert [r.offer.gpu_type for r in d.launches] == ["L40S"] and d.launches[0].resources.gpu_type == "L40S"  # type: ignore[union-attr]
    # An ordered list: the first candidate with an offer, even when dearer.
    t = task(gpus=8, alternatives=(("A100", 8), ("L40S", 8)), ordered=True)
    d = decide(world(t, offers=(replace(SPOT, price_hourly=20.0), L40S), runtime=hour), NEW, Policy(), NOW)
    assert [r.offer.gpu_type for r in d.launches] == ["A100"]


def test_offer_round_trips_its_reclaim_rate() -> None:
    assert Offer.from_dict(SPOT.to_dict()) == SPOT
    assert "reclaim_per_h" not in OD.to_dict() and Offer.from_dict(OD.to_dict()) == OD


def test_fits_agrees_with_the_scheduler_rule() -> None:
    assert burst.fits(SPOT, Resources(gpus=8, gpu_type="A100"))
    assert not burst.fits(SPOT, Resources(gpus=8, gpu_type="A10"))
    assert not burst.fits(SMALL, Resources(gpus=2))
    assert not burst.fits(SMALL, Resources(gpus=1, memory_mb=1 << 20))


@pytest.mark.parametrize("period,length_days", [("day", 1), ("week", 7), ("month", 30)])
def test_period_lengths(period: str, length_days: int) -> None:
    start = burst.period_start(NOW, period)
    assert burst._period_len(start, period) == length_days * 86400


def test_spot_scarce_for_a_shape_goes_on_demand_instead_of_walking_every_pool() -> None:
    pools = [replace(SPOT, zone=f"r1{z}") for z in "abcd"]
    key = (1, 0)
    kw = dict(runtime={key: 3600.0}, checkpoint_every={key: 600.0})
    backoff = {pools[0].pool: NOW + 300, pools[1].pool: NOW + 300}  # two of four refused lately
    d = decide(world(task(), offers=(*pools, OD), backoff=backoff, **kw), NEW, Policy(), NOW)  # type: ignore[arg-type]
    assert [r.offer.spot for r in d.launches] == [False]
    d = decide(world(task(), offers=(*pools, OD), backoff=dict(list(backoff.items())[:1]), **kw),  # type: ignore[arg-type]
               NEW, Policy(), NOW)
    assert [r.offer.spot for r in d.launches] == [True]


def test_the_runtime_comes_from_the_task_when_the_world_has_none() -> None:
    t = replace(task(), runtime_s=12 * 3600.0)
    d = decide(world(t), NEW, Policy(), NOW)
    assert [r.offer.spot for r in d.launches] == [False]  # 12 h without checkpoints: on-demand


def test_a_paced_budget_running_out_drains_busy_nodes_without_killing_them() -> None:
    lim = replace(NEW, budget_usd=100.0, pace_budget=True)
    busy_node = CloudNode("c1", SPOT, NOW - 7200, up=True, idle_since=None)
    d = decide(World([task()], ClusterView((busy(),)), [busy_node], [SPOT, OD], spent=90.0), lim, Policy(), NOW)
    assert [s.node for s in d.drain] == ["c1"] and d.scale_down == () and d.launches == ()
    assert "given back when its jobs end" in d.drain[0].reason


def test_expected_end_puts_a_time_limited_run_at_its_median_share_of_the_limit() -> None:
    from hybridctl.core.forecast import expected_end

    start, end = NOW - 3600, NOW - 3600 + 10 * 3600  # started 1 h ago, 10 h limit
    assert expected_end(start, end, 1.0, NOW) == end
    assert expected_end(start, end, 0.2, NOW) == start + 2 * 3600
    # Outlived its expected end: halfway from now to its limit, never before now.
    assert expected_end(start, end, 0.05, NOW) == (NOW + end) / 2
    assert expected_end(start, NOW - 60, 0.5, NOW) == NOW


def _limited_run(use: float, reserve: bool) -> World:
    """The only on-prem node runs an 8-GPU job started 1 h ago with a 10 h limit; runs of that
    kind use `use` of their limit. `reserve`: the scheduler sees the run too (reservation start)."""
    from hybridctl.core.model import RunningTask

    key = (1, 0)
    free = [Freeing("a1", tuple(range(8)), 16, 0, NOW + 9 * 3600, start=NOW - 3600)]
    run = (RunningTask(9, 0, "v", 0, "a1", tuple(range(8)), 16, 0, NOW - 3600, NOW + 9 * 3600),)
    cluster = ClusterView((busy(),), running=run if reserve else ())
    return World([task()], cluster, offers=[SPOT, OD], freeing=free, runtime={key: 2 * 3600.0},
                 checkpoint_every={key: 600.0}, limit_use=use)


@pytest.mark.parametrize("reserve", [False, True])
def test_limit_use_puts_limited_runs_at_their_expected_end_in_wait_or_pay(reserve: bool) -> None:
    lim = replace(NEW, wait_value_usd=2.0, limit_use_forecast=True)
    # At its limit the node frees in 9 h: waiting (9 h x 8 GPUs x $2) costs more than spot does.
    assert len(decide(_limited_run(1.0, reserve), lim, Policy(), NOW).launches) == 1
    # Such runs use a fifth of their limit: it frees in 1 h, and the task waits for it.
    d = decide(_limited_run(0.2, reserve), lim, Policy(), NOW)
    assert d.launches == () and any("wait on-prem" in n for n in d.notes)
    # Off (the default): runs are put at their limit whatever the world says.
    off = replace(lim, limit_use_forecast=False)
    assert len(decide(_limited_run(0.2, reserve), off, Policy(), NOW).launches) == 1


SAFE = Offer("sim", "a100x8", "r2", "r2c", "A100", 8, 96, 1 << 20, True, 14.0, 0.005)


def test_a_job_that_would_lose_much_goes_to_the_spot_pool_with_the_lowest_stated_rate() -> None:
    from hybridctl.core.offers import Market

    key = (1, 0)
    res = task().resources
    market = Market([SPOT, SAFE, OD], {}, NOW)
    spot, _od, _ = market.fitting(res)
    assert market.safest(res, spot) == SAFE
    assert market.safest(res, [SPOT]) == SPOT
    assert market.safest(res, []) is None
    # 12 h without checkpoints: at the cheapest pool's 0.06/h it would lose too much (on-demand
    # before), at the safest pool's 0.005/h about 3 %, for less than on-demand.
    d = decide(world(task(), offers=(SPOT, SAFE, OD), runtime={key: 12 * 3600.0}), NEW, Policy(), NOW)
    assert [r.offer for r in d.launches] == [SAFE] and d.launches[0].why.startswith("spot: expected loss")
    assert key not in d.no_spot
    # Without a safe pool it still goes on-demand.
    d = decide(world(task(), offers=(SPOT, OD), runtime={key: 12 * 3600.0}), NEW, Policy(), NOW)
    assert [r.offer.spot for r in d.launches] == [False] and key in d.no_spot


def test_a_bending_pace_raises_the_bar_for_non_deadline_launches_as_spend_runs_ahead() -> None:
    """Wednesday noon of a $7000 week (pace_ahead 0.5, 12.9 % still kept for deadlines): on pace
    is $2179 committed, the hard cap $5229. Between them a launch must save waiting worth 1/(1 - x) times
    its price, x the share of that band used; the hard cap still refuses at the top."""
    key = (1, 0)
    late = [Freeing("a1", tuple(range(8)), 16, 0, NOW + 20 * 3600)]
    kw = dict(runtime={key: 3600.0}, checkpoint_every={key: 600.0}, freeing=late)
    lim = replace(NEW, budget_usd=7000.0, budget_period="week", pace_budget=True, pace_ahead=0.5,
                  deadline_reserve=0.2, wait_value_usd=0.15)  # 20 h x 8 GPUs: waiting costs $24, ~2x spot's $12
    bend = replace(lim, pace_bend=True)
    assert len(decide(world(task(), spent=4000.0, **kw), lim, Policy(), NOW).launches) == 1  # the hard wall only
    d = decide(world(task(), spent=4000.0, **kw), bend, Policy(), NOW)  # x ~ 0.6: the bar is ~2.5x
    assert d.launches == () and any("budget pacing" in n for n in d.notes)
    assert len(decide(world(task(), spent=1900.0, **kw), bend, Policy(), NOW).launches) == 1  # on pace: no bar
    dear_wait = replace(bend, wait_value_usd=0.75)  # waiting costs ~10x the price: still worth it
    assert len(decide(world(task(), spent=4000.0, **kw), dear_wait, Policy(), NOW).launches) == 1
    # A deadline the wait would miss is never held back by the bar.
    d = decide(world(task(), spent=4000.0, deadlines={key: NOW + 2 * 3600}, **kw), bend, Policy(), NOW)  # type: ignore[arg-type]
    assert len(d.launches) == 1


def test_what_starts_now_is_what_the_scheduler_starts_at_the_limits() -> None:
    """Runs put at their expected ends move reservation starts earlier; the pass must not take a
    task the scheduler backfills now (it holds to the limits) for one that cannot start and rent
    for it. Half the node runs 1 h into a 10 h limit; the 8-GPU job A is reserved for when it
    ends, and the 4-GPU, 3 h job B starts beside it now (at the limit A's start is 9 h away)."""
    from hybridctl.core.model import RunningTask

    half = NodeView("a1", tuple(GpuSlot(i, "NVIDIA A100-SXM4-80GB", free=i >= 4) for i in range(8)), 128, 64,
                    1 << 20, 1 << 19, NodeState.UP)
    run = (RunningTask(9, 0, "v", 0, "a1", (0, 1, 2, 3), 8, 0, NOW - 3600, NOW + 9 * 3600),)
    free = [Freeing("a1", (0, 1, 2, 3), 8, 0, NOW + 9 * 3600, start=NOW - 3600)]
    a = replace(task(1), priority=10)
    b = replace(task(2, gpus=4), runtime_s=3 * 3600.0)
    w = World([a, b], ClusterView((half,), running=run, now=NOW), offers=[SPOT, OD, SMALL], freeing=free,
              runtime={(1, 0): 3600.0, (2, 0): 3 * 3600.0}, checkpoint_every={(1, 0): 600.0, (2, 0): 600.0},
              limit_use=0.2)
    d = decide(w, replace(NEW, wait_value_usd=2.0, limit_use_forecast=True), Policy(), NOW)
    assert all((2, 0) not in r.tasks for r in d.launches)
    assert not any("wait on-prem" in n for n in d.notes)  # B is not a candidate at all: it starts now


def test_a_job_of_unknown_length_that_never_checkpoints_is_not_sent_to_spot() -> None:
    """No limit, no history: its cost is guessed at `default_runtime_s` (1 h), but a reclaim is
    priced at `unknown_risk_s` (a day), since it may run for days and lose all of it."""
    day = replace(NEW, unknown_risk_s=86400.0)  # off by default (bench/RESULTS.md, session 8)
    d = decide(world(task()), day, Policy(), NOW)
    assert [r.offer.spot for r in d.launches] == [False] and "no checkpoints" in d.launches[0].why
    # Checkpointing, it loses at most an interval per reclaim: spot.
    d = decide(world(task(), checkpoint_every={(1, 0): 600.0}), day, Policy(), NOW)
    assert [r.offer.spot for r in d.launches] == [True]
    # Known to take an hour, or with the shipped pricing: spot.
    assert [r.offer.spot for r in decide(world(task(), runtime={(1, 0): 3600.0}), day, Policy(), NOW).launches] == [True]
    assert [r.offer.spot for r in decide(world(task()), NEW, Policy(), NOW).launches] == [True]


def test_an_attempt_that_ran_long_teaches_how_long_the_job_runs() -> None:
    """No limit, no history: the first attempt is priced at `default_runtime_s` and goes to spot.
    Reclaimed after 10 h without a checkpoint, it is expected to run `lindy` x 10 h: a reclaim
    would now throw away far more than the discount saves, so it runs on-demand. A time limit is a
    hard end and stays what it is priced at."""
    key = (1, 0)
    assert [r.offer.spot for r in decide(world(task()), NEW, Policy(), NOW).launches] == [True]
    ran = {key: 10 * 3600.0}
    d = decide(world(task(), ran=ran), NEW, Policy(), NOW)
    assert [r.offer.spot for r in d.launches] == [False] and "no checkpoints" in d.launches[0].why
    assert "20.0 h: an earlier attempt ran 10.0 h without finishing" in d.launches[0].why  # 2 x 10 h
    # The attempts teach nothing with lindy off, nor where a time limit says how long it runs.
    assert [r.offer.spot for r in decide(world(task(), ran=ran), replace(NEW, lindy=0.0), Policy(), NOW).launches] == [True]
    limited = replace(task(), runtime_s=1800.0)
    assert [r.offer.spot for r in decide(world(limited, ran=ran), NEW, Policy(), NOW).launches] == [True]
    # A history estimate below what it already ran is overruled.
    guessed = replace(task(), runtime_s=1800.0, estimated=True)
    assert [r.offer.spot for r in decide(world(guessed, ran=ran), NEW, Policy(), NOW).launches] == [False]
