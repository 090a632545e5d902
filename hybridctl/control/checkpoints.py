"""Moving a job's checkpoint directory between its node and the controller's checkpoint store.

Pull (node -> controller) runs every `fleet.checkpoint_sync_interval` while a job runs and once
more when its processes end; only files whose size or mtime changed travel, and of those only the
1 MiB chunks whose SHA-256 differs from the store's (agents of 0.4 on). Push (controller -> node)
restores the latest copy before a job starts again, on any node; files the node still holds
as the controller last saw them there (a restart where the job ran before) are not sent, of a file
the node holds an older copy of only the chunks it lacks are sent, and what was sent is recorded
so the next pull does not copy it back.

The controller never touches the job's directory itself: the agent copies it, as the job's user
and never through a link, into a staging directory only the agent's user can reach
(`stage_pull`), and from one into the job's directory (`stage_push`). SFTP on the node's
connection (or plain file access for a `host: local` agent) only reads and writes staging
directories. What a node says is checked here too: every path must stay inside the job's
directory in the store, and every file must arrive with the size the node listed."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
import stat
from pathlib import Path
from typing import Any

from hybridctl.core import wire
from hybridctl.core.errors import HybridctlError
from hybridctl_agent.chunks import copy_chunks, patch_chunks
from hybridctl_agent.fdio import READ_FLAGS, Refused, copy_sparse, walk_to

log = logging.getLogger("hybridctl.checkpoints")

MANIFEST = ".hybridctl-manifest.json"
_OURS = (MANIFEST, ".hybridctl-manifest.tmp")
"""The store's own files, never restored onto a node."""
STAGE_TIMEOUT_S = 3600.0
"""How long a staging copy on the agent may take (the agent kills it after its own limit)."""
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CHUNK_SIZE = 1 << 20
"""Chunk size of chunked moves: a file changed in a few places moves a few of these."""


def _hashes(entry: object, chunk: int = CHUNK_SIZE) -> list[str] | None:
    """The chunk hashes a manifest entry records ([size, mtime_ns, node, {c, h}]), when taken
    with chunk size `chunk`."""
    if isinstance(entry, list) and len(entry) > 3 and isinstance(entry[3], dict) and entry[3].get("c") == chunk:
        return wire.chunk_hashes(entry[3].get("h"), entry[0], chunk) if isinstance(entry[0], int) else None
    return None


def blob_size(size: int, chunk: int, sent: list[int]) -> int:
    """Bytes of the chunks `sent` of a file of `size` bytes, one after another."""
    return sum(min(chunk, size - i * chunk) for i in sent)


class TransferMismatch(HybridctlError):
    """A file did not arrive as the node listed it (size), or a node named a path outside the job."""


def safe_rel(rel: object) -> str | None:
    """`rel` when it names a path inside a directory (relative, normalised, no '.' or '..' parts,
    no NUL), else None. A node's listing is data from another machine: it is checked, not joined."""
    if not isinstance(rel, str) or not rel or len(rel) > 4096 or "\0" in rel or rel.startswith("/"):
        return None
    if posixpath.normpath(rel) != rel or any(p in ("", ".", "..") for p in rel.split("/")):
        return None
    return rel


def _entry(value: object) -> list[int] | None:
    """[size, mtime_ns] from a listing, or None when it is not two non-negative integers."""
    if (isinstance(value, (list, tuple)) and len(value) >= 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value[:2])):
        return [int(value[0]), int(value[1])]
    return None


def checked(listing: object, what: str, node: str) -> dict[str, list[int]]:
    """The valid entries of a node's listing ({path: [size, mtime_ns]}); the others are logged
    and dropped."""
    out: dict[str, list[int]] = {}
    if not isinstance(listing, dict):
        return out
    for rel, value in listing.items():
        entry = _entry(value)
        if safe_rel(rel) is None or entry is None:
            log.warning("%s from %s names %r: not a path inside the job's directory; ignored", what, node, rel)
            continue
        out[rel] = entry
    return out


# ---- the store, through directory fds ------------------------------------------------------------


