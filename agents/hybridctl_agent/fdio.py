"""Safe file access for transfers of a job's files (used by stage.py): paths opened one component
at a time relative to directory fds with O_NOFOLLOW, sparse-aware copies between file
descriptors, and the socketpair over which the job's child hands its file descriptors to the
parent. Stdlib only: stage.py runs under `python -S`."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import sys
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
"""O_NONBLOCK: a FIFO planted where a file was listed must not hang the open; fstat refuses it."""
PART = ".hybridctl-part"
"""Suffix of a file being written into a job's directory (renamed into place when whole)."""
_MSG = 1 << 16
CHUNK = 1 << 20


class Refused(Exception):
    """A path in the job's directory that must not be used (a link or non-directory on the way)."""


# ---- copying -------------------------------------------------------------------------------------


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    """Copy `length` bytes at `offset` (same offset in both files), kernel-side where possible."""
    fallback = False
    while length > 0:
        n = 0
        if not fallback:
            try:
                n = os.copy_file_range(src, dst, min(length, 1 << 30), offset, offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
                    raise
                fallback = True
                continue
        else:
            data = os.pread(src, min(length, CHUNK), offset)
            n = len(data)
            view = memoryview(data)
            while view:
                view = view[os.pwrite(dst, view, offset + n - len(view)):]
        if n == 0:
            raise OSError(errno.EIO, "the file shrank while it was copied")
        offset += n
        length -= n


def copy_sparse(src: int, dst: int, size: int) -> int:
    """Copy the first `size` bytes of `src` into `dst`, skipping holes (SEEK_DATA/SEEK_HOLE), then
    set `dst`'s size to exactly `size`: a file that ends in a hole keeps its length. Returns the
    bytes of data copied."""
    pos = copied = 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to the end
                break
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            start = pos  # no SEEK_DATA on this filesystem: copy densely
        if start >= size:
            break
        try:
            end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        except OSError:
            end = size
        _copy_range(src, dst, start, end - start)
        copied += end - start
        pos = end
    os.ftruncate(dst, size)
    return copied


# ---- paths relative to directory fds -------------------------------------------------------------


def parts(rel: str) -> List[str]:
    """The components of a relative path; Refused for absolute paths, '.', '..' or empty parts."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\0" in rel:
        raise Refused(f"{rel!r} is not a relative path")
    out = rel.split("/")
    if any(p in ("", ".", "..") for p in out):
        raise Refused(f"{rel!r} is not a normalised relative path")
    return out


def open_dir(parent: int, name: str, create: bool, mode: int = 0o755) -> int:
    """Open directory `name` in `parent` without following a link (creating it with `mode`, if
    asked). The controller's checkpoint store uses this too (with 0700)."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
        try:
            os.mkdir(name, mode, dir_fd=parent)
        except FileExistsError:
            pass
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Refused(f"{name}: a link or not a directory") from None
        raise


def walk_to(top: int, names: List[str], create: bool, mode: int = 0o755) -> int:
    """A new fd of the directory `names` below `top`, every step O_NOFOLLOW."""
    fd = os.dup(top)
    try:
        for name in names:
            nxt = open_dir(fd, name, create, mode)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def temp_for(top: int, rel: str) -> Tuple[int, str, str]:
    """(directory fd, temp name, final name) of a transfer of `rel` below `top` (directories made
    on the way): the file is written under the temp name, then renamed over the final one."""
    names = parts(rel)
    return walk_to(top, names[:-1], create=True), f".{names[-1]}{PART}", names[-1]


def drop_part(dfd: int, tmp: str) -> None:
    """Remove `tmp` in `dfd`, a leftover of a transfer cut short, if there (unlink never follows)."""
    try:
        os.unlink(tmp, dir_fd=dfd)
    except FileNotFoundError:
        pass


def create_file(top: int, rel: str, mode: int) -> Tuple[int, int, str]:
    """Create a fresh temp file for `rel` below `top` (directories made on the way); return
    (directory fd, file fd, final name). The temp file is renamed over the name once whole."""
    dfd, tmp, final = temp_for(top, rel)
    try:
        drop_part(dfd, tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    except BaseException:
        os.close(dfd)
        raise
    return dfd, fd, final


RENAME_EXCHANGE = 2
"""renameat2(2) flag: swap two names atomically (Linux 3.15; ext4, xfs, btrfs, tmpfs)."""
_renameat2: Any = None


def _libc_renameat2() -> Any:
    """libc's renameat2, or False where there is none (musl before 1.2.4, glibc before 2.28)."""
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (ImportError, OSError, AttributeError):
            _renameat2 = False
    return _renameat2


def exchange(src_dir: int, src: str, dst_dir: int, dst: str) -> bool:
    """Swap `src` and `dst` (names in two directory fds) atomically; False where the kernel,
    libc or filesystem cannot (then nothing changed). Neither name is followed if it is a link.
    Raises FileNotFoundError when either name does not exist."""
    fn = _libc_renameat2()
    if not fn:
        return False
    import ctypes

    if fn(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


def replace(dfd: int, tmp: str, name: str) -> None:
    """Put the whole file `tmp` in place of `name` (both in directory `dfd`), as rename would, but
    without ext4's flush of the new file's data inside a rename over an existing name (its
    `auto_da_alloc` heuristic: 0.39 s per 512 MB measured): the two names are swapped, then the
    old file, now at `tmp`, is unlinked. Between the two, `name` already holds the new file and
    `tmp` (a temp name, never listed) the old one. A link at `name` is replaced, never followed."""
    try:
        if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
            raise IsADirectoryError(errno.EISDIR, "a directory is in the way", name)  # as rename would
        swapped = exchange(dfd, tmp, dfd, name)
    except FileNotFoundError:
        swapped = False  # nothing at `name` yet: a plain rename has nothing to flush for
    if not swapped:
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        return
    os.unlink(tmp, dir_fd=dfd)


# ---- the socketpair between the parent and the job's child --------------------------------------


def send(sock: socket.socket, msg: Dict[str, Any], fd: Optional[int] = None) -> None:
    data = json.dumps(msg).encode()
    if fd is None:
        sock.send(data)
    else:
        socket.send_fds(sock, [data], [fd])


def recv(sock: socket.socket) -> Tuple[Dict[str, Any], Optional[int]]:
    data, fds, _flags, _addr = socket.recv_fds(sock, _MSG, 4)
    for extra in fds[1:]:
        os.close(extra)
    if not data:
        raise EOFError("the other side of the transfer exited")
    return json.loads(data), (fds[0] if fds else None)


def drop_to(uid: int, gid: int, groups: List[int]) -> None:
    """Become the job's user for good (a no-op when already running as it)."""
    if os.geteuid() == 0 and uid != 0:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        if os.geteuid() != uid or os.getuid() != uid:
            raise OSError(errno.EPERM, f"could not switch to uid {uid}")


def as_job(req: Dict[str, Any], job_side: Callable[[socket.socket], None],
           root_side: Callable[[socket.socket], Dict[str, Any]]) -> Dict[str, Any]:
    """Run `job_side` in a child that dropped to the job's identity and `root_side` here, joined by
    a SOCK_SEQPACKET socketpair; return root_side's answer (plus the child's error, if any)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        _child(mine, theirs, req, job_side)
    theirs.close()
    try:
        answer = root_side(mine)
    finally:
        mine.close()
        _pid, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 and "error" not in answer:
        answer["error"] = "the transfer process as the job's user failed"
    return answer


def _child(mine: socket.socket, theirs: socket.socket, req: Dict[str, Any],
           job_side: Callable[[socket.socket], None]) -> NoReturn:
    code = 1
    try:
        mine.close()
        drop_to(int(req["uid"]), int(req["gid"]), [int(g) for g in req.get("groups") or []])
        job_side(theirs)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - report, never return into the parent's code
        try:
            send(theirs, {"error": f"{type(exc).__name__}: {exc}"})
        except OSError:
            pass
    finally:
        os._exit(code)


def login_groups(uid: int, gid: int) -> List[int]:
    """The groups a process of `uid` gets at login (what the job's supervisor gives the job)."""
    import pwd

    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except (KeyError, OSError):
        return [gid]


def open_target(parent: str, name: str) -> Tuple[Optional[int], Any]:
    """The job's directory `parent/name` (parent belongs to the agent, so `name` is what the agent
    made it: a directory, never a link) and its stat; (None, None) when it does not exist."""
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if os.path.isdir(parent) else None
    if pfd is None:
        return None, None
    try:
        fd = open_dir(pfd, name, create=False)
    except FileNotFoundError:
        return None, None
    finally:
        os.close(pfd)
    return fd, os.fstat(fd)


def ensure_target(parent: str, name: str, uid: int, gid: int) -> int:
    """The job's directory `parent/name`, made (0700, owned by the job) if missing. `parent`
    belongs to the agent: nobody else can put a link at `name`. A directory owned by another
    non-root user is refused."""
    os.makedirs(parent, mode=0o755, exist_ok=True)
    os.chmod(parent, 0o755)  # whatever the umask: each job must reach its own directory in it
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            pass
        fd = open_dir(pfd, name, create=False)
    finally:
        os.close(pfd)
    st = os.fstat(fd)
    if st.st_uid != uid and os.geteuid() == 0:
        if st.st_uid != 0:
            os.close(fd)
            raise Refused(f"{parent}/{name} belongs to uid {st.st_uid}, not to the job's uid {uid}")
        os.fchown(fd, uid, gid)  # made by the agent (or an older version of it) before the job ran
    return fd
