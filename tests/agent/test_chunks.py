"""Chunked checkpoint moves (issue 15): the agent hashes a checkpoint in fixed-size chunks with the
job's rights and stages only the chunks the controller lacks; the controller patches its copy and
checks every chunk against its hash. Real stage.py pulls (its fork and fd passing) and the real
controller store, through the local-file path; the wire checks are pure."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from hybridctl.control import checkpoints as ck
from hybridctl.control.restore import restore_to
from hybridctl.core import wire
from hybridctl_agent import stage
from tests.agent.chunks_kit import StagingAgent, write as _write

CH = ck.CHUNK_SIZE
SIZE = 16 * CH + 12345  # 17 chunks, the last one short


def _agent_pull(tmp: Path, have: dict, hashes: dict, cached: dict | None = None,
                copy: bool = True) -> tuple[dict, Path]:
    staging = tmp / "staging" / str(len(list((tmp / "staging").glob("*"))) if (tmp / "staging").exists() else 0)
    staging.mkdir(parents=True)
    res = stage.pull({"parent": str(tmp / "checkpoints"), "name": "7", "staging": str(staging), "have": have,
                      "copy": copy, "max_bytes": None, "chunks": {"size": CH, "have": hashes},
                      "cached": cached or {}})
    assert "error" not in res, res
    return res, staging


def _sync(tmp: Path, store: Path) -> int:
    """One periodic sync as sync_from does it, with the agent's side run in this process."""
    seen = ck._manifest(store)
    have = {rel: e[:2] for rel, e in seen.items()}
    hashes = {rel: h for rel, e in seen.items() if (h := ck._hashes(e)) is not None}
    res, staging = _agent_pull(tmp, have, hashes)
    problems: list[wire.Problem] = []
    chunked = wire.chunked_files(res["chunks"], ck.checked(res["staged"], "t", "n1"), CH, problems)
    assert problems == []
    return asyncio.run(ck.pull(ck.LocalFiles(), str(staging), res["files"], store, "n1", staged=res["staged"],
                               chunked=chunked))


def test_a_checkpoint_changed_in_one_place_moves_one_chunk_and_the_copy_is_exact(tmp_path: Path) -> None:
    data = bytearray(os.urandom(SIZE))
    ckpt = tmp_path / "checkpoints" / "7" / "sub" / "model.pt"
    _write(ckpt, bytes(data))
    store = tmp_path / "store"
    assert _sync(tmp_path, store) == SIZE  # the first sync: the whole file
    assert (store / "sub" / "model.pt").read_bytes() == data
    data[5 * CH + 17] ^= 0xFF  # one byte in chunk 5
    _write(ckpt, bytes(data))
    assert _sync(tmp_path, store) == CH
    assert (store / "sub" / "model.pt").read_bytes() == data
    data += b"tail" * 1000  # grows: the short last chunk and a new one
    _write(ckpt, bytes(data))
    assert _sync(tmp_path, store) == SIZE - 16 * CH + 4000  # the last chunk only
    assert (store / "sub" / "model.pt").read_bytes() == data
    del data[3 * CH:]  # shrinks to 3 chunks, all unchanged: nothing but the new size moves
    _write(ckpt, bytes(data))
    assert _sync(tmp_path, store) == 0
    assert (store / "sub" / "model.pt").read_bytes() == data
    assert _sync(tmp_path, store) == 0  # unchanged: nothing staged at all
    assert not list(store.rglob("*.part"))


def test_the_hashes_are_sha256_per_chunk_and_a_cache_spares_an_unwritten_file(tmp_path: Path) -> None:
    data = os.urandom(2 * CH + 5)
    ckpt = tmp_path / "checkpoints" / "7" / "m"
    _write(ckpt, data)
    res, _ = _agent_pull(tmp_path, {}, {}, copy=False)
    want = [hashlib.sha256(data[i:i + CH]).hexdigest() for i in range(0, len(data), CH)]
    ident, hashes = res["hashed"]["m"][:4], res["hashed"]["m"][4]
    assert hashes == want and res["staged"] == {}
    fake = ["0" * 64] * 3
    res, _ = _agent_pull(tmp_path, {}, {}, cached={"m": ident + [fake]}, copy=False)
    assert res["hashed"]["m"][4] == fake  # the same file state: not read again
    with open(ckpt, "r+b") as f:  # written in place, mtime put back: ctime still tells
        f.write(b"x")
    os.utime(ckpt, ns=(ident[1], ident[1]))
    res, _ = _agent_pull(tmp_path, {}, {}, cached={"m": ident + [fake]}, copy=False)
    assert res["hashed"]["m"][4][0] == hashlib.sha256(b"x" + data[1:CH]).hexdigest()