def _walk(top: int, names: list[str], create: bool) -> int:
    """A new fd of directory `names` below `top`, each step O_NOFOLLOW (the agent's helper; a
    link in the store is refused as a mismatch, never followed)."""
    try:
        return walk_to(top, names, create, 0o700)
    except Refused as exc:
        raise TransferMismatch(f"the checkpoint store holds a link or non-directory: {exc}") from None


def _fd_path(dfd: int, name: str) -> str:
    """A path to `name` in the directory open as `dfd` (for libraries that take paths: the
    directory is reached through the fd, never through a name that could be swapped)."""
    return f"/proc/self/fd/{dfd}/{name}"


# ---- copying ------------------------------------------------------------------------------------


def _fix_size(path: str, size: int, what: str) -> None:
    """SFTP's sparse copy leaves out a trailing hole: give the file its listed size back. A file
    longer than listed is not what the node staged."""
    got = os.stat(path).st_size
    if got > size:
        raise TransferMismatch(f"{what}: {got} bytes arrived, the node listed {size}")
    if got < size:
        os.truncate(path, size)


def _copy_file(src_path: str, dst_path: str, size: int, dst_flags: int, check_size: bool) -> None:
    """Copy `size` bytes (holes kept) between two paths, neither followed through a link; with
    `check_size`, the source must be the regular file of exactly `size` bytes the agent listed."""
    src = os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(src)
        if check_size and (not stat.S_ISREG(st.st_mode) or st.st_size != size):
            raise TransferMismatch(f"{src_path}: {st.st_size} bytes staged, the agent listed {size}")
        dst = os.open(dst_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | dst_flags, 0o600)
        try:
            copy_sparse(src, dst, size)
        finally:
            os.close(dst)
    finally:
        os.close(src)


class LocalFiles:
    """File access to a `host: local` agent's staging directories (the same machine)."""

    async def get(self, remote: str, local: str, size: int) -> None:
        _copy_file(remote, local, size, os.O_EXCL, check_size=True)

    async def put(self, local: str, remote: str, size: int) -> None:
        os.makedirs(os.path.dirname(remote), exist_ok=True)
        _copy_file(local, remote, size, os.O_TRUNC, check_size=False)


class SftpFiles:
    """The same calls over an asyncssh SFTP client (only ever on the agent's staging directories)."""

    def __init__(self, sftp: Any) -> None:
        self.sftp = sftp

    async def get(self, remote: str, local: str, size: int) -> None:
        attrs = await self.sftp.lstat(remote)
        if attrs.size != size:
            raise TransferMismatch(f"{remote}: {attrs.size} bytes staged, the agent listed {size}")
        await self.sftp.get(remote, local)
        _fix_size(local, size, remote)

    async def put(self, local: str, remote: str, size: int) -> None:
        await self.sftp.makedirs(posixpath.dirname(remote), exist_ok=True)
        await self.sftp.put(local, remote)
        await self.sftp.truncate(remote, size)  # a sparse copy leaves out a trailing hole


# ---- the manifest -------------------------------------------------------------------------------


def _partial(name: str) -> str:
    """The name a pulled file has until it is whole."""
    return f".{name}.part"


def _is_partial(name: str) -> bool:
    return name.startswith(".") and name.endswith(".part")


