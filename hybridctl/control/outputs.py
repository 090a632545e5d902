"""The controller's copies of what cloud jobs wrote to HYBRIDCTL_OUTPUT_DIR, listed and read for
`op_outputs` / `op_output_read`.

A separate module because of who runs it and what it reads: the controller (root in production)
reads directories whose contents came from a node, in a home no user can enter. Every path is
opened one component at a time relative to the copy's directory fd with O_NOFOLLOW, and only
regular files are listed or read, so a link put there (by a node, a bug, or an admin's mistake)
is never followed."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from hybridctl.control.checkpoints import safe_rel
from hybridctl.core.errors import NotFound, SpecError
from hybridctl.core.model import JobStatus
from hybridctl.core.reconcile import job_key
from hybridctl_agent.fdio import READ_FLAGS, Refused, open_dir, walk_to

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
