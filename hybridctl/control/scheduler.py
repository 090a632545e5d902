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
from hybridctl.core.allowance import CloudGate, plan_within
from hybridctl.core.locality import CacheIndex, LocalityPolicy, LocalityView, Need, WillHold, free_in_history
from hybridctl.core.model import ClusterView, JobStatus, NodeView, PendingTask, Policy, ScheduleDecision
from hybridctl.store.sqlite import Store

CANCEL_PER_PASS = 2000
"""Tasks whose dependency failed, cancelled per scheduling pass (one transaction, ~0.1 s)."""

WORLD_PATHS = ("$.environment", "$.file_mounts")
"""The spec paths that say what a job needs on a node (core/locality.Need)."""
REQUIRES_IMAGE = frozenset({"podman"})
"""What an `image_id: docker:` job requires of its node: the agent runs images with podman."""
NO_CLOUD_NODES = "no cloud nodes yet"
"""`schedule.plan`'s reason for a placement-cloud task while the fleet has no cloud node..."""
NO_CLOUD_NODES_OFF = "no cloud nodes: bursting is off (cloud.enabled), so none will be rented"
"""...and what it says instead while bursting is off."""


def policy(settings: Settings) -> Policy:
    """The scheduling policy as `scheduler:` sets it (the controller's passes and `hybridctl
    simulate` alike)."""
    s = settings.scheduler
    return Policy(
        fairshare_half_life_h=s.fairshare_half_life_h,
        user_gpu_quota=dict(s.user_gpu_quota),
        group_gpu_quota=dict(s.group_gpu_quota),
        backfill_depth=s.backfill_depth,
        preempt_below=s.preempt_below,
        multi_node_priority=s.multi_node_priority,
        preempt_checkpointing=s.preempt_checkpointing,
    )


