"""The controller's request handlers: every action a client can ask for, with its permission check.

One `Controller` owns the store; the daemon calls `handle()` for each request read from the socket,
and `schedule()` whenever something changed. Everything here runs on the daemon's one event loop."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from hybridctl.config import Settings
from hybridctl.control.identity import Caller
from hybridctl.core import schedule as sched
from hybridctl.core.errors import HybridctlError, PermissionDenied, SpecError, Unschedulable
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

if TYPE_CHECKING:
    from hybridctl.control.fleet import Fleet

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
        self.fleet: Fleet | None = None

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
                    # A dispatched job keeps its GPUs until its node confirms the processes are gone.
                    hold = state.is_active() and self.fleet is not None and self._on_real_node(job_id, t)
                    self.store.transition(job_id, t, JobStatus.CANCELLED, reason=why, actor_uid=caller.uid, now=now,
                                          release=not hold, conn=c)
                    cancelled.append(label)
        if cancelled:
            self.on_change()
        return {"cancelled": cancelled, "skipped": skipped}

    def _on_real_node(self, job_id: int, task: int) -> bool:
        simulated = {n.name for n in self.store.nodes() if n.simulated}
        return any(node not in simulated for node in self.store.task_nodes(job_id, task))

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
        telemetry = self.fleet.telemetry() if self.fleet else {}
        out = []
        for n in self.store.nodes():
            v = views[n.name]
            d = n.to_dict(busy=v.cpus_free < v.cpus_total or any(not g.free for g in v.gpus))
            d["gpus_total"] = len(v.gpus)
            d["gpus_used"] = sum(1 for g in v.gpus if not g.free)
            d["cpus_free"] = v.cpus_free
            d["memory_free_mb"] = v.memory_free_mb
            d["telemetry"] = telemetry.get(n.name)
            session = self.fleet.sessions.get(n.name) if self.fleet else None
            d["link_error"] = session.error if session else ""
            out.append(d)
        return out

    def _admin(self, caller: Caller, verb: str) -> None:
        if not caller.admin:
            raise PermissionDenied(
                f"you ({caller.user}) may not {verb}: only root and members of group {self.settings.admin_group} may"
            )

    def op_drain(self, caller: Caller, node: str, reason: str = "") -> dict[str, Any]:
        self._admin(caller, f"drain node {node}")
        self.store.set_drain(node, True, reason or f"drained by {caller.user}", self.clock())
        self.on_change()
        return {"node": node, "state": "DRAINING"}

    def op_resume(self, caller: Caller, node: str) -> dict[str, Any]:
        self._admin(caller, f"resume node {node}")
        self.store.set_drain(node, False, "", self.clock())
        self.on_change()
        return {"node": node, "state": self.store.node(node).state(busy=False)[0].value}

    async def op_node_add(
        self, caller: Caller, name: str, host: str, port: int = 22, user: str | None = None,
        identity: str | None = None, agent_socket: str | None = None, accept_new: bool = False,
        site: str = "onprem",
    ) -> dict[str, Any]:
        """Pin the host key (with accept_new), probe the agent, record the node, start its session."""
        from pathlib import Path

        from hybridctl.control.nodes import check_name
        from hybridctl.ssh.link import Target, connect, pin_host_key
        from hybridctl.store.sqlite import NodeRecord

        self._admin(caller, "add nodes")
        check_name(name)
        if not 1 <= int(port) <= 65535:
            raise SpecError("--port", port, "a TCP port from 1 to 65535")
        if site not in ("onprem", "cloud"):
            raise SpecError("--site", site, "accepted: onprem, cloud")
        known = self.settings.known_hosts_path
        fingerprint = None
        if accept_new and host not in ("local", ""):
            fingerprint = await pin_host_key(host, int(port), Path(known))
        target = Target(name, host, int(port), user, identity, agent_socket, str(known),
                        self.settings.fleet.bridge, self.settings.fleet.agent_command)
        link = await connect(target)
        try:
            hello = await link.call("hello")
        finally:
            await link.close()
        gpus = [{"index": g["index"], "model": g.get("name", "GPU"), "memory_mb": g.get("memory_total_mb")}
                for g in hello.get("gpus", [])]
        rec = NodeRecord(name, host, int(port), user, identity, agent_socket, site, NodeState.UP, "", False, "",
                         tuple(gpus), float(hello.get("cpus") or 1), int(hello.get("memory_mb") or 0), False,
                         self.clock())
        self.store.add_node(rec, self.clock(), replace=False)
        if self.fleet:
            self.fleet.sync()
        self.on_change()
        return {"node": name, "gpus": gpus, "gpu_source": hello.get("gpu_source"), "gpu_error": hello.get("gpu_error"),
                "cpus": rec.cpus, "memory_mb": rec.memory_mb, "host_key": fingerprint,
                "agent_version": hello.get("agent_version")}

    def op_node_remove(self, caller: Caller, name: str) -> dict[str, Any]:
        self._admin(caller, f"remove node {name}")
        self.store.remove_node(name)
        if self.fleet:
            self.fleet.sync()
        return {"node": name, "removed": True}

    # ---- logs -----------------------------------------------------------------------------------

    async def op_logs(self, caller: Caller, job: str, stream: str = "stdout", offset: int = 0,
                      max_bytes: int = 65536, rank: int = 0) -> dict[str, Any]:
        from hybridctl.core.reconcile import job_key
        from hybridctl.ssh.link import NodeUnreachable

        job_id, task = parse_job_ref(job)
        self._owned(caller, job_id, "read the logs of")
        if stream not in ("stdout", "stderr"):
            raise SpecError("--stream", stream, "accepted: stdout, stderr")
        states = self.store.task_states(job_id, task if task is not None else None)
        if task is None and len(states) > 1:
            raise SpecError("JOB", job, f"job {job_id} is an array; name one task, e.g. {job_id}_{states[0][0]}")
        t, state, attempt = states[0]
        key = job_key(job_id, t, attempt, rank)
        local = self.log_path(key, stream)
        if not state.is_active() and local.exists():
            data = local.read_bytes()
            start = max(0, len(data) + offset) if offset < 0 else min(offset, len(data))
            chunk = data[start:start + max_bytes]
            return {"data": chunk.decode("utf-8", "replace"), "offset": start + len(chunk),
                    "eof": start + len(chunk) >= len(data), "state": state.value}
        where = self.store.rank_node(job_id, t, attempt, rank)
        if where is None:
            return {"data": "", "offset": 0, "eof": state.is_terminal(), "state": state.value,
                    "note": f"job {task_label(job_id, t)} has not started yet ({state.value})"}
        session = self.fleet.sessions.get(where) if self.fleet else None
        if session is None or session.link is None:
            raise NodeUnreachable(f"node {where} is not connected right now; its logs cannot be read")
        res = await session.link.call("logs", key=key, stream=stream, offset=offset, max_bytes=max_bytes)
        return {"data": res.get("data", ""), "offset": res.get("offset", 0), "eof": bool(res.get("eof")),
                "state": self.store.task_states(job_id, t)[0][1].value, "node": where}

    def log_path(self, key: str, stream: str) -> Any:
        """Where the controller keeps a finished job's log copy."""
        return self.settings.home_path / "logs" / f"{key}.{stream}"

    # ---- what the fleet reports -----------------------------------------------------------------

    def active_ranks(self, node: str) -> list[Any]:
        from hybridctl.core.reconcile import ActiveRank

        return [ActiveRank(j, t, a, r, JobStatus(s)) for j, t, a, r, s in self.store.active_ranks(node)]

    def launch_payload(self, rank: Any, node: str) -> dict[str, Any]:
        info = self.store.launch_info(rank.job_id, rank.task, rank.attempt, rank.rank)
        spec = info["spec"]
        envs = dict(spec.get("envs") or {})
        if info["array"]:
            envs["HYBRIDCTL_ARRAY_TASK_ID"] = str(rank.task)
        envs["HYBRIDCTL_ATTEMPT"] = str(rank.attempt)
        return {
            "key": rank.key, "user": info["user"], "uid": info["uid"], "gid": info["gid"], "gpus": info["gpus"],
            "run": spec["run"], "setup": spec.get("setup") or "", "envs": envs, "workdir": spec.get("workdir"),
            "time_limit": spec.get("time_limit"),
        }

    def mark_running(self, job_id: int, task: int) -> None:
        state = self.store.task_states(job_id, task)[0][1]
        if state is JobStatus.STARTING:
            self.store.transition(job_id, task, JobStatus.RUNNING, reason="started", actor_uid=None, now=self.clock())

    def finish(self, job_id: int, task: int, exit_code: int | None, reason: str,
               status: JobStatus = JobStatus.FAILED) -> None:
        state = self.store.task_states(job_id, task)[0][1]
        if state.is_terminal():
            return
        if state is JobStatus.STARTING and status in (JobStatus.TIMEOUT,):
            self.store.transition(job_id, task, JobStatus.RUNNING, reason="started", actor_uid=None, now=self.clock())
        self.store.transition(job_id, task, status, reason=reason, actor_uid=None, now=self.clock(),
                              exit_code=exit_code)
        log.info("job %s %s (%s)", task_label(job_id, task), status.value, reason)

    def requeue_or_fail(self, job_id: int, task: int, reason: str,
                        status: JobStatus = JobStatus.NODE_LOST) -> None:
        """PREEMPTED/NODE_LOST, then back to PENDING while restarts remain, else FAILED."""
        (t, state, attempt), = self.store.task_states(job_id, task)
        if not state.is_active():
            return
        max_restarts = self.store.max_restarts(job_id)
        now = self.clock()
        with self.store.tx() as c:
            self.store.transition(job_id, task, status, reason=reason, actor_uid=None, now=now, conn=c)
            if attempt < max_restarts:
                self.store.transition(job_id, task, JobStatus.PENDING,
                                      reason=f"requeued (attempt {attempt + 1} of {max_restarts})",
                                      actor_uid=None, now=now, conn=c)
            else:
                self.store.transition(job_id, task, JobStatus.FAILED,
                                      reason=f"{reason}; no restarts left (max_restarts {max_restarts})",
                                      actor_uid=None, now=now, conn=c)

    def release(self, key: str) -> None:
        """A rank's processes are gone on its node: free what it held (cancelled jobs wait for this)."""
        from hybridctl.core.reconcile import parse_key

        parsed = parse_key(key)
        if parsed is not None:
            self.store.release_rank(*parsed, now=self.clock())
            self.on_change()

    def node_lost(self, name: str, reason: str) -> None:
        now = self.clock()
        self.store.set_link(name, NodeState.LOST, reason, now)
        for job_id, task, state in self.store.tasks_on(name):
            if JobStatus(state).is_active():
                self.requeue_or_fail(job_id, task, f"node {name} lost: {reason}")
        self.store.release_node(name, now)
        self.on_change()

    def set_link(self, name: str, state: NodeState, reason: str) -> None:
        self.store.set_link(name, state, reason, self.clock(), seen=state is NodeState.UP)
        self.on_change()

    def node_hardware(self, name: str, gpus: list[dict[str, Any]], cpus: float, memory_mb: int) -> None:
        old = self.store.node(name)
        merged = []
        prev = {g["index"]: g for g in old.gpus}
        for g in gpus:
            p = prev.get(g["index"], {})
            merged.append({**g, **{k: p[k] for k in ("healthy", "reason", "foreign") if k in p}})
        if (tuple(merged), cpus, memory_mb) != (old.gpus, old.cpus, old.memory_mb):
            self.store.set_hardware(name, merged, cpus, memory_mb, self.clock())
            self.on_change()

    def node_gpu_health(self, name: str, health: dict[int, tuple[bool, str, bool]]) -> None:
        old = self.store.node(name)
        new = []
        for g in old.gpus:
            healthy, reason, foreign = health.get(g["index"], (g.get("healthy", True), g.get("reason", ""), False))
            new.append({**g, "healthy": healthy, "reason": reason, "foreign": foreign})
        if tuple(new) != old.gpus:
            for g_old, g_new in zip(old.gpus, new):
                if g_old.get("healthy", True) != g_new["healthy"]:
                    log.warning("node %s GPU %s %s %s", name, g_new["index"],
                                "healthy again" if g_new["healthy"] else "UNHEALTHY:", g_new["reason"])
            self.store.set_hardware(name, new, old.cpus, old.memory_mb, self.clock())
            self.on_change()

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