def test_one_percent_of_a_checkpoint_changed_moves_about_one_percent(tmp_path: Path) -> None:
    size = 100 * CH
    data = bytearray(os.urandom(size))
    ckpt = tmp_path / "checkpoints" / "7" / "w.bin"
    _write(ckpt, bytes(data))
    store = tmp_path / "store"
    _sync(tmp_path, store)
    data[42 * CH: 43 * CH] = os.urandom(CH)  # 1 % of the bytes, one region
    _write(ckpt, bytes(data))
    moved = _sync(tmp_path, store)
    assert moved == CH == size // 100
    assert hashlib.sha256((store / "w.bin").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_a_link_swapped_in_for_a_checkpoint_file_is_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"TOPSECRET" * 1000)
    job = tmp_path / "checkpoints" / "7"
    job.mkdir(parents=True)
    (job / "ckpt").symlink_to(secret)
    res, staging = _agent_pull(tmp_path, {}, {})
    res2, _ = _agent_pull(tmp_path, {}, {}, copy=False)
    assert res["files"] == {} and res["staged"] == {} and res2["hashed"] == {}
    assert not any(b"TOPSECRET" in p.read_bytes() for p in staging.rglob("*") if p.is_file())


def test_a_file_replaced_between_listing_and_hashing_is_not_staged(tmp_path: Path, monkeypatch) -> None:
    """The job's user swaps the file for a link to a secret after the listing: the open as the job
    (O_NOFOLLOW) fails or finds another file, and nothing of the secret is staged."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"TOPSECRET" * 1000)
    job = tmp_path / "checkpoints" / "7"
    _write(job / "ckpt", os.urandom(1000))
    real_open = os.open

    def swapping_open(path, flags, *a, **kw):  # the child's open of the listed file
        if path == "ckpt" and kw.get("dir_fd") is not None:
            os.unlink(job / "ckpt")
            os.symlink(secret, job / "ckpt")
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(stage.os, "open", swapping_open)
    res, staging = _agent_pull(tmp_path, {}, {})
    monkeypatch.undo()
    assert (job / "ckpt").is_symlink()  # the swap did happen, after the listing
    assert res["staged"] == {} and res["chunks"] == {}
    assert not any(b"TOPSECRET" in p.read_bytes() for p in staging.rglob("*") if p.is_file())


# ---- a lying node -------------------------------------------------------------------------------


def test_wire_drops_chunk_entries_for_paths_not_staged_wrong_counts_and_bad_indices() -> None:
    h = "a" * 64
    staged = {"m": [2 * CH, 1]}
    problems: list[wire.Problem] = []
    got = wire.chunked_files({
        "m": {"hashes": [h, h], "sent": [1]},
        "../other-job/m": {"hashes": [h], "sent": [0]},
        "x": {"hashes": [h], "sent": []},
    }, staged, CH, problems)
    assert got == {"m": ([h, h], [1])} and len(problems) == 2
    for bad in ({"hashes": [h], "sent": [0]}, {"hashes": [h, h, h], "sent": []}, {"hashes": [h, "zz"], "sent": []},
                {"hashes": [h, h], "sent": [1, 0]}, {"hashes": [h, h], "sent": [2]}, {"hashes": [h, h], "sent": [-1]},
                {"hashes": [h, h], "sent": [True]}, "nope"):
        problems = []
        assert wire.chunked_files({"m": bad}, staged, CH, problems) == {} and problems, bad
    absurd = {"m": [1 << 62, 1]}  # 2^62 bytes: more chunks than any file may have
    assert wire.chunked_files({"m": {"hashes": [h], "sent": []}}, absurd, CH, []) == {}
    assert wire.node_hashes({"m": [h, h], "/etc/shadow": [h]}, {"m": [2 * CH, 0]}, CH, []) == {"m": [h, h]}


def test_a_node_naming_chunks_the_store_does_not_hold_is_refused(tmp_path: Path) -> None:
    """A lying node stages one chunk and claims the others are ones the controller already holds,
    naming another job's chunk hashes: the controller holds no such chunks for this job (it never
    looks chunks up across jobs) and refuses the file; its copy stays as it was."""
    store = tmp_path / "store"
    other = os.urandom(2 * CH)
    theirs = [hashlib.sha256(other[i:i + CH]).hexdigest() for i in (0, CH)]
    mine = os.urandom(2 * CH)
    _write(tmp_path / "checkpoints" / "7" / "m", mine)
    _sync(tmp_path, store)
    staging = tmp_path / "lie"
    staging.mkdir()
    (staging / "m").write_bytes(os.urandom(CH))
    with pytest.raises(ck.TransferMismatch, match="left out chunks"):
        asyncio.run(ck.pull(ck.LocalFiles(), str(staging), {"m": [2 * CH, 99]}, store, "n1",
                            staged={"m": [2 * CH, 99]}, chunked={"m": (theirs, [1])}))
    assert (store / "m").read_bytes() == mine and not list(store.rglob("*.part"))
    # chunks whose bytes do not match the hashes the node gave are refused too
    good = [hashlib.sha256(mine[i:i + CH]).hexdigest() for i in (0, CH)]
    with pytest.raises(ck.TransferMismatch, match="do not match"):
        asyncio.run(ck.pull(ck.LocalFiles(), str(staging), {"m": [2 * CH, 99]}, store, "n1",
                            staged={"m": [2 * CH, 99]}, chunked={"m": (good[:1] + ["b" * 64], [1])}))
    assert (store / "m").read_bytes() == mine and not list(store.rglob("*.part"))


# ---- restore onto a node holding an older copy ----------------------------------------------------


def _stored(tmp: Path, files: dict[str, bytes]) -> Path:
    """The controller's copy of job 9's checkpoint, pulled from node A with chunk hashes."""
    a = StagingAgent(tmp / "A")
    for rel, data in files.items():
        _write(tmp / "A" / "checkpoints" / "9" / rel, data)
    store = tmp / "store"
    asyncio.run(ck.sync_from(a, ck.LocalFiles(), "9.a0.r0", store, "A"))
    return store


def test_a_restore_sends_only_the_chunks_the_node_lacks_and_the_result_is_exact(tmp_path: Path) -> None:
    new = {"w.bin": os.urandom(10 * CH + 7), "opt/state": os.urandom(3 * CH)}
    store = _stored(tmp_path, new)
    old = dict(new)
    old["w.bin"] = new["w.bin"][:CH] + os.urandom(CH) + new["w.bin"][2 * CH:8 * CH]  # older and shorter
    for rel, data in old.items():
        _write(tmp_path / "B" / "checkpoints" / "9" / rel, data)
    b = StagingAgent(tmp_path / "B")
    sent, kept, moved = asyncio.run(restore_to(b, ck.LocalFiles(), "9.a0.r0", store, "B", {}))
    assert sent == ["opt/state", "w.bin"] and kept == []
    assert moved == CH + (2 * CH + 7)  # chunk 1, and chunks 8-10 that B lacks; opt/state: nothing
    for rel, data in new.items():
        assert (tmp_path / "B" / "checkpoints" / "9" / rel).read_bytes() == data
    again = asyncio.run(restore_to(b, ck.LocalFiles(), "9.a0.r0", store, "B", {}))
    # now held exactly as the store last saw it there: nothing moves
    assert (again[0], sorted(again[1]), again[2]) == ([], ["opt/state", "w.bin"], 0)


def test_a_copy_changed_after_hashing_gets_the_whole_file_not_a_wrong_patch(tmp_path: Path) -> None:
    new = {"w.bin": os.urandom(4 * CH)}
    store = _stored(tmp_path, new)
    path = tmp_path / "B" / "checkpoints" / "9" / "w.bin"
    _write(path, new["w.bin"][:3 * CH] + os.urandom(CH))

    def scribble() -> None:  # the job's user writes chunk 0 between hashing and the push
        with open(path, "r+b") as f:
            f.write(b"\0" * 100)

    b = StagingAgent(tmp_path / "B", after_hashing=scribble)
    sent, _kept, moved = asyncio.run(restore_to(b, ck.LocalFiles(), "9.a0.r0", store, "B", {}))
    assert sent == ["w.bin"] and moved == CH + 4 * CH  # the patch refused, then the whole file
    assert path.read_bytes() == new["w.bin"]


def test_stage_push_refuses_a_patch_that_does_not_add_up() -> None:
    from hybridctl_agent import ops
    from hybridctl_agent.protocol import AgentError

    h = "a" * 64
    good = {"chunk": CH, "files": {"m": {"size": 2 * CH + 1, "sent": [2], "hashes": [h]}}}
    assert ops._patch({"patch": good}, {"m": 1}) == good
    for files, patch in (({"m": 2}, good), ({}, good),
                         ({"m": 1}, {"chunk": 3, "files": good["files"]}),
                         ({"m": 1}, {"chunk": CH, "files": {"m": {"size": 2 * CH + 1, "sent": [3], "hashes": [h]}}}),
                         ({"m": 1}, {"chunk": CH, "files": {"m": {"size": 2 * CH + 1, "sent": [2], "hashes": []}}}),
                         ({"m": 1}, {"chunk": CH, "files": {"m": {"size": -1, "sent": [], "hashes": []}}})):
        with pytest.raises(AgentError):
            ops._patch({"patch": patch}, files)


def test_a_pushed_copy_is_not_read_again_to_be_hashed(tmp_path: Path) -> None:
    """The controller's hashes of what it pushed are kept by the agent: the next restore onto the
    node finds its copy hashed without reading it (the cache is used only while the file's size,
    mtime, inode and ctime are what they were after the push)."""
    new = {"w.bin": os.urandom(6 * CH)}
    store = _stored(tmp_path, new)
    (tmp_path / "B").mkdir()
    b = StagingAgent(tmp_path / "B")
    asyncio.run(restore_to(b, ck.LocalFiles(), "9.a0.r0", store, "B", {}))
    where = str(tmp_path / "B" / "checkpoints") + "/9"
    cached = b.staging.hashes[where]["w.bin"]
    assert cached[4] == ck._hashes(ck._manifest(store)["w.bin"])
    st = (tmp_path / "B" / "checkpoints" / "9" / "w.bin").stat()
    assert cached[:4] == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
