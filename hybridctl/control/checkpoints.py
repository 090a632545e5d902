"""Moving a job's checkpoint directory between its node and the controller's checkpoint store.

Pull (node -> controller) runs every `fleet.checkpoint_sync_interval` while a job runs and once
more when its processes end; only files whose size or mtime changed travel, and of those only the
1 MiB chunks whose SHA-256 differs from the store's (agents of 0.4 on). A pull is all or nothing:
it builds the next generation of the job's copy beside the live one (hard links plus what
arrived) and swaps the two in one rename, so a cut pull leaves the previous checkpoint whole.
Push (controller -> node) restores the latest copy before a job starts again, on any node; files
the node still holds as the controller last saw them there (a restart where the job ran before)
are not sent, of a file the node holds an older copy of only the chunks it lacks are sent, and
what was sent is recorded so the next pull does not copy it back. A preempted job's restore
overlaps the old node's final pull (restore.py: `FinalSyncs`, `restore_to(final=...)`): a
hard-linked snapshot of the store travels meanwhile, then only what the final pull changed.

The controller never touches the job's directory itself: the agent copies it, as the job's user
and never through a link, into a staging directory only the agent's user can reach
(`stage_pull`), and from one into the job's directory (`stage_push`). SFTP on the node's
connection (or plain file access for a `host: local` agent) only reads and writes staging
directories. What a node says is checked here too: every path must stay inside the job's
directory in the store, and every file must arrive with the size the node listed."""

from __future__ import annotations

import asyncio
import errno
import glob
import json
import logging
import os
import posixpath
import shutil
import stat
from pathlib import Path
from typing import Any

