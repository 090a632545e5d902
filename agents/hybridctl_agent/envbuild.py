"""The environment build process: `python -S -m hybridctl_agent.envbuild`, one per launch that
names an environment (envs.py decides which env and where). It takes the env's lock, and unless
the env is marked ready runs each uv step as the job's user, then marks it ready (agent-owned
marker). Reads one request (JSON) on stdin, writes one answer on stdout. What a build reads in
the job directory (`env/`: the definition files, the shipped wheels) is the agent's, opened for
the build to the job's uid alone (useracl), never to whoever guesses the job key."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Set, Tuple

_HASH_RE = re.compile(r"[0-9a-f]{32}\Z")


def offline(req: Mapping[str, Any]) -> bool:
    """Built with no package index: the node says it has none (env_offline), or wheels were
    shipped or configured (env_wheelhouse)."""
    return bool(req.get("offline") or req.get("wheelhouse") or req.get("wheels"))


def _steps(req: Mapping[str, Any]) -> List[tuple]:
    """(name, argv, capture) of each uv step. `capture`: stdout becomes the requirements file."""
    uv, env_dir, bdir = req["uv"], req["env_dir"], req["build_dir"]
    index: List[str] = []
    if offline(req):
        index = ["--offline", "--no-index"]
        if req.get("wheels"):  # shipped by the controller (_link_wheels)
            index += ["--find-links", os.path.join(bdir, "wheels")]
        if req.get("wheelhouse"):
            index += ["--find-links", req["wheelhouse"]]
    venv = [uv, "venv", "--clear", "--no-config", "--quiet"]
    if req.get("python"):
        venv += ["--python", req["python"]]
    steps: List[tuple] = [("uv venv", venv + [env_dir], False)]
    reqs = os.path.join(bdir, "requirements.txt")
    if req["kind"] == "pyproject":
        reqs = os.path.join(bdir, "pyproject.toml")
    if req["kind"] == "uv_lock":
        steps.append(("uv export", [uv, "export", "--frozen", "--no-hashes", "--no-config",
                                    "--format", "requirements-txt", "--no-emit-project",
                                    "--project", bdir] + (["--offline"] if index else []), True))
        reqs = os.path.join(bdir, "locked-requirements.txt")
    steps.append(("uv pip install", [uv, "pip", "install", "--no-config",
                                     "--python", os.path.join(env_dir, "bin", "python"),
                                     "-r", reqs] + index, False))
    return steps


def _user_env(req: Mapping[str, Any]) -> Dict[str, str]:
    env = {"PATH": req["job_path"], "HOME": req["home"], "LANG": "C.UTF-8",
           "UV_CACHE_DIR": os.path.join(req["user_dir"], ".uv-cache"), "UV_NO_PROGRESS": "1"}
    if offline(req):
        env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def build(req: Mapping[str, Any]) -> Dict[str, Any]:
    """Build (or find ready) one env under its lock; every uv step runs as the job's user. After
    a build, trim the env cache to its cap (evict)."""
    uid = int(req["uid"])
    log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600)
    try:
        if req["as_root"]:
            os.fchown(log, uid, int(req["gid"]))

        def note(text: str) -> None:
            os.write(log, f"hybridctl: {text}\n".encode())

        try:
            answer = _build_locked(req, log, note)
        finally:
            if req.get("wheels"):  # hard links of cache objects: they must not outlive the build
                shutil.rmtree(os.path.join(req["build_dir"], "wheels"), ignore_errors=True)
        if answer.get("built"):
            try:
                for gone_uid, gone, nbytes in evict(Path(req["root"]), Path(req["jobs_root"]),
                                                    int(req.get("max_bytes") or 0)):
                    note(f"evicted environment {gone[:12]} of uid {gone_uid} ({nbytes >> 20} MiB, "
                         "least recently used) to keep the env cache under env_cache_max_gb")
            except OSError as exc:  # the build stands; the cache is trimmed at the next one
                note(f"env cache eviction stopped: {exc.strerror or exc}")
        return answer
    finally:
        os.close(log)


def _build_locked(req: Mapping[str, Any], log: int, note: Any) -> Dict[str, Any]:
    from hybridctl_agent.fdio import ensure_target

    uid, gid = int(req["uid"]), int(req["gid"])
    root = Path(req["root"])
    lock_path = root / "locks" / f"u{uid}-{req['digest']}.lock"
    marker = root / "ready" / f"u{uid}-{req['digest']}.json"
    lock = os.open(str(lock_path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        waited = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of this env: wait for it
        waited = time.monotonic() - waited
        if marker.exists() and os.path.isfile(os.path.join(req["env_dir"], "bin", "python")):
            os.utime(marker)  # last use, for eviction
            note(f"environment {req['digest'][:12]} is ready on this node: reused"
                 + (f" (waited {waited:.1f} s for its build)" if waited > 0.5 else ""))
            return {"ok": True, "built": False}
        os.close(ensure_target(str(root), f"u{uid}", uid, gid))  # theirs, 0700, never a link
        bfd = open_build_dir(req)
        try:
            if req.get("wheels"):
                _link_wheels(req, bfd)
        finally:
            os.close(bfd)
        note(f"building environment {req['digest'][:12]} with uv")
        started = time.monotonic()
        for name, argv, capture in _steps(req):
            note(f"step {name}: {' '.join(argv)}")
            extra: Dict[str, Any] = {}
            if req["as_root"]:
                extra = {"user": uid, "group": gid, "extra_groups": list(req["groups"])}
            out = subprocess.PIPE if capture else log
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                                  env=_user_env(req), cwd=req["build_dir"], **extra)
            if proc.returncode != 0:
                note(f"step {name} failed with exit code {proc.returncode}")
                return {"ok": False, "step": name, "exit_code": proc.returncode}
            if capture:  # written by us into the build directory (ours, the job's uid's alone)
                fd = os.open(os.path.join(req["build_dir"], "locked-requirements.txt"),
                             os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(proc.stdout)
        seconds = round(time.monotonic() - started, 2)
        size = _du(req["env_dir"])
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"uid": uid, "hash": req["digest"], "kind": req["kind"],
                                   "python": req["python"], "bytes": size,
                                   "build_s": seconds, "built_at": time.time()}))
        os.rename(tmp, marker)
        note(f"environment {req['digest'][:12]} built in {seconds:.1f} s ({size >> 20} MiB)")
        return {"ok": True, "built": True, "build_s": seconds}
    finally:
        os.close(lock)  # releases the flock


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_to_job(req: Mapping[str, Any], fd: int, what: str) -> None:
    """Directory `fd` (ours) listable and searchable by the job's uid alone (useracl: an ACL entry,
    or its private group); a rootless agent's jobs are its own uid: 0700. Refused, never widened."""
    from hybridctl_agent import useracl

    uid, gid = (int(req["uid"]), int(req["gid"])) if req["as_root"] else (os.geteuid(), os.getegid())
    if not useracl.open_to(fd, uid, gid, useracl.READ_SEARCH):
        raise OSError(errno.EACCES, f"cannot give uid {uid} alone access to {what}: the filesystem "
                      f"of {req['build_dir']} has no POSIX ACLs and gid {gid} is shared with other "
                      "accounts (put state_dir on ext4/xfs/btrfs/tmpfs)")


