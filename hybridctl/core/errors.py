"""One family of errors users read. Each says what failed, where, and what to do next."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Every exit status `hybridctl` uses, defined once: each error class names its own below, and
    `cli/main.py` returns these (docs/cli.md lists them for scripts)."""

    OK = 0
    ERROR = 1
    """The controller is unreachable, or an action failed."""
    USAGE = 2
    """Bad input: a flag, a job spec, a job that can never fit."""
    DENIED = 3
    """The controller refused: not your job, not an admin."""
    NOT_FOUND = 4
    HOST_KEY = 5
    """A node's SSH host key is unknown or changed (`ssh.link.HostKeyRefused`)."""
    INTERRUPTED = 130
    """Ctrl-C (128 + SIGINT, as shells report it)."""


class HybridctlError(Exception):
    """Base of every error hybridctl shows a user; `str()` is the message to print."""

    #: process exit code the CLI uses when this error reaches it
    exit_code: int = ExitCode.ERROR

    def __init__(self, message: str = "", title: str = "") -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        self.title = title

    @property
    def message(self) -> str:
        return str(self.args[0])


class SpecError(HybridctlError):
    """The job spec is invalid."""

    exit_code = ExitCode.USAGE

    def __init__(
        self,
        field: str,
        value: object,
        accepted: str,
        source: str = "",
        *,
        problem: str | None = None,
    ) -> None:
        # "job.yaml: resources.memory: 'lots' is not valid; expected a size such as '32G'".
        # `problem` replaces "<value> is not valid" where that reads badly ("unknown key",
        # "is empty"); an empty source, field or accepted is left out with its separator.
        head = ": ".join(part for part in (source, field) if part)
        body = problem if problem is not None else f"{_shown(value)} is not valid"
        message = f"{head}: {body}" if head else body
        super().__init__(f"{message}; {accepted}" if accepted else message)
        self.field = field
        self.value = value
        self.accepted = accepted
        self.source = source


def _shown(value: object, limit: int = 80) -> str:
    """repr() of a bad value, shortened: a whole `run:` script would drown the message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class IllegalTransition(HybridctlError):
    """A job state change that the state machine does not allow."""


class PermissionDenied(HybridctlError):
    """The caller may not do this."""

    exit_code = ExitCode.DENIED


class NotFound(HybridctlError):
    """No such job or node."""

    exit_code = ExitCode.NOT_FOUND


class Unschedulable(HybridctlError):
    """The job can never fit on any node of the fleet."""

    exit_code = ExitCode.USAGE


class ControllerUnavailable(HybridctlError):
    """The controller is not running or its socket cannot be reached."""
