"""Helpers for code running *inside* a hybridctl job. Stdlib only (no torch, no hybridctl
controller code), so a training script can import it anywhere:

    from hybridctl import job
    ckpt = job.checkpoint_dir()            # persisted across preemptions and node losses
    if job.is_restart(): load(ckpt / "last.pt")
    job.on_preempt(lambda: save(ckpt / "last.pt"))   # SIGTERM: a spot reclaim, a cancel, a time limit
    job.log(step=step, loss=loss, tokens_per_s=tps)   # reaches `hybridctl show` with the node's telemetry
"""

from __future__ import annotations

import atexit
import collections
import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Deque, Optional


def checkpoint_dir() -> Path:
    """Where to write checkpoints. hybridctl copies this directory back to the controller every
    `fleet.checkpoint_sync_interval` and after the job stops, and restores it before a restart on
    any node. Outside hybridctl: `./checkpoints`."""
    path = Path(os.environ.get("HYBRIDCTL_CHECKPOINT_DIR") or "checkpoints")
    path.mkdir(parents=True, exist_ok=True)
    return path


def attempt() -> int:
    """0 on the first run; N after N requeues (preemption, node loss, recover_on_exit_codes)."""
    return int(os.environ.get("HYBRIDCTL_ATTEMPT", "0") or 0)


def is_restart() -> bool:
    """True when this run should resume: a later attempt, or a checkpoint is already there."""
    return attempt() > 0 or any(checkpoint_dir().iterdir())


def on_preempt(callback: Callable[[], None], *, exit_code: int | None = 143) -> None:
    """Run `callback` when the job gets SIGTERM (a spot reclaim notice, a cancel or the time limit
    gives a grace period before SIGKILL), then exit with `exit_code` (None: keep running)."""

    def handler(signum: int, frame: object) -> None:
        callback()
        if exit_code is not None:
            raise SystemExit(exit_code)

    signal.signal(signal.SIGTERM, handler)


def node_rank() -> int:
    return int(os.environ.get("NODE_RANK", "0") or 0)


def num_nodes() -> int:
    return int(os.environ.get("NNODES", "1") or 1)


# ---- job.log: metrics from inside a job ----------------------------------------------------------

LOG_FLUSH_S = 1.0
"""The writer thread appends buffered lines this often (the agent reads them at its sample rate)."""
LOG_BUFFER = 10000
"""Lines buffered at most; past that the oldest are dropped (log() never waits)."""
LOG_FILE_MAX = 16 * 1024 * 1024
"""The metrics file is emptied when it grows past this (only the last values matter)."""

_lock = threading.Lock()
_buffer: Deque[str] = collections.deque(maxlen=LOG_BUFFER)
_wake = threading.Event()
_writer: Optional[threading.Thread] = None
dropped = 0
"""Lines log() could not keep (bad values are skipped, not counted)."""


def log(**values: float) -> None:
    """Record numeric metrics (`job.log(step=100, loss=0.25)`). Cheap and buffered: the line is
    written by a background thread within about a second, and the agent forwards the last value
    of each name to the controller with its telemetry (`hybridctl show` prints them). Never blocks
    and never raises: non-numbers, NaN and infinities are skipped; outside a hybridctl job (no
    HYBRIDCTL_METRICS_FILE) it does nothing."""
    global dropped
    try:
        if not os.environ.get("HYBRIDCTL_METRICS_FILE"):
            return
        kept = {str(k): float(v) for k, v in values.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if not kept:
            return
        line = json.dumps({"t": round(time.time(), 3), "v": kept}, separators=(",", ":"))
        with _lock:
            if len(_buffer) == _buffer.maxlen:
                dropped += 1
            _buffer.append(line)
        _start_writer()
    except Exception:  # never into the training loop
        dropped += 1


def flush() -> None:
    """Write what is buffered now (also run at exit)."""
    global dropped
    path = os.environ.get("HYBRIDCTL_METRICS_FILE")
    with _lock:
        lines = list(_buffer)
        _buffer.clear()
    if not lines or not path:
        return
    data = ("\n".join(lines) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except OSError:
        dropped += len(lines)
        return
    try:
        if os.fstat(fd).st_size + len(data) > LOG_FILE_MAX:
            os.ftruncate(fd, 0)
        os.write(fd, data)
    except OSError:
        dropped += len(lines)
    finally:
        os.close(fd)


def _run_writer() -> None:
    while True:
        _wake.wait(LOG_FLUSH_S)
        _wake.clear()
        try:
            flush()
        except Exception:
            pass  # a broken metrics file must not end the job; the next flush tries again


def _start_writer() -> None:
    global _writer
    if _writer is not None and _writer.is_alive():
        return
    with _lock:
        if _writer is not None and _writer.is_alive():
            return
        _writer = threading.Thread(target=_run_writer, name="hybridctl-job-log", daemon=True)
        _writer.start()
        atexit.register(flush)
