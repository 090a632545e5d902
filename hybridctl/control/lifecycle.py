"""The one place where a job's state changes after it was queued.

Whatever causes the change — a node's agent reporting a rank's end (the fleet), a reclaim notice or
a scale-down (the autoscaler), a cancel (a request) — it calls one method here, which writes the
store, logs, and calls `on_change` so that the daemon runs a scheduling pass. The requeue rule
itself is pure (`core.retry.decide` returns a `RequeueDecision`); this class applies it.

A node is believed only about the ranks whose open allocation it holds: `rank_finished` and
`release` take the reporting `node` and ignore (with a warning) a key that is not its own."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from hybridctl.config import Settings
from hybridctl.core.jobenv import RankPlace, job_env, slurm_env, with_user_env
from hybridctl.core.model import JobStatus, NodeState, spec_from_dict, task_label
from hybridctl.core.reconcile import ActiveRank, job_key, parse_key
from hybridctl.core.retry import Cause, Charge, RequeueDecision, decide
from hybridctl.store.rows import TaskState
from hybridctl.store.sqlite import Store

log = logging.getLogger("hybridctl.controller")

SEEN_EVERY = 5.0
"""Seconds between writes of an UP node's `last_seen` (each answer moves it, at most this often)."""


def log_path(home: Path, key: str, stream: str) -> Path:
    """Where the controller keeps a finished rank's log copy (`stream`: stdout or stderr)."""
    return home / "logs" / f"{key}.{stream}"


def checkpoint_path(home: Path, key: str) -> Path:
    """The controller's copy of a job's (or array task's) checkpoint directory."""
    return home / "checkpoints" / key.split(".", 1)[0]


