"""SkyPilot's git workdir (`workdir: {url, ref}`): `hybridctl submit` clones the repository at that
ref on the submitting side, as the submitting user (their git credentials, their network), into a
per-user cache, and submits the clone's path as the job's workdir. The controller never clones:
it would do so as itself.

The cache is `$XDG_CACHE_HOME/hybridctl/git` (else `~/.cache/hybridctl/git`), one directory per
repository and commit: `<sha256(url)[:16]>/<commit>`. A commit's tree never changes, so a clone is
reused by later submits of the same commit and never updated under a queued job; removing old
ones is the user's call (they are plain directories). Git runs with an argv list (never a shell),
no terminal prompt, and a time limit.

A cached clone is submitted as the job's code, so the cache must be the caller's alone: the
root, its parent, each repository directory and each commit directory must be a real directory
(never a symbolic link, which is not followed), owned by the caller and not writable by group
or others; anything else is refused (exit 2) rather than reused."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping

from hybridctl.core.errors import SpecError

CLONE_TIMEOUT_S = 600.0
_REF_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./@{}^~+-]*")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hybridctl" / "git"


def workdir_of(tasks: list[Mapping[str, Any]], source: str) -> tuple[str, str | None] | None:
    """The (url, ref) of the tasks' git workdir, or None if none has one. Tasks of one pipeline
    with different git workdirs are refused (one clone is submitted for all of them)."""
    found: set[tuple[str, str | None]] = set()
    for task in tasks:
        wd = task.get("workdir")
        if not isinstance(wd, Mapping):
            continue
        url, ref = wd.get("url"), wd.get("ref")
        extra = set(wd) - {"url", "ref"}
        if extra:
            raise SpecError(f"workdir.{sorted(extra)[0]}", wd[sorted(extra)[0]], "a git workdir has url and ref",
                            source, problem="unknown key")
        if not isinstance(url, str) or not url.strip() or url.startswith("-"):
            raise SpecError("workdir.url", url, "expected a git repository URL or path", source)
        if ref is not None and (not isinstance(ref, str) or not _REF_RE.fullmatch(ref)):
            raise SpecError("workdir.ref", ref, "expected a branch, tag or commit", source)
        found.add((url, ref))
    if len(found) > 1:
        raise SpecError("workdir", None, "give the tasks one git workdir", source,
                        problem="the tasks of this pipeline name different git workdirs")
    return found.pop() if found else None


def clone(url: str, ref: str | None, source: str = "", cache: Path | None = None) -> str:
    """The path of a checkout of `url` at `ref` (the default branch if None), cloning it into the
    cache unless that commit is there already. Errors raise SpecError (exit 2) with git's reason."""
    base = cache or cache_dir()
    root = base / hashlib.sha256(url.encode()).hexdigest()[:16]
    base.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _private_dir(base.parent, source, make=False)
    _private_dir(base, source)
    _private_dir(root, source)
    tmp = Path(tempfile.mkdtemp(prefix=".clone-", dir=root))
    try:
        _git(["clone", "--quiet", "--no-checkout", "--", url, str(tmp)], url, source)
        commit = None
        for name in [ref or "HEAD", f"origin/{ref}"] if ref else ["HEAD"]:
            out = _git(["-C", str(tmp), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"], url, source,
                       check=False)
            if out:
                commit = out
                break
        if commit is None:
            raise SpecError("workdir.ref", ref, f"name a branch, tag or commit of {url}", source,
                            problem=f"{ref!r} is not in the repository")
        final = root / commit
        if _private_dir(final, source, make=False, missing_ok=True):
            return str(final)
        _git(["-C", str(tmp), "checkout", "--quiet", "--detach", commit], url, source)
        try:
            tmp.rename(final)
        except OSError:  # another submit of the same commit won the race
            if not _private_dir(final, source, make=False, missing_ok=True):
                raise
        return str(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _private_dir(path: Path, source: str, make: bool = True, missing_ok: bool = False) -> bool:
    """Check that `path` is a directory (not a link to one) owned by the caller and not writable
    by group or others, creating it (0700) first if `make`. False if it is missing and
    `missing_ok`; SpecError (exit 2) naming the path and what is wrong otherwise."""
    if make:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SpecError("workdir", str(path), "use a cache directory you can write (XDG_CACHE_HOME)", source,
                            problem=f"the git workdir cache {str(path)!r} cannot be created: {exc.strerror}") from None
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if missing_ok:
            return False
        raise SpecError("workdir", str(path), "use a cache directory you can write (XDG_CACHE_HOME)", source,
                        problem=f"the git workdir cache {str(path)!r} is missing") from None
    why = None
    if stat.S_ISLNK(info.st_mode):
        why = "is a symbolic link"
    elif not stat.S_ISDIR(info.st_mode):
        why = "is not a directory"
    elif info.st_uid != os.geteuid():
        why = f"is owned by uid {info.st_uid}, not by you (uid {os.geteuid()})"
    elif info.st_mode & 0o022:
        why = f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    if why is not None:
        raise SpecError("workdir", str(path),
                        "remove it, or set XDG_CACHE_HOME to a directory only you own and can write", source,
                        problem=f"the git workdir cache {str(path)!r} {why}: not used")
    return True


def _git(argv: list[str], url: str, source: str, check: bool = True) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false"}
    try:
        # `ext::` runs a command: never from a job file (someone else may have written it), even
        # where the user's git config allows every protocol (protocol.<name>.allow wins).
        done = subprocess.run(["git", "-c", "protocol.ext.allow=never", *argv], capture_output=True, text=True, env=env,
                              timeout=CLONE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SpecError("workdir.url", url, "install git, or give a local directory as workdir", source,
                        problem=f"{url!r} cannot be cloned: git is not installed") from None
    except subprocess.TimeoutExpired:
        raise SpecError("workdir.url", url, "clone it yourself and give its directory as workdir", source,
                        problem=f"{url!r} cannot be cloned within {CLONE_TIMEOUT_S:g}s") from None
    if done.returncode and check:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        fatal = [ln.removeprefix("fatal: ") for ln in lines if ln.startswith("fatal: ")]
        why = (fatal or lines or [f"git exited {done.returncode}"])[0]
        raise SpecError("workdir.url", url, "check the URL and your access to it", source,
                        problem=f"{url!r} cannot be cloned: {why}")
    return done.stdout.strip() if not done.returncode else ""


def prepare(text: str | None, source: str) -> str | None:
    """For `hybridctl submit FILE`: the path of the clone to submit as `--workdir`, if the file
    has a git workdir; None otherwise (and cheaply: no YAML parse unless it mentions `url`)."""
    if not text or "url" not in text:
        return None
    from hybridctl.core.spec import load_tasks

    found = workdir_of(load_tasks(text, source), source)
    return clone(*found, source=source) if found else None
