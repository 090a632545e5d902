"""Reservations for backfill (Slurm's sched/backfill, EASY style): when the task at the head of the
queue cannot start, find the earliest time enough of its nodes come free (from running tasks'
expected ends: time limits or estimates) and hold those nodes for it; a later task may use a held
node only if its time limit ends before the reservation starts (an estimate is not enough: the
user shapes it), or leaves the reservation what it needs.
`Backfill` is one pass's state of that, and of priority preemption (the victims are chosen by
core/preempt.py); `schedule.plan` calls it for every task that cannot start now.

Pure: the pass's `now` and the running tasks' expected ends come in through the ClusterView.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time
from typing import Any, Callable, Mapping, Sequence

from hybridctl.core import preempt as pre
from hybridctl.core.capacity import FreeFleet, FreeIndex, Models, Skip
from hybridctl.core.fit import cpu_phrase, gpu_phrase
from hybridctl.core.model import (
    ClusterView,
    PendingTask,
    Policy,
    Preemption,
    Resources,
    RunningTask,
    Waiting,
    task_label,
)

Shape = Any
"""schedule._Shape: what tasks of one shape share in a pass (res, num_nodes, sites, kinds) and
the caches backfill keeps on it (short, held_end, held_reason, skip_cache, preempt_fail)."""

_LISTED = 5  # nodes named in one reason before "and N more"
PREEMPT_TRIES = 8
"""Blocked tasks per pass that look for victims (each search visits every node with one); the
rest look in the next pass, which comes within seconds."""
_Victim = tuple[RunningTask, tuple[int, int], dict[str, int], float]
"""A preemptible running task's share of one node: (it, its key, its GPUs by model, work lost)."""

_EPS = 1e-9

#: One release of held resources: (time, node id, GPUs per model, CPUs, MiB).
Event = tuple[float, int, dict[str, int], float, int]


class Reservation:
    """Nodes held for one blocked task from `starts_at` on. `slack[node]` is what a task that
    would still run at `starts_at` may take from that node now without delaying it."""

    __slots__ = (
        "job_id", "task", "starts_at", "ends_at", "nodes", "gpus", "cpus", "mem", "slack",
        "preempting",
    )  # fmt: skip

    def __init__(
        self,
        job_id: int,
        task: int,
        starts_at: float,
        ends_at: float,
        nodes: list[int],
        need: tuple[int, float, int],
        slack: dict[int, list[float]],
        preempting: bool = False,
    ) -> None:
        self.job_id = job_id
        self.task = task
        self.starts_at = starts_at
        self.ends_at = ends_at
        """starts_at + the task's runtime; inf when unknown."""
        self.nodes = nodes
        self.gpus, self.cpus, self.mem = need
        """What it needs on each of its nodes."""
        self.slack = slack
        """node -> [GPUs, CPUs, MiB] a long task may still take there."""
        self.preempting = preempting
        """Held for a task whose preemptions are under way (starts_at = now)."""