class Lifecycle:
    """Every job state change the fleet, the autoscaler or a request causes. `clock` is wall time
    (injectable for tests); `on_change` is called after anything that warrants a scheduling pass."""

    def __init__(self, store: Store, settings: Settings, clock: Callable[[], float],
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._on_change = on_change

    def changed(self) -> None:
        """Ask for a scheduling pass (something outside this class changed the cluster)."""
        self._on_change()

    # ---- what a node is believed about -----------------------------------------------------------

    def active_ranks(self, node: str) -> list[ActiveRank]:
        return [ActiveRank(a.job_id, a.task, a.attempt, a.rank, JobStatus(a.state)) for a in self.store.active_ranks(node)]

    def _task(self, job_id: int, task: int) -> TaskState:
        """The one row of task `task` of `job_id` (its state and latest attempt)."""
        (row,) = self.store.task_states(job_id, task)
        return row

    def held_keys(self, node: str) -> set[str]:
        """The keys of every rank whose allocation on `node` is still open: all `node` is
        believed about (finish, release, logs, checkpoint)."""
        return {job_key(*r) for r in self.store.held_ranks(node)}

    def _held_by(self, key: str, node: str) -> tuple[int, int, int, int] | None:
        """The parsed key when its rank's open allocation is on `node`, else None (and a warning:
        a node reported on a rank that is not its own, which is a bug or a lie)."""
        parsed = parse_key(key)
        if parsed is not None and parsed in self.store.held_ranks(node):
            return parsed
        log.warning("node %s reported on job %s, which holds no allocation there: not believed", node, key)
        return None

    def rank_home(self, key: str) -> str | None:
        """The node this rank of this attempt was placed on (its allocation may be closed since);
        None for a key hybridctl never placed."""
        parsed = parse_key(key)
        return None if parsed is None else self.store.rank_node(*parsed)

    def log_path(self, key: str, stream: str) -> Path:
        return log_path(self.settings.home_path, key, stream)

    def checkpoint_path(self, key: str) -> Path:
        return checkpoint_path(self.settings.home_path, key)

    # ---- starting --------------------------------------------------------------------------------

    def launch_payload(self, rank: ActiveRank, node: str) -> dict[str, Any]:
        """What the agent on `node` gets to start one rank. The job's environment comes from
        core/jobenv.py (SKYPILOT_* and HYBRIDCTL_* for every job); secrets travel only in here,
        to the agent, which keeps them in its private job spec and the job's environment."""
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
        system = job_env(place)
        if spec.get("slurm"):  # a Slurm batch script: its SLURM_* variables (core/jobenv.slurm_env)
            system.update(slurm_env(place, spec_from_dict(spec), info["gpus"]))
        envs = with_user_env(system, spec.get("envs") or {}, spec.get("secrets") or {})
        payload: dict[str, Any] = {
            "key": rank.key, "user": info["user"], "uid": info["uid"], "gid": info["gid"], "gpus": info["gpus"],
            "run": spec["run"], "setup": spec.get("setup") or "", "envs": envs, "workdir": spec.get("workdir"),
            "time_limit": spec.get("time_limit"),
            "slurm": spec.get("slurm") or None,  # the agent: srun/scontrol on PATH, --signal, requeue
            # Enforced by the node's cgroups where it has them (hello's `containment`).
            "memory_mb": (spec.get("resources") or {}).get("memory_mb") or None,
            "cpus": (spec.get("resources") or {}).get("cpus"),
            # The job's world (agent envs.py, jobspec.setup_once); file_mounts: NodeSession.prepare_launch.
            **({"environment": spec["environment"]} if spec.get("environment") else {}),
            **({"setup_every_attempt": True} if spec.get("setup_every_attempt") else {}),
            # image_id: docker:IMAGE: the agent runs the job in that image under podman (container.py)
            **({"image": spec["image"]} if spec.get("image") else {}),
        }
        if len(nodes) > 1:
            payload["rendezvous_addr"] = ips[0]
        return payload

    def _node_address(self, name: str) -> str:
        """The address other nodes use to reach `name` (its SSH host; loopback for local agents)."""
        host = self.store.node(name).host
        return "127.0.0.1" if host in ("local", "", "localhost") else host

    def mark_running(self, job_id: int, task: int) -> None:
        state = self._task(job_id, task).state
        if state is JobStatus.STARTING:
            self.store.transition(job_id, task, JobStatus.RUNNING, reason="started", actor_uid=None, now=self.clock())

    # ---- ending ----------------------------------------------------------------------------------

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
        if all(r.end is not None and r.exit_code == 0 for r in results):
            self.finish(job_id, task, 0, f"all {len(results)} ranks exited 0", status=JobStatus.SUCCEEDED)

    def finish(self, job_id: int, task: int, exit_code: int | None, reason: str,
               status: JobStatus = JobStatus.FAILED, release: bool = True) -> None:
        state = self._task(job_id, task).state
        if state.is_terminal():
            return
        if state is JobStatus.STARTING and (exit_code is not None or status is JobStatus.TIMEOUT):
            # It ran (it has an exit code) but ended before a poll saw it running: record that it
            # started, so started_at and the history are right for short jobs too.
            self.store.transition(job_id, task, JobStatus.RUNNING, reason="started", actor_uid=None, now=self.clock())
        # A Slurm job that asked to run again (scontrol requeue, or a stop after --signal with
        # --requeue): the agent's reason starts with 'requeue:' (a rank's: 'rank N: requeue:').
        own = reason.split(": ", 1)[1] if reason.startswith("rank ") and ": " in reason else reason
        asked = status is JobStatus.FAILED and own.startswith("requeue:")
        if asked or (status is JobStatus.FAILED and exit_code is not None) or status is JobStatus.TIMEOUT:
            # A non-zero exit is the job's own failure (a restart), unless its code is in
            # recover_on_exit_codes (a recovery); a time limit is final, as in Slurm.
            cause = Cause.REQUEUE if asked else Cause.TIMEOUT if status is JobStatus.TIMEOUT else Cause.EXIT
            d = self._decide(job_id, task, cause, exit_code)
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
        state = self._task(job_id, task).state
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
        state = self._task(job_id, task).state
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
            row = self._task(job_id, task)
            if row.state is JobStatus.PREEMPTED and row.attempt == attempt and not self.store.task_nodes(job_id, task):
                self.requeue_or_fail(job_id, task, "preempted")
            self._on_change()

    def cancel(self, targets: Sequence[tuple[int, int | None]], *, reason: str, actor_uid: int,
               real_nodes: Callable[[int, int], list[str]]) -> tuple[list[str], list[str], set[str]]:
        """Cancel every task of `targets` (job, task or None for all its tasks) in one transaction;
        return (cancelled labels, skipped labels with their state, nodes to stop processes on). A
        dispatched task keeps its GPUs until its node confirms the processes are gone (`release`):
        `real_nodes(job, task)` names the nodes with an agent that hold it."""
        now = self.clock()
        cancelled: list[str] = []
        skipped: list[str] = []
        stopping: set[str] = set()
        with self.store.tx() as c:
            for job_id, task in targets:
                for row in self.store.task_states(job_id, task):
                    label = task_label(job_id, row.task)
                    if row.state.is_terminal():
                        skipped.append(f"{label} ({row.state.value})")
                        continue
                    real = real_nodes(job_id, row.task) if row.state.is_active() else []
                    self.store.transition(job_id, row.task, JobStatus.CANCELLED, reason=reason, actor_uid=actor_uid,
                                          now=now, release=not real, conn=c)
                    cancelled.append(label)
                    stopping.update(real)
        if cancelled:
            self._on_change()
        return cancelled, skipped, stopping

    def cancel_failed_dependencies(self, limit: int) -> None:
        """Cancel (at most `limit`) tasks whose dependency did not succeed, in one transaction; when
        the limit was reached, ask for another pass (so that clients are answered in between)."""
        doomed = self.store.failed_dependencies(limit=limit)
        if not doomed:
            return
        now = self.clock()
        with self.store.tx() as c:
            for d in doomed:
                self.store.transition(d.job_id, d.task, JobStatus.CANCELLED,
                                      reason=d.why or f"dependency {d.dep} did not succeed", actor_uid=None, now=now, conn=c)
        if len(doomed) >= limit:
            self._on_change()

    # ---- nodes -----------------------------------------------------------------------------------

    def node_lost(self, name: str, reason: str) -> None:
        now = self.clock()
        self.store.set_link(name, NodeState.LOST, reason, now)
        for t in self.store.tasks_on(name):
            if JobStatus(t.state).is_active() or t.state == JobStatus.PREEMPTED.value:
                self.requeue_or_fail(t.job_id, t.task, f"node {name} lost: {reason}")
        self.store.release_node(name, now)
        self._on_change()

    def set_link(self, name: str, state: NodeState, reason: str) -> None:
        self.store.set_link(name, state, reason, self.clock(), seen=state is NodeState.UP)
        self._on_change()

    def node_seen(self, name: str, last_seen: float | None) -> None:
        """An UP node answered: move its `last_seen` on (written at most every SEEN_EVERY s, not on
        each poll). Nothing a scheduling pass reads changed, so no pass is asked for."""
        now = self.clock()
        if last_seen is None or now - last_seen >= SEEN_EVERY:
            self.store.set_link(name, NodeState.UP, "", now, seen=True)

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
            self._on_change()

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
            self._on_change()
