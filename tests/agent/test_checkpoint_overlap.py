"""A preempted job's restore onto its next node overlaps the old node's final checkpoint pull
(issue 15): the controller's copy as it stands goes to the new node's staging area while the final
delta still arrives, then only the changed chunks follow, and the job's directory there receives
one whole generation of the store. Real stage.py transfers (fork, fd passing, the job's rights)
through the local-file path, the real controller store; the only fake is a link that holds a
transfer until the test lets it go, or cuts it (named so)."""

from __future__ import annotations

import asyncio
import os
import pwd
from pathlib import Path

import pytest

from hybridctl.control import checkpoints as ck
from hybridctl.control.restore import FinalSyncs, restore_to
from hybridctl_agent import fdio, stage
from tests.agent.chunks_kit import StagingAgent, write as _write
from tests.waiting import wait_for_async

CH = ck.CHUNK_SIZE
KEY, NEXT = "9.a0.r0", "9.a1.r0"


class HeldLinkFiles(ck.LocalFiles):
    """Local file access whose gets from the old node wait until `go` is set (a slow link), or
    fail with `cut` after `cut_after` files (the node lost mid-pull). Misbehaves on purpose."""

    def __init__(self, cut_after: int | None = None) -> None:
        self.go = asyncio.Event()
        self.waiting = asyncio.Event()
        self.cut_after = cut_after
        self.gets = 0

    async def get(self, remote: str, local: str, size: int) -> None:
        self.waiting.set()
        await self.go.wait()
        if self.cut_after is not None and self.gets >= self.cut_after:
            raise ConnectionResetError("the old node went away mid-pull")
        self.gets += 1
        await super().get(remote, local, size)


def _node_file(tmp: Path, node: str, rel: str) -> Path:
    return tmp / node / "checkpoints" / "9" / rel


async def _first_sync(tmp: Path, files: dict[str, bytes]) -> tuple[StagingAgent, Path]:
    """Node A's checkpoint, synced once into the store (the last periodic sync)."""
    a = StagingAgent(tmp / "A")
    for rel, data in files.items():
        _write(_node_file(tmp, "A", rel), data)
    store = tmp / "store" / "9"
    await ck.sync_from(a, ck.LocalFiles(), KEY, store, "A")
    (tmp / "B").mkdir()
    return a, store


def test_the_restore_to_the_next_node_starts_before_the_final_sync_ends(tmp_path: Path) -> None:
    old = {"w.bin": os.urandom(8 * CH + 5), "opt.bin": os.urandom(2 * CH)}
    new = dict(old, **{"w.bin": old["w.bin"][:3 * CH] + os.urandom(CH) + old["w.bin"][4 * CH:],
                       "extra.json": b"{}"})

    async def scenario() -> list[str]:
        a, store = await _first_sync(tmp_path, old)
        for rel, data in new.items():  # the job's final checkpoint, written at SIGTERM
            _write(_node_file(tmp_path, "A", rel), data)
        b = StagingAgent(tmp_path / "B")
        syncs = FinalSyncs()
        slow = HeldLinkFiles()
        seen: list[str] = []

        async def final_pull() -> int:
            syncs.begin(KEY, "A")
            try:
                return await ck.sync_from(a, slow, KEY, store, "A")
            finally:
                syncs.end(KEY)

        pulling = asyncio.create_task(final_pull())
        await wait_for_async(lambda: slow.waiting.is_set(), what="the final pull to reach the link")
        final = syncs.pending(NEXT)
        assert final is not None and syncs.on("A") and not syncs.on("B")
        restoring = asyncio.create_task(restore_to(b, ck.LocalFiles(), NEXT, store, "B", {}, final=final,
                                                      on_event=seen.append))
        await wait_for_async(lambda: "staged" in seen, what="the store's copy staged on the next node")
        # the final pull is still held on its link: the restore overlapped it
        assert not pulling.done() and syncs.log == [("begin", "9")]
        # ...and the job's directory on B has received nothing yet: one generation lands, later
        assert not (tmp_path / "B" / "checkpoints" / "9").exists() or not any(
            (tmp_path / "B" / "checkpoints" / "9").iterdir())
        slow.go.set()
        synced = await pulling
        sent, kept, moved = await restoring
        assert seen == ["staged", "final"] and syncs.log == [("begin", "9"), ("end", "9")]
        assert synced == CH + 2  # one chunk of w.bin, and the new file
        assert sent == ["extra.json", "opt.bin", "w.bin"] and kept == []
        # what followed the final pull: the chunk it changed and the new file, not the whole copy
        assert moved == (8 * CH + 5) + 2 * CH + CH + 2
        return sent

    asyncio.run(scenario())
    for rel, data in new.items():
        assert _node_file(tmp_path, "B", rel).read_bytes() == data
    assert not list((tmp_path / "store").glob(".9.*")), "a snapshot or generation left behind"
    assert not list((tmp_path / "B" / "staging").iterdir()), "a staging directory left behind"


