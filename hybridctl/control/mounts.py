"""A job's file_mounts on their way to a node (core/mounts.py has the spec side, the agent's
mounts.py and cache.py the node side). `s3://` sources go to the node as they are: the node
fetches them into its cache. A local source under one of the node's `shared_paths` is used there
in place. Any other local source is read here by `tar` running as the job's owner (never with
the controller's rights), split into files named by their SHA-256, and only the contents the
node's cache lacks (`cache_list`) are sent, through a staging directory and `cache_add`, which
checks every file's size and hash. A second run on the same node moves nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import posixpath
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hybridctl.core.errors import HybridctlError
from hybridctl.core.mounts import is_local

log = logging.getLogger("hybridctl.control.mounts")
ENV_FILES = {"requirements": ("requirements.txt",), "pyproject": ("pyproject.toml",),
             "uv_lock": ("uv.lock", "pyproject.toml")}
"""An environment's defining files by the name the agent knows them (the first is the one named)."""
STAGE_TIMEOUT_S = 600.0
DEFAULT_CAP_BYTES = 100 << 30
"""Most bytes one job's local file_mounts may carry to a node that does not share them."""


class MountFailed(HybridctlError):
    """A file_mount could not be read or sent."""


def under(path: str, roots: Sequence[str]) -> bool:
    p = posixpath.normpath(path)
    return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)


def read_tree(src: str, owner: Any, out_dir: Path, cap_bytes: int) -> dict[str, list[Any]]:
    """Read the local file or directory `src` as `owner` (tar runs with its uid, gid and groups;
    links travel as links and are skipped), writing each distinct content once into `out_dir` as
    a file named by its SHA-256. Returns {relative path ("" for a file): [sha256, size]}."""
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0 and owner.uid != 0:
        kwargs = {"user": owner.uid, "group": owner.gid, "extra_groups": owner.groups()}
    elif os.geteuid() != owner.uid:
        raise MountFailed(f"the controller runs as uid {os.geteuid()}, not root: it cannot read {src} as "
                          f"{owner.user}")
    parent, name = posixpath.split(posixpath.normpath(src))
    argv = ["tar", "--create", "--file=-", "--format=gnu", "--no-xattrs", "--no-acls",
            "--directory", parent or "/", "--", name]  # an argv: the path is the user's string
    tree: dict[str, list[Any]] = {}
    total = 0
    link = False
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                cwd="/", **kwargs)
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=io.BufferedReader(proc.stdout, 1 << 16), mode="r|") as tar:  # type: ignore[arg-type]
                for m in tar:
                    if m.issym() and posixpath.normpath(m.name) == name:  # the source itself: say so below
                        link = True
                    if not m.isreg():
                        continue
                    rel = posixpath.normpath(m.name)
                    rel = "" if rel == name else rel[len(name) + 1:] if rel.startswith(name + "/") else None
                    if rel is None or any(p in ("", ".", "..") for p in rel.split("/") if rel):
                        continue
                    total += m.size
                    if total > cap_bytes:
                        raise MountFailed(f"file_mount {src} is over {cap_bytes >> 20} MiB: keep data sets this "
                                          "large in object storage (s3://) or on a shared path")
                    tree[rel] = _store(tar.extractfile(m), out_dir)
        except tarfile.TarError:
            pass  # tar failed: its exit status says why
        finally:
            proc.stdout.close()
            proc.wait()
        errors.seek(0)
        err = errors.read().decode(errors="replace").strip()
    if proc.returncode != 0:
        why = err.splitlines()[0] if err else f"tar exited {proc.returncode}"
        raise MountFailed(f"cannot read file_mount {src} as {owner.user}: {why.removeprefix('tar: ')}")
    if not tree and link:  # tar, running as the owner, carried the link as a link: never followed
        raise MountFailed(f"file_mount {src} is a symbolic link; name the file it points to")
    if not tree:
        raise MountFailed(f"file_mount {src} holds no regular file")
    return tree


def _store(fh: Any, out_dir: Path) -> list[Any]:
    h = hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(dir=out_dir, delete=False) as tmp:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            tmp.write(block)
            size += len(block)
    sha = h.hexdigest()
    os.replace(tmp.name, out_dir / sha)
    return [sha, size]


