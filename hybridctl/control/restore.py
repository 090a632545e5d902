"""Restoring a job's checkpoint onto the node it starts on next (`restore_to`), and the final pulls
it may overlap (`FinalSyncs`): a preempted rank 0 is released before its final pull, so the restore
onto the next node stages a hard-linked snapshot of the store meanwhile, then only what the final
pull changed, and the job's directory there receives one generation of the store in one
`stage_push`. Of a file the node holds an older copy of only the chunks it lacks travel. The store,
its manifest and the pull side are control/checkpoints.py's."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Awaitable, Callable

from hybridctl.control.checkpoints import (_DIR, CHUNK_SIZE, STAGE_TIMEOUT_S, _fd_path, _hashes, _manifest, _put_all,
                                           _remote, _walk, adopt, blob_size, checked, drop, plan_push, snapshot)
from hybridctl.core import wire
from hybridctl_agent.chunks import copy_chunks
from hybridctl_agent.fdio import READ_FLAGS

log = logging.getLogger("hybridctl.checkpoints")


class FinalSyncs:
    """The final checkpoint pulls in flight, by job: a preempted rank 0 is released before its
    final pull, so its job may be placed at once, and the restore onto the next node waits here
    for that pull before the changed chunks follow (`restore_to`'s `final`). The old node is not
    given back while one of its final pulls runs (`on`). One event loop's; no I/O."""

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[str, asyncio.Future[None]]] = {}
        self.log: list[tuple[str, str]] = []
        """(event, job) in the order they happened: begin, end (tests read it)."""

    @staticmethod
    def _job(key: str) -> str:
        return key.split(".", 1)[0]

    def begin(self, key: str, node: str) -> None:
        job = self._job(key)
        self._jobs[job] = (node, asyncio.get_running_loop().create_future())
        self.log.append(("begin", job))

    def end(self, key: str) -> None:
        """The final pull ended (copied, failed or cancelled): waiters go on with the store as it is."""
        node_fut = self._jobs.pop(self._job(key), None)
        if node_fut is not None and not node_fut[1].done():
            node_fut[1].set_result(None)
        self.log.append(("end", self._job(key)))

    def pending(self, key: str) -> asyncio.Future[None] | None:
        """What a restore of this job waits for, or None when no final pull of it runs."""
        entry = self._jobs.get(self._job(key))
        return None if entry is None else asyncio.shield(entry[1])

    def on(self, node: str) -> bool:
        """Whether a final pull from `node` is in flight."""
        return any(n == node for n, _f in self._jobs.values())


async def restore_to(agent: Any, files: Any, key: str, local_dir: Path, node: str, owner: dict[str, Any],
                     final: Awaitable[Any] | None = None,
                     on_event: Callable[[str], None] | None = None) -> tuple[list[str], list[str], int]:
    """Restore the store's copy of job `key` onto `node` before it starts there: the controller
    writes what must travel into a staging directory, the agent moves it into the job's checkpoint
    directory as `owner` ({uid, gid, user}). Returns (sent, kept, bytes).

    `final`: the old node's final pull of this job, still running. Meanwhile the store's copy as it
    stands (a hard-linked snapshot) goes into the staging directory; once `final` is done, only
    what it changed follows (the chunks that differ written over the staged files, whole files for
    new ones), and then all of it lands in the job's directory in one `stage_push`. The node's
    directory therefore only ever receives one generation of the store. `on_event` hears "staged"
    (the early copy is on the node) and "final" (the final pull ended)."""
    say = on_event or (lambda _e: None)
    if final is None and not local_dir.is_dir():
        return [], [], 0
    res = await agent.call("stage_pull", timeout=STAGE_TIMEOUT_S, key=key, kind="checkpoint", copy=False)
    before = checked(res.get("files"), "checkpoint listing", node)
    theirs: dict[str, list[str]] | None = None
    early: dict[str, list[Any]] = {}
    """Files put whole into `opened` from the first snapshot: {path: its manifest entry there}."""
    opened: dict[str, Any] | None = None
    moved = 0
    try:
        if final is not None and local_dir.is_dir():
            snap = snapshot(local_dir)
            try:
                send, _kept = plan_push(snap, before, node)
                theirs = await _node_hashes(agent, key, node, before, send)
                whole = {r: s for r, s in send.items() if r not in plan_patch(snap, send, theirs)}
                if whole:
                    opened = await agent.call("stage_open", timeout=STAGE_TIMEOUT_S)
                    await _put_all(files, snap, opened["path"], whole)
                    moved = sum(whole.values())
                    seen = _manifest(snap)
                    early = {rel: seen.get(rel, []) for rel in whole}
                    log.info("checkpoint of %s: %d bytes staged on %s while the final sync runs", key, moved, node)
                    say("staged")
            finally:
                await drop(snap)
        if final is not None:
            await final
            say("final")
        if not local_dir.is_dir():
            return [], [], 0
        snap = snapshot(local_dir)
        try:
            send, kept = plan_push(snap, before, node)
            if not send:
                return [], kept, 0
            if theirs is None or any(rel in before and rel not in theirs for rel in send):
                theirs = await _node_hashes(agent, key, node, before, send)
            patch = plan_patch(snap, send, theirs)
            ready, more = await _bring_up_to_date(files, snap, opened, early, send, patch)
            moved += more
            handed, opened = opened, None  # _push_once closes it, whatever happens
            sent, more, failed = await _push_once(agent, files, key, snap, local_dir, node, owner, send, patch,
                                                  handed, ready)
            moved += more
            if failed:  # a patch the node could not apply (its copy changed since it was hashed): whole files
                again, more, _ = await _push_once(agent, files, key, snap, local_dir, node, owner,
                                                  {rel: send[rel] for rel in failed}, {})
                sent, moved = sorted(sent + again), moved + more
            return sent, kept, moved
        finally:
            await drop(snap)
    finally:
        if opened is not None:
            await agent.call("stage_done", timeout=STAGE_TIMEOUT_S, token=opened["token"])