def open_build_dir(req: Mapping[str, Any]) -> int:
    """An fd of `<job>/env`, the build directory (made 0700 by world.write_files, never a link),
    opened to the job's uid alone for the build: uv reads the definition files there as that uid.
    Nobody else who knows the job key reads them (a requirements file may name private URLs)."""
    fd = os.open(req["build_dir"], _DIR)
    try:
        _open_to_job(req, fd, "its environment's definition files")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _link_wheels(req: Mapping[str, Any], bfd: int) -> None:
    """The wheels the controller shipped (data cache objects, the agent's, 0444) under their wheel
    file names in `wheels/` of the build directory `bfd`, for uv's --find-links: ours, and like
    the build directory listable by the job's uid alone (a wheel can be a lab's private code;
    the objects themselves are sealed in the cache). Hard links, or copies across file systems,
    made through dir fds without following a link. Names were checked (envs.parse_wheels)."""
    try:
        os.mkdir("wheels", 0o700, dir_fd=bfd)
    except FileExistsError:
        pass
    wfd = os.open("wheels", _DIR, dir_fd=bfd)
    try:
        _open_to_job(req, wfd, "its shipped wheels")
        for name, src in req["wheels"].items():
            try:
                os.link(src, name, dst_dir_fd=wfd, follow_symlinks=False)
            except FileExistsError:  # linked already (our directory: no one else names things here)
                continue
            except OSError:
                fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:  # whole or not at all: a copy cut short must not pass for the wheel next time
                    part = f".{name}.part"
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(part, dir_fd=wfd)
                    out = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  0o444, dir_fd=wfd)
                    with os.fdopen(out, "wb") as dst, os.fdopen(os.dup(fd), "rb") as inp:
                        shutil.copyfileobj(inp, dst, 1 << 20)
                    os.rename(part, name, src_dir_fd=wfd, dst_dir_fd=wfd)
                finally:
                    os.close(fd)
    finally:
        os.close(wfd)


