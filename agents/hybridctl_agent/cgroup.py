"""Job containment with Linux cgroups (v2, or v1 controller hierarchies): each job's processes live
in their own cgroup, so stopping a job reaches every process it started (setsid and double-forked
ones included) and its memory, CPU, process-count and GPU-device limits are enforced by the kernel.
Where cgroups cannot be used, `ProcessGroup` keeps the old session/process-group killing; which
applies is decided once by containment.py. Stdlib only: the supervisor (`python -S`) imports
this module."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

MODE_V2 = "cgroup-v2"
MODE_V1 = "cgroup-v1"
MODE_NONE = "none"

NVIDIA_MAJOR = 195
"""Char major of /dev/nvidia<N> (minor N) and of nvidiactl (255) / nvidia-modeset (254)."""
V1_CONTROLLERS = ("pids", "freezer", "memory", "cpu", "devices")
"""The v1 hierarchies a job joins; the first present one is read for the job's process list."""
V2_CONTROLLERS = ("memory", "cpu", "pids")
NO_V2_DEVICES = ("no GPU device rules: cgroup v2 device control needs an eBPF program, which "
                 "the agent does not load; jobs are pinned by CUDA_VISIBLE_DEVICES only")
CGROUP_PREFIX = "job-"
"""Job cgroups are named `job-<key>`, so no key can collide with a cgroup control file."""
AGENT_PREFIX = "agent-"
_CPU_PERIOD_US = 100_000


class CgroupError(Exception):
    """A cgroup could not be created, joined or configured; the message names the file."""


