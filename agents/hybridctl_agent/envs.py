"""Python environments built with uv on the node, cached per (user, content hash).

A job names its environment by one defining file (`requirements`, `pyproject` or `uv_lock`, an
absolute path the controller resolved) and optionally a Python version. The agent reads that file
as the job's user (`cat` run with the job's uid: never as root), hashes its content, and points the
job at `<state>/envs/u<uid>/<hash>` (VIRTUAL_ENV, its bin first on PATH). Before the supervisor
starts, a build process (`python -S -m hybridctl_agent.envbuild`, one per launch) takes the env's lock,
and unless the env is marked ready builds it: `uv venv`, then `uv pip install` from a copy of the
definition kept in the (agent-owned) job directory, every uv step running as the job's user. So
concurrent launches of one env build it once, and a later job naming the same one reuses it.

Why per user: an environment is code every job that uses it runs. A cache shared by hash across
users lets the first builder plant code in another user's job (the env directory is written by
the builder's uid); keying by (uid, hash) confines a poisoned env to the user who poisoned it.
Locks and ready markers live in agent-owned directories, so no user can fake "ready" or swap a
lock for a link; the env directories themselves belong to their users.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from hybridctl_agent import jobfiles

KINDS = ("requirements", "pyproject", "uv_lock")
"""The keys that name an environment's defining file, exactly one per environment."""
MAX_DEFINITION = 4 << 20
"""Largest defining file read (a uv.lock of a big project is ~1 MiB)."""
READ_TIMEOUT_S = 30.0
TAIL_LINES = 8
"""Lines of a failed step's log quoted in the job's end reason."""


