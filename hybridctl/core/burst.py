"""The burst policy: when to rent cloud nodes, which offers, and when to give them back.

Pure: (pending tasks, the cluster as the scheduler sees it, the cloud nodes held, offers with
prices and back-offs, spend, limits, now) -> `BurstDecision`. Whether a task fits on-prem, on a
cloud node that is starting, or on a node about to be rented is asked of `schedule.plan` itself,
so this policy and the controller's scheduler never disagree about what fits where.

Offers and prices live in core/offers.py, the on-prem wait forecast in core/forecast.py; their
public names are re-exported here (`from hybridctl.core.burst import Offer` keeps working).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Mapping, Sequence

from hybridctl.core.allowance import CloudGate, NodePrice, Owner, Purses, share
from hybridctl.core.fairshare import priority_key
from hybridctl.core.fit import candidates, gpu_type_matches, never_fits
from hybridctl.core.forecast import Backlog, Freeing, Running, TaskKey, estimate_wait, expected_end, wait_or_pay
from hybridctl.core.model import (
    ClusterView,
    GpuSlot,
    NodeState,
    NodeView,
    PendingTask,
    Placement,
    Policy,
    Resources,
    RunningTask,
    task_label,
)
from hybridctl.core.offers import Choice, Market, Offer, cheapest, expected_loss_h, fits, fmt_duration
from hybridctl.core.schedule import plan

__all__ = [
    "PERIODS", "Blocked", "BurstDecision", "CloudNode", "Freeing", "LaunchRequest", "Limits", "Offer", "Recall",
    "Running", "ScaleDown", "TaskKey", "World", "cheapest", "decide", "estimate_wait", "expected_loss_h", "fits",
    "fmt_duration", "label", "period_start", "spot_averse", "wait_or_pay",
]

PERIODS = ("day", "week", "month")


@dataclass(frozen=True)
class CloudNode:
    """A cloud node the controller holds, from launch until it is terminated."""

    name: str
    offer: Offer
    """What was rented; `price_hourly` is what it costs now."""
    launched_at: float
    up: bool = False
    """Joined the fleet. Until then the node counts as the offer's empty shape."""
    idle_since: float | None = None
    """Since when it holds no allocation; None while busy (or not up yet)."""
    draining: bool = False
    """Being given back (idle, preempted, budget): counts against limits, takes no work."""


@dataclass(frozen=True)
class Limits:
    """The burst policy's knobs (config `cloud.burst`)."""

    after: float = 120.0
    """A task that fits nowhere on-prem bursts once it has waited this long (s)."""
    idle_timeout: float = 600.0
    """A cloud node idle this long is drained and terminated (s)."""
    allow_on_demand: bool = False
    """Fall back to on-demand offers when spot is refused (or the job asks for on-demand)."""
    max_nodes: int = 4
    max_hourly_usd: float = 20.0
    budget_usd: float = 200.0
    budget_period: str = "month"
    """'day', 'week' (from Monday) or 'month', in UTC."""
    spread_penalty: float = 0.15
    """Each node already in a pool makes that pool look this much dearer, so several nodes spread
    over pools of similar price instead of piling into one."""
    count_freeing_within: float = 0.0
    """On-prem allocations whose time limit ends within this many seconds count as free when
    deciding saturation (0 = only what is free now)."""
    budget_reserve_h: float = 1.0
    """A launch must leave room in the budget for this many hours of the whole cloud fleet."""
    stop_margin_s: float = 60.0
    """When spend plus this long at the current burn would pass the budget, every cloud node is
    given back (with `pace_budget`: only the idle ones; running work is never killed)."""
    wait_value_usd: float = 0.0
    """What one GPU-hour of waiting costs the lab ($). A task bursts when its expected on-prem
    wait x its GPUs x this exceeds what the cloud would cost it; 0 = the `after` timer alone
    decides (`after` stays a minimum either way)."""
    count_preemption_loss: bool = False
    """Price in the work a spot reclaim throws away (from the task's checkpoint interval, its
    run time, its node count and the pool's reclaim rate): a task whose expected loss costs more
    than the spot discount saves, or passes `max_spot_loss`, runs on-demand (or waits)."""
    max_spot_loss: float = 0.05
    """With `count_preemption_loss`: the largest expected fraction of a task's run time that spot
    reclaims may throw away."""
    reclaim_per_h: float = 0.05
    """Spot reclaims per node-hour assumed for offers that do not state their own."""
    restart_overhead_s: float = 300.0
    """Time a restart costs besides the lost work (a new node boots, the job sets up again)."""
    default_runtime_s: float = 3600.0
    """Run time assumed for a task without a time limit or estimate (`World.runtime`)."""
    lindy: float = 2.0
    """A task without a time limit whose earlier attempt ran X seconds and was stopped before it
    finished (reclaimed, recalled, preempted: `World.ran`) is expected to run `lindy` x X, where
    its estimate (or `default_runtime_s`) says less: a run tends to go on about as long as it has
    gone already (the Lindy rule). Its reclaim risk, its cloud price and its place in the on-prem
    wait forecast follow. 0 = attempts teach nothing."""
    learn_unknown: bool = True
    """Price a spot reclaim of a task of unknown length (no limit, no estimate, no earlier attempt)
    as that of a run drawn from the lab's recent runs without a limit (`World.run_lengths`),
    weighted by their length: where the lab's limitless runs are long and never checkpoint, such
    a task is kept off spot; where they are short, it goes. Without enough of them (`forecast.
    RUN_LENGTHS_AFTER`), `unknown_risk_s` decides."""
    unknown_risk_s: float = 0.0
    """The run time a spot reclaim is priced at for such a task (the share of its work a reclaim
    throws away grows with the run: one that may run for days and never checkpoints must not look
    safe because its cost is guessed at `default_runtime_s`). 0 = `default_runtime_s`. Off by
    default: at a day it cut the hard week's loss from 6.9 % to 1.7 % and PAI's limitless pods'
    from 68-75 % to 0, but it also sends every short first job without a limit to on-demand
    (bench/RESULTS.md, session 8); learning a job's length from its reclaimed attempts comes first."""
    pace_budget: bool = False
    """Spread the budget over its period: by a fraction f of the period, at most
    (f + `pace_ahead`) of the budget is committed, less `deadline_reserve` kept for tasks with a
    deadline; budgets are never enforced by killing running work."""
    pace_ahead: float = 0.5
    deadline_reserve: float = 0.2
    pace_bend: bool = False
    """With `pace_budget` and `wait_value_usd`: between the on-pace line (a fraction f of the period
    gone, f of the budget committed, less the deadline reserve) and the hard cap (f + `pace_ahead`),
    a non-deadline launch must save waiting worth 1/(1 - x) times its price, x the share of that
    band committed; the cap still refuses at the top. False: every launch is allowed up to the cap."""
    commit_expected: bool = True
    """With `pace_budget`: what the held cloud nodes will still cost is counted to their tasks'
    expected ends (`World.limit_use` of a time limit, as `forecast.expected_end`), not to the
    limits themselves. Limits are upper bounds (the generated weeks: 1.2-3x the run); counted at
    the limits, committed money walled the budget off while it was still unspent."""
    limit_use_forecast: bool = False
    """Put time-limited on-prem runs at their expected end (`World.limit_use`) in the wait forecast
    and the pass's reservation starts, not at their limit. Off: on the generated hard week 23 it
    pushed the budget into its pacing wall in every market draw (bench/RESULTS.md, p17b)."""
    pace_bend_from: float = 0.0
    """Where in that band the bar starts to rise (0 = at the on-pace line, 0.5 = halfway to the cap)."""
    deadline_margin: float = 0.25
    """A task with a deadline may use spot (or wait on-prem) only while its slack exceeds this
    fraction of its run time plus the expected spot loss and a boot."""
    boot_s: float = 300.0
    """Launch until a cloud node takes work (provider boot plus bootstrap)."""
    recall: bool = False
    """Bring a cloud task back on-prem when the fleet can take it now (`decide` step 5): it is
    stopped as at a reclaim notice (SIGTERM, the grace, the final checkpoint) and requeued, and
    its cloud nodes go back once idle."""
    recall_min_s: float = 3600.0
    """Only a task with at least this much of its run left (its limit or estimate) is recalled."""
    recall_max_loss: float = 0.1
    """Only a task whose stop now throws away at most this fraction of what it has left (the work
    since its last checkpoint, else since its start) is recalled."""
    user_budget_usd: Mapping[str, float] = field(default_factory=dict)
    """Cloud $ each user may spend per budget period beside the lab's `budget_usd` ('*': everyone
    not named; missing: no budget of their own). Spent this period, plus what their running cloud
    tasks will still cost (whole, `_owner_run_s`), plus the launch, may not pass it
    (core/allowance.py); their share of a node is their GPUs over its GPUs. Running work is never
    stopped for it."""
    group_budget_usd: Mapping[str, float] = field(default_factory=dict)
    """The same per Unix group (the job's group at submit)."""


