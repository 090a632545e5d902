"""Chunked moves of a job's checkpoint files (issue 15): fixed-size chunks named by their SHA-256,
hashed on a few threads, staged or patched one chunk at a time. Used by stage.py (stdlib only: it
runs under `python -S`) and by the controller's store (control/checkpoints.py)."""

from __future__ import annotations

import errno
import os
import stat
import socket
from typing import Any, Dict, List, Optional

from hybridctl_agent.fdio import READ_FLAGS, copy_sparse, parts, send, walk_to

MIN_CHUNK = 1 << 16
MAX_CHUNK = 1 << 26
MAX_CHUNKS = 1 << 22
"""A file of more chunks than this (16 TiB at 4 MiB) is moved whole, never hashed."""
HEX_LEN = 64
"""SHA-256, hex: a chunk's name is its content, so what a node claims is checkable."""


def chunk_count(size: int, chunk: int) -> int:
    return (size + chunk - 1) // chunk


def read_at(fd: int, offset: int, length: int) -> bytes:
    """Exactly `length` bytes at `offset` (EIO when the file ended first)."""
    out = bytearray()
    while len(out) < length:
        data = os.pread(fd, length - len(out), offset + len(out))
        if not data:
            raise OSError(errno.EIO, "the file shrank while it was read")
        out += data
    return bytes(out)


def hash_chunks(fd: int, size: int, chunk: int, known: Optional[List[str]] = None) -> List[str]:
    """The SHA-256 (hex) of each `chunk`-sized piece of the first `size` bytes of `fd`, read and
    hashed on a few threads (pread and hashlib release the GIL); `known` (a cache's hashes of
    this very file state) is returned as it is."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    n = chunk_count(size, chunk)
    if known is not None and len(known) == n:
        return list(known)

    def one(i: int) -> str:
        return hashlib.sha256(read_at(fd, i * chunk, min(chunk, size - i * chunk))).hexdigest()

    if n <= 1:
        return [one(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, n)) as pool:
        return list(pool.map(one, range(n)))


def copy_chunks(src: int, dst: int, size: int, chunk: int, indices: List[int]) -> int:
    """Write the chunks `indices` (ascending) of `src` one after another into `dst`; return the
    bytes written (the blob a chunked transfer moves)."""
    pos = 0
    for i in indices:
        data = read_at(src, i * chunk, min(chunk, size - i * chunk))
        view = memoryview(data)
        while view:
            view = view[os.pwrite(dst, view, pos + len(data) - len(view)):]
        pos += len(data)
    os.ftruncate(dst, pos)
    return pos


def patch_chunks(blob: int, dst: int, size: int, chunk: int, indices: List[int]) -> List[str]:
    """The reverse of `copy_chunks`: write the blob's pieces at their chunks' offsets in `dst`
    (already holding the unchanged chunks) and give `dst` its `size`; return the SHA-256 of each
    piece written, so the receiver checks it got what the sender hashed."""
    import hashlib

    hashes = []
    pos = 0
    for i in indices:
        length = min(chunk, size - i * chunk)
        data = read_at(blob, pos, length)
        view = memoryview(data)
        while view:
            view = view[os.pwrite(dst, view, i * chunk + length - len(view)):]
        pos += length
        hashes.append(hashlib.sha256(data).hexdigest())
    os.ftruncate(dst, size)
    return hashes


# ---- the root side of stage.py's pull and push -----------------------------------------------------


def stage_chunked(src: int, staging: int, rel: str, size: int, mtime: int, chunks: Dict[str, Any],
                  cached: Any, answer: Dict[str, Any]) -> None:
    """Hash the job's open file in chunks (`cached`: [size, mtime_ns, ino, ctime_ns, hashes] of an
    earlier hashing, used when the file is still in that very state) and, when copying, stage the
    chunks whose hash differs from the controller's (`chunks["have"][rel]`) one after another as
    `staging/rel`. The file must be the one listed, unchanged from before the hashing to after the
    copy (written in place meanwhile: skipped, the next sync takes it)."""
    chunk = int(chunks["size"])
    st = os.fstat(src)
    ident = file_ident(st)
    if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (size, mtime):
        answer["skipped"].append(rel)
        return
    known = cached[4] if isinstance(cached, list) and len(cached) == 5 and cached[:4] == ident else None
    hashes = hash_chunks(src, size, chunk, known)
    if staging >= 0:
        theirs = (chunks.get("have") or {}).get(rel) or []
        sent = [i for i, h in enumerate(hashes) if i >= len(theirs) or theirs[i] != h]
        names = parts(rel)
        dfd = walk_to(staging, names[:-1], create=True)
        try:
            out = os.open(names[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                          dir_fd=dfd)
            try:
                if len(sent) == len(hashes):
                    copy_sparse(src, out, size)  # the whole file: holes kept
                else:
                    copy_chunks(src, out, size, chunk, sent)
            finally:
                os.close(out)
            if file_ident(os.fstat(src)) != ident:
                os.unlink(names[-1], dir_fd=dfd)
                answer["skipped"].append(rel)
                return
        finally:
            os.close(dfd)
        answer["staged"][rel] = [size, mtime]
        answer["chunks"][rel] = {"hashes": hashes, "sent": sent}
    elif file_ident(os.fstat(src)) != ident:
        return  # changed while hashed: no hashes rather than wrong ones
    answer["hashed"][rel] = ident + [hashes]


def file_ident(st: os.stat_result) -> List[int]:
    """What says a file is still as it was hashed: a write changes ctime, which no user can set."""
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def patch_one(base: int, blob: int, out: int, p: Dict[str, Any], chunk: int, hashed: Any) -> None:
    """Write into `out` the job's current file `base` with the staged chunks (`blob`, p["sent"]
    one after another) over it. `base` must still be as the agent hashed it (`hashed`: [size,
    mtime_ns, ino, ctime_ns]) when the controller chose which chunks to send, and each chunk must
    match the hash the controller gave."""
    st = os.fstat(base)
    if not stat.S_ISREG(st.st_mode) or not isinstance(hashed, list) or hashed[:4] != file_ident(st):
        raise OSError("the node's copy changed since it was hashed")
    size = int(p["size"])
    copy_sparse(base, out, min(st.st_size, size))
    if patch_chunks(blob, out, size, chunk, list(p["sent"])) != list(p["hashes"]):
        raise OSError("staged chunks do not match their hashes")


def send_base(sock: socket.socket, dfd: int, name: str) -> None:
    """The job's side of a patch: hand over the job's current file `name` in `dfd`, opened as the
    job with O_NOFOLLOW (or say why not)."""
    try:
        base = os.open(name, READ_FLAGS, dir_fd=dfd)
    except OSError as exc:
        send(sock, {"base": False, "error": str(exc)})
        return
    try:
        send(sock, {"base": True}, base)
    finally:
        os.close(base)
