"""The controller's copies of what cloud jobs wrote to HYBRIDCTL_OUTPUT_DIR, listed and read for
`op_outputs` / `op_output_read`.

A separate module because of who runs it and what it reads: the controller (root in production)
reads directories whose contents came from a node, in a home no user can enter. Every path is
opened one component at a time relative to the copy's directory fd with O_NOFOLLOW, and only
regular files are listed or read, so a link put there (by a node, a bug, or an admin's mistake)
is never followed. The copies expire (`cloud.output_keep_days`): `sweep` deletes them the same way.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hybridctl.control.checkpoints import safe_rel
from hybridctl.core.errors import NotFound, SpecError
from hybridctl.core.model import JobStatus
from hybridctl.core.reconcile import job_key
from hybridctl_agent.fdio import READ_FLAGS, Refused, open_dir, walk_to

log = logging.getLogger("hybridctl.controller")

OUTPUTS = "outputs"
"""The copies live in `<home>/outputs/<job key>` (`CloudSession.pull_outputs`)."""
MAX_CHUNK = 1 << 20
"""The most one `output_read` returns. The reply line (base64: a third longer) is JSON-encoded on
the controller's event loop, which every user shares: 1 MiB keeps that under ~15 ms on a slow
core (4 MiB blocked it ~80 ms for ~1.4x the throughput)."""
MAX_FILES = 100_000
"""A listing stops here (`truncated`): one reply line, built on the controller's event loop."""
MAX_DEPTH = 64
"""Directories deeper than this are left out of a listing (and counted in `skipped`): each
directory is reached again from the top, one step per level."""
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True)
class Listing:
    """The regular files of one rank's output copy."""

    files: dict[str, int]
    """Path relative to the output directory -> size in bytes."""
    skipped: int
    """Entries left out: links, devices, FIFOs, names that are not UTF-8, directories too deep."""
    truncated: bool
    """More than MAX_FILES files: the rest are not listed."""


@dataclass(frozen=True)
class OutputTarget:
    """The rank of one attempt of one task whose output copy a request names (owner checked)."""

    job_id: int
    task: int
    label: str
    """'42', or '42_7' for an array task."""
    attempt: int
    rank: int
    num_nodes: int
    state: JobStatus
    """The task's state now (of its latest attempt)."""
    latest: int
    """The task's latest attempt."""
    attempts: list[int]
    """The attempts that left outputs on the controller (any rank)."""
    node: str | None
    """Where this rank of this attempt ran; None if it never started."""

    @property
    def key(self) -> str:
        return self.key_of(self.rank)

    def key_of(self, rank: int) -> str:
        """The copy's name for another rank of the same attempt."""
        return job_key(self.job_id, self.task, self.attempt, rank)

    def note(self, found: bool) -> str:
        """Why there are no outputs (or why these may not be the last word); '' when all is said."""
        if self.attempt == self.latest and not self.state.is_terminal():
            if self.node is None:
                return f"job {self.label} has not started yet ({self.state.value})"
            return (f"job {self.label} is {self.state.value}: what it writes to $HYBRIDCTL_OUTPUT_DIR comes "
                    "back to the controller when it ends")
        if found:
            if self.attempt < self.latest:
                return (f"these are attempt {self.attempt}'s outputs; attempt {self.latest} left none "
                        f"({self.state.value})")
            return ""
        if self.node is None:
            return f"attempt {self.attempt} of job {self.label} never started: it left no outputs"
        return (f"job {self.label} left no outputs (attempt {self.attempt}, rank {self.rank} ran on {self.node}): "
                "$HYBRIDCTL_OUTPUT_DIR is set on cloud nodes only, and is copied back when the job ends if "
                "it holds files; on-prem jobs' files are where they wrote them")


def open_copy(home: Path, key: str) -> int | None:
    """A directory fd of the output copy of rank `key`, or None when there is none (never made:
    the job wrote nothing, ran on-prem, or has not ended). A link or a non-directory in its place
    counts as none: it was not made by the controller."""
    top = os.open(home, _DIR)  # the controller's own home (make_private checked it at start)
    try:
        return walk_to(top, [OUTPUTS, key], create=False)
    except (FileNotFoundError, Refused):
        return None
    finally:
        os.close(top)


