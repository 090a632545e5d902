"""The node's content-addressed data cache for file_mounts: `<state>/cache/objects/<sha256>`, one
read-only, agent-owned file per distinct content, shared by every job that mounts those bytes, with
a size cap and least-recently-used eviction (a job's pinned objects are never evicted while its
directory is active). Sources (an S3 object at an ETag, a file the controller sent) map to
objects through `index/`; every object entered is verified by size and SHA-256 first.

An object's id is no capability: `objects/` is the agent's alone (0700), so knowing a full SHA-256
opens nothing. A job reaches an object through a hard link the agent made (as itself, through dir
fds, never following a link) in `users/<uid>/`, a directory the agent owns, mode 0700 plus a POSIX
ACL entry that lets that uid alone search it (not list it, never write it); the job's mount links
point there. Hard links keep the sharing: one inode serves every user that mounts those bytes,
and its space comes back once eviction has unlinked every user's link and then the object."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set

from hybridctl_agent import useracl

SHA_RE = re.compile(r"[0-9a-f]{64}\Z")
CHUNK = 1 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CacheError(Exception):
    """Bytes that do not match what they were said to be, or a cache that cannot hold them."""


class ContentCache:
    """See the module docstring. `max_bytes` 0: no cap."""

    def __init__(self, state_dir: str, max_bytes: int = 0) -> None:
        self.root = Path(state_dir) / "cache"
        self.objects = self.root / "objects"
        self.users = self.root / "users"
        self.index = self.root / "index"
        self.tmp = self.root / "tmp"
        self.max_bytes = max_bytes

    def prepare(self) -> None:
        for d, mode in ((self.root, 0o711), (self.users, 0o711), (self.index, 0o700), (self.tmp, 0o700)):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, mode)
        self.objects.mkdir(mode=0o700, exist_ok=True)  # a new one is sealed from the start
        self.seal(self.root.parent / "jobs")

    def seal(self, jobs_root: Path) -> bool:
        """`objects/` to 0700 (the agent's alone), unless a job that has not ended mounts through
        links straight into it (placed by an agent from before `users/`: its mounts.json names no
        "links"); then it stays 0711 until those jobs end. Returns whether it is sealed."""
        if stat.S_IMODE(os.lstat(self.objects).st_mode) == 0o700:
            return True
        for d in jobs_root.iterdir() if jobs_root.is_dir() else ():
            try:
                m = json.loads((d / "mounts.json").read_text())
                if "links" not in m and m.get("objects") and not os.path.lexists(d / "exit.json"):
                    return False
            except (OSError, ValueError, TypeError):
                continue
        os.chmod(self.objects, 0o700)
        return True

    def grant(self, uid: int, gid: int, shas: Iterable[str]) -> Path:
        """Hard links in `users/<uid>/` to objects `shas` (each present: CacheError if not), made
        through dir fds without following a link; return that directory, which the job's mount
        links name. A name there that is not the object's inode (an older copy) is replaced."""
        ufd = self._user_dir(int(uid), int(gid))
        try:
            ofd = os.open(self.objects, _DIR)
        except BaseException:
            os.close(ufd)
            raise
        try:
            for sha in shas:
                self.path(sha)  # a SHA-256 in hex, or CacheError
                try:
                    want = os.stat(sha, dir_fd=ofd, follow_symlinks=False)
                except FileNotFoundError:
                    raise CacheError(f"object {sha[:12]} left this node's cache") from None
                for _ in range(2):
                    try:
                        os.link(sha, sha, src_dir_fd=ofd, dst_dir_fd=ufd, follow_symlinks=False)
                        break
                    except FileNotFoundError:  # dropped since the stat (drop renames it first)
                        raise CacheError(f"object {sha[:12]} left this node's cache") from None
                    except FileExistsError:
                        have = os.stat(sha, dir_fd=ufd, follow_symlinks=False)
                        if (have.st_dev, have.st_ino) == (want.st_dev, want.st_ino):
                            break
                        os.unlink(sha, dir_fd=ufd)
        finally:
            os.close(ofd)
            os.close(ufd)
        return self.users / str(int(uid))

    def _user_dir(self, uid: int, gid: int) -> int:
        """An fd of `users/<uid>/` (made if missing): ours, never writable or listable by the
        user; searchable by `uid` through an ACL entry, or, where the filesystem has no POSIX
        ACLs, through its group when that group is the user's alone. CacheError otherwise."""
        users = os.open(self.users, _DIR)
        try:
            try:
                os.mkdir(str(uid), 0o700, dir_fd=users)
            except FileExistsError:
                pass
            fd = os.open(str(uid), _DIR, dir_fd=users)
        finally:
            os.close(users)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise CacheError(f"{self.users / str(uid)} is not the agent's")
            if not useracl.open_to(fd, uid, gid, useracl.SEARCH):
                raise CacheError(f"cannot give uid {uid} alone access to its cached data: the "
                                 f"filesystem of {self.root} has no POSIX ACLs and gid {gid} is "
                                 "shared with other accounts (put state_dir on ext4/xfs/btrfs/tmpfs)")
            return fd
        except BaseException:
            os.close(fd)
            raise

    def drop(self, sha: str) -> None:
        """Remove object `sha` so its space comes back. First it leaves `objects/` (renamed into
        `tmp/`): a `grant` from then on finds no object (CacheError) and links nothing more. Then
        every user's hard link goes, each users/<uid>/ opened through dir fds (nothing followed);
        one that cannot be opened raises, and the object goes back to `objects/` (still counted,
        never freed behind a link nobody counts). Last the object's own name."""
        path = self.path(sha)
        gone = self.tmp / f"{sha}.{os.getpid()}.dropped"
        os.rename(path, gone)
        try:
            users = os.open(self.users, _DIR)
            try:
                for name in os.listdir(users):
                    ufd = os.open(name, _DIR, dir_fd=users)
                    try:
                        os.unlink(sha, dir_fd=ufd)
                    except FileNotFoundError:
                        pass
                    finally:
                        os.close(ufd)
            finally:
                os.close(users)
        except BaseException:
            try:  # back where listing and evict count it; a newer copy there stays
                os.link(gone, path, follow_symlinks=False)
            except OSError:
                pass
            os.unlink(gone)
            raise
        os.unlink(gone)

    def path(self, sha: str) -> Path:
        if not SHA_RE.match(sha):
            raise CacheError(f"{sha!r} is not a SHA-256 in hex")
        return self.objects / sha

    def has(self, sha: str, size: Optional[int] = None) -> bool:
        try:
            st = os.lstat(self.path(sha))
        except OSError:
            return False
        return st.st_size == size if size is not None else True

    def touch(self, sha: str) -> None:
        """Mark an object used now (LRU order is the objects' mtime)."""
        try:
            os.utime(self.path(sha))
        except OSError:
            pass

    def add(self, tmp: str, sha: str, size: int) -> None:
        """Enter the file `tmp` (ours, in `self.tmp`) as object `sha` after checking its size and
        hash; a mismatch removes it and raises."""
        try:  # never through a link: a staged name swapped for one is refused, not followed
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            os.unlink(tmp)
            raise CacheError(f"received file is not a regular file ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            h = hashlib.sha256()
            if stat.S_ISREG(st.st_mode):
                while True:
                    block = os.read(fd, CHUNK)
                    if not block:
                        break
                    h.update(block)
            real = h.hexdigest()
            if not stat.S_ISREG(st.st_mode) or st.st_size != size or real != sha:
                os.unlink(tmp)
                raise CacheError(f"received bytes do not match: size {st.st_size} (expected {size}), "
                                 f"sha256 {real[:12]} (expected {sha[:12]})")
            os.fchmod(fd, 0o444)
        finally:
            os.close(fd)
        try:  # never over a present copy: users' hard links name its inode (same bytes anyway)
            os.link(tmp, self.path(sha), follow_symlinks=False)
        except FileExistsError:  # unless that copy is not these bytes (its size says so): replaced
            if os.lstat(self.path(sha)).st_size != size:
                try:
                    self.drop(sha)
                    os.link(tmp, self.path(sha), follow_symlinks=False)
                except BaseException:
                    os.unlink(tmp)
                    raise
        os.unlink(tmp)

    def source(self, source_id: str) -> Optional[Dict[str, Any]]:
        """The object a source (e.g. `s3://b/k@etag`) was stored as, if it is still cached."""
        name = hashlib.sha256(source_id.encode()).hexdigest()
        try:
            entry = json.loads((self.index / name).read_text())
        except (OSError, ValueError):
            return None
        return entry if self.has(entry.get("sha256", ""), entry.get("size")) else None

    def remember(self, source_id: str, sha: str, size: int) -> None:
        name = hashlib.sha256(source_id.encode()).hexdigest()
        tmp = self.index / f".{name}.tmp"
        tmp.write_text(json.dumps({"source": source_id, "sha256": sha, "size": size}))
        os.rename(tmp, self.index / name)

    def listing(self) -> List[Dict[str, Any]]:
        """Every object: sha256, size, last use (the cache report)."""
        out = []
        with os.scandir(self.objects) as it:
            for e in it:
                if SHA_RE.match(e.name):
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    out.append({"sha256": e.name, "size": st.st_size, "last_used": st.st_mtime})
        return out

    def used_bytes(self) -> int:
        return sum(o["size"] for o in self.listing())

    def evict(self, pinned: Iterable[str], room: int = 0) -> List[str]:
        """Remove least recently used objects not in `pinned` until the cache, plus `room` bytes
        about to arrive, fits `max_bytes`; return what was removed."""
        if not self.max_bytes:
            return []
        keep: Set[str] = set(pinned)
        objects = sorted(self.listing(), key=lambda o: o["last_used"])
        total = sum(o["size"] for o in objects) + room
        removed = []
        for o in objects:
            if total <= self.max_bytes:
                break
            if o["sha256"] in keep:
                continue
            try:
                self.drop(o["sha256"])
            except OSError:
                continue
            total -= o["size"]
            removed.append(o["sha256"])
        return removed


def seal_at_exit(state_dir: str, jobs_root: Path) -> None:
    """`ContentCache.seal` when the agent records a job's exit (an upgraded node's last old-layout
    job may be this one): one lstat when already sealed; nothing where there is no cache yet."""
    try:
        ContentCache(state_dir).seal(jobs_root)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logging.getLogger(__name__).warning("cannot seal the data cache's objects/: %s", exc)


def pinned_by(jobs_root: Path) -> Set[str]:
    """Objects the jobs still in `jobs_root` (not yet forgotten) mount: never evicted."""
    out: Set[str] = set()
    for d in jobs_root.iterdir() if jobs_root.is_dir() else ():
        try:
            out.update(json.loads((d / "mounts.json").read_text()).get("objects", []))
        except (OSError, ValueError):
            continue
    return out


def add_staged(cache: ContentCache, staged: Path, files: Dict[str, Any]) -> Dict[str, int]:
    """Enter files the controller wrote into a staging directory (ours) as objects, each checked
    against its [sha256, size]; a name that is not a regular file there is refused. Returns
    counts: added, already present."""
    added = present = 0
    for rel, (sha, size) in files.items():
        if cache.has(sha, size):
            present += 1
            continue
        src = staged / rel
        st = os.lstat(src)  # the staging directory is ours; a link there is refused, not followed
        if not stat.S_ISREG(st.st_mode):
            raise CacheError(f"staged {rel} is not a regular file")
        tmp = cache.tmp / f"{sha}.{os.getpid()}.staged"
        os.rename(src, tmp) if st.st_dev == os.lstat(cache.tmp).st_dev else _copy(src, tmp)
        cache.add(str(tmp), sha, size)
        added += 1
    return {"added": added, "present": present}


def _copy(src: Path, dst: Path) -> None:
    import shutil

    shutil.copyfile(src, dst, follow_symlinks=False)
