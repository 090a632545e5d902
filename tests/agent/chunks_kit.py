"""Shared by the chunked-checkpoint tests (test_chunks.py, test_checkpoint_overlap.py): a file
written as a checkpoint writer would, and the agent's side of the transfer ops run in process."""

from __future__ import annotations

import os
from pathlib import Path


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # as torch.save + rename would: a new inode


class StagingAgent:
    """The agent's side of the transfer ops, as ops.py calls them: a real Staging (its stage.py
    processes, its hash cache) in `state`, running as the current user."""

    def __init__(self, state: Path, after_hashing=None) -> None:
        from hybridctl_agent.staging import Staging
        from hybridctl_agent import ops

        self.staging = Staging(str(state), None)
        self.ops = ops
        self.after_hashing = after_hashing
        self.calls: list[dict] = []

    async def call(self, op: str, timeout: float = 0, **req):
        self.calls.append(dict(req, op=op))
        if op == "stage_pull":
            chunks = self.ops._chunks(req)
            res = await self.staging.pull(req["kind"], req["key"], req.get("have") or {}, req.get("copy", True),
                                          None, chunks)
            if chunks is not None and not req.get("copy", True) and self.after_hashing:
                self.after_hashing()
            return res
        if op == "stage_open":
            token, path = self.staging.open()
            return {"token": token, "path": str(path)}
        if op == "stage_done":
            self.staging.close(req["token"])
            return {}
        if op == "stage_push":
            who = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
            return await self.staging.push(req["kind"], req["key"], who, req["token"], req["files"],
                                           self.ops._patch(req, req["files"]), self.ops._chunks(req))
        raise AssertionError(op)
