"""The autoscaler: the controller's side task that carries out the burst policy.

Each pass refreshes offers, reconciles the providers' instances with the database (instances gone
under us, leaks), acts on preemption notices, accrues cost, asks `core.burst.decide` what to do,
then launches (and bootstraps) or gives back nodes. Cloud nodes join the `nodes` table with
site 'cloud' and get the same kind of fleet session as on-prem nodes, extended to upload a job's
workdir before it starts and download its outputs when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Coroutine, Sequence

from hybridctl.aio import wait_event
from hybridctl.cloud import cost as costs
from hybridctl.cloud import providers as provider_mod
from hybridctl.cloud.base import (
    TAG_CLUSTER,
    CapacityError,
    CloudNodeState,
    CloudProvider,
    Instance,
    InstanceState,
    LaunchSpec,
    Notice,
    says_reclaimed,
)
from hybridctl.cloud.bootstrap import BootstrapFailed, install_agent, pin, pin_first_contact
from hybridctl.cloud.transfer import TransferError, download, output_dir, owner_of, upload
from hybridctl.config import Settings
from hybridctl.control.budget import learnt
from hybridctl.control.budget import limits, utc_day
from hybridctl.control.checkpoints import MANIFEST, TransferMismatch
from hybridctl.control.fleet import Fleet, NodeSession
from hybridctl.control.lifecycle import Lifecycle
from hybridctl.control.scheduler import Scheduler
from hybridctl.core import burst
from hybridctl.core.allowance import closed_gate
from hybridctl.core.errors import HybridctlError
from hybridctl.core.model import ClusterView, JobStatus, NodeState, PendingTask, task_label
from hybridctl.core.reconcile import ActiveRank, job_key
from hybridctl.sim.keys import client_key
from hybridctl.ssh.link import AgentRefused
from hybridctl.ssh.sftp import is_ssh_error
from hybridctl.store.sqlite import NodeRecord, Store

log = logging.getLogger("hybridctl.autoscaler")


def cloud_key(settings: Settings) -> Path:
    """The SSH key the controller uses for cloud nodes (created on first use)."""
    if settings.cloud.identity:
        return Path(settings.cloud.identity).expanduser()
    return client_key(settings.home_path / "cloud")


class CloudSession(NodeSession):
    """A fleet session for a cloud node: before a job starts there, its workdir is uploaded and its
    output directory made; when it ends, the outputs come back with its logs."""

    def __init__(self, fleet: Fleet, name: str, scaler: Autoscaler) -> None:
        super().__init__(fleet, name)
        self.scaler = scaler

    async def prepare_launch(self, rank: ActiveRank) -> dict[str, Any] | None:
        """The job runs in its uploaded copy of the workdir, with an output dir that comes back
        when it ends (`pull_outputs`)."""
        if rank.key not in self.scaler.prepared and not await self.prepare(rank):
            return None
        payload = await super().prepare_launch(rank)
        where = self.scaler.prepared.get(rank.key)
        if payload is not None and where is not None:
            work, out = where
            if work is not None:
                payload["workdir"] = work
            payload["envs"] = {**payload.get("envs", {}), "HYBRIDCTL_OUTPUT_DIR": out}
        return payload

    async def prepare(self, rank: ActiveRank) -> bool:
        """Upload the workdir and make the output directory of one rank about to launch here; a
        failure fails the job with the reason (it never starts) and returns False. The workdir is
        read here as the job's owner and written there as the job's user (cloud/transfer.py)."""
        jobs = self.fleet.lifecycle
        assert self.link is not None
        if self.link.ssh_connection is None:
            return True
        info = self.fleet.store.launch_info(rank.job_id, rank.task, rank.attempt, rank.rank)
        spec = info["spec"]
        cfg = self.fleet.settings.cloud
        owner = owner_of(info)
        work = None
        try:
            agent, files = await self.files()
            out = await output_dir(agent, rank.key, owner)
            if spec.get("workdir"):
                work, sent = await upload(agent, files, rank.key, owner, Path(spec["workdir"]), cfg.workdir_excludes,
                                          cfg.workdir_cap_mb * 1024 * 1024)
                log.info("job %s: uploaded workdir %s to %s (%d bytes)", rank.key, spec["workdir"], self.name, sent)
        except (TransferError, AgentRefused, TransferMismatch) as exc:
            log.error("job %s: %s", rank.key, exc.message)
            jobs.finish(rank.job_id, rank.task, None, f"workdir upload to {self.name}: {exc.message}")
            return False
        except Exception as exc:
            if not is_ssh_error(exc) and not isinstance(exc, OSError):
                raise
            jobs.finish(rank.job_id, rank.task, None, f"workdir upload to {self.name}: {exc}")
            return False
        self.scaler.prepared[rank.key] = (work, out)
        return True

    async def pull_logs(self, key: str) -> None:
        await self.pull_outputs(key)
        await super().pull_logs(key)

    async def pull_outputs(self, key: str) -> None:
        """Bring HYBRIDCTL_OUTPUT_DIR of a finished (or preempted) rank back to the controller, as
        the agent staged it (read as the job's user, links skipped)."""
        settings = self.fleet.settings
        self.scaler.prepared.pop(key, None)
        if self.link is None or self.link.ssh_connection is None:
            return
        dest = settings.home_path / "outputs" / key
        try:
            agent, files = await self.files()
            count, size, cut = await download(agent, files, key, dest, settings.cloud.output_cap_mb * 1024 * 1024,
                                              self.name)
        except (TransferError, AgentRefused, TransferMismatch, OSError) as exc:
            log.error("job %s: output download from %s failed: %s", key, self.name, exc)
            return
        except Exception as exc:
            if not is_ssh_error(exc):
                raise
            log.error("job %s: output download from %s failed: %s", key, self.name, exc)
            return
        if count:
            log.info("job %s: %d output files (%d bytes) from %s in %s%s", key, count, size, self.name, dest,
                     " (truncated at cloud.output_cap_mb)" if cut else "")


class CheckpointIntervals:
    """Seconds between a task's checkpoints as the checkpoint sync has seen them, from the manifest
    of the controller's copy ({path: [size, mtime_ns, ...]}, control/checkpoints.py): the median
    gap between the files' distinct modification times (a job that writes a file per checkpoint)
    and between successive newest times seen (one that overwrites its file). Gaps under
    `MIN_GAP_S` are files of one checkpoint. Re-read only when the manifest changed."""

    MIN_GAP_S = 10.0

    def __init__(self, path_of: Callable[[str], Path]) -> None:
        self.path_of = path_of
        self._seen: dict[str, tuple[int, float | None, list[float], float | None]] = {}
        """label -> (manifest mtime_ns, newest file time, gaps seen between newest times (last 8),
        the interval)."""

    def interval(self, job_id: int, task: int) -> float | None:
        """The median gap, or None while the sync has not seen two checkpoints."""
        label = task_label(job_id, task)
        path = self.path_of(label) / MANIFEST
        try:
            stamp = os.stat(path).st_mtime_ns
        except OSError:
            return None
        old = self._seen.get(label)
        if old is not None and old[0] == stamp:
            return old[3]
        try:
            listing = json.loads(path.read_text())
            times = sorted({v[1] / 1e9 for v in listing.values()
                            if isinstance(v, list) and len(v) > 1 and isinstance(v[1], int)})
        except (OSError, ValueError, AttributeError):
            times = []
        newest = times[-1] if times else None
        seen = list(old[2]) if old is not None else []
        if old is not None and old[1] is not None and newest is not None and newest - old[1] >= self.MIN_GAP_S:
            seen = (seen + [newest - old[1]])[-8:]
        tail = times[-9:]
        gaps = sorted([b - a for a, b in zip(tail, tail[1:]) if b - a >= self.MIN_GAP_S] + seen)
        every = gaps[len(gaps) // 2] if gaps else None
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen[label] = (stamp, newest, seen, every)
        return every


class _Gang:
    """The k launches of one multi-node task (one `LaunchRequest.group`): all k nodes stay, or
    none. Providers rent one node per call, so the k-th can be refused after k-1 are up; those
    go back at once (as one EC2 RunInstances with MinCount=k refuses them all), rather than idle
    for `burst.idle_timeout` while the policy rents the task k nodes in another pool. That next
    pass runs once the whole gang is settled, so it never counts the leftovers as held. A node
    whose bootstrap fails sinks the gang too: the policy covers a gang with k nodes or none, so
    the k-1 that joined would only idle (each goes back once it has joined, if idle)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.names: list[str] = []
        self.sunk = ""  # why the members go back: set once, by the first loss
        self.refused = ""
        self.asked = 0  # launch calls answered (refused, failed or not)
        self.settled = 0  # members refused, or given back for a refused sibling
        self.answered = asyncio.Event()

    def sink(self, what: str) -> None:
        self.sunk = self.sunk or f"another node of its {self.k}-node gang {what}"

    def answer(self, refused: str = "") -> None:
        self.refused = self.refused or refused
        self.asked += 1
        if self.asked >= self.k:
            self.answered.set()


class Autoscaler:
    """Runs the burst policy against the providers; see the module docstring. Job state changes
    (preempt, requeue, node lost) go through `lifecycle`; cloud nodes' sessions through `fleet`;
    the policy and fair-share usage come from `scheduler`. `clock` is wall time."""

    def __init__(self, store: Store, settings: Settings, lifecycle: Lifecycle, fleet: Fleet, scheduler: Scheduler,
                 providers: dict[str, CloudProvider] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.lifecycle = lifecycle
        self.fleet = fleet
        self.scheduler = scheduler
        self.cfg = settings.cloud
        self.limits = limits(self.settings)
        lim = self.limits  # until the first decision, owners with budgets keep off cloud nodes
        self.scheduler.cloud_gate = closed_gate(lim.user_budget_usd, lim.group_budget_usd, lim.budget_period)
        self.providers = provider_mod.build(self.settings) if providers is None else providers
        self.clock = clock
        self.offers: list[burst.Offer] = []
        self.offers_at = float("-inf")
        self.errors: dict[str, str] = {}
        """Provider -> its last error (shown by `cloud status`), cleared on success."""
        self.last: burst.BurstDecision | None = None
        self.last_at: float | None = None
        self.checkpoints = CheckpointIntervals(lifecycle.checkpoint_path)
        """Observed checkpoint intervals (World.checkpoint_every)."""
        self.leaks: list[dict[str, Any]] = []
        self.recalled: set[burst.TaskKey] = set()
        """Tasks recalled on-prem since the controller started: never recalled again (no ping-pong
        if the room they were recalled for is taken before they are requeued)."""
        self.wake = asyncio.Event()
        self.prepared: dict[str, tuple[str | None, str]] = {}
        """Rank key -> (real workdir, real output dir) on its cloud node, set before its launch."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()
        """Nodes with a launch, bootstrap, preemption or give-back in flight."""
        self._declared: set[str] = set()
        self.key_path = cloud_key(self.settings)
        self.public_key = Path(f"{self.key_path}.pub").read_text().strip()

    # ---- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Pass after pass until cancelled. A failing pass is logged and retried on the next one;
        the daemon runs this under `control.supervisor`, so a failing `adopt` is retried too."""
        self.adopt()
        while True:
            try:
                await self.tick()
            except HybridctlError as exc:
                log.warning("autoscaler pass: %s", exc.message)
            except Exception:  # a bug in one pass must not stop the controller; it is logged whole
                log.exception("autoscaler pass failed")
            await wait_event(self.wake, self.cfg.poll_interval)
            self.wake.clear()

    def adopt(self) -> None:
        """After a restart: cloud nodes get cloud sessions, and interrupted launches are settled.
        The members of a gang (rows of one pass for the same task) are settled together: if one
        was still launching, the others go back; if not, they bootstrap as one `_Gang` again."""
        now = self.clock()
        rows = self.store.cloud_instances()
        starting = (CloudNodeState.LAUNCHING, CloudNodeState.BOOTSTRAPPING)
        batches: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for row in rows:
            if row["state"] in starting and row["for_tasks"]:
                batches[(tuple(row["for_tasks"]), row["launched_at"])] = []
        gangs: dict[str, _Gang] = {}
        if batches:
            for row in self.store.cloud_instances(live=False):  # with the members already refused
                key = (tuple(row["for_tasks"]), row["launched_at"])
                if key in batches:
                    batches[key].append(row)
        for batch in batches.values():
            if len(batch) > 1:  # a task's k nodes of one pass: a packed node is one row for several tasks
                gang = _Gang(len(batch))
                gang.names = [r["node"] for r in batch]
                if lost := next((r for r in batch if r["state"] not in starting), None):
                    gang.sink(f"did not come up: {lost['reason'] or lost['state'].value}")
                elif any(r["state"] == CloudNodeState.LAUNCHING for r in batch):
                    gang.sink("was still being launched when the controller restarted")
                gangs.update((r["node"], gang) for r in batch)
        for row in rows:
            if row["state"] == CloudNodeState.LAUNCHING:
                # The provider may or may not have made it; the leak sweep terminates it if it did.
                self.store.cloud_update_instance(row["instance_id"], now, state=CloudNodeState.FAILED, ended_at=now,
                                                 reason="controller restarted during the launch")
            elif row["state"] == CloudNodeState.BOOTSTRAPPING and row["node"] not in self._busy:  # (a supervised rerun)
                self._spawn(row["node"], self._resume(row, gangs.get(row["node"])))
            elif row["state"] in (CloudNodeState.UP, CloudNodeState.DRAINING):
                self.start_session(row["node"])
                if row["offer"].get("declared_shape"):
                    self._declared.add(row["node"])

    def _spawn(self, node: str, coro: Coroutine[Any, Any, None]) -> None:
        self._busy.add(node)

        async def run() -> None:
            try:
                await coro
            except HybridctlError as exc:
                log.error("cloud node %s: %s", node, exc.message)
            except Exception:
                log.exception("cloud node %s: unexpected error", node)
            finally:
                self._busy.discard(node)

        t = asyncio.create_task(run(), name=f"cloud:{node}")
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def tick(self) -> burst.BurstDecision:
        """One pass (see the module docstring); returns the decision it acted on."""
        now = self.clock()
        await self.refresh_offers(now)
        await self.sync_instances(now)
        await self.handle_notices(now)
        self.accrue(now)
        self.fix_shapes()
        for r in self.store.cloud_instances():
            if r["state"] == CloudNodeState.DRAINING and r["node"] not in self._busy:
                # A give-back that failed (the provider refused the termination): try again.
                self._spawn(r["node"], self.give_back(r["instance_id"], r["node"], r["reason"] or "draining"))
        decision = burst.decide(self.world(now), self.limits, self.scheduler.policy, now)
        self.last, self.last_at = decision, now
        self.scheduler.no_spot = decision.no_spot  # the next pass keeps them off spot nodes too
        self.scheduler.spot_weighed = decision.weighed  # and deadline tasks it has not weighed yet
        self.scheduler.cloud_gate = decision.gate  # and owners' tasks off cloud nodes they cannot pay
        for sd in decision.scale_down:
            if sd.node not in self._busy:
                # A paced budget never kills running work: only the old stop-everything rule forces.
                budget = sd.reason.startswith("budget") and not self.limits.pace_budget
                self._spawn(sd.node, self.scale_down(sd.node, sd.reason, force=budget))
        for sd in decision.drain:  # no new work; given back by a later pass once idle
            if sd.node not in self._busy:
                self.store.set_drain(sd.node, True, sd.reason, now)
        for rc in decision.recall:
            if not any(n in self._busy for n in rc.nodes):
                self.recall(rc)
        sizes = Counter(req.group for req in decision.launches)  # a gang of k nodes is k requests, one group
        gangs: dict[int, _Gang] = {}
        for req in decision.launches:
            name = self.new_name()
            self._busy.add(name)
            self.store.cloud_add_instance(f"launch:{name}", req.offer.provider, name, req.offer.to_dict(), req.tasks, now)
            gang = gangs.setdefault(req.group, _Gang(sizes[req.group]))
            gang.names.append(name)
            self._spawn(name, self.launch(name, req, gang))
        return decision

    # ---- reading the world -----------------------------------------------------------------------

    async def refresh_offers(self, now: float) -> None:
        refresh = now - self.offers_at >= self.cfg.offers_refresh
        offers: list[burst.Offer] = []
        for name, p in self.providers.items():
            try:
                offers += await asyncio.to_thread(p.offers, refresh)
                self.errors.pop(name, None)
            except HybridctlError as exc:
                self.errors[name] = exc.message
                offers += [o for o in self.offers if o.provider == name]  # keep the last good ones
        self.offers = offers
        if refresh:
            self.offers_at = now

    def world(self, now: float) -> burst.World:
        store = self.store
        cluster = self.scheduler.cluster(now)
        views = cluster.nodes
        activity = store.cloud_node_activity()
        cloud = []
        for r in store.cloud_instances():
            offer = replace(burst.Offer.from_dict(r["offer"]), price_hourly=r["price_hourly"])
            held, last_end = activity.get(r["node"], (0, None))
            up = r["state"] == CloudNodeState.UP
            idle_since = None
            if up and not held:
                idle_since = max(last_end or 0.0, r["ready_at"] or r["launched_at"])
            cloud.append(burst.CloudNode(r["node"], offer, r["launched_at"], up, idle_since,
                                         r["state"] == CloudNodeState.DRAINING))
        site = {v.name: v.site for v in views}
        freeing = [
            burst.Freeing(a.node, tuple(a.gpus), a.cpus, a.memory_mb, a.start + a.time_limit, a.start)
            for a in store.running_allocations()
            if a.time_limit and site.get(a.node) != "cloud"
        ]
        backoffs = store.cloud_backoffs(now)
        backoff = {p: u for p, (u, _r, n) in backoffs.items() if n <= 1}
        gang_backoff = {p: (u, n) for p, (u, _r, n) in backoffs.items() if n > 1}
        since = utc_day(burst.period_start(now, self.limits.budget_period))
        spent = store.cloud_spent_since(since)
        owners = self.limits.user_budget_usd or self.limits.group_budget_usd
        # Each task's time limit, else the estimate from its user's history (core/estimate.py), so
        # that wait-or-pay and the reclaim loss price real work, not `default_runtime_s` for all.
        pending = self.scheduler.runtimes.pending(store.pending(), now)
        wanted = self.limits.recall or (self.limits.commit_expected and self.limits.pace_budget)
        recallable, last_checkpoint, no_recall = self.cloud_tasks(cluster, now) if wanted else ([], {}, frozenset())
        # Image jobs need podman on their node: rented nodes offer what cloud.runtimes lists (and a
        # recalled task must find it on-prem too).
        cluster, both = self.scheduler.with_requirements(cluster, [*pending, *recallable])
        pending, recallable = list(both[:len(pending)]), list(both[len(pending):])
        runtime = {(t.job_id, t.task): t.runtime_s for t in pending if t.runtime_s}
        checkpoint_every, deadlines, insist = self.job_facts(pending, recallable)
        lim = self.limits
        use, lengths = 1.0, ()
        want_use = lim.limit_use_forecast or (lim.commit_expected and lim.pace_budget)
        want_lengths = lim.learn_unknown and lim.count_preemption_loss
        if want_use or want_lengths:
            got_use, got_lengths = learnt(store, now)
            use = got_use if want_use else 1.0
            lengths = got_lengths if want_lengths else ()
        return burst.World(pending, cluster, cloud, self.offers, store.pending_since(), backoff, spent, freeing,
                           runtime=runtime, checkpoint_every=checkpoint_every, deadlines=deadlines,
                           transfer_s=self.transfer_times(pending), spot_insist=insist, gang_backoff=gang_backoff,
                           cloud_features=frozenset(self.cfg.runtimes),
                           limit_use=use, run_lengths=lengths,
                           cloud_tasks=recallable, last_checkpoint=last_checkpoint, no_recall=no_recall,
                           # How long earlier attempts ran before a reclaim, recall or requeue
                           # stopped them: a task without a limit is priced at `lindy` x that.
                           ran=store.stopped_runs() if self.limits.lindy > 0 else {},
                           owner_spent=store.cloud_owner_spent_since(since) if owners else {})

    def cloud_tasks(self, cluster: ClusterView, now: float) -> tuple[
            list[PendingTask], dict[burst.TaskKey, float], frozenset[burst.TaskKey]]:
        """`World.cloud_tasks`, `World.last_checkpoint` and `World.no_recall`: the RUNNING tasks
        held on cloud nodes only, each with what is left of its time limit (else its estimate,
        `estimated`) from `now` as `runtime_s` (None = unknown), and when each last checkpointed
        where the controller's copy says (the policy recalls placement 'any' only; committed money
        reads every one). A recall is requeued as a preemption, a recovery (core/retry.py: never
        `max_restarts`): a task is recalled at most once per controller run, and only while the
        recall leaves it at most half of `recovery.max_recoveries` used, so recalls alone can never
        push a job to that cap. One store query."""
        ends: dict[burst.TaskKey, float | None] = {}
        for r in cluster.running:  # one entry per node of a task: it ends with its last rank
            key = (r.job_id, r.task)
            old = ends.get(key, r.ends_at)
            ends[key] = None if old is None or r.ends_at is None else max(old, r.ends_at)
        cap = self.settings.recovery.max_recoveries
        tasks: list[PendingTask] = []
        last: dict[burst.TaskKey, float] = {}
        rows = self.store.running_on_cloud()
        facts = self.scheduler.runtimes.facts([t.job_id for t, _ in rows])
        never: set[burst.TaskKey] = set()
        for t, recovered in rows:
            key = (t.job_id, t.task)
            if key in self.recalled or 2 * (recovered + 1) > cap:
                never.add(key)
            end = ends.get(key)
            f = facts.get(t.job_id)
            priority, _marked = self.scheduler.runtimes.marks(f, t.priority, t.preemptible)  # as the scheduler ranks it
            tasks.append(replace(t, priority=priority, runtime_s=None if end is None else max(0.0, end - now),
                                 estimated=end is not None and (f is None or f.time_limit is None)))
            at = self.scheduler.runtimes.checkpoint_at(t.job_id, t.task)
            if at is not None:
                last[key] = at
        return tasks, last, frozenset(never)

    def transfer_times(self, pending: Sequence[PendingTask]) -> dict[tuple[int, int], float]:
        """Per pending task, the seconds a fresh cloud node would spend receiving its environment
        and data (nothing when locality is off: the scheduler knows no needs then)."""
        if self.settings.locality.weight <= 0:
            return {}
        out: dict[tuple[int, int], float] = {}
        by_job: dict[int, float] = {}
        for t in pending:
            if t.job_id not in by_job:
                est = self.scheduler.transfer_estimate(t.job_id, "cloud")
                by_job[t.job_id] = est[1] if est else 0.0
            if by_job[t.job_id]:
                out[(t.job_id, t.task)] = by_job[t.job_id]
        return out

    def job_facts(self, pending: list[PendingTask], running: Sequence[PendingTask] = ()) -> tuple[
            dict[burst.TaskKey, float], dict[burst.TaskKey, float], frozenset[burst.TaskKey]]:
        """Per pending task (and per `running` one: `World.cloud_tasks`) of a job with
        `checkpoint_dir`: seconds between its checkpoints (as the checkpoint sync observed them,
        else `fleet.checkpoint_sync_interval`); per pending or running task of a job with a
        `deadline`: the deadline (a running one's keeps a recall from making it late); the pending
        tasks of jobs with `spot_insist: true`. One query per 500 jobs (specs are JSON in the store)."""
        ids = sorted({t.job_id for t in [*pending, *running]})
        facts: dict[int, tuple[bool, float | None, bool]] = {
            job_id: (bool(ckpt), float(deadline) if deadline is not None else None, bool(insist))
            for job_id, (_uid, (ckpt, deadline, insist)) in self.store.spec_fields(
                ids, ("$.checkpoint_dir", "$.deadline", "$.spot_insist"), any_set=True).items()
        }
        every: dict[burst.TaskKey, float] = {}
        deadlines: dict[burst.TaskKey, float] = {}
        fallback = self.settings.fleet.checkpoint_sync_interval
        for t in pending:
            f = facts.get(t.job_id)
            if f is None:
                continue
            key = (t.job_id, t.task)
            if f[0]:
                every[key] = self.checkpoints.interval(t.job_id, t.task) or fallback
            if f[1] is not None:
                deadlines[key] = f[1]
        for t in running:
            f = facts.get(t.job_id)
            if f is not None and f[0]:
                every[(t.job_id, t.task)] = self.checkpoints.interval(t.job_id, t.task) or fallback
            if f is not None and f[1] is not None:  # a recall must not make it late
                deadlines[(t.job_id, t.task)] = f[1]
        return every, deadlines, frozenset((t.job_id, t.task) for t in pending if facts.get(t.job_id, (0, 0, 0))[2])

    def row(self, node: str) -> dict[str, Any] | None:
        return next((r for r in self.store.cloud_instances() if r["node"] == node), None)

    def new_name(self) -> str:
        taken = {n.name for n in self.store.nodes()} | {r["node"] for r in self.store.cloud_instances(live=False)}
        while True:
            name = f"cloud-{secrets.token_hex(3)}"
            if name not in taken:
                return name

    # ---- launching -------------------------------------------------------------------------------

    async def launch(self, name: str, req: burst.LaunchRequest, gang: _Gang | None = None) -> None:
        """Rent one node for `req` and bootstrap it. One of a gang first waits for the other
        launches' answers, and goes back if any was refused (`_Gang`)."""
        gang = gang or _Gang(1)
        offer = req.offer
        provider = self.providers[offer.provider]
        placeholder = f"launch:{name}"
        spec = LaunchSpec(offer, name, {TAG_CLUSTER: self.cfg.cluster}, self.public_key, self.cfg.orphan_timeout)
        log.info("launching %s as %s for %s (%s)", offer.describe(), name,
                 ", ".join(burst.label(k) for k in req.tasks), offer.pool)
        try:
            inst = await asyncio.to_thread(provider.launch, spec)
        except HybridctlError as exc:
            gang.answer(exc.message)
            now = self.clock()
            capacity = isinstance(exc, CapacityError)
            self.store.cloud_update_instance(placeholder, now, state=CloudNodeState.FAILED, ended_at=now,
                                             reason=exc.message)
            self.backoff(offer.pool, exc.message, now, gang.k)
            (log.warning if capacity else log.error)("launch of %s refused (%s); trying another offer", offer.pool, exc.message)
            self._settled(gang)
            return
        except BaseException:
            gang.answer("the launch failed")  # its siblings must not wait for it
            raise
        gang.answer()
        now = self.clock()
        offer_row = {**offer.to_dict(), "declared_shape": inst.declared_shape}
        self.store.cloud_update_instance(placeholder, now, new_id=inst.id, state=CloudNodeState.BOOTSTRAPPING,
                                         offer=json.dumps(offer_row))
        if gang.k > 1:
            await gang.answered.wait()  # each sibling's launch call answers (or raises) in bounded time
            if gang.refused:
                gang.sink(f"was refused: {gang.refused}")
                try:
                    await self._never_joined(inst.id, name, gang.sunk)
                finally:
                    self._settled(gang)
                return
        await self.bootstrap(inst.id, name, offer, provider, now + self.cfg.bootstrap_timeout, gang)

    def _settled(self, gang: _Gang) -> None:
        """A refused member, or one given back for a refused sibling, is done: once all k are,
        the next pass runs at once (the task rents elsewhere)."""
        gang.settled += 1
        if gang.settled >= gang.k:
            self.wake.set()

    async def _resume(self, row: dict[str, Any], gang: _Gang | None = None) -> None:
        offer = burst.Offer.from_dict(row["offer"])
        provider = self.providers.get(row["provider"])
        if provider is None:
            return
        if gang is not None and gang.sunk:
            await self._never_joined(row["instance_id"], row["node"], gang.sunk)
            return
        await self.bootstrap(row["instance_id"], row["node"], offer, provider,
                             row["launched_at"] + self.cfg.bootstrap_timeout, gang)

    async def _never_joined(self, iid: str, name: str, why: str) -> None:
        """Give back an instance that never served (its bootstrap failed, or a gang sibling was
        lost), FAILED. Draining until terminated: if the provider refuses the termination, the
        next pass retries."""
        self.store.cloud_update_instance(iid, self.clock(), state=CloudNodeState.DRAINING, reason=why)
        await self.give_back(iid, name, why, failed=True)

    async def bootstrap(self, iid: str, name: str, offer: burst.Offer, provider: CloudProvider,
                        deadline: float, gang: _Gang | None = None) -> None:
        """Wait for the instance, reach it over SSH, start its agent if needed, and wait for it to
        join the fleet. On failure or timeout: terminate it, back its pool off, and sink its `gang`
        (the members that joined go back now, those still bootstrapping once they join)."""
        try:
            await asyncio.wait_for(self._join(iid, name, offer, provider), max(1.0, deadline - self.clock()))
        except (asyncio.TimeoutError, HybridctlError) as exc:
            why = exc.message if isinstance(exc, HybridctlError) else (
                f"did not join the fleet within cloud.bootstrap_timeout ({self.cfg.bootstrap_timeout:.0f}s)")
            log.error("cloud node %s (%s): bootstrap failed: %s; terminating it", name, iid, why)
            if gang is not None and gang.k > 1 and not gang.sunk:
                gang.sink(f"failed its bootstrap: {why}")
                for sibling in gang.names:
                    if sibling != name and sibling not in self._busy:  # in _busy: still bootstrapping
                        self._spawn(sibling, self.scale_down(sibling, gang.sunk, failed=True))
            self.backoff(offer.pool, f"bootstrap failed: {why}", self.clock())
            await self._never_joined(iid, name, f"bootstrap failed: {why}")
            self.wake.set()
            return
        if gang is not None and gang.sunk:
            await self.scale_down(name, gang.sunk, failed=True)  # joined after a sibling was lost

    async def _join(self, iid: str, name: str, offer: burst.Offer, provider: CloudProvider) -> None:
        known = self.settings.known_hosts_path
        while True:
            inst = await asyncio.to_thread(provider.describe, iid)
            if inst.state == InstanceState.TERMINATED:
                raise BootstrapFailed(f"instance {iid} ended before it could be reached ({inst.reason or 'no reason given'})")
            if inst.state == InstanceState.RUNNING and inst.host:
                break
            await asyncio.sleep(0.25)
        if inst.host_key:
            pin(known, inst.host, inst.port, inst.host_key)
        else:
            await pin_first_contact(known, inst.host, inst.port)
        socket = inst.agent_socket or await install_agent(inst, known, self.key_path, self.cfg.orphan_timeout)
        await self.join(inst, name, offer, socket)

    async def join(self, inst: Instance, name: str, offer: burst.Offer, socket: str) -> None:
        """Record the node (site 'cloud') and start its session; return once it is UP."""
        now = self.clock()
        gpus = tuple({"index": i, "model": offer.gpu_type or "GPU"} for i in range(offer.gpus))
        rec = NodeRecord(name, inst.host, inst.port, inst.ssh_user or None, str(self.key_path), socket, "cloud",
                         NodeState.UNREACHABLE, "bootstrapping", False, "", gpus, offer.cpus, offer.memory_mb, False)
        self.store.add_node(rec, now)
        self.store.set_node_cloud(name, offer.provider, inst.id, offer.price_hourly, inst.launched_at or now, now)
        self.store.cloud_update_instance(inst.id, now, host=inst.host, port=inst.port)
        if inst.declared_shape:
            self._declared.add(name)
        self.start_session(name)
        while self.store.node(name).link_state is not NodeState.UP:
            await asyncio.sleep(0.1)
        self.fix_shapes()
        now = self.clock()
        self.store.cloud_update_instance(inst.id, now, state=CloudNodeState.UP, ready_at=now)
        log.info("cloud node %s (%s, %s) joined the fleet", name, inst.id, offer.describe())
        self.lifecycle.changed()

    def start_session(self, name: str) -> None:
        self.fleet.start_session(name, CloudSession, self)

    def fix_shapes(self) -> None:
        """Simulated machines report the host's CPUs and memory; record the offer's (the node was
        rented for them, and the scheduler and the policy must agree on its size)."""
        for r in self.store.cloud_instances():
            if r["node"] not in self._declared or r["state"] not in (CloudNodeState.UP, CloudNodeState.BOOTSTRAPPING,
                                                                    CloudNodeState.DRAINING):
                continue
            with contextlib.suppress(HybridctlError):
                n = self.store.node(r["node"])
                o = r["offer"]
                if (n.cpus, n.memory_mb) != (float(o["cpus"]), int(o["memory_mb"])):
                    self.store.set_hardware(n.name, list(n.gpus), float(o["cpus"]), int(o["memory_mb"]), self.clock())

    def backoff(self, pool: str, reason: str, now: float, nodes: int = 1) -> None:
        """Do not ask `pool` again for `burst.backoff` seconds; after refusing a gang of k
        `nodes`, not for k nodes or more, for k times as long. Room for k nodes at once is scarcer
        than for one: a gang that walked its spot pools one by one found the first live again
        before it was through half of them, so it never reached on-demand (`Market.fitting`:
        spot is skipped once half its pools back off). A pool without room for 4 nodes may still
        have room for one, so single nodes are still asked there."""
        k = max(nodes, 1)
        self.store.cloud_set_backoff(pool, now + self.cfg.burst.backoff * k, reason, k)

    # ---- giving back -----------------------------------------------------------------------------

    async def scale_down(self, node: str, reason: str, force: bool = False, failed: bool = False) -> None:
        """Drain and terminate a cloud node. Without `force` only while it holds nothing (the
        scheduler may have just placed work there); with it (budget), its jobs are requeued.
        `failed`: it never served what it was rented for (its row ends FAILED)."""
        row = self.row(node)
        if row is None:
            return
        held = self.store.cloud_node_activity().get(node, (0, None))[0]
        if (held or self.fleet.final_syncs.on(node)) and not force:
            return  # busy, or a stopped job's final checkpoint is still being pulled from it
        self.store.set_drain(node, True, reason, self.clock())
        self.store.cloud_update_instance(row["instance_id"], self.clock(), state=CloudNodeState.DRAINING, reason=reason)
        log.info("cloud node %s: giving back: %s", node, reason)
        if held:
            await self.evict(node, reason, JobStatus.PREEMPTED)
        await self.give_back(row["instance_id"], node, reason, failed=failed)

    async def evict(self, node: str, reason: str, status: JobStatus, grace: float | None = None,
                    notice: bool = False) -> None:
        """Stop every job on `node` and requeue it. With a `notice` (a reclaim to come) each job goes
        PREEMPTED, gets SIGTERM and `cloud.preemption_grace`, and is requeued once its processes are
        gone and the fleet has pulled its final checkpoint and logs (`Lifecycle.release`). Without
        one it is requeued at once, keeping what its logs say so far and its last periodic sync."""
        session = self.fleet.sessions.get(node)
        link = session.link if session is not None else None
        for a in self.store.active_ranks(node):
            key = job_key(a.job_id, a.task, a.attempt, a.rank)
            if notice:
                self.lifecycle.preempt(a.job_id, a.task, reason)
            else:
                if link is not None and isinstance(session, NodeSession):
                    with contextlib.suppress(HybridctlError, TransferError, OSError):
                        await session.pull_logs(key)
                self.lifecycle.requeue_or_fail(a.job_id, a.task, reason, status=status)
            if link is not None:
                with contextlib.suppress(HybridctlError):
                    await link.call("cancel", key=key, grace=self.cfg.preemption_grace if grace is None else grace)
        self.lifecycle.changed()

    def recall(self, rc: burst.Recall) -> None:
        """Bring a cloud task back on-prem (`BurstDecision.recall`), as a reclaim notice would for
        it alone: PREEMPTED now with the policy's reason (`show` prints it), SIGTERM and
        `cloud.preemption_grace` on each of its nodes; once its processes are gone and its final
        checkpoint pull has begun it is requeued as a recovery, never using `max_restarts`
        (`Lifecycle.release`), the scheduler places it on-prem (placement 'any' tries on-prem
        first), and its idle cloud nodes go back by the usual `idle_timeout` path."""
        keys: dict[str, list[str]] = {}
        for node in rc.nodes:
            for a in self.store.active_ranks(node):
                if (a.job_id, a.task) == (rc.job_id, rc.task):
                    keys.setdefault(node, []).append(job_key(a.job_id, a.task, a.attempt, a.rank))
        if not keys:
            return  # ended (or stopped) since the world was read
        log.info("job %s: %s", task_label(rc.job_id, rc.task), rc.reason)
        self.recalled.add((rc.job_id, rc.task))
        self.lifecycle.preempt(rc.job_id, rc.task, rc.reason)
        for node, ranks in keys.items():
            self._spawn(node, self._stop_ranks(node, ranks))
        self.lifecycle.changed()

    async def _stop_ranks(self, node: str, keys: Sequence[str]) -> None:
        session = self.fleet.sessions.get(node)
        link = session.link if session is not None else None
        if link is None:
            return  # unreachable: the node is lost in the end, and the task requeued then
        for key in keys:
            with contextlib.suppress(HybridctlError):
                await link.call("cancel", key=key, grace=self.cfg.preemption_grace)

    async def give_back(self, iid: str, node: str, reason: str, failed: bool = False) -> None:
        """Terminate the instance, settle its cost, and forget the node."""
        row = next((r for r in self.store.cloud_instances() if r["instance_id"] == iid), None)
        provider = self.providers.get(row["provider"]) if row else None
        if provider is not None and not iid.startswith("launch:"):
            await asyncio.to_thread(provider.terminate, iid)  # idempotent; an error leaves the row to retry
            # A tick may have billed the node while the provider answered: bill from where it left.
            row = next((r for r in self.store.cloud_instances() if r["instance_id"] == iid), row)
        now = self.clock()
        if row is not None:
            self.accrue_row(row, now)
        self.store.cloud_update_instance(iid, now, state=CloudNodeState.FAILED if failed else CloudNodeState.TERMINATED,
                                         ended_at=now,
                                         reason=reason)
        self.fleet.stop_session(node)
        with contextlib.suppress(HybridctlError):
            if self.store.cloud_node_activity().get(node, (0, None))[0]:
                self.lifecycle.node_lost(node, reason)
            self.store.remove_node(node)
        self._declared.discard(node)
        log.info("cloud node %s (%s) terminated: %s", node, iid, reason)
        self.lifecycle.changed()

    # ---- what the providers say ------------------------------------------------------------------

    async def sync_instances(self, now: float) -> None:
        """Instances gone under us (reclaimed, terminated outside hybridctl) lose their node; tagged
        instances with no record are leaks, terminated once older than `cloud.leak_grace`."""
        rows = self.store.cloud_instances()
        known = self.store.cloud_instance_ids()
        held = {r["instance_id"] for r in rows}
        launching = {r["node"] for r in rows if r["state"] == CloudNodeState.LAUNCHING}
        for name, p in self.providers.items():
            try:
                listed = await asyncio.to_thread(p.list, {TAG_CLUSTER: self.cfg.cluster})
            except HybridctlError as exc:
                self.errors[name] = exc.message
                continue
            ids = {i.id for i in listed}
            for r in rows:
                if r["provider"] != name or r["state"] not in (CloudNodeState.UP, CloudNodeState.DRAINING) or r["instance_id"] in ids:
                    continue
                if r["node"] in self._busy:
                    continue
                inst = await asyncio.to_thread(p.describe, r["instance_id"])
                if inst.alive:
                    continue
                why = inst.reason or "terminated outside hybridctl"
                log.warning("cloud node %s (%s) is gone: %s", r["node"], r["instance_id"], why)
                status = JobStatus.PREEMPTED if says_reclaimed(why) else JobStatus.NODE_LOST
                await self.evict(r["node"], f"cloud node {r['node']} is gone: {why}", status, grace=0)
                await self.give_back(r["instance_id"], r["node"], f"gone: {why}")
            for inst in listed:
                if inst.id in held or inst.name in launching or inst.name in self._busy:
                    continue
                age = now - inst.launched_at if inst.launched_at else float("inf")
                if inst.id in known:
                    log.warning("leak: %s instance %s (%s) still runs after hybridctl gave it back; terminating it"
                                " again", name, inst.id, inst.name)
                elif age < self.cfg.leak_grace:
                    continue
                else:
                    log.warning("leak: %s instance %s (%s, tagged %s=%s, %s old) has no record here; terminating it",
                                name, inst.id, inst.name or "unnamed", TAG_CLUSTER, self.cfg.cluster, burst.fmt_duration(age))
                await asyncio.to_thread(p.terminate, inst.id)
                self.leaks.append({"provider": name, "instance_id": inst.id, "name": inst.name, "at": now})
                del self.leaks[:-20]

    async def handle_notices(self, now: float) -> None:
        by_provider: dict[str, dict[str, dict[str, Any]]] = {}
        for r in self.store.cloud_instances():
            if r["state"] == CloudNodeState.UP and r["node"] not in self._busy:
                by_provider.setdefault(r["provider"], {})[r["instance_id"]] = r
        for name, rows in by_provider.items():
            p = self.providers.get(name)
            if p is None:
                continue
            try:
                notices = await asyncio.to_thread(p.preemption_notices, sorted(rows))
            except HybridctlError as exc:
                self.errors[name] = exc.message
                continue
            for n in notices:
                row = rows.get(n.instance_id)
                if row is not None:
                    self._spawn(row["node"], self.preempt(row, n))

    async def preempt(self, row: dict[str, Any], notice: Notice) -> None:
        """A reclaim is coming: stop placing there, requeue its jobs as PREEMPTED (they get SIGTERM
        and `cloud.preemption_grace`), then give the node back once they are gone and their final
        checkpoints synced (their allocations closed), or at the reclaim, whichever comes first."""
        node = row["node"]
        at = time.strftime("%H:%M:%S", time.localtime(notice.at))
        reason = f"{notice.reason} of {node} ({row['provider']}) at {at}"
        log.warning("cloud node %s: %s notice; requeueing its jobs", node, notice.reason)
        self.store.set_drain(node, True, reason, self.clock())
        self.store.cloud_update_instance(row["instance_id"], self.clock(), state=CloudNodeState.DRAINING, reason=reason)
        await self.evict(node, reason, JobStatus.PREEMPTED, notice=True)
        while self.clock() < notice.at and (self.store.cloud_node_activity().get(node, (0, None))[0]
                                            or self.fleet.final_syncs.on(node)):  # released before its final pull
            await asyncio.sleep(min(0.2, max(0.0, notice.at - self.clock())))
        await self.give_back(row["instance_id"], node, reason)

    # ---- cost ------------------------------------------------------------------------------------

    def accrue(self, now: float) -> None:
        prices = {o.pool: o.price_hourly for o in self.offers}
        for r in self.store.cloud_instances():
            if r["instance_id"].startswith("launch:"):
                continue
            pool = burst.Offer.from_dict(r["offer"]).pool
            if pool in prices and prices[pool] != r["price_hourly"]:
                self.store.cloud_update_instance(r["instance_id"], now, price_hourly=prices[pool])
                r["price_hourly"] = prices[pool]
            self.accrue_row(r, now)

    def accrue_row(self, r: dict[str, Any], until: float) -> None:
        start = r["billed_until"]
        if until <= start:
            return
        o = r["offer"]
        held = [costs.Held(**a._asdict()) for a in self.store.cloud_allocations(r["node"], start)]
        charges = costs.split(r["price_hourly"], start, until, int(o.get("gpus") or 0), float(o.get("cpus") or 1), held)
        self.store.cloud_accrue(r["instance_id"], r["node"], [(c.job_id, c.task, c.user, c.group, c.usd, c.hours) for c in charges],
                                until, utc_day(until), self.clock())
        r["billed_until"] = until