def has_copy(home: Path, key: str) -> bool:
    fd = open_copy(home, key)
    if fd is None:
        return False
    os.close(fd)
    return True


def list_copy(home: Path, key: str) -> Listing | None:
    """The regular files below rank `key`'s output copy (None: there is none). Directories are
    entered with O_NOFOLLOW; everything else is `lstat`ed through the directory fd, never followed."""
    top = open_copy(home, key)
    if top is None:
        return None
    files: dict[str, int] = {}
    skipped = 0
    # Directories still to read, as names from the top: each is reached again from `top`, one
    # O_NOFOLLOW step at a time, when its turn comes. Holding their fds instead would open one per
    # subdirectory at once (thousands, in the controller every user shares).
    todo: list[list[str]] = [[]]
    try:
        while todo:
            names = todo.pop()
            try:
                fd = walk_to(top, names, create=False)
            except (FileNotFoundError, NotADirectoryError, Refused):  # replaced since it was listed
                skipped += 1
                continue
            try:
                with os.scandir(fd) as entries:  # scandir works on a dup: `fd` stays ours to close
                    for entry in entries:
                        rel = "/".join([*names, entry.name])
                        try:
                            rel.encode("utf-8")
                            st = entry.stat(follow_symlinks=False)  # fstatat(fd, name, AT_SYMLINK_NOFOLLOW)
                        except UnicodeEncodeError:
                            skipped += 1
                            continue
                        except FileNotFoundError:
                            continue
                        if stat.S_ISDIR(st.st_mode) and len(names) < MAX_DEPTH:
                            todo.append([*names, entry.name])
                        elif not stat.S_ISREG(st.st_mode) or safe_rel(rel) is None:  # a link, a FIFO, a path too long
                            skipped += 1
                        elif len(files) >= MAX_FILES:
                            return Listing(files, skipped, True)
                        else:
                            files[rel] = st.st_size
            finally:
                os.close(fd)
    finally:
        os.close(top)
    return Listing(files, skipped, False)


def check_path(path: object) -> list[str]:
    """The components of a path a client asked for; SpecError (exit 2) unless it is relative and
    normalised: no leading '/', no '.', '..' or empty parts, no NUL."""
    rel = safe_rel(path)
    if rel is None:
        raise SpecError("path", path, "name a file as `hybridctl outputs JOB` lists it: a relative path "
                        "with no '..', '.', empty parts or leading '/'")
    return rel.split("/")


