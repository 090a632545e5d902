"""The autoscaler's give-back and evict in-process: a fake provider, fake agents on the cloud
node's session, a real store. Job state changes go through the lifecycle, sessions through the
fleet (`Fleet.start_session`, `stop_session`)."""

from __future__ import annotations

import json
import threading
from typing import Callable

import pytest

from hybridctl.cloud.base import CloudNodeState, Instance, InstanceState, LaunchSpec
from hybridctl.control.autoscaler import Autoscaler, CloudSession
from hybridctl.control.fleet import NodeSession
from hybridctl.core.model import JobStatus, NodeState
from tests.unit.control.autoscaler_kit import IID, NODE, Cloud, cloud, on_cloud_node  # noqa: F401 - the fixture
from tests.unit.control.fakes import OFFER, FakeAgent, FakeProvider
from tests.unit.control.parts import Parts, stop_sessions
from tests.waiting import wait_for_async

S = JobStatus


async def test_start_session_replaces_a_plain_session_and_keeps_a_cloud_one(cloud: Cloud) -> None:
    parts, scaler, _ = cloud
    try:
        plain = parts.fleet.start_session(NODE)
        assert type(plain) is NodeSession
        scaler.start_session(NODE)
        first = parts.fleet.sessions[NODE]
        assert isinstance(first, CloudSession) and plain.task is not None and plain.task.cancelling()
        scaler.start_session(NODE)
        assert parts.fleet.sessions[NODE] is first
    finally:
        await stop_sessions(parts.fleet)


async def test_give_back_terminates_settles_and_forgets_the_node(cloud: Cloud) -> None:
    parts, scaler, provider = cloud
    try:
        scaler.start_session(NODE)
        await wait_for_async(lambda: parts.store.node(NODE).link_state is NodeState.UP, what="the cloud node's hello")
        parts.clock.t += 3600
        await scaler.give_back(IID, NODE, "idle for 600 s")
    finally:
        await stop_sessions(parts.fleet)
    assert provider.terminated == [IID]
    (row,) = [r for r in parts.store.cloud_instances(live=False) if r["instance_id"] == IID]
    assert row["state"] is CloudNodeState.TERMINATED and row["reason"] == "idle for 600 s"
    assert row["spent_usd"] == pytest.approx(OFFER.price_hourly)  # an hour, billed at the end
    assert NODE not in {n.name for n in parts.store.nodes()} and NODE not in parts.fleet.sessions
    assert parts.changes


async def test_evict_without_notice_requeues_at_once_keeping_the_logs(cloud: Cloud) -> None:
    parts, scaler, _ = cloud
    try:
        job, key = await on_cloud_node(parts, scaler)
        await scaler.evict(NODE, "budget reached", S.PREEMPTED)
        assert parts.state(job) is S.PENDING
        assert parts.store.retry_usage(job, 0).restarts == 0  # a recovery, not the job's fault
        agent = parts.agents[NODE]
        assert [c["key"] for c in agent.ops("logs")][:1] == [key]
        assert agent.ops("cancel") == [{"key": key, "grace": 7.0}]
        assert parts.lifecycle.log_path(key, "stdout").read_text() == f"log of {key}\n"
    finally:
        await stop_sessions(parts.fleet)


async def test_evict_with_notice_preempts_then_requeues_once_the_node_confirms(cloud: Cloud) -> None:
    parts, scaler, _ = cloud
    try:
        job, key = await on_cloud_node(parts, scaler)
        await scaler.evict(NODE, "spot preemption notice", S.PREEMPTED, notice=True)
        assert parts.state(job) is S.PREEMPTED  # keeps its GPUs while the node stops it (grace)
        assert parts.agents[NODE].ops("cancel") == [{"key": key, "grace": 7.0}]
        parts.fleet.kick(NODE)
        await wait_for_async(lambda: parts.state(job) is S.PENDING, what="the release after the node confirmed the stop")
        assert parts.store.task_nodes(job, 0) == [] and parts.agents[NODE].ops("forget") == [{"key": key}]
    finally:
        await stop_sessions(parts.fleet)


