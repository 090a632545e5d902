"""The controller's request handlers: every action a client can ask for, with its permission check.

The daemon calls `handle()` for each request read from the socket. A request that changes a job's
state after it was queued (cancel) goes through `control.lifecycle`; the fleet and the autoscaler
are seen only through the narrow views of `control.ports`, passed in by `daemon.py`. The cloud
requests (`cloud status|offers|cost`, wait-or-pay) are `control.cloud_requests.CloudRequests`, a
base of `Controller`. Everything here runs on the daemon's one event loop."""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import logging
import math
import pwd
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from hybridctl.cloud.bootstrap import AgentInstall, install_over_ssh
from hybridctl.config import Settings
from hybridctl.control import outputs
from hybridctl.control.checks import request_flag, request_list, request_mapping, request_text
from hybridctl.control.cloud_requests import CloudRequests
from hybridctl.control.identity import Caller, user_name
from hybridctl.control.lifecycle import Lifecycle
from hybridctl.control.limits import BadRequest, LimitExceeded, check_submit, mask_secrets, redact
from hybridctl.control.nodes import check_name
from hybridctl.control.ports import CloudView, FleetView
from hybridctl.control.scheduler import Scheduler
from hybridctl.core import schedule as sched
from hybridctl.core import fields, wire
from hybridctl.core.environment import image_refusal
from hybridctl.core.estimate import duration
from hybridctl.core.errors import HybridctlError, NotFound, PermissionDenied, SpecError, Unschedulable
from hybridctl.core.model import (
    GpuSlot,
    JobSpec,
    JobStatus,
    NodeState,
    NodeView,
    Policy,
    Resources,
    ScheduleDecision,
    task_label,
)
from hybridctl.core.reconcile import job_key
from hybridctl.core.spec import apply_flags, load_tasks, parse_spec, resolve_paths
from hybridctl.ssh.link import NodeUnreachable, Target, connect, pin_host_key
from hybridctl.store.sqlite import NodeRecord, Store, Submitter

log = logging.getLogger("hybridctl.controller")

def parse_job_ref(ref: object) -> tuple[int, int | None]:
    """'42' -> (42, None): the whole job; '42_7' -> (42, 7): one array task (core/fields: ASCII
    digits below 2**63, else a SpecError naming JOB; a client sends any bytes it likes)."""
    return fields.parse_job_ref(ref)


NODE_NAME = "a node's name, a string (`hybridctl nodes` lists them)"
_FLAG_KEYS = frozenset(inspect.signature(apply_flags).parameters) - {"data"}
"""The command-line overrides `submit` takes in `flags` (core/spec.apply_flags's keywords)."""


CACHE_ITEMS_LISTED = 200
"""Entries per node `nodes --cache` lists (the largest); the summary counts them all."""


CACHE_ID_SHOWN = 16
"""Hex digits of a cache id a non-admin sees. The whole id is a capability: a node's cache objects
are 0444 files in a 0711 directory, so whoever knows a SHA-256 can open that object by name."""


def cache_items(held: Any, admin: bool = False) -> list[dict[str, Any]]:
    """A node's cache (core/locality.NodeCache) as rows: kind, content id, bytes; largest first.
    Ids are cut to CACHE_ID_SHOWN hex digits unless `admin`."""
    if held is None:
        return []
    rows = [("env", h, n) for h, n in held.envs.items()] + [("data", s, n) for s, n in held.objects.items()]
    rows.sort(key=lambda r: (-r[2], r[0], r[1]))
    return [{"kind": k, "id": i if admin else i[:CACHE_ID_SHOWN], "bytes": n}
            for k, i, n in rows[:CACHE_ITEMS_LISTED]]


