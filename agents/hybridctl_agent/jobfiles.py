"""The files of one job directory and how they are written: the agent and the per-job supervisor
share this layout, and every file that records a decision is replaced atomically and fsynced.

Layout of `<state_dir>/jobs/<key>/` (owned by the agent's user, mode 0711): spec.json (agent),
supervisor.json, started.json and exit.json (supervisor), cancel.json and mounts.json (agent),
all 0600: a job key is guessable, and an exit reason can quote a failed build's log;
supervisor.log (the supervisor's diagnostics); job.sh, stdout.log / stderr.log and work/ (the
default working directory) are owned by the job's user. Files the agent trusts are never
writable by the job.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional

KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}\Z")

JOBS = "jobs"
"""`<state_dir>/jobs/<key>/`: one directory per job the agent holds."""
EVENTS = "events.sock"
"""`<state_dir>/events.sock`: the agent's datagram socket; supervisors send it a wake-up after
writing started.json or exit.json."""

SPEC = "spec.json"
SCRIPT = "job.sh"
SUPERVISOR = "supervisor.json"
STARTED = "started.json"
EXIT = "exit.json"
CANCEL = "cancel.json"
STDOUT = "stdout.log"
STDERR = "stderr.log"
SUPERVISOR_LOG = "supervisor.log"
WORK = "work"


def valid_key(key: object) -> bool:
    """`[A-Za-z0-9_.-]{1,128}`, and not starting with '.' (so never '.' or '..')."""
    return isinstance(key, str) and bool(KEY_RE.match(key)) and not key.startswith(".")


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Dict[str, Any], mode: int = 0o600) -> None:
    """Write `obj` to a temp file, fsync it, rename it over `path` and fsync the directory, so a
    reader sees the old content or the new one, and a crash right after keeps the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, json.dumps(obj, sort_keys=True).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """The object in `path`, or None when it is missing or unreadable."""
    try:
        fd = os.open(str(path), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            obj = json.loads(fh.read().decode())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def start_time(pid: int) -> Optional[int]:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat), or
    None if it is gone or a zombie. Stored next to a pid so a reused pid is never mistaken for
    the original process. Read from /proc directly to keep the supervisor stdlib-only."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as fh:
            data = fh.read()
        fields = data[data.rindex(b")") + 2:].split()  # fields[0] is field 3, the state
    except (OSError, ValueError):
        return None
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def same_process(pid: Optional[int], started: Optional[int]) -> bool:
    """Is `pid` still the process that started at `started` (start_time's ticks)?"""
    if not pid or started is None:
        return False
    return start_time(pid) == started