@pytest.mark.parametrize("why, cause", [
    ("preempted", "preemption"),
    # What EC2's StateReason says of a spot interruption found after the fact (no notice seen).
    ("Server.SpotInstanceTermination: Spot instance termination", "preemption"),
    ("Client.UserInitiatedShutdown: User initiated shutdown", "node loss"),
])
async def test_a_node_gone_under_us_loses_its_jobs_and_is_given_back(cloud: Cloud, why: str, cause: str) -> None:
    """Its jobs are requeued as preempted where the provider says the spot market took it, else as
    lost with their node; a reclaim enters the pool's record (`cloud status`)."""
    parts, scaler, provider = cloud
    try:
        job, key = await on_cloud_node(parts, scaler)
        provider.instances[IID] = Instance(IID, "fake", NODE, InstanceState.TERMINATED, reason=why)
        await scaler.sync_instances(parts.clock())
    finally:
        await stop_sessions(parts.fleet)
    assert parts.state(job) is S.PENDING
    assert NODE not in {n.name for n in parts.store.nodes()} and provider.terminated == [IID]
    [(causes,)] = parts.store.conn.execute("SELECT recovery_causes FROM tasks WHERE job_id=?", (job,))
    assert json.loads(causes) == {cause: 1}
    [(_hours, reclaims)] = parts.store.cloud_spot_record(parts.clock() - 3600, parts.clock()).values()
    assert reclaims == (cause == "preemption")


@pytest.mark.parametrize("nodes", [1, 3])
async def test_a_pool_that_refuses_a_gang_rests_as_many_times_longer(cloud: Cloud, nodes: int) -> None:
    """A capacity refusal backs the pool off `burst.backoff` seconds times the gang's node count
    (the launches of one `group`), so a multi-node job walks on through its spot pools to
    on-demand rather than finding the first pool live again (tests/unit/test_simulate.py has the
    walk). Through the autoscaler's own pass: the policy rents, the provider refuses."""
    from hybridctl.cloud.base import CapacityError

    parts, scaler, provider = cloud
    asked: list[str] = []

    def refuse(spec: LaunchSpec) -> Instance:
        asked.append(spec.name)
        raise CapacityError("InsufficientInstanceCapacity: no room for that many")

    provider.launch = refuse  # type: ignore[method-assign]
    now = parts.clock()
    await scaler.refresh_offers(now)
    parts.ctl.cloud = scaler  # submit sees the offers (the daemon wires it so)
    parts.submit(num_nodes=nodes, placement="cloud", resources={"accelerators": "A100:2", "use_spot": True})
    await scaler.tick()
    await wait_for_async(lambda: len(asked) >= nodes and not scaler._tasks, what="the launches refused")
    (until, why, closed_to), = parts.store.cloud_backoffs(now).values()
    assert until == pytest.approx(now + scaler.cfg.burst.backoff * nodes, abs=5) and "no room" in why
    assert closed_to == nodes


async def test_a_pool_that_refused_a_gang_still_rents_one_node(cloud: Cloud) -> None:
    """A pool that refused 3 nodes at once is closed to 3 nodes or more, not to one: a 1-node job
    rents there on the next pass, while the gang waits (there is no other pool)."""
    from hybridctl.cloud.base import CapacityError

    parts, scaler, provider = cloud
    plain = provider.launch
    refused: list[str] = []

    def refuse_gangs(spec: LaunchSpec) -> Instance:
        if gangs_only:
            refused.append(spec.name)
            raise CapacityError("InsufficientInstanceCapacity: no room for 3")
        return plain(spec)

    gangs_only = True
    provider.launch = refuse_gangs  # type: ignore[method-assign]
    now = parts.clock()
    await scaler.refresh_offers(now)
    parts.ctl.cloud = scaler
    gang = parts.submit(num_nodes=3, placement="cloud", resources={"accelerators": "A100:2", "use_spot": True})
    await scaler.tick()
    await wait_for_async(lambda: len(refused) == 3 and not scaler._tasks, what="the gang refused")
    gangs_only = False
    one = parts.submit(placement="cloud", resources={"accelerators": "A100:2", "use_spot": True})
    decision = await scaler.tick()
    assert [r.tasks for r in decision.launches] == [((one, 0),)], decision  # the gang waits: no other pool
    assert any(b.job_id == gang for b in decision.blocked)
    from hybridctl.cli.cloud import status_text
    from tests.unit.control.parts import ALICE

    shown = status_text(parts.ctl.op_cloud_status(ALICE))
    assert f"{OFFER.pool} (for 3 nodes or more) for " in shown and "no room for 3" in shown
    assert decision.launches[0].offer.pool == OFFER.pool