class Controller(CloudRequests):
    """The request handlers. `daemon.py` passes in the parts (built once, in order); a test may
    leave them out: without `lifecycle` and `scheduler` the controller builds its own on `store`
    (calling `on_change` after a change), without `fleet` no node has a session, and without
    `cloud` no autoscaler runs. `clock` is wall time, injectable for tests."""

    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float] = time.time, *,
                 lifecycle: Lifecycle | None = None, scheduler: Scheduler | None = None,
                 fleet: FleetView | None = None, cloud: CloudView | None = None,
                 on_change: Callable[[], None] = lambda: None, observer: Any = None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.lifecycle = lifecycle if lifecycle is not None else Lifecycle(store, settings, clock, on_change)
        self.scheduler = scheduler if scheduler is not None else Scheduler(store, settings, self.lifecycle, clock)
        self.fleet = fleet
        self.cloud = cloud
        self.observer = observer
        """control.metrics.Observer: history, idle flags, job.log values (None: not observed)."""
        self._shape_cache: tuple[int, list[NodeView] | None] = (-1, None)

    @property
    def policy(self) -> Policy:
        return self.scheduler.policy

    def schedule(self) -> ScheduleDecision:
        """One scheduling pass (`Scheduler.schedule`); the daemon calls the scheduler itself."""
        return self.scheduler.schedule()

    # ---- dispatch -------------------------------------------------------------------------------

    def handle(self, caller: Caller, op: str, args: dict[str, Any]) -> Any:
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            ops = ", ".join(sorted(n[3:] for n in dir(self) if n.startswith("op_")))
            raise HybridctlError(f"unknown request {op!r}; this controller knows: {ops}")
        _check_arguments(op, fn, args)
        return fn(caller, **args)

    # ---- jobs -----------------------------------------------------------------------------------

    def op_ping(self, caller: Caller) -> dict[str, Any]:
        return {"user": caller.user, "uid": caller.uid, "admin": caller.admin, "schema": self.store.schema_version}

    def op_submit(
        self, caller: Caller, spec: dict[str, Any] | None = None, yaml: str | None = None, source: str = "",
        flags: dict[str, Any] | None = None, base_dir: str | None = None, full: bool = False,
        cwd: str | None = None,
    ) -> dict[str, Any]:
        """Queue a job. `spec` is a user-level mapping, or `yaml` the text of a job file named `source`;
        `flags` are command-line overrides (as typed). Paths (workdir, checkpoint_dir) are made
        absolute here, once: `~` is the home of the caller's uid (never a name the client sends),
        a relative `workdir` is relative to `cwd` (where `submit` was typed, as `sky launch` does),
        a relative `checkpoint_dir` in the file to `base_dir` (the file's directory). All
        validation happens here, once; `ids` lists a pipeline's jobs, `id` is its last."""
        request_mapping("spec", spec, "a job spec: an object such as {\"run\": \"python train.py\"}")
        request_text("yaml", yaml, "the text of a job file, a string", optional=True, limit=None, controls=True)
        request_text("source", source, "the job file's name, a string", limit=None, controls=True)
        request_mapping("flags", flags, "command-line overrides: an object such as {\"gpus\": \"A100:2\"}")
        for key in flags or ():
            if key not in _FLAG_KEYS:
                raise SpecError("flags", key, f"accepted: {', '.join(sorted(_FLAG_KEYS))}")
        request_text("base_dir", base_dir, "the job file's directory, a string", optional=True, limit=None,
                     controls=True)
        request_text("cwd", cwd, "the directory `submit` was typed in, a string", optional=True, limit=None,
                     controls=True)
        request_flag("full", full)

        def home(name: str) -> str | None:
            try:
                return (pwd.getpwnam(name) if name else pwd.getpwuid(caller.uid)).pw_dir
            except (KeyError, ValueError):  # no such user; a NUL in the name
                return None

        # A SkyPilot pipeline (several YAML documents) is several tasks: each is checked before
        # any is stored, then all are stored in one transaction, each after the one before.
        tasks = load_tasks(yaml, source) if yaml is not None else [dict(spec or {})]
        most = self.settings.limits.max_pending_tasks_per_user
        if len(tasks) > 1 and (pending := self.store.pending_tasks_of(caller.uid)) + len(tasks) > most:
            # refused before each task is parsed (80k one-line documents held the loop ~3 s)
            raise LimitExceeded(f"job refused: a pipeline of {len(tasks)} tasks and {caller.user}'s {pending} pending "
                                f"tasks are over {most} (limits.max_pending_tasks_per_user); split the pipeline")
        spot = self.settings.cloud.default_market == "spot"  # for jobs that do not say use_spot
        jobs, warnings = [], []
        for data in tasks:
            data = resolve_paths(data, base_dir=base_dir, cwd=cwd, home=home, source=source)
            if flags:
                data = apply_flags(data, **resolve_paths(flags, base_dir=cwd, home=home, flags=True))
            job, said = parse_spec(data, source, default_use_spot=spot, now=self.clock())  # now: a relative deadline
            warnings += [w for w in said if w not in warnings]
            limit = 1000 if caller.admin else self.settings.max_user_priority
            if job.priority > limit:
                raise PermissionDenied(
                    f"priority {job.priority} is above {limit}, the most a non-admin may set; "
                    f"ask an admin (group {self.settings.admin_group}) or use a lower --priority"
                )
            said = self._check_fits(job.resources, job.num_nodes, job.placement)
            warnings += [said] if said and said not in warnings else []
            if job.image and self.fleet is not None:  # nodes say in hello what they can run it with
                cloud = self.settings.cloud
                why = image_refusal(job.image, self.fleet.runtimes(), cloud.runtimes if cloud.enabled else ())
                if why:
                    raise Unschedulable(f"job refused: {why}")
            self._check_limits(caller, job, earlier=jobs)  # a pipeline's earlier tasks count too
            for dep in (*job.depends_on, *(d for _, d in job.dependencies)):
                self.store.job_owner(dep)  # NotFound names the missing job
            jobs.append(job)
        who = Submitter(caller.uid, caller.user, caller.gid, caller.group)
        ids = self.store.submit_chain(jobs, who, self.clock()) if len(jobs) > 1 else \
            [self.store.submit(jobs[0], who, self.clock())]
        job_id = ids[-1]  # a pipeline's last job: `submit --wait` waits for the whole chain
        log.debug("job %s submitted by %s (%s)", ",".join(map(str, ids)), caller.user, job.resources.describe())
        self.lifecycle.changed()
        out: dict[str, Any] = {"id": job_id, "warnings": warnings}
        if len(ids) > 1:
            out["ids"] = ids
        if full:
            out["job"] = self.store.job(job_id)
            out["job"]["spec"] = mask_secrets(out["job"]["spec"])
        return out

    def _fleet_shape(self) -> list[NodeView]:
        """Every node as if empty and up: what `never_fits` needs. Cached until a node's shape changes."""
        version, shape = self._shape_cache
        if version != self.store.fleet_version or shape is None:
            shape = [
                NodeView(n.name, tuple(GpuSlot(int(g["index"]), str(g["model"])) for g in n.gpus), n.cpus, n.cpus,
                         n.memory_mb, n.memory_mb, NodeState.UP, n.site)
                for n in self.store.nodes()
            ]
            self._shape_cache = (self.store.fleet_version, shape)
        return shape

    def _check_fits(self, resources: Resources, num_nodes: int, placement: str) -> str:
        """Refuse a job no node of its placement can ever hold (Unschedulable); return a warning
        for one that waits for nodes that will not come ('' if none)."""
        nodes = [n for n in self._fleet_shape() if placement == "any" or n.site == placement]
        if not nodes:
            if placement == "cloud" and not self.settings.cloud.enabled:
                return ("placement: cloud, but bursting is off (cloud.enabled) and no cloud node is up:"
                        " the job waits until an admin turns bursting on")
            return ""
        msg = sched.never_fits(nodes, resources, num_nodes)
        if msg and placement != "onprem" and self.cloud is not None:
            # The cloud nodes up now are not all the cloud: a job that fits an offer's node is
            # rented for (num_nodes of it); before, one cloud node up refused a 2-node cloud job.
            offers = self.cloud.offers
            if not offers or any(sched.never_fits([o.view("offer")], resources, 1) is None for o in offers):
                return ""
        if msg:
            raise Unschedulable(f"job refused: {msg}")
        return ""

    def op_queue(
        self, caller: Caller, all: bool = False, user: str | None = None, states: Sequence[str] = (),
        finished: bool = False,
    ) -> list[dict[str, Any]]:
        accepted = f"a list of job states: {', '.join(JobStatus.__members__)}"
        for s in request_list("--state", states, accepted):
            request_text("--state", s, accepted)
        request_text("--user", user, "a user name, a string", optional=True)
        request_flag("--all", all)
        request_flag("--finished", finished)
        states = [s.upper() for s in states]
        for s in states:
            if s not in JobStatus.__members__:
                raise SpecError("--state", s, f"accepted: {', '.join(JobStatus.__members__)}")
        who = None if all else (user or caller.user)
        rows = self.store.queue(user=who, states=states, include_finished=finished)
        if self.observer is not None and self.observer.idle:  # idle-GPU flags (idle.after)
            for r in rows:
                r["idle_s"] = self.observer.idle.get(task_label(r["job_id"], r["task"]))
        return rows

    def _check_limits(self, caller: Caller, job: JobSpec, earlier: Sequence[JobSpec] = ()) -> None:
        """Per-user submit limits (`limits:` in the config), for admins too: they protect the
        controller, not a policy an admin may override per job."""
        tasks = len(job.array.indices) if job.array else 1
        queued = sum(len(j.array.indices) if j.array else 1 for j in earlier)  # not stored yet
        check_submit(self.settings.limits, caller.user, tasks, self.store.pending_tasks_of(caller.uid) + queued)

    def op_show(self, caller: Caller, job: str) -> dict[str, Any]:
        """A job's spec, tasks and history. Another user (not an admin) sees the spec with the
        environment's values, the command and the setup script hidden (`redacted` names them)."""
        job_id, _task = parse_job_ref(job)
        out = self.store.job(job_id)
        out["spec"] = mask_secrets(out["spec"])  # for everyone, the owner too
        if out["uid"] != caller.uid and not caller.admin:
            out["spec"] = redact(out["spec"])
            out["redacted"] = ["envs", "run", "setup"]
        deps = self.store.dependency_status(job_id)  # [{kind, job, state}]: which are met
        if deps:
            out["dependencies"] = deps
        if any(t["state"] == "PENDING" for t in out["tasks"]):
            out["wait_or_pay"] = self.cloud_wait_or_pay(job_id)
        placed = {}  # per task, why cache-aware placement chose its node (the "placed on" event)
        for e in out.get("events", ()):
            if e["to"] == "STARTING":
                placed[str(e["task"] or 0)] = (e["reason"] or "").removeprefix("placed").removeprefix(" on ")
        if any(placed.values()):
            out["placed"] = {t: r for t, r in placed.items() if r}
        if any(t["state"] in ("PENDING", "STARTING", "RUNNING") for t in out["tasks"]):
            # What backfill assumes it runs for: 'time limit 2h', 'estimate: p80 of 12 runs ...'.
            est = self.scheduler.runtimes.estimate(job_id, out["user"], self.clock())
            out["runtime"] = est.source
            if not out["spec"].get("time_limit"):
                learnt = self._earlier_run(job_id, est.seconds, bool(out["array"]))
                if learnt is not None:
                    out["earlier_run"] = learnt
        out.update(self._rule_marks(out))
        if self.observer is not None:  # last job.log values and idle flags, per task
            for t in out["tasks"]:
                lbl = task_label(job_id, t["task"])
                t["metrics"] = self.observer.job_metrics.get(lbl) if out["uid"] == caller.uid or caller.admin else None
                t["idle_s"] = self.observer.idle.get(lbl)
        return out

    def _rule_marks(self, job: dict[str, Any]) -> dict[str, Any]:
        """What the scheduler's rules make of the job beyond its spec (shown by `show`, so a user
        learns it may be stopped before it is): `priority_boost` (`multi_node_priority`),
        `preemptible_by` (why a job not marked `preemptible: true` may be preempted) and, for a
        preemptible job, `preempt_grace` (the seconds a preemption on-prem leaves it to checkpoint)
        and `preempt_grace_cloud` (on a cloud node, where that differs)."""
        rules = self.scheduler.policy
        spec = job["spec"]
        out: dict[str, Any] = {}
        priority = int(job["priority"])
        if rules.multi_node_priority and int(spec.get("num_nodes") or 1) > 1:
            out["priority_boost"] = rules.multi_node_priority
            priority += rules.multi_node_priority
        if not spec.get("preemptible"):
            if rules.preempt_checkpointing and spec.get("checkpoint_dir") and spec.get("deadline") is None:
                out["preemptible_by"] = "it checkpoints and has no deadline (scheduler.preempt_checkpointing)"
            elif rules.preempt_below is not None and priority < rules.preempt_below:
                out["preemptible_by"] = f"its priority {priority} is below scheduler.preempt_below {rules.preempt_below}"
        if spec.get("preemptible") or "preemptible_by" in out:
            out["preempt_grace"] = self.settings.preemption_grace(cloud=False)  # as the fleet's stop gives it
            on_cloud = self.settings.preemption_grace(cloud=True)
            if on_cloud != out["preempt_grace"]:
                out["preempt_grace_cloud"] = on_cloud
        return out

    def _earlier_run(self, job_id: int, estimate_s: float | None, array: bool) -> dict[str, Any] | None:
        """What the burst policy learnt from a pending job's stopped attempts (`Limits.lindy`,
        `Store.stopped_runs`), where it says more than the estimate (else `unknown_runtime`): the
        task that ran longest, how long, and the run time now expected. None: nothing learnt."""
        lindy = self.settings.cloud.burst.lindy
        ran = self.store.stopped_runs(job_id) if lindy > 0 else {}
        if not ran:
            return None
        (_job, task), longest = max(ran.items(), key=lambda kv: (kv[1], -kv[0][1]))
        expected = lindy * longest
        if expected <= (estimate_s if estimate_s is not None else self.settings.cloud.burst.unknown_runtime):
            return None
        who = f"task {task_label(job_id, task)} " if array else ""
        return {"task": task, "ran_s": longest, "expected_s": expected,
                "text": f"{who}ran {duration(longest)} in an earlier attempt without finishing: "
                        f"expected ≥ {duration(expected)}"}

    async def op_eff(self, caller: Caller, job: str) -> dict[str, Any]:
        """A task's efficiency (`hybridctl eff`): its owner or an admin."""
        job_id, task = parse_job_ref(job)
        self._owned(caller, job_id, "see the efficiency of")
        if self.observer is None or not self.settings.metrics.history:
            raise HybridctlError("this controller keeps no telemetry history (metrics.history is off)")
        eff = await self.observer.efficiency(job_id, task or 0)
        if eff is None:
            raise NotFound(f"job {job} has not held any node yet: no efficiency to show")
        return eff

    async def op_history(self, caller: Caller, job: str | None = None, node: str | None = None,
                         seconds: float = 3600.0) -> dict[str, Any]:
        """Chart series from the telemetry history: a job's GPUs and logged metrics (its owner or
        an admin), or a node's host and GPU figures over the last `seconds` (for the TUI)."""
        from hybridctl.control.metrics import history_of

        if (job is None) == (node is None):
            raise SpecError("job/node", f"{job}/{node}", "exactly one of a job id or a node name")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= 400 * 86400:
            raise SpecError("seconds", seconds, "a number of seconds from 1 to 400 days")
        if self.observer is None or not self.settings.metrics.history:
            raise HybridctlError("this controller keeps no telemetry history (metrics.history is off)")
        if job is not None:
            job_id, task = parse_job_ref(job)
            self._owned(caller, job_id, "see the history of")
            return await history_of(self.settings, self.clock, job_id, task or 0, None, seconds)
        request_text("node", node, NODE_NAME)
        self.store.node(str(node))  # NotFound names the node
        return await history_of(self.settings, self.clock, None, 0, str(node), float(seconds))

    def _owned(self, caller: Caller, job_id: int, verb: str) -> None:
        uid, owner = self.store.job_owner(job_id)
        if uid != caller.uid and not caller.admin:
            raise PermissionDenied(
                f"you ({caller.user}) may not {verb} job {job_id}: it belongs to {owner}; "
                f"only its owner or an admin (group {self.settings.admin_group}) may"
            )

    def op_cancel(self, caller: Caller, jobs: Sequence[str] = (), all_mine: bool = False,
                  reason: str = "") -> dict[str, Any]:
        request_list("JOB", jobs, "a list of job ids, e.g. [\"42\", \"43_7\"]")
        request_flag("--all-mine", all_mine)
        reason = wire.text(request_text("reason", reason, "a reason, a string of at most "
                                        f"{wire.MAX_TEXT} characters", controls=True)) or ""
        targets: list[tuple[int, int | None]] = [parse_job_ref(j) for j in jobs]
        if all_mine:
            targets += [(j, t) for j, t in self.store.user_task_ids(caller.user)]
        if not targets:
            raise SpecError("JOB", "", "name at least one job id, or use --all-mine")
        for job_id, _ in targets:
            self._owned(caller, job_id, "cancel")
        cancelled, skipped, stopping = self.lifecycle.cancel(
            targets, reason=reason or f"cancelled by {caller.user}", actor_uid=caller.uid, real_nodes=self._real_nodes)
        if self.fleet is not None:
            for node in stopping:  # converge now (stop the processes), not at the node's next poll
                self.fleet.kick(node)
        return {"cancelled": cancelled, "skipped": skipped}

    def _real_nodes(self, job_id: int, task: int) -> list[str]:
        """The nodes with an agent (not simulated) that hold the task; none without a fleet."""
        if self.fleet is None:
            return []
        simulated = {n.name for n in self.store.nodes() if n.simulated}
        return [node for node in self.store.task_nodes(job_id, task) if node not in simulated]

    def op_priority(self, caller: Caller, job: str, priority: int) -> dict[str, Any]:
        job_id, _ = parse_job_ref(job)
        self._owned(caller, job_id, "re-prioritise")
        if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
            raise SpecError("priority", priority, "a whole number from -1000 to 1000")
        limit = 1000 if caller.admin else self.settings.max_user_priority
        if priority > limit:
            raise PermissionDenied(f"priority {priority} is above {limit}, the most a non-admin may set")
        self.store.set_priority(job_id, priority, caller.uid, self.clock())
        self.lifecycle.changed()
        return {"id": job_id, "priority": priority}

    def op_usage(self, caller: Caller, by: str = "user", since: float = 7 * 86400) -> list[dict[str, Any]]:
        if by not in ("user", "group"):
            raise SpecError("--by", by, "accepted: user, group")
        if wire.number(since, 0, 2**53) is None:
            raise SpecError("--since", since, "a number of seconds back from now, 0 or more")
        now = self.clock()
        totals: dict[str, list[float]] = {}
        for r in self.store.usage_records(now - since, now):
            t = totals.setdefault(r.user if by == "user" else r.group, [0.0, 0.0])
            t[0] += r.gpus * max(0.0, r.end - r.start) / 3600.0
            t[1] += max(0.0, r.end - r.start) / 3600.0
        rows = [
            {by: k, "gpu_hours": round(v[0], 3), "job_hours": round(v[1], 3)}
            for k, v in sorted(totals.items(), key=lambda kv: -kv[1][0])
        ]
        if self.observer is not None and self.settings.metrics.history:
            # GPU-hours held vs used (utilisation-weighted), from telemetry (a small per-hour table)
            from hybridctl.store.telemetry import usage_report

            used: dict[str, list[float]] = {}
            for (user, group), (held_h, used_h) in usage_report(self.settings.history_path, now - since).items():
                u = used.setdefault(user if by == "user" else group, [0.0, 0.0])
                u[0] += held_h
                u[1] += used_h
            for r in rows:
                held_h, used_h = used.get(r[by], (0.0, 0.0))
                r["gpu_hours_observed"] = round(held_h, 4)
                r["gpu_hours_used"] = round(used_h, 4)
        return rows

    def op_events(self, caller: Caller, limit: int = 200, before_id: int | None = None) -> list[dict[str, Any]]:
        """The audit log (who did what, when), newest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise SpecError("limit", limit, "a whole number from 1 to 10000")
        if before_id is not None and wire.integer(before_id, 0, 2**63 - 1) is None:  # else a traceback in SQLite
            raise SpecError("before_id", before_id, "an event id: a whole number, 0 or more")
        rows = self.store.events(limit, before_id)
        for r in rows:
            r["actor"] = "controller" if r["actor_uid"] is None else user_name(r["actor_uid"])
        return rows

    # ---- nodes ----------------------------------------------------------------------------------

    def op_nodes(self, caller: Caller, cache: bool = False) -> list[dict[str, Any]]:
        views = {v.name: v for v in self.store.node_views()}
        telemetry = self.fleet.telemetry() if self.fleet else {}
        caches = self.fleet.caches() if self.fleet else {}
        rented = {r["node"]: r for r in self.store.cloud_instances()} if self.settings.cloud.enabled else {}
        out = []
        for n in self.store.nodes():
            v = views[n.name]
            d = n.to_dict(busy=v.cpus_free < v.cpus_total or any(not g.free for g in v.gpus))
            d["gpus_total"] = len(v.gpus)
            d["gpus_used"] = sum(1 for g in v.gpus if not g.free)
            d["cpus_free"] = v.cpus_free
            d["memory_free_mb"] = v.memory_free_mb
            d["telemetry"] = telemetry.get(n.name)
            link = self.fleet.link_state(n.name) if self.fleet else None
            d["link_error"] = link[0] if link else ""
            d["containment"] = link[1] if link else None
            d["cache"] = held.summary() if (held := caches.get(n.name)) is not None else None
            if cache:  # `nodes --cache`: what it holds, largest first (content ids, not paths)
                d["cache_items"] = cache_items(held, caller.admin)
            if n.name in rented:
                d["provider"] = rented[n.name]["provider"]
                d["price_hourly"] = rented[n.name]["price_hourly"]
            out.append(d)
        return out

    def _admin(self, caller: Caller, verb: str) -> None:
        if not caller.admin:
            raise PermissionDenied(
                f"you ({caller.user}) may not {verb}: only root and members of group {self.settings.admin_group} may"
            )

    def op_drain(self, caller: Caller, node: str, reason: str = "") -> dict[str, Any]:
        request_text("node", node, NODE_NAME)
        self._admin(caller, f"drain node {node}")
        # shown in `nodes` and the TUI: control characters are replaced (wire.text)
        reason = wire.text(request_text("reason", reason, f"a reason, a string of at most {wire.MAX_TEXT} "
                                        "characters", controls=True)) or ""
        self.store.set_drain(node, True, reason or f"drained by {caller.user}", self.clock())
        self.lifecycle.changed()
        return {"node": node, "state": "DRAINING"}

    def op_resume(self, caller: Caller, node: str) -> dict[str, Any]:
        request_text("node", node, NODE_NAME)
        self._admin(caller, f"resume node {node}")
        self.store.set_drain(node, False, "", self.clock())
        self.lifecycle.changed()
        return {"node": node, "state": self.store.node(node).state(busy=False)[0].value}

    async def op_node_add(
        self, caller: Caller, name: str, host: str, port: int = 22, user: str | None = None,
        identity: str | None = None, agent_socket: str | None = None, accept_new: bool = False,
        site: str = "onprem", cpus: float | None = None, install: bool = False, python: str | None = None,
        wheels: str | None = None, install_dir: str | None = None, systemd: bool = True,
    ) -> dict[str, Any]:
        """Pin the host key (with accept_new), install the agent over SSH (with install), probe it,
        record the node, start its session. With install, adding a node again upgrades its agent."""
        self._admin(caller, "add nodes")
        check_name(request_text("NAME", name, "a node's name, a string", limit=None, controls=True))
        if wire.integer(port, 1, 65535) is None:
            raise SpecError("--port", port, "a TCP port from 1 to 65535")
        request_text("--host", host, "an SSH host name or address, or 'local'")
        for flag, given in (("--user", user), ("--identity", identity), ("--agent-socket", agent_socket),
                            ("--python", python), ("--wheels", wheels), ("--install-dir", install_dir)):
            request_text(flag, given, "a string", optional=True)
        for flag, given in (("--accept-new", accept_new), ("--install", install), ("systemd", systemd)):
            request_flag(flag, given)
        if site not in ("onprem", "cloud"):
            raise SpecError("--site", site, "accepted: onprem, cloud")
        if cpus is not None and not (isinstance(cpus, (int, float)) and math.isfinite(cpus) and cpus > 0):
            raise SpecError("--cpus", cpus, "a number of CPU cores greater than 0, e.g. 8")
        self._check_install(host, agent_socket, install, python, wheels, install_dir, systemd)
        try:
            old: NodeRecord | None = self.store.node(name)
        except NotFound:
            old = None
        upgrade = install and old is not None and (old.host, old.port) == (host, int(port))
        if old is not None and not upgrade:
            raise HybridctlError(f"node {name!r} already exists; `hybridctl node remove {name}` first"
                                 " (or, to upgrade its agent, add it again with --install and the same --host, --port)")
        known = Path(self.settings.known_hosts_path)
        fingerprint = None
        if accept_new and host not in ("local", ""):
            fingerprint = await pin_host_key(host, int(port), known)
        installed = None
        if install:
            spec = AgentInstall(name, python or "python3", install_dir or "", systemd, Path(wheels) if wheels else None)
            installed = await install_over_ssh(host, int(port), user, known, Path(identity) if identity else None, spec)
            agent_socket = installed.socket
        target = Target(name, host, int(port), user, identity, agent_socket, str(known),
                        self.settings.fleet.bridge, self.settings.fleet.agent_command)
        link = await connect(target)
        try:
            answer = await link.call("hello")
        finally:
            await link.close()
        problems: list[wire.Problem] = []
        checked = wire.hello(answer, problems)
        if problems:  # a node is believed only about what it reports sanely: refuse it whole here
            raise HybridctlError(f"node {name}: the agent's hello is malformed: "
                                 + "; ".join(str(p) for p in problems[:5]), title="node add")
        hello = checked.to_dict()
        gpus = [{"index": g.index, "model": g.model, "memory_mb": g.memory_mb} for g in checked.gpus or ()]
        reported = checked.cpus or 1.0
        rec = NodeRecord(name, host, int(port), user, identity, agent_socket, site, NodeState.UP, "", False, "",
                         tuple(gpus), float(cpus or reported), checked.memory_mb or 0, False,
                         self.clock(), float(cpus) if cpus else None)
        self.store.add_node(rec, self.clock(), replace=upgrade)
        if self.fleet:
            self.fleet.sync()
        self.lifecycle.changed()
        return {"node": name, "gpus": gpus, "gpu_source": hello.get("gpu_source"), "gpu_error": hello.get("gpu_error"),
                "cpus": rec.cpus, "cpus_reported": reported, "memory_mb": rec.memory_mb, "host_key": fingerprint,
                "agent_version": hello.get("agent_version"), "upgraded": upgrade,
                "install": installed and {"dir": installed.remote_dir, "service": installed.service,
                                          "socket": installed.socket, "steps": installed.steps}}

    @staticmethod
    def _check_install(host: str, agent_socket: str | None, install: bool, python: str | None, wheels: str | None,
                       install_dir: str | None, systemd: bool) -> None:
        """The flags of `node add --install`, checked before anything touches the node."""
        if not install:
            for flag, given in (("--python", python), ("--wheels", wheels), ("--install-dir", install_dir),
                                ("--no-systemd", not systemd)):
                if given:
                    raise SpecError(flag, given, "add --install, or leave it out", problem="applies to --install only")
            return
        if host in ("local", ""):
            raise SpecError("--host", host, "--install copies the agent over SSH: name the server's SSH host")
        if agent_socket:
            raise SpecError("--agent-socket", agent_socket, "leave it out with --install: the agent listens on "
                            "INSTALL_DIR/agent.sock")
        if install_dir and not install_dir.startswith("/"):
            raise SpecError("--install-dir", install_dir, "an absolute path on the node, e.g. /opt/hybridctl-agent")
        if wheels and not (Path(wheels).is_dir() and any(Path(wheels).glob("*.whl"))):
            raise SpecError("--wheels", wheels, "a directory of .whl files on this host, made with e.g. "
                            "`pip download -d DIR psutil nvidia-ml-py`")

    def op_node_remove(self, caller: Caller, name: str) -> dict[str, Any]:
        request_text("name", name, NODE_NAME)
        self._admin(caller, f"remove node {name}")
        self.store.remove_node(name)
        if self.fleet:
            self.fleet.sync()
        return {"node": name, "removed": True}

    # ---- logs -----------------------------------------------------------------------------------

    async def op_logs(self, caller: Caller, job: str, stream: str = "stdout", offset: int = 0,
                      max_bytes: int = 65536, rank: int = 0, attempt: int | None = None) -> dict[str, Any]:
        job_id, task = parse_job_ref(job)
        self._owned(caller, job_id, "read the logs of")
        if stream not in ("stdout", "stderr"):
            raise SpecError("--stream", stream, "accepted: stdout, stderr")
        # Raw from the socket: each goes into a key (a path), a comparison or the agent's request.
        if wire.integer(rank, 0, 1 << 20) is None:
            raise SpecError("--rank", rank, "a node's rank in the job: a whole number, 0 first")
        if attempt is not None and wire.integer(attempt, 0, 1 << 62) is None:
            raise SpecError("--attempt", attempt, "an attempt of the job: a whole number, 0 first")
        if wire.integer(offset, -(1 << 62), 1 << 62) is None:
            raise SpecError("offset", offset, "a byte offset: an integer (below 0: from the end)")
        if wire.integer(max_bytes, 1, 1 << 20) is None:
            raise SpecError("max_bytes", max_bytes, f"an integer from 1 to {1 << 20}")
        states = self.store.task_states(job_id, task if task is not None else None)
        if task is None and len(states) > 1:
            raise SpecError("JOB", job, f"job {job_id} is an array; name one task, e.g. {job_id}_{states[0].task}")
        t, state, latest = states[0].task, states[0].state, states[0].attempt
        if attempt is None:
            attempt = latest
        elif not 0 <= attempt <= latest:
            raise SpecError("--attempt", attempt, f"job {task_label(job_id, t)} has attempts 0 to {latest}")
        key = job_key(job_id, t, attempt, rank)
        local = self.lifecycle.log_path(key, stream)
        if local.exists():  # the job (or this rank) ended and its log was copied back
            data = local.read_bytes()
            start = max(0, len(data) + offset) if offset < 0 else min(offset, len(data))
            chunk = data[start:start + max_bytes]
            return {"data": chunk.decode("utf-8", "replace"), "offset": start + len(chunk),
                    "eof": start + len(chunk) >= len(data), "state": state.value}
        where = self.store.rank_node(job_id, t, attempt, rank)
        if where is None:
            return {"data": "", "offset": 0, "eof": state.is_terminal(), "state": state.value,
                    "note": f"job {task_label(job_id, t)} has not started yet ({state.value})"}
        if self.fleet is None:
            raise NodeUnreachable(f"node {where} is not connected right now; its logs cannot be read")
        res = await self.fleet.call_agent(where, "logs", key=key, stream=stream, offset=offset, max_bytes=max_bytes)
        return {"data": res.get("data", ""), "offset": res.get("offset", 0), "eof": bool(res.get("eof")),
                "state": self.store.task_states(job_id, t)[0][1].value, "node": where}

    # ---- outputs --------------------------------------------------------------------------------

    async def op_outputs(self, caller: Caller, job: str, attempt: int | None = None,
                         rank: int = 0) -> dict[str, Any]:
        """The files one rank of a cloud job wrote to HYBRIDCTL_OUTPUT_DIR, as the controller copied
        them back when it ended (`files`: {path: size}), for its owner or an admin. The copies sit
        in the controller's private home, so this (and `op_output_read`) is the only way to them.
        `attempt` defaults to the latest one that left outputs; `ranks` and `attempts` say which
        others did; `note` says why there are none."""
        target = self._outputs_of(caller, job, attempt, rank)
        home = self.settings.home_path
        listing = await asyncio.to_thread(outputs.list_copy, home, target.key)
        ranks = [r for r in range(target.num_nodes)
                 if (listing is not None if r == target.rank else outputs.has_copy(home, target.key_of(r)))]
        out: dict[str, Any] = {
            "job": target.label, "attempt": target.attempt, "rank": target.rank, "num_nodes": target.num_nodes,
            "state": target.state.value, "node": target.node, "files": listing.files if listing else {},
            "total": sum(listing.files.values()) if listing else 0, "skipped": listing.skipped if listing else 0,
            "truncated": bool(listing and listing.truncated), "ranks": ranks, "attempts": target.attempts,
        }
        note = target.note(bool(listing and listing.files))
        if note:
            out["note"] = note
        return out

    async def op_output_read(self, caller: Caller, job: str, path: str, offset: int = 0,
                             max_bytes: int = 1 << 20, attempt: int | None = None,
                             rank: int = 0) -> dict[str, Any]:
        """A chunk of one file of a rank's output copy (`op_outputs` lists them): `data` is base64,
        `size` the file's size now, `offset` where the next chunk starts. The path is opened
        relative to the copy's directory fd, one O_NOFOLLOW component at a time; only a regular
        file is read (the controller is root, and the copy's contents came from a node)."""
        if wire.integer(offset, 0, 1 << 62) is None:
            raise SpecError("offset", offset, "a byte offset: an integer, 0 or more")
        if wire.integer(max_bytes, 1, outputs.MAX_CHUNK) is None:
            raise SpecError("max_bytes", max_bytes, f"an integer from 1 to {outputs.MAX_CHUNK}")
        outputs.check_path(path)  # before the job's ownership: a bad request is one whoever sends it
        target = self._outputs_of(caller, job, attempt, rank)

        def read() -> tuple[str, int, int]:  # in a thread: the disk read and the base64 stay off the loop
            data, size = outputs.read_copy(self.settings.home_path, target.key, target.label, path, offset, max_bytes)
            return base64.b64encode(data).decode("ascii"), len(data), size

        text, n, size = await asyncio.to_thread(read)
        return {"data": text, "offset": offset + n, "size": size, "eof": offset + n >= size,
                "attempt": target.attempt, "rank": target.rank}

    def _outputs_of(self, caller: Caller, job: str, attempt: object, rank: object) -> outputs.OutputTarget:
        """Which rank's output copy a request means, after the owner check. As in `op_logs`, an
        array names one task; `attempt` None is the latest attempt that left outputs."""
        job_id, task = parse_job_ref(job)
        self._owned(caller, job_id, "read the outputs of")
        states = self.store.task_states(job_id, task)
        if not states:
            raise NotFound(f"job {job_id} has no task {task}; `hybridctl show {job_id}` lists its tasks")
        if task is None and len(states) > 1:
            raise SpecError("JOB", job, f"job {job_id} is an array; name one task, e.g. {job_id}_{states[0].task}")
        t, state, latest = states[0].task, states[0].state, states[0].attempt
        label = task_label(job_id, t)
        if attempt is not None and wire.integer(attempt, 0, latest) is None:
            raise SpecError("--attempt", attempt, f"job {label} has attempts 0 to {latest}")
        num_nodes = int(self.store.launch_info(job_id, t, 0, 0)["spec"].get("num_nodes") or 1)
        if wire.integer(rank, 0, num_nodes - 1) is None:
            ranks = "rank 0 only" if num_nodes == 1 else f"ranks 0 to {num_nodes - 1}"
            raise SpecError("--rank", rank, f"job {label} has {ranks}")
        home = self.settings.home_path
        attempts = [a for a in range(latest + 1)
                    if any(outputs.has_copy(home, job_key(job_id, t, a, r)) for r in range(num_nodes))]
        if attempt is None:
            attempt = attempts[-1] if attempts else latest
        assert isinstance(attempt, int) and isinstance(rank, int)
        return outputs.OutputTarget(job_id, t, label, attempt, rank, num_nodes, state, latest, attempts,
                                    self.store.rank_node(job_id, t, attempt, rank))


@functools.cache
def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    return [p for name, p in inspect.signature(fn).parameters.items() if name not in ("self", "caller")]


def _check_arguments(op: str, fn: Callable[..., Any], args: dict[str, Any]) -> None:
    """Refuse, naming it, an argument `op` does not take or one it needs and did not get: any
    local user can send either, and Python's own TypeError names a method, not the request."""
    params = _parameters(getattr(fn, "__func__", fn))
    names = [p.name for p in params]
    for key in args:
        if key not in names:
            took = ", ".join(names) or "no arguments"
            raise BadRequest(f"request {op!r}: unknown argument {key!r}; it takes: {took}")
    for p in params:
        if p.default is inspect.Parameter.empty and p.name not in args:
            raise BadRequest(f"request {op!r}: argument {p.name!r} is missing")
