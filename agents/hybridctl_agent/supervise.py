"""Job supervisors, and the fork server that starts them.

`python -S -m hybridctl_agent.supervise <state_dir>` is the fork server. The agent starts one and
writes job keys to its stdin, one per line; for each, the server forks a supervisor for
`<state_dir>/jobs/<key>` (double fork, new session) and answers `ok` (or `error: ...`) on stdout
once the supervisor has detached. Forking this small, already-imported process costs about a
millisecond, where a fresh interpreter per job cost ~30 ms. The server exits at EOF on stdin
(the agent stopped or died); the supervisors carry on, because none of them is the agent's or
the server's child. Each supervisor's command line is the server's (it names the state dir);
its pid is in the job's supervisor.json.

A supervisor creates the job's cgroup (cgroup.py; where the node has none, the job's process group
stands in), starts `bash job.sh` in it in a new session as the job's user, waits for it, enforces
the time limit and cancel requests (SIGTERM to every process of the job, SIGKILL to all after a
grace period), kills what the job left when bash ends, waits until the cgroup is empty, and only
then writes `exit.json` durably: a job reported gone has no process left holding its GPUs. After
writing started.json or exit.json it sends a wake-up datagram to the agent's events socket, so
long polls answer at once instead of at the next rescan.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, NoReturn, Optional, Union

from hybridctl_agent import cgroup as cgroups
from hybridctl_agent import jobfiles as jf
from hybridctl_agent import container, slurmjob

_WAKE = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_POLL_S = 5.0
"""Longest sleep between checks, in case a SIGCHLD were ever missed."""


class LaunchFailed(Exception):
    """bash could not be started; the message says which step failed."""


def _log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor[{os.getpid()}]: {msg}\n")
    sys.stderr.flush()


Group = Union[cgroups.Cgroup, cgroups.ProcessGroup]


class Supervisor:
    """Runs one job to its end; see the module docstring."""

    def __init__(self, jobdir: Path, events: str) -> None:
        self.dir = jobdir
        self.events = events
        spec = jf.read_json(jobdir / jf.SPEC)
        if spec is None:
            raise SystemExit(f"supervise: no readable {jf.SPEC} in {jobdir}")
        self.spec: Dict[str, Any] = spec
        self.pid = 0
        self.reason: Optional[str] = None
        self.kill_at: Optional[float] = None
        self.deadline: Optional[float] = None
        self.cgroup: Optional[cgroups.Cgroup] = None
        """The job's cgroup; None where the node has no cgroups (then `group` is its pgid)."""
        self.group: Optional[Group] = None
        """What `terminate` and the final kill act on: the cgroup, else the process group."""
        self.slurm: Dict[str, Any] = dict(spec.get("slurm") or {})
        """The job's `slurm:` facts (core/sbatch.py); {} for a job not read from a batch script."""
        self.signal_at: Optional[float] = None
        """When --signal is due (monotonic); None when none is (or it was sent)."""
        self.signalled = False
        """--signal was sent: with --requeue, a job that then stops is requeued, not ended."""
        self.container: Optional[container.Launch] = None
        """An image job's `podman run` (container.py); None: the job runs on the node's own OS."""

    # ---- start --------------------------------------------------------------------------

    def _open_log(self, name: str) -> int:
        fd = os.open(str(self.dir / name),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        run_as = self.spec.get("run_as")
        if run_as:
            os.fchown(fd, run_as["uid"], run_as["gid"])
        return fd

    def spawn(self) -> int:
        """Fork bash in a new session as the job's user; report failures through a pipe."""
        out, err = self._open_log(jf.STDOUT), self._open_log(jf.STDERR)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        script = str(self.dir / jf.SCRIPT)
        cwd = self.spec.get("cwd") or str(self.dir / jf.WORK)
        run_as = self.spec.get("run_as")
        env = {str(k): str(v) for k, v in self.spec["env"].items()}
        if self.slurm:
            env.update(self._slurm_env(env.get("PATH", "/usr/bin:/bin")))
        rfd, wfd = os.pipe()  # both close-on-exec: EOF on rfd means exec succeeded
        cg, launch = self.cgroup, self.container
        pid = os.fork()
        if pid == 0:  # the child: only async-signal-safe-ish steps, no return
            step = "join the job's cgroup"
            try:
                # First, while still root and before anything can fork: every process the job
                # starts from here on is born inside the cgroup and cannot leave it.
                if cg is not None:
                    cg.add(os.getpid())
                step = "start a new session"
                os.setsid()
                if run_as and launch is None:  # podman (root) makes the job's user in the image
                    step = f"switch to user {run_as['user']} (uid {run_as['uid']})"
                    os.initgroups(run_as["user"], run_as["gid"])
                    os.setgid(run_as["gid"])
                    os.setuid(run_as["uid"])
                step = f"enter working directory {cwd}"
                os.chdir(cwd if launch is None else "/")
                step = f"read the job script {script} as the job's user"
                if launch is None and not os.access(script, os.R_OK):
                    raise PermissionError(13, "not readable (is the state directory traversable?)")
                step = "set up stdin/stdout/stderr"
                os.dup2(null, 0)
                os.dup2(out, 1)
                os.dup2(err, 2)
                # Python ignores SIGPIPE and SIGXFSZ and we block the wake-up signals; the job
                # must start with the defaults, and ignored/blocked states survive exec.
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                    signal.signal(sig, signal.SIG_DFL)
                if launch is not None:
                    step = f"start {launch.argv[0]}"
                    launch.exec()
                step = "exec /bin/bash"
                os.execve("/bin/bash", ["bash", script], env)
            except BaseException as exc:  # noqa: BLE001 - anything must reach the parent
                text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                try:
                    os.write(wfd, f"cannot {step}: {text}".encode()[:4000])
                finally:
                    os._exit(127)
        os.close(wfd)
        for fd in (out, err, null):
            os.close(fd)
        if launch is not None:
            launch.close()  # the child had its own copies
        chunks = []
        while True:
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(rfd)
        if chunks:
            os.waitpid(pid, 0)
            raise LaunchFailed(b"".join(chunks).decode(errors="replace"))
        return pid

    def _slurm_env(self, path: str) -> Dict[str, str]:
        return slurmjob.job_env(self.dir, self.spec, self.slurm, path)

    def _requeue_asked(self) -> bool:
        return slurmjob.requeue_asked(self.dir, self.slurm)

    def send_slurm_signal(self) -> None:
        """--signal=[B:]SIG@SECS: to the batch shell only with B:, else (as Slurm sends it to
        the job's steps, not the batch shell) to every process of the job but bash: a bash
        without a trap would die of SIGUSR1."""
        self.signal_at = None
        self.signalled = True
        sig = getattr(signal, "SIG" + str(self.slurm.get("signal")), signal.SIGUSR1)
        assert self.group is not None
        targets = [self.pid] if self.slurm.get("signal_batch") else [p for p in self.group.procs() if p != self.pid]
        _log(f"--signal: sending {sig.name} to {len(targets)} process(es)")
        for pid in targets:
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    # ---- run ----------------------------------------------------------------------------

    def terminate(self, reason: str, grace: float) -> None:
        """SIGTERM (+SIGCONT, for a stopped job) to every process of the job now, SIGKILL to all
        after `grace`."""
        if self.reason is not None:
            return
        self.reason = reason
        _log(f"terminating job ({reason}), SIGKILL in {grace:g}s")
        assert self.group is not None
        self.group.signal_all(signal.SIGTERM)
        self.group.signal_all(signal.SIGCONT)
        self.kill_at = time.monotonic() + max(0.0, grace)

    def kill_all(self) -> None:
        """SIGKILL everything the job runs; with a cgroup, return only once it is empty."""
        assert self.group is not None
        if self.cgroup is not None:
            self.cgroup.kill_and_wait(log=_log)
        else:
            self.group.kill_all()

    def on_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            cancel = jf.read_json(self.dir / jf.CANCEL)
            if cancel is not None:
                self.terminate("cancelled", float(cancel.get("grace", 10.0)))
            else:
                name = signal.Signals(sig).name
                self.terminate(f"terminated: supervisor received {name}",
                               float(self.spec.get("kill_grace", 10.0)))

    def wait(self) -> int:
        """Wait for bash, acting on signals and deadlines; return its wait status."""
        while True:
            done = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if done is not None:
                # bash is a zombie, so its pid (= the pgid) cannot be reused yet. When the job is
                # being stopped, its other processes keep the rest of the grace period to exit (bash
                # dies of SIGTERM at once; a trainer behind it is still writing its checkpoint), as
                # Slurm's KillWait gives them. Then kill what is left in the group and reap bash.
                assert self.group is not None
                while (self.kill_at is not None and time.monotonic() < self.kill_at
                       and not self.group.empty()):
                    time.sleep(0.05)
                self.kill_all()
                return os.waitpid(self.pid, 0)[1]
            now = time.monotonic()
            if self.signal_at is not None and now >= self.signal_at and self.reason is None:
                self.send_slurm_signal()
            if self.reason is None and self._requeue_asked():
                self.terminate("requeue: the job asked (scontrol requeue)", float(self.spec.get("kill_grace", 10.0)))
            if self.deadline is not None and now >= self.deadline and self.reason is None:
                self.terminate("timeout", float(self.spec.get("kill_grace", 10.0)))
            if self.kill_at is not None and now >= self.kill_at:
                _log("grace period over, SIGKILL to every process of the job")
                assert self.group is not None
                self.group.kill_all()
                self.kill_at = None
            waits = [slurmjob.REQUEUE_POLL_S if self.slurm else _POLL_S]
            for t in (self.deadline if self.reason is None else None, self.kill_at, self.signal_at):
                if t is not None:
                    waits.append(max(0.0, t - now))
            info = signal.sigtimedwait(_WAKE, min(waits))
            if info is not None:
                self.on_signal(info.si_signo)

    def notify(self) -> None:
        """Wake the agent's long polls. Best effort: with the agent down or its queue full, the
        agent's rescan finds the change a little later."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(self.dir.name.encode(), socket.MSG_DONTWAIT, self.events)
            except OSError:
                pass

    def finish(self, exit_code: Optional[int], sig: Optional[int], reason: Optional[str]) -> None:
        jf.write_json(self.dir / jf.EXIT, {"exit_code": exit_code, "signal": sig,
                                           "ended_at": time.time(), "reason": reason})
        self.notify()
        _log(f"job ended: exit_code={exit_code} signal={sig} reason={reason}")

    def run(self) -> int:
        # Block the wake-up signals before anything else, so none is lost before the wait.
        signal.pthread_sigmask(signal.SIG_BLOCK, _WAKE)
        me = os.getpid()
        jf.write_json(self.dir / jf.SUPERVISOR, {"pid": me, "start_ticks": jf.start_time(me)})
        if (self.dir / jf.EXIT).exists():  # the agent gave up on us (start took > 60 s)
            return 1
        if (self.dir / jf.CANCEL).exists():
            self.finish(None, None, "cancelled")
            return 0
        contain = self.spec.get("cgroup")
        if contain:
            try:
                self.cgroup = cgroups.create(cgroups.Containment.from_dict(contain["containment"]),
                                             self.dir.name,
                                             cgroups.Limits.from_dict(contain["limits"]))
            except cgroups.CgroupError as exc:
                self.finish(None, None, f"launch_failed: {exc}")
                return 0
        try:
            if self.spec.get("image"):  # podman, as root, runs job.sh in the image (container.py)
                self.container = container.prepare(self.spec, self.dir, self.cgroup, self._open_log)
            self.pid = self.spawn()
        except (LaunchFailed, container.ContainerError) as exc:
            if self.container is not None:
                self.container.cleanup()
            if self.cgroup is not None:
                self.cgroup.kill_and_wait(timeout=10.0)
                self.cgroup.remove()
            self.finish(None, None, f"launch_failed: {exc}")
            return 0
        self.group = self.cgroup if self.cgroup is not None else cgroups.ProcessGroup(self.pid)
        limit = self.spec.get("time_limit")
        started = time.monotonic()
        self.deadline = started + float(limit) if limit else None
        if self.deadline is not None and self.slurm.get("signal"):
            self.signal_at = max(started, self.deadline - float(self.slurm.get("signal_before", 60)))
        jf.write_json(self.dir / jf.STARTED, {"pid": self.pid, "pgid": self.pid,
                                              "start_ticks": jf.start_time(self.pid),
                                              "started_at": time.time(),
                                              "cgroup": self.cgroup.path if self.cgroup else None})
        self.notify()
        _log(f"started bash pid {self.pid}")
        if (self.dir / jf.CANCEL).exists():  # a cancel that raced with the start
            self.on_signal(signal.SIGTERM)
        try:
            status = self.wait()
        except BaseException as exc:  # never leave a job running unsupervised
            _log("supervisor error:\n" + traceback.format_exc())
            self.group.kill_all()
            if self.container is not None:
                self.container.cleanup()
            if self.cgroup is not None:
                self.cgroup.kill_and_wait(timeout=30.0)
                self.cgroup.remove()
            self.finish(None, signal.SIGKILL, f"lost: supervisor error: {exc!r}")
            return 1
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        reason = self.reason
        if self._requeue_asked() and reason in (None, "timeout"):
            reason = "requeue: the job asked (scontrol requeue)"
        elif (self.signalled and self.slurm.get("requeue") is True and code != 0
              and (reason is None or reason == "timeout")):
            reason = f"requeue: stopped after --signal {self.slurm.get('signal')} with --requeue"
        if self.cgroup is not None:
            if reason is None and code != 0 and (self.cgroup.oom_kills() > 0 or (
                    self.container is not None and self.container.oom_killed(code, sig))):  # podman's cgroup
                mib = (self.spec["cgroup"]["limits"].get("memory_bytes") or 0) // (1 << 20)
                reason = (f"out_of_memory: the kernel killed a process of the job at its memory "
                          f"limit of {mib} MiB (resources.memory)")
        if self.container is not None:  # after the OOM count: it removes podman's cgroups, the job's too
            self.container.cleanup()
        if self.cgroup is not None:
            self.cgroup.remove()
        self.finish(code, sig, reason)
        return 0


def _supervise(jobdir: Path, events: str) -> NoReturn:
    """In a fresh child of the fork server: detach (new session, fork again; the intermediate
    exits, so the supervisor is re-parented to init) and run the supervisor. Never returns."""
    code = 1
    try:
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        log = os.open(str(jobdir / jf.SUPERVISOR_LOG),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        # Off the server's pipes: the agent sees EOF when the server, not every job, is gone.
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        code = Supervisor(jobdir, events).run()
    except BaseException:  # noqa: BLE001 - a child of the server must never return into its loop
        _log("supervisor crashed:\n" + traceback.format_exc())
    finally:
        os._exit(code)


def serve(state_dir: Path) -> int:
    """The fork server loop (see the module docstring)."""
    jobs = state_dir / jf.JOBS
    events = str(state_dir / jf.EVENTS)
    while True:
        line = sys.stdin.buffer.readline()
        if not line:
            return 0
        key = line.decode(errors="replace").strip()
        if not jf.valid_key(key):
            answer = f"error: invalid job key {key!r}"
        else:
            try:
                pid = os.fork()
            except OSError as exc:
                answer = f"error: cannot fork a supervisor: {exc}"
            else:
                if pid == 0:
                    _supervise(jobs / key, events)
                status = os.waitpid(pid, 0)[1]
                answer = "ok" if status == 0 else f"error: the supervisor did not detach ({status})"
        os.write(1, answer.encode() + b"\n")


def main(argv: Optional[list] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -S -m hybridctl_agent.supervise <state_dir>\n")
        return 2
    return serve(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
