"""What of the host an image job's container is given (container.py): directories, through
`bind_root`, which checks a path for the job's user with dir fds, never following a link; the
user's own file_mounts link directory (`cache_links`, never the shared `objects/`); and its
cgroup parent, the job's own cgroup. Stdlib only (the supervisor imports it)."""

from __future__ import annotations

import os
import pwd
import stat
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple


class BindRefused(Exception):
    """Not given to the container; the message names the path and what failed."""


def _homes() -> set:
    try:
        return {os.path.normpath(p.pw_dir) for p in pwd.getpwall() if p.pw_dir}
    except OSError:
        return set()


def _may(st: os.stat_result, uid: int, gids: Iterable[int], bits: int) -> bool:
    """Whether `uid` (no capabilities) has permission `bits` (r=4, w=2, x=1) on `st`."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return (st.st_mode >> 6) & bits == bits
    if st.st_gid in gids:
        return (st.st_mode >> 3) & bits == bits
    return st.st_mode & bits == bits


def bind_root(path: str, uid: int, gids: Sequence[int], homes: Optional[set] = None) -> int:
    """An O_PATH fd of directory `path`, fit to be bound into the job's container: absolute,
    no account's home and not '/', every component reached from '/' through dir fds without
    following a link (a link anywhere is refused: the user could swap it), each ancestor
    searchable by the job's user, and the directory itself readable and searchable by it.
    BindRefused names the path and the component that failed. The caller closes the fd."""
    norm = os.path.normpath(path) if isinstance(path, str) else ""
    if not norm.startswith("/") or norm != (path.rstrip("/") or "/") or "\0" in norm:
        raise BindRefused(f"{path!r} is not a plain absolute path")
    if ":" in norm:
        raise BindRefused(f"{path!r} holds a ':', which podman's -v cannot carry")
    if norm == "/" or norm in (_homes() if homes is None else homes):
        raise BindRefused(f"{path} is '/' or an account's home directory, which is never bound whole")
    gids = tuple(gids)
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        where = ""
        for part in norm.strip("/").split("/"):
            st = os.fstat(fd)
            if not _may(st, uid, gids, 1):
                raise BindRefused(f"{path}: uid {uid} cannot search {where or '/'}")
            where += "/" + part
            try:
                nfd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                raise BindRefused(f"{path}: cannot open {where}: {exc.strerror}") from None
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                raise BindRefused(f"{path}: {where} is a symbolic link, which is never followed")
            if not stat.S_ISDIR(st.st_mode):
                raise BindRefused(f"{path}: {where} is not a directory")
        if not _may(os.fstat(fd), uid, gids, 5):
            raise BindRefused(f"{path}: uid {uid} cannot read and search it")
        return fd
    except BaseException:
        os.close(fd)
        raise


def cache_links(state_dir: str, uid: int) -> Optional[Tuple[str, int]]:
    """(path, O_PATH fd) of the job user's own cache directory `<state_dir>/cache/users/<uid>`
    (cache.ContentCache.grant), which an image job with file_mounts needs bound read-only at the
    same path for its mount links to resolve; None where the user has none. Never `objects/`,
    which holds every user's data. Walked from the agent's state directory through dir fds
    without following a link; BindRefused where a component is not the agent's directory."""
    path = os.path.join(os.path.normpath(state_dir), "cache", "users", str(int(uid)))
    try:
        fd = os.open(os.path.normpath(state_dir), os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # refused (launch_failed), never an error that kills the supervisor
        raise BindRefused(f"{path}: cannot open the state directory {state_dir}: {exc.strerror}") from None
    try:
        for part in ("cache", "users", str(int(uid))):
            try:
                nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                os.close(fd)
                return None
            except OSError as exc:
                raise BindRefused(f"{path}: cannot open {part}: {exc.strerror}") from None
            os.close(fd)
            fd = nfd
            try:
                owner = os.fstat(fd).st_uid
            except OSError as exc:
                raise BindRefused(f"{path}: cannot stat {part}: {exc.strerror}") from None
            if owner != os.geteuid():
                raise BindRefused(f"{path}: {part} is not the agent's")
        return path, fd
    except BaseException:
        os.close(fd)
        raise


# ---- cgroup parent ------------------------------------------------------------------------------


def _cgroup_mounts() -> List[Tuple[str, str]]:
    """(mount point, fstype) of every cgroup filesystem, longest point first."""
    out = []
    with open("/proc/self/mountinfo", "rb") as fh:
        for line in fh.read().decode(errors="replace").splitlines():
            left, sep, right = line.partition(" - ")
            if sep and right.split()[0] in ("cgroup", "cgroup2"):
                out.append((left.split()[4].replace("\\040", " "), right.split()[0]))
    return sorted(out, key=lambda m: -len(m[0]))


def cgroup_parent(paths: Mapping[str, str]) -> str:
    """The job cgroup's path inside its hierarchies (what `--cgroup-parent` names). Every
    hierarchy must hold it at the same path, or podman's cgroup would not sit under it."""
    mounts = _cgroup_mounts()
    rels = set()
    for path in paths.values():
        point = next((p for p, _ in mounts if path == p or path.startswith(p.rstrip("/") + "/")), None)
        if point is None:
            raise BindRefused(f"the job's cgroup {path} is on no cgroup mount")
        rels.add("/" + path[len(point):].strip("/"))
    if len(rels) != 1:
        raise BindRefused(f"the job's cgroup sits at different paths per hierarchy ({sorted(rels)}); "
                             "podman's --cgroup-parent needs one")
    return rels.pop()


def remove_leftovers(rel: str, below: bool = True) -> None:
    """rmdir, deepest first, what podman made at (and, with `below`, under) the job's cgroup path
    in every hierarchy (`conmon`, `libpod-<id>` of a container whose conmon was killed, and the
    path itself in hierarchies the agent does not use); non-empty or missing ones stay."""
    for point, _ in _cgroup_mounts():
        top = os.path.join(point, rel.strip("/"))
        for d in [d for d, _, _ in os.walk(top, topdown=False)] if below else [top]:
            try:
                os.rmdir(d)
            except OSError:
                pass
