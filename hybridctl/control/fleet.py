"""The fleet: one persistent link per node, kept alive with capped exponential backoff.

Each node session polls its agent's telemetry every `poll_interval`, and hands the agent's job
list to the reconciler whenever either side may have changed: the job watcher (a long poll on a
second channel) saw a new job-list version, or the database's active ranks for the node differ
from the last converge (placements, cancels, requeues). Dispatch, adoption after a reconnect,
and recording results are one code path. A monitor turns silence into UNREACHABLE (keep jobs)
and, much later, LOST (requeue them).

A node is believed only about itself, and only after `core.wire` has checked what it sent: a
malformed field is logged once per session (naming the node) and ignored, and the rest of the
report still counts. Sessions run under `control.supervisor`, so a bug restarts one, never ends it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from typing import Any, Awaitable, Callable

from hybridctl.aio import wait_event
from hybridctl.config import Settings
from hybridctl.control import mounts, supervisor, wheels
from hybridctl.control.checkpoints import LocalFiles, SftpFiles, TransferMismatch, sync_from
from hybridctl.control.lifecycle import Lifecycle
from hybridctl.control.restore import FinalSyncs, restore_to
from hybridctl.core import wire
from hybridctl.core.errors import NotFound
from hybridctl.core.model import JobStatus, NodeState
from hybridctl.core.reconcile import (
    Action,
    ActiveRank,
    Finished,
    Forget,
    Launch,
    Started,
    Stop,
    Vanished,
    parse_key,
    reconcile,
)
from hybridctl.ssh.link import AgentLink, AgentRefused, HostKeyRefused, NodeUnreachable, Target, connect
from hybridctl.ssh.sftp import is_ssh_error, start_sftp
from hybridctl.store.sqlite import Store

log = logging.getLogger("hybridctl.fleet")

_REPORTED_LIMIT = 1000
"""Distinct problems remembered per node session (each is logged once); past this, problems are
no longer logged one by one."""


class NodeSession:
    """The controller's side of one node: its link, latest telemetry and liveness."""

    def __init__(self, fleet: Fleet, name: str) -> None:
        self.fleet = fleet
        self.name = name
        self.kick = asyncio.Event()
        self.link: AgentLink | None = None
        self.hello: dict[str, Any] | None = None
        self.latest: dict[str, Any] | None = None
        self.seq: int | None = None
        self.last_ok = fleet.monotonic()
        self.error = "not contacted yet"
        self.task: asyncio.Task[None] | None = None
        self._files: tuple[AgentLink, Any] | None = None
        self._xfer: AgentLink | None = None
        """The agent channel that checkpoint and file transfers use (see `files`)."""
        self._last_sync = fleet.monotonic()
        self._syncing: asyncio.Task[None] | None = None
        """The periodic checkpoint pulls in flight: their own task, so that a large checkpoint
        never holds up this node's telemetry and job reconciliation."""
        self._sync_lock = asyncio.Lock()
        """One checkpoint pull at a time per node (the final one waits for a periodic one)."""
        self.watch_version: str | None = None
        self.cache: Any = None
        """The node's last `cache_list` (core/locality.NodeCache): the controller's cache index."""
        self.cache_at = float("-inf")
        """The agent's job-list version as the watcher last saw it; None while no watch runs."""
        self._settled: tuple[Any, list[ActiveRank]] | None = None
        """(job-list version, active ranks) of the last converge that had nothing to do."""
        self._reported: set[str] = set()
        """Problems with this node's reports already logged (each is logged once)."""

    def start(self) -> None:
        """Run the session as a supervised task (restarted with back-off if it ever raises)."""
        self.task = supervisor.start(f"node:{self.name}", self.run)

    def once(self, message: str) -> None:
        """Log a warning about this node the first time it is seen."""
        if message in self._reported:
            return
        if len(self._reported) >= _REPORTED_LIMIT:
            if len(self._reported) == _REPORTED_LIMIT:
                self._reported.add("")
                log.warning("node %s: more problems than %d; no longer logged one by one", self.name,
                            _REPORTED_LIMIT)
            return
        self._reported.add(message)
        log.warning("node %s: %s", self.name, message)

    def believe(self, problems: list[wire.Problem]) -> None:
        for p in problems:
            self.once(f"malformed {p}; ignored")

    async def run(self) -> None:
        backoff = 0.25
        while True:
            try:
                async with self.fleet.connect_slots:
                    self.link = await self.fleet.connect(self.fleet.target(self.name))
                problems: list[wire.Problem] = []
                hello = wire.hello(await self.link.call("hello"), problems)
                self.believe(problems)
                self.hello = hello.to_dict()
                self.fleet.on_hello(self, hello)
                backoff = 0.25
                self._settled = None
                watcher = asyncio.create_task(self.watch(await self.link.second_channel()), name=f"watch:{self.name}")
                try:
                    while True:
                        await self.poll()
                        await mounts.refresh_cache(self)
                        await wait_event(self.kick, self.fleet.interval)
                        self.kick.clear()
                        if watcher.done():
                            watcher.result()  # re-raises why the watch channel broke
                finally:
                    watcher.cancel()
                    if self._syncing is not None:
                        self._syncing.cancel()
            except HostKeyRefused as exc:
                self.error = exc.message
                log.error("%s", exc.message)
                self.fleet.on_silence(self, exc.message, force=True)
                backoff = 30.0
            except (NodeUnreachable, AgentRefused) as exc:  # AgentRefused: an op the session needs was refused
                self.error = exc.message
                log.warning("%s", exc.message)
            finally:
                self._files = None
                if self.link is not None:
                    await self.link.close()
                    self.link = None
            await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
            backoff = min(backoff * 2, 15.0)

    async def watch(self, channel: AgentLink) -> None:
        """Long-poll the agent's job list on a second channel; kick the session the moment a job
        changes state, so a job's end is recorded (and its GPUs reused) within milliseconds."""
        version = None
        try:
            while True:
                wait = min(60.0, max(1.0, self.fleet.interval * 4))  # the agent accepts 0-60 s
                res = await channel.call("jobs", timeout=wait + 30, wait=wait,
                                         **({} if version is None else {"since": version}))
                raw = res.get("version") if isinstance(res, dict) else res
                new = wire.version(raw)
                if new is None:  # without a version the agent would answer at once: no busy loop
                    self.once(f"malformed jobs answer: version = {wire.shown(raw)}; ignored")
                    self.watch_version = None  # every poll lists the jobs meanwhile
                    await asyncio.sleep(self.fleet.interval)
                elif version is not None and new != version:
                    self.kick.set()
                version = self.watch_version = new
        finally:
            self.watch_version = None
            await channel.close()

    async def poll(self) -> None:
        link = self.link
        assert link is not None
        problems: list[wire.Problem] = []
        sample = wire.sample_answer(await link.call("sample", **({} if self.seq is None else {"since": self.seq})),
                                    problems)
        self.believe(problems)
        if sample.latest is not None:
            self.latest = sample.latest
            self.seq = sample.seq if sample.seq is not None else self.seq
            self.fleet.on_sample(self, sample.latest)
        self.last_ok = self.fleet.monotonic()
        self.error = ""
        self.fleet.on_alive(self)
        # While the watcher runs, an unchanged job-list version and unchanged active ranks mean
        # the last converge still holds: skip the listing. Without a watcher, every poll lists.
        ranks = self.fleet.lifecycle.active_ranks(self.name)
        if self.watch_version is None or (self.watch_version, ranks) != self._settled:
            problems = []
            listing = wire.job_records(await link.call("jobs"), problems)
            self.believe(problems)
            if listing is None:  # unusable as a whole: never read it as "no jobs"
                self._settled = None
            else:
                acted = await self.converge(listing)
                self._settled = None if acted else (listing.version, ranks)
        due = self.fleet.monotonic() - self._last_sync >= self.fleet.settings.fleet.checkpoint_sync_interval
        if due and (self._syncing is None or self._syncing.done()):
            self._last_sync = self.fleet.monotonic()
            keys = [r.key for r in self.fleet.lifecycle.active_ranks(self.name)
                    if r.rank == 0 and r.state is JobStatus.RUNNING]
            if keys:
                self._syncing = asyncio.create_task(self._sync_all(keys), name=f"sync:{self.name}")

    async def _sync_all(self, keys: list[str]) -> None:
        try:
            for key in keys:
                await self.sync_checkpoint(key)
        except Exception:  # a bug, not a transfer error (those are logged in sync_checkpoint)
            log.exception("checkpoint sync on %s failed", self.name)

    async def files(self) -> tuple[AgentLink, Any]:
        """(agent channel, file access) for moving a job's files: a channel of its own, so a staging
        copy on the agent never queues telemetry or launches behind it, and SFTP on the node's
        connection (or the local filesystem), which only ever touches the agent's staging area."""
        if self._files is None:
            link = self.link
            assert link is not None
            if self._xfer is not None:  # the previous connection's channel
                await self._xfer.close()
                self._xfer = None
            sftp = await start_sftp(link, self.name)
            files: Any = LocalFiles() if sftp is None else SftpFiles(sftp)
            self._xfer = await link.second_channel()
            self._files = (self._xfer, files)
        return self._files

    async def sync_checkpoint(self, key: str) -> None:
        """Pull rank 0's checkpoint directory (changed files only) into the controller's store, as
        the agent staged it (checkpoints.sync_from)."""
        parsed = parse_key(key)
        if parsed is None or parsed[3] != 0 or self.link is None:
            return
        try:
            async with self._sync_lock:
                agent, files = await self.files()
                copied = await sync_from(agent, files, key, self.fleet.lifecycle.checkpoint_path(key), self.name)
        except (OSError, NodeUnreachable, AgentRefused, TransferMismatch) as exc:
            log.warning("checkpoint sync of %s from %s failed: %s", key, self.name, exc)
            return
        except Exception as exc:
            if is_ssh_error(exc):
                log.warning("checkpoint sync of %s from %s failed: %s", key, self.name, exc)
                return
            raise
        if copied:
            log.info("checkpoint of %s synced: %d bytes", key.split(".", 1)[0], copied)

    async def restore_checkpoint(self, key: str, owner: dict[str, Any]) -> str | None:
        """Put the controller's latest copy of a job's checkpoint on this node before it starts,
        written there as the job's `owner` ({uid, gid, user}); return why it could not be, or None."""
        local = self.fleet.lifecycle.checkpoint_path(key)
        final = self.fleet.final_syncs.pending(key)  # the old node's final pull: overlapped (FinalSyncs)
        if (not local.is_dir() and final is None) or self.link is None:
            return None
        agent, files = await self.files()
        try:
            sent, kept, nbytes = await restore_to(agent, files, key, local, self.name, owner, final=final)
        except (AgentRefused, TransferMismatch) as exc:
            return f"checkpoint restore onto {self.name} failed: {exc}"
        if sent:
            log.info("restored %d bytes of checkpoint for %s onto %s", nbytes, key, self.name)
        if kept:
            log.info("checkpoint for %s: %d files already on %s, not sent again", key, len(kept), self.name)
        return None

    async def prepare_launch(self, rank: ActiveRank) -> dict[str, Any] | None:
        """Put on this node what a rank needs before it starts (its latest checkpoint) and return
        its launch payload; None when preparing failed the job. Cloud sessions add uploads."""
        payload = self.fleet.lifecycle.launch_payload(rank, self.name)
        why = await self.restore_checkpoint(rank.key, payload)
        if why is None:  # the job's data into this node's cache (control/mounts.py)
            why = await mounts.prepare(self, rank, payload)
        if why is None:  # an offline node: the wheels its environment needs (control/wheels.py)
            why = await wheels.prepare(self, rank, payload)
        if why is not None:
            log.error("job %s: %s", rank.key, why)
            self.fleet.lifecycle.finish(rank.job_id, rank.task, None, why)
            return None
        return payload

    async def converge(self, listing: wire.Listing) -> bool:
        """Act on the differences between the database and the agent's checked `listing`; return
        whether anything was done. A task turns RUNNING once the agent reports its processes
        started (a pid): `launch` answers before that, and the watcher reports the start. Only
        ranks whose open allocation is on this node are finished, released or copied from it."""
        ctl = self.fleet.lifecycle
        records = listing.records
        not_started = {parsed[:2] for r in records if r.running and r.pid is None
                       and (parsed := parse_key(r.key)) is not None}
        no_checkpoint = {r.key for r in records if r.has_checkpoint is False}  # None: older agent
        changed = False
        actions = [a for a in reconcile(ctl.active_ranks(self.name), [r.agent_job() for r in records],
                                        ctl.held_keys(self.name), listing.unreadable)
                   if not (isinstance(a, Started) and (a.job_id, a.task) in not_started)]
        for action in actions:
            try:
                changed = await self._act(action, no_checkpoint) or changed
            except AgentRefused as exc:  # e.g. forget of a key the agent listed but does not know
                self.once(f"{type(action).__name__.lower()} failed: {exc.message}")
        if changed:
            ctl.changed()
        return bool(actions)

    async def _act(self, action: Action, no_checkpoint: set[str]) -> bool:
        """Carry out one reconcile action on this node; return whether the database changed."""
        ctl = self.fleet.lifecycle
        link = self.link
        assert link is not None
        if isinstance(action, Launch):
            payload = await self.prepare_launch(action.rank)
            if payload is None:  # the job failed while being prepared (the reason is recorded)
                return True
            try:
                answer = await link.call("launch", job=payload)
            except AgentRefused as exc:
                ctl.finish(action.rank.job_id, action.rank.task, None, f"launch refused by {self.name}: {exc}")
                return True
            problems: list[wire.Problem] = []
            rec = wire.launch_answer(answer, action.rank.key, problems)
            self.believe(problems)
            if rec is not None and rec.running:
                if rec.pid is not None:
                    ctl.mark_running(action.rank.job_id, action.rank.task)
            else:
                self.kick.set()  # already exited (or failed to launch): the next listing records it
        elif isinstance(action, Started):
            ctl.mark_running(action.job_id, action.task)
        elif isinstance(action, Finished):
            await self._keep_output(action.key, action.key not in no_checkpoint)
            ctl.rank_finished(action.key, action.exit_code, action.reason, action.status, node=self.name)
            await link.call("forget", key=action.key)
            return True
        elif isinstance(action, Vanished):
            ctl.requeue_or_fail(action.job_id, action.task, f"the agent on {self.name} has no record of it")
            return True
        elif isinstance(action, Stop):
            self._not_ours(action.key, "running")
            await link.call("cancel", key=action.key, grace=self._stop_grace(action.key))
        elif isinstance(action, Forget):
            if action.held and self._preempted_rank0(action.key, no_checkpoint):
                # Released first, so the job is placed while its final checkpoint still arrives;
                # the next node's restore waits for this pull before the changed chunks follow.
                self.fleet.final_syncs.begin(action.key, self.name)
                try:
                    ctl.release(action.key, node=self.name)
                    await self._keep_output(action.key, True)
                    await link.call("forget", key=action.key)
                finally:
                    self.fleet.final_syncs.end(action.key)
                return True
            if action.held:
                # A stopped rank of this node (cancelled, preempted, a failed multi-node job):
                # keep its output (e.g. a preempted job's final checkpoint), then free its GPUs.
                await self._keep_output(action.key, action.key not in no_checkpoint)
                await link.call("forget", key=action.key)
                ctl.release(action.key, node=self.name)
                return True
            if not self._not_ours(action.key, "ended") and parse_key(action.key) is not None \
                    and not ctl.log_path(action.key, "stdout").exists():
                await self._keep_output(action.key, False)  # a straggler of this node: its logs, never a checkpoint
            await link.call("forget", key=action.key)
        return False

    def _stop_grace(self, key: str) -> float:
        """The grace of a converge's stop: `fleet.poll_interval` x 10, but at least the preemption
        grace of this node's site for a task PREEMPTED here, so it can write its final checkpoint:
        `cloud.preemption_grace` on a cloud node (a spot notice, a recall, which the autoscaler
        also stops with that grace), `scheduler.preempt_grace` on-prem (a priority preemption,
        which only this stop ends). The first stop's grace is the one the job gets (the supervisor
        acts on one), so the converge, which may reach a cloud node before the autoscaler, must
        not send a shorter one."""
        settings = self.fleet.settings
        grace = settings.fleet.poll_interval * 10
        parsed = parse_key(key)
        if parsed is None:
            return grace
        rows = self.fleet.store.task_states(parsed[0], parsed[1])
        if rows and rows[0].state is JobStatus.PREEMPTED and rows[0].attempt == parsed[2]:
            with contextlib.suppress(NotFound):
                grace = settings.preemption_grace(self.fleet.store.node(self.name).site == "cloud")
        return grace

    def _preempted_rank0(self, key: str, no_checkpoint: set[str]) -> bool:
        """Whether `key` is rank 0 of a preempted attempt that may hold a checkpoint."""
        parsed = parse_key(key)
        if parsed is None or parsed[3] != 0 or key in no_checkpoint:
            return False
        rows = self.fleet.store.task_states(parsed[0], parsed[1])
        return bool(rows) and rows[0].state is JobStatus.PREEMPTED and rows[0].attempt == parsed[2]

    def _not_ours(self, key: str, what: str) -> bool:
        """Whether `key` is a rank placed on another node (logged once: a confused or lying agent)."""
        home = self.fleet.lifecycle.rank_home(key)
        if home is None or home == self.name:
            return False
        self.once(f"reported job {key} as {what}, but that rank was placed on {home}: not believed "
                  f"(this node is only told to stop or forget it)")
        return True

    async def _keep_output(self, key: str, checkpoint: bool) -> None:
        """Copy a rank's logs (and, with `checkpoint`, its final checkpoint) before it is forgotten;
        an agent refusing is logged, and the rank's result is recorded anyway."""
        try:
            if checkpoint:
                await self.sync_checkpoint(key)
            await self.pull_logs(key)
        except AgentRefused as exc:
            self.once(f"output of {key} not copied: {exc.message}")

    async def pull_logs(self, key: str) -> None:
        """Copy a finished job's logs to the controller, so `hybridctl logs` works after the node
        forgets the job, goes away, or (cloud) is terminated. Capped per stream; an answer that is
        not a sane chunk ends the copy there."""
        link = self.link
        assert link is not None
        cap = self.fleet.settings.fleet.log_pull_cap_mb * 1024 * 1024
        step = 1 << 20
        for stream in ("stdout", "stderr"):
            dest = self.fleet.lifecycle.log_path(key, stream)
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            offset = 0
            # Into a side file, renamed when whole: `hybridctl logs` reads a local copy as soon as
            # it exists, and must never see one half copied (or empty).
            with open(part, "w", encoding="utf-8") as f:
                while offset < cap:
                    res = await link.call("logs", key=key, stream=stream, offset=offset, max_bytes=step)
                    data = res.get("data") if isinstance(res, dict) else None
                    nxt = wire.integer(res.get("offset"), offset, offset + step) if isinstance(res, dict) else None
                    if not isinstance(data, str) or len(data) > step or nxt is None:
                        self.once(f"malformed logs answer for {key} ({stream}) at offset {offset}; copy ends there")
                        break
                    f.write(data)
                    if nxt == offset:
                        break
                    offset = nxt
                if offset >= cap:
                    f.write(f"\n[hybridctl: log truncated at {cap >> 20} MiB; the rest is on the node]\n")
            os.replace(part, dest)


