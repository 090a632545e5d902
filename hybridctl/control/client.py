"""The local API client: JSON lines over the controller's Unix socket. Stdlib only, so that
`hybridctl submit` and `hybridctl queue` start fast; the TUI uses it too."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from hybridctl.core import errors
from hybridctl.core.errors import ControllerUnavailable, HybridctlError


class Client:
    """One connection to the controller; requests are answered in order."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._file: Any = None

    def _connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            s.close()
            raise ControllerUnavailable(
                f"the hybridctl controller is not running (no answer on {self.path}). "
                "Start it with `hybridctl server` (or `systemctl start hybridctl`), "
                "or point HYBRIDCTL_SOCKET at a running one."
            ) from exc
        except PermissionError as exc:
            s.close()
            raise ControllerUnavailable(f"cannot reach the controller socket {self.path}: permission denied") from exc
        self._sock = s
        self._file = s.makefile("rwb")

    def call(self, op: str, **args: Any) -> Any:
        """Send one request; return its result or raise the controller's error as a HybridctlError.
        A connection the controller closed while it sat idle (limits.idle_timeout) is reopened and
        the request sent again: the controller never read it."""
        if self._sock is not None and _closed_by_peer(self._sock):
            self.close()  # an idle timeout: nothing was pending, so nothing is lost
        reply = self._exchange(json.dumps({"op": op, "args": args}).encode() + b"\n")
        if reply.get("idle"):
            self.close()
            reply = self._exchange(json.dumps({"op": op, "args": args}).encode() + b"\n")
        if reply.get("ok"):
            return reply.get("result")
        cls = getattr(errors, str(reply.get("type")), None)
        exc = HybridctlError(str(reply.get("error")))
        if isinstance(cls, type) and issubclass(cls, HybridctlError):
            exc.exit_code = cls.exit_code
        else:
            exc.exit_code = int(reply.get("exit_code", 1))
        exc.title = str(reply.get("type", ""))
        raise exc

    def _exchange(self, request: bytes) -> dict[str, Any]:
        if self._sock is None:
            self._connect()
        try:
            self._file.write(request)
            self._file.flush()
            line = self._file.readline()
        except (ConnectionError, socket.timeout, OSError) as exc:
            # Refused at connect (too many connections): the controller said why, then hung up.
            said = self._last_word()
            self.close()
            if said is not None:
                return said
            raise ControllerUnavailable(f"lost the connection to the controller ({exc}); is it still running?") from exc
        if not line:
            self.close()
            raise ControllerUnavailable("the controller closed the connection before answering; see its log")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _last_word(self) -> dict[str, Any] | None:
        """An error line the controller left before closing, if any."""
        try:
            assert self._sock is not None
            self._sock.settimeout(0.5)
            with self._sock.makefile("rb") as f:
                line = f.readline()
            reply = json.loads(line) if line else None
        except (OSError, ValueError, AssertionError):
            return None
        return reply if isinstance(reply, dict) and reply.get("ok") is False else None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._file.close()  # flushes: may raise BrokenPipeError if the controller died
            except OSError:
                pass
            finally:
                self._sock.close()
                self._sock = None
                self._file = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when the controller has hung up (or left a last word) on an idle connection: between
    requests nothing else is ever readable."""
    import select

    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
