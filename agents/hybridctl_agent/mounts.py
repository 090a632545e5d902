"""file_mounts on the node (SkyPilot's COPY meaning): before a job starts, each mount's bytes are in
the node's content cache (cache.py) and the job's destination path shows them, read-only.

A launch's `job.file_mounts` is a list of `{"dst": PATH, <source>}`, the source one of:
  `"s3": "s3://bucket/key"`   an object, or every object under a prefix (a key ending in `/`, or
                              one that names no object), fetched here with boto3 and the node's
                              own credentials, resumed from a partial download, verified (size,
                              the ETag's MD5 where it is one) and cached by SHA-256;
  `"objects": {REL: [SHA256, SIZE]}`   files the controller already put in this node's cache
                              (`cache_add`), REL "" for a single file;
  `"path": "/abs"`            a path under one of the node's `shared_paths`, used in place.
`dst` is absolute, `~`/`~/x` (the job user's home) or relative (to the job's working directory).

`python -m hybridctl_agent.mounts` (site on: boto3) does one job's mounts: fetch as the agent,
hard-link the objects into the user's own `cache/users/<uid>/` (cache.ContentCache.grant), then
fork a child that drops to the job's user and makes the destination: a link to that hard link
for a file, a directory of links for a tree, a link to the shared path. The links are made with
the job's rights, so a mount lands only where the job itself could write."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from hybridctl_agent.cache import SHA_RE, CacheError, ContentCache, pinned_by

Tree = Dict[str, Tuple[str, int]]
"""rel path ("" for a single file) -> (sha256, size)."""
MAX_MOUNTS = 256
MAX_OBJECTS = 100_000


class MountError(Exception):
    """A mount that cannot be made; the message names the mount and the step."""


def parse(raw: Any, shared_paths: Sequence[str]) -> List[Dict[str, Any]]:
    """Check `job.file_mounts`; raise MountError naming the entry."""
    if not isinstance(raw, list) or len(raw) > MAX_MOUNTS:
        raise MountError(f"job.file_mounts must be a list of at most {MAX_MOUNTS} mounts")
    out = []
    for i, m in enumerate(raw):
        where = f"job.file_mounts[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("dst"), str) or not m["dst"] \
                or "\0" in m["dst"]:
            raise MountError(f"{where} must be an object with a destination path `dst`")
        sources = [k for k in ("s3", "objects", "path") if k in m]
        if len(sources) != 1 or set(m) - {"dst", sources[0]}:
            raise MountError(f"{where} must have `dst` and exactly one of s3, objects, path")
        kind, value = sources[0], m[sources[0]]
        if kind == "s3" and not (isinstance(value, str) and value.startswith("s3://")
                                 and len(value.split("/", 3)[2]) > 0):
            raise MountError(f"{where}.s3 must be an s3://bucket[/key] URI, got {value!r}")
        if kind == "objects":
            if not isinstance(value, dict) or len(value) > MAX_OBJECTS or not all(
                    isinstance(r, str) and _safe_rel(r) and isinstance(v, list) and len(v) == 2
                    and isinstance(v[0], str) and SHA_RE.match(v[0]) and isinstance(v[1], int)
                    for r, v in value.items()):
                raise MountError(f"{where}.objects must map relative paths to [sha256, size]")
        if kind == "path":
            if not isinstance(value, str) or not os.path.isabs(value) or ".." in value.split("/"):
                raise MountError(f"{where}.path must be an absolute path, got {value!r}")
            if not any(os.path.normpath(value) == p or os.path.normpath(value).startswith(
                    p.rstrip("/") + "/") for p in shared_paths):
                raise MountError(f"{where}.path {value} is not under this node's shared_paths "
                                 f"({', '.join(shared_paths) or 'none'}): send its content instead")
        out.append({"dst": m["dst"], kind: value})
    return out


def plan_mounts(plan: Any, raw: Any, cfg: Any, jobs_root: str) -> Any:
    """A launch plan (jobspec.LaunchPlan) with its mounts request (what `run` needs) attached."""
    from dataclasses import replace

    from hybridctl_agent import jobfiles
    from hybridctl_agent.fdio import login_groups

    checked = parse(raw, cfg.shared_paths)
    run_as = plan.run_as
    gid = run_as.gid if run_as else os.getgid()
    job_dir = os.path.join(jobs_root, plan.key)
    return replace(plan, mounts={
        "mounts": checked, "state_dir": cfg.state_dir, "max_bytes": int(cfg.cache_max_gb * (1 << 30)),
        "jobs_root": jobs_root, "job_dir": job_dir, "uid": plan.uid, "gid": gid,
        "groups": login_groups(plan.uid, gid) if run_as else [], "as_root": run_as is not None,
        "home": run_as.home if run_as else os.environ.get("HOME", "/"),
        "cwd": plan.cwd or os.path.join(job_dir, jobfiles.WORK), "s3_endpoint": cfg.s3_endpoint_url,
        "log": os.path.join(job_dir, jobfiles.STDERR)})


def _safe_rel(rel: str) -> bool:
    return rel == "" or (not rel.startswith("/") and "\0" not in rel
                         and all(p not in ("", ".", "..") for p in rel.split("/")))


# ---- fetching: the agent's side -------------------------------------------------------------------


def _s3_client(endpoint: Optional[str]) -> Any:
    try:
        import boto3  # type: ignore[import-not-found]
    except ImportError:
        raise MountError("boto3 is not installed on this node: install it next to the agent "
                         "(pip install boto3) to mount s3:// data") from None
    return boto3.client("s3", endpoint_url=endpoint or None)


def fetch_s3(cache: ContentCache, uri: str, endpoint: Optional[str], pinned: set,
             note: Callable[[str], None]) -> Tree:
    """Every object of `uri` in the cache (fetched only when its ETag is not cached yet)."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    s3 = _s3_client(endpoint)
    listed: List[Tuple[str, int, str]] = []  # (rel, size, etag)
    try:
        if key and not key.endswith("/"):
            try:
                head = s3.head_object(Bucket=bucket, Key=key)
                listed.append(("", int(head["ContentLength"]), head["ETag"].strip('"')))
            except s3.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
                key += "/"
        if not listed:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(key):]
                    if _safe_rel(rel) and rel:
                        listed.append((rel, int(obj["Size"]), obj["ETag"].strip('"')))
                if len(listed) > MAX_OBJECTS:
                    raise MountError(f"{uri} holds over {MAX_OBJECTS} objects")
        if not listed:
            raise MountError(f"{uri}: no such object or prefix")
        tree: Tree = {}
        fetched = reused = 0
        for rel, size, etag in listed:
            obj_key = key + rel if rel else key
            source = f"s3://{bucket}/{obj_key}@{etag}:{size}"
            entry = cache.source(source)
            if entry is None and "-" not in etag:  # a plain ETag is the MD5: same bytes elsewhere
                entry = cache.source(f"md5:{etag}:{size}")
            if entry is None:
                cache.evict(pinned, room=size)
                entry = _download(cache, s3, bucket, obj_key, size, etag, source)
                fetched += entry["fetched"]
            else:
                cache.touch(entry["sha256"])
                reused += size
            pinned.add(entry["sha256"])
            tree[rel] = (entry["sha256"], size)
    except (OSError, CacheError) as exc:
        raise MountError(f"{uri}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - botocore's errors: named, never a traceback
        if isinstance(exc, MountError):
            raise
        raise MountError(f"{uri}: {type(exc).__name__}: {exc}") from None
    note(f"mount {uri}: {len(tree)} object(s), {fetched} bytes fetched, {reused} bytes cached")
    return tree


def _download(cache: ContentCache, s3: Any, bucket: str, key: str, size: int, etag: str,
              source: str) -> Dict[str, Any]:
    """Into `tmp/<source hash>.part`, resuming what an interrupted fetch left, then verified."""
    part = cache.tmp / (hashlib.sha256(source.encode()).hexdigest() + ".part")
    sha, md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324 - S3's ETag is an MD5
    have = 0
    if part.exists():
        with open(part, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
                md5.update(block)
                have += len(block)
        if have > size:
            part.unlink()
            sha, md5, have = hashlib.sha256(), hashlib.md5(), 0  # noqa: S324
    resumed = have
    with open(part, "ab") as out:
        if have < size:
            extra = {"Range": f"bytes={have}-"} if have else {}
            body = s3.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"', **extra)["Body"]
            for block in iter(lambda: body.read(1 << 20), b""):
                out.write(block)
                sha.update(block)
                md5.update(block)
    if "-" not in etag and md5.hexdigest() != etag:
        part.unlink()
        raise CacheError(f"s3://{bucket}/{key}: MD5 {md5.hexdigest()} does not match its ETag {etag}")
    digest = sha.hexdigest()
    if not cache.has(digest, size):
        cache.add(str(part), digest, size)
    else:
        part.unlink()
    cache.remember(source, digest, size)
    if "-" not in etag:
        cache.remember(f"md5:{etag}:{size}", digest, size)
    return {"sha256": digest, "size": size, "fetched": size - resumed}


# ---- placing: the job's side ------------------------------------------------------------------------


def destination(dst: str, home: str, cwd: str) -> str:
    if dst == "~" or dst.startswith("~/"):
        return os.path.normpath(os.path.join(home, dst[2:]))
    return os.path.normpath(dst if os.path.isabs(dst) else os.path.join(cwd, dst))


def place(plans: Sequence[Tuple[str, Any]], objects_dir: str) -> None:
    """As the job's user: make each destination. (dst, Tree) -> a link to the object for a single
    file, else a directory of links; (dst, str) -> a link to a shared path. An existing link is
    replaced; an existing file or directory at a single-file destination is an error.
    `objects_dir`: the user's own `cache/users/<uid>/` (ContentCache.grant), never `objects/`."""
    for dst, what in plans:
        os.makedirs(os.path.dirname(dst) or "/", exist_ok=True)
        if isinstance(what, str) or "" in what:
            target = what if isinstance(what, str) else os.path.join(objects_dir, what[""][0])
            if os.path.islink(dst):
                os.unlink(dst)
            os.symlink(target, dst)
            continue
        for rel, (sha, _size) in sorted(what.items()):
            path = os.path.join(dst, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.islink(path):
                os.unlink(path)
            os.symlink(os.path.join(objects_dir, sha), path)


def run(req: Mapping[str, Any]) -> Dict[str, Any]:
    """One job's mounts (see the module docstring); the answer names a failed step."""
    from hybridctl_agent.fdio import drop_to

    cache = ContentCache(req["state_dir"], int(req.get("max_bytes") or 0))
    log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600)
    if req["as_root"]:
        os.fchown(log, int(req["uid"]), int(req["gid"]))

    def note(text: str) -> None:
        os.write(log, f"hybridctl: {text}\n".encode())

    plans: List[Tuple[str, Any]] = []
    pinned = pinned_by(Path(req["jobs_root"]))
    try:
        for m in req["mounts"]:
            dst = destination(m["dst"], req["home"], req["cwd"])
            if "s3" in m:
                plans.append((dst, fetch_s3(cache, m["s3"], req.get("s3_endpoint"), pinned, note)))
            elif "objects" in m:
                tree = {r: (v[0], int(v[1])) for r, v in m["objects"].items()}
                missing = [r for r, (sha, size) in tree.items() if not cache.has(sha, size)]
                if missing:
                    raise MountError(f"mount {m['dst']}: {len(missing)} file(s) are not in this "
                                     f"node's cache (first: {missing[0] or m['dst']}); the "
                                     "controller's upload did not arrive")
                for sha, _ in tree.values():
                    cache.touch(sha)
                    pinned.add(sha)
                plans.append((dst, tree))
                note(f"mount {m['dst']}: {len(tree)} file(s) from the node's cache")
            else:
                plans.append((dst, m["path"]))
                note(f"mount {m['dst']}: shared path {m['path']} used in place")
    except MountError as exc:
        note(f"file_mounts failed: {exc}")
        os.close(log)
        return {"ok": False, "step": "fetch file_mounts", "error": str(exc)}
    objects = sorted({sha for _d, t in plans if not isinstance(t, str) for sha, _ in t.values()})
    fd = os.open(os.path.join(req["job_dir"], "mounts.json"),  # pins them (cache.pinned_by); the agent's alone
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"objects": objects, "links": "users"}, fh)  # "links": not into objects/ (seal)
    try:  # the objects, hard-linked where this user alone may reach them; the mounts link there
        links_dir = str(cache.grant(int(req["uid"]), int(req["gid"]), objects)) if objects else ""
        cache.seal(Path(req["jobs_root"]))
    except (OSError, CacheError) as exc:
        err = (f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.filename is not None
               else str(exc))  # an fd's error (setxattr, fchown) names no file
        note(f"file_mounts failed: {err}")
        os.close(log)
        return {"ok": False, "step": "link file_mounts for the job's user", "error": err}
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the job's side: its rights, its umask
        code = 1
        try:
            os.close(rfd)
            if req["as_root"]:
                drop_to(int(req["uid"]), int(req["gid"]), [int(g) for g in req["groups"]])
            place(plans, links_dir)
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, never raised here
            os.write(wfd, (exc.strerror if isinstance(exc, OSError) and exc.strerror and
                           not exc.filename else str(exc)).encode()[:2000])
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as fh:
        err = fh.read().decode(errors="replace")
    _pid, status = os.waitpid(pid, 0)
    if status != 0:
        note(f"file_mounts failed: {err}")
        os.close(log)
        return {"ok": False, "step": "place file_mounts as the job's user", "error": err}
    os.close(log)
    return {"ok": True, "objects": len(objects)}


def main() -> int:
    req = json.loads(sys.stdin.read())
    try:
        answer = run(req)
    except OSError as exc:
        answer = {"ok": False, "step": "prepare file_mounts", "error": str(exc)}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