@dataclass(frozen=True)
class World:
    """What one burst decision reads."""

    pending: Sequence[PendingTask]
    cluster: ClusterView
    """Every node (on-prem and cloud) as the scheduler sees it, with its quota and usage maps."""
    cloud: Sequence[CloudNode] = ()
    offers: Sequence[Offer] = ()
    pending_since: Mapping[TaskKey, float] = field(default_factory=dict)
    """When each task last became PENDING; missing = its job's submit time."""
    backoff: Mapping[str, float] = field(default_factory=dict)
    """Pool -> time until which it is not asked again (after a capacity error)."""
    spent: float = 0.0
    """US dollars spent on cloud nodes in the current budget period."""
    freeing: Sequence[Freeing] = ()
    runtime: Mapping[TaskKey, float] = field(default_factory=dict)
    """Expected seconds of work left per task (time limit or estimate); missing =
    `Limits.default_runtime_s`."""
    checkpoint_every: Mapping[TaskKey, float] = field(default_factory=dict)
    """Seconds between a task's checkpoints (declared or observed); missing or 0 = it never
    checkpoints, so a reclaim restarts it from the beginning."""
    deadlines: Mapping[TaskKey, float] = field(default_factory=dict)
    """Seconds since the epoch by which a task must have finished: pending tasks', and those of
    `cloud_tasks` (a recall must not make them late)."""
    spot_insist: frozenset[TaskKey] = frozenset()
    """Tasks whose job asks for spot whatever the expected loss."""
    transfer_s: Mapping[TaskKey, float] = field(default_factory=dict)
    """Seconds a fresh cloud node would spend receiving a task's environment and data before it
    could start (control/scheduler.transfer_estimate); missing = nothing to move."""
    limit_use: float = 1.0
    """The share of its time limit a time-limited run is expected to use (the median over finished
    runs, once there are enough): with `Limits.limit_use_forecast`, the wait forecast and the
    reservation starts of the pass put each on-prem allocation in `freeing` (with its start) at
    that share of its limit, not at the limit itself. 1.0 = at the limit."""
    cloud_features: frozenset[str] = frozenset()
    """What a rented node would offer jobs (cloud.runtimes: podman): a task that requires more
    (PendingTask.requires) fits no node that could be rented, so none is rented for it."""
    cloud_tasks: Sequence[PendingTask] = ()
    """Tasks running on cloud nodes, as `plan` would place them again (resources, num_nodes,
    placement, priority; `runtime_s` = what is left of their limit or estimate from now, None =
    unknown): what `Limits.recall` may bring back on-prem. Their checkpoint intervals are in
    `checkpoint_every`."""
    last_checkpoint: Mapping[TaskKey, float] = field(default_factory=dict)
    """When each of `cloud_tasks` last wrote a checkpoint (the controller's copy), where known."""
    no_recall: frozenset[TaskKey] = frozenset()
    """Cloud tasks never to recall: recalled once already (no ping-pong), or too close to their
    recovery cap."""
    run_lengths: Sequence[float] = ()
    """Run times (s) of the lab's recent runs without a time limit that finished by themselves, as
    `forecast.length_sample` boils them down (at most ~40 order statistics; empty until there are
    `forecast.RUN_LENGTHS_AFTER`): what `Limits.learn_unknown` prices a task of unknown length at."""
    ran: Mapping[TaskKey, float] = field(default_factory=dict)
    """Per pending task, the longest run one of its earlier attempts made before it was stopped
    without finishing (seconds); missing = none ran. Read with `Limits.lindy`."""
    owner_spent: Mapping[Owner, float] = field(default_factory=dict)
    """$ spent on cloud nodes in the current budget period per ('user', name) and ('group', name):
    their share of each node they held. Read with `Limits.user_budget_usd`/`group_budget_usd`."""
    gang_backoff: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    """Pool -> (until, k): it refused a gang of k nodes; until then it is not asked for k nodes or
    more at once (one node still is)."""


@dataclass(frozen=True)
class LaunchRequest:
    """Rent one node of `offer` for these tasks (a gang of N nodes is N requests, one `group`)."""

    offer: Offer
    tasks: tuple[TaskKey, ...]
    group: int = 0
    resources: Resources | None = None
    """The accelerator candidate the node is rented for (None: the task's own resources)."""
    why: str = ""
    """Why this market: 'spot: expected loss 1.2% of 3.0 h', 'on-demand: deadline in 2.0 h'."""


@dataclass(frozen=True)
class ScaleDown:
    """Drain and terminate `node`."""

    node: str
    reason: str


@dataclass(frozen=True)
class Blocked:
    """Task (job_id, task) fits nowhere and may burst, but a limit or the market says no."""

    job_id: int
    task: int
    reason: str


@dataclass(frozen=True)
class Recall:
    """Stop cloud task (job_id, task) and requeue it: the on-prem fleet can take it now."""

    job_id: int
    task: int
    nodes: tuple[str, ...]
    """The cloud nodes it holds (given back once idle)."""
    reason: str


