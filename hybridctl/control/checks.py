"""Request fields arrive raw from the socket: any local user can send a list or a dict where a
string was meant, and it reached SQLite or a path join deep in a handler (a traceback in the log).
Each handler checks its fields here, at the boundary, with core/wire's validators; a bad one is a
SpecError (exit 2) naming the field, the value and what is accepted."""

from __future__ import annotations

from typing import Any

from hybridctl.core import wire
from hybridctl.core.errors import SpecError

def request_text(field: str, value: object, accepted: str, *, optional: bool = False,
                 limit: int | None = wire.MAX_TEXT, controls: bool = False) -> Any:
    """`value` if it is a string (of at most `limit` characters; without `controls`, holding no
    control character, which wire.text would replace); None passes with `optional`."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or (limit is not None and len(value) > limit) \
            or (not controls and wire.text(value, len(value)) != value):
        raise SpecError(field, value, accepted)
    return value


def request_flag(field: str, value: object) -> bool:
    """A JSON boolean (wire.flag: not 0/1, not "true", not a list)."""
    if wire.flag(value) is None:
        raise SpecError(field, value, "true or false")
    return bool(value)


def request_mapping(field: str, value: object, accepted: str, *, optional: bool = True) -> Any:
    """A JSON object (None passes with `optional`): a string or a list is not taken apart as one."""
    if (value is None and optional) or isinstance(value, dict):
        return value
    raise SpecError(field, value, accepted)


def request_list(field: str, value: object, accepted: str) -> list[Any]:
    """A JSON array: a string is not read as a list of its characters."""
    if not isinstance(value, (list, tuple)):
        raise SpecError(field, value, accepted)
    return list(value)


def request_count(field: str, value: object, accepted: str, high: int = 1 << 31) -> int:
    """A JSON whole number from 0 to `high` (wire.integer: not a float, a bool or a string)."""
    n = wire.integer(value, 0, high)
    if n is None:
        raise SpecError(field, value, accepted)
    return n
