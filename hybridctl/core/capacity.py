"""The fleet's free capacity during one scheduling pass, indexed so that finding the best-fit node
for a task costs a few list and heap operations instead of a scan over every node."""

from __future__ import annotations

import heapq
from typing import Any, Sequence

from hybridctl.core.fit import gpu_type_matches
from hybridctl.core.model import NodeView

#: GPU models an index counts; None = every model.
Models = frozenset[str] | None

#: Node ids a search passes over (held for a reservation); None = none.
Skip = set[int] | None

_EPS = 1e-9  # CPU counts are floats: 0.1 + 0.2 must still fit in 0.3


class Misses:
    """What a search saw on nodes that had the GPUs but could not take the task: did some have
    the CPUs, did some have the memory (then the other one is what is short)."""

    __slots__ = ("cpus", "memory")

    def __init__(self) -> None:
        self.cpus = False
        self.memory = False


class FreeIndex:
    """The accepting nodes of one site, bucketed by how many free, healthy GPUs of `models` each
    has. Bucket k is a min-heap of node ids; ids follow node names, so the top of the lowest
    bucket that can hold a task is its best fit (fewest free GPUs left, then name).

    Within a pass counts only go down, so a node moved to a lower bucket leaves a stale entry
    behind, dropped when it reaches the top of its heap.
    """

    __slots__ = (
        "models",
        "count",
        "heaps",
        "size",
        "top",
        "keep_empty",
        "dropped",
        "dropped_cpus",
        "dropped_mem",
        "static_all",
        "static_up",
    )

    def __init__(self, models: Models, n_nodes: int, max_gpus: int) -> None:
        self.models = models
        self.count = [-1] * n_nodes
        """Bucket of each node; -1 = not in this index."""
        self.heaps: list[list[int]] = [[] for _ in range(max_gpus + 1)]
        self.size = [0] * (max_gpus + 1)
        self.top = -1
        """Highest non-empty bucket: a task needing more GPUs is answered without looking."""
        self.keep_empty = models is None
        """The any-model index keeps nodes with no free GPU, for CPU-only tasks."""
        self.dropped = [0] * (max_gpus + 1)
        """Nodes taken out for lack of CPUs/memory, by free GPUs (these feed wait reasons)."""
        self.dropped_cpus = [-1.0] * (max_gpus + 1)
        """Most free CPUs among the dropped nodes, by free GPUs."""
        self.dropped_mem = [-1] * (max_gpus + 1)
        """Most free memory among the dropped nodes, by free GPUs."""
        self.static_all = [0] * (max_gpus + 1)
        """Nodes of the site by GPUs of `models` installed, whatever their state or health."""
        self.static_up = [0] * (max_gpus + 1)
        """Accepting nodes of the site by healthy GPUs of `models`, free or not."""

    def add(self, node: int, k: int) -> None:
        # Called in ascending node order while building, so each heap starts as a sorted list.
        self.count[node] = k
        self.heaps[k].append(node)
        self.size[k] += 1
        if k > self.top:
            self.top = k

    def move(self, node: int, k: int) -> None:
        """The node now has k free GPUs of this index's models (fewer than before)."""
        self.size[self.count[node]] -= 1
        if k or self.keep_empty:
            self.count[node] = k
            self.size[k] += 1
            heapq.heappush(self.heaps[k], node)
        else:
            self.count[node] = -1
        self._lower_top()

    def drop(self, node: int, k: int, cpus: float, mem: int) -> None:
        """Take the node out: it can no longer hold any pending task."""
        self.size[self.count[node]] -= 1
        self.count[node] = -1
        self._lower_top()
        self.note_dropped(k, cpus, mem)

    def note_dropped(self, k: int, cpus: float, mem: int) -> None:
        self.dropped[k] += 1
        self.dropped_cpus[k] = max(self.dropped_cpus[k], cpus)
        self.dropped_mem[k] = max(self.dropped_mem[k], mem)

    def _lower_top(self) -> None:
        top, size = self.top, self.size
        while top >= 0 and not size[top]:
            top -= 1
        self.top = top

    def supply(self, g: int) -> int:
        """Indexed nodes with at least g free GPUs of this index's models."""
        return sum(self.size[g : self.top + 1])

    def first(
        self,
        g: int,
        cpus: list[float],
        mem: list[int],
        c: float,
        m: int,
        misses: Misses,
        skip: Skip = None,
    ) -> tuple[int, int] | None:
        """(free count, node) of the best-fit node for g GPUs, c CPUs and m MiB, or None.
        Nodes in `skip` (held for a reservation) are passed over."""
        count, heaps = self.count, self.heaps
        for k in range(g, self.top + 1):
            h = heaps[k]
            while h and count[h[0]] != k:
                heapq.heappop(h)
            if h:
                node = h[0]
                if cpus[node] + _EPS >= c and mem[node] >= m and (skip is None or node not in skip):
                    return k, node
                picks = self.pick(k, 1, cpus, mem, c, m, misses, skip)
                return picks[0] if picks else None
        return None

    def pick(
        self,
        g: int,
        want: int,
        cpus: list[float],
        mem: list[int],
        c: float,
        m: int,
        misses: Misses,
        skip: Skip = None,
    ) -> list[tuple[int, int]]:
        """Up to `want` distinct nodes that can hold g GPUs, c CPUs and m MiB, best fit first.
        Nodes with the GPUs but not the rest are noted in `misses`; nodes in `skip` are passed
        over."""
        count = self.count
        picks: list[tuple[int, int]] = []
        for k in range(g, self.top + 1):
            h = self.heaps[k]
            seen = []
            # Pop in order and push back what is still valid: cheaper than sorting the bucket
            # when the first few nodes answer.
            while h and len(picks) < want:
                node = heapq.heappop(h)
                if count[node] != k:
                    continue
                seen.append(node)
                if skip is not None and node in skip:
                    continue
                cpus_ok = cpus[node] + _EPS >= c
                mem_ok = mem[node] >= m
                if cpus_ok and mem_ok:
                    picks.append((k, node))
                else:
                    misses.cpus |= cpus_ok
                    misses.memory |= mem_ok
            for node in seen:
                heapq.heappush(h, node)
            if len(picks) == want:
                break
        return picks


