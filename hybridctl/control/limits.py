"""What one local user may take of the controller that every user shares: connections, request
size, malformed-request logging, queued tasks. Separate from the daemon so that each rule is a
small object with its own test, and the socket loop only asks them."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hybridctl.config import LimitsConfig
from hybridctl.core.errors import HybridctlError

log = logging.getLogger("hybridctl.controller")

HIDDEN = "<hidden>"
"""What another user sees in place of a job's environment values, command and setup."""


class LimitExceeded(HybridctlError):
    """A per-user limit of the controller refused the request."""

    exit_code = 2


class BadRequest(HybridctlError):
    """The request is not a JSON object of the local API."""

    exit_code = 2


class Refused(HybridctlError):
    """The controller refused the connection (too many open, or idle too long)."""


@dataclass
class Connections:
    """Open connections per uid, against `max_connections_per_uid` and `max_connections`."""

    limits: LimitsConfig
    by_uid: dict[int, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_uid.values())

    def admit(self, uid: int) -> str | None:
        """Count one more connection of `uid`; or, over a limit, say why it is refused."""
        held = self.by_uid.get(uid, 0)
        if held >= self.limits.max_connections_per_uid:
            return (f"too many connections from uid {uid} (limit {self.limits.max_connections_per_uid}, "
                    "limits.max_connections_per_uid); close some and retry")
        if self.total >= self.limits.max_connections:
            return (f"the controller holds its most connections ({self.limits.max_connections}, "
                    "limits.max_connections); retry shortly")
        self.by_uid[uid] = held + 1
        return None

    def release(self, uid: int) -> None:
        left = self.by_uid.get(uid, 0) - 1
        if left > 0:
            self.by_uid[uid] = left
        else:
            self.by_uid.pop(uid, None)


@dataclass
class LogBudget:
    """At most `per_minute` log lines per uid per minute for one kind of trouble; the rest are
    counted and reported in one line when the next minute opens, so a flood costs a few lines."""

    per_minute: int
    clock: Callable[[], float] = time.monotonic
    _windows: dict[int, tuple[float, int, int]] = field(default_factory=dict)
    """uid -> (window start, lines logged, lines suppressed)."""

    def allow(self, uid: int, what: str) -> bool:
        now = self.clock()
        start, logged, dropped = self._windows.get(uid, (now, 0, 0))
        if now - start >= 60.0:
            if dropped:
                log.warning("uid %d: %d more %s not logged in the last minute", uid, dropped, what)
            start, logged, dropped = now, 0, 0
        if logged < self.per_minute:
            self._windows[uid] = (start, logged + 1, dropped)
            return True
        if dropped == 0:
            log.warning("uid %d: more %s this minute are not logged (limits.bad_request_log_per_minute %d)",
                        uid, what, self.per_minute)
        self._windows[uid] = (start, logged, dropped + 1)
        return False


def _int(text: str) -> int:
    """Any integer the API takes fits in 64 bits: a longer one is refused while parsing, before
    Python builds a bignum from it (and SQLite overflows on it, deep inside some handler)."""
    if len(text) > 20 or not -(2**63) <= (value := int(text)) < 2**63:
        raise ValueError(f"integer out of range ({len(text)} characters)")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range ({text[:20]})")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """One request line -> (op, args). Anything malformed (not UTF-8, not JSON, nested too deep,
    a bignum, NaN, not an object with a string `op`) raises BadRequest with a one-line reason."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"malformed request: not UTF-8 (byte 0x{line[exc.start]:02x} at {exc.start})") from None
    try:
        req = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise BadRequest("malformed request: JSON nested too deep") from None
    except ValueError as exc:  # JSONDecodeError included
        raise BadRequest(f"malformed request: {_short(str(exc))}") from None
    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
        raise BadRequest('malformed request: expected an object like {"op": "queue", "args": {}}')
    args = req.get("args") or {}
    if not isinstance(args, dict):
        raise BadRequest("malformed request: args must be an object")
    return req["op"], args


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_submit(limits: LimitsConfig, user: str, new_tasks: int, pending: int) -> None:
    """Refuse a job of `new_tasks` tasks from `user`, who has `pending` tasks queued already, when
    it is over the array size or the per-user queue limit."""
    if new_tasks > limits.max_array_tasks:
        raise LimitExceeded(
            f"job refused: an array of {new_tasks} tasks is over the limit of {limits.max_array_tasks} "
            "tasks per job (limits.max_array_tasks); split it, or ask an admin to raise the limit"
        )
    if pending + new_tasks > limits.max_pending_tasks_per_user:
        raise LimitExceeded(
            f"job refused: {user} has {pending} pending tasks and this job adds {new_tasks}; at most "
            f"{limits.max_pending_tasks_per_user} may wait at once (limits.max_pending_tasks_per_user). "
            "Submit more once some have started, or cancel some"
        )


def redact(spec: dict[str, Any]) -> dict[str, Any]:
    """A job's spec as another (non-admin) user sees it: resources and timing as they are, the
    environment's names with their values hidden, no command or setup script (tokens and keys
    end up in all three)."""
    out = mask_secrets(spec)
    out["envs"] = {k: HIDDEN for k in (spec.get("envs") or {})}
    out["run"] = HIDDEN
    out["setup"] = HIDDEN if spec.get("setup") else spec.get("setup")
    return out


def mask_secrets(spec: dict[str, Any]) -> dict[str, Any]:
    """A job's spec as anyone sees it, its owner and admins included (SkyPilot redacts secrets
    everywhere): the secrets' names, each value replaced by SECRET_SHOWN. Only the launch
    payload to the agent carries the values."""
    from hybridctl.core.fields import SECRET_SHOWN

    out = dict(spec)
    if spec.get("secrets"):
        out["secrets"] = {k: SECRET_SHOWN for k in spec["secrets"]}
    return out
