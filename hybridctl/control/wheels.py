"""Wheels for offline nodes (issue #15: "the environment is built from what the controller ships,
so air-gapped servers work"). A node whose hello says `env_offline` reaches no package index; when
the controller has a wheelhouse (`environments.wheelhouse`, a directory of `.whl` files the admin
keeps), the wheels a launch's environment needs go into that node's data cache before the launch,
content-addressed (stage_open, SFTP, cache_add: the agent checks each file's size and SHA-256), and
the launch names them (`environment.wheels: {FILE NAME: [sha256, size]}`). The agent links them
into the build directory and builds with `uv --offline --no-index --find-links` (envbuild.py).
A wheel the node already holds is not sent again.

Which wheels: for a `uv_lock` env exactly the (name, version) pairs the lock lists; for a
`requirements` or `pyproject` env every wheel of each named distribution and, transitively, of
every distribution their METADATA `Requires-Dist` names (markers and extras ignored: a superset,
resolved on the node by uv). The defining files are read as the job's owner (mounts.read_tree,
`tar` with their uid), never with the controller's rights; the wheelhouse is the admin's and is
read by the controller, regular files only (a link in it is skipped)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridctl.core.errors import HybridctlError

try:
    import tomllib
except ImportError:  # Python 3.10: uv.lock by its fixed layout, a pyproject gets every wheel
    tomllib = None  # type: ignore[assignment]

log = logging.getLogger("hybridctl.control.wheels")
DEFINITION_CAP = 4 << 20
"""Largest defining file read (the agent's envs.MAX_DEFINITION)."""
STAGE_TIMEOUT_S = 600.0
_WHEEL_RE = re.compile(r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._]*[A-Za-z0-9])?)-(?P<version>[A-Za-z0-9_.!+]+)"
                       r"(?:-[0-9][A-Za-z0-9_.]*)?-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl\Z")
_REQ_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")


class WheelsFailed(HybridctlError):
    """The wheels of an environment could not be chosen or sent."""