class Scheduler:
    """One pass at a time over the store; `clock` is wall time, injectable for tests."""

    def __init__(self, store: Store, settings: Settings, lifecycle: Lifecycle, clock: Callable[[], float],
                 caches: Callable[[], Mapping[str, Any]] | None = None,
                 features: Callable[[], Mapping[str, Mapping[str, str]]] | None = None) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.clock = clock
        self.policy = policy(settings)
        self._usage_cache: tuple[float, dict[str, float]] = (0.0, {})
        self.runtimes = RuntimeFacts(store, settings.home_path, self.policy)
        """Running tasks' expected ends, pending tasks' runtimes (time limits or estimates)."""
        self.stopping: set[str] = set()
        """Nodes of the tasks the last pass preempted (the daemon kicks them to stop them now)."""
        self.no_spot: frozenset[tuple[int, int]] = frozenset()
        """Tasks the burst policy keeps off spot nodes (BurstDecision.no_spot, set by the
        autoscaler each tick): `plan` passes over spot nodes for them."""
        self.spot_weighed: frozenset[tuple[int, int]] | None = None
        """The pending tasks the burst policy's last decision weighed (BurstDecision.weighed);
        a task with a deadline outside it is kept off spot nodes until one does. None = no
        policy weighs spot risk: nothing is held back."""
        self.cloud_gate: CloudGate | None = None
        """Under owner budgets: the tasks of budgeted owners the burst policy lets onto cloud nodes
        (BurstDecision.gate, set by the autoscaler); their other tasks stay off cloud nodes."""
        loc = settings.locality
        self.locality = LocalityPolicy(
            weight=loc.weight, max_wait_s=loc.max_wait,
            bandwidth_bps={"onprem": loc.onprem_bandwidth_mbps * 1e6 / 8, "cloud": loc.cloud_bandwidth_mbps * 1e6 / 8},
        )
        self.caches = caches
        """The fleet's cache index (Fleet.caches: node -> core/locality.NodeCache); None = none known."""
        self.will_hold = WillHold()
        """Placed tasks with a world, counted toward their node's cache until its report can
        say so (core/locality.WillHold; control/mounts.holdings)."""
        self.features = features
        """Per connected node, what its hello offers jobs (Fleet.runtimes: {"podman": path, ...});
        None = unknown (no fleet): requirements are not checked."""
        self.cloud_runtimes = frozenset(settings.cloud.runtimes) if settings.cloud.enabled else None
        """What a rented cloud node would offer (cloud.runtimes); None = no bursting."""
        self._requires: dict[int, frozenset[str]] = {}
        """job id -> node features its tasks require (an image job: podman), read once per job."""
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
        from hybridctl.control.mounts import history_runtimes, holdings

        held, room = holdings(caches, self.will_hold.current(view.now, ((r.job_id, r.task, r.node)
                                                                         for r in view.running)), env_bytes)
        hist = history_runtimes(self.runtimes, view.running, out, view.now)
        loc = LocalityView(CacheIndex(held), self.locality, {n.name: n.site for n in view.nodes},
                           free_in_history(view.running, view.now, hist), room, {j: s for (j, _), s in hist.items()})
        return dataclasses.replace(view, locality=loc), out

    def with_requirements(self, view: ClusterView, pending: list[PendingTask]) -> tuple[ClusterView, list[PendingTask]]:
        """Per pending task what it requires of its node (`image_id: docker:` -> podman: the only
        runtime the agent runs images with) and per node what it offers (its hello's runtimes).
        One spec read per job, then cached; nothing changes where no pending job names an image."""
        if self.features is None or not pending:
            return view, pending
        ids = {t.job_id for t in pending}
        fresh = sorted(ids - self._requires.keys())
        known = {j: r for j, r in self._requires.items() if j in ids}
        known.update(dict.fromkeys(fresh, frozenset()))
        for job_id, (_uid, (image,)) in self.store.spec_fields(fresh, ("$.image",), any_set=True).items():
            if image:
                known[job_id] = REQUIRES_IMAGE
        self._requires = known
        if not any(known.values()):
            return view, pending
        offers = {n: frozenset(r) for n, r in self.features().items()}
        nodes = tuple(dataclasses.replace(n, features=offers.get(n.name, frozenset())) for n in view.nodes)
        out = [dataclasses.replace(t, requires=known[t.job_id]) if known.get(t.job_id) else t for t in pending]
        return dataclasses.replace(view, nodes=nodes), out

    def _cloud_reasons(self, decision: ScheduleDecision) -> ScheduleDecision:
        """A task that waits for a node offering what it requires: say whether bursting can help.
        One that waits for cloud nodes while bursting is off: say that none will come."""
        if self.cloud_runtimes is None:
            if not any(w.reason == NO_CLOUD_NODES for w in decision.waiting):
                return decision
            return dataclasses.replace(decision, waiting=tuple(
                dataclasses.replace(w, reason=NO_CLOUD_NODES_OFF) if w.reason == NO_CLOUD_NODES else w
                for w in decision.waiting))
        if not any(w.reason.startswith("requires:") for w in decision.waiting):
            return decision
        waiting = []
        for w in decision.waiting:
            if w.reason.startswith("requires:"):
                need = self._requires.get(w.job_id, frozenset())
                tail = ("; cloud nodes offer it (cloud.runtimes), so one may be rented for it"
                        if need <= self.cloud_runtimes else
                        f"; no cloud node is rented for it: cloud.runtimes does not list {', '.join(sorted(need - self.cloud_runtimes))}")
                w = dataclasses.replace(w, reason=w.reason + tail)
            waiting.append(w)
        return dataclasses.replace(decision, waiting=tuple(waiting))

    def _remember_sources(self, decision: ScheduleDecision, pending: list[PendingTask], now: float) -> None:
        needs = {(t.job_id, t.task) for t in pending if t.need is not None}
        for p in decision.placements:
            world = self._worlds.get(p.job_id)
            if (p.job_id, p.task) in needs and world is not None:
                self.will_hold.assign((p.job_id, p.task), p.node, now, world)

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

    def _off_spot(self, pending: list[PendingTask]) -> list[PendingTask]:
        """`pending` with `no_spot` set where the burst policy keeps a task off spot nodes: its
        last decision said so (`no_spot`), or the task has a deadline and became pending after
        that decision (`spot_weighed`: its slack is weighed before it may take a spot node)."""
        weighed = self.spot_weighed
        facts = self.runtimes.facts([t.job_id for t in pending]) if weighed is not None else {}
        out = []
        for t in pending:
            key = (t.job_id, t.task)
            f = facts.get(t.job_id)
            off = key in self.no_spot or (weighed is not None and key not in weighed
                                          and f is not None and f.deadline is not None)
            out.append(dataclasses.replace(t, no_spot=True) if off and not t.no_spot else t)
        return out

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
        if self.no_spot or self.spot_weighed is not None:
            pending = self._off_spot(pending)
        view, pending = self.with_locality(view, pending)
        view, pending = self.with_requirements(view, pending)
        decision = self._cloud_reasons(plan_within(view, pending, self.policy, self.cloud_gate))
        if view.locality is not None:
            self._remember_sources(decision, pending, now)
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
