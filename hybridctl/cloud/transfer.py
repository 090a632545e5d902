"""Files to and from cloud nodes over SFTP on the node's existing SSH connection: a job's workdir
goes up before it starts (size cap, excludes), what it wrote under HYBRIDCTL_OUTPUT_DIR comes
back when it ends. Cloud nodes do not share the lab's filesystem; on-prem nodes use paths as
they are."""

from __future__ import annotations

import fnmatch
import os
import posixpath
import stat
from pathlib import Path
from typing import Any, Sequence

from hybridctl.core.errors import HybridctlError


class TransferError(HybridctlError):
    """A workdir upload or output download failed."""


class WorkdirTooLarge(TransferError):
    """The workdir is over `cloud.workdir_cap_mb`."""

    exit_code = 2


def _excluded(name: str, excludes: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in excludes)


def scan(root: Path, excludes: Sequence[str], cap_bytes: int) -> list[tuple[Path, int]]:
    """Files (relative path, size) under `root` to upload, skipping excluded names at any depth and
    anything that is not a regular file or directory. WorkdirTooLarge past `cap_bytes`."""
    if not root.is_dir():
        raise TransferError(f"workdir {root} is not a directory on the controller host; cloud nodes get a copy of it")
    out: list[tuple[Path, int]] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _excluded(d, excludes))
        for name in sorted(filenames):
            if _excluded(name, excludes):
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            total += st.st_size
            if total > cap_bytes:
                raise WorkdirTooLarge(
                    f"workdir {root} is over {_size(cap_bytes)} (cloud.workdir_cap_mb), too large to upload to a"
                    f" cloud node; exclude large files (cloud.workdir_excludes: {', '.join(excludes) or 'none'}),"
                    " keep data sets in object storage, or submit with --placement onprem"
                )
            out.append((path.relative_to(root), st.st_size))
    return out


async def upload(conn: Any, root: Path, dest: str, excludes: Sequence[str], cap_bytes: int) -> int:
    """Copy the workdir `root` to `dest` on the node; return bytes sent."""
    import asyncssh

    files = scan(root, excludes, cap_bytes)
    sent = 0
    try:
        async with conn.start_sftp_client() as sftp:
            await sftp.makedirs(dest, exist_ok=True)
            made = {""}
            for rel, size in files:
                parent = rel.parent.as_posix()
                if parent not in made and parent != ".":
                    await sftp.makedirs(posixpath.join(dest, parent), exist_ok=True)
                    made.add(parent)
                await sftp.put(str(root / rel), posixpath.join(dest, rel.as_posix()), preserve=True)
                sent += size
    except (OSError, asyncssh.Error) as exc:
        raise TransferError(f"workdir upload to {dest} failed: {exc}") from exc
    return sent


async def mkdirs(conn: Any, *dirs: str) -> None:
    import asyncssh

    try:
        async with conn.start_sftp_client() as sftp:
            for d in dirs:
                await sftp.makedirs(d, exist_ok=True)
                await sftp.chmod(d, 0o777)  # the job may run as another user than the SSH one
    except (OSError, asyncssh.Error) as exc:
        raise TransferError(f"cannot create {', '.join(d for d in dirs)} on the node: {exc}") from exc


async def download(conn: Any, src: str, dest: Path, cap_bytes: int) -> tuple[int, int, bool]:
    """Copy the tree at `src` on the node into `dest`; return (files, bytes, truncated at cap)."""
    import asyncssh

    files = sent = 0
    truncated = False
    try:
        async with conn.start_sftp_client() as sftp:
            if not await sftp.exists(src):
                return 0, 0, False
            stack = [""]
            while stack:
                rel = stack.pop()
                for entry in sorted(await sftp.readdir(posixpath.join(src, rel)), key=lambda e: e.filename):
                    name = entry.filename
                    if name in (".", ".."):
                        continue
                    sub = posixpath.join(rel, name) if rel else name
                    kind = entry.attrs.type
                    if kind == asyncssh.FILEXFER_TYPE_DIRECTORY:
                        (dest / sub).mkdir(parents=True, exist_ok=True)
                        stack.append(sub)
                    elif kind == asyncssh.FILEXFER_TYPE_REGULAR:
                        size = entry.attrs.size or 0
                        if sent + size > cap_bytes:
                            truncated = True
                            continue
                        (dest / sub).parent.mkdir(parents=True, exist_ok=True)
                        await sftp.get(posixpath.join(src, sub), str(dest / sub))
                        files += 1
                        sent += size
    except (OSError, asyncssh.Error) as exc:
        raise TransferError(f"output download from {src} failed: {exc}") from exc
    return files, sent, truncated


def _size(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n} bytes"