def manifest(src: str, owner: Any) -> str | None:
    """A digest of the names, sizes, mtimes and types under `src`, listed by `find` running as
    `owner`; None when it cannot list everything (then the tree is read in full)."""
    kwargs: dict[str, Any] = {}
    if os.geteuid() == 0 and owner.uid != 0:
        kwargs = {"user": owner.uid, "group": owner.gid, "extra_groups": owner.groups()}
    elif os.geteuid() != owner.uid:
        return None
    try:
        done = subprocess.run(["find", posixpath.normpath(src), "-printf", "%P\\0%s\\0%T@\\0%y\\0"],
                              stdin=subprocess.DEVNULL, capture_output=True, cwd="/", timeout=600, **kwargs)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return hashlib.sha256(done.stdout).hexdigest() if done.returncode == 0 and done.stdout else None


_TREES: dict[tuple[str, int], tuple[str, dict[str, list[Any]]]] = {}
"""(source, owner uid) -> (its manifest, its tree) as last read: rsync's quick check (size and
mtime), so a relaunch whose data the node holds reads nothing. Bounded: the oldest 256 go first."""


async def stage(agent: Any, files: Any, owner: Any, mounts: Mapping[str, str], shared: Sequence[str],
                cap_bytes: int = DEFAULT_CAP_BYTES) -> tuple[list[dict[str, Any]], int, int]:
    """The agent's `file_mounts` for one launch, with the local contents the node lacks sent into
    its cache. Returns (the list, bytes sent, bytes read here). A source whose listing (names,
    sizes, mtimes) is unchanged since it was last read, and whose contents the node holds, is not
    read again."""
    import asyncio

    out: list[dict[str, Any]] = []
    sent = read = 0
    used: set[str] = set()  # every object this launch mounts: a later cache_add must not evict them
    with tempfile.TemporaryDirectory(prefix="hybridctl-mounts-") as tmp:  # 0700, the controller's
        have: set[str] | None = None
        for dst, src in mounts.items():
            if not is_local(src):
                out.append({"dst": dst, "s3": src})
                continue
            if under(src, shared):
                out.append({"dst": dst, "path": posixpath.normpath(src)})
                continue
            if have is None:
                listed = await agent.call("cache_list", timeout=STAGE_TIMEOUT_S)
                have = {o["sha256"] for o in listed.get("objects", []) if isinstance(o, dict)}
            key = (posixpath.normpath(src), owner.uid)
            listing = await asyncio.to_thread(manifest, src, owner)
            known = _TREES.get(key)
            if listing is not None and known is not None and known[0] == listing \
                    and all(sha in have for sha, _ in known[1].values()):
                out.append({"dst": dst, "objects": known[1]})
                used.update(sha for sha, _ in known[1].values())
                continue
            tree = await asyncio.to_thread(read_tree, src, owner, Path(tmp), cap_bytes)
            read += sum(size for _, size in tree.values())
            if listing is not None:
                _TREES.pop(key, None)
                _TREES[key] = (listing, tree)
                while len(_TREES) > 256:
                    del _TREES[next(iter(_TREES))]
            missing = {sha: size for sha, size in tree.values() if sha not in have}
            used.update(sha for sha, _ in tree.values())
            if missing:
                opened = await agent.call("stage_open", timeout=STAGE_TIMEOUT_S)
                try:
                    for sha, size in missing.items():
                        await files.put(str(Path(tmp) / sha), f"{opened['path']}/{sha}", size)
                except BaseException:
                    await agent.call("stage_done", timeout=STAGE_TIMEOUT_S, token=opened["token"])
                    raise
                await agent.call("cache_add", timeout=STAGE_TIMEOUT_S, token=opened["token"],
                                 files={sha: [sha, size] for sha, size in missing.items()},
                                 keep=sorted(used - missing.keys()))
                have.update(missing)
                sent += sum(missing.values())
            out.append({"dst": dst, "objects": tree})
    return out, sent, read