class Timeline:
    """When the resources held now come free: running tasks' expected ends plus the ends of
    tasks placed earlier in this pass. Built on the first blocked task of a pass."""

    def __init__(self, fleet: FreeFleet, running: Sequence[RunningTask], now: float) -> None:
        self.fleet = fleet
        self.now = now
        self.ids = {n.name: i for i, n in enumerate(fleet.nodes)}
        self._models: dict[int, dict[int, str]] = {}
        events: list[Event] = []
        for rt in running:
            i = self.ids.get(rt.node)
            if i is None or rt.ends_at is None or not fleet.up[i]:
                continue
            events.append((max(rt.ends_at, now), i, self.by_model(i, rt.gpus), rt.cpus, rt.memory_mb))
        events.sort(key=lambda e: (e[0], e[1]))
        self.events = events
        self.added: list[Event] = []
        """Releases of tasks placed in this pass (unsorted)."""
        self._merged: tuple[int, list[Event]] = (0, events)
        """`events` and `added` in time order, as of len(added)."""

    def by_model(self, node: int, gpus: Sequence[int]) -> dict[str, int]:
        """GPUs per model among `gpus` (indices) of `node`."""
        installed = self.fleet.installed[node]
        if len(installed) == 1:  # the common case: one model on the node
            return {next(iter(installed)): len(gpus)}
        models = self._models.get(node)
        if models is None:
            models = self._models[node] = {s.index: s.model for s in self.fleet.nodes[node].gpus}
        out: dict[str, int] = {}
        for g in gpus:
            model = models.get(g, "")
            out[model] = out.get(model, 0) + 1
        return out

    def placed(self, node: int, gpus: Sequence[int], cpus: float, mem: int, ends_at: float) -> None:
        """A task placed in this pass on `node` frees these resources at `ends_at`."""
        if math.isfinite(ends_at):
            self.added.append((ends_at, node, self.by_model(node, gpus), cpus, mem))

    def earliest(
        self,
        g: int,
        c: float,
        m: int,
        kinds: Models,
        sites: Sequence[str],
        want: int,
        length: float,
        holds: Mapping[int, Sequence[Reservation]],
        avoid: frozenset[int] | None = None,
    ) -> tuple[float, list[int], dict[int, list[float]]] | None:
        """The earliest time `want` nodes of one site each have g GPUs of `kinds`, c CPUs and m
        MiB free for `length` seconds, past what earlier reservations (`holds`, per node) need
        while they overlap; those nodes, and what each has to spare then. None if the known ends
        never free enough (tasks without a limit or estimate never end).

        Free resources only grow with time, so a node without holds that fits once fits from then
        on; a held node is looked at again where a hold starts to overlap the window, and where it
        ends (a time map as coarse as the holds)."""
        fleet = self.fleet
        gpus: dict[int, int] = {}
        cpus: dict[int, float] = {}
        mem: dict[int, int] = {}
        site_of: dict[int, str] = {}
        fitting: dict[str, set[int]] = {}
        extra: list[Event] = []
        now = self.now

        def fits(i: int, t: float) -> list[float] | None:
            """What node i has to spare at t for the whole window, or None if it falls short."""
            ga, ca, ma = float(gpus[i]), cpus[i], float(mem[i])
            for r in holds.get(i, ()):
                if r.starts_at < t + length and r.ends_at > t:
                    ga, ca, ma = ga - r.gpus, ca - r.cpus, ma - r.mem
            if ga >= g and ca + _EPS >= c and ma >= m:
                return [ga - g, ca - c, ma - m]
            return None

        for site in sites:
            for i in fleet.site_nodes.get(site, ()):
                if not fleet.up[i] or (avoid and i in avoid):  # avoid: spot nodes, for a task off spot
                    continue
                free = fleet.free[i]
                k = sum(len(v) for x, v in free.items() if kinds is None or x in kinds)
                gpus[i], cpus[i], mem[i], site_of[i] = k, fleet.cpus[i], fleet.mem[i], site
                if fits(i, now) is not None:
                    fitting.setdefault(site, set()).add(i)
                for r in holds.get(i, ()):
                    if math.isfinite(length):  # just after the hold starts to overlap
                        extra.append((max(now, r.starts_at - length) + 1e-3, i, {}, 0.0, 0))
                    if math.isfinite(r.ends_at):  # the hold is over
                        extra.append((r.ends_at, i, {}, 0.0, 0))
        for site, nodes in fitting.items():
            if len(nodes) >= want:
                return self._chosen(now, sorted(nodes)[:want], fits)
        n, events = self._merged
        if n != len(self.added):
            events = sorted(self.events + self.added, key=_when)
            self._merged = (len(self.added), events)
        if extra:
            extra.sort(key=_when)
            events = list(heapq.merge(events, extra, key=_when))
        for t, i, counts, ec, em in events:
            if i not in gpus:
                continue
            if counts:
                gpus[i] += sum(n for x, n in counts.items() if kinds is None or x in kinds)
            cpus[i] += ec
            mem[i] += em
            nodes = fitting.setdefault(site_of[i], set())
            if fits(i, t) is None:
                nodes.discard(i)
                continue
            nodes.add(i)
            if len(nodes) >= want:
                return self._chosen(t, [i, *sorted(nodes - {i})[: want - 1]], fits)
        return None

    @staticmethod
    def _chosen(
        t: float, nodes: list[int], fits: Callable[[int, float], list[float] | None]
    ) -> tuple[float, list[int], dict[int, list[float]]]:
        spare = {}
        for i in nodes:
            s = fits(i, t)
            assert s is not None
            spare[i] = s
        return t, nodes, spare