async def _node_hashes(agent: Any, key: str, node: str, before: dict[str, list[int]],
                       send: dict[str, int]) -> dict[str, list[str]]:
    """The chunk hashes of the node's older copies of files to send, where it holds any (its copy
    as listed in `before`; one that changed since is left out)."""
    if not any(rel in before for rel in send):
        return {}
    res = await agent.call("stage_pull", timeout=STAGE_TIMEOUT_S, key=key, kind="checkpoint", copy=False,
                           chunks={"size": CHUNK_SIZE})
    problems: list[wire.Problem] = []
    now = checked(res.get("files"), "checkpoint listing", node)
    theirs = {rel: h for rel, h in wire.node_hashes(res.get("hashes"), now, CHUNK_SIZE, problems).items()
              if now.get(rel) == before.get(rel)}
    for p in problems:
        log.warning("checkpoint of %s on %s: malformed %s; ignored", key, node, p)
    return theirs


async def _bring_up_to_date(files: Any, snap: Path, opened: dict[str, Any] | None, early: dict[str, list[Any]],
                            send: dict[str, int], patch: dict[str, dict[str, Any]]) -> tuple[set[str], int]:
    """Make the files staged early (`early`, from an older snapshot) what `snap` holds: unchanged
    ones stay, a changed one gets the chunks whose hash differs written over it (whole when either
    side lacks hashes), and one no longer to be sent whole is removed. Returns (the files now
    staged whole and current, bytes moved)."""
    if opened is None:
        return set(), 0
    seen = _manifest(snap)
    ready: set[str] = set()
    moved = 0
    top = os.open(snap, _DIR)
    try:
        for rel, was in sorted(early.items()):
            remote = _remote(opened["path"], rel)
            if rel not in send or rel in patch:
                await files.remove(remote)
                continue
            now = seen.get(rel, [])
            if now == was or (now[:1] == was[:1] and _hashes(now) is not None and _hashes(now) == _hashes(was)):
                ready.add(rel)
                continue
            new, old = _hashes(now), _hashes(was)
            names = rel.split("/")
            dfd = _walk(top, names[:-1], create=False)
            try:
                if new is None or old is None:
                    await files.put(_fd_path(dfd, names[-1]), remote, send[rel])
                    moved += send[rel]
                else:
                    idx = [i for i, h in enumerate(new) if i >= len(old) or old[i] != h]
                    await files.write_at(_fd_path(dfd, names[-1]), remote, idx, CHUNK_SIZE, send[rel])
                    moved += blob_size(send[rel], CHUNK_SIZE, idx)
            finally:
                os.close(dfd)
            ready.add(rel)
    finally:
        os.close(top)
    return ready, moved


