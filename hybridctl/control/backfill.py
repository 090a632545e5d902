"""What backfill and preemption need from the store on each scheduling pass: the running tasks with
their expected ends (time limit, else a runtime estimate from history), the pending tasks with
their runtimes and `preemptible` marks, and where each estimate came from (for `show`). The
history is read at most once a minute; the decisions themselves are pure (core/schedule.py,
core/estimate.py, core/preempt.py)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from hybridctl.control.checkpoints import MANIFEST
from hybridctl.core.estimate import Estimate, Estimator, Run, command_key, expected_end
from hybridctl.core.model import JobStatus, PendingTask, Policy, RunningTask, task_label
from hybridctl.store.history import JobFacts
from hybridctl.store.sqlite import Store

HISTORY_DAYS = 30.0
"""Finished runs older than this teach estimates nothing."""
REFRESH_S = 60.0


class RuntimeFacts:
    """Per-pass inputs read from `store`; the history index is rebuilt at most every REFRESH_S."""

    def __init__(self, store: Store, home: Path | None = None, policy: Policy | None = None) -> None:
        self.store = store
        self.home = home
        """Where the controller keeps checkpoint copies (None: no checkpoint times)."""
        self.policy = policy or Policy()
        """`multi_node_priority` and `preempt_checkpointing` are applied here (`marks`); with
        `preempt_below`, which running tasks' checkpoint times are worth reading."""
        self._estimator: tuple[float, Estimator] | None = None
        self._seen_until = 0.0
        """The newest end among the runs the estimator has learnt."""
        self._facts: dict[int, JobFacts] = {}
        self._checkpoints: dict[str, tuple[int, float | None]] = {}
        """task label -> (manifest mtime_ns, newest checkpoint file's mtime)."""

    def checkpoint_at(self, job_id: int, task: int) -> float | None:
        """When the task last wrote its checkpoint, as the controller's copy says (the newest
        file's mtime on the node, from the checkpoint sync's manifest); None if unknown. The
        manifest is re-read only when it changed."""
        if self.home is None:
            return None
        label = task_label(job_id, task)
        path = self.home / "checkpoints" / label / MANIFEST
        try:
            stamp = os.stat(path).st_mtime_ns
        except OSError:
            return None
        cached = self._checkpoints.get(label)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        newest: float | None = None
        try:
            seen = json.loads(path.read_text())
            times = [v[1] for v in seen.values() if isinstance(v, list) and len(v) > 1]
            newest = max(times) / 1e9 if times else None
        except (OSError, ValueError, TypeError, AttributeError):
            newest = None
        self._checkpoints[label] = (stamp, newest)
        return newest

    def estimator(self, now: float) -> Estimator:
        """The history index; every REFRESH_S it learns the runs that ended since it last looked
        (the first look reads HISTORY_DAYS back)."""
        cached = self._estimator
        if cached is None or now - cached[0] >= REFRESH_S or now < cached[0]:
            est = cached[1] if cached is not None else Estimator()
            since = self._seen_until if cached is not None else now - HISTORY_DAYS * 86400
            rows = self.store.finished_runs(since)
            keys: dict[str, str] = {}
            runs = []
            for r in rows:
                if r.ended_at <= since and cached is not None:
                    continue  # ended exactly at the last look: already learnt
                key = keys.get(r.run)
                if key is None:
                    key = keys[r.run] = command_key(r.run)
                runs.append(Run(r.user, r.job_id, r.name, key, r.runtime_s, r.ended_at))
            est.add(runs)
            self._seen_until = max([since, *(r.ended_at for r in rows)])
            cached = self._estimator = (now, est)
        return cached[1]

    def facts(self, job_ids: Sequence[int]) -> dict[int, JobFacts]:
        """Spec facts per job (specs do not change, so they are kept)."""
        missing = [j for j in set(job_ids) if j not in self._facts]
        if missing:
            self._facts.update(self.store.job_facts(missing))
        if len(self._facts) > 200_000:  # finished jobs' facts are not needed again
            self._facts = {j: self._facts[j] for j in set(job_ids) if j in self._facts}
        return self._facts

    def estimate(self, job_id: int, user: str, now: float) -> Estimate:
        """A job's expected run time and its source ('estimate: p80 of 12 runs of ...')."""
        f = self.facts([job_id]).get(job_id)
        if f is None:
            return Estimate(None, "unknown job")
        return self.estimator(now).estimate(
            user=user, job_id=job_id, name=f.name, command=command_key(f.run), time_limit=f.time_limit
        )

    def marks(self, f: JobFacts | None, priority: int, preemptible: bool) -> tuple[int, bool]:
        """A task's priority and preemptibility under the policy's size and checkpoint rules: a
        job over several nodes gets `multi_node_priority` more; one that checkpoints and has no
        deadline is preemptible with `preempt_checkpointing`."""
        if f is None:
            return priority, preemptible
        if f.num_nodes > 1:
            priority += self.policy.multi_node_priority
        if self.policy.preempt_checkpointing and f.checkpoints and f.deadline is None:
            preemptible = True
        return priority, preemptible

    def running(self, now: float) -> tuple[RunningTask, ...]:
        """Every held rank as a RunningTask with its expected end; a task being stopped for a
        preemption (PREEMPTED, still holding its GPUs) is `stopping`."""
        ranks = self.store.held_ranks_full()
        facts = self.facts([r.job_id for r in ranks])
        est = self.estimator(now)
        out = []
        for r in ranks:
            f = facts.get(r.job_id)
            limit = f.time_limit if f else None
            priority, marked = self.marks(f, r.priority, bool(f and f.preemptible))
            # Only a preemptible task's work lost matters.
            cut = self.policy.preempt_below
            below = cut is not None and priority < cut
            ckpt = self.checkpoint_at(r.job_id, r.task) if marked or below else None
            guess = None
            if f is not None and limit is None:
                guess = est.estimate(
                    user=r.user, job_id=r.job_id, name=f.name, command=command_key(f.run)
                ).seconds
            out.append(
                RunningTask(
                    r.job_id, r.task, r.user, priority, r.node, tuple(r.gpus), r.cpus, r.memory_mb,
                    r.start, expected_end(r.start, limit, guess, now), marked,
                    ckpt, r.state == JobStatus.PREEMPTED.value, r.group, guess is not None,
                )
            )  # fmt: skip
        return tuple(out)

    def pending(self, tasks: list[PendingTask], now: float) -> list[PendingTask]:
        """`tasks` with their runtimes (limit or estimate) and `preemptible` marks filled in."""
        facts = self.facts([t.job_id for t in tasks])
        est = self.estimator(now)
        per_job: dict[int, tuple[float | None, bool, bool, int]] = {}
        out = []
        for t in tasks:
            got = per_job.get(t.job_id)
            if got is None:
                f = facts.get(t.job_id)
                if f is None:
                    got = (None, False, False, t.priority)
                else:
                    e = est.estimate(user=t.user, job_id=t.job_id, name=f.name,
                                     command=command_key(f.run), time_limit=f.time_limit)
                    priority, marked = self.marks(f, t.priority, f.preemptible)
                    # Only a time limit lets it start ahead of a reservation (core/schedule.py).
                    got = (e.seconds, marked, e.seconds is not None and f.time_limit is None, priority)
                per_job[t.job_id] = got
            out.append(t if got == (None, False, False, t.priority) else
                       replace(t, runtime_s=got[0], preemptible=got[1], estimated=got[2], priority=got[3]))
        return out
