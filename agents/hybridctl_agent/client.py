"""Tiny clients of the agent protocol: a blocking one over the Unix socket (CLI `status`, tests)
and an asyncio one over any stream pair (the controller's SSH channel or forwarded socket)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from typing import Any, Dict, Optional

from hybridctl_agent.protocol import MAX_LINE


class AgentCallError(Exception):
    """The agent answered `ok: false`; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _result(req_id: int, answer: Dict[str, Any]) -> Dict[str, Any]:
    if answer.get("id") != req_id:
        raise ConnectionError(f"answer for request {answer.get('id')!r}, expected {req_id}")
    if not answer.get("ok"):
        raise AgentCallError(str(answer.get("code")), str(answer.get("error")))
    return answer


class AgentClient:
    """Blocking client: `AgentClient(path).call("hello")` returns the answer object."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: Optional[socket.socket] = None
        self._buf = b""
        self._ids = itertools.count(1)

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self._sock, self._buf = sock, b""
        return self._sock

    def send_raw(self, line: bytes) -> Dict[str, Any]:
        """Send one raw line and read one answer (for tests of malformed input)."""
        sock = self._connect()
        sock.sendall(line)
        while b"\n" not in self._buf:
            chunk = sock.recv(65536)
            if not chunk:
                self.close()
                raise ConnectionError("the agent closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise ConnectionError("answer line too long")
        line, self._buf = self._buf.split(b"\n", 1)
        answer: Dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, **fields: Any) -> Dict[str, Any]:
        """Send one request; return the answer or raise AgentCallError / OSError."""
        req_id = next(self._ids)
        data = json.dumps({"id": req_id, "op": op, **fields}).encode() + b"\n"
        try:
            return _result(req_id, self.send_raw(data))
        except (OSError, ValueError):
            self.close()
            raise


class AsyncAgentClient:
    """asyncio client over a (reader, writer) pair; requests are sent one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    @classmethod
    async def connect_unix(cls, path: str) -> "AsyncAgentClient":
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE)
        return cls(reader, writer)

    async def call(self, op: str, **fields: Any) -> Dict[str, Any]:
        async with self._lock:
            req_id = next(self._ids)
            self.writer.write(json.dumps({"id": req_id, "op": op, **fields}).encode() + b"\n")
            await self.writer.drain()
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("the agent closed the connection")
            return _result(req_id, json.loads(line))

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ConnectionError):
            pass
