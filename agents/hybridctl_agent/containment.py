"""The agent's side of job containment: `detect`, run once at agent start, finds which cgroup
hierarchy this node can use (v1 controller mounts or a cgroup2 tree), creates the parent cgroups,
proves them writable and says in words what cannot be enforced, for `hello`; plus the agent's
housekeeping of job cgroups. Separate from cgroup.py, which every supervisor loads."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Container, Dict, List, Optional, Tuple

from hybridctl_agent.cgroup import (AGENT_PREFIX, CGROUP_PREFIX, MODE_NONE, MODE_V1, MODE_V2,
                                    NO_V2_DEVICES, V1_CONTROLLERS, V2_CONTROLLERS, Cgroup,
                                    CgroupError, Containment, job_paths, read_file, write_file)


@dataclass(frozen=True)
class _Mount:
    fstype: str
    point: str
    root: str
    options: Tuple[str, ...]


def _mounts(mountinfo: str) -> List[_Mount]:
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3:
            continue
        point = lf[4].replace("\\040", " ")
        out.append(_Mount(rf[0], point, lf[3], tuple(rf[2].split(","))))
    return out


def _own_cgroups(text: str) -> Dict[str, str]:
    """controller -> this process's cgroup path from /proc/self/cgroup (v2 under '')."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctrl in parts[1].split(",") if parts[1] else [""]:
            out[ctrl] = parts[2]
    return out


def _under(mount: _Mount, own: str, parent: str) -> str:
    """The directory of `parent` in a hierarchy mounted at `mount`: absolute from the hierarchy
    root, or relative to this process's own cgroup `own`."""
    if parent.startswith("/"):
        rel = parent
    else:
        base = own if mount.root == "/" or not own.startswith(mount.root) else own[len(mount.root):]
        rel = base.rstrip("/") + "/" + parent
    return os.path.normpath(mount.point + "/" + rel.strip("/"))


def _mkdirs(path: str) -> None:
    try:
        os.makedirs(path, 0o755, exist_ok=True)
    except OSError as exc:
        raise CgroupError(f"cannot create {path}: {exc.strerror}") from exc


def _probe(mode: str, dirs: Dict[str, str]) -> List[str]:
    """Create and remove a cgroup under each parent, proving the hierarchy writable; return the
    file names a job cgroup has (in the first hierarchy)."""
    probe = {c: os.path.join(d, f"probe-{os.getpid()}") for c, d in dirs.items()}
    try:
        for path in probe.values():
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                pass
            except OSError as exc:
                raise CgroupError(f"cannot create a cgroup under {os.path.dirname(path)}: "
                                  f"{exc.strerror}") from exc
        return os.listdir(next(iter(probe.values())))
    finally:
        Cgroup(mode, probe).remove()


def _detect_v2(mount: _Mount, own: Dict[str, str], parent: str) -> Containment:
    top = _under(mount, own.get("", "/"), parent)
    _mkdirs(top)
    # Enable the controllers on the way down from the mount point: a child can use only what
    # its parent's subtree_control lists. A level holding processes refuses (EBUSY).
    levels = [top]
    while os.path.normpath(levels[-1]) != os.path.normpath(mount.point):
        levels.append(os.path.dirname(levels[-1]))
    levels.reverse()
    missing: List[str] = []
    for ctrl in V2_CONTROLLERS:
        for level in levels:
            try:
                available = read_file(os.path.join(level, "cgroup.controllers")).split()
            except OSError:
                available = []
            if ctrl not in available:
                missing.append(f"{ctrl} (not available in {level})")
                break
            try:
                write_file(os.path.join(level, "cgroup.subtree_control"), f"+{ctrl}")
            except CgroupError as exc:
                missing.append(f"{ctrl} ({exc})")
                break
    have = tuple(c for c in V2_CONTROLLERS if not any(m.startswith(c + " ") for m in missing))
    dirs = {"": top}
    files = _probe(MODE_V2, dirs)
    notes = [f"not enforced: {', '.join(missing)}"] if missing else []
    if "cgroup.kill" not in files:
        notes.append("no cgroup.kill (kernel < 5.14): kill-all by freeze and SIGKILL")
    notes.append(NO_V2_DEVICES)
    return Containment(MODE_V2, "; ".join(notes), dirs, have)


def _detect_v1(mounts: Dict[str, _Mount], own: Dict[str, str], parent: str) -> Containment:
    dirs: Dict[str, str] = {}
    for ctrl in V1_CONTROLLERS:
        if ctrl in mounts:
            dirs[ctrl] = _under(mounts[ctrl], own.get(ctrl, "/"), parent)
            _mkdirs(dirs[ctrl])
    _probe(MODE_V1, dirs)
    missing = [c for c in V1_CONTROLLERS if c not in dirs]
    reason = ""
    if missing:
        reason = f"no v1 {', '.join(missing)} controller: " + ", ".join(
            {"freezer": "kill-all by repeated SIGKILL", "memory": "no memory limit",
             "cpu": "no CPU limit", "pids": "no process-count limit",
             "devices": "no GPU device rules"}[c] for c in missing)
    return Containment(MODE_V1, reason, dirs, tuple(dirs))


