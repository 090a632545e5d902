"""`hybridctl server`: the controller daemon. One asyncio loop owns the store, serves the local API
on a Unix socket (identity from SO_PEERCRED), and runs scheduling passes on change and on a tick."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import time
from typing import Any

from hybridctl.aio import wait_event
from hybridctl.config import Settings
from hybridctl.control import outputs, supervisor
from hybridctl.control.fleet import Fleet
from hybridctl.control.identity import Caller, peer_credentials
from hybridctl.control.identity import caller as make_caller
from hybridctl.control.lifecycle import Lifecycle
from hybridctl.control.limits import BadRequest, Connections, LogBudget, Refused, decode_request
from hybridctl.control.listener import claim
from hybridctl.control.metrics import Observer
from hybridctl.control.nodes import config_record
from hybridctl.control.scheduler import Scheduler
from hybridctl.control.service import Controller
from hybridctl.core.errors import HybridctlError
from hybridctl.store.sqlite import Store

log = logging.getLogger("hybridctl.controller")

READ_CHUNK = 65536
"""Bytes read from a client at a time; a connection buffers at most limits.max_request_bytes plus this."""


class AlreadyRunning(HybridctlError):
    """Another controller already owns this state directory."""


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home_path
        self.socket_path = settings.socket_path
        self.stop_event = asyncio.Event()
        self.wake = asyncio.Event()
        self.store: Store | None = None
        self.controller: Controller | None = None
        self.scheduler: Scheduler | None = None
        self._lock_fd: int | None = None
        self.fleet: Fleet | None = None
        self._clients: dict[asyncio.Task[None], bool] = {}
        """Each connection's task, and whether it is answering a request now (see `_hang_up`)."""
        limits = settings.limits
        self.connections = Connections(limits)
        self.bad_requests = LogBudget(limits.bad_request_log_per_minute)
        """Log lines for malformed requests, per uid (any user can send them by the thousand)."""
        self.refusals = LogBudget(limits.bad_request_log_per_minute)
        self.internal_errors = LogBudget(limits.bad_request_log_per_minute)

    def _private_home(self) -> None:
        """Everything the controller writes from here on is its user's alone (umask 077): the
        database and its WAL, log, checkpoint and output copies hold every user's secrets, and
        other users reach them only through the API's permission checks. A home left open by an
        older version is tightened."""
        from hybridctl import paths

        os.umask(0o077)
        try:
            tightened = paths.make_private(self.home)
        except paths.UnsafeHome as exc:
            raise HybridctlError(str(exc)) from None
        if tightened:
            log.warning("state directory %s was readable by other users: made private (%s)", self.home,
                        ", ".join(tightened[:8]) + (" …" if len(tightened) > 8 else ""))
        inside = self.home.resolve() in self.socket_path.resolve().parents
        if inside and self.settings.socket_mode & 0o077:
            log.info("the socket %s is inside the private state directory, so only the controller's user and "
                     "root can reach it; for a controller shared by several users set `socket:` (or "
                     "HYBRIDCTL_SOCKET) to a path outside it, e.g. /run/hybridctl/controller.sock", self.socket_path)

    def _lock(self) -> None:
        self._private_home()
        fd = os.open(self.home / "controller.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another controller is already running with state in {self.home}; stop it first "
                "(or point this one elsewhere with HYBRIDCTL_HOME)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT or `stop()`."""
        self._lock()
        self.store = Store(self.settings.db_path)
        # The parts, wired once, each given what it needs: every job state change goes through
        # `lifecycle`, which wakes the schedule loop; requests see the fleet and the autoscaler
        # only through the views of control/ports.py.
        clock = time.time
        lifecycle = Lifecycle(self.store, self.settings, clock, on_change=self.wake.set)
        # The fleet's cache index feeds cache-aware placement (locality:); the fleet comes next.
        self.scheduler = Scheduler(self.store, self.settings, lifecycle, clock, caches=lambda: fleet.caches(),
                                   features=lambda: fleet.runtimes())
        self.fleet = fleet = Fleet(self.store, self.settings, lifecycle)
        scaler = None
        if self.settings.cloud.enabled:  # rent cloud nodes when saturated (docs/cloud.md)
            from hybridctl.control.autoscaler import Autoscaler  # cloud SDKs load only when bursting is on

            scaler = Autoscaler(self.store, self.settings, lifecycle, fleet, self.scheduler, clock=clock)
        # Telemetry history, idle GPUs and the Prometheus endpoint (docs/ARCHITECTURE.md, Observability).
        observer = Observer(self.store, self.settings, lifecycle, fleet, clock)
        self.controller = Controller(self.store, self.settings, clock, lifecycle=lifecycle, scheduler=self.scheduler,
                                     fleet=fleet, cloud=scaler, observer=observer)
        for n in self.settings.nodes:
            self.store.add_node(config_record(n), clock())
        _raise_file_limit(self.settings.limits.max_connections + 256)
        # Before any request: after a database reset, an output copy must not reach the new job
        # that holds its id (`hybridctl outputs ID`); then hourly (cloud.output_keep_days).
        gone = outputs.sweep(self.settings, self.store, clock())
        if gone:
            log.info("deleted %d expired output copies: %s", len(gone), ", ".join(gone[:20]))
        # Not asyncio's start_unix_server(path=…): it deletes any socket at the path, a live
        # controller's too (one with another home holds another lock). `claim` asks first.
        listening = claim(self.socket_path, self.settings.socket_mode)
        server = await asyncio.start_unix_server(self._serve, sock=listening.sock, limit=READ_CHUNK)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        log.info("controller ready: socket %s, database %s", self.socket_path, self.settings.db_path)
        fleet.sync()
        # Side tasks run supervised: one that raises is logged and restarted with back-off, so the
        # daemon ends only on a stop signal. (It used to exit with the first task that raised, e.g.
        # the schedule loop's WAL checkpoint failing to open the database while accept() had used
        # up every file descriptor.)
        observer.start()  # binds metrics.listen (OSError naming the key when taken)
        tasks = [
            supervisor.start("schedule", self._schedule_loop),
            supervisor.start("fleet-monitor", fleet.monitor),
            supervisor.start("observe", observer.run),
            supervisor.start("outputs-sweep", lambda: outputs.sweep_forever(self.settings, self.store, clock)),
        ]
        if scaler is not None:
            tasks.append(supervisor.start("autoscaler", scaler.run))
        try:
            await self.stop_event.wait()
        finally:
            server.close()
            listening.release()  # unlinks the path only if it is still our socket
            await self._hang_up()
            for t in tasks:
                t.cancel()
            fleet.stop_all()
            observer.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self.store.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            log.info("controller stopped")

    def stop(self) -> None:
        self.stop_event.set()

    async def _hang_up(self, grace: float = 5.0) -> None:
        """Close every client connection before the database: a request answered after it would get
        "internal error" (a TUI shows that as its fleet's rows, and empties its table), and a client
        that keeps asking would keep the controller from ever stopping (a cancelled wait for its
        next line can be lost when the line arrives at once, Python < 3.12's `wait_for`). A
        connection waiting for a request closes now; one answering finishes its answer (within
        `grace` seconds), so an acknowledged submit is one that was stored. Clients then hear that
        the controller closed the connection: "unreachable", and they retry."""
        for task, answering in self._clients.items():
            if not answering:
                task.cancel()
        if self._clients:
            _done, late = await asyncio.wait(list(self._clients), timeout=grace)
            for task in late:
                task.cancel()

    async def _schedule_loop(self) -> None:
        assert self.scheduler is not None and self.fleet is not None
        tick = self.settings.scheduler.tick_seconds
        gap = self.settings.scheduler.min_interval
        last_checkpoint = time.monotonic()
        while True:
            await wait_event(self.wake, tick)
            # Coalesce a burst of submits into one pass (Slurm's batch_sched_delay, much shorter):
            # replies have already gone out, so waiting costs clients nothing.
            await asyncio.sleep(gap)
            self.wake.clear()
            if time.monotonic() - last_checkpoint > 5.0:
                last_checkpoint = time.monotonic()
                assert self.store is not None
                await asyncio.to_thread(self.store.checkpoint)
            started = time.perf_counter()
            decision = self.scheduler.schedule()
            for node in {p.node for p in decision.placements} | self.scheduler.stopping:
                self.fleet.kick(node)
            if decision.placements:
                log.info("scheduled %d placements in %.1f ms", len(decision.placements),
                         (time.perf_counter() - started) * 1000)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: requests in, one reply line each, in order. Over the per-uid
        connection cap a client gets one error line and is disconnected; a connection idle past
        limits.idle_timeout, or sending a line over limits.max_request_bytes, is closed with one."""
        assert self.controller is not None
        sock: socket.socket = writer.get_extra_info("socket")
        _pid, uid, gid = peer_credentials(sock)
        refusal = self.connections.admit(uid)
        if refusal is not None:
            if self.refusals.allow(uid, "refused connections"):
                log.warning("refused a connection from uid %d: %s", uid, refusal)
            await _last_word(writer, _error(Refused(refusal)))
            return
        me = asyncio.current_task()
        assert me is not None
        self._clients[me] = False
        try:
            who = make_caller(uid, gid, self.settings.admin_group)
            pending = bytearray()
            while True:
                try:
                    line = await self._read_request(who, reader, pending)
                except Refused as exc:
                    await _last_word(writer, _error(exc, idle="limits.idle_timeout" in exc.message))
                    return
                if line is None or self.stop_event.is_set():  # stopping: not answered, not acted on
                    return
                self._clients[me] = True
                writer.write(await self._answer(who, line))
                self._clients[me] = False
                # A client that never reads its replies holds memory: give it as long as an idle one.
                await asyncio.wait_for(writer.drain(), self.settings.limits.idle_timeout)
                if self.stop_event.is_set():  # answered while stopping: hang up now, not after the grace
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        finally:
            self._clients.pop(me, None)
            self.connections.release(uid)
            writer.close()

    async def _read_request(self, who: Caller, reader: asyncio.StreamReader, pending: bytearray) -> bytes | None:
        """The next request line (None at end of input). `pending` carries bytes read past the
        previous line. Refused when no complete line arrives within the idle timeout or the line
        outgrows the request limit: memory per connection stays bounded."""
        limits = self.settings.limits
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.idle_timeout
        scanned = 0
        while True:
            end = pending.find(b"\n", scanned)
            if 0 <= end < limits.max_request_bytes:
                line = bytes(pending[: end + 1])
                del pending[: end + 1]
                return line
            if end >= 0 or len(pending) > limits.max_request_bytes:
                if self.bad_requests.allow(who.uid, "bad requests"):
                    log.warning("bad request from uid %d (%s): a line over %d bytes; connection closed", who.uid,
                                who.user, limits.max_request_bytes)
                raise Refused(f"request over {limits.max_request_bytes} bytes (limits.max_request_bytes); "
                              "connection closed")
            scanned = len(pending)
            try:
                chunk = await asyncio.wait_for(reader.read(READ_CHUNK), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise Refused(f"closed after {limits.idle_timeout:g} s without a complete request "
                              "(limits.idle_timeout); reconnect to go on") from None
            if not chunk:
                return None
            pending += chunk

    async def _answer(self, who: Caller, line: bytes) -> bytes:
        """One reply line. Malformed requests cost one log line each (within the per-uid budget)
        and never a traceback: any user can send them by the thousand."""
        assert self.controller is not None
        try:
            op, args = decode_request(line)
        except BadRequest as exc:
            if self.bad_requests.allow(who.uid, "bad requests"):
                log.warning("bad request from uid %d (%s): %s", who.uid, who.user, exc.message)
            return _error(exc)
        try:
            result = self.controller.handle(who, op, args)
            if asyncio.iscoroutine(result):
                result = await result
            return json.dumps({"ok": True, "result": result}).encode() + b"\n"
        except HybridctlError as exc:
            return _error(exc)
        except Exception as exc:  # a bug: log it whole (within the budget), tell the client in one line
            if self.internal_errors.allow(who.uid, "internal errors"):
                # Argument names, never values: a submit carries envs and secrets.
                log.exception("internal error handling %s(%s) from uid %d", op, ", ".join(sorted(args)), who.uid)
            return _error(HybridctlError(f"internal controller error: {exc!r} (see the controller log)"))


async def _last_word(writer: asyncio.StreamWriter, line: bytes) -> None:
    """Send one final line (an error saying why), then close, waiting at most a second."""
    with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
        writer.write(line)
        await asyncio.wait_for(writer.drain(), 1.0)
    writer.close()


def _error(exc: HybridctlError, idle: bool = False) -> bytes:
    reply: dict[str, Any] = {"ok": False, "error": exc.message, "type": type(exc).__name__, "exit_code": exc.exit_code}
    if idle:
        reply["idle"] = True  # the request was never read: clients reconnect and send it again
    return json.dumps(reply).encode() + b"\n"


def _raise_file_limit(want: int) -> None:
    """Raise the soft open-file limit towards `want` (within the hard limit), so that the connection
    caps, not EMFILE, decide who is refused."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(Daemon(settings).run())
