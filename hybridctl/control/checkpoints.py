"""Moving a job's checkpoint directory between its node and the controller's checkpoint store.

Pull (node -> controller) runs every `fleet.checkpoint_sync_interval` while a job runs and once
more when its processes end; only files whose size or mtime changed travel. Push (controller ->
node) restores the latest copy before a job starts again, on any node. Over SSH both use SFTP on
the node's existing connection; a local agent (`host: local`) gets plain file copies."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

MANIFEST = ".hybridctl-manifest.json"


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


async def pull(files: Any, remote_dir: str, remote: dict[str, list[int]], local_dir: Path) -> int:
    """Copy new and changed files from the node; return the bytes copied. `remote` is the agent's
    listing of `remote_dir` ({path: [size, mtime_ns]}: nanoseconds, since a checkpoint rewritten
    within the second it was last copied must travel again). Files appear atomically (temp +
    rename), so a copy interrupted by a lost node never leaves a torn checkpoint."""
    local_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = local_dir / MANIFEST
    try:
        seen: dict[str, list[int]] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        seen = {}
    copied = 0
    for rel, (size, mtime) in sorted(remote.items()):
        if rel == MANIFEST or seen.get(rel) == [size, mtime]:
            continue
        dest = local_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        await files.get(os.path.join(remote_dir, rel), str(tmp))
        os.replace(tmp, dest)
        seen[rel] = [size, mtime]
        copied += size
    if copied:
        for rel in set(seen) - set(remote):  # deleted on the node (a rotated checkpoint)
            (local_dir / rel).unlink(missing_ok=True)
            del seen[rel]
        tmp_manifest = manifest_path.with_suffix(".tmp")
        tmp_manifest.write_text(json.dumps(seen))
        os.replace(tmp_manifest, manifest_path)
    return copied


async def push(files: Any, local_dir: Path, remote_dir: str) -> int:
    """Restore the controller's copy onto a node before the job starts there; return bytes sent."""
    sent = 0
    if not local_dir.is_dir():
        return 0
    for path in sorted(local_dir.rglob("*")):
        if not path.is_file() or path.name == MANIFEST or path.name.endswith(".part"):
            continue
        rel = str(path.relative_to(local_dir))
        await files.put(str(path), os.path.join(remote_dir, rel))
        sent += path.stat().st_size
    return sent