@dataclass(frozen=True)
class Limits:
    """What the kernel enforces for one job; None or empty = no limit of that kind."""

    memory_bytes: Optional[int] = None
    """RAM (and, on v1 with swap accounting, RAM+swap: jobs do not swap)."""
    cpus: Optional[float] = None
    """CPU time as a number of cores (CFS quota over a 100 ms period)."""
    pids: Optional[int] = None
    """Most tasks (processes and threads) at once: a fork bomb stops here."""
    deny_gpus: Tuple[int, ...] = ()
    """Minors of /dev/nvidia<N> the job may not open (the node's GPUs it was not given)."""

    def to_dict(self) -> Dict[str, Any]:
        return {"memory_bytes": self.memory_bytes, "cpus": self.cpus, "pids": self.pids,
                "deny_gpus": list(self.deny_gpus)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Limits":
        return cls(d.get("memory_bytes"), d.get("cpus"), d.get("pids"),
                   tuple(d.get("deny_gpus") or ()))


@dataclass(frozen=True)
class Containment:
    """How this node contains jobs, as `detect` found it (reported in `hello`)."""

    mode: str
    """cgroup-v2, cgroup-v1 or none."""
    reason: str = ""
    """none: why not; otherwise what is not enforced ("" = everything)."""
    dirs: Dict[str, str] = field(default_factory=dict)
    """Parent directory of the job cgroups per v1 controller; v2: one entry under key ''."""
    controllers: Tuple[str, ...] = ()
    """What job cgroups can enforce: memory, cpu, pids, devices (and v1 freezer)."""

    def describe(self) -> str:
        """`cgroup-v1`, `cgroup-v2 (no GPU device rules: ...)` or `none: <reason>`."""
        text = f"none: {self.reason}" if self.mode == MODE_NONE else \
            f"{self.mode} ({self.reason})" if self.reason else self.mode
        return text if len(text) <= 500 else text[:499] + "…"

    def to_dict(self) -> Dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason, "dirs": dict(self.dirs),
                "controllers": list(self.controllers)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Containment":
        return cls(str(d.get("mode") or MODE_NONE), str(d.get("reason") or ""),
                   dict(d.get("dirs") or {}), tuple(d.get("controllers") or ()))


# ---- small file helpers -----------------------------------------------------------------------


def write_file(path: str, text: str) -> None:
    """One write(2) of `text`: cgroup files act on each write, and report errors from it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        raise CgroupError(f"cannot write {text.strip()!r} to {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def read_file(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")


def _kill(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _keyed(text: str, key: str) -> int:
    """The value of `key` in a flat-keyed file (memory.events, memory.oom_control), else 0."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return 0


# ---- job cgroups ------------------------------------------------------------------------------


class Cgroup:
    """One job's cgroup (in every hierarchy it uses). `add` is safe to call in a forked child."""

    def __init__(self, mode: str, paths: Dict[str, str]) -> None:
        self.mode = mode
        self.paths = paths
        """controller -> cgroup directory; v2: {'': dir}."""
        self.nested = False
        """Processes also live in child cgroups (an image job: podman's container and conmon):
        `procs` and `remove` then walk them too."""

    @property
    def path(self) -> str:
        """The cgroup's directory (v1: in the first hierarchy)."""
        return next(iter(self.paths.values()))

    def add(self, pid: int) -> None:
        """Move `pid` into the cgroup in every hierarchy (its later children follow it). Nested on
        v2: into its `client` leaf, as a v2 cgroup whose children get controllers holds no process."""
        for path in self.paths.values():
            leaf = os.path.join(path, "client") if self.nested and self.mode == MODE_V2 else path
            write_file(os.path.join(leaf, "cgroup.procs"), str(pid))

    def procs(self) -> List[int]:
        """The live processes of the job (zombies are not listed)."""
        dirs = [d for d, _, _ in os.walk(self.path)] if self.nested else [self.path]
        out: List[int] = []
        for d in dirs:
            try:
                out += [int(x) for x in read_file(os.path.join(d, "cgroup.procs")).split()]
            except FileNotFoundError:
                pass
        return out

    def empty(self) -> bool:
        return not self.procs()

    def signal_all(self, sig: int) -> None:
        """`sig` to every process now in the cgroup. A process forked during the scan may miss
        it: `kill_all` is the one that must be complete."""
        _kill(self.procs(), sig)

    def _freeze(self, on: bool) -> bool:
        """Freeze (or thaw) the cgroup, so no process can fork between the scan and the kill.
        Returns whether a freezer was used."""
        if self.mode == MODE_V2:
            target = os.path.join(self.path, "cgroup.freeze")
            text = "1" if on else "0"
        elif "freezer" in self.paths:
            target = os.path.join(self.paths["freezer"], "freezer.state")
            text = "FROZEN" if on else "THAWED"
        else:
            return False
        try:
            write_file(target, text)
        except CgroupError:
            return False
        if on:  # bounded: a task in uninterruptible sleep may keep the cgroup FREEZING
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    state = read_file(target if self.mode == MODE_V1 else
                                  os.path.join(self.path, "cgroup.events"))
                except OSError:
                    break
                if ("FROZEN" in state and "FREEZING" not in state) or "frozen 1" in state:
                    break
                time.sleep(0.005)
        return True

    def kill_all(self) -> None:
        """SIGKILL every process of the cgroup, with no window for a fork to escape: v2
        `cgroup.kill`; else freeze, kill, thaw (the killed tasks die once thawed)."""
        if self.mode == MODE_V2 and os.path.exists(os.path.join(self.path, "cgroup.kill")):
            write_file(os.path.join(self.path, "cgroup.kill"), "1")
            return
        frozen = self._freeze(True)
        try:
            _kill(self.procs(), signal.SIGKILL)
        finally:
            if frozen:
                self._freeze(False)

    def kill_and_wait(self, timeout: Optional[float] = None, log: Any = None) -> bool:
        """`kill_all` until the cgroup is empty (re-killing every second); False after `timeout`
        (None: wait for ever, logging every minute: an unkillable task keeps its job running)."""
        start = time.monotonic()
        next_kill = next_log = start
        while not self.empty():
            now = time.monotonic()
            if timeout is not None and now - start >= timeout:
                return False
            if now >= next_kill:
                self.kill_all()
                next_kill = now + 1.0
            if log is not None and now >= next_log + 60.0:
                log(f"{len(self.procs())} process(es) of {self.path} survive SIGKILL "
                    "(uninterruptible sleep?); still waiting")
                next_log = now
            time.sleep(0.01)
        return True

    def oom_kills(self) -> int:
        """How many processes the kernel killed for exceeding the memory limit."""
        try:
            if self.mode == MODE_V2:
                return _keyed(read_file(os.path.join(self.path, "memory.events")), "oom_kill")
            if "memory" in self.paths:
                return _keyed(read_file(os.path.join(self.paths["memory"], "memory.oom_control")),
                              "oom_kill")
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        """Remove the (empty) cgroup directories; a missing one is fine."""
        for top in self.paths.values():
            for path in ([d for d, _, _ in os.walk(top, topdown=False)] if self.nested else [top]):
                self._rmdir(path)

    @staticmethod
    def _rmdir(path: str) -> None:
        for _ in range(50):  # v1 may answer EBUSY for a moment after the last task exits
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


class ProcessGroup:
    """The fallback without cgroups: the job's session/process group (its bash's pid). Misses
    processes that left the group (setsid, double fork); `Containment.reason` says so."""

    mode = MODE_NONE

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid

    def procs(self) -> List[int]:
        """Live members other than the leader (a zombie bash still answers killpg)."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.pgid:
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.pgid and fields[0] not in (b"Z", b"X"):
                out.append(int(entry))
        return out

    def empty(self) -> bool:
        return not self.procs()

    def signal_all(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill_all(self) -> None:
        self.signal_all(signal.SIGKILL)

    def oom_kills(self) -> int:
        return 0

    def remove(self) -> None:
        pass


def job_paths(containment: Containment, key: str) -> Dict[str, str]:
    return {ctrl: os.path.join(parent, CGROUP_PREFIX + key)
            for ctrl, parent in containment.dirs.items()}


def limit_files(mode: str, limits: Limits, controllers: Sequence[str],
                swap_accounting: bool = False) -> List[Tuple[str, str, str]]:
    """The (controller, file, value) writes that set `limits`, in order; pure, for testing.
    v1 writes memsw after memory (memsw must stay >= memory)."""
    out: List[Tuple[str, str, str]] = []
    v2 = mode == MODE_V2
    if limits.memory_bytes and "memory" in controllers:
        if v2:
            out += [("memory", "memory.max", str(limits.memory_bytes)),
                    ("memory", "memory.swap.max", "0")]
        else:
            out.append(("memory", "memory.limit_in_bytes", str(limits.memory_bytes)))
            if swap_accounting:
                out.append(("memory", "memory.memsw.limit_in_bytes", str(limits.memory_bytes)))
    if limits.cpus and "cpu" in controllers:
        quota = max(1000, int(round(limits.cpus * _CPU_PERIOD_US)))
        if v2:
            out.append(("cpu", "cpu.max", f"{quota} {_CPU_PERIOD_US}"))
        else:
            out += [("cpu", "cpu.cfs_period_us", str(_CPU_PERIOD_US)),
                    ("cpu", "cpu.cfs_quota_us", str(quota))]
    if limits.pids and "pids" in controllers:
        out.append(("pids", "pids.max", str(limits.pids)))
    if limits.deny_gpus and "devices" in controllers and not v2:
        # Allow-by-default plus deny exceptions (Slurm's ConstrainDevices on v1): nvidiactl,
        # nvidia-uvm, nvidia-caps and every non-GPU device stay usable.
        out += [("devices", "devices.deny", f"c {NVIDIA_MAJOR}:{minor} rwm")
                for minor in sorted(set(limits.deny_gpus))]
    return out


def create(containment: Containment, key: str, limits: Limits) -> Cgroup:
    """Create (or reset) job `key`'s cgroup and set its limits; the job's first process joins it
    with `add`. A cgroup left by an earlier run of the key is emptied and recreated."""
    if containment.mode == MODE_NONE:
        raise CgroupError(f"no cgroups on this node: {containment.reason}")
    paths = job_paths(containment, key)
    stale = Cgroup(containment.mode, {c: p for c, p in paths.items() if os.path.isdir(p)}) \
        if any(os.path.isdir(p) for p in paths.values()) else None
    if stale is not None:
        stale.kill_and_wait(timeout=30.0)
        stale.remove()
    cg = Cgroup(containment.mode, paths)
    try:
        for path in paths.values():
            _mkdir_parents(containment, os.path.dirname(path))
            try:
                os.mkdir(path, 0o755)
            except OSError as exc:
                raise CgroupError(f"cannot create cgroup {path}: {exc.strerror}") from exc
        swap = containment.mode == MODE_V1 and "memory" in paths and os.path.exists(
            os.path.join(paths["memory"], "memory.memsw.limit_in_bytes"))
        for ctrl, name, value in limit_files(containment.mode, limits, containment.controllers,
                                             swap):
            write_file(os.path.join(paths.get(ctrl) or paths[""], name), value)
    except CgroupError:
        cg.remove()
        raise
    return cg


def _mkdir_parents(containment: Containment, parent: str) -> None:
    """Recreate a parent cgroup removed since `detect` (an admin's cleanup): on v2 each new level
    must hand the controllers down to its children again."""
    missing = []
    while not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {path}: {exc.strerror}") from exc
        if containment.mode == MODE_V2:
            for ctrl in containment.controllers:
                write_file(os.path.join(path, "cgroup.subtree_control"), f"+{ctrl}")
