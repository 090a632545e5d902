"""The job's world on the node, before and after it runs: the files its environment build and its
once-per-node setup need in the job directory, the build process run before the supervisor
starts, and the setup marker recorded when a job ends. Kept apart from jobs.py, which owns the
job records and the supervisors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from hybridctl_agent import envs
from hybridctl_agent.cache import ContentCache
from hybridctl_agent import jobfiles as jf
from hybridctl_agent.jobspec import SETUP_DONE, LaunchPlan

_PKG_ROOT = str(Path(__file__).resolve().parent.parent)


def make_dirs(state: Path, env_cache: envs.EnvCache) -> None:
    """At agent start: the env cache, the setup markers and the data cache, all the agent's."""
    env_cache.prepare()
    (state / "setup-done").mkdir(mode=0o700, exist_ok=True)
    ContentCache(str(state)).prepare()


def write_files(tmp: Path, plan: LaunchPlan, env_files: Optional[Mapping[str, bytes]],
                uid: int, gid: int) -> None:
    """Into a job directory being built (ours, not yet renamed into place): the setup-done file
    the job's user writes (a regular file in our directory: written through, never replaced by
    a link) and the env's defining files, the very bytes that were hashed, for uv to read."""
    if plan.setup_marker:
        os.close(os.open(str(tmp / SETUP_DONE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        if plan.run_as:
            os.chown(tmp / SETUP_DONE, uid, gid)
    if env_files:
        (tmp / "env").mkdir(mode=0o700)  # the agent's; opened to the job's uid alone (envbuild)
        for name, data in env_files.items():
            (tmp / "env" / name).write_bytes(data)
            os.chmod(tmp / "env" / name, 0o644)


def record_setup(d: Path, spec: Mapping[str, Any]) -> None:
    """Once a job ended: if its setup succeeded, remember it for later jobs on this node."""
    marker = spec.get("setup_marker")
    if not marker or os.path.exists(marker):
        return
    try:
        st = os.lstat(d / SETUP_DONE)
    except OSError:
        return
    if st.st_size > 0 and st.st_nlink == 1:
        with contextlib.suppress(OSError):
            jf.write_json(Path(marker), {"job": d.name, "at": time.time()}, 0o600)


def _end(d: Path, reason: str) -> None:
    if not (d / jf.EXIT).exists():
        jf.write_json(d / jf.EXIT, {"exit_code": None, "signal": None, "ended_at": time.time(),
                                    "reason": reason})


async def _run(module: str, req: Mapping[str, Any], site: bool, state: str,
               started: Callable[[asyncio.subprocess.Process], None]) -> Dict[str, Any]:
    """One preparation process (`python [-S] -m MODULE`, its own session so a cancel kills it and
    what it started): the request on stdin, one JSON answer on stdout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *([] if site else ["-S"]), "-m", module, state,  # names whose it is
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**({k: v for k, v in os.environ.items() if k.startswith("AWS_")} if site else {}),
                 "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _PKG_ROOT,
                 "LANG": os.environ.get("LANG", "C.UTF-8")},
            cwd="/", start_new_session=True)
        started(proc)
        out, _ = await proc.communicate(json.dumps(req).encode())
        return dict(json.loads(out.decode() or "{}"))
    except (OSError, ValueError) as exc:
        return {"ok": False, "error": f"the {module} process failed: {exc}"}


def _tail(d: Path) -> str:
    try:
        with open(d / jf.STDERR, "rb") as fh:  # in our directory: the log the steps wrote
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4096))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


async def prepare(plan: LaunchPlan, d: Path,
                  started: Callable[[asyncio.subprocess.Process], None]) -> bool:
    """Before the supervisor: build (or wait for, or find ready) the job's environment
    (envbuild.main), then fetch and place its file_mounts (mounts.main). True: start the supervisor;
    False: the job ended here (cancelled, or a step failed: the reason names it and quotes the
    log, which is the job's stderr)."""
    if plan.environment is not None:
        answer = await _run("hybridctl_agent.envbuild", plan.environment, False, str(d.parent.parent), started)
        if (d / jf.CANCEL).exists():
            _end(d, "cancelled")
            return False
        if not answer.get("ok"):
            _end(d, envs.failure_reason(answer, plan.environment["digest"], _tail(d)))
            return False
    if plan.mounts is not None:
        answer = await _run("hybridctl_agent.mounts", plan.mounts, True, str(d.parent.parent), started)
        if (d / jf.CANCEL).exists():
            _end(d, "cancelled")
            return False
        if not answer.get("ok"):
            _end(d, f"file_mounts_failed: step '{answer.get('step') or 'mount'}' failed: "
                    f"{answer.get('error') or 'no answer'}")
            return False
    return True
