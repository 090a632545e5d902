"""What the allocation history and the event log say: GPU use over a window (fair share,
`usage`), the audit log, and the running work's expected ends (the burst forecast, backfill)."""

from __future__ import annotations

import json
from typing import Any, Sequence

from hybridctl.store.base import Tables
from hybridctl.store.rows import RunningAllocation, UsageRecord


class UsageTables(Tables):
    def usage_records(self, since: float, now: float) -> list[UsageRecord]:
        """(user, group, start, end-or-now, gpus) of allocations that overlap [since, now]."""
        rows = self.conn.execute(
            "SELECT user, grp, start, COALESCE(end, ?), gpus FROM allocations WHERE COALESCE(end, ?) >= ?",
            (now, now, since),
        )
        return [UsageRecord(u, g, max(s, since), e, float(len(json.loads(gp)))) for u, g, s, e, gp in rows]

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

    def pending_since(self) -> dict[tuple[int, int], float]:
        """When each PENDING task last became PENDING (submit or requeue)."""
        return {(j, t): u for j, t, u in self.conn.execute(
            "SELECT job_id, task, updated_at FROM tasks WHERE state='PENDING'")}

    def running_allocations(self) -> list[RunningAllocation]:
        """(node, gpus, cpus, memory_mb, start, time_limit, job, task) of every held allocation."""
        return [
            RunningAllocation(n, json.loads(g), c, m, s, json.loads(spec).get("time_limit"), j, t)
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
