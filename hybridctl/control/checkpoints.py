"""Moving a job's checkpoint directory between its node and the controller's checkpoint store.

Pull (node -> controller) runs every `fleet.checkpoint_sync_interval` while a job runs and once
more when its processes end; only files whose size or mtime changed travel. Push (controller ->
node) restores the latest copy before a job starts again, on any node; files the node still holds
as the controller last saw them there (a restart where the job ran before) are not sent, and what
was sent is recorded so the next pull does not copy it back. Over SSH both use SFTP on the node's
existing connection; a local agent (`host: local`) gets plain file copies."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

MANIFEST = ".hybridctl-manifest.json"
_OURS = (MANIFEST, ".hybridctl-manifest.tmp")
"""The store's own files, never restored onto a node."""


class LocalFiles:
    """The SFTP calls this module uses, on the local filesystem (for `host: local` nodes)."""

    async def get(self, remote: str, local: str) -> None:
        shutil.copyfile(remote, local)

    async def put(self, local: str, remote: str) -> None:
        os.makedirs(os.path.dirname(remote), exist_ok=True)
        shutil.copyfile(local, remote)


class SftpFiles:
    """The same calls over an asyncssh SFTP client."""

    def __init__(self, sftp: Any) -> None:
        self.sftp = sftp

    async def get(self, remote: str, local: str) -> None:
        await self.sftp.get(remote, local)

    async def put(self, local: str, remote: str) -> None:
        await self.sftp.makedirs(os.path.dirname(remote), exist_ok=True)
        await self.sftp.put(local, remote)


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
    return seen if isinstance(seen, dict) else {}


def _save_manifest(local_dir: Path, seen: dict[str, list[Any]]) -> None:
    path = local_dir / MANIFEST
    tmp = local_dir / _OURS[1]
    tmp.write_text(json.dumps(seen))
    os.replace(tmp, path)


async def pull(files: Any, remote_dir: str, remote: dict[str, list[int]], local_dir: Path, node: str = "") -> int:
    """Copy new and changed files from `node`; return the bytes copied. `remote` is the agent's
    listing of `remote_dir` ({path: [size, mtime_ns]}: nanoseconds, since a checkpoint rewritten
    within the second it was last copied must travel again). Files appear atomically (temp +
    rename), so a copy interrupted by a lost node never leaves a torn checkpoint."""
    local_dir.mkdir(parents=True, exist_ok=True)
    seen = _manifest(local_dir)
    copied = 0
    for rel, (size, mtime) in sorted(remote.items()):
        if rel == MANIFEST or seen.get(rel, [])[:2] == [size, mtime]:
            continue
        dest = local_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(_partial(dest.name))
        await files.get(os.path.join(remote_dir, rel), str(tmp))
        if seen.pop(rel, None) is not None:
            _save_manifest(local_dir, seen)  # a crash after the replace must not leave the old entry
        os.replace(tmp, dest)
        seen[rel] = [size, mtime, node]
        copied += size
    if copied:
        for rel in set(seen) - set(remote):  # deleted on the node (a rotated checkpoint)
            (local_dir / rel).unlink(missing_ok=True)
            del seen[rel]
        _save_manifest(local_dir, seen)
    return copied


async def push(files: Any, local_dir: Path, remote_dir: str, remote: dict[str, list[int]],
               node: str) -> tuple[list[str], list[str]]:
    """Restore the controller's copy onto `node` before the job starts there; return the paths
    sent and those already there. `remote` is the agent's listing of `remote_dir` now: a file the node still holds exactly
    as the controller's copy last saw it there (same node, size and mtime_ns: a restart where the
    job ran before) is not sent again. Record what was sent with `adopt`."""
    if not local_dir.is_dir():
        return [], []
    seen = _manifest(local_dir)
    sent: list[str] = []
    kept: list[str] = []
    for path in sorted(local_dir.rglob("*")):
        if not path.is_file() or path.name in _OURS or _is_partial(path.name):
            continue
        rel = str(path.relative_to(local_dir))
        entry = seen.get(rel, [])
        if len(entry) > 2 and entry[2] == node and remote.get(rel) == entry[:2]:
            kept.append(rel)
            continue
        await files.put(str(path), os.path.join(remote_dir, rel))
        sent.append(rel)
    return sent, kept


def adopt(local_dir: Path, sent: list[str], remote: dict[str, list[int]], node: str) -> None:
    """After a push: the files `sent` are on `node` as its listing `remote` shows them now, the
    same bytes as the controller's copy. Recording that keeps the next pull from copying them back
    and the next push to `node` from sending them again."""
    seen = _manifest(local_dir)
    for rel in sent:
        if rel in remote:
            seen[rel] = [*remote[rel], node]
    _save_manifest(local_dir, seen)