Connect = Callable[[Target], Awaitable[AgentLink]]
"""Opens one node's agent link (`ssh.link.connect`; tests pass a fake)."""

class Fleet:
    """All node sessions of one controller. Every job state change a node's reports cause goes
    through `lifecycle`; `monotonic` (liveness) and `connect` are injectable for tests."""

    def __init__(self, store: Store, settings: Settings, lifecycle: Lifecycle, *, connect: Connect = connect,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.settings = settings
        self.lifecycle = lifecycle
        self.connect = connect
        self.monotonic = monotonic
        cfg = settings.fleet
        self.interval = cfg.poll_interval
        self.connect_slots = asyncio.Semaphore(cfg.connect_concurrency)
        self.sessions: dict[str, NodeSession] = {}
        """Read it freely; change it only through `sync`, `start_session` and `stop_session`."""
        self.final_syncs = FinalSyncs()
        """Preempted jobs' final checkpoint pulls in flight (their next node's restore waits on them)."""

    def target(self, name: str) -> Target:
        n = self.store.node(name)
        cfg = self.settings.fleet
        return Target(
            name=n.name, host=n.host, port=n.port, user=n.ssh_user, identity=n.identity, agent_socket=n.agent_socket,
            known_hosts=str(self.settings.known_hosts_path), bridge=cfg.bridge,
            agent_command=cfg.agent_command,
        )

    def sync(self) -> None:
        """Start sessions for new real nodes, stop those of removed ones."""
        wanted = {n.name for n in self.store.nodes() if not n.simulated}
        for name in wanted - self.sessions.keys():
            self.start_session(name)
        for name in self.sessions.keys() - wanted:
            self.stop_session(name)

    def start_session(self, name: str, kind: type[NodeSession] = NodeSession, *extra: Any) -> NodeSession:
        """Run `name`'s session, a `kind(self, name, *extra)` (a `NodeSession`, or the autoscaler's
        `CloudSession`); one already running of that exact kind is kept, one of another kind (a
        plain session of what turned out to be a cloud node) is replaced."""
        old = self.sessions.get(name)
        if old is not None and type(old) is kind:
            return old
        self.stop_session(name)
        s = kind(self, name, *extra)
        s.start()
        self.sessions[name] = s
        return s

    def stop_session(self, name: str) -> None:
        """Stop `name`'s session, if it has one (its task is cancelled; its link closes)."""
        s = self.sessions.pop(name, None)
        if s is not None and s.task is not None:
            s.task.cancel()

    def stop_all(self) -> None:
        for name in list(self.sessions):
            self.stop_session(name)

    def kick(self, name: str) -> None:
        s = self.sessions.get(name)
        if s is not None:
            s.kick.set()

    def link_state(self, name: str) -> tuple[str, Any] | None:
        """(last link error, the hello's `containment`), or None when `name` has no session."""
        s = self.sessions.get(name)
        return None if s is None else (s.error, (s.hello or {}).get("containment"))

    def caches(self) -> dict[str, Any]:
        return {n: s.cache for n, s in self.sessions.items() if s.cache is not None}

    def runtimes(self) -> dict[str, dict[str, str]]:
        return {n: dict(s.hello.get("runtimes") or {}) for n, s in self.sessions.items() if s.hello is not None}

    async def call_agent(self, name: str, op: str, **fields: Any) -> dict[str, Any]:
        """One request to the agent of `name` over its session's link."""
        s = self.sessions.get(name)
        link = s.link if s is not None else None
        if link is None:
            raise NodeUnreachable(f"node {name} is not connected right now; its agent cannot answer {op!r}")
        return await link.call(op, **fields)

    async def monitor(self) -> None:
        """Turn silence into UNREACHABLE, then LOST. Runs forever."""
        while True:
            await asyncio.sleep(min(1.0, self.interval))
            for s in list(self.sessions.values()):
                self.on_silence(s, s.error or "no answer")

    def on_silence(self, s: NodeSession, why: str, force: bool = False) -> None:
        cfg = self.settings.fleet
        silent = self.monotonic() - s.last_ok
        n = self.store.node(s.name)
        if silent >= cfg.lost_after and n.link_state is not NodeState.LOST:
            reason = f"silent for {silent:.0f}s: {why}"
            log.error("node %s LOST (%s); requeueing its jobs", s.name, reason)
            self.lifecycle.node_lost(s.name, reason)
        elif (silent >= cfg.unreachable_after or force) and n.link_state is NodeState.UP:
            self.lifecycle.set_link(s.name, NodeState.UNREACHABLE, why)

    def on_alive(self, s: NodeSession) -> None:
        n = self.store.node(s.name)
        if n.link_state is not NodeState.UP:
            log.info("node %s is back", s.name)
            self.lifecycle.set_link(s.name, NodeState.UP, "")
        else:
            self.lifecycle.node_seen(s.name, n.last_seen)

    def on_hello(self, s: NodeSession, hello: wire.Hello) -> None:
        """Record the node's hardware as its agent reports it; what it left out or sent malformed
        stays as the database has it."""
        old = self.store.node(s.name)
        gpus = [dict(g) for g in old.gpus] if hello.gpus is None else [
            {"index": g.index, "model": g.model, "memory_mb": g.memory_mb} for g in hello.gpus]
        self.lifecycle.node_hardware(s.name, gpus, old.cpus if hello.cpus is None else hello.cpus,
                                      old.memory_mb if hello.memory_mb is None else hello.memory_mb)

    def on_sample(self, s: NodeSession, sample: dict[str, Any]) -> None:
        """Fold GPU health and foreign processes into the node's GPU list (written only on change)."""
        busy_foreign = self.settings.fleet.foreign_gpu_busy
        health = {}
        for g in sample["gpus"]:  # checked by core.wire: index an int, healthy a bool or None
            if g["healthy"] is None:
                continue  # unknown this time: keep what is known
            foreign = busy_foreign and any(p["job"] is None for p in g["processes"])
            health[g["index"]] = (g["healthy"], g["health_reason"] or "", foreign)
        self.lifecycle.node_gpu_health(s.name, health)

    def telemetry(self) -> dict[str, dict[str, Any]]:
        """Latest sample per node (for `nodes` and the TUI)."""
        return {name: s.latest for name, s in self.sessions.items() if s.latest is not None}
