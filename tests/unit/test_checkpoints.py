"""Checkpoint pull/push between node directories and the controller's store, on the real filesystem
(LocalFiles: the same calls the SFTP path makes). Listings are made the way the agent makes them."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from hybridctl.control.checkpoints import MANIFEST, LocalFiles, adopt, pull, push


def listing(root: Path) -> dict[str, list[int]]:
    """What the agent's `checkpoint_files` answers for `root`."""
    out: dict[str, list[int]] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(os.path.join(dirpath, name), root)] = [st.st_size, st.st_mtime_ns]
    return out


def write(path: Path, data: bytes, mtime_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_restart_on_the_node_that_wrote_the_checkpoint_sends_nothing(tmp_path: Path) -> None:
    files = LocalFiles()
    node_a, node_b, store = tmp_path / "a", tmp_path / "b", tmp_path / "store"
    write(node_a / "ckpt.bin", b"x" * 1000, 1_700_000_000_000_000_000)
    write(node_a / "sub" / "opt.bin", b"y" * 10, 1_700_000_000_000_000_000)
    assert run(pull(files, str(node_a), listing(node_a), store, "a")) == 1010
    assert run(pull(files, str(node_a), listing(node_a), store, "a")) == 0  # unchanged: nothing travels

    # The job fails and is restarted on node a, which still holds the files: none is sent.
    sent, kept = run(push(files, store, str(node_a), listing(node_a), "a"))
    assert (sent, sorted(kept)) == ([], ["ckpt.bin", "sub/opt.bin"])

    # On node b everything travels; recorded, so the next pull from b copies nothing back...
    sent, kept = run(push(files, store, str(node_b), listing(node_b), "b"))
    assert (sorted(sent), kept) == (["ckpt.bin", "sub/opt.bin"], [])
    assert (node_b / "ckpt.bin").read_bytes() == b"x" * 1000
    adopt(store, sent, listing(node_b), "b")
    assert run(pull(files, str(node_b), listing(node_b), store, "b")) == 0
    # ...and a second restart on b sends nothing either.
    assert run(push(files, store, str(node_b), listing(node_b), "b"))[0] == []


def test_a_file_that_changed_on_the_node_or_came_from_elsewhere_is_sent(tmp_path: Path) -> None:
    files = LocalFiles()
    node_a, node_b, store = tmp_path / "a", tmp_path / "b", tmp_path / "store"
    write(node_a / "ckpt.bin", b"step-10", 1_700_000_000_000_000_000)
    run(pull(files, str(node_a), listing(node_a), store, "a"))
    # The job moved to b and checkpointed there; the store now holds b's file.
    write(node_b / "ckpt.bin", b"step-20", 1_700_000_100_000_000_000)
    assert run(pull(files, str(node_b), listing(node_b), store, "b")) == 7
    # Back on a, whose copy is older: the store's must be sent, though a's file is unchanged.
    sent, kept = run(push(files, store, str(node_a), listing(node_a), "a"))
    assert (sent, kept) == (["ckpt.bin"], [])
    assert (node_a / "ckpt.bin").read_bytes() == b"step-20"
    # Same size and same second, other nanoseconds (rewritten on a after the sync): sent.
    adopt(store, sent, listing(node_a), "a")
    write(node_a / "ckpt.bin", b"step-2X", (node_a / "ckpt.bin").stat().st_mtime_ns + 1)
    assert run(push(files, store, str(node_a), listing(node_a), "a"))[0] == ["ckpt.bin"]
    assert (node_a / "ckpt.bin").read_bytes() == b"step-20"


def test_manifest_of_an_older_version_still_syncs(tmp_path: Path) -> None:
    """Entries written before the node was recorded ([size, mtime_ns]) compare on pull, never skip a push."""
    files = LocalFiles()
    node_a, store = tmp_path / "a", tmp_path / "store"
    write(node_a / "ckpt.bin", b"abc", 1_700_000_000_000_000_000)
    store.mkdir()
    (store / "ckpt.bin").write_bytes(b"abc")
    (store / MANIFEST).write_text('{"ckpt.bin": [3, 1700000000000000000]}')
    assert run(pull(files, str(node_a), listing(node_a), store, "a")) == 0
    assert run(push(files, store, str(node_a), listing(node_a), "a"))[0] == ["ckpt.bin"]


def test_the_jobs_own_tmp_and_part_files_travel_both_ways(tmp_path: Path) -> None:
    """Only the store's manifest and its own half-pulled `.NAME.part` files stay behind."""
    files = LocalFiles()
    node_a, node_b, store = tmp_path / "a", tmp_path / "b", tmp_path / "store"
    for name in ("model.tmp", "shard.part", "ckpt.bin"):
        write(node_a / name, name.encode(), 1_700_000_000_000_000_000)
    run(pull(files, str(node_a), listing(node_a), store, "a"))
    (store / ".ckpt.bin.part").write_bytes(b"torn")  # a pull cut short
    sent, _kept = run(push(files, store, str(node_b), listing(node_b), "b"))
    assert sorted(sent) == ["ckpt.bin", "model.tmp", "shard.part"]
    assert sorted(p.name for p in node_b.iterdir()) == ["ckpt.bin", "model.tmp", "shard.part"]
