"""The agent's staging area: where the controller's SFTP (or, for a local agent, its plain file
access) reads and writes a job's files, instead of in the job's own directories.

`<state_dir>/staging/<token>/` belongs to the agent's user, mode 0700 (0770 and setgid to
`allowed_group`, whose members may drive the agent anyway): a job's user can neither read nor
plant anything there. The copies between a staging directory and a job's directory are made by
a stage.py process per transfer, whose child runs as the job's user. Which job directory a
transfer touches is decided here from the job's key, never taken from a request."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import secrets
import shutil
import stat
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from hybridctl_agent import fdio
from hybridctl_agent.jobspec import job_id
from hybridctl_agent.protocol import BAD_REQUEST, INTERNAL, REFUSED, AgentError

STAGING = "staging"
KINDS = ("checkpoint", "workdir", "output")
"""checkpoint: `<state>/checkpoints/<job>` (kept across attempts); workdir and output:
`<state>/workdirs/<key>` and `<state>/outputs/<key>` (cloud nodes: the uploaded workdir and
HYBRIDCTL_OUTPUT_DIR)."""
HELPER_TIMEOUT_S = 3600.0
"""A transfer still running after this long is killed (e.g. a read stuck on a user's FUSE mount)."""
_PKG_ROOT = str(Path(__file__).resolve().parent.parent)
_TOKEN_LEN = 32
_CACHE_FILES = 100_000


class Staging:
    """Staging directories under `<state_dir>/staging` and the transfers between them and jobs."""

    def __init__(self, state_dir: str, allowed_group: Optional[str]) -> None:
        self.state = Path(state_dir)
        self.root = self.state / STAGING
        self.gid: Optional[int] = None
        if allowed_group:
            try:
                self.gid = grp.getgrnam(allowed_group).gr_gid
            except KeyError:
                self.gid = None
        self._swept = False
        self.hashes: Dict[str, Dict[str, Any]] = {}
        """Chunk hashes of jobs' files, {job dir: {rel: [size, mtime_ns, ino, ctime_ns, [sha256...]]}}
        (one chunk size), so that a file not written since it was hashed is not read again."""

    # ---- directories ----------------------------------------------------------------------------

    def target(self, kind: str, key: str) -> tuple[str, str]:
        """(parent, name) of a job's directory of `kind`; the parent belongs to the agent."""
        if kind == "checkpoint":
            return str(self.state / "checkpoints"), job_id(key)
        if kind == "workdir":
            return str(self.state / "workdirs"), key
        if kind == "output":
            return str(self.state / "outputs"), key
        raise AgentError(BAD_REQUEST, f"field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")

    def open(self) -> tuple[str, Path]:
        """A new, empty staging directory: (token, path)."""
        if not self._swept:  # what an earlier agent left (its transfers died with it)
            self._swept = True
            shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(mode=0o711, exist_ok=True)
        token = secrets.token_hex(_TOKEN_LEN // 2)
        path = self.root / token
        os.mkdir(path, 0o700)
        if self.gid is not None:
            os.chown(path, -1, self.gid)
            os.chmod(path, 0o2770)
        return token, path

    def path(self, token: Any) -> Path:
        if not isinstance(token, str) or len(token) != _TOKEN_LEN or not all(c in "0123456789abcdef" for c in token):
            raise AgentError(BAD_REQUEST, f"field 'token' must be a token from stage_open, got {token!r}")
        path = self.root / token
        if not path.is_dir():
            raise AgentError(REFUSED, f"no staging directory {token} (already used, or the agent restarted)")
        return path

    def close(self, token: str) -> None:
        """Remove a staging directory (idempotent). rmtree on Linux never follows links."""
        try:
            path = self.path(token)
        except AgentError:
            return
        shutil.rmtree(path, ignore_errors=True)

    # ---- transfers ------------------------------------------------------------------------------

    async def run(self, req: Dict[str, Any], timeout: float = HELPER_TIMEOUT_S) -> Dict[str, Any]:
        """Run one stage.py transfer; AgentError(internal) if it fails as a whole."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": _PKG_ROOT,
               "LANG": os.environ.get("LANG", "C.UTF-8")}
        proc = await asyncio.create_subprocess_exec(  # -S, -c: no site, no runpy; it starts in ~20 ms
            sys.executable, "-S", "-c", "from hybridctl_agent.stage import main; main()", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd="/")
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(req).encode()), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise AgentError(INTERNAL, f"the {req['op']} transfer took longer than {timeout:.0f} s; killed") from None
        try:
            answer = json.loads(out)
        except ValueError:
            raise AgentError(INTERNAL, f"the {req['op']} transfer failed: "
                                       f"{err.decode(errors='replace').strip()[-2000:]}") from None
        if not isinstance(answer, dict):
            raise AgentError(INTERNAL, f"the {req['op']} transfer answered {answer!r}")
        return answer

    async def pull(self, kind: str, key: str, have: Dict[str, Any], copy: bool,
                   max_bytes: Optional[int], chunks: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """List the job's directory of `kind` as its owner and, with `copy`, stage the files that
        differ from `have` ({path: [size, mtime_ns]}). The answer's `staged` files (with the size
        and mtime_ns actually copied) are under `path`, until `close(token)`. With `chunks`
        ({size, have}): only the chunks the controller lacks are staged (`chunks` in the answer:
        {path: {hashes, sent}}); without `copy`, the answer's `hashes` are every file's."""
        parent, name = self.target(kind, key)
        # A listing of names and sizes only, here, opening each directory O_NOFOLLOW below a fd (it
        # reads no file and follows no link). Most periodic syncs find nothing changed and end here,
        # without starting a transfer process.
        files = listing(parent, name)
        hashing = chunks is not None and not copy and bool(files)
        if not hashing and (not copy or all(have.get(rel) == entry for rel, entry in files.items())):
            return {"files": files, "staged": {}, "truncated": False, "skipped": [], "token": None, "path": None,
                    "dir": f"{parent}/{name}", **({"chunks": {}, "hashes": {}} if chunks is not None else {})}
        where = f"{parent}/{name}"
        cached = self.hashes.get(where, {}) if chunks is not None else {}
        if chunks is not None and cached.get("", [None])[0] != chunks["size"]:
            cached = {}
        token, path = self.open() if copy else (None, None)
        try:
            answer = await self.run({"op": "pull", "parent": parent, "name": name, "staging": str(path or ""),
                                     "have": have, "copy": copy, "max_bytes": max_bytes,
                                     **({"chunks": chunks, "cached": {r: v for r, v in cached.items() if r}}
                                        if chunks is not None else {})})
            if "error" in answer:
                raise AgentError(REFUSED, f"{kind} of {key}: {answer['error']}")
            if chunks is not None:
                self._remember(where, chunks["size"], cached, answer.pop("hashed", None) or {}, answer["files"])
                if not copy:
                    answer["hashes"] = {rel: v[4] for rel, v in self.hashes.get(where, {}).items()
                                        if rel and rel in answer["files"]}
        except BaseException:
            if token is not None:
                self.close(token)
            raise
        if token is not None and not answer.get("staged"):
            self.close(token)
            token = path = None
        answer.update(token=token, path=None if path is None else str(path), dir=f"{parent}/{name}")
        return answer

    def _remember(self, where: str, chunk: int, cached: Dict[str, Any], hashed: Dict[str, Any],
                  files: Dict[str, Any]) -> None:
        """Keep the hashes of the files still listed (at most `_CACHE_FILES` in all)."""
        kept = {rel: v for rel, v in {**cached, **hashed}.items() if rel in files and v[:2] == files[rel]}
        if sum(len(v) for v in self.hashes.values()) + len(kept) > _CACHE_FILES:
            self.hashes.clear()
        self.hashes[where] = {"": [chunk], **kept}

    async def push(self, kind: str, key: str, who: Dict[str, Any], token: Optional[str],
                   files: Dict[str, int], patch: Optional[Dict[str, Any]] = None,
                   chunks: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Copy the staged `files` ({path: size}) into the job's directory of `kind` (made if
        missing) as the job's user `who`; the staging directory is removed afterwards. `patch`
        ({chunk, files: {path: {size, sent, hashes}}}): those staged files are chunks to write over
        the job's current copy, which must be as this agent last hashed it. `chunks` ({size, have:
        {path: [sha256...]}}): the chunk hashes of the files pushed (the controller's copy's), kept
        for the next transfer of the job's files so that they need not be read to be hashed."""
        parent, name = self.target(kind, key)
        path = self.path(token) if token is not None else None
        extra: Dict[str, Any] = {}
        if patch:
            known = self.hashes.get(f"{parent}/{name}", {})
            ok = known.get("", [None])[0] == patch["chunk"]
            extra = {"patch": patch, "bases": {rel: known[rel][:4] for rel in patch["files"] if ok and rel in known}}
        try:
            answer = await self.run({"op": "push", "parent": parent, "name": name, "staging": str(path or ""),
                                     "files": files, **who, **extra})
        finally:
            if token is not None:
                self.close(token)
        idents = answer.pop("idents", None) or {}
        if "error" in answer:
            raise AgentError(REFUSED, f"{kind} of {key}: {answer['error']}")
        if chunks is not None:
            where = f"{parent}/{name}"
            known = self.hashes.get(where, {})
            cached = known if known.get("", [None])[0] == chunks["size"] else {}
            pushed = {rel: ident + [chunks["have"][rel]] for rel, ident in idents.items() if rel in chunks["have"]}
            self._remember(where, chunks["size"], {**cached, **pushed},
                           {}, {rel: v[:2] for rel, v in {**cached, **pushed}.items() if rel})
        answer["dir"] = f"{parent}/{name}"
        return answer

    async def unpack(self, kind: str, key: str, who: Dict[str, Any], token: str, tar: str) -> Dict[str, Any]:
        """Extract the staged tar `tar` into the job's directory of `kind` as the job's user."""
        parent, name = self.target(kind, key)
        path = self.path(token)
        if "/" in tar or tar in ("", ".", ".."):
            raise AgentError(BAD_REQUEST, f"field 'tar' must be a file name in the staging directory, got {tar!r}")
        try:
            answer = await self.run({"op": "unpack", "parent": parent, "name": name, "staging": str(path),
                                     "tar": tar, **who})
        finally:
            self.close(token)
        if "error" in answer:
            raise AgentError(REFUSED, f"{kind} of {key}: {answer['error']}")
        answer["dir"] = f"{parent}/{name}"
        return answer


def listing(parent: str, name: str) -> Dict[str, List[int]]:
    """{path: [size, mtime_ns]} of the regular files below `parent/name` (links and the like
    skipped); {} when it does not exist."""
    top = os.path.join(parent, name)
    out: Dict[str, List[int]] = {}
    try:
        stack = [(os.open(top, fdio.DIR_FLAGS), "")]
    except OSError:
        return out
    while stack:
        dfd, prefix = stack.pop()
        try:
            with os.scandir(dfd) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                        if stat.S_ISDIR(st.st_mode):
                            stack.append((fdio.open_dir(dfd, e.name, create=False), f"{prefix}{e.name}/"))
                        elif stat.S_ISREG(st.st_mode) and not e.name.endswith(fdio.PART):
                            out[prefix + e.name] = [st.st_size, st.st_mtime_ns]
                    except (OSError, fdio.Refused):
                        continue  # replaced under us: the next sync sees what is there
        finally:
            os.close(dfd)
    return out


def identity(req: Dict[str, Any], rootless: bool, node: str) -> Dict[str, Any]:
    """Who a push runs as: the request's uid/gid (checked as `launch` checks them) when the agent
    is root, the agent's own account when it is rootless."""
    from hybridctl_agent.jobspec import _own_account, _run_as

    account = _own_account() if rootless else _run_as(req, node)
    try:
        groups = os.getgrouplist(account.user, account.gid)
    except OSError:
        groups = [account.gid]
    return {"uid": account.uid, "gid": account.gid, "groups": groups}
