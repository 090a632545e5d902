"""Files to and from cloud nodes: a job's workdir goes up before it starts (size cap, excludes),
what it wrote under HYBRIDCTL_OUTPUT_DIR comes back when it ends. Cloud nodes do not share the
lab's filesystem; on-prem nodes use paths as they are.

Both directions cross users, so neither runs with the controller's rights on a user's files. The
workdir is read by `tar` running as the job's owner (the controller is root in production: reading
as itself would upload directories the user cannot read), and the archive is unpacked on the node
by the agent as the job's user (`stage_unpack`). Outputs are copied by the agent, as the job's
user and never through a link, into a staging directory (`stage_pull`) that SFTP then reads."""

from __future__ import annotations

import asyncio
import io
import os
import pwd
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hybridctl.control.checkpoints import STAGE_TIMEOUT_S, TransferMismatch, _fd_path, _walk, checked
from hybridctl.core.errors import ExitCode, HybridctlError

TAR = "workdir.tar"
"""The archive's name in the node's staging directory."""
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TransferError(HybridctlError):
    """A workdir upload or output download failed."""


class WorkdirTooLarge(TransferError):
    """The workdir is over `cloud.workdir_cap_mb`."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Owner:
    """Whose rights a job's files are read and written with: the job's user."""

    user: str
    uid: int
    gid: int

    def groups(self) -> list[int]:
        try:
            return os.getgrouplist(self.user, self.gid)
        except OSError:
            return [self.gid]

    def fields(self) -> dict[str, Any]:
        """The identity fields of an agent `stage_*` request."""
        return {"user": self.user, "uid": self.uid, "gid": self.gid}


# ---- the workdir, read as its owner --------------------------------------------------------------


class _Tee(io.RawIOBase):
    """tar's stdout as tarfile reads it, copied to the archive file on the way."""

    def __init__(self, src: Any, out: Any) -> None:
        self.src, self.out, self.total = src, out, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.src.read1(len(b)) if hasattr(self.src, "read1") else self.src.read(len(b))
        n = len(data)
        b[:n] = data
        self.out.write(data)
        self.total += n
        return n


def _tar_argv(root: Path, excludes: Sequence[str]) -> list[str]:
    # An argv, never a shell line: the workdir is the user's string. Patterns without a slash
    # match a name at any depth, as the excludes always did.
    return ["tar", "--create", "--file=-", "--format=gnu", "--no-xattrs", "--no-acls",
            *[f"--exclude={p}" for p in excludes], "--directory", str(root), "--", "."]


def pack(root: Path, owner: Owner, excludes: Sequence[str], cap_bytes: int, dest: Path,
         members: list[tuple[Path, int]] | None = None) -> tuple[int, int]:
    """Write a tar of the workdir `root` to `dest`, read by `tar` running as `owner` (files it
    cannot read fail the upload; links travel as links and are not unpacked). Returns (files,
    bytes of file content). WorkdirTooLarge past `cap_bytes` (stops reading at once)."""
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0 and owner.uid != 0:
        kwargs = {"user": owner.uid, "group": owner.gid, "extra_groups": owner.groups()}
    elif os.geteuid() != owner.uid:
        raise TransferError(f"the controller runs as uid {os.geteuid()}, not root: it cannot read the workdir "
                            f"{root} as {owner.user} (uid {owner.uid}); submit with --placement onprem")
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: tar's complaints never block it
        try:
            proc = subprocess.Popen(_tar_argv(root, excludes), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=errors, cwd="/", **kwargs)
        except OSError as exc:
            raise TransferError(f"cannot run tar to read the workdir {root}: {exc}") from exc
        files = total = 0
        assert proc.stdout is not None
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                try:
                    with tarfile.open(fileobj=io.BufferedReader(_Tee(proc.stdout, out), 1 << 16), mode="r|") as tar:
                        for m in tar:
                            if not m.isreg():
                                continue
                            files += 1
                            total += m.size
                            if members is not None:
                                members.append((Path(os.path.normpath(m.name)), m.size))
                            if total > cap_bytes:
                                raise WorkdirTooLarge(
                                    f"workdir {root} is over {_size(cap_bytes)} (cloud.workdir_cap_mb), too large to"
                                    f" upload to a cloud node; exclude large files (cloud.workdir_excludes:"
                                    f" {', '.join(excludes) or 'none'}), keep data sets in object storage, or submit"
                                    " with --placement onprem")
                except tarfile.TarError:
                    pass  # tar failed before a whole archive: its exit status and message say why
                while chunk := proc.stdout.read(1 << 16):  # the end-of-archive padding
                    out.write(chunk)
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            proc.wait()
        errors.seek(0)
        err = errors.read().decode(errors="replace").strip()
    if proc.returncode != 0:
        why = err.splitlines()[0] if err else f"tar exited {proc.returncode}"  # the first is the cause
        raise TransferError(f"cannot read the workdir {root} as {owner.user}: {why.removeprefix('tar: ')}")
    return files, total


