"""One scheduling pass: from the fleet's free resources, the pending tasks and the policy, decide
which tasks start where, and give every other task a one-line reason. Pure: no I/O, no clock.

Greedy in priority order with no reservations: a task that does not fit now never holds GPUs
back, so smaller tasks behind it may still start (backfill without a start-time guarantee).
"""

from __future__ import annotations

from typing import Callable, Sequence

from hybridctl.core.capacity import Fleet, FreeIndex, Misses
from hybridctl.core.fairshare import decayed_usage, priority_key
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

    __slots__ = ("res", "num_nodes", "gpus_total", "sites", "kinds", "phases", "reason")

    def __init__(self, fleet: Fleet, res: Resources, num_nodes: int, placement: str) -> None:
        self.res = res
        self.num_nodes = max(num_nodes, 1)
        self.gpus_total = res.gpus * self.num_nodes
        self.sites = _SITES.get(placement, ())
        self.kinds = fleet.models_for(res.gpu_type) if res.gpus and res.gpu_type else None
        """GPU models the task may use; None = any."""
        self.reason: str | None = None
        """Set once a task of this shape could not be placed: why the later ones wait."""
        self.phases: list[list[FreeIndex]] = []
        """Indexes to search, in order of preference; the best fit within a phase wins."""
        if not fleet.nodes:
            self.reason = "no nodes in the fleet yet"
        elif not self.sites:
            self.reason = f"placement: '{placement}' is not one of onprem, cloud, any"
        elif not any(site in fleet.site_nodes for site in self.sites):
            self.reason = f"no {_SITE_WORDS[self.sites[0]]} nodes yet"
        for site in self.sites:
            if site not in fleet.site_nodes:
                continue
            if res.gpus > 1 and self.kinds is None:
                # One model per job where any model has enough; mixing models is the fallback.
                models = sorted(fleet.site_models.get(site, ()))
                if models:
                    self.phases.append([fleet.index(site, frozenset((m,))) for m in models])
            self.phases.append([fleet.index(site, self.kinds)])

    def find(self, fleet: Fleet, misses: Misses) -> list[tuple[int, FreeIndex]] | None:
        """Nodes (one per rank) and the index whose models to take, or None if it fits nowhere
        (then `misses` says what the nodes with the GPUs had)."""
        g, c, m, want = self.res.gpus, self.res.cpus, self.res.memory_mb, self.num_nodes
        cpus, mem = fleet.cpus, fleet.mem
        for phase in self.phases:
            if want == 1:
                best: tuple[int, int] | None = None
                best_ix = phase[0]
                for ix in phase:
                    if ix.top >= g:
                        hit = ix.first(g, cpus, mem, c, m, misses)
                        if hit is not None and (best is None or hit < best):
                            best, best_ix = hit, ix
                if best is not None:
                    return [(best[1], best_ix)]
                continue
            gang: tuple[tuple[int, list[int]], FreeIndex, list[int]] | None = None
            for ix in phase:
                if ix.top < g or ix.supply(g) < want:
                    continue
                picks = ix.pick(g, want, cpus, mem, c, m, misses)
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
    """
    usage = view.usage_by_user
    ordered = sorted(pending, key=lambda t: priority_key(t, usage))
    fleet = Fleet(
        view.nodes,
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

    for t in ordered:
        if t.deps_unmet:
            waiting.append(Waiting(t.job_id, t.task, _dependency_reason(t.deps_unmet)))
            continue
        throttle = t.array_throttle
        if throttle is not None and array_running.get(t.job_id, 0) >= throttle:
            running = array_running.get(t.job_id, 0)
            reason = f"array throttle: {running} of {throttle} tasks running"
            waiting.append(Waiting(t.job_id, t.task, reason))
            continue
        res = t.resources
        # Plain fields hash and compare faster than the dataclass itself.
        key = (res.gpus, res.gpu_type, res.cpus, res.memory_mb, t.num_nodes, t.placement)
        shape = shapes.get(key)
        if shape is None:
            shape = shapes[key] = _Shape(fleet, res, t.num_nodes, t.placement)
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
        if shape.reason is not None:
            waiting.append(Waiting(t.job_id, t.task, shape.reason))
            continue
        misses = Misses()
        found = shape.find(fleet, misses)
        if found is None:
            # Free capacity only shrinks during a pass, so every later task of this shape is
            # blocked too: diagnose once, and point the others at this task.
            reason, shortage = _diagnose(fleet, shape, misses)
            shape.reason = (
                f"priority: behind job {task_label(t.job_id, t.task)}" if shortage else reason
            )
            waiting.append(Waiting(t.job_id, t.task, reason))
            continue
        for rank, (node, ix) in enumerate(found):
            gpus = fleet.take(node, ix, res.gpus, res.cpus, res.memory_mb)
            name = fleet.nodes[node].name
            placements.append(
                Placement(t.job_id, t.task, name, gpus, res.cpus, res.memory_mb, rank)
            )
        if need:
            user_used[t.user] = user_used.get(t.user, 0) + need
            group_used[t.group] = group_used.get(t.group, 0) + need
        if throttle is not None:
            array_running[t.job_id] = array_running.get(t.job_id, 0) + 1
    return ScheduleDecision(tuple(placements), tuple(waiting))


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
        if res.gpus:
            bounds.append(free_gpus // (res.gpus * nodes))
        if res.cpus > 0:
            bounds.append(int(free_cpus / (res.cpus * nodes)) + 1)  # +1: Fleet's float tolerance
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


def _diagnose(fleet: Fleet, shape: _Shape, misses: Misses) -> tuple[str, bool]:
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


def _cpu_memory_shortage(fleet: Fleet, sites: list[str], shape: _Shape, gpus: str) -> str:
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


def _down_reason(fleet: Fleet, sites: list[str], shape: _Shape, usable: int) -> str:
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
