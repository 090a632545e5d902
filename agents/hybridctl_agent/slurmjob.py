"""What a supervisor adds for a job read from a Slurm batch script (hybridctl/core/sbatch.py):
the `srun`/`scontrol` shims first on the job's PATH, and the `scontrol requeue` marker."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, Mapping

from hybridctl_agent import jobfiles as jf

REQUEUE_POLL_S = 0.5
"""How often a Slurm-flavoured job's `scontrol requeue` marker is looked for."""
SHIMS = Path(__file__).resolve().parent / "slurm"
"""`srun` and `scontrol` for jobs read from Slurm batch scripts (copied into the job's bin/)."""
REQUEUE_MARKER = ".hybridctl-requeue"
"""Created in the job's work/ by `scontrol requeue`: stop the job and run it again."""


def job_env(jobdir: Path, spec: Mapping[str, Any], slurm: Mapping[str, Any], path: str) -> Dict[str, str]:
    """The shims first on PATH (copied into the job directory — root-owned, so the job's user
    cannot plant links there — readable by the job's user whatever the agent's install allows),
    and where `scontrol requeue` leaves its marker."""
    bindir = jobdir / "bin"
    bindir.mkdir(mode=0o755, exist_ok=True)
    # The agent's own Python runs the shims where the job's user can run it: a `python3` on
    # the job's PATH may be anything (a conda env, a wrapper); -I -S: nothing of the job's
    # PYTHONPATH or site-packages reaches them.
    me = os.path.realpath(sys.executable)
    run_as = spec.get("run_as")
    mine = not run_as or run_as.get("uid") in (0, os.getuid())
    shebang = f"#!{me} -IS\n" if mine or runnable_by_all(me) else "#!/usr/bin/env python3\n"
    for name in ("srun", "scontrol"):
        text = (SHIMS / name).read_text()
        data = (shebang + text.split("\n", 1)[1]).encode()
        fd = os.open(str(bindir / name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o755)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    env = {"PATH": f"{bindir}:{path}"}
    if slurm.get("requeue") is not False:
        env["HYBRIDCTL_REQUEUE_FILE"] = str(jobdir / jf.WORK / REQUEUE_MARKER)
    return env


def requeue_asked(jobdir: Path, slurm: Mapping[str, Any]) -> bool:
    """Did the job run `scontrol requeue` (and may it)?"""
    if not slurm or slurm.get("requeue") is False:
        return False
    try:  # lstat: never follow a link the job's user may have planted
        os.lstat(jobdir / jf.WORK / REQUEUE_MARKER)
    except OSError:
        return False
    return True


def runnable_by_all(path: str) -> bool:
    """Any user may execute `path`: it is world-executable and every directory above it is
    world-traversable."""
    try:
        if not os.stat(path).st_mode & 0o001:
            return False
        parent = os.path.dirname(path)
        while parent and parent != "/":
            if not os.stat(parent).st_mode & 0o001:
                return False
            parent = os.path.dirname(parent)
    except OSError:
        return False
    return True
