"""The data layer: blocking calls to the controller, made only from thread workers.

`Api` is the port (one method, `call`); `SocketApi` speaks the local API through `Client`, with
one connection for the 1 Hz refresh and another for user actions, so a slow 10k-row refresh never
holds up a cancel. `fetch` runs one refresh's requests; `State` is what the screens read."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hybridctl.control.client import Client
from hybridctl.core.errors import ControllerUnavailable, HybridctlError
from hybridctl.tui.history import History


class Api(Protocol):
    """What the TUI needs from the controller: one request, answered or raised as HybridctlError
    (ControllerUnavailable when it cannot be reached). Called from worker threads only."""

    def call(self, op: str, args: dict[str, Any], lane: str = "poll") -> Any: ...


class _Client(Client):
    """`Client` for a long-lived process that outlives controller restarts: any failure to
    connect is "unreachable" (the banner and the retry), never an internal error."""

    def _connect(self) -> None:
        try:
            super()._connect()
        except OSError as exc:  # e.g. a reset while the controller restarts: still "unreachable"
            raise ControllerUnavailable(f"cannot connect to the controller at {self.path} ({exc})") from exc


class SocketApi:
    """The real controller over its Unix socket. Thread-safe: each lane has its own client and lock."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path = path
        self._lanes = {lane: (_Client(path, timeout=timeout), threading.Lock()) for lane in ("poll", "action")}
        self.closed = False

    def call(self, op: str, args: dict[str, Any], lane: str = "poll") -> Any:
        client, lock = self._lanes[lane]
        with lock:
            if self.closed:  # the app is shutting down: do not open a connection nobody will close
                raise ControllerUnavailable("the TUI is closing")
            return client.call(op, **args)

    def close(self) -> None:
        """Close both connections. A call still in flight gets two seconds to finish; after that
        its socket is closed under it (that call then fails, and nobody is waiting for it)."""
        self.closed = True
        for client, lock in self._lanes.values():
            got = lock.acquire(timeout=2.0)
            try:
                client.close()
            finally:
                if got:
                    lock.release()


@dataclass(frozen=True)
class Request:
    """One read a screen wants on every refresh; `key` names its result in `State.results`."""

    key: str
    op: str
    args: tuple[tuple[str, Any], ...] = ()
    every: int = 1
    """Read on every `every`-th refresh only (and whenever there is no result yet): for large
    replies that change slowly, such as which job holds which GPU."""

    @staticmethod
    def of(key: str, op: str, every: int = 1, **args: Any) -> Request:
        return Request(key, op, tuple(sorted(args.items(), key=lambda kv: kv[0])), every)


def fetch(api: Api, requests: list[Request]) -> dict[str, Any]:
    """Run each request once; a refused request keeps its error (the screen shows it), an
    unreachable controller aborts the whole refresh (ControllerUnavailable propagates)."""
    out: dict[str, Any] = {}
    for req in requests:
        if req.key in out:
            continue
        try:
            out[req.key] = api.call(req.op, {k: _plain(v) for k, v in req.args})
        except ControllerUnavailable:
            raise
        except HybridctlError as exc:
            out[req.key] = exc
    return out


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


@dataclass
class State:
    """Everything the screens show, replaced piecewise by each refresh (on the app's thread)."""

    results: dict[str, Any] = field(default_factory=dict)
    history: History = field(default_factory=History)
    connected: bool = False
    error: str = ""
    """Why the controller is unreachable (empty while connected)."""
    lost_at: float | None = None
    polled_at: float | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    """`ping`'s answer: user, uid, admin."""
    fleet_error: str = ""
    """Why the latest `nodes` read was refused while the controller answered (empty once one
    succeeds). `results['nodes']` keeps the last list read, so the fleet never empties for it."""
    fleet_at: float | None = None
    """When that last list was read."""

    @property
    def nodes(self) -> list[dict[str, Any]]:
        got = self.results.get("nodes")
        return got if isinstance(got, list) else []

    def get(self, key: str) -> Any:
        """A request's latest result, or None (an error result is returned as the error)."""
        return self.results.get(key)

    def node(self, name: str) -> dict[str, Any] | None:
        return next((n for n in self.nodes if n["name"] == name), None)
