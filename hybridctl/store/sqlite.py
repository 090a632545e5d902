"""The job store: SQLite in WAL mode, the only code that speaks SQL.

The controller is the only writer. Every job state change is one transaction that also writes its
event row, and goes through `core.model.check_transition`, so the state machine holds on disk."""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from hybridctl.core.errors import NotFound
from hybridctl.core.model import (
    GpuSlot,
    JobSpec,
    JobStatus,
    NodeState,
    NodeView,
    PendingTask,
    Placement,
    Resources,
    Waiting,
    check_transition,
    task_label,
)
from hybridctl.store.migrations import migrate

_ACTIVE = ("STARTING", "RUNNING")


@dataclass(frozen=True)
class Submitter:
    """Who submitted, from the kernel's peer credentials."""

    uid: int
    user: str
    gid: int
    group: str


@dataclass(frozen=True)
class NodeRecord:
    name: str
    host: str
    port: int
    ssh_user: str | None
    identity: str | None
    agent_socket: str | None
    site: str
    link_state: NodeState
    """UP, UNREACHABLE or LOST: whether the controller can reach the node's agent."""
    link_reason: str
    drained: bool
    drain_reason: str
    gpus: tuple[dict[str, Any], ...]
    """[{index, model, memory_mb?, healthy?, reason?, foreign?}] as the agent last reported."""
    cpus: float
    memory_mb: int
    simulated: bool
    last_seen: float | None = None

    def state(self, busy: bool) -> tuple[NodeState, str]:
        """The state users see: a link problem first, then an admin's drain, else UP."""
        if self.link_state is not NodeState.UP:
            return self.link_state, self.link_reason
        if self.drained:
            return (NodeState.DRAINING if busy else NodeState.DRAINED), self.drain_reason
        return NodeState.UP, ""

    def to_dict(self, busy: bool = False) -> dict[str, Any]:
        state, reason = self.state(busy)
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "ssh_user": self.ssh_user,
            "site": self.site,
            "state": state.value,
            "state_reason": reason,
            "drained": self.drained,
            "gpus": list(self.gpus),
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "simulated": self.simulated,
            "last_seen": self.last_seen,
        }


