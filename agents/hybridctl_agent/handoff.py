"""The push side of stage.py: staged files into the job's directory. Whole files are handed to the
job's child (renamed into a handoff directory of the job's user inside staging, then by the child
into place); patches are written into a temp file the child opened. Either way a temp name first,
then `fdio.replace`. Stdlib only (plus sibling agent modules): it runs under `python -S`, in the
process stage.py starts for one transfer."""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any, Dict, List, Optional, Tuple

from hybridctl_agent.chunks import patch_one, send_base
from hybridctl_agent.fdio import (DIR_FLAGS, PART, READ_FLAGS, Refused, as_job, copy_sparse, create_file,
                                  drop_part, ensure_target, open_dir, parts, recv, replace, send, temp_for, walk_to)


def _job_push(sock: socket.socket, top: int, handoff: int) -> None:
    """For each file the parent names: as the job (directories on the way made, links refused),
    either move a whole staged file in from `handoff` (`take`: its name there), or create a temp
    file, hand its fd over and, once filled, put it in place. Either way a temp name first, then
    `fdio.replace`: the file appears whole, and a link at its name is replaced, never followed."""
    while True:
        msg, _ = recv(sock)
        if msg.get("done"):
            return
        rel = msg["rel"]
        if "take" in msg:
            send(sock, _take(top, handoff, rel, str(msg["take"])))
            continue
        try:
            dfd, fd, name = create_file(top, rel, int(msg.get("mode", 0o644)))
        except (OSError, Refused) as exc:
            send(sock, {"rel": rel, "error": str(exc)})
            continue
        try:
            send(sock, {"rel": rel}, fd)
            if msg.get("base"):  # a patch: the job's current file, read as the job, never through a link
                send_base(sock, dfd, name)
            ack, _ = recv(sock)
            tmp = f".{name}{PART}"
            if not ack.get("ok"):
                os.unlink(tmp, dir_fd=dfd)
                continue
            try:
                replace(dfd, tmp, name)
            except OSError as exc:
                os.unlink(tmp, dir_fd=dfd)
                send(sock, {"rel": rel, "error": f"cannot put it in place: {exc.strerror}"})
                continue
            send(sock, _written(rel, os.fstat(fd)))
        finally:
            os.close(fd)
            os.close(dfd)


def _written(rel: str, st: os.stat_result) -> Dict[str, Any]:
    return {"rel": rel, "size": st.st_size, "mtime": st.st_mtime_ns, "ino": st.st_ino, "ctime": st.st_ctime_ns}


def _take(top: int, handoff: int, rel: str, take: str) -> Dict[str, Any]:
    """The job's side of a whole file: rename `take` from the handoff directory (the job's own,
    reached only through the fd the parent left it) to a temp name beside `rel`, then into place.
    Across filesystems (EXDEV) the job copies its own file instead. No byte is copied otherwise:
    a gigabyte checkpoint lands in the time of two renames."""
    try:
        dfd, tmp, final = temp_for(top, rel)
    except (OSError, Refused) as exc:
        return {"rel": rel, "error": str(exc)}
    try:
        drop_part(dfd, tmp)
        try:
            os.rename(take, tmp, src_dir_fd=handoff, dst_dir_fd=dfd)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_own(handoff, take, dfd, tmp)
        fd = os.open(tmp, READ_FLAGS, dir_fd=dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            replace(dfd, tmp, final)
            return _written(rel, os.fstat(fd))
        finally:
            os.close(fd)
    except OSError as exc:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        return {"rel": rel, "error": f"cannot put it in place: {exc.strerror or exc}"}
    finally:
        os.close(dfd)


def _copy_own(handoff: int, take: str, dfd: int, tmp: str) -> None:
    """As the job: copy its own handed-over file into `tmp` (another filesystem than staging)."""
    src = os.open(take, READ_FLAGS, dir_fd=handoff)
    try:
        st = os.fstat(src)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, st.st_mode & 0o755,
                      dir_fd=dfd)
        try:
            copy_sparse(src, out, st.st_size)
        finally:
            os.close(out)
    finally:
        os.close(src)


HANDOFF = ".hybridctl-handoff"
"""The directory (its name made unique), inside a push's staging directory, from which the job's
child takes whole files."""


def _hand_over(staging: int, present: Dict[str, Tuple[int, int]], want: Dict[str, Any], patches: Dict[str, Any],
               uid: int, gid: int) -> Tuple[int, Dict[str, str]]:
    """Give the whole staged files of `want` to the job: each is opened here (in the agent's own
    staging directory, which no job can reach or change), checked (a regular file of the size
    wanted, one link), chowned to the job and given its mode through that fd, then renamed into
    `HANDOFF`, a directory of the job's user inside the staging directory. The job's child gets
    `HANDOFF` only as an inherited fd and renames from it (`_take`); nothing here ever touches a
    path the job controls. Returns (the fd of HANDOFF, {path: name in it})."""
    for n in range(1000):  # a name no staged path uses (a job may name a file anything)
        name = f"{HANDOFF}{n or ''}"
        try:
            os.mkdir(name, 0o700, dir_fd=staging)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(errno.EEXIST, "no free name for the handoff directory")
    hfd = open_dir(staging, name, create=False)
    taken: Dict[str, str] = {}
    root = os.geteuid() == 0
    for i, rel in enumerate(sorted(want)):
        if rel in patches or present.get(rel, (None, 0))[0] != int(want[rel]):
            continue  # a patch, or not as wanted (the copy path reports it)
        try:
            names = parts(rel)
            dfd = walk_to(staging, names[:-1], create=False)
        except (OSError, Refused):
            continue
        try:
            fd = os.open(names[-1], READ_FLAGS, dir_fd=dfd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != int(want[rel]):
                    continue
                if root:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, (present[rel][1] | 0o600) & 0o755)
                os.rename(names[-1], str(i), src_dir_fd=dfd, dst_dir_fd=hfd)
                taken[rel] = str(i)
            finally:
                os.close(fd)
        except OSError:
            continue  # left where it is: the copy path takes it
        finally:
            os.close(dfd)
    if root:
        os.fchown(hfd, uid, gid)
    return hfd, taken