async def refresh_cache(session: Any) -> None:
    """Re-read the node's cache listing into `session.cache` (the controller's cache index) every
    max(5 s, 10 polls). An agent without `cache_list` (older) or an answer that is not usable
    leaves the index as it was; nothing here ends the session."""
    from hybridctl.core.locality import parse_cache_listing
    from hybridctl.ssh.link import AgentRefused

    now = session.fleet.monotonic()
    if now - session.cache_at < max(5.0, 10 * session.fleet.interval) or session.link is None:
        return
    session.cache_at = now
    try:
        raw = await session.link.call("cache_list")
    except AgentRefused:
        session.cache_at = float("inf")  # an agent older than cache_list: do not ask again
        return
    cache, problems = parse_cache_listing(raw)
    for p in problems[:3]:
        session.once(f"malformed {p}; ignored")
    if cache is not None:
        session.cache = cache


def failed_onto(step: str, node: str, exc: Exception, expected: tuple[type[Exception], ...]) -> str:
    """Why a launch step (`step`: file_mounts, environment wheels) onto `node` failed with `exc`,
    one of the `expected` errors or the SSH connection's; any other exception is raised again."""
    from hybridctl.ssh.sftp import is_ssh_error

    if isinstance(exc, expected):
        return f"{step} onto {node}: {getattr(exc, 'message', None) or exc}"
    if not is_ssh_error(exc):
        raise exc
    return f"{step} onto {node}: {exc}"


async def prepare(session: Any, rank: Any, payload: dict[str, Any]) -> str | None:
    """NodeSession.prepare_launch's step for file_mounts: fill `payload["file_mounts"]` for the
    node `session` talks to, sending what its cache lacks; return why it failed, or None."""
    from hybridctl.cloud.transfer import TransferError, owner_of
    from hybridctl.control.checkpoints import TransferMismatch
    from hybridctl.ssh.link import AgentRefused

    info = session.fleet.store.launch_info(rank.job_id, rank.task, rank.attempt, rank.rank)
    wanted = dict(info["spec"].get("file_mounts") or {})
    shared = (session.hello or {}).get("shared_paths") or []
    env = info["spec"].get("environment") or {}
    kind = next((k for k in ENV_FILES if k in env), None)
    ship = {}  # the environment's defining files, for a node that does not share their paths
    if kind is not None and not under(env[kind], shared):
        ship = {name: posixpath.join(posixpath.dirname(env[kind]), name) if name != ENV_FILES[kind][0]
                else env[kind] for name in ENV_FILES[kind]}
    if not wanted and not ship:
        return None
    try:
        agent, files = await session.files()
        staged, sent, read = await stage(agent, files, owner_of(info), {**wanted, **{f"\0{n}": p for n, p in ship.items()}},
                                   shared)
        if ship:
            got = {m["dst"][1:]: m["objects"][""] for m in staged if m["dst"].startswith("\0")}
            payload["environment"] = {"kind": kind, "files": got,
                                      **({"python": env["python"]} if env.get("python") else {})}
        if wanted:
            payload["file_mounts"] = [m for m in staged if not m["dst"].startswith("\0")]
    except Exception as exc:
        return failed_onto("file_mounts", session.name, exc,
                           (MountFailed, TransferError, AgentRefused, TransferMismatch, OSError))
    session.cache_at = float("-inf")  # the node's cache changes: list it again at the next poll
    if getattr(session, "cache", None) is not None:  # meanwhile the index knows what it holds now

        objects = dict(session.cache.objects)
        for m in staged:
            for sha, size in (m.get("objects") or {}).values():
                objects[sha] = size
        session.cache = dataclasses.replace(session.cache, objects=objects)  # keeps `used` (LRU order)
    log.info("job %s: file_mounts: sent %d bytes to %s, read %d here (%d mounts, %d environment files)", rank.key,
             sent, session.name, read, len(wanted), len(ship))
    return None


def env_digest(kind: str, python: str | None, files: Mapping[str, str], machine: str = "x86_64") -> str:
    """The hash the agent names an environment by (agents/hybridctl_agent/envs.py `env_hash`,
    same formula; tests/integration/test_job_world.py checks they agree), from the SHA-256 of each
    defining file as this controller last read it."""
    h = hashlib.sha256()
    h.update(json.dumps({"kind": kind, "python": python, "machine": machine, "files": sorted(files)}).encode())
    for name in sorted(files):
        h.update(b"\0" + bytes.fromhex(files[name]))
    return h.hexdigest()[:32]