def _when(e: Event) -> tuple[float, int]:
    return e[0], e[1]


def blocks(r: Reservation, node: int, g: int, c: float, m: int) -> bool:
    """Whether a task that still runs at r.starts_at would delay `r` by taking g GPUs, c CPUs and
    m MiB on `node` now."""
    s = r.slack.get(node)
    return s is not None and (g > s[0] or c > s[1] + _EPS or m > s[2])


def clock(ts: float) -> str:
    """'14:05' in the controller's local time (formatting a given time; no clock read)."""
    return time.strftime("%H:%M", time.localtime(ts))


class Backfill:
    """A pass's reservations and preemptions. The timeline of expected ends and the table of
    preemptible tasks are built on the first blocked task that needs them, so a pass where
    everything fits pays nothing for either."""

    def __init__(self, view: ClusterView, fleet: FreeFleet, policy: Policy) -> None:
        self.view, self.fleet, self.policy = view, fleet, policy
        self.now = view.now
        self.depth = max(0, policy.backfill_depth)
        self.reservations: list[Reservation] = []
        self.starts: list[float] = []
        self.by_start: list[Reservation] = []
        """The reservations in order of start (`starts` their starts), for `skip`."""
        self.made = 0
        """Reservations made for blocked tasks (those for preemptions do not count)."""
        self.held: dict[int, list[Reservation]] = {}
        """node -> the reservations that hold it."""
        self.first_start = math.inf
        self.version = 0
        """Bumped whenever what a held node has to spare changes."""
        self._timeline: Timeline | None = None
        self._placed: list[tuple[int, tuple[int, ...], float, int, float]] = []
        self._victims: dict[int, list[_Victim]] | None = None
        self._lowest = math.inf
        """Lowest priority among the preemptible running tasks (a stopping one counts as -inf)."""
        self.claimed: set[tuple[int, int]] = set()
        self.preempt: list[Preemption] = []
        self.tries = PREEMPT_TRIES

    # ---- bookkeeping for placements ----------------------------------------------------------

    def placed(
        self, node: int, gpus: tuple[int, ...], res: Resources, ends: float, hard: float | None = None
    ) -> None:
        """A task placed in this pass: it frees its resources at `ends` (expected: a limit or an
        estimate) for later reservations, and uses a held node's slack unless its time limit
        (`hard`, inf without one; default `ends`) ends before the reservation starts."""
        if self._timeline is not None:
            self._timeline.placed(node, gpus, res.cpus, res.memory_mb, ends)
        elif math.isfinite(ends):
            self._placed.append((node, gpus, res.cpus, res.memory_mb, ends))
        hard = ends if hard is None else hard
        for r in self.held.get(node, ()):
            if hard > r.starts_at:
                spare = r.slack[node]
                spare[0] -= res.gpus
                spare[1] -= res.cpus
                spare[2] -= res.memory_mb
                self.version += 1

    def delays(self, found: list[tuple[int, FreeIndex]], res: Resources, ends: float) -> bool:
        """Whether placing a task ending at `ends` on `found` would delay a reservation."""
        held = self.held
        for node, _ix in found:
            for r in held.get(node, ()):
                if ends > r.starts_at and blocks(r, node, res.gpus, res.cpus, res.memory_mb):
                    return True
        return False

    def skip(self, shape: Shape, ends: float) -> Skip:
        """Held nodes a task of `shape` ending at `ends` must pass over; None if none."""
        if ends <= self.first_start:
            return None
        # Only which reservations start before `ends` matters: the first n by start.
        n = bisect.bisect_left(self.starts, ends)
        cached = shape.skip_cache
        if cached is not None and cached[0] == self.version and cached[1] == n:
            return cached[2]
        res = shape.res
        g, c, m = res.gpus, res.cpus, res.memory_mb
        out = {i for r in self.by_start[:n] for i in r.nodes if blocks(r, i, g, c, m)}
        found = out or None
        shape.skip_cache = (self.version, n, found)
        return found

    def held_reason(self, skip: set[int]) -> str:
        r = min(
            (r for i in skip for r in self.held[i]), key=lambda r: (r.starts_at, r.job_id, r.task)
        )
        when = "now" if r.preempting else f"~{clock(r.starts_at)}"
        return (
            f"backfill: fits only on nodes held for job {task_label(r.job_id, r.task)}"
            f" (starts {when}) and would delay it"
        )

    def _hold(self, r: Reservation) -> None:
        self.reservations.append(r)
        at = bisect.bisect_right(self.starts, r.starts_at)
        self.starts.insert(at, r.starts_at)
        self.by_start.insert(at, r)
        for i in r.nodes:
            others = self.held.setdefault(i, [])
            for o in others:
                if o.starts_at < r.ends_at and r.starts_at < o.ends_at:
                    # Both hold the node at once: what o had to spare there is r's now.
                    spare = o.slack[i]
                    spare[0], spare[1], spare[2] = spare[0] - r.gpus, spare[1] - r.cpus, spare[2] - r.mem
            others.append(r)
        self.first_start = min(self.first_start, r.starts_at)
        self.version += 1

    # ---- a task that cannot start now ----------------------------------------------------------

    def blocked(self, t: PendingTask, shape: Shape, reason: str) -> tuple[Waiting, bool]:
        """Preempt for `t` if lower-priority preemptible tasks make room, else reserve for it
        while the depth allows; (its Waiting, whether it now holds resources)."""
        if (
            self.tries
            and t.priority > self._lowest_victim()
            and (shape.preempt_fail is None or t.priority > shape.preempt_fail)
        ):
            self.tries -= 1
            wait = self._preempt_for(t, shape)
            if wait is not None:
                return wait, True
            shape.preempt_fail = t.priority
        if self.made < self.depth:
            wait = self._reserve_for(t, shape)
            if wait is not None:
                return wait, False
        return Waiting(t.job_id, t.task, reason), False

    def _timeline_(self) -> Timeline:
        if self._timeline is None:
            self._timeline = Timeline(self.fleet, self.view.running, self.now)
            for node, gpus, c, m, ends in self._placed:
                self._timeline.placed(node, gpus, c, m, ends)
        return self._timeline

    def _reserve_for(self, t: PendingTask, shape: Shape) -> Waiting | None:
        res, fleet = shape.res, self.fleet
        sites = [s for s in shape.sites if s in fleet.site_nodes]
        length = t.runtime_s if t.runtime_s is not None else math.inf
        need = (res.gpus, res.cpus, res.memory_mb)
        got = self._timeline_().earliest(
            *need, shape.kinds, sites, shape.num_nodes, length, self.held, shape.avoid
        )
        if got is None:
            return None
        starts, nodes, slack = got
        self._hold(Reservation(t.job_id, t.task, starts, starts + length, nodes, need, slack))
        self.made += 1
        names = listing([fleet.nodes[i].name for i in nodes])
        each = " each" if len(nodes) > 1 else ""
        what = gpu_phrase(res.gpus, None) if res.gpus else cpu_phrase(res.cpus)
        when = f"~{clock(starts)}" if starts > self.now else "as soon as possible"
        return Waiting(
            t.job_id,
            t.task,
            f"reserved: starts {when} on {names} ({what}{each})",
            starts,
            tuple(fleet.nodes[i].name for i in nodes),
        )

    def _lowest_victim(self) -> float:
        if self._victims is None:
            self._victims = {}
            tl = None
            for rt in self.view.running:
                if not (rt.stopping or pre.preemptible(rt, self.policy)):
                    continue
                tl = tl or self._timeline_()
                i = tl.ids.get(rt.node)
                if i is None or not self.fleet.up[i]:
                    continue
                lost = 0.0 if rt.stopping else pre.work_lost(rt, self.now)
                victim = (rt, (rt.job_id, rt.task), tl.by_model(i, rt.gpus), lost)
                self._victims.setdefault(i, []).append(victim)
                self._lowest = min(self._lowest, -math.inf if rt.stopping else rt.priority)
        return self._lowest

    def _preempt_for(self, t: PendingTask, shape: Shape) -> Waiting | None:
        res, fleet = shape.res, self.fleet
        kinds = shape.kinds
        need = (res.gpus, res.cpus, res.memory_mb)
        by_site: dict[str, list[pre.NodeChoice]] = {}
        assert self._victims is not None
        claimed, prio = self.claimed, t.priority
        for i, running in self._victims.items():
            site = fleet.nodes[i].site
            if site not in shape.sites or i in self.held or (shape.avoid and i in shape.avoid):
                continue
            cands = []
            for rt, key, counts, lost in running:
                if not (rt.stopping or rt.priority < prio) or key in claimed:
                    continue
                if kinds is None:
                    g = len(rt.gpus)
                else:
                    g = sum(n for x, n in counts.items() if x in kinds)
                cands.append(
                    pre.Candidate(key, rt.priority, g, rt.cpus, rt.memory_mb, lost, rt.stopping)
                )
            if not cands:
                continue
            free = fleet.free[i]
            k = sum(len(v) for x, v in free.items() if kinds is None or x in kinds)
            choice = pre.on_node(i, (k, fleet.cpus[i], fleet.mem[i]), need, cands)
            if choice is not None:
                by_site.setdefault(site, []).append(choice)
        if shape.num_nodes > 1:
            # A gang may also use nodes that already have room (no victims there).
            for site, choices in by_site.items():
                have = {ch.node for ch in choices}
                for i in fleet.site_nodes.get(site, ()):
                    if i in have or i in self.held or not fleet.up[i]:
                        continue
                    free = fleet.free[i]
                    k = sum(len(v) for x, v in free.items() if kinds is None or x in kinds)
                    choice = pre.on_node(i, (k, fleet.cpus[i], fleet.mem[i]), need, ())
                    if choice is not None:
                        choices.append(choice)
        best: list[pre.NodeChoice] | None = None
        for choices in by_site.values():
            picked = pre.cheapest(choices, shape.num_nodes)
            if picked is not None and (
                best is None or sum(c.lost for c in picked) < sum(c.lost for c in best)
            ):
                best = picked
        if best is None or not any(ch.victims for ch in best):
            return None
        victims: dict[tuple[int, int], pre.Candidate] = {}
        slack: dict[int, list[float]] = {}
        for ch in best:
            free = fleet.free[ch.node]
            k = sum(len(v) for x, v in free.items() if kinds is None or x in kinds)
            k += sum(v.gpus for v in ch.victims)
            c = fleet.cpus[ch.node] + sum(v.cpus for v in ch.victims)
            m = fleet.mem[ch.node] + sum(v.memory_mb for v in ch.victims)
            slack[ch.node] = [k - res.gpus, c - res.cpus, m - res.memory_mb]
            for v in ch.victims:
                victims.setdefault(v.key, v)
        nodes = [ch.node for ch in best]
        ends = self.now + t.runtime_s if t.runtime_s is not None else math.inf
        self._hold(Reservation(t.job_id, t.task, self.now, ends, nodes, need, slack, True))
        self.claimed.update(victims)
        me = task_label(t.job_id, t.task)
        names = listing([fleet.nodes[i].name for i in nodes])
        for key, v in sorted(victims.items()):
            if not v.stopping:
                self.preempt.append(
                    Preemption(
                        key[0],
                        key[1],
                        t.job_id,
                        t.task,
                        f"preempted by job {me} (priority {t.priority}) on {names}",
                    )
                )
        labels = ", ".join(task_label(*k) for k in sorted(victims))
        jobs = "job" if len(victims) == 1 else "jobs"
        return Waiting(
            t.job_id,
            t.task,
            f"preempting: {jobs} {labels} on {names}; starts once stopped",
            self.now,
            tuple(fleet.nodes[i].name for i in nodes),
        )


def listing(names: list[str]) -> str:
    """'a, b, c, d, e and 3 more'."""
    more = len(names) - _LISTED
    return ", ".join(names[:_LISTED]) + (f" and {more} more" if more > 0 else "")
