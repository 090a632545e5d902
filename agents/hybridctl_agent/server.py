"""The agent's only door: an asyncio Unix-socket server speaking JSON lines. It owns the socket
file (stale-socket takeover, mode 0600 or 0660 for an allowed group) and the per-connection
loop that answers requests in order; what each op does lives in ops.py."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import stat
from typing import Any, Awaitable, Callable, Dict, Optional

from hybridctl_agent.protocol import (BAD_REQUEST, INTERNAL, MAX_LINE, AgentError, decode,
                                      encode, failure)

log = logging.getLogger("hybridctl_agent.server")
Dispatch = Callable[[Dict[str, Any]], Awaitable[Dict[str, Any]]]


class ServerError(Exception):
    """The socket cannot be set up; the message says why and what to do."""


def _claim_path(path: str) -> None:
    """Make room for the socket: refuse if a live agent answers there, drop a stale file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServerError(f"{path} exists and is not a socket; remove it or pass --socket PATH")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: left over from a crashed agent
        return
    finally:
        probe.close()
    raise ServerError(f"another agent already listens on {path}; stop it or pass --socket PATH")


class AgentServer:
    """Serves `dispatch` on a Unix socket; one task per connection, answers in request order."""

    def __init__(self, path: str, dispatch: Dispatch, allowed_group: Optional[str]) -> None:
        self.path = path
        self.dispatch = dispatch
        self.allowed_group = allowed_group
        self._server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> None:
        parent = os.path.dirname(self.path)
        os.makedirs(parent, mode=0o755 if os.geteuid() == 0 else 0o700, exist_ok=True)
        _claim_path(self.path)
        gid = None
        if self.allowed_group:
            try:
                gid = grp.getgrnam(self.allowed_group).gr_gid
            except KeyError:
                raise ServerError(f"allowed_group {self.allowed_group!r} does not exist on "
                                  "this host; create it or remove the option") from None
        # The socket must never exist with looser permissions, not even for a moment.
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, self.path,
                                                           limit=MAX_LINE)
        finally:
            os.umask(old)
        if gid is not None:
            os.chown(self.path, -1, gid)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)
        log.info("listening on %s", self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _answer(self, line: bytes) -> Dict[str, Any]:
        try:
            req = decode(line)
        except AgentError as exc:
            return failure(None, exc)
        rid = req.get("id")
        try:
            result = await self.dispatch(req)
        except AgentError as exc:
            return failure(rid, exc)
        except Exception as exc:  # a bug in one op must not take the agent down
            log.exception("op %r failed", req.get("op"))
            return failure(rid, AgentError(INTERNAL, f"{type(exc).__name__}: {exc}"))
        return {"id": rid, "ok": True, **result}

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    err = AgentError(BAD_REQUEST, f"request line longer than {MAX_LINE} bytes")
                    writer.write(encode(failure(None, err)))
                    await writer.drain()
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                writer.write(encode(await self._answer(line)))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the controller went away mid-request; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
