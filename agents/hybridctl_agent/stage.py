"""The process that moves a job's files across the trust boundary, one transfer per process.

Started by the agent (`python -S -c "from hybridctl_agent.stage import main; main()"`), it reads one
request (JSON) on stdin and writes one answer on stdout. It runs as the agent's user and forks a
child that drops to the job's uid, gid and groups (when the agent is root). The child alone touches
paths inside the job's directory: every one is opened relative to a directory fd with O_NOFOLLOW, so
a link the job planted is refused, never followed, and what it may read or write is what the job
itself may. It hands the files it opened to the parent over a socketpair (SCM_RIGHTS); the parent
only reads and writes through those file descriptors and in the staging directory, which the job
cannot reach. A fresh single-threaded process may fork safely, where the agent (asyncio plus
executor threads) should not, and it needs no interpreter readable by the job's user.

Ops: `pull` (list the job's directory, copy files that differ from `have` into staging), `push`
(staged files into the job's directory: whole files handed to the job's child, which renames them
in; patches written into a temp file; either way a temp name, then `fdio.replace`; in handoff.py),
`unpack` (extract a staged tar of a workdir into the job's directory). Sparse files keep their holes
and their exact size.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from hybridctl_agent.chunks import MAX_CHUNKS, chunk_count, stage_chunked
from hybridctl_agent.fdio import (CHUNK, DIR_FLAGS, PART, READ_FLAGS, Refused, as_job, copy_sparse, create_file,
                                  ensure_target, login_groups, open_dir, open_target, parts, recv, send, walk_to)
from hybridctl_agent.handoff import push

# ---- pull: the job's files into staging ----------------------------------------------------------


def _job_pull(sock: socket.socket, top: int, have: Dict[str, Any], copy: bool, max_bytes: Optional[int],
              hash_all: bool = False) -> None:
    """List the job's directory below `top` (regular files only, links and the like skipped) and
    hand over an fd of each file that differs from `have` (with `hash_all`: of every file, to be
    hashed, not copied), opened as the job with O_NOFOLLOW."""
    budget = max_bytes
    stack: List[Tuple[int, str]] = [(os.dup(top), "")]
    while stack:
        dfd, prefix = stack.pop()
        try:
            with os.scandir(dfd) as it:
                entries = sorted(it, key=lambda e: e.name)
            for e in entries:
                try:
                    e.name.encode("utf-8")
                except UnicodeEncodeError:
                    continue  # a name the controller could not store as it is
                if e.name.endswith(PART):
                    continue
                rel = prefix + e.name
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    try:
                        stack.append((open_dir(dfd, e.name, create=False), rel + "/"))
                    except (OSError, Refused):
                        continue  # swapped for a link or gone since the listing: skipped
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                entry = [st.st_size, st.st_mtime_ns]
                if not hash_all and (not copy or have.get(rel) == entry):
                    send(sock, {"rel": rel, "size": st.st_size, "mtime": st.st_mtime_ns})
                    continue
                try:
                    fd = os.open(e.name, READ_FLAGS, dir_fd=dfd)
                except OSError:
                    continue  # replaced by a link, or gone: the next sync sees what is there
                try:
                    fst = os.fstat(fd)
                    if not stat.S_ISREG(fst.st_mode):
                        continue
                    msg = {"rel": rel, "size": fst.st_size, "mtime": fst.st_mtime_ns}
                    if budget is not None and fst.st_size > budget:
                        send(sock, dict(msg, skipped=True))
                        continue
                    if budget is not None:
                        budget -= fst.st_size
                    send(sock, msg, fd)
                finally:
                    os.close(fd)
                recv(sock)  # the parent's ack: one fd in flight at a time
        finally:
            os.close(dfd)
    send(sock, {"done": True})


def _root_pull(sock: socket.socket, staging: int, chunks: Optional[Dict[str, Any]] = None,
               cached: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    files: Dict[str, List[int]] = {}
    staged: Dict[str, List[int]] = {}
    answer: Dict[str, Any] = {"files": files, "staged": staged, "truncated": False, "skipped": []}
    if chunks is not None:
        answer.update(chunks={}, hashed={})
    while True:
        msg, fd = recv(sock)
        if msg.get("done"):
            return answer
        if "error" in msg:
            answer["error"] = msg["error"]
            return answer
        rel, size, mtime = msg["rel"], int(msg["size"]), int(msg["mtime"])
        files[rel] = [size, mtime]
        if msg.get("skipped"):
            answer["truncated"] = True
        if fd is None:
            continue
        if chunks is not None and chunk_count(size, int(chunks["size"])) <= MAX_CHUNKS:
            try:
                stage_chunked(fd, staging, rel, size, mtime, chunks, (cached or {}).get(rel), answer)
            except (OSError, Refused) as exc:
                answer["skipped"].append(f"{rel}: {exc}")
            finally:
                os.close(fd)
                send(sock, {"ack": True})
            continue
        try:
            if _stage_one(fd, staging, rel, size, mtime):
                staged[rel] = [size, mtime]
            else:
                answer["skipped"].append(rel)
        except (OSError, Refused) as exc:
            answer["skipped"].append(f"{rel}: {exc}")
        finally:
            os.close(fd)
            send(sock, {"ack": True})


def _stage_one(src: int, staging: int, rel: str, size: int, mtime: int) -> bool:
    """Copy the job's open file into staging; False (and nothing left) when it was not the file
    listed or changed while being copied (written in place: the next sync takes it)."""
    st = os.fstat(src)
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (size, mtime):
        return False
    names = parts(rel)
    dfd = walk_to(staging, names[:-1], create=True)
    try:
        out = os.open(names[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                      dir_fd=dfd)
        try:
            copy_sparse(src, out, size)
        finally:
            os.close(out)
        st = os.fstat(src)
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            os.unlink(names[-1], dir_fd=dfd)
            return False
        return True
    finally:
        os.close(dfd)


def pull(req: Dict[str, Any]) -> Dict[str, Any]:
    """`{op: pull, parent, name, staging, have, copy, max_bytes, chunks?, cached?}`: the job's
    directory is `parent/name` (parent is the agent's); its owner is who the copy runs as. `chunks`:
    see chunks.stage_chunked (without `copy`, every file is hashed and nothing is staged)."""
    top, st = open_target(req["parent"], req["name"])
    if top is None:
        return {"files": {}, "staged": {}, "truncated": False, "skipped": [], "chunks": {}, "hashed": {}}
    copy = bool(req.get("copy", True))
    chunks = req.get("chunks")
    staging = os.open(req["staging"], DIR_FLAGS) if copy else -1
    req = dict(req, uid=st.st_uid, gid=st.st_gid, groups=login_groups(st.st_uid, st.st_gid))
    try:
        return as_job(req, lambda s: _job_pull(s, top, req.get("have") or {}, copy, req.get("max_bytes"),
                                               hash_all=chunks is not None and not copy),
                      lambda s: _root_pull(s, staging, chunks, req.get("cached")))
    finally:
        os.close(top)
        if staging >= 0:
            os.close(staging)


# ---- unpack: a staged tar of a workdir into the job's directory ----------------------------------


def _job_unpack(sock: socket.socket, top: int, tar_fd: int) -> None:
    """Extract regular files and directories (links and devices skipped, as a workdir upload always
    did) as the job, each path made relative to `top` with O_NOFOLLOW."""
    import tarfile

    files = total = 0
    skipped: List[str] = []
    with os.fdopen(tar_fd, "rb") as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
        for m in tar:
            name = m.name
            while name.startswith("./"):
                name = name[2:]
            name = name.rstrip("/")
            if name in ("", "."):
                continue
            try:
                names = parts(name)
                if m.isdir():
                    os.close(walk_to(top, names, create=True))
                    continue
                if not m.isreg():
                    skipped.append(name)
                    continue
                dfd, fd, final = create_file(top, name, (m.mode & 0o755) | 0o600)
                try:
                    src = tar.extractfile(m)
                    assert src is not None
                    while True:
                        chunk = src.read(CHUNK)
                        if not chunk:
                            break
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                    os.utime(fd, (m.mtime, m.mtime))
                    os.rename(f".{final}{PART}", final, src_dir_fd=dfd, dst_dir_fd=dfd)
                finally:
                    os.close(fd)
                    os.close(dfd)
                files += 1
                total += m.size
            except (OSError, Refused) as exc:
                skipped.append(f"{name}: {exc}")
    send(sock, {"files": files, "bytes": total, "skipped": skipped[:50]})


def unpack(req: Dict[str, Any]) -> Dict[str, Any]:
    """`{op: unpack, parent, name, uid, gid, groups, staging, tar}`: `staging/tar` (the agent's)
    is opened here and read by the job's child through the inherited fd."""
    import tarfile  # noqa: F401 - imported before the child drops its rights

    top = ensure_target(req["parent"], req["name"], int(req["uid"]), int(req["gid"]))
    try:
        staging = os.open(req["staging"], DIR_FLAGS)
        try:
            tar_fd = os.open(req["tar"], READ_FLAGS, dir_fd=staging)
        finally:
            os.close(staging)

        def root_side(sock: socket.socket) -> Dict[str, Any]:
            os.close(tar_fd)
            msg, _ = recv(sock)
            return msg

        return as_job(req, lambda s: _job_unpack(s, top, tar_fd), root_side)
    finally:
        os.close(top)


OPS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {"pull": pull, "push": push, "unpack": unpack}


def main() -> int:
    try:
        req = json.loads(sys.stdin.read())
        answer = OPS[req["op"]](req)
    except (OSError, Refused, EOFError, KeyError, ValueError) as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