@dataclass(frozen=True)
class BurstDecision:
    """The outcome of one burst pass."""

    launches: tuple[LaunchRequest, ...] = ()
    scale_down: tuple[ScaleDown, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    covered: Mapping[TaskKey, str] = field(default_factory=dict)
    """Tasks that will fit on a cloud node already held (up or starting): task -> node."""
    notes: tuple[str, ...] = ()
    """Cluster-level lines for `cloud status` (e.g. how many tasks are still under `after`)."""
    hourly_usd: float = 0.0
    """What the held cloud nodes cost per hour now."""
    drain: tuple[ScaleDown, ...] = ()
    """Busy nodes that take no new work and are given back once their jobs end (a paced budget
    running out: running work is never killed for money)."""
    no_spot: frozenset[TaskKey] = frozenset()
    """Tasks the policy keeps off spot (`spot_averse`): the scheduler gives them
    `PendingTask.no_spot`, so they do not land on spot nodes rented for others either."""
    recall: tuple[Recall, ...] = ()
    """Cloud tasks to bring back on-prem now (`Limits.recall`), the dearest nodes first."""
    weighed: frozenset[TaskKey] | None = None
    """The pending tasks whose spot risk this decision weighed (with `count_preemption_loss`; None
    = not weighed). A task with a deadline outside it became pending after the decision (a new
    job, a requeue after a reclaim): until a decision weighs it, the scheduler keeps it off spot
    nodes like a `no_spot` task, or an idle spot node held for others takes a job whose slack
    cannot afford a reclaim (the generated week 23 missed two deadlines that way). Tasks without a
    deadline are not held back: on the generated weeks, holding them sent them to on-demand and
    walled the budget (bench/RESULTS.md, session 9)."""
    gate: CloudGate | None = None
    """With owner budgets (`Limits.user_budget_usd`/`group_budget_usd`): the tasks of budgeted
    owners this decision lets onto cloud nodes, and why it refused others; the scheduler keeps
    the rest of their tasks off cloud nodes (core/allowance.plan_within). None = no such budgets."""


# ---- helpers -------------------------------------------------------------------------------------


def period_start(now: float, period: str) -> float:
    """Start (UTC, seconds since the epoch) of the budget period that contains `now`."""
    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start = day
    elif period == "week":
        start = day - dt.timedelta(days=day.weekday())
    elif period == "month":
        start = day.replace(day=1)
    else:
        raise ValueError(f"budget period {period!r}: expected one of {', '.join(PERIODS)}")
    return start.timestamp()


def _virtual(task: PendingTask, tag: str, features: frozenset[str] = frozenset()) -> list[NodeView]:
    """Nodes that surely hold `task`: if `plan` still refuses it there, a quota, a throttle or
    a dependency holds it back, and renting would not help."""
    res = task.resources
    model = res.gpu_type or "GPU"
    return [
        NodeView(f"~{tag}{i}", tuple(GpuSlot(g, model) for g in range(res.gpus)), res.cpus, res.cpus,
                 res.memory_mb, res.memory_mb, NodeState.UP, "cloud", features=features)
        for i in range(max(task.num_nodes, 1))
    ]


def _with_freeing(nodes: Sequence[NodeView], freeing: Sequence[Freeing], until: float) -> list[NodeView]:
    """On-prem nodes with the allocations that end by `until` counted as free."""
    by_node: dict[str, list[Freeing]] = {}
    for f in freeing:
        if f.end <= until:
            by_node.setdefault(f.node, []).append(f)
    out = []
    for n in nodes:
        fs = by_node.get(n.name)
        if not fs:
            out.append(n)
            continue
        freed = {g for f in fs for g in f.gpus}
        gpus = tuple(replace(s, free=True) if s.index in freed and s.healthy else s for s in n.gpus)
        out.append(replace(
            n, gpus=gpus,
            cpus_free=min(n.cpus_total, n.cpus_free + sum(f.cpus for f in fs)),
            memory_free_mb=min(n.memory_total_mb, n.memory_free_mb + sum(f.memory_mb for f in fs)),
        ))
    return out


def _at_expected_ends(cluster: ClusterView, freeing: Sequence[Freeing], use: float,
                      now: float) -> tuple[ClusterView, list[Freeing]]:
    """The on-prem allocations of `freeing` that know their start, put at their expected end
    (`World.limit_use`), and the running tasks on the same GPUs with them, so the pass's
    reservation starts (`plan`) and wait forecast (`Backlog`) agree. A run with an estimate
    instead of a limit is not in `freeing` and keeps its end."""
    moved = [replace(f, end=expected_end(f.start, f.end, use, now)) if f.start is not None else f for f in freeing]
    ends = {(f.node, g): f.end for f in moved if f.start is not None for g in f.gpus}
    if not ends:
        return cluster, moved
    running = tuple(
        replace(r, ends_at=ends[(r.node, r.gpus[0])])
        if r.ends_at is not None and r.gpus and (r.node, r.gpus[0]) in ends else r
        for r in cluster.running)
    return replace(cluster, running=running), moved


def _view(cluster: ClusterView, nodes: Sequence[NodeView]) -> ClusterView:
    return replace(cluster, nodes=tuple(nodes))


def spot_averse(task: PendingTask, world: World, limits: Limits, now: float, can_wait: bool,
                market: Market | None = None) -> bool:
    """Whether the policy keeps `task` off spot nodes altogether (with `count_preemption_loss`):
    at the assumed reclaim rate (`limits.reclaim_per_h`, or the lowest rate a live spot pool of
    `market` that fits it states, where lower: `_choose` would rent there; k times for k nodes) it
    would lose more than `max_spot_loss` of its run, or its deadline's slack is too short for spot;
    and it has somewhere else to go (on-demand is allowed, or it can wait on-prem). A job in
    `spot_insist` never is; nor one that asks for on-demand anyway (use_spot: false)."""
    key = (task.job_id, task.task)
    if not limits.count_preemption_loss or key in world.spot_insist or not task.resources.use_spot:
        return False
    if not (limits.allow_on_demand or can_wait):
        return False
    k = max(task.num_nodes, 1)
    work_h = _runtime(task, world, limits) / 3600.0
    ckpt_h = (world.checkpoint_every.get(key) or 0.0) / 3600.0
    rate = limits.reclaim_per_h
    if market is not None:
        for res in candidates(task.resources):
            safe = market.safest(res, market.fitting(res, k)[0])
            if safe is not None and safe.reclaim_per_h is not None:
                rate = min(rate, safe.reclaim_per_h)
    share = _loss_share(task, world, limits, work_h, k * rate, ckpt_h)
    loss = share * work_h
    deadline = world.deadlines.get(key)
    if deadline is not None:  # as `_choose`: spot while the slack allows, else on-demand if there is one
        slack = deadline - now - limits.boot_s - work_h * 3600.0
        short = slack < (loss + limits.deadline_margin * work_h) * 3600.0
        return limits.allow_on_demand and (short or (work_h > 0 and share > limits.max_spot_loss))
    return work_h > 0 and share > limits.max_spot_loss


def _choose(task: PendingTask, market: Market, world: World, limits: Limits, uses: Mapping[str, int],
            now: float, can_wait: bool) -> Choice:
    """The offer to rent for `task` across its accelerator candidates (an ordered list: the first
    candidate with an offer; a set: the cheapest), spot or on-demand by the expected loss."""
    key = (task.job_id, task.task)
    k = max(task.num_nodes, 1)
    work_h = _runtime(task, world, limits) / 3600.0
    ckpt_h = (world.checkpoint_every.get(key) or 0.0) / 3600.0
    deadline = world.deadlines.get(key)
    best: Choice | None = None
    first_why = ""
    for res in candidates(task.resources):
        spot, od, scarce = market.fitting(res, k)
        if not res.use_spot:
            spot = []
        if not limits.allow_on_demand:
            od = []
        if scarce and od and limits.count_preemption_loss and key not in world.spot_insist:
            spot = []  # half its spot pools refused lately: do not walk the rest one by one
        s, d = market.best(res, spot, od, uses, limits.spread_penalty)
        if s is not None and limits.count_preemption_loss and key not in world.spot_insist:
            s = _safer(s, market.safest(res, spot), k, work_h, ckpt_h, limits)
        choice: Choice | None = None
        if s is not None:
            rate = k * (s.reclaim_per_h if s.reclaim_per_h is not None else limits.reclaim_per_h)
            frac = _loss_share(task, world, limits, work_h, rate, ckpt_h)
            loss = frac * work_h
            s_cost = s.price_hourly * k * (work_h + loss)
            why = f"spot: expected loss {frac:.1%} of {fmt_duration(work_h * 3600)}"
            if not limits.count_preemption_loss or key in world.spot_insist:
                choice = Choice(s, res, s_cost, loss, why)
            elif deadline is not None:
                slack = deadline - now - limits.boot_s - work_h * 3600.0
                need = (loss + limits.deadline_margin * work_h) * 3600.0
                if (slack >= need and frac <= limits.max_spot_loss) or d is None:
                    choice = Choice(s, res, s_cost, loss, f"{why}; deadline slack {fmt_duration(slack)}")
                else:
                    choice = Choice(d, res, d.price_hourly * k * work_h, 0.0,
                                    f"on-demand: deadline slack {fmt_duration(max(slack, 0))} is too short for spot"
                                    if slack < need else f"on-demand: on spot it would lose ~{frac:.0%} of its work")
            else:
                dear = d is not None and s_cost > d.price_hourly * k * work_h
                if frac <= limits.max_spot_loss and not dear:
                    choice = Choice(s, res, s_cost, loss, why)
                elif d is not None:
                    choice = Choice(d, res, d.price_hourly * k * work_h, 0.0,
                                    f"on-demand: on spot it would lose ~{frac:.0%} of its work to reclaims"
                                    f" ({_length(task, world, limits, work_h)}"
                                    f"{'no checkpoints' if not ckpt_h else 'checkpoints every ' + fmt_duration(ckpt_h * 3600)})")
                elif not can_wait:
                    choice = Choice(s, res, s_cost, loss, f"{why}; it can never run on-prem")
                else:
                    first_why = first_why or (
                        f"cloud: on spot it would lose ~{frac:.0%} of its work to reclaims ({_length(task, world, limits, work_h)}burst.max_spot_loss"
                        f" {limits.max_spot_loss:.0%}) and on-demand is off (burst.allow_on_demand): it waits on-prem")
        elif d is not None:
            choice = Choice(d, res, d.price_hourly * k * work_h, 0.0, "on-demand")
        if choice is not None and task.no_spot and choice.offer is not None and choice.offer.spot:
            # `spot_averse` (the scheduler keeps it off spot nodes by the same rule) though this
            # pool's own rate would allow spot: on-demand, else it waits on-prem.
            why = (f"on spot it would lose ~{choice.loss_h / work_h if work_h > 0 else 0.0:.0%} of its work"
                   f" at burst.reclaim_per_h {limits.reclaim_per_h:g}")
            choice = None if d is None else Choice(d, res, d.price_hourly * k * work_h, 0.0, f"on-demand: {why}")
            if choice is None:
                first_why = first_why or f"cloud: {why} and on-demand is off (burst.allow_on_demand): it waits on-prem"
                continue
        if choice is None:
            if not first_why:
                _, why = cheapest(res, market.offers, market.backoff, now, limits.allow_on_demand)
                first_why = f"cloud: {why}"
            continue
        if task.resources.ordered:
            return choice
        if best is None or choice.cost < best.cost:
            best = choice
    return best if best is not None else Choice(None, task.resources, why=first_why)


def _safer(cheap: Offer, safe: Offer | None, k: int, work_h: float, ckpt_h: float, limits: Limits) -> Offer:
    """The spot offer to weigh for a task: the cheapest, unless there the task would lose more than
    `max_spot_loss` of its run and the pool with the lowest stated reclaim rate (`Market.safest`)
    would lose less."""
    if safe is None or safe is cheap or work_h <= 0:
        return cheap

    def loss(o: Offer) -> float:
        rate = o.reclaim_per_h if o.reclaim_per_h is not None else limits.reclaim_per_h
        return expected_loss_h(work_h, k * rate, ckpt_h, limits.restart_overhead_s / 3600.0)

    at_cheap = loss(cheap)
    if at_cheap / work_h <= limits.max_spot_loss:
        return cheap
    return safe if loss(safe) < at_cheap else cheap


def _loss_share(t: PendingTask, world: World, limits: Limits, work_h: float, rate: float, ckpt_h: float) -> float:
    """The expected share of its run a task loses to reclaims at `rate` (k nodes: k x): at its
    known run time, or at `unknown_risk_s` where it has neither a limit nor an estimate."""
    key = (t.job_id, t.task)
    unknown = world.runtime.get(key) is None and t.runtime_s is None and not (limits.lindy > 0 and world.ran.get(key))
    if unknown and limits.learn_unknown and world.run_lengths:
        return _drawn_loss(tuple(world.run_lengths), rate, ckpt_h, limits.restart_overhead_s / 3600.0)
    risk_h = work_h
    if limits.unknown_risk_s > 0 and unknown:
        risk_h = max(work_h, limits.unknown_risk_s / 3600.0)
    if risk_h <= 0:
        return 0.0
    return expected_loss_h(risk_h, rate, ckpt_h, limits.restart_overhead_s / 3600.0) / risk_h


def _length(t: PendingTask, world: World, limits: Limits, work_h: float) -> str:
    """'20.0 h learnt from an earlier attempt; ' where `lindy` set the run time, else ''."""
    ran = world.ran.get((t.job_id, t.task)) if limits.lindy > 0 else None
    if ran and work_h * 3600.0 >= limits.lindy * ran - 1e-6 and (t.runtime_s is None or t.estimated):
        return f"{fmt_duration(work_h * 3600)}: an earlier attempt ran {fmt_duration(ran)} without finishing; "
    return ""


@lru_cache(maxsize=256)
def _drawn_loss(lengths: tuple[float, ...], rate: float, ckpt_h: float, overhead_h: float) -> float:
    """The expected share of its run a task loses to reclaims at `rate` when its length is drawn
    from `lengths` (s), each weighted by its length: lost GPU-hours over GPU-hours, as the lab
    counts them."""
    total = sum(lengths) / 3600.0
    if total <= 0:
        return 0.0
    return sum(expected_loss_h(x / 3600.0, rate, ckpt_h, overhead_h) for x in lengths) / total


def _runtime(t: PendingTask, world: World, limits: Limits) -> float:
    """Expected seconds of work left: the world's figure, else the task's limit or estimate, else
    `default_runtime_s`; without a limit, at least `lindy` x its longest earlier attempt."""
    key = (t.job_id, t.task)
    r = world.runtime.get(key)
    if r is None:
        r = t.runtime_s
    if r is not None and not t.estimated:
        return r  # a time limit: a hard end
    if r is None:
        r = limits.default_runtime_s
    ran = world.ran.get(key) if limits.lindy > 0 else None
    return max(r, limits.lindy * ran) if ran else r


def _pack(room: list[list], res: Resources, take: bool = True) -> list | None:
    """Take room for one node of `res` on a node rented earlier in this pass (best fit), if any
    has it, and return that node's entry (`take` False: only find it). The final `plan` of the
    pass decides where tasks land; this only avoids renting a node for a task that fits beside
    another."""
    best = None
    for r in room:
        model, gpus, cpus, mem = r[:4]
        if gpus < res.gpus or cpus < res.cpus or mem < res.memory_mb:
            continue
        if res.gpus and res.gpu_type is not None and not gpu_type_matches(res.gpu_type, model):
            continue
        if best is None or gpus < best[1]:
            best = r
    if best is None or not take:
        return best
    best[1] -= res.gpus
    best[2] -= res.cpus
    best[3] -= res.memory_mb
    return best


def _share_hourly(offer: Offer, gpus: int, cpus: float) -> float:
    """$/h one rank of `gpus` GPUs and `cpus` CPUs pays of a node of `offer` (allowance.share)."""
    return offer.price_hourly * share(offer.gpus, offer.cpus, gpus, cpus)


def _purses(world: World, limits: Limits, now: float, held: Mapping[str, CloudNode]) -> Purses:
    """Owner budgets as a decision starts: each owner's spend this period plus what their running
    cloud tasks will still cost, at their share of each node, to their time limit, and a run
    without one (an estimate is no bound) as a whole budget period, as Slurm counts a job without
    a limit at its partition's maximum (`_owner_run_s`)."""
    purses = Purses(limits.user_budget_usd, limits.group_budget_usd, limits.budget_period, dict(world.owner_spent),
                    limits.deadline_reserve if limits.pace_budget else 0.0)
    for r in world.cluster.running:
        c = held.get(r.node)
        if c is None:
            continue
        left = _owner_run_s(None if r.ends_at is None or r.estimated else max(0.0, r.ends_at - now), now, limits)
        purses.take(r.user, r.group, _share_hourly(c.offer, len(r.gpus), r.cpus) * left / 3600.0)
    return purses


def _owner_run_s(limit_s: float | None, now: float, limits: Limits) -> float:
    """The seconds of a run an owner budget counts: the whole run to its time limit, not only the
    part in this period, and a whole budget period for a run without a limit. So what an owner's
    running tasks will still cost never exceeds what they had room for, and when a new period
    begins what carries over fits in it: a budget is never passed, though runs outlive periods."""
    if limit_s is not None:
        return limit_s
    return _period_len(period_start(now, limits.budget_period), limits.budget_period)


# ---- the decision --------------------------------------------------------------------------------


def decide(world: World, limits: Limits, policy: Policy, now: float) -> BurstDecision:
    """Which nodes to rent for the tasks that fit nowhere, which idle nodes to give back, and why
    any burst is held back. Performs no I/O.

    1. Saturation: `plan` over the on-prem nodes alone (plus allocations ending within
       `count_freeing_within`). Placement-'any' tasks it cannot place, and that have waited
       `after`, may burst; placement-'cloud' tasks may at once; placement-'onprem' never.
    2. In priority order, each such task is planned onto the cloud nodes held (up, or starting
       with the offer's empty shape) and the nodes rented so far in this pass; if it fits, it is
       covered. If it would not fit even on a node made for it, a quota or throttle holds it
       and renting would not help.
    3. Otherwise the offer is chosen across the task's accelerator candidates (`_choose`: spot
       unless the expected reclaim loss says on-demand; pools spread, back-offs skipped). With
       `wait_value_usd`, a placement-'any' task waits on-prem while its expected on-prem wait
       costs less than that offer would; a task with a deadline only while the wait also fits its
       slack (a deadline narrows the wait, it never widens it), and only one whose slack the wait
       would not fit spends the deadline reserve, unpaced. `num_nodes` nodes are rented in one
       pool, unless `max_nodes`, `max_hourly_usd` or the budget (paced with `pace_budget`) says
       no: then the task is `Blocked` with the limit in words.
    4. Cloud nodes idle for `idle_timeout` that no pending task is about to use are given back;
       when the budget would otherwise be overrun, all of them (only the idle ones with
       `pace_budget`: running work is never killed for money).
    5. With `recall`: cloud tasks the on-prem fleet can take now, after every pending task had
       its turn (`_recall`), are stopped and requeued, so that they run on-prem and their nodes go.
    """
    cluster = world.cluster
    freeing = world.freeing
    expected = cluster  # running tasks at their expected ends, for the forecasts only
    if limits.limit_use_forecast and world.limit_use < 1.0 and freeing:
        expected, freeing = _at_expected_ends(cluster, freeing, world.limit_use, now)
    usage = cluster.usage_by_user
    ordered = sorted(world.pending, key=lambda t: priority_key(t, usage))
    held = {c.name: c for c in world.cloud}
    hourly_now = sum(c.offer.price_hourly for c in world.cloud)
    period = limits.budget_period

    # 1. Saturation, as the scheduler itself sees the on-prem fleet.
    onprem_now = [n for n in cluster.nodes if n.site != "cloud"]
    onprem = onprem_now
    if limits.count_freeing_within > 0 and world.freeing:
        onprem = _with_freeing(onprem, world.freeing, now + limits.count_freeing_within)  # at the limit: sure to be free
    local_tasks = [replace(t, placement="onprem") for t in ordered if t.placement == "any" and not t.deps_unmet]
    local = plan(_view(cluster, onprem), local_tasks, policy)
    placed_local = {(p.job_id, p.task) for p in local.placements}
    # The scheduler's own forecast where it has one: a reservation's start, or a preemption
    # that frees on-prem room for the task now. What starts now is what the scheduler (at the
    # limits) starts; where runs that end early move reservations, a second plan says when.
    ahead = local
    if expected is not cluster and local.waiting:
        ahead = plan(_view(expected, onprem), local_tasks, policy)
    forecast: dict[TaskKey, float] = {}
    for w in ahead.waiting:
        if w.reason.startswith("preempting"):
            forecast[(w.job_id, w.task)] = now
        elif w.starts_at is not None:
            forecast[(w.job_id, w.task)] = w.starts_at
    weigh = limits.wait_value_usd > 0 or bool(world.deadlines)
    backlog = Backlog(onprem_now, freeing, now, limits.default_runtime_s, expected.running) if weigh else None
    by_key = {(t.job_id, t.task): t for t in ordered}
    if backlog is not None:
        for key in placed_local:
            t = by_key[key]
            backlog.add(t.resources, max(t.num_nodes, 1), _runtime(t, world, limits))
    candidates_: list[PendingTask] = []
    early = 0
    for t in ordered:
        key = (t.job_id, t.task)
        if t.deps_unmet or t.placement not in ("any", "cloud"):
            continue
        if t.placement == "any":
            if key in placed_local:
                continue
            if now - world.pending_since.get(key, t.submitted_at) < limits.after:
                early += 1
                if backlog is not None:
                    backlog.add(t.resources, max(t.num_nodes, 1), _runtime(t, world, limits))
                continue
        candidates_.append(t)

    # 2-3. Cover with held nodes, else rent.
    cloud_views: list[NodeView] = []
    for n in cluster.nodes:
        if n.site != "cloud":
            continue
        c = held.get(n.name)
        if c is not None and (c.draining or not c.up):
            continue
        cloud_views.append(n)
    for c in world.cloud:
        if not c.up and not c.draining:
            cloud_views.append(replace(c.offer.view(c.name), features=world.cloud_features))
    uses: dict[str, int] = {}
    for c in world.cloud:
        uses[c.offer.pool] = uses.get(c.offer.pool, 0) + 1

    market = Market(world.offers, world.backoff, now, world.gang_backoff)
    gated = bool(policy.user_gpu_quota or policy.group_gpu_quota)
    accepted: list[PendingTask] = []
    new_views: list[NodeView] = []
    launches: list[LaunchRequest] = []
    blocked: list[Blocked] = []
    notes: list[str] = []
    planned_nodes = 0
    planned_hourly = 0.0
    planned_cost = 0.0
    node_left: dict[str, float] = {}
    committed = _committed(world, cluster.running, limits, now, node_left) if limits.pace_budget else 0.0
    period_left = _period_left(now, period)
    paced_out = ""
    reserve = _kept(limits, now)
    if limits.pace_budget:
        p0 = period_start(now, period)
        cap = limits.budget_usd * min(1.0, (now - p0) / _period_len(p0, period) + limits.pace_ahead) * (
            1.0 - reserve)
        if world.spent + committed >= cap:
            paced_out = (f"cloud: budget pacing: ${world.spent:.2f} of ${limits.budget_usd:.2f} spent this {period}"
                         f" and ${committed:.2f} committed; ${cap:.2f} allowed by now"
                         f" ({reserve:.0%} kept for deadlines)")
    group = 0
    quota_held = 0
    waiting = 0
    bent = 0
    band: tuple[float, float] | None = None
    if limits.pace_budget and limits.pace_bend:
        p0 = period_start(now, period)
        f = (now - p0) / _period_len(p0, period)
        on_pace = limits.budget_usd * min(1.0, f) * (1.0 - reserve)
        cap = limits.budget_usd * min(1.0, f + limits.pace_ahead) * (1.0 - reserve)
        band = (on_pace + limits.pace_bend_from * (cap - on_pace), cap)
    never_cache: dict[tuple[int, str | None, float, int, int], bool] = {}

    def waitable(t: PendingTask) -> bool:
        """Whether `t` may wait for on-prem room: placement `any`, and a shape on-prem nodes take."""
        if by_key[(t.job_id, t.task)].placement != "any" or not onprem_now:
            return False
        k = max(t.num_nodes, 1)
        shape = (t.resources.gpus, t.resources.gpu_type, t.resources.cpus, t.resources.memory_mb, k)
        never = never_cache.get(shape)
        if never is None:
            never = never_cache[shape] = never_fits(onprem_now, t.resources, k) is not None
        return not never

    # One plan over the held nodes covers what they can take (the scheduler's own order);
    # the rest rent, packing onto nodes rented earlier in this pass where they have room.
    # Tasks the policy keeps off spot: neither held spot nodes nor new ones take them (and the
    # scheduler is told, so it does not put them on spot nodes rented for others either).
    no_spot: set[TaskKey] = set()
    if limits.count_preemption_loss:
        for t in ordered:
            if t.deps_unmet or t.placement not in ("any", "cloud") or not t.resources.use_spot:
                continue
            if spot_averse(t, world, limits, now, waitable(t), market):
                no_spot.add((t.job_id, t.task))
    as_cloud = [replace(t, placement="cloud", no_spot=(t.job_id, t.task) in no_spot) if no_spot
                else replace(t, placement="cloud") for t in candidates_]
    held_cover: dict[TaskKey, list[Placement]] = {}
    if cloud_views and as_cloud:
        for p in plan(_view(cluster, cloud_views), as_cloud, policy).placements:
            held_cover.setdefault((p.job_id, p.task), []).append(p)
    # Owner budgets: a task of a budgeted owner takes cloud money only where they can pay it.
    purses = _purses(world, limits, now, held) if limits.user_budget_usd or limits.group_budget_usd else None
    cloud_ok: dict[TaskKey, float] = {}  # what each task let through took from its owners
    refused: dict[TaskKey, str] = {}

    def pressed(t: PendingTask, can_wait: bool) -> tuple[bool, float | None]:
        """Whether `t`'s deadline presses: the on-prem wait (returned; None where it cannot wait)
        would miss it. Only a pressing task may spend a deadline reserve, and unpaced."""
        key = (t.job_id, t.task)
        deadline = world.deadlines.get(key)
        if not can_wait or backlog is None:
            return deadline is not None, None
        runtime = _runtime(t, world, limits)
        wait = forecast[key] - now if key in forecast else backlog.wait(t.resources, max(t.num_nodes, 1))
        fits = deadline is not None and wait + limits.deadline_margin * runtime < deadline - now - runtime
        return deadline is not None and not fits, wait

    def owners_pay(t: PendingTask, hourly: float, pressing: bool | None = None, refuse: bool = True,
                   take: bool = True) -> bool:
        """Whether `t`'s owners can pay its share of its nodes (`hourly`, $/h) for its run
        (`_owner_run_s`; then, with `take`, it is theirs); else, with `refuse`, `t` is refused,
        with the budget in words. The deadline reserve is for a `pressing` task (`pressed`, where
        the caller has not said)."""
        if purses is None or not purses.budgeted(t.user, t.group):
            return True
        limit = t.runtime_s if t.runtime_s is not None and not t.estimated else None
        usd = hourly * _owner_run_s(limit, now, limits) / 3600.0
        due = pressing if pressing is not None else (
            (t.job_id, t.task) in world.deadlines and pressed(t, waitable(t))[0])
        why = purses.refusal(t.user, t.group, usd, due, limit is None)
        if why and not refuse:
            return False
        if why:
            refused[(t.job_id, t.task)] = why
            blocked.append(Blocked(t.job_id, t.task, why))
            return False
        if not take:
            return True
        purses.take(t.user, t.group, usd)
        cloud_ok[(t.job_id, t.task)] = usd
        return True

    room: list[list] = []  # per node rented in this pass: [model, free GPUs, CPUs, memory, $/h, GPUs, CPUs]
    dear: dict[TaskKey, frozenset[str]] = {}  # held nodes too dear for a task's owners (CloudGate.avoid)
    for t in as_cloud:
        key = (t.job_id, t.task)
        cover = held_cover.get(key)
        # A held node whose share (by the GPUs, or candidate, it was placed with) its owners
        # cannot pay: another held node may cover it, else it may rent one they can pay; it keeps
        # off the dear ones (so does the scheduler: the gate's `avoid`). Bounded: each try adds
        # at least one held node to what it avoids, and the plan is made again only while some
        # other held node's share (however the node is filled) is one they could pay.
        while cover and purses is not None and not owners_pay(t, sum(
                _share_hourly(held[p.node].offer, len(p.gpus), p.cpus) for p in cover if p.node in held), refuse=False):
            dear[key] = dear.get(key, frozenset()) | {p.node for p in cover}
            t = replace(t, avoid_nodes=t.avoid_nodes | dear[key])
            others = [held[v.name].offer for v in cloud_views if v.name in held and v.name not in t.avoid_nodes]
            fewest = min([t.resources.gpus, *(g for _m, g in t.resources.alternatives)])  # of its candidates
            if not others or not owners_pay(t, max(t.num_nodes, 1) * min(
                    _share_hourly(o, fewest, t.resources.cpus) for o in others), refuse=False, take=False):
                cover = None
                break
            cover = [p for p in plan(_view(cluster, cloud_views), [*accepted, t], policy).placements
                     if (p.job_id, p.task) == key]
        if cover:
            accepted.append(t)
            continue
        if not t.requires <= world.cloud_features:  # a rented node could never take it
            lack = ", ".join(sorted(t.requires - world.cloud_features))
            blocked.append(Blocked(t.job_id, t.task, f"cloud nodes do not offer {lack} (cloud.runtimes)"))
            continue
        if t.num_nodes <= 1:
            into = _pack(room, t.resources, take=False)
            if into is not None:
                if not owners_pay(t, into[4] * share(into[5], into[6], t.resources.gpus, t.resources.cpus)):
                    continue
                _pack(room, t.resources)
                accepted.append(t)
                continue
        views = cloud_views + new_views
        if gated or t.array_throttle is not None:
            made_for = plan(_view(cluster, views + _virtual(t, "v", world.cloud_features)), [*accepted, t], policy)
            if not any((p.job_id, p.task) == key for p in made_for.placements):
                quota_held += 1  # quota, throttle: the scheduler would not start it on any node
                continue
        k = max(t.num_nodes, 1)
        runtime = _runtime(t, world, limits)
        can_wait = waitable(t)
        deadline = world.deadlines.get(key)
        if deadline is None and paced_out:
            blocked.append(Blocked(t.job_id, t.task, paced_out))
            if backlog is not None and can_wait:
                backlog.add(t.resources, k, runtime)
            continue
        choice = _choose(t, market, world, limits, uses, now, can_wait)
        pressing, wait = pressed(t, can_wait)
        if wait is not None:
            assert backlog is not None
            # A cloud node first receives what the job needs (its data lives on-prem): that time
            # is paid for and comes before the job starts, so waiting less than it on-prem always
            # wins.
            move = world.transfer_s.get(key, 0.0)
            paid = choice.cost + (choice.offer.price_hourly * k * move / 3600.0 if choice.offer else 0.0)
            worth = wait / 3600.0 * t.resources.gpus * k * limits.wait_value_usd
            hold = (choice.offer is not None and limits.wait_value_usd > 0
                    and (wait < move or worth < paid))
            # A deadline narrows the wait (never past the slack), it does not widen it: the job's
            # waiting is worth as much as anyone's. While the slack lasts, it is paced like them.
            fits = deadline is not None and not pressing
            if not hold and not pressing and band is not None and choice.offer is not None and limits.wait_value_usd > 0:
                in_period = min(choice.cost, choice.offer.price_hourly * k * period_left / 3600.0)
                bar = _pace_bar(world.spent + committed + planned_cost + in_period, band)
                if worth < paid * bar:
                    hold = True
                    bent += 1
                    waiting -= 1
            if deadline is not None:  # without a wait value, the slack alone
                hold = fits and (hold or limits.wait_value_usd <= 0)
            if hold or choice.offer is None:
                backlog.add(t.resources, k, runtime)
            if hold:
                waiting += 1
                continue
        offer = choice.offer
        if offer is None:
            blocked.append(Blocked(t.job_id, t.task, choice.why))
            continue
        # What the run costs within this budget period (the rest is the next period's money).
        cost_now = min(choice.cost, offer.price_hourly * k * period_left / 3600.0)
        reason = _limit_reason(offer, k, len(world.cloud) + planned_nodes, hourly_now + planned_hourly,
                               world.spent, limits, now, cost_now, pressing, committed + planned_cost)
        if reason or not owners_pay(t, k * _share_hourly(offer, choice.resources.gpus, choice.resources.cpus), pressing):
            if reason:
                blocked.append(Blocked(t.job_id, t.task, reason))
            if backlog is not None and can_wait:
                backlog.add(t.resources, k, runtime)
            continue
        group += 1
        res = choice.resources if choice.resources != t.resources else None
        use = choice.resources
        for i in range(k):
            name = f"+{offer.instance_type}#{len(new_views)}"
            new_views.append(replace(offer.view(name), features=world.cloud_features))
            launches.append(LaunchRequest(offer, (key,), group, res, choice.why))
            room.append([offer.gpu_type or "GPU", offer.gpus - use.gpus, offer.cpus - use.cpus,
                         offer.memory_mb - use.memory_mb, offer.price_hourly, offer.gpus, offer.cpus])
        uses[offer.pool] = uses.get(offer.pool, 0) + k
        market.moved()
        planned_nodes += k
        planned_hourly += k * offer.price_hourly
        planned_cost += cost_now
        accepted.append(replace(t, resources=choice.resources) if res is not None else t)

    # A task kept off spot whose alternative a limit refuses (the budget, max_nodes...) may still
    # take an idle spot node held for others: it is paid for anyway, and waiting helps no one.
    if no_spot and blocked:
        no_spot -= {(b.job_id, b.task) for b in blocked}
    # Which held nodes will receive work, and which rented ones: one final pass over everything.
    final = plan(_view(cluster, cloud_views + new_views), accepted, policy)
    covered: dict[TaskKey, str] = {}
    wanted_nodes: set[str] = set()
    for p in final.placements:
        wanted_nodes.add(p.node)
        if not p.node.startswith("+"):
            covered[(p.job_id, p.task)] = p.node
    # Drop a rented node nothing landed on (a later task took the room its own task needed).
    kept = [req for req, v in zip(launches, new_views) if v.name in wanted_nodes]
    # A paced budget counts work that held nodes would take too: a node whose next task would
    # pass what may be committed by now takes no new work (given back when idle).
    stop: set[str] = set()
    if limits.pace_budget and world.cloud:
        total = world.spent + committed + planned_cost
        start = period_start(now, period)
        frac = min(1.0, (now - start) / _period_len(start, period) + limits.pace_ahead)
        room_cap = limits.budget_usd * frac * (1.0 - reserve)
        on_nodes = set(covered.values())
        for c in world.cloud:
            # A busy node that could not afford another `budget_reserve_h` after its current work
            # takes nothing new: the scheduler would otherwise hand it the next job as it frees.
            if (c.up and c.idle_since is None and not c.draining and c.name not in on_nodes
                    and total + c.offer.price_hourly * limits.budget_reserve_h > room_cap + 1e-9):
                stop.add(c.name)
        for key in sorted(covered, key=lambda k: priority_key(by_key[k], usage)):
            node = covered[key]
            c = held.get(node)
            if c is None:
                continue
            run = min(_runtime(by_key[key], world, limits), period_left)
            left = node_left.get(node, 0.0)
            cost = c.offer.price_hourly * max(0.0, run - left) / 3600.0  # beyond what is committed
            node_left[node] = max(left, run)
            cap = limits.budget_usd * (1.0 if key in world.deadlines else frac * (1.0 - reserve))
            if node in stop or total + cost > cap + 1e-9:
                stop.add(node)
                del covered[key]
            else:
                total += cost

    # 4. Scale-down.
    scale: list[ScaleDown] = []
    over = world.spent + hourly_now * limits.stop_margin_s / 3600.0 >= limits.budget_usd
    drain: list[ScaleDown] = []
    for c in world.cloud:
        if c.name in stop and not c.draining:
            why = (f"budget pacing: ${world.spent:.2f} of ${limits.budget_usd:.2f} spent this {period}; no new"
                   " work on this node")
            if c.up and c.idle_since is not None:
                scale.append(ScaleDown(c.name, why + ", giving it back"))
            else:
                drain.append(ScaleDown(c.name, why + ", given back when its jobs end"))
    if limits.pace_budget and world.cloud and (
            world.spent + hourly_now * max(limits.budget_reserve_h, limits.stop_margin_s / 3600.0) >= limits.budget_usd):
        # What runs may finish; nothing new starts on the cloud, and idle nodes go now.
        over = True
        why = (f"budget: ${world.spent:.2f} of ${limits.budget_usd:.2f} spent this {period} and the cloud nodes"
               f" burn ${hourly_now:.2f}/h; no new work on them, each given back when its jobs end")
        drain = [ScaleDown(c.name, why) for c in world.cloud
                 if not c.draining and c.idle_since is None and c.name not in stop] + drain
        covered = {}
    if world.cloud and over and not limits.pace_budget:
        why = (f"budget: ${world.spent:.2f} of ${limits.budget_usd:.2f} spent this {period}, and the cloud nodes"
               f" burn ${hourly_now:.2f}/h; giving every cloud node back")
        scale = [ScaleDown(c.name, why) for c in world.cloud if not c.draining]
        kept = []
        covered = {}
    else:
        if over:
            kept = []
        for c in world.cloud:
            if c.draining or not c.up or c.idle_since is None or c.name in wanted_nodes or c.name in stop:
                continue
            idle = now - c.idle_since
            if over:
                scale.append(ScaleDown(c.name, f"budget: ${world.spent:.2f} of ${limits.budget_usd:.2f} spent"
                                               f" this {period}; giving idle nodes back"))
            elif idle >= limits.idle_timeout:
                why = f"idle for {fmt_duration(idle)} (burst.idle_timeout {fmt_duration(limits.idle_timeout)})"
                scale.append(ScaleDown(c.name, why))
    if early:
        notes.append(f"{early} task{'s' if early != 1 else ''} fit nowhere on-prem but waited less than"
                      f" burst.after ({fmt_duration(limits.after)})")
    if waiting:
        notes.append(f"{waiting} task{'s' if waiting != 1 else ''} wait on-prem: the expected wait costs less than"
                     f" the cloud would (burst.wait_value_usd ${limits.wait_value_usd:g} per GPU-hour), within any deadline's slack")
    if bent:
        notes.append(f"{bent} task{'s' if bent != 1 else ''} wait on-prem: budget pacing (burst.pace_ahead) is ahead of"
                     " the calendar, so a launch must save waiting worth more than its price")
    if quota_held:
        notes.append(f"{quota_held} task{'s' if quota_held != 1 else ''} held by a quota or array throttle:"
                      " renting would not start them")
    recall = _recall(world, limits, policy, now, onprem_now, ordered, held, wanted_nodes) \
        if limits.recall and world.cloud_tasks and onprem_now else ()
    # A task with unmet dependencies was not weighed (the spot-risk loop skips it): once they are
    # met it must wait for a decision like a new task.
    weighed = frozenset(k for k, t in by_key.items() if not t.deps_unmet) if limits.count_preemption_loss else None
    gate = None
    if purses is not None:  # held nodes booting too: the scheduler may place on them once up
        nodes = {c.name: NodePrice(c.offer.price_hourly, c.offer.gpus, c.offer.cpus) for c in world.cloud
                 if not c.draining}
        gate = CloudGate(cloud_ok, purses, refused, nodes,
                         max((o.price_hourly for o in world.offers), default=math.inf),
                         _owner_run_s(None, now, limits), frozenset(world.deadlines), avoid=dear)
    return BurstDecision(tuple(kept), tuple(scale), tuple(blocked), covered, tuple(notes), hourly_now, tuple(drain),
                         frozenset(no_spot), recall, weighed, gate)


def _recall(world: World, limits: Limits, policy: Policy, now: float, onprem: Sequence[NodeView],
            ordered: Sequence[PendingTask], held: Mapping[str, CloudNode], wanted: set[str]) -> tuple[Recall, ...]:
    """Cloud tasks to bring back on-prem: each alone on cloud nodes that would then go back (no
    pending task is headed there), not in `World.no_recall`, with at least `recall_min_s` of its
    run left, and losing at most `recall_max_loss` of that by stopping now (the work since its
    last checkpoint, else since its start); with a deadline, only while what is left of its run
    and that lost work, plus `deadline_margin` of both, still end before it. `plan` places them
    on-prem after every pending task that may run on-prem (below the lowest priority, the dearest
    nodes first) and as if they never ended (no backfill ahead of a reservation), so no pending
    task waits longer."""
    where: dict[TaskKey, list[RunningTask]] = {}
    on_node: dict[str, set[TaskKey]] = {}
    for r in world.cluster.running:
        where.setdefault((r.job_id, r.task), []).append(r)
        on_node.setdefault(r.node, set()).add((r.job_id, r.task))
    picks: list[tuple[float, PendingTask, tuple[str, ...]]] = []
    for t in world.cloud_tasks:
        key = (t.job_id, t.task)
        ranks = where.get(key)
        if (t.placement != "any" or not ranks or key in world.no_recall or t.runtime_s is None
                or t.runtime_s < limits.recall_min_s):
            continue
        nodes = tuple(sorted({r.node for r in ranks}))
        if any(r.stopping for r in ranks) or any(
                n not in held or n in wanted or on_node.get(n, set()) != {key} for n in nodes):
            continue
        start = min(r.started_at for r in ranks)
        every = world.checkpoint_every.get(key) or 0.0
        last = world.last_checkpoint.get(key)
        if every > 0 and last is not None and last >= start:
            lost = now - min(last, now)  # a node clock ahead of ours is no excuse
        else:
            lost = now - start  # no checkpoint seen since it started
        if lost > limits.recall_max_loss * t.runtime_s:
            continue
        deadline = world.deadlines.get(key)
        if deadline is not None and now + (t.runtime_s + lost) * (1.0 + limits.deadline_margin) > deadline:
            continue  # redoing the lost work on-prem could make it late
        picks.append((sum(held[n].offer.price_hourly for n in nodes), t, nodes))
    if not picks:
        return ()
    picks.sort(key=lambda p: (-p[0], p[1].job_id, p[1].task))
    local = [replace(t, placement="onprem") for t in ordered if t.placement in ("any", "onprem") and not t.deps_unmet]
    floor = min([t.priority for t in local] + [p[1].priority for p in picks]) - 1
    # Below every pending task, each a step below the one before (the dearest nodes first,
    # whatever their users' fair share); unbounded, as the requeued task will be at its full
    # limit, so it never backfills ahead of a reservation.
    back = [replace(t, placement="onprem", priority=floor - i, preemptible=False, no_spot=False, runtime_s=None,
                    estimated=False) for i, (_h, t, _n) in enumerate(picks)]
    placed = {(p.job_id, p.task) for p in plan(_view(world.cluster, onprem), [*local, *back], policy).placements}
    return tuple(Recall(t.job_id, t.task, nodes, f"recalled: the on-prem fleet can take it now; its cloud node"
                        f"{'s' if len(nodes) != 1 else ''} (${hourly:.2f}/h) go back")
                 for hourly, t, nodes in picks if (t.job_id, t.task) in placed)


def _pace_bar(committed: float, band: tuple[float, float]) -> float:
    """How many times its price the waiting a non-deadline launch saves must be worth, with a
    bending pace (`Limits.pace_bend`): 1 up to the on-pace line `band[0]`, rising as 1/(1 - x)
    with the share x of the band up to the hard cap `band[1]` that would be committed (inf there)."""
    lo, hi = band
    if committed <= lo:
        return 1.0
    x = (committed - lo) / (hi - lo) if hi > lo else 1.0
    return math.inf if x >= 1.0 else 1.0 / (1.0 - x)


def _limit_reason(offer: Offer, k: int, nodes: int, hourly: float, spent: float, limits: Limits,
                  now: float = 0.0, cost: float = 0.0, deadline: bool = False, committed: float = 0.0) -> str:
    """Why renting `k` nodes of `offer` would cross a limit, or '' if it would not."""
    what = offer.describe() if k == 1 else f"{k} nodes of {offer.describe()}"
    if nodes + k > limits.max_nodes:
        return (f"cloud: max_nodes: {nodes} of {limits.max_nodes} cloud nodes in use"
                + (f", the job needs {k}" if k > 1 else "") + f" (wanted: {what})")
    extra = k * offer.price_hourly
    if hourly + extra > limits.max_hourly_usd + 1e-9:
        return (f"cloud: max_hourly_usd: cloud nodes cost ${hourly:.2f}/h now; {what} would pass the"
                f" ${limits.max_hourly_usd:.2f}/h limit")
    need = (hourly + extra) * limits.budget_reserve_h
    if limits.pace_budget:
        # The job's run, plus the node's boot and its idle time before it is given back.
        need = committed + max(cost + extra * (limits.boot_s + limits.idle_timeout) / 3600.0,
                               extra * limits.budget_reserve_h)
        start = period_start(now, limits.budget_period)
        frac = min(1.0, (now - start) / _period_len(start, limits.budget_period) + limits.pace_ahead)
        kept = _kept(limits, now)
        allowed = limits.budget_usd if deadline else limits.budget_usd * frac * (1.0 - kept)
        if spent + need > allowed + 1e-9:
            return (f"cloud: budget pacing: ${spent:.2f} of ${limits.budget_usd:.2f} spent this {limits.budget_period};"
                    f" {what} (~${cost:.2f} for the job) would pass the ${allowed:.2f} allowed by now"
                    + ("" if deadline else f" ({kept:.0%} kept for deadlines)"))
        return ""
    if spent + need > limits.budget_usd + 1e-9:
        return (f"cloud: budget: ${spent:.2f} of ${limits.budget_usd:.2f} spent this {limits.budget_period};"
                f" {what} needs ${need:.2f} of headroom ({limits.budget_reserve_h:g} h of the cloud fleet)")
    return ""


def _committed(world: World, running: Sequence[RunningTask], limits: Limits, now: float,
               left_by: dict[str, float] | None = None) -> float:
    """$ the held cloud nodes will still cost in this budget period: to the expected end of their
    longest job (limit or estimate; `budget_reserve_h` when unknown or still starting), idle ones
    to their idle timeout; never past the period's end (what falls after it is the next period's).
    With `commit_expected` a time limit counts at the share `World.limit_use` of it."""
    horizon = _period_left(now, limits.budget_period)
    ends: dict[str, float | None] = {}
    use = world.limit_use if limits.commit_expected else 1.0
    guessed = {(t.job_id, t.task) for t in world.cloud_tasks if t.estimated} if use < 1.0 else set()
    for r in running:
        if r.node in ends and ends[r.node] is None:
            continue
        end = r.ends_at
        if end is not None and use < 1.0 and (r.job_id, r.task) not in guessed:
            end = expected_end(r.started_at, end, use, now)
        ends[r.node] = None if end is None else max(end, ends.get(r.node) or end)
    total = 0.0
    for c in world.cloud:
        if c.draining and c.name not in ends:
            continue
        if c.name in ends:
            end = ends[c.name]
            left = limits.budget_reserve_h * 3600.0 if end is None else max(0.0, end - now)
        elif not c.up:
            left = limits.budget_reserve_h * 3600.0
        else:
            left = max(0.0, limits.idle_timeout - (now - (c.idle_since if c.idle_since is not None else now)))
        left = min(left, horizon)
        total += c.offer.price_hourly * left / 3600.0
        if left_by is not None:
            left_by[c.name] = left if c.up else math.inf  # a starting node's work was paid for at launch
    return total


def _kept(limits: Limits, now: float) -> float:
    """The share of the lab's budget still kept for tasks with a deadline: `deadline_reserve` as
    the period starts, shrinking with what is left of it. Deadlines still to come need less as the
    period runs out; a reserve kept whole to the end walled the generated week 23 on its last day
    with a fifth of the budget unspent. Owners' purses keep theirs whole: shrunk, a $2,000 user
    budget missed deadlines (bench/RESULTS.md, session 11)."""
    start = period_start(now, limits.budget_period)
    return limits.deadline_reserve * max(0.0, 1.0 - (now - start) / _period_len(start, limits.budget_period))


def _period_left(now: float, period: str) -> float:
    """Seconds from `now` to the end of its budget period."""
    start = period_start(now, period)
    return max(0.0, start + _period_len(start, period) - now)


def _period_len(start: float, period: str) -> float:
    """Seconds in the budget period that starts at `start`."""
    if period == "day":
        return 86400.0
    if period == "week":
        return 7 * 86400.0
    t = dt.datetime.fromtimestamp(start, dt.timezone.utc)
    nxt = t.replace(year=t.year + 1, month=1) if t.month == 12 else t.replace(month=t.month + 1)
    return nxt.timestamp() - start


def label(key: TaskKey) -> str:
    return task_label(*key)
