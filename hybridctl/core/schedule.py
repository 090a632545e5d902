"""One scheduling pass: from the fleet's free resources, the pending tasks and the policy, decide
which tasks start where, and give every other task a one-line reason. Pure: no I/O, no clock.

Greedy in priority order, with backfill (core/backfill.py): the first `Policy.backfill_depth`
tasks that cannot start get a reservation at the earliest time their nodes come free, and a later
task starts only where it does not delay one. A task that would otherwise wait may instead
preempt lower-priority preemptible tasks (core/preempt.py); the decision lists them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

from hybridctl.core import fit
from hybridctl.core.backfill import Backfill
from hybridctl.core.capacity import FreeFleet, FreeIndex, Misses, Skip
from hybridctl.core.fairshare import decayed_usage, priority_key
from hybridctl.core.locality import LocalityView
from hybridctl.core.fit import (
    cpu_phrase,
    fmt_mem,
    gpu_phrase,
    never_fits,
    never_fits_grouped,
    request_phrase,
)
from hybridctl.core.model import (
    ClusterView,
    NodeView,
    PendingTask,
    Placement,
    Policy,
    Resources,
    ScheduleDecision,
    Waiting,
    task_label,
)

__all__ = ["plan", "window", "never_fits", "decayed_usage", "priority_key"]

_SITES = {"onprem": ("onprem",), "cloud": ("cloud",), "any": ("onprem", "cloud")}
_SITE_WORDS = {"onprem": "on-prem", "cloud": "cloud"}
_LISTED = 5  # nodes named in one reason before "and N more"

_ShapeKey = tuple[int, "str | None", float, int, int, str]


class _Shape:
    """What all tasks with the same resources, node count and placement share within a pass."""

    __slots__ = (
        "res",
        "num_nodes",
        "gpus_total",
        "sites",
        "kinds",
        "phases",
        "reason",
        "short",
        "held_end",
        "held_reason",
        "skip_cache",
        "preempt_fail",
        "avoid",
        "lacks",
    )
    # Backfill (core/backfill.py) reads res, num_nodes, sites, kinds and keeps its per-shape
    # caches here: short, held_end/held_reason, skip_cache, preempt_fail.

    def __init__(self, fleet: FreeFleet, res: Resources, num_nodes: int, placement: str,
                 avoid: frozenset[int] | None = None, lacks: frozenset[int] | None = None,
                 requires: frozenset[str] = frozenset()) -> None:
        self.res = res
        self.avoid = avoid
        """Nodes the shape passes over (None: none): spot nodes for a task that may not use spot,
        and the nodes in `lacks`."""
        self.lacks = lacks
        """Nodes without a feature the task requires (PendingTask.requires): passed over even
        where spot nodes are looked at."""
        self.num_nodes = max(num_nodes, 1)
        self.gpus_total = res.gpus * self.num_nodes
        self.sites = _SITES.get(placement, ())
        self.kinds = fleet.models_for(res.gpu_type) if res.gpus and res.gpu_type else None
        """GPU models the task may use; None = any."""
        self.reason: str | None = None
        """Set once a task of this shape could not be placed: why the later ones wait."""
        self.short = False
        """`reason` is a shortage of free resources (not the fleet's make-up): it may be met by a
        reservation or a preemption."""
        self.held_end = math.inf
        """A task of this shape ending this late (or later) fits only on nodes held for
        reservations; `held_reason` says so."""
        self.held_reason = ""
        self.skip_cache: tuple[int, int, Skip] | None = None
        """(reservations version, how many start before the task ends, held nodes such a task
        must pass over)."""
        self.preempt_fail: int | None = None
        """No preemption made room for a task of this priority; lower ones need not look."""
        self.phases: list[list[FreeIndex]] = []
        """Indexes to search, in order of preference; the best fit within a phase wins."""
        if not fleet.nodes:
            self.reason = "no nodes in the fleet yet"
        elif not self.sites:
            self.reason = f"placement: '{placement}' is not one of onprem, cloud, any"
        elif not any(site in fleet.site_nodes for site in self.sites):
            self.reason = f"no {_SITE_WORDS[self.sites[0]]} nodes yet"
        elif requires and lacks and all(i in lacks for site in self.sites for i in fleet.site_nodes.get(site, ())):
            self.reason = requires_reason(requires, self.sites)
        for site in self.sites:
            if site not in fleet.site_nodes:
                continue
            if res.gpus > 1 and self.kinds is None:
                # One model per job where any model has enough; mixing models is the fallback.
                models = sorted(fleet.site_models.get(site, ()))
                if models:
                    self.phases.append([fleet.index(site, frozenset((m,))) for m in models])
            self.phases.append([fleet.index(site, self.kinds)])

    def find(
        self, fleet: FreeFleet, misses: Misses, skip: Skip = None, spot: bool = False
    ) -> list[tuple[int, FreeIndex]] | None:
        """Nodes (one per rank) and the index whose models to take, or None if it fits nowhere
        but on the nodes in `skip` (then `misses` says what the nodes with the GPUs had).
        Spot nodes the shape must avoid are passed over unless `spot`."""
        if self.avoid and not spot:
            skip = (skip or set()) | self.avoid
        elif self.lacks:
            skip = (skip or set()) | self.lacks
        g, c, m, want = self.res.gpus, self.res.cpus, self.res.memory_mb, self.num_nodes
        cpus, mem = fleet.cpus, fleet.mem
        for phase in self.phases:
            if want == 1:
                best: tuple[int, int] | None = None
                best_ix = phase[0]
                for ix in phase:
                    if ix.top >= g:
                        hit = ix.first(g, cpus, mem, c, m, misses, skip)
                        if hit is not None and (best is None or hit < best):
                            best, best_ix = hit, ix
                if best is not None:
                    return [(best[1], best_ix)]
                continue
            gang: tuple[tuple[int, list[int]], FreeIndex, list[int]] | None = None
            for ix in phase:
                if ix.top < g or ix.supply(g) < want:
                    continue
                picks = ix.pick(g, want, cpus, mem, c, m, misses, skip)
                if len(picks) == want:
                    nodes = [n for _, n in picks]
                    key = (sum(k for k, _ in picks), nodes)
                    if gang is None or key < gang[0]:
                        gang = (key, ix, nodes)
            if gang is not None:
                return [(n, gang[1]) for n in gang[2]]
        return None


def plan(view: ClusterView, pending: Sequence[PendingTask], policy: Policy) -> ScheduleDecision:
    """Choose which pending tasks start now, on which nodes and GPUs; say why the others wait.

    Tasks are taken in `priority_key` order. Each is checked for unmet dependencies, its array's
    throttle, the user and group GPU quotas, then placed on its best-fit node(s), or waits.
    Placement 'any' tries on-prem nodes first and cloud nodes only when none on-prem fits.
    A task that would delay a reservation on its best fit looks past the held nodes. One that
    waits for lack of free resources may preempt lower-priority preemptible tasks (then it holds
    their nodes and counts against quotas now), else may get a reservation (`view.running`'s
    expected ends say when; at most `policy.backfill_depth` per pass).
    """
    usage = view.usage_by_user
    ordered = sorted(pending, key=lambda t: priority_key(t, usage))
    nodes = view.nodes
    if view.exclusive_nodes:  # Slurm's --exclusive: a node running such a task takes nothing else
        nodes = tuple(_full(n) if n.name in view.exclusive_nodes else n for n in nodes)
    fleet = FreeFleet(
        nodes,
        min_cpus=min((t.resources.cpus for t in pending), default=0.0),
        min_mem=min((t.resources.memory_mb for t in pending), default=0),
    )
    placements: list[Placement] = []
    waiting: list[Waiting] = []
    user_used = dict(view.gpus_in_use_by_user)
    group_used = dict(view.gpus_in_use_by_group)
    array_running = dict(view.running_tasks_by_array)
    user_quota, group_quota = policy.user_gpu_quota, policy.group_gpu_quota
    user_default, group_default = user_quota.get("*"), group_quota.get("*")
    shapes: dict[_ShapeKey, _Shape] = {}
    bf = Backfill(view, fleet, policy)
    full: set[_ShapeKey] = set()  # accelerator candidates that found no room in this pass
    # Exclusive tasks pass over every node holding a task (now, or placed in this pass).
    node_ix = {n.name: i for i, n in enumerate(fleet.nodes)}
    occupied = {node_ix[n] for n in view.busy_nodes if n in node_ix}
    spot_nodes = frozenset(i for i, n in enumerate(fleet.nodes) if n.market == "spot") or None
    seen: dict[_ShapeKey, tuple[dict[int, bool], set[int]]] = {}  # per shape: nodes it may use, nodes full for it
    lacking: dict[frozenset[str], frozenset[int]] = {}  # per requirement set: the nodes that lack it

    for t in ordered:
        if t.deps_unmet:
            waiting.append(Waiting(t.job_id, t.task, t.deps_reason or _dependency_reason(t.deps_unmet)))
            continue
        throttle = t.array_throttle
        if throttle is not None and array_running.get(t.job_id, 0) >= throttle:
            running = array_running.get(t.job_id, 0)
            reason = f"array throttle: {running} of {throttle} tasks running"
            waiting.append(Waiting(t.job_id, t.task, reason))
            continue
        res = t.resources
        # Spot nodes are off limits to a task that may not use spot (use_spot: false, or the
        # burst policy's `no_spot`): its own shape, which passes over them.
        avoid = spot_nodes if spot_nodes and (t.no_spot or not res.use_spot) else None
        avoid_tag = ("no-spot" if not res.use_spot else "spot-averse") if avoid is not None else ""
        lacks = None
        if t.requires:  # e.g. podman for an image job: nodes that do not offer it are passed over
            lacks = lacking.get(t.requires)
            if lacks is None:
                lacks = lacking[t.requires] = frozenset(
                    i for i, n in enumerate(fleet.nodes) if not t.requires <= n.features)
            avoid = avoid | lacks if avoid is not None else lacks
        if t.avoid_nodes:  # held nodes its owners cannot pay: passed over always, as a lack is
            dear = frozenset(node_ix[n] for n in t.avoid_nodes if n in node_ix)
            lacks = lacks | dear if lacks is not None else dear
            avoid = avoid | dear if avoid is not None else dear
        for cand in fit.candidates(res) if res.alternatives else ():  # the first candidate that fits now
            k = (cand.gpus, cand.gpu_type, cand.cpus, cand.memory_mb, t.num_nodes, t.placement)
            if avoid is not None:
                k = (*k, avoid_tag, t.requires, t.avoid_nodes)  # type: ignore[assignment]
            s = shapes.get(k) or shapes.setdefault(
                k, _Shape(fleet, cand, t.num_nodes, t.placement, avoid, lacks, t.requires))
            if k not in full and s.reason is None and s.find(fleet, Misses()) is not None:
                res = cand
                break
            full.add(k)  # free capacity only shrinks within a pass: no need to look again
        else:
            res = fit.candidates(res)[0]
        # Plain fields hash and compare faster than the dataclass itself.
        key = (res.gpus, res.gpu_type, res.cpus, res.memory_mb, t.num_nodes, t.placement)
        if t.exclusive:  # its own shape: its reasons are not those of a sharing task
            key = (*key, "exclusive")  # type: ignore[assignment]
        if avoid is not None:
            key = (*key, avoid_tag, t.requires, t.avoid_nodes)  # type: ignore[assignment]
        shape = shapes.get(key)
        if shape is None:
            shape = shapes[key] = _Shape(fleet, res, t.num_nodes, t.placement, avoid, lacks, t.requires)
        need = shape.gpus_total
        if need:
            limit = user_quota.get(t.user, user_default)
            used = user_used.get(t.user, 0)
            if limit is not None and used + need > limit:
                waiting.append(
                    Waiting(t.job_id, t.task, _quota_reason("user", t.user, used, limit, need))
                )
                continue
            limit = group_quota.get(t.group, group_default)
            used = group_used.get(t.group, 0)
            if limit is not None and used + need > limit:
                waiting.append(
                    Waiting(t.job_id, t.task, _quota_reason("group", t.group, used, limit, need))
                )
                continue
        held = False
        if shape.reason is not None:
            if shape.short:
                wait, held = bf.blocked(t, shape, shape.reason)
            else:
                wait = Waiting(t.job_id, t.task, shape.reason)
            waiting.append(wait)
            if not held:
                continue
        else:
            expected = bf.now + t.runtime_s if t.runtime_s is not None else math.inf
            # Only a time limit lets a task start ahead of a reservation on what it needs (as
            # Slurm): an estimate comes from the user's own runs (20 trivial runs named 'train'
            # make one of ~1 s). Estimates still say when it frees its resources (`expected`).
            ends = math.inf if t.estimated else expected
            found = skip = None
            known = shape.held_reason and ends >= shape.held_end
            alone = set(occupied) if t.exclusive else None
            if not known:
                misses = Misses()
                found = shape.find(fleet, misses, alone)
                if found is not None and ends > bf.first_start and bf.delays(found, res, ends):
                    # The best fit is held for a reservation this task would delay: look again
                    # past every such node (rare: few nodes are held).
                    skip = bf.skip(shape, ends)
                    misses = Misses()
                    found = shape.find(fleet, misses, skip if alone is None else (skip or set()) | alone)
            if found is None and (known or skip):
                # It fits now, but only on nodes held for reservations it would delay.
                if not known:
                    assert skip is not None
                    shape.held_end, shape.held_reason = ends, bf.held_reason(skip)
                wait, held = bf.blocked(t, shape, shape.held_reason)
                waiting.append(wait)
                if not held:
                    continue
            elif found is None and alone is not None:
                # Exclusive: no reservation or preemption is made for it (docs/ARCHITECTURE.md
                # 'Slurm batch scripts'); it starts when a node that fits is empty.
                reason, _ = _diagnose(fleet, shape, misses)
                if shape.find(fleet, Misses()) is not None:
                    reason = "exclusive: every node that fits runs other jobs"
                shape.reason = reason
                waiting.append(Waiting(t.job_id, t.task, reason))
                continue
            elif found is None and shape.avoid and shape.find(fleet, Misses(), alone, spot=True) is not None:
                # It would fit now, but only on spot nodes (rented for other jobs): it waits for
                # on-prem or on-demand room; no reservation or preemption is made for it.
                shape.reason = reason = _spot_reason(t)
                waiting.append(Waiting(t.job_id, t.task, reason))
                continue
            elif found is None:
                # Free capacity only shrinks during a pass, so every later task of this shape is
                # blocked too: diagnose once, and point the others at this task.
                reason, shortage = _diagnose(fleet, shape, misses)
                shape.reason = (
                    f"priority: behind job {task_label(t.job_id, t.task)}" if shortage else reason
                )
                shape.short = shortage
                wait, held = bf.blocked(t, shape, reason) if shortage else (None, False)
                waiting.append(wait or Waiting(t.job_id, t.task, reason))
                if not held:
                    continue
            else:
                why = ""
                if view.locality is not None and t.need is not None and t.need.total and len(found) == 1 \
                        and not t.exclusive:
                    warm, why = _warm_choice(view.locality, fleet, node_ix, shape, key, t, found[0], bf, res, ends,
                                             view.now, seen.setdefault(key, ({}, set())))
                    if warm is None:  # worth waiting a little for a busy node that holds its world
                        waiting.append(Waiting(t.job_id, t.task, why))
                        continue
                    found = warm
                    name = fleet.nodes[found[0][0]].name
                    view.locality.hold(name, t.need)
                    if t.runtime_s is not None:  # busy now: a later task may wait for it (its expected end)
                        loc_free = view.locality.free_in
                        loc_free[name] = min(loc_free.get(name, math.inf), t.runtime_s)
                for rank, (node, ix) in enumerate(found):
                    gpus = fleet.take(node, ix, res.gpus, res.cpus, res.memory_mb)
                    name = fleet.nodes[node].name
                    placements.append(
                        Placement(t.job_id, t.task, name, gpus, res.cpus, res.memory_mb, rank,
                                  res.gpu_type if t.resources.alternatives else None, why)
                    )
                    bf.placed(node, gpus, res, expected, ends)
                    occupied.add(node)
                    if t.exclusive:  # nothing else on it this pass: book what is left of it
                        fleet.take(node, ix, 0, max(fleet.cpus[node], 0.0), max(fleet.mem[node], 0))
        # Placed, or about to have what it preempted: it counts against quotas and throttles.
        if need:
            user_used[t.user] = user_used.get(t.user, 0) + need
            group_used[t.group] = group_used.get(t.group, 0) + need
        if throttle is not None:
            array_running[t.job_id] = array_running.get(t.job_id, 0) + 1
    return ScheduleDecision(tuple(placements), tuple(waiting), tuple(bf.preempt))


def _warm_choice(
    loc: LocalityView,
    fleet: FreeFleet,
    names: dict[str, int],
    shape: _Shape,
    key: _ShapeKey,
    t: PendingTask,
    cold: tuple[int, FreeIndex],
    bf: Backfill,
    res: Resources,
    ends: float,
    now: float,
    seen: tuple[dict[int, bool], set[int]],
) -> tuple[list[tuple[int, FreeIndex]] | None, str]:
    """Cache-aware placement of a single-node task the scheduler placed cache-blind on `cold`:
    the warm node that moves least of its world, or wait for a busy one (core/locality.py). Returns
    (where, why) or (None, why it waits). `seen` is kept per shape for the pass: which nodes it
    may ever use, and which are full for it (free capacity only shrinks within a pass)."""
    g, c, m = res.gpus, res.cpus, res.memory_mb
    cpus, mem = fleet.cpus, fleet.mem
    usable, full = seen
    hit: list[tuple[int, FreeIndex]] = []

    def fits(name: str) -> bool | None:
        i = names.get(name)
        if i is None:
            return None
        ok = usable.get(i)
        if ok is None:
            node = fleet.nodes[i]
            ok = usable[i] = (
                node.site in shape.sites and fleet.up[i] and node.cpus_total >= c and node.memory_total_mb >= m
                and not (shape.avoid and i in shape.avoid)
                and sum(n for x, (_, n) in fleet.installed[i].items() if shape.kinds is None or x in shape.kinds) >= g
            )
        if not ok:
            return None
        if i in full:
            return False
        if cpus[i] + 1e-9 >= c and mem[i] >= m:
            for phase in shape.phases:
                for ix in phase:
                    if ix.count[i] >= g:
                        if bf.delays([(i, ix)], res, ends):
                            return False  # held for a reservation this task would delay (not for all tasks)
                        hit[:] = [(i, ix)]
                        return True
        full.add(i)
        return False

    alive, free = fleet.alive, fleet.free

    def gone(name: str) -> bool:  # no task of its kind (GPU or not) fits there any more this pass
        i = names.get(name)
        return i is None or not alive[i] or (g > 0 and not any(free[i].values()))

    assert t.need is not None
    d = loc.place(t.need, fleet.nodes[cold[0]].name, fits, gone, g > 0, max(0.0, now - t.submitted_at),
                  t.job_id, t.runtime_s)
    if d.node is None:
        return None, d.reason
    if hit and fleet.nodes[hit[0][0]].name == d.node:
        return [hit[0]], d.reason
    return [cold], d.reason


def _full(n: NodeView) -> NodeView:
    """`n` with nothing free (it runs an exclusive task)."""
    return replace(n, gpus=tuple(replace(g, free=False) for g in n.gpus), cpus_free=0.0, memory_free_mb=0)


def window(view: ClusterView) -> Callable[[PendingTask], int]:
    """How many of one job's pending tasks, in index order, a pass must see for `plan` to decide
    exactly what it would over all of them (Slurm keeps an array as one record until its tasks
    start; this is the equivalent). A job's tasks share priority, user and shape, so they are
    contiguous in `priority_key` order and once one waits every later one waits too: at most as
    many start as its throttle and the fleet's free GPUs, CPUs and memory allow, the first that
    cannot is told why, and the second gets the reason all the later ones would. The bound is
    computed once per pass from `view`; the function is called once per job."""
    free_gpus = sum(1 for n in view.nodes for s in n.gpus if s.free)
    free_cpus = sum(max(0.0, n.cpus_free) for n in view.nodes)
    free_mem = sum(max(0, n.memory_free_mb) for n in view.nodes)
    running = view.running_tasks_by_array

    def size(t: PendingTask) -> int:
        res, nodes = t.resources, max(t.num_nodes, 1)
        bounds = []
        if gpus := min(c.gpus for c in fit.candidates(res)):  # the smallest candidate
            bounds.append(free_gpus // (gpus * nodes))
        if res.cpus > 0:
            bounds.append(int(free_cpus / (res.cpus * nodes)) + 1)  # +1: FreeFleet's float tolerance
        if res.memory_mb > 0:
            bounds.append(free_mem // (res.memory_mb * nodes))
        if t.array_throttle is not None:
            bounds.append(max(0, t.array_throttle - running.get(t.job_id, 0)))
        if t.deps_unmet:
            bounds.append(0)
        if not bounds:  # a task that asks for nothing: no bound but the job's own size
            return 2**62
        return min(bounds) + 2

    return size


def _dependency_reason(deps: tuple[int, ...]) -> str:
    jobs = ", ".join(str(d) for d in deps)
    return f"dependency: waiting for job{'s' if len(deps) > 1 else ''} {jobs}"


def _quota_reason(kind: str, who: str, used: int, limit: int, need: int) -> str:
    reason = f"quota: {kind} {who} uses {used} of {limit} GPUs"
    return reason if used >= limit else f"{reason}, this task needs {need}"


def _diagnose(fleet: FreeFleet, shape: _Shape, misses: Misses) -> tuple[str, bool]:
    """Why `shape` fits nowhere, and whether that is a shortage of free resources (which later
    tasks of the same shape are said to wait behind) rather than the fleet's make-up."""
    res, want, g = shape.res, shape.num_nodes, shape.res.gpus
    sites = [s for s in shape.sites if s in fleet.site_nodes]
    indexes = [fleet.index(s, shape.kinds) for s in sites]
    installed = max(sum(ix.static_all[g:]) for ix in indexes)
    if (
        installed < want
        or res.cpus > max(fleet.max_cpus[s] for s in sites)
        or res.memory_mb > max(fleet.max_mem[s] for s in sites)
    ):
        message = never_fits_grouped(fleet.shapes(sites), res, want) or _one_site(shape)
        return f"resources: {message}", False
    usable = max(sum(ix.static_up[g:]) for ix in indexes)
    if usable < want:
        return _down_reason(fleet, sites, shape, usable), False
    gpu_type = res.gpu_type if shape.kinds is not None else None
    gpus = gpu_phrase(g, gpu_type, free=True)
    with_gpus = max(ix.supply(g) + sum(ix.dropped[g:]) for ix in indexes)
    if with_gpus < want:
        if want == 1 or not with_gpus:
            extra = "" if want == 1 else f" (the job needs {want} such nodes)"
            return f"resources: no node has {gpus}{extra}", True
        have = "node has" if with_gpus == 1 else "nodes have"
        return f"resources: only {with_gpus} {have} {gpus}, the job needs {want}", True
    if want == 1:
        # Every node with the GPUs was looked at by the failed search, or dropped earlier.
        cpus_ok = misses.cpus or any(max(ix.dropped_cpus[g:]) + 1e-9 >= res.cpus for ix in indexes)
        mem_ok = misses.memory or any(max(ix.dropped_mem[g:]) >= res.memory_mb for ix in indexes)
        return f"resources: {_lacking(shape, gpus, int(cpus_ok), int(mem_ok))}", True
    return f"resources: {_cpu_memory_shortage(fleet, sites, shape, gpus)}", True


def _cpu_memory_shortage(fleet: FreeFleet, sites: list[str], shape: _Shape, gpus: str) -> str:
    """Enough nodes have the free GPUs for a multi-node job: count which have its CPUs, which
    its memory (one pass over the nodes; gangs are few)."""
    res = shape.res
    cpu_ok = mem_ok = 0
    for i, node in enumerate(fleet.nodes):
        if node.site not in sites or not fleet.up[i]:
            continue
        free = fleet.free[i]
        k = sum(len(idx) for x, idx in free.items() if shape.kinds is None or x in shape.kinds)
        if k >= res.gpus:
            cpu_ok += fleet.cpus[i] + 1e-9 >= res.cpus
            mem_ok += fleet.mem[i] >= res.memory_mb
    return _lacking(shape, gpus, cpu_ok, mem_ok)


def _lacking(shape: _Shape, gpus: str, cpu_ok: int, mem_ok: int) -> str:
    """'no node with 4 free GPUs also has 32 free CPUs', given how many nodes with the GPUs
    have the CPUs (`cpu_ok`) and how many the memory (`mem_ok`)."""
    res, want = shape.res, shape.num_nodes
    cpu_short, mem_short = cpu_ok < want, mem_ok < want
    lacking = []
    # Neither short alone means each exists, but not on the same node: name both.
    if cpu_short or not mem_short:
        lacking.append(cpu_phrase(res.cpus, free=True))
    if res.memory_mb and (mem_short or not cpu_short):
        lacking.append(f"{fmt_mem(res.memory_mb)} free memory")
    also = " and ".join(lacking)
    nodes = "no node" if want == 1 else f"fewer than {want} nodes"
    if not res.gpus:
        return f"{nodes} {'has' if want == 1 else 'have'} {also}"
    return f"{nodes} with {gpus} also {'has' if want == 1 else 'have'} {also}"


def _one_site(shape: _Shape) -> str:
    want = shape.num_nodes
    return (
        f"the {want} nodes of a job must be on one site, and no site has {want}"
        f" that can hold {request_phrase(shape.res)}"
    )


def _down_reason(fleet: FreeFleet, sites: list[str], shape: _Shape, usable: int) -> str:
    """The nodes big enough for the task are not accepting jobs or have too few healthy GPUs."""
    res, kinds = shape.res, shape.kinds
    listed = []
    for i, node in enumerate(fleet.nodes):
        if node.site not in sites:
            continue
        slots = [s for s in node.gpus if kinds is None or s.model in kinds]
        if (
            len(slots) < res.gpus
            or node.cpus_total < res.cpus
            or node.memory_total_mb < res.memory_mb
        ):
            continue
        if not fleet.up[i]:
            listed.append(f"{node.name} ({node.state.value})")
            continue
        sick = sum(not s.healthy for s in slots)
        if len(slots) - sick < res.gpus:
            listed.append(f"{node.name} ({sick} GPU{'' if sick == 1 else 's'} unhealthy)")
    if not listed:
        # Every node that could hold it is up and healthy: a gang spread over two sites.
        message = never_fits_grouped(fleet.shapes(sites), res, shape.num_nodes)
        return f"resources: {message or _one_site(shape)}"
    more = len(listed) - _LISTED
    names = ", ".join(listed[:_LISTED]) + (f" and {more} more" if more > 0 else "")
    if usable:
        return (
            f"only {usable} of the {shape.num_nodes} nodes the job needs"
            f" {'is' if usable == 1 else 'are'} up and healthy;"
            f" the others that fit are drained or unhealthy: {names}"
        )
    return f"all nodes that fit are drained or unhealthy: {names}"


REQUIRES_WORDS = {"podman": "podman (image_id: docker:)"}


def requires_reason(requires: frozenset[str], sites: Sequence[str] = ("onprem", "cloud")) -> str:
    """Why a task waits when no node of its sites offers what it requires."""
    what = ", ".join(REQUIRES_WORDS.get(r, r) for r in sorted(requires))
    where = " or ".join(_SITE_WORDS[s] for s in sites)
    return f"requires: it needs {what} on its node, and no {where} node offers it (`hybridctl nodes`)"


def _spot_reason(t: PendingTask) -> str:
    """Why a task that fits only on spot nodes right now waits."""
    if not t.resources.use_spot:
        return "spot: it would fit now only on spot nodes, and this job asks for on-demand (use_spot: false)"
    return ("spot: it would fit now only on spot nodes, and the burst policy keeps this job off spot"
            " (its expected loss to reclaims passes burst.max_spot_loss, or its deadline is too close)")
