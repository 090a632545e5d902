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

from hybridctl.config import Settings
from hybridctl.control.identity import caller as make_caller
from hybridctl.control.identity import peer_credentials
from hybridctl.control.service import Controller
from hybridctl.core.errors import HybridctlError
from hybridctl.control.nodes import config_record
from hybridctl.store.sqlite import Store

log = logging.getLogger("hybridctl.controller")

MAX_REQUEST = 8 * 1024 * 1024


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
        self._lock_fd: int | None = None
        self.fleet: Any = None

    def _lock(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home / "controller.lock", os.O_RDWR | os.O_CREAT, 0o644)
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
        self.controller = Controller(self.store, self.settings)
        self.controller.on_change = self.wake.set
        from hybridctl.control.fleet import Fleet

        self.fleet = Fleet(self.controller)
        self.controller.fleet = self.fleet
        for n in self.settings.nodes:
            self.store.add_node(config_record(n), time.time())
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # stale: we hold the lock, so no live controller owns it
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        server = await asyncio.start_unix_server(self._serve, path=str(self.socket_path), limit=MAX_REQUEST)
        os.chmod(self.socket_path, self.settings.socket_mode)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        log.info("controller ready: socket %s, database %s", self.socket_path, self.settings.db_path)
        self.fleet.sync()
        tasks = [
            asyncio.create_task(self._schedule_loop(), name="schedule"),
            asyncio.create_task(self.fleet.monitor(), name="fleet-monitor"),
        ]
        if self.settings.cloud.enabled:  # rent cloud nodes when saturated (docs/cloud.md)
            from hybridctl.control.autoscaler import Autoscaler

            tasks.append(asyncio.create_task(Autoscaler(self.controller, self.fleet).run(), name="autoscaler"))
        try:
            stop = asyncio.create_task(self.stop_event.wait(), name="stop")
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stop and t.exception():
                    log.error("side task %s died: %r", t.get_name(), t.exception())
                    raise t.exception()  # type: ignore[misc]
        finally:
            for t in tasks:
                t.cancel()
            for session in self.fleet.sessions.values():
                if session.task is not None:
                    session.task.cancel()
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self.store.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            log.info("controller stopped")

    def stop(self) -> None:
        self.stop_event.set()

    async def _schedule_loop(self) -> None:
        assert self.controller is not None
        tick = self.settings.scheduler.tick_seconds
        gap = self.settings.scheduler.min_interval
        last_checkpoint = time.monotonic()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=tick)
            # Coalesce a burst of submits into one pass (Slurm's batch_sched_delay, much shorter):
            # replies have already gone out, so waiting costs clients nothing.
            await asyncio.sleep(gap)
            self.wake.clear()
            if time.monotonic() - last_checkpoint > 5.0:
                last_checkpoint = time.monotonic()
                assert self.store is not None
                await asyncio.to_thread(self.store.checkpoint)
            started = time.perf_counter()
            decision = self.controller.schedule()
            for node in {p.node for p in decision.placements}:
                self.fleet.kick(node)
            if decision.placements:
                log.info("scheduled %d placements in %.1f ms", len(decision.placements),
                         (time.perf_counter() - started) * 1000)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.controller is not None
        sock: socket.socket = writer.get_extra_info("socket")
        try:
            _pid, uid, gid = peer_credentials(sock)
            who = make_caller(uid, gid, self.settings.admin_group)
            while line := await reader.readline():
                writer.write(await self._answer(who, line))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except ValueError:  # line over the limit
            writer.write(_error(HybridctlError("request too large")))
        finally:
            writer.close()

    async def _answer(self, who: Any, line: bytes) -> bytes:
        assert self.controller is not None
        try:
            req = json.loads(line)
            op = req["op"]
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise HybridctlError("request args must be an object")
            result = self.controller.handle(who, op, args)
            if asyncio.iscoroutine(result):
                result = await result
            return json.dumps({"ok": True, "result": result}).encode() + b"\n"
        except HybridctlError as exc:
            return _error(exc)
        except TypeError as exc:
            return _error(HybridctlError(f"bad request: {exc}"))
        except (json.JSONDecodeError, KeyError) as exc:
            return _error(HybridctlError(f"malformed request: {exc}"))
        except Exception as exc:  # a bug: log it whole, tell the client in one line
            log.exception("internal error handling %r", line[:200])
            return _error(HybridctlError(f"internal controller error: {exc!r} (see the controller log)"))


def _error(exc: HybridctlError) -> bytes:
    return json.dumps(
        {"ok": False, "error": exc.message, "type": type(exc).__name__, "exit_code": exc.exit_code}
    ).encode() + b"\n"


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(Daemon(settings).run())
