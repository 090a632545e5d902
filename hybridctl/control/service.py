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
from hybridctl.core import wire
from hybridctl.core.errors import HybridctlError, PermissionDenied, SpecError, Unschedulable
from hybridctl.core.retry import Cause, Charge, RequeueDecision, decide
from hybridctl.core.model import (
    ClusterView,
    GpuSlot,
    NodeView,
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
    from hybridctl.control.outputs import OutputTarget

log = logging.getLogger("hybridctl.controller")
_GONE = ("terminated", "failed")
"""Cloud instance states of nodes already given back."""

FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT")
_CANCEL_PER_PASS = 2000
"""Tasks whose dependency failed, cancelled per scheduling pass (one transaction, ~0.1 s)."""


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
        self._shape_cache: tuple[int, list[Any] | None] = (-1, None)

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

    def op_submit(
        self, caller: Caller, spec: dict[str, Any] | None = None, yaml: str | None = None, source: str = "",
        flags: dict[str, Any] | None = None, base_dir: str | None = None, full: bool = False,
        cwd: str | None = None,
    ) -> dict[str, Any]:
        """Queue a job. `spec` is a user-level mapping, or `yaml` the text of a job file named `source`;
        `flags` are command-line overrides (as typed). Paths (workdir, checkpoint_dir) are made
        absolute here, once: `~` is the home of the caller's uid (never a name the client sends),
        a relative path in the file is relative to `base_dir` (the file's directory), one in the
        flags to `cwd` (where they were typed). All validation happens here, once."""
        import pwd

        from hybridctl.core.spec import apply_flags, load_yaml, resolve_paths

        def home(name: str) -> str | None:
            try:
                return (pwd.getpwnam(name) if name else pwd.getpwuid(caller.uid)).pw_dir
            except (KeyError, ValueError):  # no such user; a NUL in the name
                return None

        data: dict[str, Any] = load_yaml(yaml, source) if yaml is not None else dict(spec or {})
        data = resolve_paths(data, base_dir=base_dir, home=home, source=source)
        if flags:
            data = apply_flags(data, **resolve_paths(flags, base_dir=cwd, home=home, flags=True))
        job, warnings = parse_spec(data, source)
        limit = 1000 if caller.admin else self.settings.max_user_priority
        if job.priority > limit:
            raise PermissionDenied(
                f"priority {job.priority} is above {limit}, the most a non-admin may set; "
                f"ask an admin (group {self.settings.admin_group}) or use a lower --priority"
            )
        self._check_fits(job.resources, job.num_nodes, job.placement)
        self._check_limits(caller, job)
        for dep in job.depends_on:
            self.store.job_owner(dep)  # NotFound names the missing job
        who = Submitter(caller.uid, caller.user, caller.gid, caller.group)
        job_id = self.store.submit(job, who, self.clock())
        log.debug("job %d submitted by %s (%s)", job_id, caller.user, job.resources.describe())
        self.on_change()
        out: dict[str, Any] = {"id": job_id, "warnings": warnings}
        if full:
            from hybridctl.control.limits import mask_secrets

            out["job"] = self.store.job(job_id)
            out["job"]["spec"] = mask_secrets(out["job"]["spec"])
        return out

    def _fleet_shape(self) -> list[Any]:
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

    def _check_fits(self, resources: Any, num_nodes: int, placement: str) -> None:
        nodes = [n for n in self._fleet_shape() if placement == "any" or n.site == placement]
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

    def _check_limits(self, caller: Caller, job: Any) -> None:
        """Per-user submit limits (`limits:` in the config), for admins too: they protect the
        controller, not a policy an admin may override per job."""
        from hybridctl.control.limits import check_submit

        tasks = len(job.array.indices) if job.array else 1
        check_submit(self.settings.limits, caller.user, tasks, self.store.pending_tasks_of(caller.uid))

    def op_show(self, caller: Caller, job: str) -> dict[str, Any]:
        """A job's spec, tasks and history. Another user (not an admin) sees the spec with the
        environment's values, the command and the setup script hidden (`redacted` names them)."""
        from hybridctl.control.limits import mask_secrets, redact

        job_id, _task = parse_job_ref(job)
        out = self.store.job(job_id)
        out["spec"] = mask_secrets(out["spec"])  # for everyone, the owner too
        if out["uid"] != caller.uid and not caller.admin:
            out["spec"] = redact(out["spec"])
            out["redacted"] = ["envs", "run", "setup"]
        if any(t["state"] == "PENDING" for t in out["tasks"]):
            out["wait_or_pay"] = self.cloud_wait_or_pay(job_id)
        return out

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
        stopping: set[str] = set()
        why = reason or f"cancelled by {caller.user}"
        with self.store.tx() as c:
            for job_id, task in targets:
                for t, state, _a in self.store.task_states(job_id, task):
                    label = task_label(job_id, t)
                    if state.is_terminal():
                        skipped.append(f"{label} ({state.value})")
                        continue
                    # A dispatched job keeps its GPUs until its node confirms the processes are gone.
                    real = self._real_nodes(job_id, t) if state.is_active() and self.fleet is not None else []
                    self.store.transition(job_id, t, JobStatus.CANCELLED, reason=why, actor_uid=caller.uid, now=now,
                                          release=not real, conn=c)
                    cancelled.append(label)
                    stopping.update(real)
        if self.fleet is not None:
            for node in stopping:  # converge now (stop the processes), not at the node's next poll
                self.fleet.kick(node)
        if cancelled:
            self.on_change()
        return {"cancelled": cancelled, "skipped": skipped}

    def _real_nodes(self, job_id: int, task: int) -> list[str]:
        """The nodes with an agent (not simulated) that hold the task."""
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

    def op_events(self, caller: Caller, limit: int = 200, before_id: int | None = None) -> list[dict[str, Any]]:
        """The audit log (who did what, when), newest first."""
        from hybridctl.control.identity import user_name

        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10000:
            raise SpecError("limit", limit, "a whole number from 1 to 10000")
        rows = self.store.events(limit, before_id)
        for r in rows:
            r["actor"] = "controller" if r["actor_uid"] is None else user_name(r["actor_uid"])
        return rows

    # ---- nodes ----------------------------------------------------------------------------------

    def op_nodes(self, caller: Caller) -> list[dict[str, Any]]:
        views = {v.name: v for v in self.store.node_views()}
        telemetry = self.fleet.telemetry() if self.fleet else {}
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
            session = self.fleet.sessions.get(n.name) if self.fleet else None
            d["link_error"] = session.error if session else ""
            d["containment"] = (session.hello or {}).get("containment") if session else None
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
        site: str = "onprem", cpus: float | None = None, install: bool = False, python: str | None = None,
        wheels: str | None = None, install_dir: str | None = None, systemd: bool = True,
    ) -> dict[str, Any]:
        """Pin the host key (with accept_new), install the agent over SSH (with install), probe it,
        record the node, start its session. With install, adding a node again upgrades its agent."""
        import math
        from pathlib import Path

        from hybridctl.control.nodes import check_name
        from hybridctl.core.errors import NotFound
        from hybridctl.ssh.link import Target, connect, pin_host_key
        from hybridctl.store.sqlite import NodeRecord

        self._admin(caller, "add nodes")
        check_name(name)
        if not 1 <= int(port) <= 65535:
            raise SpecError("--port", port, "a TCP port from 1 to 65535")
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
            from hybridctl.cloud.bootstrap import AgentInstall, install_over_ssh

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
        self.on_change()
        return {"node": name, "gpus": gpus, "gpu_source": hello.get("gpu_source"), "gpu_error": hello.get("gpu_error"),
                "cpus": rec.cpus, "cpus_reported": reported, "memory_mb": rec.memory_mb, "host_key": fingerprint,
                "agent_version": hello.get("agent_version"), "upgraded": upgrade,
                "install": installed and {"dir": installed.remote_dir, "service": installed.service,
                                          "socket": installed.socket, "steps": installed.steps}}

    @staticmethod
    def _check_install(host: str, agent_socket: str | None, install: bool, python: str | None, wheels: str | None,
                       install_dir: str | None, systemd: bool) -> None:
        """The flags of `node add --install`, checked before anything touches the node."""
        from pathlib import Path

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
        self._admin(caller, f"remove node {name}")
        self.store.remove_node(name)
        if self.fleet:
            self.fleet.sync()
        return {"node": name, "removed": True}

    # ---- logs -----------------------------------------------------------------------------------

    async def op_logs(self, caller: Caller, job: str, stream: str = "stdout", offset: int = 0,
                      max_bytes: int = 65536, rank: int = 0, attempt: int | None = None) -> dict[str, Any]:
        from hybridctl.core.reconcile import job_key
        from hybridctl.ssh.link import NodeUnreachable

        job_id, task = parse_job_ref(job)
        self._owned(caller, job_id, "read the logs of")
        if stream not in ("stdout", "stderr"):
            raise SpecError("--stream", stream, "accepted: stdout, stderr")
        states = self.store.task_states(job_id, task if task is not None else None)
        if task is None and len(states) > 1:
            raise SpecError("JOB", job, f"job {job_id} is an array; name one task, e.g. {job_id}_{states[0][0]}")
        t, state, latest = states[0]
        if attempt is None:
            attempt = latest
        elif not 0 <= attempt <= latest:
            raise SpecError("--attempt", attempt, f"job {task_label(job_id, t)} has attempts 0 to {latest}")
        key = job_key(job_id, t, attempt, rank)
        local = self.log_path(key, stream)
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
        session = self.fleet.sessions.get(where) if self.fleet else None
        if session is None or session.link is None:
            raise NodeUnreachable(f"node {where} is not connected right now; its logs cannot be read")
        res = await session.link.call("logs", key=key, stream=stream, offset=offset, max_bytes=max_bytes)
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
        import asyncio

        from hybridctl.control import outputs

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
        import asyncio
        import base64

        from hybridctl.control import outputs

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

    def _outputs_of(self, caller: Caller, job: str, attempt: object, rank: object) -> OutputTarget:
        """Which rank's output copy a request means, after the owner check. As in `op_logs`, an
        array names one task; `attempt` None is the latest attempt that left outputs."""
        from hybridctl.control import outputs
        from hybridctl.core.errors import NotFound
        from hybridctl.core.reconcile import job_key

        job_id, task = parse_job_ref(job)
        self._owned(caller, job_id, "read the outputs of")
        states = self.store.task_states(job_id, task)
        if not states:
            raise NotFound(f"job {job_id} has no task {task}; `hybridctl show {job_id}` lists its tasks")
        if task is None and len(states) > 1:
            raise SpecError("JOB", job, f"job {job_id} is an array; name one task, e.g. {job_id}_{states[0][0]}")
        t, state, latest = states[0]
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

    def checkpoint_path(self, key: str) -> Any:
        """The controller's copy of a job's (or array task's) checkpoint directory."""
        return self.settings.home_path / "checkpoints" / key.split(".", 1)[0]

    def checkpoint_synced(self, key: str, nbytes: int) -> None:
        log.info("checkpoint of %s synced: %d bytes", key.split(".", 1)[0], nbytes)

    def log_path(self, key: str, stream: str) -> Any:
        """Where the controller keeps a finished job's log copy."""
        return self.settings.home_path / "logs" / f"{key}.{stream}"

    # ---- what the fleet reports -----------------------------------------------------------------

    def active_ranks(self, node: str) -> list[Any]:
        from hybridctl.core.reconcile import ActiveRank

        return [ActiveRank(j, t, a, r, JobStatus(s)) for j, t, a, r, s in self.store.active_ranks(node)]

    def held_keys(self, node: str) -> set[str]:
        """The keys of every rank whose allocation on `node` is still open: all `node` is
        believed about (finish, release, logs, checkpoint)."""
        from hybridctl.core.reconcile import job_key

        return {job_key(*r) for r in self.store.held_ranks(node)}

    def _held_by(self, key: str, node: str) -> tuple[int, int, int, int] | None:
        """The parsed key when its rank's open allocation is on `node`, else None (and a warning:
        a node reported on a rank that is not its own, which is a bug or a lie)."""
        from hybridctl.core.reconcile import parse_key

        parsed = parse_key(key)
        if parsed is not None and parsed in self.store.held_ranks(node):
            return parsed
        log.warning("node %s reported on job %s, which holds no allocation there: not believed", node, key)
        return None

    def rank_home(self, key: str) -> str | None:
        """The node this rank of this attempt was placed on (its allocation may be closed since);
        None for a key hybridctl never placed."""
        from hybridctl.core.reconcile import parse_key

        parsed = parse_key(key)
        return None if parsed is None else self.store.rank_node(*parsed)

    def launch_payload(self, rank: Any, node: str) -> dict[str, Any]:
        """What the agent on `node` gets to start one rank. The job's environment comes from
        core/jobenv.py (SKYPILOT_* and HYBRIDCTL_* for every job); secrets travel only in here,
        to the agent, which keeps them in its private job spec and the job's environment."""
        from hybridctl.core.jobenv import RankPlace, job_env, with_user_env

        info = self.store.launch_info(rank.job_id, rank.task, rank.attempt, rank.rank)
        spec = info["spec"]
        nodes = info["rank_nodes"] or [node]
        ips = [self._node_address(n) for n in nodes]
        first = self.store.node(nodes[0])
        place = RankPlace(
            job_id=rank.job_id, task=rank.task, attempt=rank.attempt, rank=rank.rank, array=bool(info["array"]),
            name=spec.get("name") or "", user=info["user"], submitted_at=float(info["submitted_at"]),
            gpus_per_node=len(info["gpus"]), node_ips=tuple(ips), cluster_name=first.name, site=first.site,
        )
        envs = with_user_env(job_env(place), spec.get("envs") or {}, spec.get("secrets") or {})
        payload: dict[str, Any] = {
            "key": rank.key, "user": info["user"], "uid": info["uid"], "gid": info["gid"], "gpus": info["gpus"],
            "run": spec["run"], "setup": spec.get("setup") or "", "envs": envs, "workdir": spec.get("workdir"),
            "time_limit": spec.get("time_limit"),
            # Enforced by the node's cgroups where it has them (hello's `containment`).
            "memory_mb": (spec.get("resources") or {}).get("memory_mb") or None,
            "cpus": (spec.get("resources") or {}).get("cpus"),
        }
        if len(nodes) > 1:
            payload["rendezvous_addr"] = ips[0]
        return payload

    def _node_address(self, name: str) -> str:
        """The address other nodes use to reach `name` (its SSH host; loopback for local agents)."""
        host = self.store.node(name).host
        return "127.0.0.1" if host in ("local", "", "localhost") else host

    def mark_running(self, job_id: int, task: int) -> None:
        state = self.store.task_states(job_id, task)[0][1]
        if state is JobStatus.STARTING:
            self.store.transition(job_id, task, JobStatus.RUNNING, reason="started", actor_uid=None, now=self.clock())

    def rank_finished(self, key: str, exit_code: int | None, reason: str, status: JobStatus, *, node: str) -> None:
        """One rank's processes ended on `node`, which must hold its open allocation. A single-node
        job ends with it; a multi-node job succeeds when every rank exited 0, and fails (stopping
        the other ranks) as soon as one did not."""
        parsed = self._held_by(key, node)
        if parsed is None:
            return
        job_id, task, attempt, rank = parsed
        results = self.store.rank_results(job_id, task, attempt)
        if len(results) <= 1:
            self.finish(job_id, task, exit_code, reason, status=status)
            return
        self.store.release_rank(job_id, task, attempt, rank, self.clock(), exit_code=exit_code)
        if status is not JobStatus.SUCCEEDED:
            self.finish(job_id, task, exit_code, f"rank {rank}: {reason}", status=status, release=False)
            return
        results = self.store.rank_results(job_id, task, attempt)
        if all(end is not None and code == 0 for _r, end, code in results):
            self.finish(job_id, task, 0, f"all {len(results)} ranks exited 0", status=JobStatus.SUCCEEDED)

    def finish(self, job_id: int, task: int, exit_code: int | None, reason: str,
               status: JobStatus = JobStatus.FAILED, release: bool = True) -> None:
        state = self.store.task_states(job_id, task)[0][1]
        if state.is_terminal():
            return
        if state is JobStatus.STARTING and (exit_code is not None or status is JobStatus.TIMEOUT):
            # It ran (it has an exit code) but ended before a poll saw it running: record that it
            # started, so started_at and the history are right for short jobs too.
            self.store.transition(job_id, task, JobStatus.RUNNING, reason="started", actor_uid=None, now=self.clock())
        if (status is JobStatus.FAILED and exit_code is not None) or status is JobStatus.TIMEOUT:
            # A non-zero exit is the job's own failure (a restart), unless its code is in
            # recover_on_exit_codes (a recovery); a time limit is final, as in Slurm.
            d = self._decide(job_id, task, Cause.TIMEOUT if status is JobStatus.TIMEOUT else Cause.EXIT, exit_code)
            if d.requeue:
                again = f"{reason}; {d.note}"
                self.store.transition(job_id, task, JobStatus.PENDING, reason=again, actor_uid=None, now=self.clock(),
                                      release=release, count_restart=d.charge is Charge.RESTART,
                                      recovery=d.kind if d.charge is Charge.RECOVERY else "")
                log.info("job %s requeued (%s)", task_label(job_id, task), again)
                return
            if d.note:
                reason = f"{reason}; {d.note}"
        self.store.transition(job_id, task, status, reason=reason, actor_uid=None, now=self.clock(),
                              exit_code=exit_code, release=release)
        log.info("job %s %s (%s)", task_label(job_id, task), status.value, reason)

    def requeue_or_fail(self, job_id: int, task: int, reason: str,
                        status: JobStatus = JobStatus.NODE_LOST) -> None:
        """PREEMPTED/NODE_LOST, then back to PENDING as a recovery, else FAILED. The job did not
        cause this stop (a reclaim, a scale-down the controller made, a lost node, an agent that
        lost the job), so it never uses up max_restarts; only `recovery.max_recoveries` ends it.
        A task already PREEMPTED (see `preempt`) takes the second step only."""
        (_task, state, _attempt), = self.store.task_states(job_id, task)
        if not state.is_active() and state is not JobStatus.PREEMPTED:
            return
        preempted = JobStatus.PREEMPTED in (state, status)
        d = self._decide(job_id, task, Cause.PREEMPTION if preempted else Cause.NODE_LOSS)
        now = self.clock()
        with self.store.tx() as c:
            if state is not JobStatus.PREEMPTED:
                self.store.transition(job_id, task, status, reason=reason, actor_uid=None, now=now, conn=c)
            if d.requeue:
                self.store.transition(job_id, task, JobStatus.PENDING, reason=d.note, actor_uid=None, now=now,
                                      recovery=d.kind, conn=c)
            else:
                self.store.transition(job_id, task, JobStatus.FAILED, reason=f"{reason}; {d.note}",
                                      actor_uid=None, now=now, conn=c)
        if d.requeue:
            log.info("job %s %s", task_label(job_id, task), d.note)
        else:
            log.warning("job %s failed: %s; %s", task_label(job_id, task), reason, d.note)

    def _decide(self, job_id: int, task: int, cause: Cause, exit_code: int | None = None) -> RequeueDecision:
        """`core.retry.decide` on what this task has used so far and the controller's cap."""
        u = self.store.retry_usage(job_id, task)
        return decide(cause, restarts_used=u.restarts, max_restarts=u.max_restarts, recoveries_used=u.recoveries,
                      max_recoveries=self.settings.recovery.max_recoveries, exit_code=exit_code,
                      recover_codes=u.recover_codes)

    def preempt(self, job_id: int, task: int, reason: str) -> None:
        """A reclaim notice: PREEMPTED now, keeping its GPUs while its node stops it (SIGTERM, then
        the grace period to write a checkpoint); PENDING once its processes are gone and the final
        checkpoint is synced (`release`), or when the node is lost first (`node_lost`)."""
        (_task, state, _attempt), = self.store.task_states(job_id, task)
        if state.is_active():
            self.store.transition(job_id, task, JobStatus.PREEMPTED, reason=reason, actor_uid=None, now=self.clock(),
                                  release=False)

    def release(self, key: str, *, node: str) -> None:
        """A rank's processes are gone on `node`: free what it held there (cancelled jobs wait for
        this; a preempted job goes back to the queue once its last rank is gone). Only the node
        that holds the rank's open allocation can release it."""
        parsed = self._held_by(key, node)
        if parsed is not None:
            job_id, task, attempt, _rank = parsed
            self.store.release_rank(*parsed, now=self.clock())
            (_task, state, now_attempt), = self.store.task_states(job_id, task)
            if state is JobStatus.PREEMPTED and now_attempt == attempt and not self.store.task_nodes(job_id, task):
                self.requeue_or_fail(job_id, task, "preempted")
            self.on_change()

    def node_lost(self, name: str, reason: str) -> None:
        now = self.clock()
        self.store.set_link(name, NodeState.LOST, reason, now)
        for job_id, task, state in self.store.tasks_on(name):
            if JobStatus(state).is_active() or state == JobStatus.PREEMPTED.value:
                self.requeue_or_fail(job_id, task, f"node {name} lost: {reason}")
        self.store.release_node(name, now)
        self.on_change()

    def set_link(self, name: str, state: NodeState, reason: str) -> None:
        self.store.set_link(name, state, reason, self.clock(), seen=state is NodeState.UP)
        self.on_change()

    def node_hardware(self, name: str, gpus: list[dict[str, Any]], cpus: float, memory_mb: int) -> None:
        old = self.store.node(name)
        cpus = old.cpus_override or cpus  # an admin's count (config, node add --cpus) wins
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
        """One pass: read the cluster, plan, record placements and reasons. Its cost follows what
        could start, not how many tasks wait: each job contributes only the window of its pending
        tasks that `sched.window` says could matter (a 100,000-task array is read as a few)."""
        now = self.clock()
        doomed = self.store.failed_dependencies(limit=_CANCEL_PER_PASS)
        if doomed:
            with self.store.tx() as c:
                for job_id, task, dep in doomed:
                    self.store.transition(job_id, task, JobStatus.CANCELLED, reason=f"dependency {dep} did not succeed",
                                          actor_uid=None, now=now, conn=c)
            if len(doomed) >= _CANCEL_PER_PASS:
                self.on_change()  # the rest in the next pass, so that clients are answered in between
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
        decision = sched.plan(view, self.store.pending(window=sched.window(view)), self.policy)
        if decision.placements:
            self.store.start(decision.placements, now)
        self.store.set_reasons(decision.waiting, now)
        return decision

    # ---- cloud ----------------------------------------------------------------------------------

    def _cloud_offers(self) -> list[Any]:
        """Offers as the autoscaler last saw them; with bursting off (or before its first pass),
        the catalog's prices for the configured providers."""
        scaler = getattr(self, "autoscaler", None)
        if scaler is not None and scaler.offers:
            return list(scaler.offers)
        cached: list[Any] | None = getattr(self, "_catalog_offers", None)
        if cached is None:
            from hybridctl.cloud.providers import catalog

            cat = catalog(self.settings)
            cfg = self.settings.cloud
            cached = [o for p in cfg.providers if p in ("simulated", "aws")
                      for o in cat.offers(p, cfg.aws.regions if p == "aws" else None)]
            self._catalog_offers = cached
        return cached

    def op_cloud_status(self, caller: Caller, all: bool = False, ended: int = 0) -> dict[str, Any]:
        """Cloud nodes (with `all`, also every one given back; with `ended`, the last that many
        given back), spend against the limits, and why any burst is held back."""
        from hybridctl.control.autoscaler import limits, utc_day
        from hybridctl.core import burst

        cfg = self.settings.cloud
        lim = limits(self.settings)
        now = self.clock()
        scaler = getattr(self, "autoscaler", None)
        activity = self.store.cloud_node_activity()
        instances = []
        rows = self.store.cloud_instances(live=not (all or ended))
        if ended and not all:
            gone = [r for r in rows if r["state"] in _GONE]
            keep = {r["instance_id"] for r in sorted(gone, key=lambda r: r["ended_at"] or 0)[-ended:]}
            rows = [r for r in rows if r["state"] not in _GONE or r["instance_id"] in keep]
        for r in rows:
            o = r["offer"]
            held, last_end = activity.get(r["node"], (0, None))
            idle = None if held or r["state"] != "up" else now - max(last_end or 0.0, r["ready_at"] or r["launched_at"])
            instances.append({
                "node": r["node"], "provider": r["provider"], "instance_id": r["instance_id"],
                "instance_type": o["instance_type"], "region": o["region"], "zone": o["zone"],
                "market": "spot" if o["spot"] else "on-demand", "gpu_type": o.get("gpu_type"), "gpus": o["gpus"],
                "price_hourly": r["price_hourly"], "state": r["state"], "reason": r["reason"],
                "launched_at": r["launched_at"], "ready_at": r["ready_at"], "ended_at": r["ended_at"],
                "jobs": held, "idle_s": idle,
                "spent_usd": round(r["spent_usd"], 4),
            })
        spent = self.store.cloud_spent_since(utc_day(burst.period_start(now, lim.budget_period)))
        last = scaler.last if scaler is not None else None
        return {
            "enabled": cfg.enabled, "running": scaler is not None, "providers": list(cfg.providers),
            "errors": dict(scaler.errors) if scaler is not None else {},
            "period": lim.budget_period, "spent_usd": round(spent, 4), "budget_usd": lim.budget_usd,
            "hourly_usd": round(sum(i["price_hourly"] for i in instances if i["state"] not in _GONE), 4), "max_hourly_usd": lim.max_hourly_usd,
            "nodes": sum(1 for i in instances if i["state"] not in _GONE), "max_nodes": lim.max_nodes, "after_s": lim.after, "idle_timeout_s": lim.idle_timeout,
            "allow_on_demand": lim.allow_on_demand, "instances": instances,
            "blocked": [{"job": burst.label((b.job_id, b.task)), "reason": b.reason} for b in last.blocked] if last else [],
            "covered": [{"job": burst.label(k), "node": n} for k, n in last.covered.items()] if last else [],
            "notes": list(last.notes) if last else [],
            "last_pass": scaler.last_at if scaler is not None else None,
            "backoffs": [{"pool": p, "until": u, "reason": why} for p, (u, why) in sorted(self.store.cloud_backoffs(now).items())],
            "leaks": list(scaler.leaks) if scaler is not None else [],
        }

    def op_cloud_offers(self, caller: Caller, gpus: str | None = None, spot: bool | None = None) -> list[dict[str, Any]]:
        """Offers, cheapest first; `gpus` ('A100:8', '2') keeps those that can hold that many."""
        from hybridctl.core import burst
        from hybridctl.core.fields import parse_accelerators
        from hybridctl.core.model import Resources

        offers = self._cloud_offers()
        if gpus:
            count, gpu_type = parse_accelerators(gpus, field="--gpus")
            want = Resources(gpus=count, gpu_type=gpu_type, cpus=0.0)
            offers = [o for o in offers if burst.fits(o, want)]
        if spot is not None:
            offers = [o for o in offers if o.spot == spot]
        return [{**o.to_dict(), "pool": o.pool, "market": o.market}
                for o in sorted(offers, key=lambda o: (o.price_hourly, o.pool))]

    def op_cloud_cost(self, caller: Caller, by: str = "node") -> list[dict[str, Any]]:
        """Cloud $ so far and $/h now, per node, job or user (idle node time is its own row)."""
        from hybridctl.cloud.cost import Held, hourly_by_job

        if by not in ("node", "job", "user"):
            raise SpecError("--by", by, "accepted: node, job, user")
        now_rate: dict[str, float] = {}
        for r in self.store.cloud_instances():
            if r["state"] not in ("up", "draining", "bootstrapping"):
                continue
            if by == "node":
                now_rate[r["node"]] = now_rate.get(r["node"], 0.0) + r["price_hourly"]
                continue
            o = r["offer"]
            held = [Held(*a) for a in self.store.cloud_allocations(r["node"], r["billed_until"]) if a[6] is None]
            charges = hourly_by_job(r["price_hourly"], int(o.get("gpus") or 0), float(o.get("cpus") or 1), held)
            idle = r["price_hourly"] - sum(c.usd for c in charges)
            for c in charges:
                k = f"{c.job_id}_{c.task}" if by == "job" else c.user
                now_rate[k] = now_rate.get(k, 0.0) + c.usd
            idle_key = "0_0" if by == "job" else ""
            now_rate[idle_key] = now_rate.get(idle_key, 0.0) + max(0.0, idle)
        rows = []
        seen = set()
        for row in self.store.cloud_costs(by):
            k = row["key"]
            seen.add(k)
            rows.append({by: _cost_label(by, k), "usd": round(row["usd"], 4), "hours": round(row["hours"], 4),
                         "usd_per_hour": round(now_rate.get(k, 0.0), 4), "instances": row["instances"]})
        for k, rate in now_rate.items():
            if k not in seen and rate > 0:
                rows.append({by: _cost_label(by, k), "usd": 0.0, "hours": 0.0, "usd_per_hour": round(rate, 4), "instances": 1})
        return rows

    def cloud_wait_or_pay(self, job_id: int) -> dict[str, Any] | None:
        """For a pending job: the estimated wait on-prem (the scheduler replayed forward over the
        expected ends of running jobs) and the cheapest cloud offer that fits it."""
        import statistics

        from hybridctl.core import burst

        try:
            pending = self.store.pending()
            task = next((t for t in pending if t.job_id == job_id), None)
            if task is None:
                return None
            now = self.clock()
            runtimes = self.store.recent_runtimes()
            default = statistics.median(runtimes) if len(runtimes) >= 5 else 3600.0
            running = [
                burst.Running(node, tuple(gpus), cpus, mem,
                              start + tl if tl else max(start + default, now + default / 4))
                for node, gpus, cpus, mem, start, tl, _j, _t in self.store.running_allocations()
            ]
            limits_ = dict(self.store.time_limits([(t.job_id, t.task) for t in pending]))
            wait, ahead = burst.estimate_wait(task, pending, self.store.node_views(), running, self.policy, now,
                                              limits_, default, max_events=200)
            cfg = self.settings.cloud
            backoff = {p: u for p, (u, _r) in self.store.cloud_backoffs(now).items()}
            offer, why = burst.cheapest(task.resources, self._cloud_offers(), backoff, now,
                                        cfg.burst.allow_on_demand or not task.resources.use_spot)
            text = burst.wait_or_pay(task, wait, ahead, offer, why, task.num_nodes)
            if not cfg.enabled and offer is not None and task.placement != "onprem":
                text += " (bursting is off: cloud.enabled)"
        except HybridctlError as exc:
            return {"text": f"no estimate: {exc.message}"}
        return {"text": text, "local_wait_s": wait, "ahead": ahead,
                "cloud_offer": offer.to_dict() if offer is not None else None}


def _cost_label(by: str, key: str) -> str:
    if by == "job":
        job, _, task = str(key).partition("_")
        return "(idle)" if job == "0" else task_label(int(job), int(task or 0))
    if by == "user":
        return key or "(idle)"
    return str(key)