class FreeFleet:
    """Free resources of every node for one pass; `take` books them and re-buckets the node."""

    def __init__(self, nodes: Sequence[NodeView], min_cpus: float, min_mem: int) -> None:
        self.nodes = sorted(nodes, key=lambda n: n.name)
        self.cpus = [n.cpus_free for n in self.nodes]
        self.mem = [n.memory_free_mb for n in self.nodes]
        self.up = [n.state.accepts_jobs() for n in self.nodes]
        self.min_cpus = min_cpus
        self.min_mem = min_mem
        self.max_gpus = max((len(n.gpus) for n in self.nodes), default=0)
        self.free: list[dict[str, list[int]]] = []
        """Per node: model -> indices of its free, healthy GPUs, ascending (empty if not up)."""
        self.installed: list[dict[str, tuple[int, int]]] = []
        """Per node: model -> (GPUs installed, of which healthy)."""
        self.site_nodes: dict[str, list[int]] = {}
        self.site_model_nodes: dict[str, dict[str, list[int]]] = {}
        """Per site: model -> nodes with that model installed, ascending."""
        self.site_shapes: dict[str, dict[object, list[Any]]] = {}
        """Per site: node shape -> [its first node by name, how many nodes have it]."""
        self.site_models: dict[str, set[str]] = {}
        """Per site: models with a free GPU on an accepting node at the start of the pass."""
        self.max_cpus: dict[str, float] = {}
        self.max_mem: dict[str, int] = {}
        models: set[str] = set()
        for i, (node, up) in enumerate(zip(self.nodes, self.up)):
            free: dict[str, list[int]] = {}
            installed: dict[str, tuple[int, int]] = {}
            for slot in node.gpus:
                n, healthy = installed.get(slot.model, (0, 0))
                installed[slot.model] = (n + 1, healthy + slot.healthy)
                if up and slot.free and slot.healthy:
                    free.setdefault(slot.model, []).append(slot.index)
            for idx in free.values():
                idx.sort()
            self.free.append(free)
            self.installed.append(installed)
            models.update(installed)
            site = node.site
            self.site_nodes.setdefault(site, []).append(i)
            by_model = self.site_model_nodes.setdefault(site, {})
            for model in installed:
                by_model.setdefault(model, []).append(i)
            shape = (
                tuple((m, n) for m, (n, _) in installed.items()),
                node.cpus_total,
                node.memory_total_mb,
            )
            same = self.site_shapes.setdefault(site, {}).setdefault(shape, [node, 0])
            same[1] += 1
            self.site_models.setdefault(site, set()).update(free)
            self.max_cpus[site] = max(self.max_cpus.get(site, 0.0), node.cpus_total)
            self.max_mem[site] = max(self.max_mem.get(site, 0), node.memory_total_mb)
        self.models = frozenset(models)
        self.alive = [
            up and c + _EPS >= min_cpus and m >= min_mem
            for up, c, m in zip(self.up, self.cpus, self.mem)
        ]
        """Up and still able to hold the smallest pending task."""
        self.members: list[list[tuple[FreeIndex, tuple[str, ...]]]] = [[] for _ in self.nodes]
        """Per node: the indexes it is in, with its models each one counts."""
        self._indexes: dict[tuple[str, Models], FreeIndex] = {}
        self._type_models: dict[str, frozenset[str]] = {}

    def shapes(self, sites: Sequence[str]) -> list[tuple[NodeView, int]]:
        """One node of each shape on `sites`, with how many share it (for `never_fits_grouped`)."""
        return [(n, k) for s in sites for n, k in self.site_shapes.get(s, {}).values()]

    def models_for(self, gpu_type: str) -> frozenset[str]:
        """The fleet's GPU models a job asking for `gpu_type` may use."""
        found = self._type_models.get(gpu_type)
        if found is None:
            found = frozenset(m for m in self.models if gpu_type_matches(gpu_type, m))
            self._type_models[gpu_type] = found
        return found

    def index(self, site: str, models: Models) -> FreeIndex:
        """The index of `site` counting `models`, built on first use (one pass over the nodes)."""
        ix = self._indexes.get((site, models))
        if ix is None:
            ix = self._indexes[(site, models)] = self._build(site, models)
        return ix

    def _build(self, site: str, models: Models) -> FreeIndex:
        ix = FreeIndex(models, len(self.nodes), self.max_gpus)
        on_site = self.site_nodes.get(site, [])
        ids = on_site
        if models is not None:
            # Only nodes with one of the models installed; the rest count as having none.
            by_model = self.site_model_nodes.get(site, {})
            ids = sorted({i for m in models for i in by_model.get(m, ())})
            ix.static_all[0] += len(on_site) - len(ids)
            ix.static_up[0] += sum(self.up[i] for i in on_site) - sum(self.up[i] for i in ids)
        for i in ids:
            total = healthy = 0
            for model, (n, ok) in self.installed[i].items():
                if models is None or model in models:
                    total += n
                    healthy += ok
            ix.static_all[total] += 1
            if not self.up[i]:
                continue
            ix.static_up[healthy] += 1
            free = self.free[i]
            mine = tuple(m for m in free if models is None or m in models)
            k = sum(len(free[m]) for m in mine)
            if not self.alive[i]:
                ix.note_dropped(k, self.cpus[i], self.mem[i])
            elif k or ix.keep_empty:
                ix.add(i, k)
                self.members[i].append((ix, mine))
        return ix

    def take(self, node: int, ix: FreeIndex, g: int, c: float, m: int) -> tuple[int, ...]:
        """Book g GPUs of `ix`'s models, c CPUs and m MiB on `node`; return the GPU indices.

        GPUs of one model are preferred (the one with fewest free, then by name); models are
        mixed only when none has g free, taking the most plentiful first.
        """
        free = self.free[node]
        gpus: tuple[int, ...] = ()
        if g and len(free) == 1:
            # The common case: one model on the node, and `ix` chose the node for it.
            idx = next(iter(free.values()))
            gpus = tuple(idx[:g])
            del idx[:g]
        elif g:
            models = ix.models
            cands = [x for x, idx in free.items() if idx and (models is None or x in models)]
            whole = [x for x in cands if len(free[x]) >= g]
            if whole:
                x = whole[0] if len(whole) == 1 else min(whole, key=lambda y: (len(free[y]), y))
                gpus = tuple(free[x][:g])
                del free[x][:g]
            else:
                taken: list[int] = []
                for x in sorted(cands, key=lambda y: (-len(free[y]), y)):
                    part = free[x][: g - len(taken)]
                    del free[x][: len(part)]
                    taken += part
                gpus = tuple(sorted(taken))
        self.cpus[node] -= c
        self.mem[node] -= m
        alive = self.cpus[node] + _EPS >= self.min_cpus and self.mem[node] >= self.min_mem
        for member, mine in self.members[node]:
            if member.count[node] < 0:
                continue  # already left that index (no free GPU of its models)
            k = len(free[mine[0]]) if len(mine) == 1 else sum(len(free[x]) for x in mine)
            if not alive:
                member.drop(node, k, self.cpus[node], self.mem[node])
            elif k != member.count[node]:
                member.move(node, k)
        if not alive:
            # Nothing pending fits here any more; searches should not keep stepping over it.
            self.alive[node] = False
            self.members[node] = []
        return gpus