def answer_launches(provider: FakeProvider, answer: Callable[[int, LaunchSpec], Instance]) -> list[str]:
    """`provider.launch` answers its n-th call (from 1) with `answer(n, spec)`; the names asked, in order."""
    lock = threading.Lock()  # launches run in threads
    calls: list[str] = []

    def launch(spec: LaunchSpec) -> Instance:
        with lock:
            calls.append(spec.name)
            return answer(len(calls), spec)

    provider.launch = launch  # type: ignore[method-assign]
    return calls


def up_with_an_agent(parts: Parts, inst: Instance) -> Instance:
    """`inst` running, reachable, its host key known and an agent already listening."""
    parts.agents[inst.name] = parts.connect.agents[inst.name] = FakeAgent(inst.name)
    return Instance(inst.id, "fake", inst.name, InstanceState.RUNNING, inst.tags, host="127.0.0.1",
                    host_key="ssh-ed25519 AAAAtest", agent_socket="/run/agent.sock")


async def submit_a_gang(parts: Parts, scaler: Autoscaler) -> int:
    """A 3-node cloud job, submitted once the autoscaler knows the offers (submit checks them)."""
    await scaler.refresh_offers(parts.clock())
    parts.ctl.cloud = scaler
    return parts.submit(num_nodes=3, placement="cloud", resources={"accelerators": "A100:2", "use_spot": True})


async def test_a_gang_whose_last_node_is_refused_gives_the_others_back_at_once(cloud: Cloud) -> None:
    """Providers rent one node per call: the 3rd node of a 3-node job refused after 2 were
    launched. Those 2 go back at once (terminated, FAILED with the reason), not after sitting idle
    for `burst.idle_timeout` while the job rents 3 nodes elsewhere, and the pool rests 3 times."""
    from hybridctl.cloud.base import CapacityError

    parts, scaler, provider = cloud
    plain = provider.launch

    def third_refused(n: int, spec: LaunchSpec) -> Instance:
        if n == 3:
            raise CapacityError("InsufficientInstanceCapacity: 2 of 3 fitted")
        return plain(spec)

    calls = answer_launches(provider, third_refused)
    now = parts.clock()
    await submit_a_gang(parts, scaler)
    await scaler.tick()
    await wait_for_async(lambda: len(calls) == 3 and not scaler._tasks, what="the gang's launches settled")
    launched = [i.id for i in provider.instances.values() if i.name in calls]
    assert len(launched) == 2 and sorted(provider.terminated) == sorted(launched)
    rows = {r["node"]: r for r in parts.store.cloud_instances(live=False) if r["node"] in calls}
    assert all(r["state"] is CloudNodeState.FAILED for r in rows.values()), rows
    assert sum("2 of 3 fitted" in r["reason"] and "3-node gang" in r["reason"] for r in rows.values()) == 2
    (until, _, closed_to), = parts.store.cloud_backoffs(now).values()
    assert until == pytest.approx(now + scaler.cfg.burst.backoff * 3, abs=5) and closed_to == 3
    assert scaler.wake.is_set()  # the next pass rents the job elsewhere without waiting a poll


@pytest.mark.parametrize("late", [False, True], ids=["before-the-others-joined", "after-the-others-joined"])
async def test_a_gang_whose_node_fails_its_bootstrap_gives_the_joined_ones_back_at_once(cloud: Cloud,
                                                                                       late: bool) -> None:
    """All 3 nodes of a 3-node job launched; 2 joined the fleet, the 3rd ended before it could be
    reached (before or after the others joined). The 2 joined ones are of no use to the job alone
    (the next pass rents it 3 nodes, not 1), so they go back at once, not after idling for
    `burst.idle_timeout`."""
    parts, scaler, provider = cloud
    plain = provider.launch

    def third_lost(n: int, spec: LaunchSpec) -> Instance:
        inst = plain(spec)
        if n == 3:  # launched, then gone before it could be reached
            if not late:
                provider.instances[inst.id] = lost(inst)
        else:
            provider.instances[inst.id] = up_with_an_agent(parts, inst)
        return provider.instances[inst.id]

    def lost(inst: Instance) -> Instance:
        return Instance(inst.id, "fake", inst.name, InstanceState.TERMINATED, inst.tags, reason="no capacity after all")

    calls = answer_launches(provider, third_lost)
    try:
        await submit_a_gang(parts, scaler)
        await scaler.tick()
        if late:
            await wait_for_async(lambda: len(calls) == 3 and sum(r["state"] is CloudNodeState.UP for r in
                                                                 parts.store.cloud_instances() if r["node"] in calls) == 2,
                                 what="two of the gang joined")
            third = next(i for i in provider.instances.values() if i.name == calls[2])
            provider.instances[third.id] = lost(third)
        await wait_for_async(lambda: len(calls) == 3 and not scaler._tasks, what="the gang's launches settled")
    finally:
        await stop_sessions(parts.fleet)
    rows = {r["node"]: r for r in parts.store.cloud_instances(live=False) if r["node"] in calls}
    assert all(r["state"] is CloudNodeState.FAILED for r in rows.values()), rows
    assert sorted(provider.terminated) == sorted(i.id for i in provider.instances.values() if i.name in calls)
    joined = [rows[n] for n in calls[:2]]
    assert all(r["ready_at"] is not None for r in joined), joined  # they did join the fleet first
    assert all("3-node gang" in r["reason"] and "ended before it could be reached" in r["reason"] for r in joined), joined
    assert not {n.name for n in parts.store.nodes()} & set(calls)


