"""Per-user and per-group cloud budgets beside the lab's (`cloud.burst.user_budget_usd`,
`group_budget_usd`). Pure: the burst policy asks `Purses` before a task of a budgeted owner takes
cloud money, and `plan_within` applies its answer (`CloudGate`) where the scheduler places tasks.

The rule follows Slurm's GrpTRESMins with `safe` enforcement: what an owner spent this budget
period, plus what their running cloud tasks will still cost (to their time limits; a run without
one counts as a whole period), plus what this run would cost, may not pass their budget. An owner
pays their share of each node they hold (GPUs held / the node's GPUs, as `cloud cost --by user`
books it); a node's idle share is the lab's. Running work is never stopped for an owner's budget:
their next task waits on-prem."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Sequence

from hybridctl.core.backfill import listing
from hybridctl.core.model import ClusterView, PendingTask, Placement, Policy, ScheduleDecision, Waiting
from hybridctl.core.schedule import plan

Owner = tuple[str, str]
"""('user', name) or ('group', name)."""

TaskKey = tuple[int, int]


def budget_of(budgets: Mapping[str, float], name: str) -> float | None:
    """The budget `budgets` sets for `name` ('*' for everyone not named); None = none."""
    got = budgets.get(name)
    return budgets.get("*") if got is None else got


def owners_with_budgets(users: Mapping[str, float], groups: Mapping[str, float],
                        seen: Iterable[Owner]) -> dict[Owner, float]:
    """Each owner with a budget of their own, and that budget: every one named, and those of
    `seen` (who spent, say) that '*' covers."""
    out: dict[Owner, float] = {}
    for kind, budgets in (("user", users), ("group", groups)):
        for name in {n for n in budgets if n != "*"} | {n for k, n in seen if k == kind}:
            cap = budget_of(budgets, name)
            if cap is not None:
                out[(kind, name)] = cap
    return out


@dataclass
class Purses:
    """What each budgeted owner has used of their budget within one burst decision: spent this
    period, committed by their running cloud tasks, and taken by the tasks this decision lets
    onto cloud nodes so far."""

    users: Mapping[str, float]
    groups: Mapping[str, float]
    period: str
    used: dict[Owner, float] = field(default_factory=dict)
    reserve: float = 0.0
    """The share of each budget kept for tasks with a deadline (`Limits.deadline_reserve`, with a
    paced budget, all period long: unlike the lab's, see burst._kept): others may use the rest."""

    def budgeted(self, user: str, group: str) -> bool:
        """Whether either owner of a task has a budget of their own."""
        return budget_of(self.users, user) is not None or budget_of(self.groups, group) is not None

    def refusal(self, user: str, group: str, usd: float, deadline: bool = False, unlimited: bool = False) -> str:
        """Why `usd` more for this task's owners would pass a budget ('' = it fits); a task
        without a `deadline` may not use the reserve; `unlimited`: it has no time limit (the
        reason says how to fit)."""
        for kind, name, budgets, key in (("user", user, self.users, "user_budget_usd"),
                                         ("group", group, self.groups, "group_budget_usd")):
            cap = budget_of(budgets, name)
            if cap is None:
                continue
            used = self.used.get((kind, name), 0.0)
            room = cap if deadline else cap * (1.0 - self.reserve)
            if used + usd > room + 1e-9:
                kept = f", {self.reserve:.0%} kept for jobs with a deadline" if room < cap else ""
                why = (f"cloud: {kind} {name}'s budget: ${used:.2f} of ${cap:.2f} spent or committed this"
                       f" {self.period}{kept}; this run needs ${usd:.2f} more (cloud.burst.{key})")
                return why + ("; without a time limit a run counts as a whole budget period" if unlimited else "")
        return ""

    def take(self, user: str, group: str, usd: float) -> None:
        for owner in (("user", user), ("group", group)):
            self.used[owner] = self.used.get(owner, 0.0) + usd


def share(node_gpus: int, node_cpus: float, gpus: int, cpus: float) -> float:
    """The share of a node one rank pays for (`cloud/cost.split` books it so): its GPUs over the
    node's, or, for a rank without GPUs, its CPUs over the node's, on a GPU node too. A rank
    without GPUs used to pay nothing on a GPU node, so a CPU-only job rented one past its
    owner's budget. Where the shares of the ranks on a node add up to more than the whole
    (every GPU taken and a CPU-only rank beside them), the books scale them down to it."""
    if node_gpus and gpus:
        return min(1.0, gpus / node_gpus)
    return min(1.0, cpus / node_cpus) if node_cpus else 1.0


@dataclass(frozen=True)
class NodePrice:
    """What a cloud node costs and how `share` divides it."""

    price_hourly: float
    gpus: int
    cpus: float


@dataclass(frozen=True)
class CloudGate:
    """What the last burst decision lets the scheduler do under owner budgets. A task of a
    budgeted owner it `refused` is kept off cloud nodes. Any other is planned, and where the plan
    puts it on cloud nodes, charged for them (their price in `nodes`; a node rented since, at the
    dearest offer, `unknown_hourly`) to its time limit, a whole `period_s` without one, less what
    the decision already took for it (`cloud_ok`: it may land on another node than the decision
    assumed): if its owners cannot pay, it is taken off them and waits (`check`). What it is
    charged is kept in `purses` until the next decision."""

    cloud_ok: Mapping[TaskKey, float]
    """The tasks the decision weighed and let through, and what it took from their owners."""
    purses: Purses
    """Each owner's use after the decision (added to by `check`)."""
    refused: Mapping[TaskKey, str] = field(default_factory=dict)
    nodes: Mapping[str, NodePrice] = field(default_factory=dict)
    unknown_hourly: float = math.inf
    """$/h of a cloud node the decision did not know (inf before the first decision: no budgeted
    owner's task takes one)."""
    period_s: float = 0.0
    """What a run without a time limit counts as (a whole budget period)."""
    deadlines: frozenset[TaskKey] = frozenset()
    """Tasks with a deadline: they may use the budgets' deadline reserve."""
    charged: set[TaskKey] = field(default_factory=set)
    """Tasks `check` charged to their owners (the scheduler passes several times between two
    decisions: a task is charged once)."""
    held: dict[TaskKey, str] = field(default_factory=dict)
    """Tasks `check` took off cloud nodes, with why: kept off them until the next decision."""
    avoid: Mapping[TaskKey, frozenset[str]] = field(default_factory=dict)
    """Held cloud nodes the decision found too dear for a task's owners, where it sent the task to
    a node they can pay: the scheduler keeps it off them too (else it would take the dear share
    there, be refused by `check`, and never reach the node rented for it)."""

    def why_not(self, key: TaskKey) -> str | None:
        """Why a task stays off cloud nodes until the next decision (None: it may go)."""
        return self.refused.get(key) or self.held.get(key)

    def check(self, t: PendingTask, on: Sequence[Placement]) -> str:
        """Charge `t` for the cloud placements `on` if its owners can pay ('' = charged or free
        to go), else say why not (and hold it off cloud nodes until the next decision)."""
        key = (t.job_id, t.task)
        if key in self.charged or not self.purses.budgeted(t.user, t.group):
            return ""
        hourly = 0.0
        for p in on:
            n = self.nodes.get(p.node)
            hourly += self.unknown_hourly if n is None else n.price_hourly * share(n.gpus, n.cpus, len(p.gpus), p.cpus)
        if math.isinf(hourly):
            why = self.held[key] = ("cloud: its owner has a cloud budget of their own, and the burst policy has not"
                                    " priced this cloud node yet")
            return why
        limit = t.runtime_s if t.runtime_s is not None and not t.estimated else None
        usd = hourly * (self.period_s if limit is None else limit) / 3600.0 if hourly else 0.0
        usd -= self.cloud_ok.get(key, 0.0)
        if usd > 1e-9:
            why = self.purses.refusal(t.user, t.group, usd, key in self.deadlines, limit is None)
            if why:
                self.held[key] = why
                return why
            self.purses.take(t.user, t.group, usd)
        self.charged.add(key)
        return ""


def closed_gate(users: Mapping[str, float], groups: Mapping[str, float], period: str) -> CloudGate | None:
    """The gate before the first burst decision (a controller just started): no budgeted owner's
    task that would pay a share of a cloud node takes one until a decision has weighed it. None
    without owner budgets."""
    if not users and not groups:
        return None
    return CloudGate({}, Purses(users, groups, period))


def plan_within(view: ClusterView, tasks: Sequence[PendingTask], policy: Policy,
                gate: CloudGate | None) -> ScheduleDecision:
    """`schedule.plan` under the owner budgets of `gate` (None: none set). A task the gate holds
    off cloud nodes is kept on-prem (placement 'any': its reason gains why) or waits (placement
    'cloud'). Then each task of a budgeted owner the plan puts on cloud nodes is checked
    (`CloudGate.check`); one its owners cannot pay loses its placements and waits with the
    reason: the plan gave it cloud nodes because nothing on-prem had room for it, so it would
    not have started on-prem either, and the next pass keeps it on-prem."""
    if gate is None:
        return plan(view, tasks, policy)
    out: list[PendingTask] = []
    waiting: list[Waiting] = []
    for t in tasks:
        why = gate.why_not((t.job_id, t.task)) if t.placement != "onprem" else None
        dear = gate.avoid.get((t.job_id, t.task))
        if dear:
            t = replace(t, avoid_nodes=t.avoid_nodes | dear)
        if why is None:
            out.append(t)
        elif t.placement == "any":
            out.append(replace(t, placement="onprem"))
        else:
            waiting.append(Waiting(t.job_id, t.task, why))
    d = plan(view, out, policy)
    cloud = {n.name for n in view.nodes if n.site == "cloud"}
    by_task: dict[TaskKey, list[Placement]] = {}
    for p in d.placements:
        by_task.setdefault((p.job_id, p.task), []).append(p)
    tasks_by = {(t.job_id, t.task): t for t in out}
    dropped: dict[TaskKey, str] = {}
    for key, ps in by_task.items():  # in the plan's (priority) order
        on = [p for p in ps if p.node in cloud]
        if on:
            why = gate.check(tasks_by[key], on)
            if why:
                dropped[key] = why
    placements = d.placements
    if dropped:
        placements = tuple(p for p in placements if (p.job_id, p.task) not in dropped)
        waiting += [Waiting(k[0], k[1], why) for k, why in dropped.items()]
    for w in d.waiting:
        key = (w.job_id, w.task)
        why = gate.why_not(key)
        dear = gate.avoid.get(key)
        if dear:  # the plan's reason counts only the nodes it may use: say why not the others
            off = (f"kept off {listing(sorted(dear))}: its share there is past its owners' cloud budget"
                   " (cloud.burst.user_budget_usd, group_budget_usd)")
            why = f"{off}; {why}" if why else off
        waiting.append(replace(w, reason=f"{w.reason}; {why}") if why else w)
    return replace(d, placements=placements, waiting=tuple(waiting))
