"""The autoscaler's cloud node in-process, shared by test_autoscaler.py and
test_checkpoint_release.py: a fake provider, a fake agent on the cloud node's session, a real store
(the `cloud` fixture), and a job running on that node (`on_cloud_node`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import pytest

from hybridctl.cloud.base import TAG_CLUSTER, CloudNodeState, Instance, InstanceState, Notice
from hybridctl.config import CloudConfig, FleetConfig, Settings
from hybridctl.control.autoscaler import Autoscaler
from hybridctl.core.model import JobStatus, NodeState
from hybridctl.core.reconcile import job_key
from hybridctl.store.sqlite import NodeRecord
from tests.unit.control.fakes import OFFER, FakeAgent, FakeProvider
from tests.unit.control.parts import Parts, build
from tests.waiting import wait_for_async

NODE = "cloud-a"
IID = "i-a"
Cloud = tuple[Parts, Autoscaler, FakeProvider]


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    key = tmp_path / "cloud_key"
    key.write_text("not a real key\n")
    Path(f"{key}.pub").write_text("ssh-ed25519 AAAA test\n")
    settings = Settings(home=str(tmp_path), fleet=FleetConfig(poll_interval=0.02, checkpoint_sync_interval=3600),
                        cloud=CloudConfig(enabled=True, identity=str(key), preemption_grace=7.0))
    parts = build(tmp_path, names=(), settings=settings)
    provider = FakeProvider()
    scaler = Autoscaler(parts.store, settings, parts.lifecycle, parts.fleet, parts.scheduler,
                        providers={"fake": provider}, clock=parts.clock)
    now = parts.clock()
    gpus = tuple({"index": i, "model": "A100"} for i in range(OFFER.gpus))
    parts.store.add_node(NodeRecord(NODE, "local", 22, None, str(key), None, "cloud", NodeState.UNREACHABLE,
                                    "bootstrapping", False, "", gpus, OFFER.cpus, OFFER.memory_mb, False), now)
    parts.store.set_node_cloud(NODE, "fake", IID, OFFER.price_hourly, now, now)
    parts.store.cloud_add_instance(f"launch:{NODE}", "fake", NODE, OFFER.to_dict(), [], now)
    parts.store.cloud_update_instance(f"launch:{NODE}", now, new_id=IID, state=CloudNodeState.UP, ready_at=now)
    provider.instances[IID] = Instance(IID, "fake", NODE, InstanceState.RUNNING, {TAG_CLUSTER: settings.cloud.cluster})
    parts.agents[NODE] = parts.connect.agents[NODE] = FakeAgent(NODE)
    yield parts, scaler, provider
    parts.store.close()


async def on_cloud_node(parts: Parts, scaler: Autoscaler) -> tuple[int, str]:
    """The cloud node's session running, and a job RUNNING on it: (job, its rank's key)."""
    scaler.start_session(NODE)
    await wait_for_async(lambda: parts.store.node(NODE).link_state is NodeState.UP, what="the cloud node's hello")
    job, node = parts.place(resources={"accelerators": "A100:2", "use_spot": True})  # the node is a spot one
    assert node == NODE
    parts.fleet.kick(NODE)
    await wait_for_async(lambda: parts.state(job) is JobStatus.RUNNING, what="the launch on the cloud node")
    return job, job_key(job, 0, 0, 0)


async def reclaimed_after(cloud: Cloud, seconds: float) -> int:
    """A 2-GPU spot job without a time limit RUNNING on the cloud node, reclaimed `seconds` into
    its run (a spot notice: PREEMPTED, SIGTERM, requeued once its processes are gone), and the
    node given back."""
    parts, scaler, provider = cloud
    job, _key = await on_cloud_node(parts, scaler)
    parts.clock.t += seconds
    row: dict[str, Any] = {"node": NODE, "instance_id": IID, "provider": "fake"}
    reclaim = asyncio.create_task(scaler.preempt(row, Notice(IID, parts.clock() + 120)))
    await wait_for_async(lambda: parts.agents[NODE].ops("cancel"), what="the cancel sent to the cloud node")
    parts.fleet.kick(NODE)
    await asyncio.wait_for(reclaim, 30)
    assert parts.state(job) is JobStatus.PENDING and IID in provider.terminated
    return job