def test_a_final_sync_cut_midway_leaves_the_previous_checkpoint_whole_on_both_sides(tmp_path: Path) -> None:
    """Two files change together (weights and optimizer state of one step). The old node is lost
    after the first arrived: the store keeps the previous checkpoint entire, never the new weights
    with the old optimizer, and the next node resumes from exactly that."""
    old = {"a-weights.bin": os.urandom(2 * CH), "b-optim.bin": os.urandom(2 * CH)}
    new = {rel: os.urandom(2 * CH) for rel in old}

    async def scenario() -> None:
        a, store = await _first_sync(tmp_path, old)
        manifest = (store / ck.MANIFEST).read_bytes()
        for rel, data in new.items():
            _write(_node_file(tmp_path, "A", rel), data)
        syncs = FinalSyncs()
        cut = HeldLinkFiles(cut_after=1)
        cut.go.set()
        syncs.begin(KEY, "A")
        final = syncs.pending(NEXT)
        b = StagingAgent(tmp_path / "B")
        restoring = asyncio.create_task(restore_to(b, ck.LocalFiles(), NEXT, store, "B", {}, final=final))
        try:
            with pytest.raises(ConnectionResetError):
                await ck.sync_from(a, cut, KEY, store, "A")
        finally:
            syncs.end(KEY)
        assert cut.gets == 1  # the first file did arrive before the cut
        for rel, data in old.items():
            assert (store / rel).read_bytes() == data
        assert (store / ck.MANIFEST).read_bytes() == manifest
        sent, _kept, _moved = await restoring
        assert sent == sorted(old)

    asyncio.run(scenario())
    for rel, data in old.items():
        assert _node_file(tmp_path, "B", rel).read_bytes() == data
    assert not list((tmp_path / "store").glob(".9.*"))


def test_a_swap_cut_between_its_two_renames_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where renameat2 is missing the swap is two renames; a crash between them leaves no live copy
    and the previous generation at `.old`: the next pull puts it back before anything else."""
    old = {"m.bin": os.urandom(CH + 1)}

    async def scenario() -> None:
        a, store = await _first_sync(tmp_path, old)
        _write(_node_file(tmp_path, "A", "m.bin"), os.urandom(CH + 1))
        monkeypatch.setattr(ck, "exchange", lambda *a: False)
        real = os.rename

        def crash_before_the_second(src, dst, **kw):  # type: ignore[no-untyped-def]
            if dst == store.name:  # next -> live: the live copy is already at .old
                raise KeyboardInterrupt("the controller dies here")
            return real(src, dst, **kw)

        monkeypatch.setattr(ck.os, "rename", crash_before_the_second)
        with pytest.raises(KeyboardInterrupt):
            await ck.sync_from(a, ck.LocalFiles(), KEY, store, "A")
        monkeypatch.setattr(ck.os, "rename", real)
        assert not store.exists() and (store.parent / ".9.old").is_dir()
        ck.recover(store)
        assert (store / "m.bin").read_bytes() == old["m.bin"]

    asyncio.run(scenario())


def test_replace_swaps_names_and_never_follows_a_link(tmp_path: Path) -> None:
    (tmp_path / "victim").write_bytes(b"victim")
    (tmp_path / "name").symlink_to(tmp_path / "victim")
    (tmp_path / "tmp").write_bytes(b"new")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fdio.replace(dfd, "tmp", "name")
        assert not (tmp_path / "name").is_symlink() and (tmp_path / "name").read_bytes() == b"new"
        assert (tmp_path / "victim").read_bytes() == b"victim" and not (tmp_path / "tmp").exists()
        (tmp_path / "tmp2").write_bytes(b"first")
        fdio.replace(dfd, "tmp2", "fresh")  # nothing there yet: a plain rename
        assert (tmp_path / "fresh").read_bytes() == b"first"
        (tmp_path / "dir").mkdir()
        (tmp_path / "tmp3").write_bytes(b"x")
        with pytest.raises(IsADirectoryError):  # never swapped with a directory, as rename would not
            fdio.replace(dfd, "tmp3", "dir")
        assert (tmp_path / "dir").is_dir() and (tmp_path / "tmp3").read_bytes() == b"x"
    finally:
        os.close(dfd)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to push as another user")
def test_a_job_user_who_swaps_a_directory_for_a_link_gets_nothing_written_through_it(tmp_path: Path) -> None:
    """The job (nobody) replaced `sub/` in its checkpoint directory by a link to a directory it
    may write itself, and `top/` by a link to root's. The agent's push neither writes nor renames
    a file through either link; what it does put in place belongs to the job."""
    nobody = pwd.getpwnam("nobody")
    parent = tmp_path / "checkpoints"
    job = parent / "9"
    job.mkdir(parents=True)
    os.chown(job, nobody.pw_uid, nobody.pw_gid)
    theirs = tmp_path / "elsewhere"
    theirs.mkdir()
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    roots = tmp_path / "roots"
    roots.mkdir()
    (job / "sub").symlink_to(theirs)
    (job / "top").symlink_to(roots)
    os.lchown(job / "sub", nobody.pw_uid, nobody.pw_gid)
    staging = tmp_path / "staging" / "t"
    (staging / "sub").mkdir(parents=True)
    (staging / "top").mkdir()
    for rel in ("sub/m.bin", "top/m.bin", "ok.bin"):
        (staging / rel).write_bytes(b"x" * 1000)
    staging.chmod(0o700)
    staged_inode = (staging / "ok.bin").stat().st_ino
    res = stage.push({"parent": str(parent), "name": "9", "uid": nobody.pw_uid, "gid": nobody.pw_gid,
                      "groups": [nobody.pw_gid], "staging": str(staging),
                      "files": {"sub/m.bin": 1000, "top/m.bin": 1000, "ok.bin": 1000}})
    assert sorted(res["written"]) == ["ok.bin"], res
    assert sorted(e.split(":")[0] for e in res["errors"]) == ["sub/m.bin", "top/m.bin"]
    assert list(theirs.iterdir()) == [] and list(roots.iterdir()) == []
    assert (job / "sub").is_symlink() and (job / "top").is_symlink()
    st = (job / "ok.bin").stat()
    assert (st.st_uid, st.st_gid, st.st_nlink) == (nobody.pw_uid, nobody.pw_gid, 1)
    assert (job / "ok.bin").read_bytes() == b"x" * 1000
    # the whole file was moved in, not copied: the same inode, and no longer in staging
    assert st.st_ino == staged_inode
    assert not (staging / "ok.bin").exists()