def detect(*, enabled: bool = True, root: Optional[str] = None, parent: str = "/hybridctl",
           mountinfo: Optional[str] = None, own: Optional[str] = None,
           euid: Optional[int] = None) -> Containment:
    """How jobs can be contained here, with the parent cgroups created and proven writable.
    `root` names a cgroup mount to use (a cgroup2 mount point, or a directory holding v1
    controller mounts); None picks v1 controllers where mounted (hybrid hosts), else cgroup2."""
    if not enabled:
        return Containment(MODE_NONE, "disabled in the agent config (cgroup_enable: false); "
                                      "jobs are stopped by process group only")
    if (os.geteuid() if euid is None else euid) != 0:
        return Containment(MODE_NONE, "rootless agent: creating cgroups needs root; jobs are "
                                      "stopped by process group only (setsid children escape)")
    try:
        mountinfo = read_file("/proc/self/mountinfo") if mountinfo is None else mountinfo
        own_map = _own_cgroups(read_file("/proc/self/cgroup") if own is None else own)
    except OSError as exc:
        return Containment(MODE_NONE, f"cannot read /proc/self: {exc.strerror}")
    mounts = _mounts(mountinfo)
    if root is not None:
        root = os.path.normpath(root)
        mounts = [m for m in mounts if os.path.normpath(m.point) == root
                  or os.path.dirname(os.path.normpath(m.point)) == root]
    v1 = {}
    for m in mounts:
        if m.fstype == "cgroup":
            for ctrl in V1_CONTROLLERS:
                if ctrl in m.options and ctrl not in v1:
                    v1[ctrl] = m
    v2 = [m for m in mounts if m.fstype == "cgroup2"]
    try:
        if v1:
            return _detect_v1(v1, own_map, parent)
        if v2:
            best = next((m for m in v2 if m.point == "/sys/fs/cgroup"), v2[0])
            return _detect_v2(best, own_map, parent)
    except CgroupError as exc:
        return Containment(MODE_NONE, f"{exc}; jobs are stopped by process group only")
    where = f" at {root}" if root else ""
    return Containment(MODE_NONE, f"no cgroup filesystem mounted{where}; jobs are stopped by "
                                  "process group only")


# ---- the agent's housekeeping -------------------------------------------------------------------


def agent_parent(parent: str, state_dir: str) -> str:
    """`<parent>/agent-<id>`: one subtree per agent (by state directory), so two agents on one
    host (tests, the demo, several simulated nodes) never share, and so never kill, a job
    cgroup of the same key."""
    digest = hashlib.sha1(os.path.abspath(state_dir).encode()).hexdigest()[:10]
    return f"{parent.rstrip('/')}/{AGENT_PREFIX}{digest}"


def job_of(pid: int, agent_dir: str, keys: Container[str]) -> Optional[str]:
    """The key of the job whose cgroup (`<agent_dir>/job-<key>`, any hierarchy) holds `pid`."""
    try:
        text = read_file(f"/proc/{pid}/cgroup")
    except OSError:
        return None
    for line in text.splitlines():
        # `.../<agent_dir>/job-<key>`, or one level below it (an image job's container or conmon)
        for parts in (line.rsplit("/", 2), line.rsplit("/", 3)[:3]):
            if len(parts) == 3 and parts[1] == agent_dir and parts[2].startswith(CGROUP_PREFIX):
                key = parts[2][len(CGROUP_PREFIX):]
                if key in keys:
                    return key
    return None


def remove_parents(containment: Containment) -> None:
    """At agent exit: remove this agent's (empty) parent cgroups; one still holding a running
    job's cgroup stays, as the job does. Image jobs' podman made the same path in the other
    hierarchies (blkio, cpuset, ...): removed there too."""
    for path in containment.dirs.values():
        try:
            os.rmdir(path)
        except OSError:
            pass
    if containment.dirs:
        from hybridctl_agent.binds import BindRefused, cgroup_parent, remove_leftovers

        try:
            remove_leftovers(cgroup_parent(containment.dirs), below=False)
        except (BindRefused, OSError):
            pass


def open_job(containment: Containment, key: str) -> Optional[Cgroup]:
    """The cgroup of job `key` as it exists now (None without cgroups), e.g. to kill what a
    dead supervisor left."""
    if containment.mode == MODE_NONE:
        return None
    paths = {c: p for c, p in job_paths(containment, key).items() if os.path.isdir(p)}
    return Cgroup(containment.mode, paths) if paths else None


def sweep(containment: Containment, running: Container[str]) -> None:
    """At agent start: remove the empty job cgroups of jobs not running (their supervisor was
    killed with the agent's state, e.g. by `kill -9` of everything)."""
    for parent in containment.dirs.values():
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            if name.startswith(CGROUP_PREFIX) and name[len(CGROUP_PREFIX):] not in running:
                try:
                    os.rmdir(os.path.join(parent, name))
                except OSError:
                    pass  # not empty: something of that job still runs; leave it in sight
