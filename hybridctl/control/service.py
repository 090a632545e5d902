"""The controller's request handlers: every action a client can ask for, with its permission check.

One `Controller` owns the store; the daemon calls `handle()` for each request read from the socket,
and `schedule()` whenever something changed. Everything here runs on the daemon's one event loop."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

from hybridctl.config import Settings
from hybridctl.control.identity import Caller
from hybridctl.core import schedule as sched
from hybridctl.core.errors import HybridctlError, NotFound, PermissionDenied, SpecError, Unschedulable
from hybridctl.core.model import (
    ClusterView,
    JobStatus,
    NodeState,
    Policy,
    ScheduleDecision,
    task_label,
)
from hybridctl.core.spec import parse_spec
from hybridctl.store.sqlite import Store, Submitter

log = logging.getLogger("hybridctl.controller")

FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT")


def parse_job_ref(ref: object) -> tuple[int, int | None]:
    """'42' -> (42, None): the whole job; '42_7' -> (42, 7): one array task."""
    text = str(ref).strip()
    head, _, tail = text.partition("_")
    if not head.isdigit() or (tail and not tail.isdigit()):
        raise SpecError("job", text, "expected a job id like 42, or an array task like 42_7")
    return int(head), int(tail) if tail else None


class Controller:
    """Request handlers plus the scheduling pass. `clock` is injectable for tests."""

    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.on_change: Callable[[], None] = lambda: None
        """Called after anything that warrants a scheduling pass (set by the daemon)."""
        s = settings.scheduler
        self.policy = Policy(
            fairshare_half_life_h=s.fairshare_half_life_h,
            user_gpu_quota=dict(s.user_gpu_quota),
            group_gpu_quota=dict(s.group_gpu_quota),
        )
        self._usage_cache: tuple[float, dict[str, float]] = (0.0, {})

    # ---- dispatch -------------------------------------------------------------------------------

    def handle(self, caller: Caller, op: str, args: dict[str, Any]) -> Any:
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            ops = ", ".join(sorted(n[3:] for n in dir(self) if n.startswith("op_")))
            raise HybridctlError(f"unknown request {op!r}; this controller knows: {ops}")
        return fn(caller, **args)

    # ---- jobs -----------------------------------------------------------------------------------

    def op_ping(self, caller: Caller) -> dict[str, Any]:
        return {"user": caller.user, "uid": caller.uid, "admin": caller.admin, "schema": self.store.schema_version}

    def op_submit(self, caller: Caller, spec: dict[str, Any], source: str = "", full: bool = False) -> dict[str, Any]:
        job, warnings = parse_spec(spec, source)
        limit = 1000 if caller.admin else self.settings.max_user_priority
        if job.priority > limit:
            raise PermissionDenied(
                f"priority {job.priority} is above {limit}, the most a non-admin may set; "
                f"ask an admin (group {self.settings.admin_group}) or use a lower --priority"
            )
        self._check_fits(job.resources, job.num_nodes, job.placement)
        for dep in job.depends_on:
            self.store.job_owner(dep)  # NotFound names the missing job
        who = Submitter(caller.uid, caller.user, caller.gid, caller.group)
        job_id = self.store.submit(job, who, self.clock())
        log.info("job %d submitted by %s (%s)", job_id, caller.user, job.resources.describe())
        self.on_change()
        out: dict[str, Any] = {"id": job_id, "warnings": warnings}
        if full:
            out["job"] = self.store.job(job_id)
        return out

    def _check_fits(self, resources: Any, num_nodes: int, placement: str) -> None:
        nodes = [n for n in self.store.node_views() if placement == "any" or n.site == placement]
        if not nodes:
            return
        msg = sched.never_fits(nodes, resources, num_nodes)
        if msg:
            raise Unschedulable(f"job refused: {msg}")

    def op_queue(
        self, caller: Caller, all: bool = False, user: str | None = None, states: Sequence[str] = (),
        finished: bool = False,
    ) -> list[dict[str, Any]]:
        states = [s.upper() for s in states]
        for s in states:
            if s not in JobStatus.__members__:
                raise SpecError("--state", s, f"accepted: {', '.join(JobStatus.__members__)}")
        who = None if all else (user or caller.user)
        return self.store.queue(user=who, states=states, include_finished=finished)

    def op_show(self, caller: Caller, job: str) -> dict[str, Any]:
        job_id, _task = parse_job_ref(job)
        return self.store.job(job_id)

    def _owned(self, caller: Caller, job_id: int, verb: str) -> None:
        uid, owner = self.store.job_owner(job_id)
        if uid != caller.uid and not caller.admin:
            raise PermissionDenied(
                f"you ({caller.user}) may not {verb} job {job_id}: it belongs to {owner}; "
                f"only its owner or an admin (group {self.settings.admin_group}) may"
            )

    def op_cancel(self, caller: Caller, jobs: Sequence[str] = (), all_mine: bool = False,
                  reason: str = "") -> dict[str, Any]:
        targets: list[tuple[int, int | None]] = [parse_job_ref(j) for j in jobs]
        if all_mine:
            targets += [(j, t) for j, t in self.store.user_task_ids(caller.user)]
        if not targets:
            raise SpecError("JOB", "", "name at least one job id, or use --all-mine")
        for job_id, _ in targets:
            self._owned(caller, job_id, "cancel")
        now = self.clock()
        cancelled: list[str] = []
        skipped: list[str] = []
        why = reason or f"cancelled by {caller.user}"
        with self.store.tx() as c:
            for job_id, task in targets:
                for t, state, _a in self.store.task_states(job_id, task):
                    label = task_label(job_id, t)
                    if state.is_terminal():
                        skipped.append(f"{label} ({state.value})")
                        continue
                    self.store.transition(job_id, t, JobStatus.CANCELLED, reason=why, actor_uid=caller.uid, now=now, conn=c)
                    cancelled.append(label)
        if cancelled:
            self.on_change()
        return {"cancelled": cancelled, "skipped": skipped}

    def op_priority(self, caller: Caller, job: str, priority: int) -> dict[str, Any]:
        job_id, _ = parse_job_ref(job)
        self._owned(caller, job_id, "re-prioritise")
        if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
            raise SpecError("priority", priority, "a whole number from -1000 to 1000")
        limit = 1000 if caller.admin else self.settings.max_user_priority
        if priority > limit:
            raise PermissionDenied(f"priority {priority} is above {limit}, the most a non-admin may set")
        self.store.set_priority(job_id, priority, caller.uid, self.clock())
        self.on_change()
        return {"id": job_id, "priority": priority}

    def op_usage(self, caller: Caller, by: str = "user", since: float = 7 * 86400) -> list[dict[str, Any]]:
        if by not in ("user", "group"):
            raise SpecError("--by", by, "accepted: user, group")
        now = self.clock()
        totals: dict[str, list[float]] = {}
        for user, group, start, end, gpus in self.store.usage_records(now - since, now):
            key = user if by == "user" else group
            t = totals.setdefault(key, [0.0, 0.0])
            t[0] += gpus * max(0.0, end - start) / 3600.0
            t[1] += max(0.0, end - start) / 3600.0
        return [
            {by: k, "gpu_hours": round(v[0], 3), "job_hours": round(v[1], 3)}
            for k, v in sorted(totals.items(), key=lambda kv: -kv[1][0])
        ]

    # ---- nodes ----------------------------------------------------------------------------------

    def op_nodes(self, caller: Caller) -> list[dict[str, Any]]:
        views = {v.name: v for v in self.store.node_views()}
        out = []
        for n in self.store.nodes():
            d = n.to_dict()
            v = views[n.name]
            d["gpus_total"] = len(v.gpus)
            d["gpus_used"] = sum(1 for g in v.gpus if not g.free)
            d["cpus_free"] = v.cpus_free
            d["memory_free_mb"] = v.memory_free_mb
            out.append(d)
        return out

    def _admin(self, caller: Caller, verb: str) -> None:
        if not caller.admin:
            raise PermissionDenied(
                f"you ({caller.user}) may not {verb}: only root and members of group {self.settings.admin_group} may"
            )

    def op_drain(self, caller: Caller, node: str, reason: str = "") -> dict[str, Any]:
        self._admin(caller, f"drain node {node}")
        self.store.set_node_state(node, NodeState.DRAINING, reason or f"drained by {caller.user}", self.clock())
        self.on_change()
        return {"node": node, "state": NodeState.DRAINING.value}

    def op_resume(self, caller: Caller, node: str) -> dict[str, Any]:
        self._admin(caller, f"resume node {node}")
        self.store.set_node_state(node, NodeState.UP, "", self.clock())
        self.on_change()
        return {"node": node, "state": NodeState.UP.value}

    # ---- scheduling -----------------------------------------------------------------------------

    def usage_by_user(self, now: float) -> dict[str, float]:
        """Decayed GPU-hours per user, recomputed at most once a minute (it changes slowly)."""
        at, cached = self._usage_cache
        if now - at < 60 and at:
            return cached
        hl = self.policy.fairshare_half_life_h
        records = [(u, s, e, g) for u, _g, s, e, g in self.store.usage_records(now - 5 * hl * 3600, now)]
        usage = sched.decayed_usage(records, now, hl)
        self._usage_cache = (now, usage)
        return usage

    def schedule(self) -> ScheduleDecision:
        """One pass: read the cluster, plan, record placements and reasons."""
        now = self.clock()
        for job_id, task, dep in self.store.failed_dependencies():
            self.store.transition(job_id, task, JobStatus.CANCELLED, reason=f"dependency {dep} did not succeed",
                                  actor_uid=None, now=now)
        by_user: dict[str, int] = {}
        by_group: dict[str, int] = {}
        by_array: dict[int, int] = {}
        seen_tasks: set[tuple[int, int]] = set()
        for job_id, task, _node, gpus, _c, _m, user, group in self.store.open_allocations():
            by_user[user] = by_user.get(user, 0) + len(gpus)
            by_group[group] = by_group.get(group, 0) + len(gpus)
            if (job_id, task) not in seen_tasks:
                seen_tasks.add((job_id, task))
                by_array[job_id] = by_array.get(job_id, 0) + 1
        view = ClusterView(
            nodes=tuple(self.store.node_views()),
            gpus_in_use_by_user=by_user,
            gpus_in_use_by_group=by_group,
            running_tasks_by_array=by_array,
            usage_by_user=self.usage_by_user(now),
        )
        decision = sched.plan(view, self.store.pending(), self.policy)
        if decision.placements:
            self.store.start(decision.placements, now)
        self.store.set_reasons(decision.waiting, now)
        return decision
