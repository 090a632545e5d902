"""Moving a job's checkpoint directory between its node and the controller's checkpoint store.

Pull (node -> controller) runs every `fleet.checkpoint_sync_interval` while a job runs and once
more when its processes end; only files whose size or mtime changed travel. Push (controller ->
node) restores the latest copy before a job starts again, on any node; files the node still holds
as the controller last saw them there (a restart where the job ran before) are not sent, and what
was sent is recorded so the next pull does not copy it back.

The controller never touches the job's directory itself: the agent copies it, as the job's user
and never through a link, into a staging directory only the agent's user can reach
(`stage_pull`), and from one into the job's directory (`stage_push`). SFTP on the node's
connection (or plain file access for a `host: local` agent) only reads and writes staging
directories. What a node says is checked here too: every path must stay inside the job's
directory in the store, and every file must arrive with the size the node listed."""

from __future__ import annotations

import json
import logging
import os
import posixpath
import stat
from pathlib import Path
from typing import Any

from hybridctl.core.errors import HybridctlError
from hybridctl_agent.fdio import Refused, copy_sparse, walk_to

log = logging.getLogger("hybridctl.checkpoints")

MANIFEST = ".hybridctl-manifest.json"
_OURS = (MANIFEST, ".hybridctl-manifest.tmp")
"""The store's own files, never restored onto a node."""
STAGE_TIMEOUT_S = 3600.0
"""How long a staging copy on the agent may take (the agent kills it after its own limit)."""
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
               staged: dict[str, Any] | None = None) -> int:
    """Copy new and changed files from `node`; return the bytes copied. `remote` is the agent's
    listing of the job's directory ({path: [size, mtime_ns]}: nanoseconds, since a checkpoint
    rewritten within the second it was last copied must travel again); `staged` is what the agent
    copied into `remote_dir` (its staging directory), with the size and mtime_ns it copied. Without
    `staged`, every changed file of the listing is read from `remote_dir`. Files appear atomically
    (temp + rename), so a copy interrupted by a lost node never leaves a torn checkpoint."""
    local_dir.mkdir(parents=True, exist_ok=True)
    listing = checked(remote, "checkpoint listing", node)
    seen = _manifest(local_dir)
    if staged is None:
        todo = {rel: e for rel, e in listing.items() if seen.get(rel, [])[:2] != e}
    else:
        todo = checked(staged, "staged checkpoint", node)
        listing.update(todo)
    copied = 0
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
                await files.get(_remote(remote_dir, rel), _fd_path(dfd, tmp), size)
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
            seen[rel] = [size, mtime, node]
            copied += size
        if copied:
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
            seen[rel] = [*listing[rel], node]
    _save_manifest(local_dir, seen)


# ---- through the agent --------------------------------------------------------------------------


async def sync_from(agent: Any, files: Any, key: str, local_dir: Path, node: str) -> int:
    """Pull the checkpoint of job `key` from `node`: the agent stages what changed since the
    store's manifest (as the job's user), the controller copies it from staging. Returns bytes."""
    have = {rel: e[:2] for rel, e in _manifest(local_dir).items()}
    res = await agent.call("stage_pull", timeout=STAGE_TIMEOUT_S, key=key, kind="checkpoint", have=have)
    token = res.get("token")
    try:
        if res.get("skipped"):
            log.info("checkpoint of %s on %s: not copied this time (changing, or not a plain file): %s",
                     key, node, ", ".join(map(str, res["skipped"]))[:500])
        return await pull(files, str(res.get("path") or ""), res.get("files") or {}, local_dir, node,
                          staged=res.get("staged") or {})
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
    before = (await agent.call("stage_pull", timeout=STAGE_TIMEOUT_S, key=key, kind="checkpoint",
                               copy=False))["files"]
    send, kept = plan_push(local_dir, before, node)
    if not send:
        return [], kept, 0
    opened = await agent.call("stage_open", timeout=STAGE_TIMEOUT_S)
    try:
        await _put_all(files, local_dir, opened["path"], send)
    except BaseException:
        await agent.call("stage_done", timeout=STAGE_TIMEOUT_S, token=opened["token"])
        raise
    res = await agent.call("stage_push", timeout=STAGE_TIMEOUT_S, key=key, kind="checkpoint", token=opened["token"],
                           files=send, uid=owner.get("uid"), gid=owner.get("gid"), user=owner.get("user"))
    written = checked(res.get("written"), "restored checkpoint", node)
    for err in res.get("errors") or []:
        log.warning("checkpoint of %s: not restored onto %s: %s", key, node, err)
    sent = sorted(rel for rel in send if rel in written)
    adopt(local_dir, sent, written, node)
    return sent, kept, sum(written[rel][0] for rel in sent)