from hybridctl.core import wire
from hybridctl.core.errors import HybridctlError
from hybridctl_agent.chunks import patch_chunks
from hybridctl_agent.fdio import READ_FLAGS, Refused, copy_sparse, exchange, walk_to

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

    async def write_at(self, local: str, remote: str, chunks: list[int], chunk: int, size: int) -> None:
        """Write chunks `chunks` of `local` over the same places of the staged file `remote`,
        then give it `size` bytes."""
        src = os.open(local, READ_FLAGS)
        try:
            dst = os.open(remote, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                for i in chunks:
                    data = os.pread(src, chunk, i * chunk)
                    view = memoryview(data)
                    while view:
                        view = view[os.pwrite(dst, view, i * chunk + len(data) - len(view)):]
                os.ftruncate(dst, size)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    async def remove(self, remote: str) -> None:
        try:
            os.unlink(remote)
        except FileNotFoundError:
            pass


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

    async def write_at(self, local: str, remote: str, chunks: list[int], chunk: int, size: int) -> None:
        src = os.open(local, READ_FLAGS)
        try:
            async with self.sftp.open(remote, "r+b") as f:
                for i in chunks:
                    await f.write(os.pread(src, chunk, i * chunk), i * chunk)
            await self.sftp.truncate(remote, size)
        finally:
            os.close(src)

    async def remove(self, remote: str) -> None:
        await self.sftp.remove(remote)


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


# ---- generations: the store changes all at once --------------------------------------------------


def _sibling(local_dir: Path, tag: str) -> Path:
    """A name beside the store's copy of a job (same filesystem: renames and hard links work)."""
    return local_dir.parent / f".{local_dir.name}.{tag}"


_snapshots = 0


def recover(local_dir: Path, leftovers: bool = True) -> None:
    """Undo what a cut left. A swap without renameat2 is two renames; cut between them, the
    previous generation is at `.old` and no copy is live: it becomes live again (the pull never
    happened). With `leftovers`, a pull's unfinished `.next` and snapshots of dead controllers go
    (call it only where no pull of this job runs: `pull` itself)."""
    old = _sibling(local_dir, "old")
    if not local_dir.exists() and old.is_dir():
        os.rename(old, local_dir)
    if leftovers:
        shutil.rmtree(_sibling(local_dir, "next"), ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        mine = f".{local_dir.name}.snap-{os.getpid()}-"
        for p in local_dir.parent.glob(f".{glob.escape(local_dir.name)}.snap-*"):
            if not p.name.startswith(mine):
                shutil.rmtree(p, ignore_errors=True)


def _link_tree(src: Path, dst: Path, manifest: bool) -> None:
    """`dst` = hard links of every file of `src` (directories made), the manifest only if asked.
    Runs on the event loop, in one go: no swap of `src` can fall in the middle of it."""
    os.mkdir(dst, 0o700)
    for dirpath, dirnames, filenames in os.walk(src):  # never follows links
        rel_dir = os.path.relpath(dirpath, src)
        out = dst if rel_dir == "." else dst / rel_dir
        for d in dirnames:
            os.mkdir(out / d, 0o700)
        for name in filenames:
            if _is_partial(name) or (rel_dir == "." and name in _OURS and not (manifest and name == MANIFEST)):
                continue
            try:
                os.link(os.path.join(dirpath, name), out / name, follow_symlinks=False)
            except OSError as exc:  # a filesystem without hard links (or a file at its link limit)
                if exc.errno not in (errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                shutil.copyfile(os.path.join(dirpath, name), out / name, follow_symlinks=False)


def snapshot(local_dir: Path) -> Path:
    """A hard-linked copy of the store's current generation of a job (files and manifest): pulls
    replace files, never write into them, so it stays exactly what it was while a restore reads
    it. Remove it with `drop`."""
    global _snapshots
    _snapshots += 1
    snap = _sibling(local_dir, f"snap-{os.getpid()}-{_snapshots}")
    shutil.rmtree(snap, ignore_errors=True)
    _link_tree(local_dir, snap, manifest=True)
    return snap


async def drop(snap: Path) -> None:
    """Remove a snapshot or an old generation (off the loop: freeing a gigabyte takes ~0.3 s)."""
    await asyncio.to_thread(shutil.rmtree, snap, True)


def _swap(nxt: Path, live: Path) -> Path:
    """Make `nxt` the live generation in one step; return where the previous one now is (to drop).
    renameat2(RENAME_EXCHANGE) where the filesystem has it, else two renames that `recover` can
    undo if cut between them."""
    pfd = os.open(live.parent, _DIR)
    try:
        if exchange(pfd, nxt.name, pfd, live.name):
            return nxt
        old = _sibling(live, "old")
        os.rename(live.name, old.name, src_dir_fd=pfd, dst_dir_fd=pfd)
        os.rename(nxt.name, live.name, src_dir_fd=pfd, dst_dir_fd=pfd)
        return old
    finally:
        os.close(pfd)


# ---- pull and push on directories ---------------------------------------------------------------


async def pull(files: Any, remote_dir: str, remote: dict[str, Any], local_dir: Path, node: str = "",
               staged: dict[str, Any] | None = None,
               chunked: dict[str, tuple[list[str], list[int]]] | None = None) -> int:
    """Copy new and changed files from `node`; return the bytes copied. `remote` is the agent's
    listing of the job's directory ({path: [size, mtime_ns]}: nanoseconds, since a checkpoint
    rewritten within the second it was last copied must travel again); `staged` is what the agent
    copied into `remote_dir` (its staging directory), with the size and mtime_ns it copied. Without
    `staged`, every changed file of the listing is read from `remote_dir`.

    All or nothing: the new files and the manifest are written into a next generation (hard links
    of the current one plus what arrived), which replaces the live copy in one rename. A pull cut
    anywhere (a lost node, a refused file, a crash) leaves the previous checkpoint whole, never a
    mix of a newer file and an older one.

    `chunked` ({path: (hashes, sent)}, checked by `wire.chunked_files`; None from an agent before
    0.4): each staged file holds only the chunks `sent`, one after another; the others are the
    ones the store's copy holds already (the node compared against the hashes it was given), so
    the new file is the store's copy patched with the staged chunks, each checked against its
    hash. Returns the bytes that moved."""
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    recover(local_dir)
    local_dir.mkdir(exist_ok=True)
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
    todo = {rel: e for rel, e in todo.items() if rel not in _OURS}
    if not todo:
        return 0
    nxt = _sibling(local_dir, "next")
    _link_tree(local_dir, nxt, manifest=False)
    copied = 0
    top = os.open(nxt, _DIR)
    try:
        for rel, (size, mtime) in sorted(todo.items()):
            names = rel.split("/")
            dfd = _walk(top, names[:-1], create=True)
            try:
                tmp = _partial(names[-1])
                hashes, sent = chunked[rel] if chunked is not None else (None, None)
                if hashes is not None and sent is not None and len(sent) < len(hashes):
                    moved = await _patch(files, _remote(remote_dir, rel), dfd, names[-1], rel, size, seen.get(rel),
                                         hashes, sent, node)
                else:
                    await files.get(_remote(remote_dir, rel), _fd_path(dfd, tmp), size)
                    moved = size
                got = os.stat(tmp, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISREG(got.st_mode) or got.st_size != size:
                    raise TransferMismatch(f"checkpoint file {rel} from {node}: {got.st_size} bytes arrived, "
                                           f"the node listed {size}")
                try:  # the link to the live copy goes first: a rename over a name makes ext4 flush
                    os.unlink(names[-1], dir_fd=dfd)
                except FileNotFoundError:
                    pass
                os.rename(tmp, names[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
            finally:
                os.close(dfd)
            seen[rel] = [size, mtime, node] + ([{"c": CHUNK_SIZE, "h": hashes}] if hashes is not None else [])
            copied += moved
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
        _save_manifest(nxt, seen)
    except BaseException:
        os.close(top)
        await drop(nxt)
        raise
    os.close(top)
    await drop(_swap(nxt, local_dir))
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


def adopt(local_dir: Path, sent: list[str], remote: dict[str, Any], node: str,
          expect: dict[str, list[Any]] | None = None) -> None:
    """After a push: the files `sent` are on `node` as its listing `remote` shows them now, the
    same bytes as the controller's copy. Recording that keeps the next pull from copying them back
    and the next push to `node` from sending them again. With `expect` (the manifest of the
    snapshot the push read), a file whose entry changed since (a pull landed meanwhile) is not
    recorded: the node holds the older bytes, and claiming otherwise would keep them there."""
    listing = checked(remote, "restored checkpoint", node)
    seen = _manifest(local_dir)
    for rel in sent:
        if rel in listing and (expect is None or seen.get(rel) == expect.get(rel)):
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