def read_copy(home: Path, key: str, label: str, path: str, offset: int, max_bytes: int) -> tuple[bytes, int]:
    """(up to `max_bytes` bytes at `offset`, the file's size now) of one regular file in rank
    `key`'s output copy. NotFound (exit 4) for a file that is not there, and for anything that is
    not a regular file reached without a link: links are never followed."""
    names = check_path(path)
    top = open_copy(home, key)
    if top is None:
        raise NotFound(f"job {label} has no outputs on the controller; `hybridctl outputs {label}` says why")
    gone = NotFound(f"job {label}'s outputs have no regular file {path!r} (links are never followed); "
                    f"`hybridctl outputs {label}` lists them")
    try:
        try:
            dfd = walk_to(top, names[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError, Refused):
            raise gone from None
        try:
            fd = os.open(names[-1], READ_FLAGS, dir_fd=dfd)  # O_NOFOLLOW, O_NONBLOCK: no hang on a FIFO
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EISDIR):
                raise gone from None
            raise
        finally:
            os.close(dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise gone
            return os.pread(fd, max_bytes, offset), st.st_size
        finally:
            os.close(fd)
    finally:
        os.close(top)


# ---- expiry: `cloud.output_keep_days` ------------------------------------------------------------

SWEEP_EVERY_S = 3600.0
"""How often the daemon sweeps the copies (and once at start, before it serves requests)."""
_KEY_RE = re.compile(r"([0-9]{1,19})(?:_[0-9]{1,19})?\.a[0-9]{1,19}\.r[0-9]{1,19}")  # core/reconcile.job_key, ASCII


@dataclass(frozen=True)
class Copy:
    """One entry of `<home>/outputs`, as the sweep sees it (lstat: a link is not followed)."""

    key: str
    job_id: int
    made_at: float
    """Its inode's change time: set by the kernel, never by a node (a node's tar may set mtimes)."""


def copies(home: Path) -> list[Copy]:
    """Every entry of `<home>/outputs` named as a rank key (others were not made here and are left
    alone), lstat'ed through the directory's fd. None there: []."""
    try:
        fd = _outputs_dir(home)
    except (OSError, Refused):
        return []
    out = []
    try:
        with os.scandir(fd) as entries:
            for e in entries:
                m = _KEY_RE.fullmatch(e.name)
                if m is None:
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                out.append(Copy(e.name, int(m[1]), st.st_ctime))
    finally:
        os.close(fd)
    return out


def expired(found: list[Copy], submitted_at: dict[int, float | None], now: float, keep_s: float) -> list[str]:
    """The keys to delete: orphans (no job holds the id; `submitted_at` None), copies older than
    the job that now holds their id (made before it was submitted: the database was reset and the id
    handed out again), and copies made more than `keep_s` ago. Sorted."""
    out = []
    for c in found:
        since = submitted_at.get(c.job_id)
        if since is None or c.made_at < since or now - c.made_at > keep_s:
            out.append(c.key)
    return sorted(out)


def remove(home: Path, keys: list[str]) -> list[str]:
    """Delete these entries of `<home>/outputs` and everything below them, through directory fds
    (O_NOFOLLOW at every step): a link is unlinked, never followed. Returns those deleted."""
    try:
        fd = _outputs_dir(home)
    except (OSError, Refused):
        return []
    done = []
    try:
        for key in keys:
            try:
                _remove_tree(fd, key)
            except FileNotFoundError:
                continue
            except (OSError, Refused) as exc:  # replaced while we worked: the next sweep tries again
                log.warning("output copy %s: not deleted: %s", key, exc)
                continue
            done.append(key)
    finally:
        os.close(fd)
    return done


def sweep(settings: Any, store: Any, now: float) -> list[str]:
    """One sweep, all at once (the daemon's start, before requests): what `expired` names goes."""
    found = copies(settings.home_path)
    dead = expired(found, {c.job_id: store.job_submitted_at(c.job_id) for c in found}, now,
                   settings.cloud.output_keep_days * 86400)
    return remove(settings.home_path, dead)


async def sweep_forever(settings: Any, store: Any, clock: Callable[[], float]) -> None:
    """Sweep every SWEEP_EVERY_S: the directory work in a thread, the store (the loop's) here."""
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        found = await asyncio.to_thread(copies, settings.home_path)
        ids = {c.job_id for c in found}
        dead = expired(found, {j: store.job_submitted_at(j) for j in ids}, clock(),
                       settings.cloud.output_keep_days * 86400)
        if dead:
            gone = await asyncio.to_thread(remove, settings.home_path, dead)
            log.info("deleted %d expired output copies: %s", len(gone), ", ".join(gone[:20]))


def _outputs_dir(home: Path) -> int:
    top = os.open(home, _DIR)  # the controller's own home (make_private checked it at start)
    try:
        return walk_to(top, [OUTPUTS], create=False)
    finally:
        os.close(top)


def _remove_tree(parent: int, name: str) -> None:
    """Delete `name` in the directory `parent` and all below it. Depth-first without recursion (a
    node chose the tree's shape): each directory is reached again from `parent`, one O_NOFOLLOW
    step per level, emptied of its files, then of its subdirectories, then removed."""
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    path = [name]
    while path:
        fd = walk_to(parent, path, create=False)
        try:
            with os.scandir(fd) as entries:
                listed = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
            for entry, _ in (x for x in listed if not x[1]):
                os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)
        sub = next((entry for entry, is_dir in listed if is_dir), None)
        if sub is not None:
            path.append(sub)
            continue
        last = path.pop()
        pfd = walk_to(parent, path, create=False)
        try:
            os.rmdir(last, dir_fd=pfd)
        finally:
            os.close(pfd)