def normalize(name: str) -> str:
    """PEP 503: runs of -, _ and . are one -, lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(v: str) -> str:
    return v.lower().replace("_", "-")


@dataclass(frozen=True)
class Wheel:
    filename: str
    name: str
    """normalize()d distribution name."""
    version: str
    path: str
    size: int
    mtime_ns: int


def parse_filename(filename: str) -> tuple[str, str] | None:
    """(normalized name, version) of a wheel file name, None if it is not one."""
    m = _WHEEL_RE.match(filename)
    return (normalize(m["name"]), _version(m["version"])) if m else None


def scan(directory: str) -> list[Wheel]:
    """The wheels in `directory`: regular files named like wheels (links and the rest skipped)."""
    out = []
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise WheelsFailed(f"environments.wheelhouse {directory}: {exc.strerror}") from None
    for e in entries:
        parsed = parse_filename(e.name)
        if parsed is None:
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append(Wheel(e.name, parsed[0], parsed[1], e.path, st.st_size, st.st_mtime_ns))
    return sorted(out, key=lambda w: w.filename)


_SHAS: dict[tuple[str, int, int], str] = {}
_REQUIRES: dict[tuple[str, int, int], frozenset[str]] = {}


def sha256(w: Wheel) -> str:
    """The wheel's SHA-256, remembered by (path, size, mtime)."""
    key = (w.path, w.size, w.mtime_ns)
    if key not in _SHAS:
        h = hashlib.sha256()
        fd = os.open(w.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHAS[key] = h.hexdigest()
    return _SHAS[key]


def requires(w: Wheel) -> frozenset[str]:
    """Normalized names its METADATA's Requires-Dist lines name (markers and extras ignored)."""
    key = (w.path, w.size, w.mtime_ns)
    if key not in _REQUIRES:
        names: set[str] = set()
        try:
            with zipfile.ZipFile(w.path) as z:
                meta = next((n for n in z.namelist() if n.count("/") == 1
                             and n.endswith(".dist-info/METADATA")), None)
                text = z.read(meta).decode("utf-8", "replace") if meta else ""
        except (OSError, zipfile.BadZipFile, KeyError):
            text = ""
        for line in text.split("\n\n", 1)[0].splitlines():
            if line.lower().startswith("requires-dist:"):
                m = _REQ_NAME.match(line.split(":", 1)[1])
                if m:
                    names.add(normalize(m[1]))
        _REQUIRES[key] = frozenset(names)
    return _REQUIRES[key]


def requirement_names(kind: str, text: str) -> set[str]:
    """The distributions a requirements.txt or a pyproject.toml names directly."""
    if kind == "pyproject":
        if tomllib is None:
            return {"*"}
        try:
            project = tomllib.loads(text).get("project") or {}
        except tomllib.TOMLDecodeError as exc:
            raise WheelsFailed(f"the environment's pyproject.toml is not TOML: {exc}") from None
        lines = list(project.get("dependencies") or [])
        for extra in (project.get("optional-dependencies") or {}).values():
            lines += list(extra or [])
    else:
        lines = [ln.split(" #", 1)[0] for ln in text.splitlines()]
    out = set()
    for line in lines:
        if not isinstance(line, str) or line.lstrip().startswith(("-", "#")):
            continue  # options (-r, -e, --index-url ...) and comments: nothing to pick a wheel by
        m = _REQ_NAME.match(line)
        if m:
            out.add(normalize(m[1]))
    return out


def locked(text: str) -> set[tuple[str, str]]:
    """The (normalized name, version) pairs a uv.lock pins."""
    if tomllib is None:
        return {(normalize(n), _version(v)) for n, v in
                re.findall(r'^\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', text, re.M)}
    try:
        packages = tomllib.loads(text).get("package") or []
    except tomllib.TOMLDecodeError as exc:
        raise WheelsFailed(f"the environment's uv.lock is not TOML: {exc}") from None
    return {(normalize(p["name"]), _version(str(p["version"]))) for p in packages
            if isinstance(p, dict) and isinstance(p.get("name"), str) and p.get("version") is not None}


def needed(kind: str, files: Mapping[str, bytes], house: Iterable[Wheel]) -> list[Wheel]:
    """The wheels of `house` an environment of `kind` defined by `files` (name -> bytes) needs."""
    house = list(house)
    if kind == "uv_lock":
        pins = locked(files["uv.lock"].decode("utf-8", "replace"))
        return [w for w in house if (w.name, w.version) in pins]
    name = "pyproject.toml" if kind == "pyproject" else "requirements.txt"
    want = requirement_names(kind, files[name].decode("utf-8", "replace"))
    if "*" in want:
        return house
    by_name: dict[str, list[Wheel]] = {}
    for w in house:
        by_name.setdefault(w.name, []).append(w)
    todo, seen = list(want), set(want)
    while todo:
        for w in by_name.get(todo.pop(), []):
            for dep in requires(w) - seen:
                seen.add(dep)
                todo.append(dep)
    return [w for w in house if w.name in seen]


_SPEC = r"(?:===|==|>=|<=|~=|!=|<|>)\s*[A-Za-z0-9.*+!_-]+"
_STRICT = re.compile(r"\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[A-Za-z0-9._,\s-]*\])?\s*"
                     rf"(?P<spec>{_SPEC}(?:\s*,\s*{_SPEC})*)?\s*(?:;.*)?\Z")
DOWNLOAD_TIMEOUT_S = 900.0


def download_specs(kind: str, files: Mapping[str, bytes], present: Iterable[Wheel]) -> tuple[list[str], bool]:
    """What to ask pip for, of what an environment names and `present` lacks: `NAME[SPEC]`
    strings rebuilt from what a strict pattern accepts (options, URLs, paths and `name @ url`
    forms are never passed on), and whether they are exact pins (uv_lock: --no-deps)."""
    have = {w.name for w in present}
    versions = {(w.name, w.version) for w in present}
    if kind == "uv_lock":
        pins = locked(files["uv.lock"].decode("utf-8", "replace")) - versions
        return sorted(f"{n}=={v}" for n, v in pins if re.fullmatch(r"[A-Za-z0-9.+!_-]+", v)), True
    text = files["pyproject.toml" if kind == "pyproject" else "requirements.txt"].decode("utf-8", "replace")
    if kind == "pyproject":
        if tomllib is None:
            return [], False
        try:
            project = tomllib.loads(text).get("project") or {}
        except tomllib.TOMLDecodeError as exc:
            raise WheelsFailed(f"the environment's pyproject.toml is not TOML: {exc}") from None
        lines = [x for x in project.get("dependencies") or [] if isinstance(x, str)]
    else:
        lines = [ln.split(" #", 1)[0] for ln in text.splitlines()]
    out = []
    for line in lines:
        m = _STRICT.match(line)
        if not m:
            continue
        name, spec = normalize(m["name"]), re.sub(r"\s+", "", m["spec"] or "")
        pin = re.fullmatch(r"==([A-Za-z0-9.+!_-]+)", spec)  # an exact pin: that version must be here
        if name not in have or (pin and (name, _version(pin[1])) not in versions):
            out.append(name + spec)
    return sorted(set(out)), False


def download(specs: list[str], dest: Path, index_url: str, python: str | None, no_deps: bool) -> list[str]:
    """`pip download --only-binary=:all:` of `specs` (and their dependencies unless `no_deps`)
    into `dest` (the controller's), through a fresh directory beside it, each wheel renamed into
    place whole. Wheels only: no package's build code ever runs here. Returns the new file names."""
    import subprocess
    import sys

    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".wheels-") as tmp:
        argv = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-input",
                "--disable-pip-version-check", "--quiet", "--dest", tmp,
                *(["--index-url", index_url] if index_url else []), *(["--no-deps"] if no_deps else []),
                *(["--python-version", python] if python else []), *specs]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=tmp,
                                  timeout=DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise WheelsFailed(f"pip download of {' '.join(specs)} took over {DOWNLOAD_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            why = [ln for ln in done.stderr.splitlines() if ln.strip()][-1:] or [f"exit code {done.returncode}"]
            raise WheelsFailed(f"pip download of {' '.join(specs)} failed: {why[0]}")
        new = []
        for e in os.scandir(tmp):
            if parse_filename(e.name) and e.is_file(follow_symlinks=False) and not (dest / e.name).exists():
                os.rename(e.path, dest / e.name)
                new.append(e.name)
    return sorted(new)


_DOWNLOADING: Any = None
"""One download at a time (an asyncio.Lock, made in the loop that first needs it)."""


DEFINING = {"requirements": ("requirements.txt",), "pyproject": ("pyproject.toml",), "uv_lock": ("uv.lock",)}
"""The defining file wheels are chosen by, per kind (the one the job names)."""


def read_definition(env: Mapping[str, Any], owner: Any) -> tuple[str, dict[str, bytes]] | None:
    """(kind, {file name: bytes}) of a job's `environment`, read as `owner`; None without one."""
    from hybridctl.control.mounts import read_tree

    kind = next((k for k in DEFINING if isinstance(env.get(k), str)), None)
    if kind is None:
        return None
    with tempfile.TemporaryDirectory(prefix="hybridctl-wheels-") as tmp:
        tree = read_tree(env[kind], owner, Path(tmp), DEFINITION_CAP)
        sha = tree.get("", [None])[0]
        if sha is None:
            raise WheelsFailed(f"environment.{kind} {env[kind]} is not a file")
        return kind, {DEFINING[kind][0]: (Path(tmp) / sha).read_bytes()}


def houses(wheelhouse: str, fetched: Path) -> list[Wheel]:
    """The admin's wheelhouse and what `download` fetched; a name in both: the admin's."""
    out = {w.filename: w for w in (scan(str(fetched)) if fetched.is_dir() else [])}
    out.update({w.filename: w for w in (scan(wheelhouse) if wheelhouse else [])})
    return sorted(out.values(), key=lambda w: w.filename)


async def ship(agent: Any, files: Any, wheels: list[Wheel]) -> tuple[dict[str, list[Any]], int]:
    """Put `wheels` into the node's data cache, sending only those it lacks. Returns
    ({file name: [sha256, size]}, bytes sent)."""
    import asyncio

    named = {}
    for w in wheels:
        named[w.filename] = [await asyncio.to_thread(sha256, w), w.size]
    listed = await agent.call("cache_list", timeout=STAGE_TIMEOUT_S)
    have = {o["sha256"] for o in listed.get("objects", []) if isinstance(o, dict)}
    missing = {sha: (w, size) for w, (sha, size) in zip(wheels, named.values()) if sha not in have}
    if missing:
        opened = await agent.call("stage_open", timeout=STAGE_TIMEOUT_S)
        try:
            for sha, (w, size) in missing.items():
                await files.put(w.path, f"{opened['path']}/{sha}", size)
        except BaseException:
            await agent.call("stage_done", timeout=STAGE_TIMEOUT_S, token=opened["token"])
            raise
        await agent.call("cache_add", timeout=STAGE_TIMEOUT_S, token=opened["token"],
                         files={sha: [sha, size] for sha, (_, size) in missing.items()},
                         keep=sorted({sha for sha, _ in named.values()} - missing.keys()))
    return named, sum(size for _, size in missing.values())


async def prepare(session: Any, rank: Any, payload: dict[str, Any]) -> str | None:
    """NodeSession.prepare_launch's step for offline nodes: add `environment.wheels` to the
    payload of a launch with an environment onto a node whose hello says `env_offline`, when the
    controller has a wheelhouse or may download (`environments.download`: what no wheelhouse
    holds is fetched first, one download at a time). Returns why it failed, or None; a failed
    download is logged and the launch goes on (the node's own wheelhouse may hold the rest; if
    not, uv's error names what is missing)."""
    import asyncio

    from hybridctl.cloud.transfer import TransferError, owner_of
    from hybridctl.control.mounts import MountFailed, failed_onto
    from hybridctl.ssh.link import AgentRefused

    global _DOWNLOADING
    conf = session.fleet.settings.environments
    fetched = session.fleet.settings.home_path / "wheels"  # what `download` fetched, the controller's
    if not (conf.wheelhouse or conf.download) or not payload.get("environment") \
            or not (session.hello or {}).get("env_offline"):
        return None
    info = session.fleet.store.launch_info(rank.job_id, rank.task, rank.attempt, rank.rank)
    env = info["spec"].get("environment") or {}
    try:
        definition = await asyncio.to_thread(read_definition, env, owner_of(info))
        if definition is None:
            return None
        house = await asyncio.to_thread(houses, conf.wheelhouse, fetched)
        if conf.download:
            if _DOWNLOADING is None:
                _DOWNLOADING = asyncio.Lock()
            async with _DOWNLOADING:
                house = await asyncio.to_thread(houses, conf.wheelhouse, fetched)
                specs, exact = download_specs(definition[0], definition[1], house)
                if specs:
                    try:
                        new = await asyncio.to_thread(download, specs, fetched, conf.index_url, env.get("python"),
                                                      exact)
                        log.info("job %s: downloaded %d wheels for its environment: %s", rank.key, len(new),
                                 ", ".join(new))
                    except WheelsFailed as exc:  # the node's own wheelhouse may hold them; else uv names them
                        log.warning("job %s: %s", rank.key, exc.message)
                    house = await asyncio.to_thread(houses, conf.wheelhouse, fetched)
        chosen = needed(definition[0], definition[1], house)
        if not chosen:
            return None  # nothing of it in the wheelhouse: the node's own env_wheelhouse, or uv says what is missing
        agent, files = await session.files()
        named, sent = await ship(agent, files, chosen)
    except Exception as exc:
        return failed_onto("environment wheels", session.name, exc,
                           (WheelsFailed, MountFailed, TransferError, AgentRefused, OSError))
    payload["environment"] = {**payload["environment"], "wheels": named}
    session.cache_at = float("-inf")  # the node's cache changed: list it again at the next poll
    log.info("job %s: %d wheels for its environment on %s (offline), sent %d bytes", rank.key, len(named),
             session.name, sent)
    return None

