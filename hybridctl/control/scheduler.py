"""The scheduling pass: read the cluster from the store, ask `core.schedule.plan`, record the
placements and the reasons the rest wait. The daemon runs it on change and on a tick; the
autoscaler reads the same policy and fair-share usage for its own decision."""

from __future__ import annotations

import dataclasses
import json

from collections.abc import Mapping
from typing import Any, Callable

from hybridctl.config import Settings
from hybridctl.control.backfill import RuntimeFacts
from hybridctl.control.lifecycle import Lifecycle
from hybridctl.core import schedule as sched
from hybridctl.core.locality import CacheIndex, LocalityPolicy, LocalityView, Need, free_in_of
from hybridctl.core.model import ClusterView, JobStatus, NodeView, PendingTask, Policy, ScheduleDecision
from hybridctl.store.sqlite import Store

CANCEL_PER_PASS = 2000
"""Tasks whose dependency failed, cancelled per scheduling pass (one transaction, ~0.1 s)."""

WORLD_PATHS = ("$.environment", "$.file_mounts")
"""The spec paths that say what a job needs on a node (core/locality.Need)."""


class Scheduler:
    """One pass at a time over the store; `clock` is wall time, injectable for tests."""

    def __init__(self, store: Store, settings: Settings, lifecycle: Lifecycle, clock: Callable[[], float],
                 caches: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.clock = clock
        s = settings.scheduler
        self.policy = Policy(
            fairshare_half_life_h=s.fairshare_half_life_h,
            user_gpu_quota=dict(s.user_gpu_quota),
            group_gpu_quota=dict(s.group_gpu_quota),
            backfill_depth=s.backfill_depth,
            preempt_below=s.preempt_below,
        )
        self._usage_cache: tuple[float, dict[str, float]] = (0.0, {})
        self.runtimes = RuntimeFacts(store, settings.home_path, s.preempt_below)
        """Running tasks' expected ends, pending tasks' runtimes (time limits or estimates)."""
        self.stopping: set[str] = set()
        self.no_spot: frozenset[tuple[int, int]] = frozenset()
        """Tasks the burst policy keeps off spot nodes (BurstDecision.no_spot, set by the
        autoscaler each tick): `plan` passes over spot nodes for them."""
        """Nodes of the tasks the last pass preempted (the daemon kicks them to stop them now)."""
        loc = settings.locality
        self.locality = LocalityPolicy(
            weight=loc.weight, max_wait_s=loc.max_wait,
            bandwidth_bps={"onprem": loc.onprem_bandwidth_mbps * 1e6 / 8, "cloud": loc.cloud_bandwidth_mbps * 1e6 / 8},
        )
        self.caches = caches
        """The fleet's cache index (Fleet.caches: node -> core/locality.NodeCache); None = none known."""
        self._src_at: dict[str, str] = {}
        """`src:` artifact (a local file_mount not read yet) -> the node the last job naming it was
        placed on: it is staged there at launch, before any cache listing says so (bounded)."""
        self._worlds: dict[int, tuple[int, dict[str, Any]] | None] = {}
        """job id -> (owner uid, its spec's environment and file_mounts), None = it has neither:
        read once per job (a spec never changes), kept while the job has pending tasks."""

    def usage_by_user(self, now: float) -> dict[str, float]:
        """Decayed GPU-hours per user, recomputed at most once a minute (it changes slowly)."""
        at, cached = self._usage_cache
        if now - at < 60 and at:
            return cached
        hl = self.policy.fairshare_half_life_h
        records = [(r.user, r.start, r.end, r.gpus) for r in self.store.usage_records(now - 5 * hl * 3600, now)]
        usage = sched.decayed_usage(records, now, hl)
        self._usage_cache = (now, usage)
        return usage

    def node_views(self) -> list[NodeView]:
        """The store's node views, each cloud node with its market ('spot' / 'on-demand', from the
        offer it was rented on), so `plan` keeps tasks that may not use spot off spot nodes."""
        views = self.store.node_views()
        if any(v.site == "cloud" for v in views):
            market = {r["node"]: "spot" if r["offer"].get("spot") else "on-demand"
                      for r in self.store.cloud_instances()}
            views = [dataclasses.replace(v, market=market.get(v.name)) if v.site == "cloud" else v for v in views]
        return views

    def cluster(self, now: float) -> ClusterView:
        """The cluster as the planners see it: nodes, GPUs in use per user and group, running
        tasks per array, decayed usage."""
        by_user: dict[str, int] = {}
        by_group: dict[str, int] = {}
        by_array: dict[int, int] = {}
        seen_tasks: set[tuple[int, int]] = set()
        busy: set[str] = set()
        for a in self.store.open_allocations():
            busy.add(a.node)
            by_user[a.user] = by_user.get(a.user, 0) + len(a.gpus)
            by_group[a.group] = by_group.get(a.group, 0) + len(a.gpus)
            if (a.job_id, a.task) not in seen_tasks:
                seen_tasks.add((a.job_id, a.task))
                by_array[a.job_id] = by_array.get(a.job_id, 0) + 1
        return ClusterView(
            nodes=tuple(self.node_views()),
            gpus_in_use_by_user=by_user,
            gpus_in_use_by_group=by_group,
            running_tasks_by_array=by_array,
            usage_by_user=self.usage_by_user(now),
            running=self.runtimes.running(now),
            now=now,
            busy_nodes=frozenset(busy),
            exclusive_nodes=frozenset(self.store.exclusive_nodes()) if busy else frozenset(),
        )

    def with_locality(self, view: ClusterView, pending: list[PendingTask]) -> tuple[ClusterView, list[PendingTask]]:
        """Cache-aware placement's inputs (locality.weight > 0 and some node has reported its
        cache): the cache index, per node its site and when it frees up, and per pending task
        what it needs on its node (control/mounts.need_of). Tasks whose spec has no environment
        or file_mounts are left as they are and cost the pass nothing."""
        caches = self.caches() if self.caches is not None and self.locality.weight > 0 else None
        if not caches:
            return view, pending
        from hybridctl.control.mounts import need_of

        ids = {t.job_id for t in pending}
        worlds = {j: w for j, w in self._worlds.items() if j in ids}
        fresh = sorted(ids - worlds.keys())
        worlds.update(dict.fromkeys(fresh))
        for job_id, (uid, (env, mounts)) in self.store.spec_fields(fresh, WORLD_PATHS, any_set=True).items():
            worlds[job_id] = (uid, {"environment": json.loads(env) if env else None,
                                    "file_mounts": json.loads(mounts) if mounts else None})
        self._worlds = worlds
        env_bytes: dict[str, int] = {}
        for c in caches.values():
            env_bytes.update(c.envs)
        needs: dict[int, Need] = {}
        out = []
        for t in pending:
            w = worlds.get(t.job_id)
            if w is not None:
                need = needs.get(t.job_id)
                if need is None:
                    need = needs[t.job_id] = need_of(w[1], w[0], env_bytes)
                if need.total:
                    t = dataclasses.replace(t, need=need)
            out.append(t)
        room = {n: max(0, c.max_bytes - sum(c.objects.values())) for n, c in caches.items() if c.max_bytes}
        held = {n: list(c.artifacts()) for n, c in caches.items()}
        for a, n in self._src_at.items():
            held.setdefault(n, []).append(a)
        loc = LocalityView(CacheIndex(held), self.locality,
                           {n.name: n.site for n in view.nodes}, free_in_of(view.running, view.now), room)
        return dataclasses.replace(view, locality=loc), out

    def _remember_sources(self, decision: ScheduleDecision, pending: list[PendingTask]) -> None:
        needs = {(t.job_id, t.task): t.need for t in pending if t.need is not None}
        for p in decision.placements:
            need = needs.get((p.job_id, p.task))
            for a in need.items if need is not None else ():
                if a.startswith("src:"):
                    self._src_at.pop(a, None)
                    self._src_at[a] = p.node
        while len(self._src_at) > 1024:
            del self._src_at[next(iter(self._src_at))]

    def need_of_job(self, job_id: int) -> Need | None:
        """What job `job_id` needs on a node (its environment and file_mounts as far as this
        controller knows them), or None when it has neither."""
        from hybridctl.control.mounts import need_of

        found = self.store.spec_fields((job_id,), WORLD_PATHS, any_set=True).get(job_id)
        if found is None:
            return None
        uid, (env, mounts) = found
        env_bytes: dict[str, int] = {}
        for c in (self.caches() if self.caches is not None else {}).values():
            env_bytes.update(c.envs)
        spec = {"environment": json.loads(env) if env else None,
                "file_mounts": json.loads(mounts) if mounts else None}
        return need_of(spec, uid, env_bytes)

    def transfer_estimate(self, job_id: int, site: str) -> tuple[int, float] | None:
        """(bytes, seconds) a fresh node of `site` would have to receive before job `job_id`
        starts there (the burst policy's "wait or pay" counts it); None if nothing to move."""
        need = self.need_of_job(job_id)
        if need is None or not need.total:
            return None
        bw = self.locality.bandwidth_bps.get(site, 1.0e9) or 1.0e9
        return need.total, need.total / bw

    def schedule(self) -> ScheduleDecision:
        """One pass: read the cluster, plan, record placements and reasons. Its cost follows what
        could start, not how many tasks wait: each job contributes only the window of its pending
        tasks that `sched.window` says could matter (a 100,000-task array is read as a few)."""
        now = self.clock()
        self.lifecycle.cancel_failed_dependencies(CANCEL_PER_PASS)
        view = self.cluster(now)
        pending = self.runtimes.pending(self.store.pending(window=sched.window(view)), now)
        if self.no_spot:
            pending = [dataclasses.replace(t, no_spot=True) if (t.job_id, t.task) in self.no_spot else t
                       for t in pending]
        view, pending = self.with_locality(view, pending)
        decision = sched.plan(view, pending, self.policy)
        if view.locality is not None:
            self._remember_sources(decision, pending)
        if decision.placements:
            self.store.start(decision.placements, now)
        self.store.set_reasons(decision.waiting, now)
        # Priority preemption: PREEMPTED now, keeping the GPUs until the node has stopped the
        # processes (SIGTERM, the grace) and the final checkpoint is pulled; then requeued as a
        # recovery (Lifecycle.release -> requeue_or_fail, never charged to max_restarts).
        held: dict[tuple[int, int], set[str]] = {}
        for r in view.running:
            held.setdefault((r.job_id, r.task), set()).add(r.node)
        simulated = {n.name for n in self.store.nodes() if n.simulated} if decision.preempt else set()
        self.stopping = set()
        for p in decision.preempt:
            nodes = held.get((p.job_id, p.task), set())
            if nodes <= simulated:  # declared-only nodes run nothing: nothing to stop, requeue now
                self.lifecycle.requeue_or_fail(p.job_id, p.task, p.reason, status=JobStatus.PREEMPTED)
            else:
                self.lifecycle.preempt(p.job_id, p.task, p.reason)
                self.stopping |= nodes - simulated
        return decision