def _staged_files(staging: int) -> Dict[str, Tuple[int, int]]:
    """Regular files under the staging directory: {rel: (size, mode)}."""
    out: Dict[str, Tuple[int, int]] = {}
    stack: List[Tuple[int, str]] = [(os.dup(staging), "")]
    while stack:
        dfd, prefix = stack.pop()
        try:
            with os.scandir(dfd) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        stack.append((open_dir(dfd, e.name, create=False), prefix + e.name + "/"))
                    elif stat.S_ISREG(st.st_mode):
                        out[prefix + e.name] = (st.st_size, st.st_mode & 0o777)
        finally:
            os.close(dfd)
    return out


def _root_push(sock: socket.socket, staging: int, want: Dict[str, Any], present: Dict[str, Tuple[int, int]],
               taken: Dict[str, str], patch: Optional[Dict[str, Any]] = None,
               bases: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    written: Dict[str, List[int]] = {}
    idents: Dict[str, List[int]] = {}
    errors: List[str] = []
    patches = (patch or {}).get("files") or {}
    for rel in sorted(want):
        size = int(want[rel])
        if rel in taken:  # handed over: the job's child renames it into place
            send(sock, {"rel": rel, "take": taken[rel]})
            msg, _ = recv(sock)
            if "error" in msg:
                errors.append(f"{rel}: {msg['error']}")
            elif int(msg["size"]) != size:
                errors.append(f"{rel}: {msg['size']} bytes put in place, expected {size}")
            else:
                written[rel] = [int(msg["size"]), int(msg["mtime"])]
                idents[rel] = [int(msg["size"]), int(msg["mtime"]), int(msg["ino"]), int(msg["ctime"])]
            continue
        if present.get(rel, (None, 0))[0] != size:
            errors.append(f"{rel}: staged {present.get(rel, (None,))[0]} bytes, expected {size}")
            continue
        p = patches.get(rel)
        send(sock, {"rel": rel, "mode": (present[rel][1] | 0o600) & 0o755, **({"base": True} if p else {})})
        msg, fd = recv(sock)
        if "error" in msg or fd is None:
            errors.append(f"{rel}: {msg.get('error', 'no file')}")
            continue
        base = None
        ok = False
        try:
            if p:
                bmsg, base = recv(sock)
                if base is None:
                    raise OSError(f"no current copy to patch: {bmsg.get('error', 'not there')}")
            names = parts(rel)
            dfd = walk_to(staging, names[:-1], create=False)
            try:
                src = os.open(names[-1], READ_FLAGS, dir_fd=dfd)
            finally:
                os.close(dfd)
            try:
                if p:
                    patch_one(base, src, fd, p, int(patch["chunk"]), (bases or {}).get(rel))
                else:
                    copy_sparse(src, fd, size)
                ok = True
            finally:
                os.close(src)
        except (OSError, Refused) as exc:
            errors.append(f"{rel}: {exc}")
        finally:
            os.close(fd)
            if base is not None:
                os.close(base)
        send(sock, {"ok": ok})
        if ok:
            msg, _ = recv(sock)
            if "error" in msg:
                errors.append(f"{rel}: {msg['error']}")
            else:
                written[rel] = [int(msg["size"]), int(msg["mtime"])]
                idents[rel] = [int(msg["size"]), int(msg["mtime"]), int(msg.get("ino", -1)), int(msg.get("ctime", -1))]
    send(sock, {"done": True})
    return {"written": written, "errors": errors, "idents": idents}


def push(req: Dict[str, Any]) -> Dict[str, Any]:
    """`{op: push, parent, name, uid, gid, groups, staging, files: {rel: size}, patch?, bases?}`;
    `patch` ({chunk, files: {rel: {size, sent, hashes}}}): the staged file holds only the chunks
    `sent`, written over the job's current copy (whose hashing `bases[rel]` describes)."""
    top = ensure_target(req["parent"], req["name"], int(req["uid"]), int(req["gid"]))
    try:
        if not req.get("files"):
            return {"written": {}, "errors": []}
        staging = os.open(req["staging"], DIR_FLAGS)
        handoff = -1
        try:
            present = _staged_files(staging)
            patches = (req.get("patch") or {}).get("files") or {}
            handoff, taken = _hand_over(staging, present, req["files"], patches, int(req["uid"]), int(req["gid"]))
            return as_job(req, lambda s: _job_push(s, top, handoff),
                          lambda s: _root_push(s, staging, req["files"], present, taken, req.get("patch"),
                                               req.get("bases")))
        finally:
            os.close(staging)
            if handoff >= 0:
                os.close(handoff)
    finally:
        os.close(top)
