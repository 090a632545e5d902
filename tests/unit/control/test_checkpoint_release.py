"""A preempted job's rank 0 is released before its final checkpoint pull, so the job is placed
while its checkpoint still arrives (the next node's restore overlaps the pull: control/checkpoints
`FinalSyncs`), and the reclaimed node is not given back while that pull runs. In-process: the
autoscaler's fake provider and agent, a real store; the final pull is a stand-in held until the
test lets it go (named so)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hybridctl.cloud.base import Notice
from hybridctl.control.fleet import NodeSession
from hybridctl.core.model import JobStatus
from tests.unit.control.autoscaler_kit import IID, NODE, Cloud, cloud, on_cloud_node  # noqa: F401 - the fixture
from tests.unit.control.parts import stop_sessions
from tests.waiting import wait_for_async


async def test_a_preempted_rank_0_is_released_before_its_final_pull_ends_and_the_node_waits_for_it(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    parts, scaler, provider = cloud
    go = asyncio.Event()
    began: list[tuple[str, JobStatus]] = []
    job = -1

    async def final_pull_held_on_its_link(self: NodeSession, key: str) -> None:
        began.append((key, parts.state(job)))
        await go.wait()

    monkeypatch.setattr(NodeSession, "sync_checkpoint", final_pull_held_on_its_link)
    try:
        job, key = await on_cloud_node(parts, scaler)
        parts.agents[NODE].jobs[key]["has_checkpoint"] = True
        row: dict[str, Any] = {"node": NODE, "instance_id": IID, "provider": "fake"}
        reclaim = asyncio.create_task(scaler.preempt(row, Notice(IID, parts.clock() + 3600)))
        parts.fleet.kick(NODE)
        await wait_for_async(lambda: began, what="the final checkpoint pull to begin")
        # released first: the job is back in the queue while its final checkpoint still arrives
        assert began == [(key, JobStatus.PENDING)]
        assert parts.fleet.final_syncs.on(NODE) and parts.fleet.final_syncs.pending("%d.a1.r0" % job) is not None
        await asyncio.sleep(0)  # (not a wait for time: one turn of the loop for the reclaim task)
        assert not reclaim.done() and IID not in provider.terminated
        go.set()
        await asyncio.wait_for(reclaim, 30)
        assert IID in provider.terminated and not parts.fleet.final_syncs.on(NODE)
        assert parts.fleet.final_syncs.log == [("begin", str(job)), ("end", str(job))]
        assert parts.agents[NODE].ops("forget") == [{"key": key}]
    finally:
        go.set()
        await stop_sessions(parts.fleet)
