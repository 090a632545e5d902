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
from typing import Mapping, Sequence

from hybridctl.core.model import ClusterView, PendingTask, Policy, ScheduleDecision, Waiting
from hybridctl.core.schedule import plan

Owner = tuple[str, str]
"""('user', name) or ('group', name)."""

TaskKey = tuple[int, int]


def budget_of(budgets: Mapping[str, float], name: str) -> float | None:
    """The budget `budgets` sets for `name` ('*' for everyone not named); None = none."""
    got = budgets.get(name)
    return budgets.get("*") if got is None else got


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
    paced budget): others may use the rest."""

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


@dataclass(frozen=True)
class CloudGate:
    """What the last burst decision lets the scheduler do under owner budgets. A task of a
    budgeted owner takes a cloud node if the decision weighed its cost and let it (`cloud_ok`),
    or, where the decision did not weigh it (it waited on-prem, or became pending since), if its
    owners can still pay for it at the dearest GPU of the held nodes (`hourly_per_gpu`), to its
    time limit (a whole `period_s` without one): then that is taken from `purses` until the next
    decision. Tasks `refused` stay off cloud nodes."""

    cloud_ok: frozenset[TaskKey]
    purses: Purses
    """Each owner's use after the decision (mutated by `plan_within`)."""
    refused: Mapping[TaskKey, str] = field(default_factory=dict)
    hourly_per_gpu: float = 0.0
    """inf before the first decision: no budgeted owner's GPU task takes a cloud node."""
    period_s: float = 0.0
    """What a run without a time limit counts as (a whole budget period)."""
    let: set[TaskKey] = field(default_factory=set)
    """The tasks `lets` has charged to their owners: the scheduler passes several times between
    two decisions, and a task it let but could not place is not charged again."""

    def lets(self, t: PendingTask) -> bool:
        """Whether `t` may take a cloud node (see the class)."""
        key = (t.job_id, t.task)
        if key in self.cloud_ok or key in self.let or not self.purses.budgeted(t.user, t.group):
            return True
        if key in self.refused:
            return False
        usd = 0.0  # a task without GPUs pays no share of a node (cloud/cost.split: it is idle time)
        if t.resources.gpus:
            run = t.runtime_s if t.runtime_s is not None and not t.estimated else self.period_s
            usd = self.hourly_per_gpu * t.resources.gpus * max(t.num_nodes, 1) * run / 3600.0
        if self.purses.refusal(t.user, t.group, usd):
            return False
        self.purses.take(t.user, t.group, usd)
        self.let.add(key)
        return True


def closed_gate(users: Mapping[str, float], groups: Mapping[str, float], period: str) -> CloudGate | None:
    """The gate before the first burst decision (a controller just started): no budgeted owner's
    GPU task takes a cloud node until a decision has weighed it. None without owner budgets."""
    if not users and not groups:
        return None
    return CloudGate(frozenset(), Purses(users, groups, period), hourly_per_gpu=math.inf)


def plan_within(view: ClusterView, tasks: Sequence[PendingTask], policy: Policy,
                gate: CloudGate | None) -> ScheduleDecision:
    """`schedule.plan` under the owner budgets of `gate` (None: none set). A task the gate does
    not let onto cloud nodes is kept on-prem (placement 'any': its reason gains the refusal, if
    any) or waits (placement 'cloud'). Others are planned unchanged."""
    if gate is None:
        return plan(view, tasks, policy)
    out: list[PendingTask] = []
    waiting: list[Waiting] = []
    for t in tasks:
        if t.placement == "onprem" or gate.lets(t):
            out.append(t)
        elif t.placement == "any":
            out.append(replace(t, placement="onprem"))
        else:
            waiting.append(Waiting(t.job_id, t.task, gate.refused.get((t.job_id, t.task)) or
                                   "cloud: its owner's cloud budget has no room for it until the next burst decision"))
    d = plan(view, out, policy)
    if gate.refused:
        waiting += [replace(w, reason=f"{w.reason}; {gate.refused[(w.job_id, w.task)]}")
                    if (w.job_id, w.task) in gate.refused else w for w in d.waiting]
    else:
        waiting += d.waiting
    return replace(d, waiting=tuple(waiting))