@pytest.mark.parametrize("third", ["launching", "refused", "lost"])
async def test_a_gang_interrupted_by_a_restart_still_stands_or_falls_together(cloud: Cloud, third: str) -> None:
    """The controller restarted while a 3-node job's nodes were being rented: 2 launched and
    bootstrapping, the 3rd still launching (its outcome unknown: FAILED), already refused, or
    launched and then lost. The 2 are of no use alone, so they go back at once; before, `adopt`
    resumed each as a plain launch and they idled until `burst.idle_timeout`."""
    parts, scaler, provider = cloud
    now = parts.clock()
    job = await submit_a_gang(parts, scaler)
    names = ["cloud-g1", "cloud-g2", "cloud-g3"]
    for i, name in enumerate(names):
        parts.store.cloud_add_instance(f"launch:{name}", "fake", name, OFFER.to_dict(), [(job, 0)], now)
        if third != "lost" and i == 2:
            if third == "refused":
                parts.store.cloud_update_instance(f"launch:{name}", now, state=CloudNodeState.FAILED, ended_at=now,
                                                  reason="InsufficientInstanceCapacity")
            continue
        iid = f"i-g{i + 1}"
        parts.store.cloud_update_instance(f"launch:{name}", now, new_id=iid, state=CloudNodeState.BOOTSTRAPPING)
        if i < 2:
            provider.instances[iid] = up_with_an_agent(parts, Instance(iid, "fake", name, InstanceState.PENDING))
        else:
            provider.instances[iid] = Instance(iid, "fake", name, InstanceState.TERMINATED, {}, reason="reclaimed")
    try:
        scaler.adopt()
        await wait_for_async(lambda: not scaler._tasks, what="the adopted launches settled")
    finally:
        await stop_sessions(parts.fleet)
    rows = {r["node"]: r for r in parts.store.cloud_instances(live=False) if r["node"] in names}
    assert [rows[n]["state"] for n in names] == [CloudNodeState.FAILED] * 3, rows
    assert sorted(provider.terminated)[:2] == ["i-g1", "i-g2"]
    said = {"launching": "was still being launched when the controller restarted",
            "refused": "did not come up: InsufficientInstanceCapacity", "lost": "failed its bootstrap: instance i-g3 ended"}
    assert all(f"3-node gang {said[third]}" in rows[n]["reason"] for n in names[:2]), [rows[n]["reason"] for n in names]
    assert not {n.name for n in parts.store.nodes()} & set(names)


async def test_a_multi_node_cloud_job_is_taken_when_offers_hold_its_nodes(cloud: Cloud) -> None:
    """Submit checks a job against the nodes that exist, and with bursting on, against the offers
    too: one cloud node up used to refuse a 3-node cloud job ("only 1 node can ever hold")."""
    from hybridctl.core.errors import Unschedulable

    parts, scaler, _ = cloud
    with pytest.raises(Unschedulable, match="only 1 node can ever hold"):  # without the autoscaler's view
        parts.submit(num_nodes=3, placement="cloud")
    await scaler.refresh_offers(parts.clock())
    parts.ctl.cloud = scaler
    assert parts.submit(num_nodes=3, placement="cloud") > 0
    with pytest.raises(Unschedulable, match="4"):  # no offer's node holds 4 A100s
        parts.submit(num_nodes=3, placement="cloud", resources={"accelerators": "A100:4"})
