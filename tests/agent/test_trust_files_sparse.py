"""Sparse checkpoint files keep their exact size (issue 10): the agent's staging copy and the
controller's copy both skip holes and end at the listed length, a trailing hole included (a sparse
SFTP copy used to drop it, so the file came back short while the log said the full size synced)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from hybridctl.control.checkpoints import LocalFiles, TransferMismatch, pull
from hybridctl_agent import stage
from hybridctl_agent.fdio import copy_sparse

SIZE = 64 << 20


def sparse_file(path: Path) -> bytes:
    """64 MiB: data at 1 MiB and 40 MiB, holes elsewhere, ending in a hole. Returns its bytes."""
    with open(path, "wb") as f:
        f.truncate(SIZE)
        f.seek(1 << 20)
        f.write(b"a" * 5000)
        f.seek(40 << 20)
        f.write(b"b" * 3)
    return path.read_bytes()


def test_staging_and_the_controllers_copy_keep_a_sparse_file_whole(tmp_path: Path) -> None:
    job = tmp_path / "checkpoints" / "7"
    job.mkdir(parents=True)
    want = sparse_file(job / "ckpt.bin")
    staging = tmp_path / "staging"
    staging.mkdir()
    res = stage.pull({"parent": str(tmp_path / "checkpoints"), "name": "7", "staging": str(staging),
                      "have": {}, "copy": True, "max_bytes": None})
    assert res["staged"]["ckpt.bin"][0] == SIZE and res["files"] == res["staged"]
    staged = staging / "ckpt.bin"
    assert staged.stat().st_size == SIZE and staged.read_bytes() == want
    assert staged.stat().st_blocks * 512 < 1 << 20  # the holes stayed holes

    store = tmp_path / "store"
    copied = asyncio.run(pull(LocalFiles(), str(staging), res["files"], store, "n1", staged=res["staged"]))
    assert copied == SIZE
    assert (store / "ckpt.bin").stat().st_size == SIZE and (store / "ckpt.bin").read_bytes() == want
    assert (store / "ckpt.bin").stat().st_blocks * 512 < 1 << 20


def test_a_short_copy_is_caught_not_recorded_as_synced(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "ckpt.bin").write_bytes(b"x" * 10)
    store = tmp_path / "store"
    listed = {"ckpt.bin": [4096, 1]}  # the node says 4096 bytes; 10 are there
    try:
        asyncio.run(pull(LocalFiles(), str(staging), listed, store, "n1", staged=listed))
    except TransferMismatch as exc:
        assert "4096" in exc.message
    else:
        raise AssertionError("a file shorter than listed was accepted")
    assert not (store / "ckpt.bin").exists()


def test_copy_sparse_copies_data_between_holes_exactly(tmp_path: Path) -> None:
    """The one copy both sides use (the agent's staging, the controller's local-node store)."""
    src = tmp_path / "src"
    want = sparse_file(src)
    dst = tmp_path / "dst"
    a = os.open(src, os.O_RDONLY)
    b = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        copy_sparse(a, b, SIZE)
    finally:
        os.close(a)
        os.close(b)
    assert dst.read_bytes() == want
