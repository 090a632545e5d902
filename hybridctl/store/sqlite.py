"""The job store: SQLite in WAL mode; `store/` is the only package that speaks SQL.

The controller is the only writer. Every job state change is one transaction that also writes its
event row, and goes through `core.model.check_transition`, so the state machine holds on disk."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hybridctl.core.errors import NotFound
from hybridctl.core.model import (
    DependencyFacts,
    JobSpec,
    JobStatus,
    PendingTask,
    Placement,
    Resources,
    Waiting,
    check_transition,
    dependency_outcome,
    task_label,
)
from hybridctl.store.cloud import CloudTables
from hybridctl.store.migrations import migrate
from hybridctl.store.nodes import NodeRecord, NodeTables
from hybridctl.store.rows import (
    ACTIVE_SQL,
    FAILED_END_SQL,
    NOT_SUCCEEDED_SQL,
    NOT_TERMINAL_SQL,
    TERMINAL_SQL,
    ActiveRank,
    Allocation,
    FailedDependency,
    RankResult,
    TaskOnNode,
    TaskState,
)
from hybridctl.store.usage import UsageTables
from hybridctl.store.history import HistoryTables

__all__ = ["NodeRecord", "RetryUsage", "Store", "Submitter"]


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


class Store(NodeTables, CloudTables, UsageTables, HistoryTables):
    """A SQLite job store. Not thread-safe: owned by the controller's event loop.

    One facade over the table families: jobs, tasks and allocations here; nodes (`store/nodes.py`),
    cloud instances and costs (`store/cloud.py`), usage and the event log (`store/usage.py`).
    Queries return named rows (`store/rows.py`)."""

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

    # ---- jobs -------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, who: Submitter, now: float) -> int:
        """Insert a job (and its array tasks) in one transaction; return its id."""
        with self.tx() as c:
            return self._insert_job(c, spec, who, now)

    def submit_chain(self, specs: Sequence[JobSpec], who: Submitter, now: float) -> list[int]:
        """Insert jobs that run one after the other (a SkyPilot pipeline), all or none in one
        transaction: each depends on the one before it (as `depends_on`, with its own); return
        their ids in order."""
        ids: list[int] = []
        with self.tx() as c:
            for spec in specs:
                if ids:
                    spec = dataclasses.replace(spec, depends_on=(*spec.depends_on, ids[-1]))
                ids.append(self._insert_job(c, spec, who, now))
        return ids

    def _insert_job(self, c: sqlite3.Connection, spec: JobSpec, who: Submitter, now: float) -> int:
        r = spec.resources
        arr = spec.array
        indices = arr.indices if arr else range(1)
        n_tasks = len(indices)
        cur = c.execute(
            "INSERT INTO jobs (uid, user, gid, grp, name, spec, priority, submitted_at, num_tasks,"
            " array_spec, throttle, gpus, gpu_type, cpus, memory_mb, num_nodes, placement, max_restarts,"
            " depends_on, use_spot, alternatives, dependencies, singleton, exclusive)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                who.uid, who.user, who.gid, who.group, spec.name, json.dumps(spec.to_dict()),
                spec.priority, now, n_tasks, str(arr) if arr else None,
                arr.throttle if arr else None, r.gpus, r.gpu_type, r.cpus, r.memory_mb,
                spec.num_nodes, spec.placement, spec.max_restarts, json.dumps(list(spec.depends_on)),
                int(r.use_spot), _alternatives_text(r), json.dumps([list(d) for d in spec.dependencies]),
                int(spec.singleton), int(bool(spec.slurm.get("exclusive"))),
            ),
        )
        job_id = int(cur.lastrowid)  # type: ignore[arg-type]
        # The task rows come from a recursive CTE inside SQLite, not one bound row each from
        # Python: a 100,000-task array holds the event loop half as long (~0.25 s, not 0.55 s).
        if isinstance(indices, range):
            c.execute(
                "INSERT INTO tasks (job_id, task, state, updated_at)"
                " WITH RECURSIVE seq(i) AS (SELECT ? UNION ALL SELECT i + ? FROM seq WHERE i + ? <= ?)"
                " SELECT ?, i, 'PENDING', ? FROM seq",
                (indices[0], indices.step, indices.step, indices[-1], job_id, now),
            )
        else:  # Slurm's list form ('1,3,5-7'): its indices, each once
            c.executemany("INSERT INTO tasks (job_id, task, state, updated_at) VALUES (?, ?, 'PENDING', ?)",
                          ((job_id, i, now) for i in indices))
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

    def job_submitted_at(self, job_id: int) -> float | None:
        """When the job that now holds `job_id` was submitted; None when no job does."""
        row = self.conn.execute("SELECT submitted_at FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else float(row[0])

    def job_owner(self, job_id: int) -> tuple[int, str]:
        """(uid, user name) of a job's submitter; NotFound if there is no such job."""
        row = self.conn.execute("SELECT uid, user FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} does not exist; `hybridctl queue --all` lists the jobs")
        return int(row[0]), str(row[1])

    def task_states(self, job_id: int, task: int | None = None) -> list[TaskState]:
        """[(task, state, attempt)] of a job (or one task of it)."""
        q = "SELECT task, state, attempt FROM tasks WHERE job_id=?"
        args: tuple[Any, ...] = (job_id,)
        if task is not None:
            q += " AND task=?"
            args += (task,)
        return [TaskState(t, JobStatus(s), a) for t, s, a in self.conn.execute(q + " ORDER BY task", args)]

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
                why = ranks[0].reason  # cache-aware placement says why this node: `show` prints it
                self.transition(job_id, task, JobStatus.STARTING, reason=f"placed on {why}" if why else "placed",
                                actor_uid=None, now=now, conn=c)
                if job_id not in owners:
                    owners[job_id] = c.execute("SELECT user, grp FROM jobs WHERE id=?", (job_id,)).fetchone()
                user, grp = owners[job_id]
                attempt = c.execute(
                    "SELECT attempt FROM tasks WHERE job_id=? AND task=?", (job_id, task)
                ).fetchone()[0]
                c.execute(
                    "UPDATE tasks SET nodes=?, gpus=?, gpu_type=? WHERE job_id=? AND task=?",
                    (",".join(p.node for p in ranks), ",".join(map(str, ranks[0].gpus)), ranks[0].gpu_type,
                     job_id, task),
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

    def rank_results(self, job_id: int, task: int, attempt: int) -> list[RankResult]:
        """(rank, end, exit_code) of every rank of one attempt of a task."""
        return list(map(RankResult._make, self.conn.execute(
            "SELECT rank, end, exit_code FROM allocations WHERE job_id=? AND task=? AND attempt=? ORDER BY rank",
            (job_id, task, attempt),
        )))

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

    def active_ranks(self, node: str) -> list[ActiveRank]:
        """(job, task, attempt, rank, state) of every held allocation on `node` whose task is active."""
        return list(map(ActiveRank._make, self.conn.execute(
            "SELECT a.job_id, a.task, a.attempt, a.rank, t.state FROM allocations a"
            " JOIN tasks t ON t.job_id=a.job_id AND t.task=a.task AND t.attempt=a.attempt"
            f" WHERE a.node=? AND a.end IS NULL AND t.state IN ({ACTIVE_SQL})",
            (node,),
        )))

    def held_ranks(self, node: str) -> set[tuple[int, int, int, int]]:
        """(job, task, attempt, rank) of every allocation still open on `node`, whatever its task's
        state: the ranks that node may report on (a node is believed only about its own)."""
        return set(self.conn.execute(
            "SELECT job_id, task, attempt, rank FROM allocations WHERE node=? AND end IS NULL", (node,)))

    def tasks_on(self, node: str) -> list[TaskOnNode]:
        """(job, task, state) of every task holding an allocation on `node`."""
        return list(map(TaskOnNode._make, self.conn.execute(
            "SELECT DISTINCT a.job_id, a.task, t.state FROM allocations a"
            " JOIN tasks t ON t.job_id=a.job_id AND t.task=a.task WHERE a.node=? AND a.end IS NULL",
            (node,),
        )))

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
            " j.throttle, j.depends_on, j.use_spot, j.num_tasks, j.alternatives, j.name, j.dependencies,"
            " j.singleton, j.exclusive FROM pj JOIN jobs j ON j.id = pj.id"
        ).fetchall()
        deps_cache: dict[tuple[str, str], tuple[tuple[int, ...], str]] = {}
        out: list[PendingTask] = []
        for (job_id, task, user, grp, prio, sub, gpus, gtype, cpus, mem, nn, place, thr, deps, spot, n, alt,
             name, others, single, excl) in heads:
            unmet, why = self._blocked(job_id, user, name, deps, others, single, deps_cache)
            res = _with_alternatives(
                Resources(gpus=gpus, gpu_type=gtype, cpus=cpus, memory_mb=mem, use_spot=bool(spot)), alt
            )
            head = PendingTask(job_id, task, user, grp, prio, sub, res, nn, place, thr, unmet, deps_reason=why,
                               exclusive=bool(excl))
            want = window(head)
            if n <= 1 or want <= 1:
                out.append(head)
                continue
            out += [
                dataclasses.replace(head, task=t)
                for (t,) in self.conn.execute(
                    "SELECT task FROM tasks WHERE state='PENDING' AND job_id=? ORDER BY task LIMIT ?",
                    (job_id, min(want, n)),
                )
            ]
        return out

    def _all_pending(self) -> list[PendingTask]:
        rows = self.conn.execute(
            "SELECT t.job_id, t.task, j.user, j.grp, j.priority, j.submitted_at, j.gpus, j.gpu_type, j.cpus,"
            " j.memory_mb, j.num_nodes, j.placement, j.throttle, j.depends_on, j.use_spot, j.alternatives,"
            " j.name, j.dependencies, j.singleton, j.exclusive"
            " FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.state='PENDING'"
        ).fetchall()
        deps_cache: dict[tuple[str, str], tuple[tuple[int, ...], str]] = {}
        head_cache: dict[int, PendingTask] = {}
        out = []
        for (job_id, task, user, grp, prio, sub, gpus, gtype, cpus, mem, nn, place, thr, deps, spot, alt,
             name, others, single, excl) in rows:
            head = head_cache.get(job_id)
            if head is None:
                unmet, why = self._blocked(job_id, user, name, deps, others, single, deps_cache)
                res = _with_alternatives(
                    Resources(gpus=gpus, gpu_type=gtype, cpus=cpus, memory_mb=mem, use_spot=bool(spot)), alt
                )
                head = head_cache[job_id] = PendingTask(job_id, task, user, grp, prio, sub, res, nn, place, thr,
                                                        unmet, deps_reason=why, exclusive=bool(excl))
            out.append(head if head.task == task else dataclasses.replace(head, task=task))
        return out

    def running_on_cloud(self) -> list[tuple[PendingTask, int]]:
        """RUNNING tasks whose every held allocation is on a cloud node, each as `pending` would
        make it (its job's resources, placement, priority), with the recoveries it has used: what
        the burst policy may recall on-prem. One query."""
        out = []
        for (job_id, task, user, grp, prio, sub, gpus, gtype, cpus, mem, nn, place, spot, alt, excl,
             recovered) in self.conn.execute(
            "SELECT t.job_id, t.task, j.user, j.grp, j.priority, j.submitted_at, j.gpus, j.gpu_type, j.cpus,"
            " j.memory_mb, j.num_nodes, j.placement, j.use_spot, j.alternatives, j.exclusive, t.recoveries"
            " FROM (SELECT a.job_id, a.task FROM allocations a LEFT JOIN nodes n ON n.name = a.node"
            "       WHERE a.end IS NULL GROUP BY a.job_id, a.task HAVING MIN(COALESCE(n.site, '') = 'cloud') = 1) c"
            " JOIN tasks t ON t.job_id = c.job_id AND t.task = c.task JOIN jobs j ON j.id = t.job_id"
            " WHERE t.state = 'RUNNING' ORDER BY t.job_id, t.task"
        ):
            res = _with_alternatives(
                Resources(gpus=gpus, gpu_type=gtype, cpus=cpus, memory_mb=mem, use_spot=bool(spot)), alt
            )
            out.append((PendingTask(job_id, task, user, grp, prio, sub, res, nn, place, exclusive=bool(excl)),
                        int(recovered)))
        return out

    def _blocked(self, job_id: int, user: str, name: str, deps: str, others: str, singleton: int,
                 cache: dict[tuple[str, str], tuple[tuple[int, ...], str]]) -> tuple[tuple[int, ...], str]:
        """(job ids it waits for, the reason when not plain afterok: '' else) of a pending job:
        its dependencies not yet met (any kind), and for `singleton` the job of the same user and
        name it waits behind."""
        key = (deps, others)
        hit = cache.get(key)
        if hit is None:
            pairs = [("afterok", int(d)) for d in json.loads(deps)] + [(str(k), int(d)) for k, d in json.loads(others)]
            unmet = [(k, d) for k, d in pairs if dependency_outcome(k, self._dep_facts(d, k)) != "met"]
            plain = all(k == "afterok" for k, _ in unmet)
            hit = cache[key] = (tuple(d for _, d in unmet),
                                "" if plain else "dependency: waiting for " + ", ".join(f"{k}:{d}" for k, d in unmet))
        if not singleton or not name:
            return hit
        blocker = self._singleton_blocker(job_id, user, name)
        if blocker is None:
            return hit
        why = f"singleton: waiting for job {blocker} (same name {name!r} and user) to end"
        before = hit[1] or ("dependency: waiting for " + ", ".join(f"afterok:{d}" for d in hit[0]) if hit[0] else "")
        return (*hit[0], blocker), "; ".join(filter(None, (before, why)))

    def _singleton_blocker(self, job_id: int, user: str, name: str) -> int | None:
        """An unfinished earlier job, or a running later one, of this user and name (Slurm's
        singleton: at most one of them runs at a time, in submission order)."""
        row = self.conn.execute(
            "SELECT j.id FROM jobs j WHERE j.user=? AND j.name=? AND j.id<>?"
            f" AND (EXISTS (SELECT 1 FROM tasks WHERE state IN ({ACTIVE_SQL}) AND job_id=j.id)"
            f" OR (j.id < ? AND EXISTS (SELECT 1 FROM tasks WHERE state IN ({NOT_TERMINAL_SQL}) AND job_id=j.id)))"
            " ORDER BY j.id LIMIT 1",
            (user, name, job_id, job_id),
        ).fetchone()
        return None if row is None else int(row[0])

    def _probe(self, states: str, job_id: int, extra: str = "") -> bool:
        return self.conn.execute(
            f"SELECT 1 FROM tasks WHERE state IN ({states}) AND job_id=?{extra} LIMIT 1", (job_id,)
        ).fetchone() is not None

    def _dep_facts(self, dep: int, kind: str = "") -> DependencyFacts:
        """What `dependency_outcome` needs of job `dep`, by index probes per state (never a read of
        a large array's every task); `kind` skips the probes that kind does not read."""
        if not self.conn.execute("SELECT 1 FROM tasks WHERE job_id=? LIMIT 1", (dep,)).fetchone():
            return DependencyFacts(exists=False)
        failed = self._probe(FAILED_END_SQL, dep)
        if kind == "afterok" and failed:
            return DependencyFacts(failed=True)
        ended = not self._probe(NOT_TERMINAL_SQL, dep)
        started = ended or (kind not in ("", "after")) or not self._probe("'PENDING'", dep, " AND attempt=0")
        return DependencyFacts(started=started, ended=ended, failed=failed)

    def dependency_status(self, job_id: int) -> list[dict[str, Any]]:
        """A job's dependencies for `show`: [{kind, job, state: met|waiting|never}], then
        {kind: 'singleton', job: the job it waits behind or None, state} when it has one."""
        row = self.conn.execute(
            "SELECT depends_on, dependencies, singleton, user, name FROM jobs WHERE id=?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} does not exist; `hybridctl queue --all` lists the jobs")
        deps, others, single, user, name = row
        pairs = [("afterok", int(d)) for d in json.loads(deps)] + [(str(k), int(d)) for k, d in json.loads(others)]
        words = {"met": "met", "wait": "waiting", "never": "never"}
        out: list[dict[str, Any]] = [
            {"kind": k, "job": d, "state": words[dependency_outcome(k, self._dep_facts(d, k))]} for k, d in pairs
        ]
        if single:
            blocker = self._singleton_blocker(job_id, user, name)
            out.append({"kind": "singleton", "job": blocker, "state": "met" if blocker is None else "waiting"})
        return out

    def failed_dependencies(self, limit: int = 2000) -> list[FailedDependency]:
        """Pending (job, task, dep, why) whose dependency can never be met (an afterok dependency
        ended other than SUCCEEDED; an afternotok one SUCCEEDED), at most `limit` (the caller
        cancels them; a 100k-task array is cancelled over several passes). Dependencies are
        checked once per job, not once per task."""
        jobs = self.conn.execute(
            "SELECT j.id, j.depends_on, j.dependencies FROM jobs j WHERE (j.depends_on <> '[]' OR j.dependencies <> '[]')"
            " AND EXISTS (SELECT 1 FROM tasks t WHERE t.state='PENDING' AND t.job_id=j.id)"
        ).fetchall()
        out: list[FailedDependency] = []
        for job_id, deps, others in jobs:
            bad, why = None, ""
            for d in json.loads(deps):
                if self._probe(FAILED_END_SQL, d):
                    bad = d
                    break
            if bad is None:
                for kind, d in json.loads(others):
                    if kind == "afternotok" and dependency_outcome(kind, self._dep_facts(d, kind)) == "never":
                        bad, why = d, f"dependency afternotok:{d} can never be met: job {d} succeeded"
                        break
            if bad is None:
                continue
            out += [FailedDependency(job_id, t, bad, why) for (t,) in self.conn.execute(
                "SELECT task FROM tasks WHERE state='PENDING' AND job_id=? ORDER BY task LIMIT ?",
                (job_id, limit - len(out)))]
            if len(out) >= limit:
                break
        return out

    def exclusive_nodes(self) -> list[str]:
        """Nodes held now by a task of an `exclusive` job (Slurm's --exclusive)."""
        return [n for (n,) in self.conn.execute(
            "SELECT DISTINCT a.node FROM allocations a JOIN jobs j ON j.id = a.job_id"
            " WHERE a.end IS NULL AND j.exclusive = 1"
        )]

    def open_allocations(self) -> list[Allocation]:
        """(job, task, node, gpus, cpus, memory_mb, user, group) of every held allocation."""
        return [
            Allocation(j, t, n, json.loads(g), c, m, u, gr)
            for j, t, n, g, c, m, u, gr in self.conn.execute(
                "SELECT job_id, task, node, gpus, cpus, memory_mb, user, grp FROM allocations WHERE end IS NULL"
            )
        ]

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
            q += f" AND t.state NOT IN ({TERMINAL_SQL})"
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
                      "restarts", "recoveries", "gpu_type", "recovery_causes"), (*r[:-1], json.loads(r[-1]))))
            for r in self.conn.execute(
                "SELECT task, state, reason, attempt, nodes, gpus, started_at, ended_at, exit_code, restarts,"
                " recoveries, gpu_type, recovery_causes FROM tasks WHERE job_id=? ORDER BY task",
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

    def user_task_ids(self, user: str) -> list[tuple[int, int]]:
        """(job, task) of every task of `user` that is not finished."""
        return list(
            self.conn.execute(
                "SELECT t.job_id, t.task FROM tasks t JOIN jobs j ON j.id=t.job_id WHERE j.user=?"
                f" AND t.state NOT IN ({TERMINAL_SQL}) ORDER BY t.job_id, t.task",
                (user,),
            )
        )


def _alternatives_text(r: Resources) -> str:
    """jobs.alternatives (m006): '' for one GPU type, else the candidates as JSON."""
    if not r.alternatives:
        return ""
    return json.dumps({"ordered": r.ordered, "of": [list(a) for a in r.alternatives]})


def _with_alternatives(res: Resources, text: str) -> Resources:
    if not text:
        return res
    d = json.loads(text)
    return dataclasses.replace(res, alternatives=tuple((t, int(n)) for t, n in d["of"]), ordered=bool(d["ordered"]))