class Store:
    """A SQLite job store. Not thread-safe: owned by the controller's event loop."""

    def __init__(self, path: Path) -> None:
        import sqlite_utils

        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
        self.path = path
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed tx survives a process crash
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        self.conn = conn
        self.schema_version = migrate(conn)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back whole on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ---- jobs -------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, who: Submitter, now: float) -> int:
        """Insert a job (and its array tasks) in one transaction; return its id."""
        r = spec.resources
        arr = spec.array
        indices: Iterable[int] = arr.indices if arr else (0,)
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO jobs (uid, user, gid, grp, name, spec, priority, submitted_at, num_tasks,"
                " array_spec, throttle, gpus, gpu_type, cpus, memory_mb, num_nodes, placement, max_restarts,"
                " depends_on) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    who.uid, who.user, who.gid, who.group, spec.name, json.dumps(spec.to_dict()),
                    spec.priority, now, len(arr.indices) if arr else 1, str(arr) if arr else None,
                    arr.throttle if arr else None, r.gpus, r.gpu_type, r.cpus, r.memory_mb,
                    spec.num_nodes, spec.placement, spec.max_restarts, json.dumps(list(spec.depends_on)),
                ),
            )
            job_id = int(cur.lastrowid)  # type: ignore[arg-type]
            c.executemany(
                "INSERT INTO tasks (job_id, task, state, updated_at) VALUES (?, ?, 'PENDING', ?)",
                ((job_id, i, now) for i in indices),
            )
            c.execute(
                "INSERT INTO events (job_id, task, time, from_state, to_state, reason, actor_uid)"
                " VALUES (?, NULL, ?, NULL, 'PENDING', 'submitted', ?)",
                (job_id, now, who.uid),
            )
        return job_id

    def job_owner(self, job_id: int) -> tuple[int, str]:
        """(uid, user name) of a job's submitter; NotFound if there is no such job."""
        row = self.conn.execute("SELECT uid, user FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} does not exist; `hybridctl queue --all` lists the jobs")
        return int(row[0]), str(row[1])

    def task_states(self, job_id: int, task: int | None = None) -> list[tuple[int, JobStatus, int]]:
        """[(task, state, attempt)] of a job (or one task of it)."""
        q = "SELECT task, state, attempt FROM tasks WHERE job_id=?"
        args: tuple[Any, ...] = (job_id,)
        if task is not None:
            q += " AND task=?"
            args += (task,)
        return [(t, JobStatus(s), a) for t, s, a in self.conn.execute(q + " ORDER BY task", args)]

    def transition(
        self,
        job_id: int,
        task: int,
        new: JobStatus,
        *,
        reason: str,
        actor_uid: int | None,
        now: float,
        exit_code: int | None = None,
        release: bool = True,
        conn: sqlite3.Connection | None = None,
    ) -> JobStatus:
        """Move one task to `new` (raising IllegalTransition if the state machine forbids it),
        record the event, and release its allocations when it leaves STARTING/RUNNING — unless
        `release` is False: a cancelled job keeps its GPUs until its node confirms the processes
        are gone (`release_rank`), so the next job never shares a GPU with a dying one.
        Runs inside the caller's transaction when `conn` is given, else in its own."""
        if conn is None:
            with self.tx() as c:
                return self.transition(job_id, task, new, reason=reason, actor_uid=actor_uid,
                                       now=now, exit_code=exit_code, release=release, conn=c)
        row = conn.execute("SELECT state FROM tasks WHERE job_id=? AND task=?", (job_id, task)).fetchone()
        if row is None:
            raise NotFound(f"job {task_label(job_id, task)} does not exist")
        old = JobStatus(row[0])
        check_transition(task_label(job_id, task), old, new)
        sets = ["state=?", "updated_at=?", "reason=?"]
        args: list[Any] = [new.value, now, reason if new is JobStatus.PENDING else ""]
        if new is JobStatus.RUNNING:
            sets.append("started_at=?")
            args.append(now)
        if new.is_terminal() or new in (JobStatus.PREEMPTED, JobStatus.NODE_LOST):
            sets.append("ended_at=?")
            args.append(now)
            if exit_code is not None:
                sets.append("exit_code=?")
                args.append(exit_code)
        if new is JobStatus.PENDING:
            sets += ["attempt=attempt+1", "nodes=''", "gpus=''", "started_at=NULL", "ended_at=NULL", "exit_code=NULL"]
        conn.execute(f"UPDATE tasks SET {', '.join(sets)} WHERE job_id=? AND task=?", (*args, job_id, task))
        conn.execute(
            "INSERT INTO events (job_id, task, time, from_state, to_state, reason, actor_uid) VALUES (?,?,?,?,?,?,?)",
            (job_id, task, now, old.value, new.value, reason, actor_uid),
        )
        if old.is_active() and not new.is_active() and release:
            conn.execute(
                "UPDATE allocations SET end=? WHERE job_id=? AND task=? AND end IS NULL", (now, job_id, task)
            )
        return old

    def start(self, placements: Sequence[Placement], now: float) -> None:
        """PENDING -> STARTING for every placed task, recording its allocations, in one transaction."""
        by_task: dict[tuple[int, int], list[Placement]] = {}
        for p in placements:
            by_task.setdefault((p.job_id, p.task), []).append(p)
        with self.tx() as c:
            owners = {}
            for (job_id, task), ranks in by_task.items():
                ranks.sort(key=lambda p: p.rank)
                self.transition(job_id, task, JobStatus.STARTING, reason="placed", actor_uid=None, now=now, conn=c)
                if job_id not in owners:
                    owners[job_id] = c.execute("SELECT user, grp FROM jobs WHERE id=?", (job_id,)).fetchone()
                user, grp = owners[job_id]
                attempt = c.execute(
                    "SELECT attempt FROM tasks WHERE job_id=? AND task=?", (job_id, task)
                ).fetchone()[0]
                c.execute(
                    "UPDATE tasks SET nodes=?, gpus=? WHERE job_id=? AND task=?",
                    (",".join(p.node for p in ranks), ",".join(map(str, ranks[0].gpus)), job_id, task),
                )
                c.executemany(
                    "INSERT INTO allocations (job_id, task, attempt, rank, node, gpus, cpus, memory_mb, user, grp, start)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        (job_id, task, attempt, p.rank, p.node, json.dumps(list(p.gpus)), p.cpus, p.memory_mb, user, grp, now)
                        for p in ranks
                    ],
                )

    def release_rank(self, job_id: int, task: int, attempt: int, rank: int, now: float) -> None:
        """End the allocation of one rank (its processes are gone)."""
        with self.tx() as c:
            c.execute(
                "UPDATE allocations SET end=? WHERE job_id=? AND task=? AND attempt=? AND rank=? AND end IS NULL",
                (now, job_id, task, attempt, rank),
            )

    def max_restarts(self, job_id: int) -> int:
        return int(self.conn.execute("SELECT max_restarts FROM jobs WHERE id=?", (job_id,)).fetchone()[0])

    def task_nodes(self, job_id: int, task: int) -> list[str]:
        return [n for (n,) in self.conn.execute(
            "SELECT node FROM allocations WHERE job_id=? AND task=? AND end IS NULL", (job_id, task))]

    def rank_node(self, job_id: int, task: int, attempt: int, rank: int) -> str | None:
        """The node that runs (or ran) one rank of one attempt."""
        row = self.conn.execute(
            "SELECT node FROM allocations WHERE job_id=? AND task=? AND attempt=? AND rank=? ORDER BY id DESC LIMIT 1",
            (job_id, task, attempt, rank),
        ).fetchone()
        return None if row is None else str(row[0])

    def release_node(self, name: str, now: float) -> None:
        """End every allocation on a node (it is lost: whatever ran there is gone for us)."""
        with self.tx() as c:
            c.execute("UPDATE allocations SET end=? WHERE node=? AND end IS NULL", (now, name))

    def active_ranks(self, node: str) -> list[tuple[int, int, int, int, str]]:
        """(job, task, attempt, rank, state) of every held allocation on `node` whose task is active."""
        return list(
            self.conn.execute(
                "SELECT a.job_id, a.task, a.attempt, a.rank, t.state FROM allocations a"
                " JOIN tasks t ON t.job_id=a.job_id AND t.task=a.task AND t.attempt=a.attempt"
                " WHERE a.node=? AND a.end IS NULL AND t.state IN ('STARTING','RUNNING')",
                (node,),
            )
        )

    def tasks_on(self, node: str) -> list[tuple[int, int, str]]:
        """(job, task, state) of every task holding an allocation on `node`."""
        return list(
            self.conn.execute(
                "SELECT DISTINCT a.job_id, a.task, t.state FROM allocations a"
                " JOIN tasks t ON t.job_id=a.job_id AND t.task=a.task WHERE a.node=? AND a.end IS NULL",
                (node,),
            )
        )

    def launch_info(self, job_id: int, task: int, attempt: int, rank: int) -> dict[str, Any]:
        """What an agent needs to start one rank: owner, spec and the rank's GPUs."""
        uid, gid, user, spec, array = self.conn.execute(
            "SELECT uid, gid, user, spec, array_spec FROM jobs WHERE id=?", (job_id,)
        ).fetchone()
        row = self.conn.execute(
            "SELECT gpus, node FROM allocations WHERE job_id=? AND task=? AND attempt=? AND rank=? AND end IS NULL",
            (job_id, task, attempt, rank),
        ).fetchone()
        return {"uid": uid, "gid": gid, "user": user, "spec": json.loads(spec), "array": array,
                "gpus": json.loads(row[0]) if row else [], "node": row[1] if row else None}

    def set_reasons(self, waiting: Sequence[Waiting], now: float) -> None:
        """Record why each pending task waits; writes only the reasons that changed."""
        if not waiting:
            return
        with self.tx() as c:
            c.executemany(
                "UPDATE tasks SET reason=? WHERE job_id=? AND task=? AND state='PENDING' AND reason<>?",
                ((w.reason, w.job_id, w.task, w.reason) for w in waiting),
            )

    def set_priority(self, job_id: int, priority: int, actor_uid: int, now: float) -> None:
        with self.tx() as c:
            old = c.execute("SELECT priority FROM jobs WHERE id=?", (job_id,)).fetchone()
            if old is None:
                raise NotFound(f"job {job_id} does not exist")
            c.execute("UPDATE jobs SET priority=? WHERE id=?", (priority, job_id))
            c.execute(
                "INSERT INTO events (job_id, task, time, from_state, to_state, reason, actor_uid)"
                " VALUES (?, NULL, ?, NULL, 'PRIORITY', ?, ?)",
                (job_id, now, f"priority {old[0]} -> {priority}", actor_uid),
            )

    # ---- what the scheduler reads -------------------------------------------------------------

    def pending(self) -> list[PendingTask]:
        """Every PENDING task, with its job's resources and unmet dependencies."""
        rows = self.conn.execute(
            "SELECT t.job_id, t.task, j.user, j.grp, j.priority, j.submitted_at, j.gpus, j.gpu_type, j.cpus,"
            " j.memory_mb, j.num_nodes, j.placement, j.throttle, j.depends_on, j.spec"
            " FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.state='PENDING'"
        ).fetchall()
        deps_cache: dict[str, tuple[int, ...]] = {}
        resources_cache: dict[int, Resources] = {}
        out = []
        for (job_id, task, user, grp, prio, sub, gpus, gtype, cpus, mem, nn, place, thr, deps, spec) in rows:
            unmet = deps_cache.get(deps)
            if unmet is None:
                unmet = self._unmet(json.loads(deps))
                deps_cache[deps] = unmet
            res = resources_cache.get(job_id)
            if res is None:
                use_spot = bool(json.loads(spec)["resources"].get("use_spot", True))
                res = Resources(gpus=gpus, gpu_type=gtype, cpus=cpus, memory_mb=mem, use_spot=use_spot)
                resources_cache[job_id] = res
            out.append(PendingTask(job_id, task, user, grp, prio, sub, res, nn, place, thr, unmet))
        return out

    def _unmet(self, deps: list[int]) -> tuple[int, ...]:
        if not deps:
            return ()
        unmet = []
        for d in deps:
            states = {s for (s,) in self.conn.execute("SELECT state FROM tasks WHERE job_id=?", (d,))}
            if states != {"SUCCEEDED"}:
                unmet.append(d)
        return tuple(unmet)

    def failed_dependencies(self) -> list[tuple[int, int, int]]:
        """Pending (job, task, dep) whose dependency ended in a state other than SUCCEEDED."""
        rows = self.conn.execute(
            "SELECT t.job_id, t.task, j.depends_on FROM tasks t JOIN jobs j ON j.id=t.job_id"
            " WHERE t.state='PENDING' AND j.depends_on <> '[]'"
        ).fetchall()
        out = []
        for job_id, task, deps in rows:
            for d in json.loads(deps):
                bad = self.conn.execute(
                    "SELECT 1 FROM tasks WHERE job_id=? AND state IN ('FAILED','CANCELLED','TIMEOUT') LIMIT 1", (d,)
                ).fetchone()
                if bad:
                    out.append((job_id, task, d))
                    break
        return out

    def open_allocations(self) -> list[tuple[int, int, str, list[int], float, int, str, str]]:
        """(job, task, node, gpus, cpus, memory_mb, user, group) of every held allocation."""
        return [
            (j, t, n, json.loads(g), c, m, u, gr)
            for j, t, n, g, c, m, u, gr in self.conn.execute(
                "SELECT job_id, task, node, gpus, cpus, memory_mb, user, grp FROM allocations WHERE end IS NULL"
            )
        ]

    def usage_records(self, since: float, now: float) -> list[tuple[str, str, float, float, float]]:
        """(user, group, start, end-or-now, gpus) of allocations that overlap [since, now]."""
        rows = self.conn.execute(
            "SELECT user, grp, start, COALESCE(end, ?), gpus FROM allocations WHERE COALESCE(end, ?) >= ?",
            (now, now, since),
        )
        return [(u, g, max(s, since), e, float(len(json.loads(gp)))) for u, g, s, e, gp in rows]

    # ---- what users read ----------------------------------------------------------------------

    def queue(self, *, user: str | None, states: Sequence[str] | None, include_finished: bool) -> list[dict[str, Any]]:
        q = (
            "SELECT t.job_id, t.task, j.user, j.name, t.state, t.reason, j.gpus, j.gpu_type, j.num_nodes, t.nodes,"
            " t.gpus, j.priority, j.submitted_at, t.started_at, t.ended_at, t.attempt, t.exit_code, j.array_spec"
            " FROM tasks t JOIN jobs j ON j.id=t.job_id WHERE 1=1"
        )
        args: list[Any] = []
        if user is not None:
            q += " AND j.user=?"
            args.append(user)
        if states:
            q += f" AND t.state IN ({','.join('?' * len(states))})"
            args += list(states)
        elif not include_finished:
            q += " AND t.state NOT IN ('SUCCEEDED','FAILED','CANCELLED','TIMEOUT')"
        q += " ORDER BY t.job_id, t.task"
        keys = ("job_id", "task", "user", "name", "state", "reason", "gpus", "gpu_type", "num_nodes", "nodes",
                "gpu_ids", "priority", "submitted_at", "started_at", "ended_at", "attempt", "exit_code", "array")
        return [dict(zip(keys, row)) for row in self.conn.execute(q, args)]

    def job(self, job_id: int) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT id, uid, user, grp, name, spec, priority, submitted_at, array_spec FROM jobs WHERE id=?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} does not exist; `hybridctl queue --all` lists the jobs")
        out = dict(zip(("id", "uid", "user", "group", "name", "spec", "priority", "submitted_at", "array"), row))
        out["spec"] = json.loads(out["spec"])
        out["tasks"] = [
            dict(zip(("task", "state", "reason", "attempt", "nodes", "gpu_ids", "started_at", "ended_at", "exit_code"), r))
            for r in self.conn.execute(
                "SELECT task, state, reason, attempt, nodes, gpus, started_at, ended_at, exit_code FROM tasks"
                " WHERE job_id=? ORDER BY task",
                (job_id,),
            )
        ]
        out["events"] = [
            dict(zip(("task", "time", "from", "to", "reason", "actor_uid"), r))
            for r in self.conn.execute(
                "SELECT task, time, from_state, to_state, reason, actor_uid FROM events WHERE job_id=? ORDER BY id",
                (job_id,),
            )
        ]
        return out

    def user_task_ids(self, user: str) -> list[tuple[int, int]]:
        """(job, task) of every task of `user` that is not finished."""
        return list(
            self.conn.execute(
                "SELECT t.job_id, t.task FROM tasks t JOIN jobs j ON j.id=t.job_id WHERE j.user=?"
                " AND t.state NOT IN ('SUCCEEDED','FAILED','CANCELLED','TIMEOUT') ORDER BY t.job_id, t.task",
                (user,),
            )
        )

    # ---- nodes --------------------------------------------------------------------------------

    _NODE_COLS = (
        "name, host, port, ssh_user, identity, agent_socket, site, link_state, link_reason, drained, drain_reason,"
        " gpus, cpus, memory_mb, simulated, last_seen"
    )

    def add_node(self, rec: NodeRecord, now: float, *, replace: bool = True) -> None:
        """Insert a node, or (replace=True) update its address and shape, keeping an admin's drain."""
        conflict = (
            " ON CONFLICT(name) DO UPDATE SET host=excluded.host, port=excluded.port, ssh_user=excluded.ssh_user,"
            " identity=excluded.identity, agent_socket=excluded.agent_socket, site=excluded.site,"
            " gpus=excluded.gpus, cpus=excluded.cpus, memory_mb=excluded.memory_mb,"
            " simulated=excluded.simulated, updated_at=excluded.updated_at"
            if replace else ""
        )
        with self.tx() as c:
            if not replace and c.execute("SELECT 1 FROM nodes WHERE name=?", (rec.name,)).fetchone():
                from hybridctl.core.errors import HybridctlError

                raise HybridctlError(f"node {rec.name!r} already exists; `hybridctl node remove {rec.name}` first")
            c.execute(
                f"INSERT INTO nodes ({self._NODE_COLS}, added_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                + conflict,
                (rec.name, rec.host, rec.port, rec.ssh_user, rec.identity, rec.agent_socket, rec.site,
                 rec.link_state.value, rec.link_reason, int(rec.drained), rec.drain_reason,
                 json.dumps(list(rec.gpus)), rec.cpus, rec.memory_mb, int(rec.simulated), rec.last_seen, now, now),
            )

    def remove_node(self, name: str) -> None:
        with self.tx() as c:
            if c.execute("SELECT 1 FROM allocations WHERE node=? AND end IS NULL", (name,)).fetchone():
                from hybridctl.core.errors import HybridctlError

                raise HybridctlError(
                    f"node {name} still runs jobs; drain it (`hybridctl node drain {name}`) and wait, or cancel them"
                )
            if c.execute("DELETE FROM nodes WHERE name=?", (name,)).rowcount == 0:
                raise NotFound(f"node {name!r} does not exist; `hybridctl nodes` lists the nodes")

    def set_drain(self, name: str, drained: bool, reason: str, now: float) -> None:
        self._update_node(name, now, drained=int(drained), drain_reason=reason if drained else "")

    def set_link(self, name: str, state: NodeState, reason: str, now: float, seen: bool = False) -> None:
        fields: dict[str, Any] = {"link_state": state.value, "link_reason": reason}
        if seen:
            fields["last_seen"] = now
        self._update_node(name, now, **fields)

    def set_hardware(self, name: str, gpus: Sequence[dict[str, Any]], cpus: float, memory_mb: int, now: float) -> None:
        self._update_node(name, now, gpus=json.dumps(list(gpus)), cpus=cpus, memory_mb=memory_mb)

    def _update_node(self, name: str, now: float, **fields: Any) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            cur = c.execute(f"UPDATE nodes SET {sets}, updated_at=? WHERE name=?", (*fields.values(), now, name))
            if cur.rowcount == 0:
                raise NotFound(f"node {name!r} does not exist; `hybridctl nodes` lists the nodes")

    def nodes(self) -> list[NodeRecord]:
        return [
            NodeRecord(n, h, p, u, i, a, s, NodeState(ls), lr, bool(d), dr, tuple(json.loads(g)), c, m, bool(sim), seen)
            for n, h, p, u, i, a, s, ls, lr, d, dr, g, c, m, sim, seen in self.conn.execute(
                f"SELECT {self._NODE_COLS} FROM nodes ORDER BY name"
            )
        ]

    def node(self, name: str) -> NodeRecord:
        for n in self.nodes():
            if n.name == name:
                return n
        raise NotFound(f"node {name!r} does not exist; `hybridctl nodes` lists the nodes")

    def node_views(self) -> list[NodeView]:
        """Nodes with what is free on them now (total minus held allocations)."""
        held_gpus: dict[str, set[int]] = {}
        held_cpu: dict[str, float] = {}
        held_mem: dict[str, int] = {}
        for _j, _t, node, gpus, cpus, mem, _u, _g in self.open_allocations():
            held_gpus.setdefault(node, set()).update(gpus)
            held_cpu[node] = held_cpu.get(node, 0.0) + cpus
            held_mem[node] = held_mem.get(node, 0) + mem
        views = []
        for n in self.nodes():
            used = held_gpus.get(n.name, set())
            slots = tuple(
                GpuSlot(int(g["index"]), str(g["model"]), free=int(g["index"]) not in used and not g.get("foreign"),
                        healthy=bool(g.get("healthy", True)))
                for g in n.gpus
            )
            state, _reason = n.state(busy=n.name in held_cpu)
            views.append(
                NodeView(n.name, slots, n.cpus, n.cpus - held_cpu.get(n.name, 0.0), n.memory_mb,
                         n.memory_mb - held_mem.get(n.name, 0), state, n.site)
            )
        return views

