"""Job execution on the agent side: create job directories, start supervisors (through the fork
server in supervise.py), rebuild every job record from the state directory, so an agent restart
re-adopts running jobs, and wake long polls when a record changes. The running job itself
belongs to its supervisor, never to the agent process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

from hybridctl_agent import cgroup as cgroups
from hybridctl_agent import container, envs, images, world
from hybridctl_agent import jobfiles as jf
from hybridctl_agent.cache import seal_at_exit
from hybridctl_agent.containment import open_job, sweep
from hybridctl_agent.jobspec import LaunchPlan, job_id
from hybridctl_agent.owners import Owners, kill_orphans
from hybridctl_agent.jobusage import METRICS_ENV, METRICS_FILE
from hybridctl_agent.protocol import BAD_REQUEST, NOT_FOUND, REFUSED, AgentError

START_GRACE_S = 60.0
"""A job directory without a live supervisor is 'starting' for this long, then 'lost'."""
DETACH_WAIT_S = 60.0
"""How long `launch` waits for the fork server to report a supervisor detached."""
_PKG_ROOT = str(Path(__file__).resolve().parent.parent)

log = logging.getLogger("hybridctl_agent.jobs")


class SupervisorServer:
    """The agent's end of the supervisor fork server (supervise.py): started on first use, and
    again if it died. Stopping it, or the agent dying, never stops a job."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._lock = asyncio.Lock()

    async def spawn(self, key: str) -> Optional[str]:
        """Start the supervisor of job `key`; return an error text if it did not detach."""
        async with self._lock:
            for _ in range(2):  # a server that died since the last launch is replaced once
                if self._proc is None or self._proc.returncode is not None:
                    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _PKG_ROOT,
                           "LANG": os.environ.get("LANG", "C.UTF-8"),
                           # the admin's podman settings (registries, storage, credentials) for image jobs
                           **images.admin_env(os.environ)}
                    try:  # -S: the supervisor needs the stdlib only, and starts faster without site
                        self._proc = await asyncio.create_subprocess_exec(
                            sys.executable, "-S", "-m", "hybridctl_agent.supervise", self.state_dir,
                            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
                            cwd="/", start_new_session=True)
                    except OSError as exc:
                        return f"cannot start the supervisor {sys.executable}: {exc}"
                proc = self._proc
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    proc.stdin.write(key.encode() + b"\n")
                    await proc.stdin.drain()
                    line = await asyncio.wait_for(proc.stdout.readline(), DETACH_WAIT_S)
                except asyncio.TimeoutError:
                    await self.close()
                    return f"the supervisor did not detach within {DETACH_WAIT_S:.0f} s"
                except ConnectionError:  # the server is gone: EOF below
                    line = b""
                if line:
                    answer = line.decode(errors="replace").strip()
                    return None if answer == "ok" else answer.removeprefix("error: ")
                await self.close()
            return "the supervisor fork server exited at once; see the agent's log"

    async def close(self) -> None:
        """Stop the server (EOF on its stdin); the supervisors it started carry on."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


class JobManager:
    """All jobs under `<state_dir>/jobs`; every answer is derived from the files there."""

    def __init__(self, state_dir: str,
                 containment: Optional[cgroups.Containment] = None) -> None:
        self.containment = containment or cgroups.Containment(cgroups.MODE_NONE, "not detected")
        """How jobs are contained on this node (containment.detect, at agent start)."""
        self.state = Path(state_dir)
        self.root = self.state / jf.JOBS
        self.done = self.state / "done"
        self.supervisors = SupervisorServer(state_dir)
        self._final: Dict[str, Dict[str, Any]] = {}
        """Records of exited jobs: they never change again."""
        self._running: Dict[str, Dict[str, Any]] = {}
        """The running records as of the last refresh (read by the telemetry sampler)."""
        self._change = asyncio.Event()
        """Set (and replaced) at the next change of any job record; see `next_change`."""
        self._events: Optional[socket.socket] = None
        self.envs = envs.EnvCache(state_dir)
        self.setup_done = self.state / "setup-done"  # jobspec.setup_once's markers
        self._building: Dict[str, Optional[asyncio.subprocess.Process]] = {}  # world.prepare runs
        self._tasks: set = set()

    def checkpoint_dir(self, key: str) -> Path:
        """Where a job checkpoints on this node: one directory per job (or array task), kept across
        its attempts here; the controller syncs it over SFTP and restores it before a restart."""
        return self.state / "checkpoints" / job_id(key)

    def _has_checkpoint(self, key: str) -> bool:
        try:
            with os.scandir(self.checkpoint_dir(key)) as entries:
                return any(True for _ in entries)
        except OSError:
            return False

    def prepare(self) -> None:
        """Create the directories and drop half-built job directories of a crashed agent."""
        for path in (self.root, self.done):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o711)
        world.make_dirs(self.state, self.envs)
        for entry in self.root.iterdir():
            if entry.name.startswith(".build-"):
                shutil.rmtree(entry, ignore_errors=True)
        sweep(self.containment, {e.name for e in self.root.iterdir() if not (e / jf.EXIT).exists()})

    # ---- change events ------------------------------------------------------------------

    def open_events(self) -> None:
        """Bind `<state_dir>/events.sock`, where supervisors report a job started or ended. Where
        that fails (e.g. a path too long for a Unix socket), long polls rely on their rescan."""
        path = str(self.state / jf.EVENTS)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by an earlier agent: we hold the state dir's lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
        except OSError as exc:
            sock.close()
            log.warning("no job events socket at %s (%s); long polls rescan instead", path, exc)
            return
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain_events)
        self._events = sock

    async def close(self) -> None:
        if self._events is not None:
            asyncio.get_running_loop().remove_reader(self._events.fileno())
            self._events.close()
            self._events = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state / jf.EVENTS)
        await self.supervisors.close()

    def _drain_events(self) -> None:
        assert self._events is not None
        with contextlib.suppress(OSError):
            while True:
                self._events.recv(256)  # the content (a key) is only a hint: rescan anyway
        self.changed()

    def changed(self) -> None:
        """Wake everyone waiting on `next_change`."""
        event, self._change = self._change, asyncio.Event()
        event.set()

    def next_change(self) -> asyncio.Event:
        """An event set at the next change of a job record (started, ended, launched, forgotten).
        Take it before reading the records, so no change slips in between."""
        return self._change

    # ---- records ------------------------------------------------------------------------

    def _finish_lost(self, d: Path, reason: str) -> None:
        """The supervisor is gone without a result: kill what it left and record the loss."""
        started = jf.read_json(d / jf.STARTED)
        if started and started.get("pgid"):
            kill_orphans(int(started["pgid"]), int(started.get("start_ticks") or 0))
        spec = jf.read_json(d / jf.SPEC) or {}
        if spec.get("cgroup"):  # the cgroup also holds what left the process group
            cg = open_job(cgroups.Containment.from_dict(spec["cgroup"]["containment"]), d.name)
            if cg is not None:
                cg.nested = bool(spec.get("image"))  # podman's container and conmon: child cgroups
                if not cg.kill_and_wait(timeout=10.0):
                    log.error("job %s: processes in %s survive SIGKILL", d.name, cg.path)
                if spec.get("image"):
                    container.forget(spec, str(d), cg.paths)
                cg.remove()
        jf.write_json(d / jf.EXIT, {"exit_code": None, "signal": None, "ended_at": time.time(),
                                    "reason": reason})
        self.changed()

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
            elif (sup is None and key not in self._building
                  and time.time() - float(spec["created_at"]) > START_GRACE_S):
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
            world.record_setup(d, spec)
            seal_at_exit(str(self.state), self.root)  # objects/ 0700 once no old-layout job runs
            # Whether it left a checkpoint (its processes are gone: that is final), so the controller
            # skips the `checkpoint_files` round trip for the many jobs that never checkpoint.
            rec["has_checkpoint"] = self._has_checkpoint(key)
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

    def _build(self, plan: LaunchPlan, env_files: Optional[Dict[str, bytes]] = None) -> None:
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
        world.write_files(tmp, plan, env_files, uid, gid)
        # hybridctl.job.log writes here; the job owns the file, not the directory (jobusage.py).
        os.close(os.open(str(tmp / METRICS_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        if plan.run_as:
            os.chown(tmp / METRICS_FILE, uid, gid)
        plan.env[METRICS_ENV] = str(self.root / plan.key / METRICS_FILE)
        spec = asdict(plan)
        spec["created_at"] = time.time()
        jf.write_json(tmp / jf.SPEC, spec, 0o600)
        os.rename(tmp, self.root / plan.key)
        jf.fsync_dir(self.root)

    async def launch(self, plan: LaunchPlan,
                     env_files: Optional[Dict[str, bytes]] = None) -> Dict[str, Any]:
        """Start the job unless its key is known (then return its record: idempotent). Answers
        once the supervisor has detached, usually before bash runs (`pid` still null), or at once
        for a job with an environment or file_mounts, which starts once they are ready."""
        d = self.root / plan.key
        if d.exists() or plan.key in self._final:
            return self.record(plan.key)
        self._build(plan, env_files)  # no await before this: two launches of one key cannot both build
        if plan.environment is not None or plan.mounts is not None:
            self._building[plan.key] = None
            self._tasks.add(asyncio.ensure_future(self._env_then_spawn(plan)))
            self.changed()
            return self.record(plan.key)
        await self._spawn(plan.key)
        return self.record(plan.key)

    async def _spawn(self, key: str) -> None:
        error = await self.supervisors.spawn(key)
        if error is not None:
            jf.write_json(self.root / key / jf.EXIT, {"exit_code": None, "signal": None,
                                                      "ended_at": time.time(),
                                                      "reason": f"launch_failed: {error}"})
        self.changed()

    async def _env_then_spawn(self, plan: LaunchPlan) -> None:
        """Build its environment and place its file_mounts (world.prepare), then start it."""
        try:
            if await world.prepare(plan, self.root / plan.key,
                                     lambda proc: self._building.__setitem__(plan.key, proc)):
                await self._spawn(plan.key)
        finally:
            # Only now: until the supervisor wrote supervisor.json, `record` must not call it lost.
            self._building.pop(plan.key, None)
            self._tasks.discard(asyncio.current_task())
            self.changed()

    # ---- control ------------------------------------------------------------------------

    def cancel(self, key: str, grace: float) -> Dict[str, Any]:
        """Ask the supervisor to stop the job (SIGTERM, then SIGKILL after `grace`)."""
        rec = self.record(key)
        if rec["state"] == "exited":
            return rec
        d = self.root / key
        jf.write_json(d / jf.CANCEL, {"grace": grace, "requested_at": time.time()})
        build = self._building.get(key)
        if build is not None and build.returncode is None:  # still building its environment
            with contextlib.suppress(ProcessLookupError):
                os.killpg(build.pid, signal.SIGKILL)  # its own session: uv goes with it
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
        self.changed()

    def job_dir(self, key: str) -> Path:
        self.record(key)  # raises not_found
        return self.root / key

    def owner_map(self) -> "Owners":
        agent = {os.path.basename(d) for d in self.containment.dirs.values()}
        return Owners(self.running(), next(iter(agent), None))

