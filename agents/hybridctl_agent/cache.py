"""The node's content-addressed data cache for file_mounts: `<state>/cache/objects/<sha256>`, one
read-only, agent-owned file per distinct content, shared by every job that mounts those bytes, with
a size cap and least-recently-used eviction (a job's pinned objects are never evicted while its
directory is active). Sources (an S3 object at an ETag, a file the controller sent) map to
objects through `index/`; every object entered is verified by size and SHA-256 first.

Objects are named by their content hash under a directory nobody but the agent may list (0711):
a job reaches an object only through the links its own mount made, and learns a name only by
holding the content or having mounted it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set

SHA_RE = re.compile(r"[0-9a-f]{64}\Z")
CHUNK = 1 << 20


class CacheError(Exception):
    """Bytes that do not match what they were said to be, or a cache that cannot hold them."""


class ContentCache:
    """See the module docstring. `max_bytes` 0: no cap."""

    def __init__(self, state_dir: str, max_bytes: int = 0) -> None:
        self.root = Path(state_dir) / "cache"
        self.objects = self.root / "objects"
        self.index = self.root / "index"
        self.tmp = self.root / "tmp"
        self.max_bytes = max_bytes

    def prepare(self) -> None:
        for d, mode in ((self.root, 0o711), (self.objects, 0o711), (self.index, 0o700),
                        (self.tmp, 0o700)):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, mode)

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
        os.rename(tmp, self.path(sha))

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
                os.unlink(self.objects / o["sha256"])
            except OSError:
                continue
            total -= o["size"]
            removed.append(o["sha256"])
        return removed


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
