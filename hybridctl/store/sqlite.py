"""The job store: SQLite in WAL mode, the only code that speaks SQL.

The controller is the only writer. Every job state change is one transaction that also writes its
event row, and goes through `core.model.check_transition`, so the state machine holds on disk."""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

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
_NOT_SUCCEEDED = ", ".join(f"'{s.value}'" for s in JobStatus if s is not JobStatus.SUCCEEDED)
"""Every state but SUCCEEDED, as an SQL list (for index probes on tasks_state)."""


@dataclass(frozen=True)
class RetryUsage:
    """What one task has used of its requeues, and its job's limits (read by `core.retry.decide`)."""

    restarts: int
    """Requeues after its own failures, charged to max_restarts."""
    max_restarts: int
    recoveries: int
    """Requeues it did not cause (preemption, a lost node, a recover_on_exit_codes exit)."""
    recover_codes: tuple[int, ...]


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
    cpus_override: float | None = None
    """An admin's CPU count (config or `node add --cpus`); `cpus` follows it, not the agent's report."""

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
            "cpus_override": self.cpus_override,
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
        # The automatic WAL checkpoint runs inside a COMMIT and fsyncs (~13 ms here, every ~250
        # commits). The controller checkpoints from a background thread instead (`checkpoint`).
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("PRAGMA journal_size_limit=67108864")
        self.conn = conn
        self.fleet_version = 0
        """Bumped whenever a node's shape changes (add, remove, hardware), for caches of the fleet's shape."""
        self.waiting_after: dict[int, tuple[int, str]] = {}
        """job -> (task, reason) from the last scheduling pass: its pending tasks after `task` were
        not looked at and wait for `reason` (`set_reasons`)."""
        self.schema_version = migrate(conn)

    def close(self) -> None:
        self.conn.close()

    def checkpoint(self) -> None:
        """Copy the WAL into the database file without blocking writers (run it off the event loop:
        it opens its own connection)."""
        conn = sqlite3.connect(str(self.path), timeout=30.0)
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

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
        indices = arr.indices if arr else range(1)
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO jobs (uid, user, gid, grp, name, spec, priority, submitted_at, num_tasks,"
                " array_spec, throttle, gpus, gpu_type, cpus, memory_mb, num_nodes, placement, max_restarts,"
                " depends_on, use_spot) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    who.uid, who.user, who.gid, who.group, spec.name, json.dumps(spec.to_dict()),
                    spec.priority, now, len(arr.indices) if arr else 1, str(arr) if arr else None,
                    arr.throttle if arr else None, r.gpus, r.gpu_type, r.cpus, r.memory_mb,
                    spec.num_nodes, spec.placement, spec.max_restarts, json.dumps(list(spec.depends_on)),
                    int(r.use_spot),
                ),
            )
            job_id = int(cur.lastrowid)  # type: ignore[arg-type]
            # The task rows come from a recursive CTE inside SQLite, not one bound row each from
            # Python: a 100,000-task array holds the event loop half as long (~0.25 s, not 0.55 s).
            c.execute(
                "INSERT INTO tasks (job_id, task, state, updated_at)"
                " WITH RECURSIVE seq(i) AS (SELECT ? UNION ALL SELECT i + ? FROM seq WHERE i + ? <= ?)"
                " SELECT ?, i, 'PENDING', ? FROM seq",
                (indices[0], indices.step, indices.step, indices[-1], job_id, now),
            )
            c.execute(
                "INSERT INTO events (job_id, task, time, from_state, to_state, reason, actor_uid)"
                " VALUES (?, NULL, ?, NULL, 'PENDING', 'submitted', ?)",
                (job_id, now, who.uid),
            )
        return job_id

    def pending_tasks_of(self, uid: int) -> int:
        """How many PENDING tasks the user `uid` has queued (for `limits.max_pending_tasks_per_user`)."""
        (count,) = self.conn.execute(
            "SELECT COUNT(*) FROM tasks t JOIN jobs j ON j.id=t.job_id WHERE t.state='PENDING' AND j.uid=?", (uid,)
        ).fetchone()
        return int(count)

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
        count_restart: bool = False,
        recovery: str = "",
        conn: sqlite3.Connection | None = None,
    ) -> JobStatus:
        """Move one task to `new` (raising IllegalTransition if the state machine forbids it),
        record the event, and release its allocations when it leaves STARTING/RUNNING — unless
        `release` is False: a cancelled job keeps its GPUs until its node confirms the processes
        are gone (`release_rank`), so the next job never shares a GPU with a dying one.
        `count_restart` counts a requeue (-> PENDING) against the job's max_restarts; `recovery`
        names the cause of a requeue that counts as a recovery instead ('preemption').
        Runs inside the caller's transaction when `conn` is given, else in its own."""
        if conn is None:
            with self.tx() as c:
                return self.transition(job_id, task, new, reason=reason, actor_uid=actor_uid, now=now,
                                       exit_code=exit_code, release=release, count_restart=count_restart,
                                       recovery=recovery, conn=c)
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
            if count_restart:
                sets.append("restarts=restarts+1")
            if recovery:
                path = '$."' + recovery.replace('"', "") + '"'
                sets += ["recoveries=recoveries+1",
                         "recovery_causes=json_set(recovery_causes, ?, COALESCE(json_extract(recovery_causes, ?), 0) + 1)"]
                args += [path, path]
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

    def release_rank(self, job_id: int, task: int, attempt: int, rank: int, now: float,
                     exit_code: int | None = None) -> None:
        """End the allocation of one rank (its processes are gone), recording its exit code."""
        with self.tx() as c:
            c.execute(
                "UPDATE allocations SET end=?, exit_code=COALESCE(?, exit_code)"
                " WHERE job_id=? AND task=? AND attempt=? AND rank=? AND end IS NULL",
                (now, exit_code, job_id, task, attempt, rank),
            )

    def rank_results(self, job_id: int, task: int, attempt: int) -> list[tuple[int, float | None, int | None]]:
        """(rank, end, exit_code) of every rank of one attempt of a task."""
        return list(self.conn.execute(
            "SELECT rank, end, exit_code FROM allocations WHERE job_id=? AND task=? AND attempt=? ORDER BY rank",
            (job_id, task, attempt),
        ))

    def retry_usage(self, job_id: int, task: int) -> RetryUsage:
        """What one task has used of its restarts and recoveries, with its job's limits."""
        used, most, recovered, spec = self.conn.execute(
            "SELECT t.restarts, j.max_restarts, t.recoveries, j.spec FROM tasks t JOIN jobs j ON j.id = t.job_id"
            " WHERE t.job_id=? AND t.task=?", (job_id, task)).fetchone()
        return RetryUsage(int(used), int(most), int(recovered),
                          tuple(json.loads(spec).get("recover_on_exit_codes") or ()))

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

    def held_ranks(self, node: str) -> set[tuple[int, int, int, int]]:
        """(job, task, attempt, rank) of every allocation still open on `node`, whatever its task's
        state: the ranks that node may report on (a node is believed only about its own)."""
        return set(self.conn.execute(
            "SELECT job_id, task, attempt, rank FROM allocations WHERE node=? AND end IS NULL", (node,)))

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
        """What an agent needs to start one rank: owner, spec, submit time and the rank's GPUs."""
        uid, gid, user, spec, array, submitted_at = self.conn.execute(
            "SELECT uid, gid, user, spec, array_spec, submitted_at FROM jobs WHERE id=?", (job_id,)
        ).fetchone()
        row = self.conn.execute(
            "SELECT gpus, node FROM allocations WHERE job_id=? AND task=? AND attempt=? AND rank=? AND end IS NULL",
            (job_id, task, attempt, rank),
        ).fetchone()
        ranks = [n for (n,) in self.conn.execute(
            "SELECT node FROM allocations WHERE job_id=? AND task=? AND attempt=? ORDER BY rank", (job_id, task, attempt))]
        return {"uid": uid, "gid": gid, "user": user, "spec": json.loads(spec), "array": array, "submitted_at": submitted_at,
                "gpus": json.loads(row[0]) if row else [], "node": row[1] if row else None, "rank_nodes": ranks}

    def set_reasons(self, waiting: Sequence[Waiting], now: float) -> None:
        """Record why each pending task a pass looked at waits (only the reasons that changed), and
        remember per job the reason of its last one: a pass sees only a window of a large array
        (`pending(window)`), and every later task of that job waits for that same reason
        (`core.schedule.window`). Those are not written row by row — "behind job 42_17" changes
        whenever a task starts, and rewriting 100,000 rows each time would stall the controller;
        `queue` and `job` show the job's reason for them, as squeue shows an array's."""
        rest: dict[int, tuple[int, str]] = {}
        for w in waiting:
            last = rest.get(w.job_id)
            if last is None or w.task > last[0]:
                rest[w.job_id] = (w.task, w.reason)
        self.waiting_after = rest
        if not waiting:
            return
        with self.tx() as c:
            c.executemany(
                "UPDATE tasks SET reason=? WHERE job_id=? AND task=? AND state='PENDING' AND reason<>?",
                ((w.reason, w.job_id, w.task, w.reason) for w in waiting),
            )

    def _reason(self, job_id: int, task: int, state: str, stored: str) -> str:
        """A pending task's reason: its own, or its job's for tasks past the last pass's window."""
        if state == "PENDING":
            after = self.waiting_after.get(job_id)
            if after is not None and task > after[0]:
                return after[1]
        return stored

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

    def pending(self, window: Callable[[PendingTask], int] | None = None) -> list[PendingTask]:
        """PENDING tasks, with their job's resources and unmet dependencies. With `window`
        (`core.schedule.window`), only the first `window(task)` pending tasks of each job by index,
        found through the (state, job_id, task) index: a 100,000-task array costs a pass what a
        100-task one does. Without, every pending task (the autoscaler's and estimates' view)."""
        if window is None:
            return self._all_pending()
        # One row per job with pending tasks (a skip scan over the index, not over its tasks),
        # carrying its first pending task.
        heads = self.conn.execute(
            "WITH RECURSIVE pj(id) AS (SELECT MIN(job_id) FROM tasks WHERE state='PENDING'"
            " UNION ALL SELECT (SELECT MIN(job_id) FROM tasks WHERE state='PENDING' AND job_id > pj.id)"
            " FROM pj WHERE pj.id IS NOT NULL)"
            " SELECT j.id, (SELECT MIN(task) FROM tasks WHERE state='PENDING' AND job_id=j.id), j.user, j.grp,"
            " j.priority, j.submitted_at, j.gpus, j.gpu_type, j.cpus, j.memory_mb, j.num_nodes, j.placement,"
            " j.throttle, j.depends_on, j.use_spot, j.num_tasks FROM pj JOIN jobs j ON j.id = pj.id"
        ).fetchall()
        deps_cache: dict[str, tuple[int, ...]] = {}
        out: list[PendingTask] = []
        for (job_id, task, user, grp, prio, sub, gpus, gtype, cpus, mem, nn, place, thr, deps, spot, n) in heads:
            unmet = deps_cache.get(deps)
            if unmet is None:
                unmet = deps_cache[deps] = self._unmet(json.loads(deps))
            res = Resources(gpus=gpus, gpu_type=gtype, cpus=cpus, memory_mb=mem, use_spot=bool(spot))
            head = PendingTask(job_id, task, user, grp, prio, sub, res, nn, place, thr, unmet)
            want = window(head)
            if n <= 1 or want <= 1:
                out.append(head)
                continue
            out += [
                PendingTask(job_id, t, user, grp, prio, sub, res, nn, place, thr, unmet)
                for (t,) in self.conn.execute(
                    "SELECT task FROM tasks WHERE state='PENDING' AND job_id=? ORDER BY task LIMIT ?",
                    (job_id, min(want, n)),
                )
            ]
        return out

    def _all_pending(self) -> list[PendingTask]:
        rows = self.conn.execute(
            "SELECT t.job_id, t.task, j.user, j.grp, j.priority, j.submitted_at, j.gpus, j.gpu_type, j.cpus,"
            " j.memory_mb, j.num_nodes, j.placement, j.throttle, j.depends_on, j.use_spot"
            " FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.state='PENDING'"
        ).fetchall()
        deps_cache: dict[str, tuple[int, ...]] = {}
        resources_cache: dict[int, Resources] = {}
        out = []
        for (job_id, task, user, grp, prio, sub, gpus, gtype, cpus, mem, nn, place, thr, deps, spot) in rows:
            unmet = deps_cache.get(deps)
            if unmet is None:
                unmet = self._unmet(json.loads(deps))
                deps_cache[deps] = unmet
            res = resources_cache.get(job_id)
            if res is None:
                res = Resources(gpus=gpus, gpu_type=gtype, cpus=cpus, memory_mb=mem, use_spot=bool(spot))
                resources_cache[job_id] = res
            out.append(PendingTask(job_id, task, user, grp, prio, sub, res, nn, place, thr, unmet))
        return out

    def _unmet(self, deps: list[int]) -> tuple[int, ...]:
        """The dependencies not yet met: a job that does not exist, or has a task that has not
        SUCCEEDED. Index probes per state, never a read of a (large) dependency's every task."""
        unmet = []
        for d in deps:
            exists = self.conn.execute("SELECT 1 FROM tasks WHERE job_id=? LIMIT 1", (d,)).fetchone()
            if not exists or self.conn.execute(
                f"SELECT 1 FROM tasks WHERE state IN ({_NOT_SUCCEEDED}) AND job_id=? LIMIT 1", (d,)
            ).fetchone():
                unmet.append(d)
        return tuple(unmet)

    def failed_dependencies(self, limit: int = 2000) -> list[tuple[int, int, int]]:
        """Pending (job, task, dep) whose dependency ended in a state other than SUCCEEDED, at most
        `limit` (the caller cancels them; a 100k-task array is cancelled over several passes).
        Dependencies are checked once per job, not once per task."""
        jobs = self.conn.execute(
            "SELECT j.id, j.depends_on FROM jobs j WHERE j.depends_on <> '[]'"
            " AND EXISTS (SELECT 1 FROM tasks t WHERE t.state='PENDING' AND t.job_id=j.id)"
        ).fetchall()
        out: list[tuple[int, int, int]] = []
        for job_id, deps in jobs:
            bad = next((d for d in json.loads(deps) if self.conn.execute(
                "SELECT 1 FROM tasks WHERE state IN ('FAILED','CANCELLED','TIMEOUT') AND job_id=? LIMIT 1", (d,)
            ).fetchone()), None)
            if bad is None:
                continue
            out += [(job_id, t, bad) for (t,) in self.conn.execute(
                "SELECT task FROM tasks WHERE state='PENDING' AND job_id=? ORDER BY task LIMIT ?",
                (job_id, limit - len(out)))]
            if len(out) >= limit:
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
            " t.gpus, j.priority, j.submitted_at, t.started_at, t.ended_at, t.attempt, t.exit_code, j.array_spec,"
            " t.restarts, j.max_restarts, t.recoveries, t.recovery_causes"
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
                "gpu_ids", "priority", "submitted_at", "started_at", "ended_at", "attempt", "exit_code", "array",
                "restarts", "max_restarts", "recoveries", "recovery_causes")
        rows = [dict(zip(keys, row)) for row in self.conn.execute(q, args)]
        after = self.waiting_after
        for r in rows:
            causes = r["recovery_causes"]
            r["recovery_causes"] = json.loads(causes) if causes != "{}" else {}
            if after and r["job_id"] in after:
                r["reason"] = self._reason(r["job_id"], r["task"], r["state"], r["reason"])
        return rows

    def job(self, job_id: int) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT id, uid, user, grp, name, spec, priority, submitted_at, array_spec FROM jobs WHERE id=?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} does not exist; `hybridctl queue --all` lists the jobs")
        out = dict(zip(("id", "uid", "user", "group", "name", "spec", "priority", "submitted_at", "array"), row))
        out["spec"] = json.loads(out["spec"])
        out["tasks"] = [
            dict(zip(("task", "state", "reason", "attempt", "nodes", "gpu_ids", "started_at", "ended_at", "exit_code",
                      "restarts", "recoveries", "recovery_causes"), (*r[:-1], json.loads(r[-1]))))
            for r in self.conn.execute(
                "SELECT task, state, reason, attempt, nodes, gpus, started_at, ended_at, exit_code, restarts,"
                " recoveries, recovery_causes FROM tasks WHERE job_id=? ORDER BY task",
                (job_id,),
            )
        ]
        for t in out["tasks"]:
            t["reason"] = self._reason(job_id, t["task"], t["state"], t["reason"])
        out["max_restarts"] = out["spec"].get("max_restarts", 0)
        out["events"] = [
            dict(zip(("task", "time", "from", "to", "reason", "actor_uid"), r))
            for r in self.conn.execute(
                "SELECT task, time, from_state, to_state, reason, actor_uid FROM events WHERE job_id=? ORDER BY id",
                (job_id,),
            )
        ]
        return out

    def events(self, limit: int, before_id: int | None = None) -> list[dict[str, Any]]:
        """The audit log, newest first: every state change with who did it."""
        q = ("SELECT e.id, e.job_id, e.task, e.time, e.from_state, e.to_state, e.reason, e.actor_uid, j.user"
             " FROM events e JOIN jobs j ON j.id=e.job_id")
        args: list[Any] = []
        if before_id is not None:
            q += " WHERE e.id < ?"
            args.append(before_id)
        q += " ORDER BY e.id DESC LIMIT ?"
        args.append(limit)
        keys = ("id", "job_id", "task", "time", "from", "to", "reason", "actor_uid", "owner")
        return [dict(zip(keys, r)) for r in self.conn.execute(q, args)]

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
        " gpus, cpus, memory_mb, simulated, last_seen, cpus_override"
    )

    def add_node(self, rec: NodeRecord, now: float, *, replace: bool = True) -> None:
        """Insert a node, or (replace=True) update its address and shape, keeping an admin's drain."""
        self.fleet_version += 1
        conflict = (
            " ON CONFLICT(name) DO UPDATE SET host=excluded.host, port=excluded.port, ssh_user=excluded.ssh_user,"
            " identity=excluded.identity, agent_socket=excluded.agent_socket, site=excluded.site,"
            " gpus=excluded.gpus, cpus=excluded.cpus, cpus_override=excluded.cpus_override,"
            " memory_mb=excluded.memory_mb, simulated=excluded.simulated, updated_at=excluded.updated_at"
            if replace else ""
        )
        with self.tx() as c:
            if not replace and c.execute("SELECT 1 FROM nodes WHERE name=?", (rec.name,)).fetchone():
                from hybridctl.core.errors import HybridctlError

                raise HybridctlError(f"node {rec.name!r} already exists; `hybridctl node remove {rec.name}` first")
            c.execute(
                f"INSERT INTO nodes ({self._NODE_COLS}, added_at, updated_at) VALUES (?{',?' * 18})" + conflict,
                (rec.name, rec.host, rec.port, rec.ssh_user, rec.identity, rec.agent_socket, rec.site,
                 rec.link_state.value, rec.link_reason, int(rec.drained), rec.drain_reason,
                 json.dumps(list(rec.gpus)), rec.cpus, rec.memory_mb, int(rec.simulated), rec.last_seen,
                 rec.cpus_override, now, now),
            )

    def remove_node(self, name: str) -> None:
        self.fleet_version += 1
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
        self.fleet_version += 1
        self._update_node(name, now, gpus=json.dumps(list(gpus)), cpus=cpus, memory_mb=memory_mb)

    def _update_node(self, name: str, now: float, **fields: Any) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            cur = c.execute(f"UPDATE nodes SET {sets}, updated_at=? WHERE name=?", (*fields.values(), now, name))
            if cur.rowcount == 0:
                raise NotFound(f"node {name!r} does not exist; `hybridctl nodes` lists the nodes")

    def nodes(self) -> list[NodeRecord]:
        return self._node_rows(" ORDER BY name", ())

    def _node_rows(self, where: str, args: tuple[Any, ...]) -> list[NodeRecord]:
        return [
            NodeRecord(n, h, p, u, i, a, s, NodeState(ls), lr, bool(d), dr, tuple(json.loads(g)), c, m, bool(sim), seen,
                       co)
            for n, h, p, u, i, a, s, ls, lr, d, dr, g, c, m, sim, seen, co in self.conn.execute(
                f"SELECT {self._NODE_COLS} FROM nodes{where}", args
            )
        ]

    def node(self, name: str) -> NodeRecord:
        """One node by name: a single-row query (called per node per poll, so never a full scan)."""
        found = self._node_rows(" WHERE name=?", (name,))
        if not found:
            raise NotFound(f"node {name!r} does not exist; `hybridctl nodes` lists the nodes")
        return found[0]

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


    # ---- cloud ----------------------------------------------------------------------------------

    _INSTANCE_COLS = (
        "instance_id", "provider", "node", "offer", "price_hourly", "state", "reason", "host", "port", "files_root",
        "for_tasks", "launched_at", "ready_at", "ended_at", "billed_until", "spent_usd", "updated_at",
    )

    def cloud_add_instance(self, instance_id: str, provider: str, node: str, offer: dict[str, Any],
                           for_tasks: Sequence[tuple[int, int]], now: float) -> None:
        """Record a launch before the provider is asked, so a crash cannot leave an unknown instance
        (the leak sweep would still find it by its tag)."""
        with self.tx() as c:
            c.execute(
                "INSERT INTO cloud_instances (instance_id, provider, node, offer, price_hourly, state, for_tasks,"
                " launched_at, billed_until, updated_at) VALUES (?,?,?,?,?,'launching',?,?,?,?)",
                (instance_id, provider, node, json.dumps(offer), float(offer["price_hourly"]),
                 json.dumps([list(t) for t in for_tasks]), now, now, now),
            )

    def cloud_update_instance(self, instance_id: str, now: float, **fields: Any) -> None:
        """Set columns of one instance row (`new_id` renames it once the provider named it)."""
        if "new_id" in fields:
            fields["instance_id"] = fields.pop("new_id")
        sets = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            c.execute(f"UPDATE cloud_instances SET {sets}, updated_at=? WHERE instance_id=?",
                      (*fields.values(), now, instance_id))
            if "instance_id" in fields:
                c.execute("UPDATE cloud_costs SET instance_id=? WHERE instance_id=?", (fields["instance_id"], instance_id))

    def cloud_instances(self, live: bool = True) -> list[dict[str, Any]]:
        """Instance rows, oldest first; `live` = not terminated or failed."""
        q = f"SELECT {', '.join(self._INSTANCE_COLS)} FROM cloud_instances"
        if live:
            q += " WHERE state NOT IN ('terminated', 'failed')"
        out = []
        for row in self.conn.execute(q + " ORDER BY launched_at, instance_id"):
            d = dict(zip(self._INSTANCE_COLS, row))
            d["offer"] = json.loads(d["offer"])
            d["for_tasks"] = [tuple(t) for t in json.loads(d["for_tasks"])]
            out.append(d)
        return out

    def cloud_instance_ids(self) -> set[str]:
        """Every instance id ever recorded (the leak sweep's memory)."""
        return {r[0] for r in self.conn.execute("SELECT instance_id FROM cloud_instances")}

    def set_node_cloud(self, name: str, provider: str, instance_id: str, price_hourly: float,
                       launched_at: float, now: float) -> None:
        self._update_node(name, now, provider=provider, instance_id=instance_id, price_hourly=price_hourly,
                          launched_at=launched_at)

    def cloud_node_activity(self) -> dict[str, tuple[int, float | None]]:
        """Per node: (allocations held now, when the last one ended)."""
        return {
            n: (int(held), last)
            for n, held, last in self.conn.execute(
                "SELECT node, SUM(end IS NULL), MAX(end) FROM allocations GROUP BY node"
            )
        }

    def cloud_allocations(self, node: str, since: float) -> list[tuple[int, int, str, int, float, float, float | None]]:
        """(job, task, user, gpus, cpus, start, end) of allocations on `node` held after `since`."""
        return [
            (j, t, u, len(json.loads(g)), c, s, e)
            for j, t, u, g, c, s, e in self.conn.execute(
                "SELECT job_id, task, user, gpus, cpus, start, end FROM allocations"
                " WHERE node=? AND (end IS NULL OR end > ?)",
                (node, since),
            )
        ]

    def cloud_accrue(self, instance_id: str, node: str, charges: Sequence[tuple[int, int, str, float, float]],
                     until: float, day: str, now: float) -> None:
        """Add (job, task, user, usd, hours) charges of one instance, move its `billed_until`, and
        add their sum to the day's spend, in one transaction."""
        total = sum(ch[3] for ch in charges)
        with self.tx() as c:
            c.executemany(
                "INSERT INTO cloud_costs (instance_id, node, job_id, task, user, usd, hours, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(instance_id, job_id, task) DO UPDATE SET"
                " usd=usd+excluded.usd, hours=hours+excluded.hours, updated_at=excluded.updated_at",
                ((instance_id, node, j, t, u, usd, h, now) for j, t, u, usd, h in charges),
            )
            c.execute("UPDATE cloud_instances SET spent_usd=spent_usd+?, billed_until=?, updated_at=?"
                      " WHERE instance_id=?", (total, until, now, instance_id))
            c.execute("INSERT INTO cloud_spend (day, usd) VALUES (?, ?) ON CONFLICT(day) DO UPDATE SET"
                      " usd=usd+excluded.usd", (day, total))

    def cloud_spent_since(self, day: str) -> float:
        """$ spent on days from `day` (YYYY-MM-DD, UTC) on."""
        row = self.conn.execute("SELECT COALESCE(SUM(usd), 0) FROM cloud_spend WHERE day >= ?", (day,)).fetchone()
        return float(row[0])

    def cloud_costs(self, by: str) -> list[dict[str, Any]]:
        """Accrued $ and hours grouped by 'node', 'job' or 'user' (idle time is job 0, user '')."""
        key = {"node": "c.node", "job": "c.job_id || '_' || c.task", "user": "c.user"}[by]
        rows = self.conn.execute(
            f"SELECT {key}, SUM(c.usd), SUM(c.hours), MAX(i.provider), COUNT(DISTINCT c.instance_id)"
            " FROM cloud_costs c JOIN cloud_instances i ON i.instance_id=c.instance_id"
            f" GROUP BY {key} ORDER BY SUM(c.usd) DESC"
        )
        return [{"key": k, "usd": usd, "hours": h, "provider": p, "instances": n} for k, usd, h, p, n in rows]

    def cloud_set_backoff(self, pool: str, until: float, reason: str) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO cloud_backoff (pool, until, reason) VALUES (?,?,?) ON CONFLICT(pool) DO UPDATE"
                      " SET until=excluded.until, reason=excluded.reason", (pool, until, reason))

    def cloud_backoffs(self, now: float) -> dict[str, tuple[float, str]]:
        """Pools still backing off at `now`: pool -> (until, reason)."""
        return {p: (u, r) for p, u, r in self.conn.execute(
            "SELECT pool, until, reason FROM cloud_backoff WHERE until > ?", (now,))}

    def pending_since(self) -> dict[tuple[int, int], float]:
        """When each PENDING task last became PENDING (submit or requeue)."""
        return {(j, t): u for j, t, u in self.conn.execute(
            "SELECT job_id, task, updated_at FROM tasks WHERE state='PENDING'")}

    def running_allocations(self) -> list[tuple[str, list[int], float, int, float, int | None, int, int]]:
        """(node, gpus, cpus, memory_mb, start, time_limit, job, task) of every held allocation."""
        return [
            (n, json.loads(g), c, m, s, json.loads(spec).get("time_limit"), j, t)
            for n, g, c, m, s, spec, j, t in self.conn.execute(
                "SELECT a.node, a.gpus, a.cpus, a.memory_mb, a.start, jb.spec, a.job_id, a.task FROM allocations a"
                " JOIN jobs jb ON jb.id=a.job_id WHERE a.end IS NULL"
            )
        ]

    def recent_runtimes(self, limit: int = 200) -> list[float]:
        """Run times (s) of the most recently finished tasks that ran."""
        return [float(d) for (d,) in self.conn.execute(
            "SELECT ended_at - started_at FROM tasks WHERE started_at IS NOT NULL AND ended_at IS NOT NULL"
            " ORDER BY ended_at DESC LIMIT ?", (limit,))]

    def time_limits(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], float]:
        """Time limits (s) of the jobs of these tasks, where set."""
        jobs = sorted({j for j, _ in keys})
        out: dict[int, float] = {}
        for i in range(0, len(jobs), 500):
            part = jobs[i:i + 500]
            for j, spec in self.conn.execute(
                f"SELECT id, spec FROM jobs WHERE id IN ({','.join('?' * len(part))})", part
            ):
                tl = json.loads(spec).get("time_limit")
                if tl:
                    out[j] = float(tl)
        return {k: out[k[0]] for k in keys if k[0] in out}