def scan(root: Path, excludes: Sequence[str], cap_bytes: int, owner: Owner | None = None) -> list[tuple[Path, int]]:
    """Files (relative path, size) of the workdir `root` that an upload carries, read as `owner`
    (default: this process's user). WorkdirTooLarge past `cap_bytes`."""
    if owner is None:
        uid = os.geteuid()
        owner = Owner(pwd.getpwuid(uid).pw_name, uid, os.getegid())
    out: list[tuple[Path, int]] = []
    with tempfile.TemporaryDirectory(prefix="hybridctl-workdir-") as tmp:
        pack(root, owner, excludes, cap_bytes, Path(tmp) / TAR, out)
    return sorted(out)


async def upload(agent: Any, files: Any, key: str, owner: Owner, root: Path, excludes: Sequence[str],
                 cap_bytes: int) -> tuple[str, int]:
    """Copy the workdir `root` into the job's workdir on the node, read here and written there as
    `owner`; return (the directory on the node, bytes of file content)."""
    if not root.is_dir():
        raise TransferError(f"workdir {root} is not a directory on the controller host; cloud nodes get a copy of it")
    with tempfile.TemporaryDirectory(prefix="hybridctl-workdir-") as tmp:  # 0700, the controller's
        archive = Path(tmp) / TAR
        _files, nbytes = await asyncio.to_thread(pack, root, owner, excludes, cap_bytes, archive)
        opened = await agent.call("stage_open", timeout=STAGE_TIMEOUT_S)
        try:
            await files.put(str(archive), f"{opened['path']}/{TAR}", archive.stat().st_size)
        except BaseException:
            await agent.call("stage_done", timeout=STAGE_TIMEOUT_S, token=opened["token"])
            raise
        res = await agent.call("stage_unpack", timeout=STAGE_TIMEOUT_S, key=key, kind="workdir",
                               token=opened["token"], tar=TAR, **owner.fields())
    return str(res["dir"]), nbytes


async def output_dir(agent: Any, key: str, owner: Owner) -> str:
    """Make the job's output directory on the node (the job's own, 0700) and return its path."""
    res = await agent.call("stage_push", timeout=STAGE_TIMEOUT_S, key=key, kind="output", files={}, **owner.fields())
    return str(res["dir"])


# ---- outputs, staged by the agent ----------------------------------------------------------------


async def download(agent: Any, files: Any, key: str, dest: Path, cap_bytes: int,
                   node: str = "") -> tuple[int, int, bool]:
    """Copy the job's output directory on the node into `dest`, as the agent staged it (read as
    the job's user, links skipped); return (files, bytes, truncated at cap)."""
    res = await agent.call("stage_pull", timeout=STAGE_TIMEOUT_S, key=key, kind="output", have={},
                           max_bytes=cap_bytes)
    token = res.get("token")
    count = total = 0
    try:
        staged = checked(res.get("staged") or {}, "output listing", node)
        if staged:
            dest.mkdir(parents=True, exist_ok=True)
            top = os.open(dest, _DIR)
            try:
                for rel, (size, _mtime) in sorted(staged.items()):
                    names = rel.split("/")
                    dfd = _walk(top, names[:-1], create=True)
                    try:
                        tmp = f".{names[-1]}.part"
                        try:
                            os.unlink(tmp, dir_fd=dfd)
                        except FileNotFoundError:
                            pass
                        await files.get(f"{res['path']}/{rel}", _fd_path(dfd, tmp), size)
                        got = os.stat(tmp, dir_fd=dfd, follow_symlinks=False)
                        if not stat.S_ISREG(got.st_mode) or got.st_size != size:
                            os.unlink(tmp, dir_fd=dfd)
                            raise TransferMismatch(f"output {rel}: {got.st_size} bytes arrived, the node listed {size}")
                        os.rename(tmp, names[-1], src_dir_fd=dfd, dst_dir_fd=dfd)
                    finally:
                        os.close(dfd)
                    count += 1
                    total += size
            finally:
                os.close(top)
    finally:
        if token:
            await agent.call("stage_done", timeout=STAGE_TIMEOUT_S, token=token)
    return count, total, bool(res.get("truncated"))


def owner_of(info: dict[str, Any]) -> Owner:
    """The job's owner from the store's launch info (user name, uid, gid at submit time)."""
    uid = int(info["uid"])
    user = info.get("user")
    if not user:
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
    return Owner(str(user), uid, int(info.get("gid") if info.get("gid") is not None else uid))


def _size(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n} bytes"
