"""Wire framing and errors of the agent protocol (docs/AGENT_PROTOCOL.md): JSON lines,
one request or answer per line. Kept apart so the server and the client share it."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

BAD_REQUEST = "bad_request"
NOT_FOUND = "not_found"
REFUSED = "refused"
INTERNAL = "internal"

MAX_LINE = 16 * 1024 * 1024
"""Longest request line accepted (a launch carries whole scripts)."""


class AgentError(Exception):
    """A request the agent answers with `ok: false`; `code` is one of the protocol codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode(obj: Dict[str, Any]) -> bytes:
    """One JSON line (compact, UTF-8, newline-terminated)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> Dict[str, Any]:
    """Parse one request line; raise AgentError(bad_request) when it is not a JSON object."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AgentError(BAD_REQUEST, f"request is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise AgentError(BAD_REQUEST, "request must be a JSON object")
    return obj


def failure(req_id: Optional[Any], err: AgentError) -> Dict[str, Any]:
    return {"id": req_id, "ok": False, "error": err.message, "code": err.code}


def field(req: Dict[str, Any], name: str, kind: type, default: Any = None,
          required: bool = False) -> Any:
    """Read one typed request field, raising bad_request with the field's name when wrong."""
    if name not in req or req[name] is None:
        if required:
            raise AgentError(BAD_REQUEST, f"field {name!r} is required")
        return default
    value = req[name]
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise AgentError(BAD_REQUEST, f"field {name!r} must be {kind.__name__}, got {value!r}")
    return value