class EnvError(Exception):
    """An environment that cannot be used; `bad_request` says whether the request is at fault."""

    def __init__(self, message: str, bad_request: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.bad_request = bad_request


@dataclass(frozen=True)
class EnvSpec:
    """A launch's `environment` object, checked."""

    kind: str
    """One of KINDS."""
    path: str
    """The defining file (absolute)."""
    python: Optional[str]
    """A Python version request uv understands ("3.12", "3.11.7"); None: the default it finds."""


SHIPPED = {"requirements": ("requirements.txt",), "pyproject": ("pyproject.toml",),
           "uv_lock": ("uv.lock", "pyproject.toml")}
"""The defining files of each kind, by name, when the controller ships them into the data cache."""


def parse_shipped(raw: Dict[str, Any]) -> Tuple[EnvSpec, Dict[str, Tuple[str, int]]]:
    """`{kind, files: {NAME: [SHA256, SIZE]}, python?}`: the defining files the controller put in
    this node's data cache (cache_add) for a node that does not share the submitter's paths."""
    kind, files = raw.get("kind"), raw.get("files")
    if kind not in SHIPPED or not isinstance(files, dict) or sorted(files) != sorted(SHIPPED[kind]) or not all(
            isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and len(v[0]) == 64
            and all(c in "0123456789abcdef" for c in v[0]) and isinstance(v[1], int) for v in files.values()):
        raise EnvError(f"job.environment: a shipped environment is {{kind: one of {', '.join(KINDS)}, files: "
                       "{NAME: [sha256, size]} naming exactly its defining files}")
    spec = parse({kind: "/shipped", **({"python": raw["python"]} if raw.get("python") is not None else {})})
    return spec, {n: (v[0], v[1]) for n, v in files.items()}


WHEEL_RE = re.compile(r"[A-Za-z0-9_.+!-]{1,200}\.whl\Z")
MAX_WHEELS = 4096


def parse_wheels(raw: Any) -> Dict[str, Tuple[str, int]]:
    """`job.environment.wheels`: {WHEEL FILE NAME: [SHA256, SIZE]}, wheels the controller put in
    this node's data cache (cache_add, control/wheels.py) for an offline node to build from."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_WHEELS or not all(
            isinstance(n, str) and WHEEL_RE.match(n) and not n.startswith(".") and isinstance(v, list)
            and len(v) == 2 and isinstance(v[0], str) and len(v[0]) == 64
            and all(c in "0123456789abcdef" for c in v[0]) and isinstance(v[1], int)
            and not isinstance(v[1], bool) and v[1] >= 0 for n, v in raw.items()):
        raise EnvError(f"job.environment.wheels: expected {{WHEEL FILE NAME (*.whl): [sha256, size]}}, "
                       f"at most {MAX_WHEELS}")
    return {n: (v[0], v[1]) for n, v in raw.items()}


def wheel_paths(objects_dir: str, wheels: Mapping[str, Tuple[str, int]]) -> Dict[str, str]:
    """The cache object of each shipped wheel, checked present with its size."""
    out = {}
    for name, (sha, size) in wheels.items():
        path = os.path.join(objects_dir, sha)
        try:
            st = os.lstat(path)
        except OSError:
            raise EnvError(f"the wheel {name} ({sha[:12]}) is not in this node's cache",
                           bad_request=False) from None
        if st.st_size != size:
            raise EnvError(f"the wheel {name} in the cache has {st.st_size} bytes, not {size}",
                           bad_request=False)
        out[name] = path
    return out


def read_shipped(objects_dir: str, shipped: Mapping[str, Tuple[str, int]]) -> Dict[str, bytes]:
    """The shipped defining files, from the cache (the agent's own files), size-checked."""
    out = {}
    for name, (sha, size) in shipped.items():
        try:
            with open(os.path.join(objects_dir, sha), "rb") as fh:
                data = fh.read(MAX_DEFINITION + 1)
        except OSError:
            raise EnvError(f"the environment's {name} ({sha[:12]}) is not in this node's cache",
                           bad_request=False) from None
        if len(data) != size:
            raise EnvError(f"the environment's {name} in the cache has {len(data)} bytes, not {size}",
                           bad_request=False)
        out[name] = data
    return out


def parse(raw: Any) -> EnvSpec:
    """Check `job.environment`; raise EnvError naming the field."""
    if not isinstance(raw, dict):
        raise EnvError(f"job.environment must be an object, got {raw!r}")
    named = [k for k in KINDS if raw.get(k) is not None]
    unknown = sorted(set(raw) - set(KINDS) - {"python", "wheels"})
    if unknown:
        raise EnvError(f"job.environment: unknown key {unknown[0]!r}; accepted: "
                       f"{', '.join(KINDS)}, python, wheels")
    if len(named) != 1:
        raise EnvError(f"job.environment must name exactly one of {', '.join(KINDS)}, "
                       f"got {named or 'none'}")
    kind = named[0]
    path = raw[kind]
    if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
        raise EnvError(f"job.environment.{kind} must be an absolute path, got {path!r}")
    python = raw.get("python")
    if python is not None:
        if not isinstance(python, str) or not python or len(python) > 64 or not all(
                c.isalnum() or c in ".+-_" for c in python):
            raise EnvError(f"job.environment.python must be a version such as \"3.12\", "
                           f"got {python!r}")
    return EnvSpec(kind, path, python)


def read_as(path: str, uid: Optional[int], gid: int, groups: Sequence[int]) -> bytes:
    """The content of `path` as the job's user may read it. With `uid` None (rootless agent: the
    job is us) read it directly; otherwise `cat` runs with the job's uid, gid and groups, so the
    agent never opens a user's path with root's rights."""
    if uid is None:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_DEFINITION + 1)
        except OSError as exc:
            raise EnvError(f"cannot read the environment's file {path}: {exc.strerror}") from None
    else:
        try:
            done = subprocess.run(["/bin/cat", "--", path], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=READ_TIMEOUT_S, user=uid, group=gid,
                                  extra_groups=list(groups), env={"LANG": "C"}, cwd="/")
        except subprocess.TimeoutExpired:
            raise EnvError(f"reading the environment's file {path} as uid {uid} took over "
                           f"{READ_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise EnvError(f"cannot read the environment's file {path} as uid {uid}: {why[0]}")
        data = done.stdout
    if len(data) > MAX_DEFINITION:
        raise EnvError(f"the environment's file {path} is over {MAX_DEFINITION >> 20} MiB")
    return data


def definition_files(spec: EnvSpec, read: Any) -> Dict[str, bytes]:
    """The files that define the env, by the name they get in the build directory: a uv_lock
    needs the pyproject.toml next to it."""
    if spec.kind == "requirements":
        return {"requirements.txt": read(spec.path)}
    if spec.kind == "pyproject":
        return {"pyproject.toml": read(spec.path)}
    return {"uv.lock": read(spec.path),
            "pyproject.toml": read(os.path.join(os.path.dirname(spec.path), "pyproject.toml"))}


def env_hash(spec: EnvSpec, files: Mapping[str, bytes], machine: str) -> str:
    """The content hash that names an env: what defines it, the Python asked for, the CPU kind."""
    h = hashlib.sha256()
    h.update(json.dumps({"kind": spec.kind, "python": spec.python, "machine": machine,
                         "files": sorted(files)}).encode())
    for name in sorted(files):
        h.update(b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()[:32]


def find_uv(configured: Optional[str], job_path: str) -> Optional[str]:
    """uv: the configured path, else on the jobs' PATH or the agent's, else next to the agent's
    interpreter (a venv install)."""
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for path in (job_path, os.environ.get("PATH", "")):
        found = shutil.which("uv", path=path)
        if found:
            return found
    beside = os.path.join(os.path.dirname(sys.executable), "uv")
    return beside if os.access(beside, os.X_OK) else None


class EnvCache:
    """`<state>/envs`: `u<uid>/<hash>` (the envs, the user's), `locks/` and `ready/` (the agent's)."""

    def __init__(self, state_dir: str) -> None:
        self.root = Path(state_dir) / "envs"

    def prepare(self) -> None:
        for d in (self.root, self.root / "locks", self.root / "ready"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        os.chmod(self.root / "locks", 0o700)
        os.chmod(self.root / "ready", 0o700)

    def user_dir(self, uid: int) -> Path:
        return self.root / f"u{uid}"

    def env_dir(self, uid: int, digest: str) -> Path:
        return self.user_dir(uid) / digest

    def ready(self, uid: int, digest: str) -> Optional[Dict[str, Any]]:
        try:
            return json.loads((self.root / "ready" / f"u{uid}-{digest}.json").read_text())
        except (OSError, ValueError):
            return None

    def listing(self) -> List[Dict[str, Any]]:
        """Every ready env (for hello/cache reports): uid, hash, size, last use."""
        out = []
        for marker in sorted((self.root / "ready").glob("u*-*.json")):
            try:
                info = json.loads(marker.read_text())
                info["last_used"] = marker.stat().st_mtime
            except (OSError, ValueError):
                continue
            out.append(info)
        return out


def build_request(cache: EnvCache, spec: EnvSpec, digest: str, files: Mapping[str, bytes], *,
                  uid: int, gid: int, groups: Sequence[int], home: str, as_root: bool, uv: str,
                  job_path: str, wheelhouse: Optional[str], build_dir: str, log: str,
                  max_bytes: int = 0, offline: bool = False,
                  wheels: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """What the build process needs (JSON on its stdin). `build_dir` is agent-owned (in the job
    directory) and receives the definition files, so uv reads exactly the bytes that were hashed.
    `max_bytes`: the env cache cap (env_cache_max_gb, 0 = none); `offline`: no package index;
    `wheels`: {file name: cache object path} of the wheels the controller shipped."""
    return {"kind": spec.kind, "python": spec.python, "digest": digest, "files": sorted(files),
            "uid": uid, "gid": gid, "groups": list(groups), "home": home, "as_root": as_root,
            "uv": uv, "job_path": job_path, "wheelhouse": wheelhouse, "build_dir": build_dir,
            "log": log, "root": str(cache.root), "max_bytes": int(max_bytes), "offline": offline,
            "wheels": dict(wheels or {}), "jobs_root": os.path.dirname(os.path.dirname(build_dir)),
            "user_dir": str(cache.user_dir(uid)), "env_dir": str(cache.env_dir(uid, digest))}


def plan_environment(plan: Any, raw: Any, cache: EnvCache, *, uv: Optional[str],
                     wheelhouse: Optional[str], jobs_root: str, max_bytes: int = 0,
                     offline: bool = False) -> Tuple[Any, Dict[str, bytes]]:
    """A launch plan (jobspec.LaunchPlan) pointed at its environment: the definition read as the
    job's user and hashed, VIRTUAL_ENV and PATH set, the build request attached. Blocking (reads
    a file through a child process): run it in a thread."""
    from hybridctl_agent.fdio import login_groups

    shipped = None
    wheels = parse_wheels(raw.get("wheels") if isinstance(raw, dict) else None)
    if isinstance(raw, dict) and "files" in raw:
        spec, shipped = parse_shipped({k: v for k, v in raw.items() if k != "wheels"})
    else:
        spec = parse(raw)
    if uv is None:
        raise EnvError("the job names an environment, but uv is not installed on this node "
                       "(looked on the jobs' PATH, the agent's PATH and next to its Python; "
                       "set uv_path in the agent's config)", bad_request=False)
    run_as = plan.run_as
    gid = run_as.gid if run_as else os.getgid()
    groups = login_groups(plan.uid, gid) if run_as else []
    if shipped is not None:
        files = read_shipped(str(cache.root.parent / "cache" / "objects"), shipped)
    else:
        files = definition_files(spec, lambda p: read_as(p, plan.uid if run_as else None, gid, groups))
    digest = env_hash(spec, files, os.uname().machine)  # the wheels are where it comes from, not what it is
    wheel_files = wheel_paths(str(cache.root.parent / "cache" / "objects"), wheels)
    env_dir = str(cache.env_dir(plan.uid, digest))
    env = dict(plan.env)
    env["VIRTUAL_ENV"] = env_dir
    env["PATH"] = os.path.join(env_dir, "bin") + os.pathsep + env.get("PATH", "")
    env["HYBRIDCTL_ENV_HASH"] = digest
    job_dir = os.path.join(jobs_root, plan.key)
    req = build_request(cache, spec, digest, files, uid=plan.uid, gid=gid, groups=groups,
                        home=run_as.home if run_as else os.environ.get("HOME", "/"),
                        as_root=run_as is not None, uv=uv, job_path=plan.env.get("PATH", ""),
                        wheelhouse=wheelhouse, build_dir=os.path.join(job_dir, "env"),
                        log=os.path.join(job_dir, jobfiles.STDERR), max_bytes=max_bytes,
                        offline=offline, wheels=wheel_files)
    return replace(plan, env=env, environment=req), files


def failure_reason(answer: Mapping[str, Any], digest: str, log_tail: str) -> str:
    """The job's end reason when its environment could not be built."""
    what = answer.get("step") or "build"
    why = (f"exit code {answer['exit_code']}" if answer.get("exit_code") is not None
           else answer.get("error") or "no answer from the build process")
    tail = "\n".join(log_tail.strip().splitlines()[-TAIL_LINES:])
    return (f"env_build_failed: environment {digest[:12]}, step '{what}' failed ({why}); "
            f"its log is in the job's stderr:\n{tail}")