def plan_patch(local_dir: Path, send: dict[str, int], theirs: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """For each file to send of which the node holds some chunks (`theirs`: its copy's hashes) and
    the store knows its own chunk hashes: {path: {size, sent, hashes}}, the chunks to send."""
    seen = _manifest(local_dir)
    out: dict[str, dict[str, Any]] = {}
    for rel, size in send.items():
        ours = _hashes(seen.get(rel))
        if ours is None or rel not in theirs or seen[rel][0] != size:
            continue
        node = theirs[rel]
        idx = [i for i, h in enumerate(ours) if i >= len(node) or node[i] != h]
        if len(idx) < len(ours):
            out[rel] = {"size": size, "sent": idx, "hashes": [ours[i] for i in idx]}
    return out


async def _push_once(agent: Any, files: Any, key: str, src: Path, local_dir: Path, node: str,
                     owner: dict[str, Any], send: dict[str, int], patch: dict[str, dict[str, Any]],
                     opened: dict[str, Any] | None = None,
                     ready: set[str] = frozenset()) -> tuple[list[str], int, list[str]]:  # type: ignore[assignment]
    """One stage_open + puts + stage_push, reading the snapshot `src` of the store `local_dir`:
    whole files, or for those in `patch` only their chunks (a blob of them, built beside the
    snapshot's file). `opened`/`ready`: a staging directory already holding the whole files `ready`.
    Returns (paths written, bytes moved, paths whose patch failed)."""
    if opened is None:
        opened = await agent.call("stage_open", timeout=STAGE_TIMEOUT_S)
    staged = {rel: (blob_size(patch[rel]["size"], CHUNK_SIZE, patch[rel]["sent"]) if rel in patch else size)
              for rel, size in send.items()}
    try:
        await _put_all(files, src, opened["path"],
                       {r: s for r, s in send.items() if r not in patch and r not in ready})
        await _put_chunks(files, src, opened["path"], patch)
    except BaseException:
        await agent.call("stage_done", timeout=STAGE_TIMEOUT_S, token=opened["token"])
        raise
    extra: dict[str, Any] = {"patch": {"chunk": CHUNK_SIZE, "files": patch}} if patch else {}
    seen = _manifest(src)
    hashes = {rel: h for rel in send if (h := _hashes(seen.get(rel))) is not None}
    if hashes:  # the agent keeps them: the next move of these files needs no hashing there
        extra["chunks"] = {"size": CHUNK_SIZE, "have": hashes}
    res = await agent.call("stage_push", timeout=STAGE_TIMEOUT_S, key=key, kind="checkpoint", token=opened["token"],
                           files=staged, uid=owner.get("uid"), gid=owner.get("gid"), user=owner.get("user"),
                           **extra)
    written = checked(res.get("written"), "restored checkpoint", node)
    errors = [str(e) for e in res.get("errors") or []]
    for err in errors:
        log.warning("checkpoint of %s: not restored onto %s: %s", key, node, err)
    sent = sorted(rel for rel in send if rel in written)
    adopt(local_dir, sent, written, node, expect=seen)
    failed = sorted(rel for rel in patch if rel not in written and any(e.startswith(f"{rel}: ") for e in errors))
    moved = sum(v for rel, v in staged.items() if rel not in ready)
    return sent, moved, failed  # what crossed the link, a refused patch's chunks included


async def _put_chunks(files: Any, local_dir: Path, remote_dir: str, patch: dict[str, dict[str, Any]]) -> None:
    """Put, for each file of `patch`, the chunks it names one after another (a blob built beside
    the store's file, removed afterwards)."""
    top = os.open(local_dir, _DIR)
    try:
        for rel, p in sorted(patch.items()):
            names = rel.split("/")
            dfd = _walk(top, names[:-1], create=False)
            blob = f".{names[-1]}.delta.part"
            try:
                src = os.open(names[-1], READ_FLAGS, dir_fd=dfd)
                try:
                    out = os.open(blob, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                                  dir_fd=dfd)
                    try:
                        n = copy_chunks(src, out, p["size"], CHUNK_SIZE, p["sent"])
                    finally:
                        os.close(out)
                finally:
                    os.close(src)
                await files.put(_fd_path(dfd, blob), _remote(remote_dir, rel), n)
            finally:
                try:
                    os.unlink(blob, dir_fd=dfd)
                except FileNotFoundError:
                    pass
                os.close(dfd)
    finally:
        os.close(top)