def need_of(spec: Mapping[str, Any], owner_uid: int, env_bytes: Mapping[str, int] | None = None) -> Any:
    """What a job needs on its node, as core/locality.Need artifact ids, from what this controller
    knows without reading anything: the environment (when its defining files were read before, at
    an earlier launch of the same user) and the local file_mounts read before (the `_TREES` memo).
    `env_bytes`: sizes of built envs by hash, from the nodes' cache reports (default 1 GB). S3
    sources are not counted (their ETags are known on the nodes only). For the scheduler's wiring."""
    from hybridctl.core.locality import Need

    items: dict[str, int] = {}
    env = spec.get("environment") or {}
    kind = next((k for k in ENV_FILES if k in env), None)
    if kind is not None:
        shas: dict[str, str] = {}
        for name in ENV_FILES[kind]:
            path = env[kind] if name == ENV_FILES[kind][0] else posixpath.join(posixpath.dirname(env[kind]), name)
            known = _TREES.get((posixpath.normpath(path), owner_uid))
            if known is None or "" not in known[1]:
                break
            shas[name] = known[1][""][0]
        else:
            digest = env_digest(kind, env.get("python"), shas)
            items[f"env:{digest}"] = (env_bytes or {}).get(digest, 1 << 30)
    for src in (spec.get("file_mounts") or {}).values():
        known = _TREES.get((posixpath.normpath(src), owner_uid)) if is_local(src) else None
        for sha, size in (known[1].values() if known else ()):
            items[f"obj:{sha}"] = int(size)
        if known is None and is_local(src):  # not read yet: named by its path until its first launch
            items[f"src:{owner_uid}:{posixpath.normpath(src)}"] = UNREAD_BYTES
    return Need(items)


UNREAD_BYTES = 1 << 30
"""What a local file_mount not read yet is assumed to weigh (the scheduler reads nothing)."""


def holdings(caches: Mapping[str, Any], sent: Sequence[tuple[str, Any]], env_bytes: Mapping[str, int]
             ) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The cache index a scheduling pass sees: per node, what its own last report lists (a node
    is believed only about itself) plus what the controller placed there and counts as coming
    (`sent`: (node, (owner uid, spec fields)) from core/locality.WillHold, each turned into its
    artifact ids now, so a source read since is named by its contents), less what a capped cache
    would evict to take it; and per capped node the bytes it can still take. Returns (held, room)."""
    from hybridctl.core.locality import NodeCache, expected_holdings

    coming: dict[str, dict[str, int]] = {}
    memo: dict[int, Any] = {}
    for node, world in sent:
        need = memo.get(id(world))
        if need is None:
            need = memo[id(world)] = need_of(world[1], world[0], env_bytes)
        coming.setdefault(node, {}).update(need.items)
    held: dict[str, list[str]] = {}
    room: dict[str, int] = {}
    for node in caches.keys() | coming.keys():
        ids, left = expected_holdings(caches.get(node) or NodeCache({}, {}, 0), coming.get(node, {}))
        held[node] = ids
        if left is not None:
            room[node] = left
    return held, room


def history_runtimes(facts: Any, running: Sequence[Any], pending: Sequence[Any], now: float
                     ) -> dict[tuple[int, int], float]:
    """(job, task) -> expected run time from history alone (core/estimate.py without the time
    limit: p80 of the user's finished runs like it), for the running tasks and the pending tasks
    that need something on their node; tasks with no such history are left out. `facts` is the
    scheduler's RuntimeFacts. What locality's free-in and places in line are planned on."""
    from hybridctl.core.estimate import command_key

    tasks = [(r.job_id, r.task, r.user) for r in running]
    tasks += [(t.job_id, t.task, t.user) for t in pending if getattr(t, "need", None) is not None]
    if not tasks:
        return {}
    jobs = facts.facts([j for j, _, _ in tasks])
    est = facts.estimator(now)
    keys: dict[int, str] = {}
    out: dict[tuple[int, int], float] = {}
    for job, task, user in tasks:
        f = jobs.get(job)
        if f is None:
            continue
        key = keys.get(job)
        if key is None:
            key = keys[job] = command_key(f.run)
        seconds = est.estimate(user=user, job_id=job, name=f.name, command=key).seconds
        if seconds is not None:
            out[(job, task)] = seconds
    return out
