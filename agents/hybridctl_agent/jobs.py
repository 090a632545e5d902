"""Job execution on the agent side: create job directories, start supervisors, and rebuild every
job record from the state directory, so an agent restart re-adopts running jobs. The running
job itself belongs to its supervisor (supervise.py), never to the agent process."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import psutil

from hybridctl_agent import jobfiles as jf
from hybridctl_agent.jobspec import LaunchPlan
from hybridctl_agent.protocol import BAD_REQUEST, NOT_FOUND, REFUSED, AgentError

START_GRACE_S = 60.0
"""A job directory without a live supervisor is 'starting' for this long, then 'lost'."""
LAUNCH_WAIT_S = 15.0
"""How long `launch` waits for the supervisor to report bash started (or failed)."""
_PKG_ROOT = str(Path(__file__).resolve().parent.parent)


def _kill_orphans(pgid: int, not_before: int) -> None:
    """SIGKILL every process of group `pgid` started no earlier than the job's bash (so a reused
    group id is never hit); `not_before` is in start_time's clock ticks."""
    for pid in psutil.pids():
        try:
            started = jf.start_time(pid)
            if started is not None and started >= not_before and os.getpgid(pid) == pgid:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


class JobManager:
    """All jobs under `<state_dir>/jobs`; every answer is derived from the files there."""

    def __init__(self, state_dir: str) -> None:
        self.root = Path(state_dir) / "jobs"
        self.done = Path(state_dir) / "done"
        self._final: Dict[str, Dict[str, Any]] = {}
        """Records of exited jobs: they never change again."""
        self._running: Dict[str, Dict[str, Any]] = {}
        """The running records as of the last refresh (read by the telemetry sampler)."""

    def prepare(self) -> None:
        """Create the directories and drop half-built job directories of a crashed agent."""
        for path in (self.root, self.done):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o711)
        for entry in self.root.iterdir():
            if entry.name.startswith(".build-"):
                shutil.rmtree(entry, ignore_errors=True)

    # ---- records ------------------------------------------------------------------------

    def _finish_lost(self, d: Path, reason: str) -> None:
        """The supervisor is gone without a result: kill what it left and record the loss."""
        started = jf.read_json(d / jf.STARTED)
        if started and started.get("pgid"):
            _kill_orphans(int(started["pgid"]), int(started.get("start_ticks") or 0))
        jf.write_json(d / jf.EXIT, {"exit_code": None, "signal": None, "ended_at": time.time(),
                                    "reason": reason}, 0o644)

    def record(self, key: str) -> Dict[str, Any]:
        """The job record of `key` (see the protocol), settling lost supervisors on the way."""
        if key in self._final:
            return self._final[key]
        if not jf.valid_key(key):
            raise AgentError(BAD_REQUEST, f"invalid job key {key!r}")
        d = self.root / key
        spec = jf.read_json(d / jf.SPEC)
        if spec is None:
            raise AgentError(NOT_FOUND, f"no job {key!r} on this node")
        # Read in the reverse of the supervisor's write order (supervisor.json, started.json,
        # exit.json), so a record never shows an exit without the start that preceded it.
        exited = jf.read_json(d / jf.EXIT)
        started = jf.read_json(d / jf.STARTED)
        sup = jf.read_json(d / jf.SUPERVISOR)
        if exited is None:
            if sup is not None and not jf.same_process(sup.get("pid"), sup.get("start_ticks")):
                # Re-read: the supervisor writes exit.json before it exits.
                if jf.read_json(d / jf.EXIT) is None:
                    self._finish_lost(d, "lost: supervisor died")
            elif sup is None and time.time() - float(spec["created_at"]) > START_GRACE_S:
                self._finish_lost(d, "lost: supervisor never started")
            exited = jf.read_json(d / jf.EXIT)
            if exited is not None:
                started = jf.read_json(d / jf.STARTED)
                sup = jf.read_json(d / jf.SUPERVISOR)
        rec = {
            "key": key,
            "state": "exited" if exited else "running",
            "pid": started.get("pid") if started else None,
            "pgid": started.get("pgid") if started else None,
            "gpus": spec["gpus"],
            "started_at": started.get("started_at") if started else None,
            "ended_at": exited.get("ended_at") if exited else None,
            "exit_code": exited.get("exit_code") if exited else None,
            "signal": exited.get("signal") if exited else None,
            "reason": exited.get("reason") if exited else None,
            "user": spec["user"],
            "uid": spec["uid"],
            "supervisor_pid": sup.get("pid") if sup else None,
        }
        if exited:
            self._final[key] = rec
            self._running.pop(key, None)
        else:
            self._running[key] = rec
        return rec

    def refresh(self) -> List[Dict[str, Any]]:
        """Every record, rebuilt from the state directory."""
        out = []
        seen = set()
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                out.append(self.record(entry.name))
                seen.add(entry.name)
            except AgentError:
                continue
        for key in list(self._running):
            if key not in seen:
                del self._running[key]
        return out

    def running(self) -> List[Dict[str, Any]]:
        """Running records as of the last refresh (cheap; for the telemetry sampler)."""
        return list(self._running.values())

    # ---- launch -------------------------------------------------------------------------

    def _build(self, plan: LaunchPlan) -> None:
        """Write the job directory under a temporary name, then rename it into place, so a
        job directory always holds a complete spec and script."""
        tmp = self.root / f".build-{plan.key}-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir(mode=0o711)
        uid = plan.run_as.uid if plan.run_as else os.getuid()
        gid = plan.run_as.gid if plan.run_as else os.getgid()
        script = tmp / jf.SCRIPT
        fd = os.open(str(script), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as fh:
            fh.write(plan.script)
        (tmp / jf.WORK).mkdir(mode=0o700)
        if plan.run_as:
            os.chown(script, uid, gid)
            os.chown(tmp / jf.WORK, uid, gid)
        spec = asdict(plan)
        spec["created_at"] = time.time()
        jf.write_json(tmp / jf.SPEC, spec, 0o600)
        os.rename(tmp, self.root / plan.key)
        jf.fsync_dir(self.root)

    def _spawn(self, d: Path) -> Optional[str]:
        """Start the supervisor; return an error text if it did not even detach."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _PKG_ROOT,
               "LANG": os.environ.get("LANG", "C.UTF-8")}
        try:
            with open(d / jf.SUPERVISOR_LOG, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "hybridctl_agent.supervise", str(d)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd="/",
                    start_new_session=True, close_fds=True)
        except OSError as exc:
            return f"cannot start the supervisor {sys.executable}: {exc}"
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return "the supervisor did not detach within 60 s"
        if code != 0:
            tail = (d / jf.SUPERVISOR_LOG).read_bytes()[-2000:].decode(errors="replace")
            return f"the supervisor failed to start (exit {code}): {tail.strip()}"
        return None

    async def launch(self, plan: LaunchPlan) -> Dict[str, Any]:
        """Start the job unless its key is known (then return its record: idempotent)."""
        d = self.root / plan.key
        if d.exists() or plan.key in self._final:
            return self.record(plan.key)
        self._build(plan)  # no await before this: two launches of one key cannot both build
        error = await asyncio.to_thread(self._spawn, d)
        if error is not None:
            jf.write_json(d / jf.EXIT, {"exit_code": None, "signal": None,
                                        "ended_at": time.time(),
                                        "reason": f"launch_failed: {error}"}, 0o644)
        deadline = time.monotonic() + LAUNCH_WAIT_S
        while time.monotonic() < deadline:
            if (d / jf.STARTED).exists() or (d / jf.EXIT).exists():
                break
            await asyncio.sleep(0.02)
        return self.record(plan.key)

    # ---- control ------------------------------------------------------------------------

    def cancel(self, key: str, grace: float) -> Dict[str, Any]:
        """Ask the supervisor to stop the job (SIGTERM, then SIGKILL after `grace`)."""
        rec = self.record(key)
        if rec["state"] == "exited":
            return rec
        d = self.root / key
        jf.write_json(d / jf.CANCEL, {"grace": grace, "requested_at": time.time()}, 0o644)
        sup = jf.read_json(d / jf.SUPERVISOR)
        if sup and jf.same_process(sup.get("pid"), sup.get("start_ticks")):
            try:
                os.kill(int(sup["pid"]), signal.SIGTERM)
            except ProcessLookupError:
                pass
        # A supervisor that has not written supervisor.json yet reads cancel.json when it does.
        return self.record(key)

    def forget(self, key: str) -> None:
        """Drop an exited job's record; its directory (logs) moves to `<state_dir>/done/`."""
        rec = self.record(key)
        if rec["state"] != "exited":
            raise AgentError(REFUSED, f"job {key} is still running; cancel it first")
        target = self.done / key
        n = 1
        while target.exists():
            target = self.done / f"{key}.{n}"
            n += 1
        os.rename(self.root / key, target)
        self._final.pop(key, None)

    def job_dir(self, key: str) -> Path:
        self.record(key)  # raises not_found
        return self.root / key

    def owner_map(self) -> "Owners":
        return Owners(self.running())


class Owners:
    """Maps a pid to the key of the job it belongs to: same session as the job's bash (jobs run
    in their own session), or a descendant of the job's supervisor."""

    def __init__(self, running: Sequence[Dict[str, Any]]) -> None:
        self.by_sid = {r["pgid"]: r["key"] for r in running if r.get("pgid")}
        self.by_ancestor = dict(self.by_sid)
        self.by_ancestor.update({r["supervisor_pid"]: r["key"] for r in running
                                 if r.get("supervisor_pid")})

    def lookup(self, pid: int) -> Optional[str]:
        if not self.by_sid:
            return None
        try:
            key = self.by_sid.get(os.getsid(pid))
            if key is not None:
                return key
            for parent in psutil.Process(pid).parents():
                if parent.pid in self.by_ancestor:
                    return self.by_ancestor[parent.pid]
        except (OSError, psutil.Error):
            return None
        return None