def _manifest(local_dir: Path) -> dict[str, list[Any]]:
    """{path: [size, mtime_ns, node]}: each file of the controller's copy as it is on `node` (where
    it came from, or where it was last restored to). Entries of older versions lack the node."""
    try:
        seen = json.loads((local_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(seen, dict):
        return {}
    return {rel: v for rel, v in seen.items() if safe_rel(rel) is not None and isinstance(v, list)}


def _save_manifest(local_dir: Path, seen: dict[str, list[Any]]) -> None:
    path = local_dir / MANIFEST
    tmp = local_dir / _OURS[1]
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(seen))
    os.replace(tmp, path)


def _remote(remote_dir: str, rel: str) -> str:
    return posixpath.join(remote_dir, rel)


# ---- pull and push on directories ---------------------------------------------------------------


async def pull(files: Any, remote_dir: str, remote: dict[str, Any], local_dir: Path, node: str = "",
               staged: dict[str, Any] | None = None,
               chunked: dict[str, tuple[list[str], list[int]]] | None = None) -> int:
    """Copy new and changed files from `node`; return the bytes copied. `remote` is the agent's
    listing of the job's directory ({path: [size, mtime_ns]}: nanoseconds, since a checkpoint
    rewritten within the second it was last copied must travel again); `staged` is what the agent
    copied into `remote_dir` (its staging directory), with the size and mtime_ns it copied. Without
    `staged`, every changed file of the listing is read from `remote_dir`. Files appear atomically
    (temp + rename), so a copy interrupted by a lost node never leaves a torn checkpoint.

    `chunked` ({path: (hashes, sent)}, checked by `wire.chunked_files`; None from an agent before
    0.4): each staged file holds only the chunks `sent`, one after another; the others are the
    ones the store's copy holds already (the node compared against the hashes it was given), so
    the new file is the store's copy patched with the staged chunks, each checked against its
    hash. Returns the bytes that moved."""
    local_dir.mkdir(parents=True, exist_ok=True)
    listing = checked(remote, "checkpoint listing", node)
    seen = _manifest(local_dir)
    if staged is None:
        todo = {rel: e for rel, e in listing.items() if seen.get(rel, [])[:2] != e}
    else:
        todo = checked(staged, "staged checkpoint", node)
        listing.update(todo)
    if chunked is not None:  # a file too large to hash (over wire.MAX_CHUNKS chunks) comes whole
        for rel in {r for r in set(todo) - set(chunked) if wire.chunk_count(todo[r][0], CHUNK_SIZE) <= wire.MAX_CHUNKS}:
            log.warning("checkpoint file %s from %s: staged without its chunk hashes; not copied", rel, node)
            del todo[rel]
    copied = 0
    changed = False
    top = os.open(local_dir, _DIR)
    try:
        for rel, (size, mtime) in sorted(todo.items()):
            if rel in _OURS:
                continue
            names = rel.split("/")
            dfd = _walk(top, names[:-1], create=True)
            try:
                tmp = _partial(names[-1])
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except FileNotFoundError:
                    pass
                hashes, sent = chunked[rel] if chunked is not None else (None, None)
                if hashes is not None and sent is not None and len(sent) < len(hashes):
                    moved = await _patch(files, _remote(remote_dir, rel), dfd, names[-1], rel, size, seen.get(rel),
                                         hashes, sent, node)
                else:
                    await files.get(_remote(remote_dir, rel), _fd_path(dfd, tmp), size)
                    moved = size
                got = os.stat(tmp, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISREG(got.st_mode) or got.st_size != size:
                    os.unlink(tmp, dir_fd=dfd)
                    raise TransferMismatch(f"checkpoint file {rel} from {node}: {got.st_size} bytes arrived, "
                                           f"the node listed {size}")
                if seen.pop(rel, None) is not None:
                    _save_manifest(local_dir, seen)  # a crash after the replace must not leave the old entry
                os.rename(tmp, names[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
            finally:
                os.close(dfd)
            seen[rel] = [size, mtime, node] + ([{"c": CHUNK_SIZE, "h": hashes}] if hashes is not None else [])
            copied += moved
            changed = True
        if changed:
            for rel in set(seen) - set(listing):  # deleted on the node (a rotated checkpoint)
                names = rel.split("/")
                try:
                    dfd = _walk(top, names[:-1], create=False)
                except OSError:
                    dfd = -1
                if dfd >= 0:
                    try:
                        os.unlink(names[-1], dir_fd=dfd)
                    except OSError:
                        pass
                    finally:
                        os.close(dfd)
                del seen[rel]
            _save_manifest(local_dir, seen)
    finally:
        os.close(top)
    return copied


async def _patch(files: Any, remote: str, dfd: int, name: str, rel: str, size: int, entry: Any,
                 hashes: list[str], sent: list[int], node: str) -> int:
    """Make `.name.part` in `dfd`: the store's `name` (which `entry` describes) with the staged
    chunks `sent` written over it. Every chunk not sent must be one the store holds (same hash):
    a node claiming otherwise is refused. Returns the bytes that moved."""
    ours = _hashes(entry)
    moving = set(sent)
    missing = [i for i in range(len(hashes))
               if i not in moving and (ours is None or i >= len(ours) or ours[i] != hashes[i])]
    if missing:
        raise TransferMismatch(f"checkpoint file {rel} from {node}: the node left out chunks the controller "
                               f"does not hold (first: {missing[0]})")
    moved = blob_size(size, CHUNK_SIZE, sent)
    delta = f".{name}.delta.part"
    tmp = _partial(name)
    try:
        os.unlink(delta, dir_fd=dfd)
    except FileNotFoundError:
        pass
    try:
        await files.get(remote, _fd_path(dfd, delta), moved)
        # a gigabyte's local copy: off the event loop, which serves every node and client
        got = await asyncio.to_thread(_patch_local, dfd, name, tmp, delta, size, sent, entry[0], rel)
        if got != [hashes[i] for i in sent]:
            os.unlink(tmp, dir_fd=dfd)
            raise TransferMismatch(f"checkpoint file {rel} from {node}: chunks arrived that do not match "
                                   "their hashes")
    finally:
        try:
            os.unlink(delta, dir_fd=dfd)
        except FileNotFoundError:
            pass
    return moved


def _patch_local(dfd: int, name: str, tmp: str, delta: str, size: int, sent: list[int], base_size: int,
                 rel: str) -> list[str]:
    """`tmp` = the store's `name` (of `base_size` bytes) with the chunks in `delta` written over it;
    returns the hashes of the chunks written."""
    base = os.open(name, READ_FLAGS, dir_fd=dfd)
    try:
        bst = os.fstat(base)
        if not stat.S_ISREG(bst.st_mode) or bst.st_size != base_size:
            raise TransferMismatch(f"checkpoint file {rel}: the store's copy is not as its manifest says")
        out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            copy_sparse(base, out, min(bst.st_size, size))
            blob = os.open(delta, READ_FLAGS, dir_fd=dfd)
            try:
                return patch_chunks(blob, out, size, CHUNK_SIZE, sent)
            finally:
                os.close(blob)
        finally:
            os.close(out)
    finally:
        os.close(base)


def plan_push(local_dir: Path, remote: dict[str, Any], node: str) -> tuple[dict[str, int], list[str]]:
    """What a push to `node` sends ({path: size}) and what it keeps: a file the node still holds
    exactly as the controller's copy last saw it there (same node, size and mtime_ns) stays."""
    listing = checked(remote, "checkpoint listing", node)
    seen = _manifest(local_dir)
    send: dict[str, int] = {}
    kept: list[str] = []
    for dirpath, dirnames, filenames in os.walk(local_dir):  # never follows links
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, local_dir)
            if (os.path.dirname(rel) == "" and name in _OURS) or _is_partial(name) or safe_rel(rel) is None:
                continue
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            entry = seen.get(rel, [])
            if len(entry) > 2 and entry[2] == node and listing.get(rel) == entry[:2]:
                kept.append(rel)
                continue
            send[rel] = st.st_size
    return send, kept


async def push(files: Any, local_dir: Path, remote_dir: str, remote: dict[str, Any],
               node: str) -> tuple[list[str], list[str]]:
    """Copy the controller's copy into `remote_dir` (the agent's staging directory) for `node`;
    return the paths sent and those kept (see `plan_push`). Record what was sent with `adopt`."""
    if not local_dir.is_dir():
        return [], []
    send, kept = plan_push(local_dir, remote, node)
    await _put_all(files, local_dir, remote_dir, send)
    return sorted(send), kept


async def _put_all(files: Any, local_dir: Path, remote_dir: str, send: dict[str, int]) -> None:
    top = os.open(local_dir, _DIR)
    try:
        for rel, size in sorted(send.items()):
            names = rel.split("/")
            dfd = _walk(top, names[:-1], create=False)
            try:
                await files.put(_fd_path(dfd, names[-1]), _remote(remote_dir, rel), size)
            finally:
                os.close(dfd)
    finally:
        os.close(top)


def adopt(local_dir: Path, sent: list[str], remote: dict[str, Any], node: str) -> None:
    """After a push: the files `sent` are on `node` as its listing `remote` shows them now, the
    same bytes as the controller's copy. Recording that keeps the next pull from copying them back
    and the next push to `node` from sending them again."""
    listing = checked(remote, "restored checkpoint", node)
    seen = _manifest(local_dir)
    for rel in sent:
        if rel in listing:
            seen[rel] = [*listing[rel], node] + seen.get(rel, [])[3:4]  # the same bytes: the same chunk hashes
    _save_manifest(local_dir, seen)


# ---- through the agent --------------------------------------------------------------------------


async def sync_from(agent: Any, files: Any, key: str, local_dir: Path, node: str) -> int:
    """Pull the checkpoint of job `key` from `node`: the agent stages what changed since the
    store's manifest (as the job's user), the controller copies it from staging. Returns bytes."""
    seen = _manifest(local_dir)
    have = {rel: e[:2] for rel, e in seen.items()}
    hashes = {rel: h for rel, e in seen.items() if (h := _hashes(e)) is not None}
    res = await agent.call("stage_pull", timeout=STAGE_TIMEOUT_S, key=key, kind="checkpoint", have=have,
                           chunks={"size": CHUNK_SIZE, "have": hashes})
    token = res.get("token")
    try:
        if res.get("skipped"):
            log.info("checkpoint of %s on %s: not copied this time (changing, or not a plain file): %s",
                     key, node, ", ".join(map(str, res["skipped"]))[:500])
        staged = res.get("staged") or {}
        chunked = None
        if "chunks" in res:  # an agent of 0.4 or later: chunks the store lacks, not whole files
            problems: list[wire.Problem] = []
            chunked = wire.chunked_files(res["chunks"], checked(staged, "staged checkpoint", node), CHUNK_SIZE,
                                         problems)
            for p in problems:
                log.warning("checkpoint of %s from %s: malformed %s; ignored", key, node, p)
        return await pull(files, str(res.get("path") or ""), res.get("files") or {}, local_dir, node,
                          staged=staged, chunked=chunked)
    finally:
        if token:
            await agent.call("stage_done", timeout=STAGE_TIMEOUT_S, token=token)


async def restore_to(agent: Any, files: Any, key: str, local_dir: Path, node: str,
                     owner: dict[str, Any]) -> tuple[list[str], list[str], int]:
    """Restore the store's copy of job `key` onto `node` before it starts there: the controller
    writes what must travel into a staging directory, the agent copies it into the job's
    checkpoint directory as `owner` ({uid, gid, user}). Returns (sent, kept, bytes)."""
    if not local_dir.is_dir():
        return [], [], 0
    res = await agent.call("stage_pull", timeout=STAGE_TIMEOUT_S, key=key, kind="checkpoint", copy=False)
    before = checked(res.get("files"), "checkpoint listing", node)
    send, kept = plan_push(local_dir, before, node)
    if not send:
        return [], kept, 0
    theirs: dict[str, list[str]] = {}
    if any(rel in before for rel in send):  # the node holds an older copy: which of its chunks are ours?
        res = await agent.call("stage_pull", timeout=STAGE_TIMEOUT_S, key=key, kind="checkpoint", copy=False,
                               chunks={"size": CHUNK_SIZE})
        problems: list[wire.Problem] = []
        now = checked(res.get("files"), "checkpoint listing", node)
        theirs = {rel: h for rel, h in wire.node_hashes(res.get("hashes"), now, CHUNK_SIZE, problems).items()
                  if now.get(rel) == before.get(rel)}
        for p in problems:
            log.warning("checkpoint of %s on %s: malformed %s; ignored", key, node, p)
    patch = plan_patch(local_dir, send, theirs)
    sent, moved, failed = await _push_once(agent, files, key, local_dir, node, owner, send, patch)
    if failed:  # a patch the node could not apply (its copy changed since it was hashed): whole files
        again, more, _ = await _push_once(agent, files, key, local_dir, node, owner,
                                          {rel: send[rel] for rel in failed}, {})
        sent, moved = sorted(sent + again), moved + more
    return sent, kept, moved


def plan_patch(local_dir: Path, send: dict[str, int], theirs: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """For each file to send of which the node holds some chunks (`theirs`: its copy's hashes) and
    the store knows its own chunk hashes: {path: {size, sent, hashes}}, the chunks to send."""
    seen = _manifest(local_dir)
    out: dict[str, dict[str, Any]] = {}
    for rel, size in send.items():
        ours = _hashes(seen.get(rel))
        if ours is None or rel not in theirs or seen[rel][0] != size:
            continue
        node = theirs[rel]
        idx = [i for i, h in enumerate(ours) if i >= len(node) or node[i] != h]
        if len(idx) < len(ours):
            out[rel] = {"size": size, "sent": idx, "hashes": [ours[i] for i in idx]}
    return out


async def _push_once(agent: Any, files: Any, key: str, local_dir: Path, node: str, owner: dict[str, Any],
                     send: dict[str, int], patch: dict[str, dict[str, Any]]) -> tuple[list[str], int, list[str]]:
    """One stage_open + puts + stage_push: whole files, or for those in `patch` only their chunks
    (a blob of them, built beside the store's file). Returns (paths written, bytes moved, paths
    whose patch failed)."""
    opened = await agent.call("stage_open", timeout=STAGE_TIMEOUT_S)
    staged = {rel: (blob_size(patch[rel]["size"], CHUNK_SIZE, patch[rel]["sent"]) if rel in patch else size)
              for rel, size in send.items()}
    try:
        await _put_all(files, local_dir, opened["path"], {r: s for r, s in send.items() if r not in patch})
        await _put_chunks(files, local_dir, opened["path"], patch)
    except BaseException:
        await agent.call("stage_done", timeout=STAGE_TIMEOUT_S, token=opened["token"])
        raise
    extra: dict[str, Any] = {"patch": {"chunk": CHUNK_SIZE, "files": patch}} if patch else {}
    seen = _manifest(local_dir)
    hashes = {rel: h for rel in send if (h := _hashes(seen.get(rel))) is not None}
    if hashes:  # the agent keeps them: the next move of these files needs no hashing there
        extra["chunks"] = {"size": CHUNK_SIZE, "have": hashes}
    res = await agent.call("stage_push", timeout=STAGE_TIMEOUT_S, key=key, kind="checkpoint", token=opened["token"],
                           files=staged, uid=owner.get("uid"), gid=owner.get("gid"), user=owner.get("user"),
                           **extra)
    written = checked(res.get("written"), "restored checkpoint", node)
    errors = [str(e) for e in res.get("errors") or []]
    for err in errors:
        log.warning("checkpoint of %s: not restored onto %s: %s", key, node, err)
    sent = sorted(rel for rel in send if rel in written)
    adopt(local_dir, sent, written, node)
    failed = sorted(rel for rel in patch if rel not in written and any(e.startswith(f"{rel}: ") for e in errors))
    return sent, sum(staged.values()), failed  # what crossed the link, a refused patch's chunks included


async def _put_chunks(files: Any, local_dir: Path, remote_dir: str, patch: dict[str, dict[str, Any]]) -> None:
    """Put, for each file of `patch`, the chunks it names one after another (a blob built beside
    the store's file, removed afterwards)."""
    top = os.open(local_dir, _DIR)
    try:
        for rel, p in sorted(patch.items()):
            names = rel.split("/")
            dfd = _walk(top, names[:-1], create=False)
            blob = f".{names[-1]}.delta.part"
            try:
                src = os.open(names[-1], READ_FLAGS, dir_fd=dfd)
                try:
                    out = os.open(blob, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                  dir_fd=dfd)
                    try:
                        n = copy_chunks(src, out, p["size"], CHUNK_SIZE, p["sent"])
                    finally:
                        os.close(out)
                finally:
                    os.close(src)
                await files.put(_fd_path(dfd, blob), _remote(remote_dir, rel), n)
            finally:
                try:
                    os.unlink(blob, dir_fd=dfd)
                except FileNotFoundError:
                    pass
                os.close(dfd)
    finally:
        os.close(top)