def _pinned(jobs_root: Path) -> Set[Tuple[int, str]]:
    """(uid, hash) of every env named by a job in `jobs_root` that has no exit record yet
    (half-written `.build-*` directories included): never evicted."""
    out: Set[Tuple[int, str]] = set()
    try:
        entries = list(os.scandir(jobs_root))
    except OSError:
        return out
    for e in entries:
        d = Path(e.path)
        if os.path.lexists(d / "exit.json"):
            continue
        try:
            env = json.loads((d / "spec.json").read_text()).get("environment")
        except (OSError, ValueError):
            continue
        if isinstance(env, dict) and isinstance(env.get("digest"), str):
            try:
                out.add((int(env["uid"]), env["digest"]))
            except (TypeError, ValueError):
                continue
    return out


def evict(root: Path, jobs_root: Path, max_bytes: int) -> List[Tuple[int, str, int]]:
    """Remove least recently used ready envs until the ready ones fit `max_bytes` (0: no cap).
    An env is kept while a job that names it has no exit record, or while its build lock is held
    (a build, a reuse check or another eviction: tried without waiting, skipped if taken). Under
    the lock the marker goes first (so no build reuses a half-deleted env), then the directory,
    through directory fds (evict_dir). Returns (uid, hash, bytes) of each env removed."""
    from hybridctl_agent.fdio import Refused

    if max_bytes <= 0:
        return []
    ready = []
    for marker in (root / "ready").glob("u*-*.json"):
        try:
            info = json.loads(marker.read_text())
            ready.append((marker.stat().st_mtime, int(info["uid"]), str(info["hash"]),
                          int(info.get("bytes") or 0), marker))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    total = sum(r[3] for r in ready)
    removed: List[Tuple[int, str, int]] = []
    pins = _pinned(jobs_root) if total > max_bytes else set()
    for _mtime, uid, digest, size, marker in sorted(ready, key=lambda r: r[0]):
        if total <= max_bytes:
            break
        if marker.name != f"u{uid}-{digest}.json" or not _HASH_RE.match(digest):
            continue  # not a marker this agent wrote
        if (uid, digest) in pins:  # a first look; decided again under the lock
            continue
        lock = os.open(str(root / "locks" / f"u{uid}-{digest}.lock"),
                       os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use right now: another one goes instead
            # A job launched before we took the lock has written its spec by now: look again.
            if (uid, digest) in _pinned(jobs_root) or not marker.exists():
                continue
            os.unlink(marker)
            try:
                evict_dir(root, uid, digest)
            except (OSError, Refused):
                continue  # not what this agent built (an owner changed under it): left alone, unready
            total -= size
            removed.append((uid, digest, size))
        finally:
            os.close(lock)
    return removed


def evict_dir(root: Path, uid: int, digest: str) -> None:
    """Delete `<root>/u<uid>/<digest>` without following a link anywhere: `u<uid>` is opened
    O_NOFOLLOW below the agent's `root` and must belong to `uid`; an entry `<digest>` that is a
    link (or any non-directory) is unlinked, never followed; a directory is removed only if it
    belongs to `uid`, by shutil.rmtree on the directory fd (its fd-based walk opens every level
    O_NOFOLLOW and never leaves the tree)."""
    import stat

    from hybridctl_agent.fdio import open_dir

    rfd = os.open(str(root), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            ufd = open_dir(rfd, f"u{uid}", create=False)
        except FileNotFoundError:
            return
    finally:
        os.close(rfd)
    try:
        if os.fstat(ufd).st_uid not in (uid, os.geteuid()):
            raise PermissionError(f"{root}/u{uid} belongs to uid {os.fstat(ufd).st_uid}, not {uid}")
        try:
            st = os.stat(digest, dir_fd=ufd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(digest, dir_fd=ufd)  # a planted link: the name goes, its target stays
            return
        if st.st_uid != uid:
            raise PermissionError(f"{root}/u{uid}/{digest} belongs to uid {st.st_uid}, not {uid}")
        shutil.rmtree(digest, dir_fd=ufd)
    finally:
        os.close(ufd)


def _du(path: str) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except OSError:
                continue
    return total


def main() -> int:
    """`python -S -m hybridctl_agent.envs`: one build request (JSON) on stdin, the answer on stdout."""
    req = json.loads(sys.stdin.read())
    try:
        answer = build(req)
    except OSError as exc:
        answer = {"ok": False, "step": "prepare the environment's directories",
                  "error": f"{exc.strerror or exc}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
