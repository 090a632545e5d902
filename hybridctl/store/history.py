"""What backfill, runtime estimates and preemption read each pass: the held work with its priority
and state, jobs' time limits and `preemptible` marks, and the runs that SUCCEEDED (the history
core/estimate.py learns from), and how long pending tasks' stopped attempts ran (burst `World.ran`)."""

from __future__ import annotations

import json
from typing import Any, NamedTuple, Sequence

from hybridctl.store.base import Tables


class HeldRank(NamedTuple):
    """One held allocation (a rank of a task on one node) and what preemption needs of its task."""

    job_id: int
    task: int
    node: str
    gpus: list[int]
    cpus: float
    memory_mb: int
    user: str
    priority: int
    start: float
    state: str
    """The task's state: PREEMPTED while it is being stopped for another task."""
    group: str = ""


class JobFacts(NamedTuple):
    """A job's spec facts an estimate needs."""

    name: str
    time_limit: float | None
    preemptible: bool
    run: str
    deadline: float | None = None
    """Seconds since the epoch by which it must finish (`deadline:`), None = none."""
    num_nodes: int = 1
    checkpoints: bool = False
    """It names a `checkpoint_dir`."""


class FinishedRun(NamedTuple):
    user: str
    job_id: int
    name: str
    run: str
    runtime_s: float
    ended_at: float


class HistoryTables(Tables):
    def held_ranks_full(self) -> list[HeldRank]:
        """Every held allocation with its job's priority and its task's state."""
        return [
            HeldRank(j, t, n, json.loads(g), c, m, u, p, s, st, grp)
            for j, t, n, g, c, m, u, p, s, st, grp in self.conn.execute(
                "SELECT a.job_id, a.task, a.node, a.gpus, a.cpus, a.memory_mb, a.user, j.priority, a.start,"
                " t.state, a.grp FROM allocations a JOIN jobs j ON j.id=a.job_id"
                " JOIN tasks t ON t.job_id=a.job_id AND t.task=a.task WHERE a.end IS NULL"
            )
        ]

    def job_facts(self, job_ids: Sequence[int]) -> dict[int, JobFacts]:
        """job -> its name, time limit, `preemptible` mark, run script, deadline, node count and whether
        it checkpoints (from its spec)."""
        out: dict[int, JobFacts] = {}
        ids = sorted(set(job_ids))
        for at in range(0, len(ids), 500):
            part = ids[at : at + 500]
            marks = ",".join("?" * len(part))
            for j, name, limit, pre, run, deadline, nodes, ckpt in self.conn.execute(
                "SELECT id, name, json_extract(spec, '$.time_limit'), json_extract(spec, '$.preemptible'),"
                " json_extract(spec, '$.run'), json_extract(spec, '$.deadline'), num_nodes,"
                f" json_extract(spec, '$.checkpoint_dir') FROM jobs WHERE id IN ({marks})",
                part,
            ):
                out[j] = JobFacts(name, float(limit) if limit else None, bool(pre), str(run or ""),
                                  float(deadline) if deadline is not None else None, int(nodes or 1), bool(ckpt))
        return out

    def finished_runs(self, since: float, limit: int = 20000) -> list[FinishedRun]:
        """Tasks that SUCCEEDED since `since`, newest first, with their run time."""
        return [
            FinishedRun(u, j, n, str(run or ""), float(e - s), float(e))
            for u, j, n, run, s, e in self.conn.execute(
                "SELECT j.user, t.job_id, j.name, json_extract(j.spec, '$.run'), t.started_at, t.ended_at FROM tasks t"
                " JOIN jobs j ON j.id=t.job_id WHERE t.state='SUCCEEDED' AND t.ended_at >= ?"
                " AND t.started_at IS NOT NULL ORDER BY t.ended_at DESC LIMIT ?",
                (since, limit),
            )
        ]

    def stopped_runs(self, job_id: int | None = None) -> dict[tuple[int, int], float]:
        """Per PENDING task that was placed before (`attempt` > 0: every earlier attempt was stopped
        without finishing, else it would not be pending; a crash requeued under `max_restarts`
        counts too, and a run counts from placement, setup included: the figure errs long): the
        longest run one of those attempts made, in seconds: its ranks' last end minus their first start, only attempts whose every
        allocation has ended (burst `World.ran`). Only `job_id`'s tasks when given. One query: the
        pending tasks through the state index (or the key), their allocations through
        `allocations_task`."""
        where, args = ("t.job_id = ? AND ", (job_id,)) if job_id is not None else ("", ())
        return {
            (j, t): float(r)
            for j, t, r in self.conn.execute(
                "SELECT job_id, task, MAX(ran) FROM ("
                "  SELECT a.job_id, a.task, MAX(a.end) - MIN(a.start) AS ran FROM tasks t"
                "  JOIN allocations a ON a.job_id = t.job_id AND a.task = t.task AND a.attempt < t.attempt"
                f" WHERE {where}t.state = 'PENDING' AND t.attempt > 0"
                "  GROUP BY a.job_id, a.task, a.attempt HAVING COUNT(a.end) = COUNT(*))"
                " GROUP BY job_id, task HAVING MAX(ran) > 0",
                args,
            )
        }

    def spec_fields(self, job_ids: Sequence[int], paths: Sequence[str],
                    any_set: bool = False) -> dict[int, tuple[int, tuple[Any, ...]]]:
        """Per job: (its owner's uid, the values at the JSON `paths` of its spec, e.g.
        '$.environment': objects as JSON text, scalars as values, None where absent). 500 ids per
        query; with `any_set`, only jobs where at least one path is set."""
        ids = list(job_ids)
        cols = ", ".join("json_extract(spec, ?)" for _ in paths)
        out: dict[int, tuple[int, tuple[Any, ...]]] = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            where = f"id IN ({','.join('?' * len(part))})"
            args: list[Any] = [*paths, *part]
            if any_set:
                where += " AND (" + " OR ".join("json_extract(spec, ?) IS NOT NULL" for _ in paths) + ")"
                args += list(paths)
            for row in self.conn.execute(f"SELECT id, uid, {cols} FROM jobs WHERE {where}", args):
                out[row[0]] = (row[1], tuple(row[2:]))
        return out
