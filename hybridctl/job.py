"""Helpers for code running *inside* a hybridctl job. Stdlib only (no torch, no hybridctl
controller code), so a training script can import it anywhere:

    from hybridctl import job
    ckpt = job.checkpoint_dir()            # persisted across preemptions and node losses
    if job.is_restart(): load(ckpt / "last.pt")
    job.on_preempt(lambda: save(ckpt / "last.pt"))   # SIGTERM: a spot reclaim, a cancel, a time limit
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable


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
