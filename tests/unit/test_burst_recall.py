"""Recall (`Limits.recall`, `decide` step 5): a cloud task the on-prem fleet can take now comes
back, after every pending task had its turn; and committed money counted at expected ends
(`Limits.commit_expected`). Pure: `now` is passed in."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from hybridctl.core.burst import CloudNode, Limits, Offer, World, decide
from hybridctl.core.model import ClusterView, GpuSlot, NodeState, NodeView, PendingTask, Policy, Resources, RunningTask

NOW = dt.datetime(2026, 11, 4, 12, tzinfo=dt.timezone.utc).timestamp()  # a Wednesday
A100 = "NVIDIA A100-SXM4-80GB"
OD = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, False, 32.0)
SPOT = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, True, 12.0, 0.06)
ON = Limits(after=0, max_nodes=16, max_hourly_usd=1000, budget_usd=10_000, allow_on_demand=True,
            count_preemption_loss=True, recall=True)
HOUR = 3600.0


def node(name: str, free: int = 8, site: str = "onprem", market: str | None = None) -> NodeView:
    slots = tuple(GpuSlot(i, A100, free=i < free) for i in range(8))
    return NodeView(name, slots, 128, 128 - 16 * (8 - free), 1 << 20, 1 << 20, NodeState.UP, site, market)


def task(job: int, gpus: int = 8, nodes: int = 1, left: float | None = 6 * HOUR, priority: int = 0,
         placement: str = "any", submitted: float = NOW - 7200) -> PendingTask:
    return PendingTask(job, 0, "u", "lab", priority, submitted, Resources(gpus=gpus, gpu_type="A100", cpus=2 * gpus),
                       num_nodes=nodes, placement=placement, runtime_s=left)


def on_cloud(job: int, *nodes: str, started: float = NOW - HOUR) -> tuple[RunningTask, ...]:
    return tuple(RunningTask(job, 0, "u", 0, n, tuple(range(8)), 16, 0, started, started + 8 * HOUR) for n in nodes)


def held(*names: str, offer: Offer = OD) -> list[CloudNode]:
    return [CloudNode(n, offer, NOW - 2 * HOUR, up=True, idle_since=None) for n in names]


def world(onprem: tuple[NodeView, ...], cloud: tuple[str, ...], cloud_tasks: list[PendingTask],
          running: tuple[RunningTask, ...], pending: tuple[PendingTask, ...] = (), **kw: object) -> World:
    views = onprem + tuple(node(n, free=0, site="cloud", market="on-demand") for n in cloud)
    return World(list(pending), ClusterView(views, running=running, now=NOW), held(*cloud), offers=[OD],
                 cloud_tasks=cloud_tasks, **kw)  # type: ignore[arg-type]


def test_a_cloud_task_comes_back_when_on_prem_frees_and_says_what_it_saves() -> None:
    w = world((node("a1"),), ("c1",), [task(7)], on_cloud(7, "c1"),
              checkpoint_every={(7, 0): 600.0}, last_checkpoint={(7, 0): NOW - 300})
    d = decide(w, ON, Policy(), NOW)
    assert [(r.job_id, r.nodes) for r in d.recall] == [(7, ("c1",))]
    assert "on-prem fleet can take it now" in d.recall[0].reason and "$32.00/h" in d.recall[0].reason
    # Off: nothing comes back.
    assert decide(w, replace(ON, recall=False), Policy(), NOW).recall == ()
    # No room on-prem: nothing either.
    assert decide(replace(w, cluster=replace(w.cluster, nodes=(node("a1", free=0),) + w.cluster.nodes[1:])),
                  ON, Policy(), NOW).recall == ()


def test_a_pending_task_keeps_the_room_a_recall_would_take() -> None:
    # One free on-prem node: the pending job (which the scheduler places there) has it, not the recall.
    w = world((node("a1"),), ("c1",), [task(7)], on_cloud(7, "c1"), pending=(task(8, submitted=NOW),),
              checkpoint_every={(7, 0): 600.0}, last_checkpoint={(7, 0): NOW - 300})
    assert decide(w, ON, Policy(), NOW).recall == ()
    # Two free nodes: both fit.
    w = replace(w, cluster=replace(w.cluster, nodes=(node("a1"), node("a2")) + w.cluster.nodes[1:]))
    assert [r.job_id for r in decide(w, ON, Policy(), NOW).recall] == [7]


def test_only_what_is_worth_moving_comes_back() -> None:
    ck = {"checkpoint_every": {(7, 0): 600.0}, "last_checkpoint": {(7, 0): NOW - 300}}
    base = dict(onprem=(node("a1"),), cloud=("c1",), running=on_cloud(7, "c1"))
    # Less than recall_min_s left, or unknown: it stays.
    assert decide(world(cloud_tasks=[task(7, left=0.5 * HOUR)], **base, **ck), ON, Policy(), NOW).recall == ()  # type: ignore[arg-type]
    assert decide(world(cloud_tasks=[task(7, left=None)], **base, **ck), ON, Policy(), NOW).recall == ()  # type: ignore[arg-type]
    # No checkpoints: an hour of work would be thrown away (> 10 % of the 6 h left); just started: fine.
    assert decide(world(cloud_tasks=[task(7)], **base), ON, Policy(), NOW).recall == ()  # type: ignore[arg-type]
    fresh = dict(base, running=on_cloud(7, "c1", started=NOW - 120))
    assert [r.job_id for r in decide(world(cloud_tasks=[task(7)], **fresh), ON, Policy(), NOW).recall] == [7]  # type: ignore[arg-type]
    # Checkpoints every 2 h, the last one 1.5 h ago: too much lost (1.5 h > 0.6 h).
    late = {"checkpoint_every": {(7, 0): 2 * HOUR}, "last_checkpoint": {(7, 0): NOW - 1.5 * HOUR}}
    assert decide(world(cloud_tasks=[task(7)], **base, **late), ON, Policy(), NOW).recall == ()  # type: ignore[arg-type]
    # A `placement: cloud` job never comes back.
    assert decide(world(cloud_tasks=[task(7, placement="cloud")], **base, **ck), ON, Policy(), NOW).recall == ()  # type: ignore[arg-type]


def test_a_node_shared_with_another_task_is_not_given_back_so_nothing_moves() -> None:
    run = (RunningTask(7, 0, "u", 0, "c1", (0, 1, 2, 3), 8, 0, NOW - HOUR, NOW + 8 * HOUR),
           RunningTask(8, 0, "u", 0, "c1", (4, 5, 6, 7), 8, 0, NOW - HOUR, NOW + 8 * HOUR))
    w = world((node("a1"),), ("c1",), [task(7, gpus=4), task(8, gpus=4)], run,
              checkpoint_every={(7, 0): 600.0, (8, 0): 600.0}, last_checkpoint={(7, 0): NOW - 60, (8, 0): NOW - 60})
    assert decide(w, ON, Policy(), NOW).recall == ()


def test_a_gang_comes_back_whole_or_not_at_all_and_the_dearest_first() -> None:
    ck = {"checkpoint_every": {(7, 0): 600.0, (9, 0): 600.0}, "last_checkpoint": {(7, 0): NOW - 60, (9, 0): NOW - 60}}
    gang = on_cloud(7, "c1", "c2")
    w = world((node("a1"),), ("c1", "c2"), [task(7, nodes=2)], gang, **ck)  # type: ignore[arg-type]
    assert decide(w, ON, Policy(), NOW).recall == ()  # one free node for two ranks
    w = replace(w, cluster=replace(w.cluster, nodes=(node("a1"), node("a2")) + w.cluster.nodes[1:]))
    assert [r.nodes for r in decide(w, ON, Policy(), NOW).recall] == [("c1", "c2")]
    # One free on-prem node, two single-node cloud tasks: the one on the dearer node wins.
    run = on_cloud(7, "c1") + on_cloud(9, "s1")
    views = (node("a1"), node("c1", 0, "cloud", "on-demand"), node("s1", 0, "cloud", "spot"))
    w = World([], ClusterView(views, running=run, now=NOW), held("c1") + held("s1", offer=SPOT), offers=[OD],
              cloud_tasks=[task(9), task(7)], **ck)  # type: ignore[arg-type]
    assert [r.job_id for r in decide(w, ON, Policy(), NOW).recall] == [7]


def test_committed_money_counts_time_limits_at_their_expected_share() -> None:
    """Held nodes' work counted at the limits walls a paced budget off while it is unspent: at
    the expected share of the limits (World.limit_use) the same launch goes ahead."""
    paced = Limits(after=0, max_nodes=64, max_hourly_usd=10_000, budget_usd=2_000, budget_period="week",
                   allow_on_demand=True, pace_budget=True, pace_ahead=0.5, deadline_reserve=0.0)
    # Wednesday noon: ~36 % of the week gone, so 86 % ($1,720) may be committed. Ten held nodes
    # at $32/h, each with a job 1 h into an 8 h limit: $2,240 to the limits, $960 at 50 % of them.
    cloud = tuple(f"c{i}" for i in range(10))
    run = tuple(r for i, n in enumerate(cloud) for r in on_cloud(100 + i, n))
    w = world((node("a1", free=0),), cloud, [], run, pending=(task(1, left=HOUR),), limit_use=0.5)
    at_limits = decide(w, replace(paced, commit_expected=False), Policy(), NOW)
    assert at_limits.launches == () and "budget pacing" in at_limits.blocked[0].reason
    expected = decide(w, replace(paced, commit_expected=True), Policy(), NOW)
    assert len(expected.launches) == 1 and expected.blocked == ()
    # Runs that end by an estimate (no limit) are counted as they are: the share is of limits.
    guessed = [replace(task(100 + i), estimated=True) for i in range(10)]
    assert decide(replace(w, cloud_tasks=guessed), replace(paced, commit_expected=True), Policy(), NOW).launches == ()


def test_committed_money_stops_at_the_end_of_the_budget_period() -> None:
    """Two hours before the period ends, a held node's 40 h job commits two hours of money to this
    period, not forty: what falls after the end is the next period's (and so does a launch's)."""
    for period, at in (("week", dt.datetime(2026, 11, 8, 22, tzinfo=dt.timezone.utc)),  # Sunday 22:00
                       ("month", dt.datetime(2026, 11, 30, 22, tzinfo=dt.timezone.utc))):
        now = at.timestamp()
        lim = Limits(after=0, max_nodes=64, max_hourly_usd=10_000, budget_usd=2_000, budget_period=period,
                     allow_on_demand=True, pace_budget=True, deadline_reserve=0.0, commit_expected=False)
        run = (RunningTask(100, 0, "u", 0, "c1", tuple(range(8)), 16, 0, now - 3600, now + 39 * 3600),)
        views = (node("a1", free=0), node("c1", free=0, site="cloud", market="on-demand"))
        job = task(1, left=HOUR, submitted=now - 600)
        w = World([job], ClusterView(views, running=run, now=now), held("c1"), offers=[OD], spent=1_700.0)
        d = decide(w, lim, Policy(), now)
        assert len(d.launches) == 1 and d.blocked == (), (period, d.blocked)
        # The same node with its job ending in 40 h, the period in 6 days: walled.
        early = now - 5 * 86400
        run_early = (replace(run[0], started_at=early - 3600, ends_at=early + 39 * 3600),)
        w = replace(w, cluster=ClusterView(views, running=run_early, now=early),
                    pending=[replace(job, submitted_at=early - 600)])
        d = decide(w, replace(lim, pace_ahead=1.0), Policy(), early)
        assert d.launches == () and "budget" in d.blocked[0].reason, period


def test_recall_assumes_the_work_since_the_start_when_no_checkpoint_was_seen() -> None:
    # Checkpoints every 10 min, none seen since it started 3 h ago: 3 h would be lost (> 10 % of 6 h).
    w = world((node("a1"),), ("c1",), [task(7)], on_cloud(7, "c1", started=NOW - 3 * HOUR),
              checkpoint_every={(7, 0): 600.0})
    assert decide(w, ON, Policy(), NOW).recall == ()
    # A checkpoint stamped in the future (a node's clock ahead) counts as now, not as a gain.
    w = replace(w, last_checkpoint={(7, 0): NOW + 7200})
    assert [r.job_id for r in decide(w, ON, Policy(), NOW).recall] == [7]


def test_the_dearest_node_comes_back_first_whoever_its_user_is() -> None:
    ck = {"checkpoint_every": {(7, 0): 600.0, (9, 0): 600.0}, "last_checkpoint": {(7, 0): NOW - 60, (9, 0): NOW - 60}}
    heavy = RunningTask(7, 0, "heavy", 0, "c1", tuple(range(8)), 16, 0, NOW - HOUR, NOW + 8 * HOUR)
    light = RunningTask(9, 0, "light", 0, "s1", tuple(range(8)), 16, 0, NOW - HOUR, NOW + 8 * HOUR)
    views = (node("a1"), node("c1", 0, "cloud", "on-demand"), node("s1", 0, "cloud", "spot"))
    # The heavy user (more GPU-hours) runs on the dearer on-demand node: it still comes back first.
    cluster = ClusterView(views, running=(heavy, light), now=NOW, usage_by_user={"heavy": 1000.0, "light": 0.0})
    w = World([], cluster, held("c1") + held("s1", offer=SPOT), offers=[OD],
              cloud_tasks=[replace(task(9), user="light"), replace(task(7), user="heavy")], **ck)  # type: ignore[arg-type]
    assert [r.job_id for r in decide(w, ON, Policy(), NOW).recall] == [7]


def test_recall_leaves_room_an_on_prem_only_task_waits_for_and_skips_no_recall() -> None:
    ck = {"checkpoint_every": {(7, 0): 600.0}, "last_checkpoint": {(7, 0): NOW - 60}}
    w = world((node("a1"),), ("c1",), [task(7)], on_cloud(7, "c1"),
              pending=(task(8, placement="onprem", submitted=NOW),), **ck)  # type: ignore[arg-type]
    assert decide(w, ON, Policy(), NOW).recall == ()
    w = world((node("a1"),), ("c1",), [task(7)], on_cloud(7, "c1"), no_recall=frozenset({(7, 0)}), **ck)  # type: ignore[arg-type]
    assert decide(w, ON, Policy(), NOW).recall == ()


def test_a_run_of_unknown_length_is_expected_to_go_on_about_as_long_again() -> None:
    """The wait forecast (forecast.Backlog): a run with no limit and no estimate that has gone on
    for 10 h frees its GPUs in about 10 h, not in half of `default_runtime` on every pass (which
    kept 8-GPU jobs of the PAI trace waiting on-prem 28 h at p95 for a node that never freed)."""
    from hybridctl.core.forecast import Backlog

    busy = (node("a1", free=0),)
    res = Resources(gpus=8, gpu_type="A100")
    young = RunningTask(1, 0, "u", 0, "a1", tuple(range(8)), 16, 0, NOW - 600, None)
    old = replace(young, started_at=NOW - 10 * HOUR)
    assert Backlog(busy, (), NOW, HOUR, (young,)).wait(res, 1) == HOUR / 2
    assert Backlog(busy, (), NOW, HOUR, (old,)).wait(res, 1) == 10 * HOUR
    limited = replace(old, ends_at=NOW + HOUR)  # a limit or an estimate says when: that wins
    assert Backlog(busy, (), NOW, HOUR, (limited,)).wait(res, 1) == HOUR


def test_a_recall_never_makes_a_deadline_late() -> None:
    """Stopping a task to bring it home throws away the work since its last checkpoint and puts it
    back in the queue: a task with a deadline is recalled only if what is left of its run, that
    work again, and `deadline_margin` of both still end before the deadline (the generated week 31
    missed two deadlines of jobs without checkpoints that a recall restarted)."""
    ck = {"checkpoint_every": {(7, 0): 600.0}, "last_checkpoint": {(7, 0): NOW - 300}}
    base = dict(onprem=(node("a1"),), cloud=("c1",), running=on_cloud(7, "c1"), cloud_tasks=[task(7)])
    # 6 h left + 5 min lost, x 1.25: 7.7 h. A deadline in 12 h leaves room; in 7 h it does not.
    far = decide(world(**base, deadlines={(7, 0): NOW + 12 * HOUR}, **ck), ON, Policy(), NOW)  # type: ignore[arg-type]
    assert [r.job_id for r in far.recall] == [7]
    near = decide(world(**base, deadlines={(7, 0): NOW + 7 * HOUR}, **ck), ON, Policy(), NOW)  # type: ignore[arg-type]
    assert near.recall == ()
