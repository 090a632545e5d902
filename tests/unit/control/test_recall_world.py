"""What the autoscaler tells the burst policy about tasks running on cloud nodes (`World.cloud_tasks`,
`last_checkpoint`, their `checkpoint_every`), and how it carries out a recall: as a reclaim notice for
that task alone, requeued as a recovery (never `max_restarts`). In-process: the autoscaler's fake
provider and agent, a real store and scheduler."""

from __future__ import annotations

import json
from dataclasses import replace

from hybridctl.config import NodeConfig
from hybridctl.control.autoscaler import Autoscaler
from hybridctl.control.checkpoints import MANIFEST
from hybridctl.control.nodes import config_record
from hybridctl.core import burst
from hybridctl.core.model import JobStatus as S
from hybridctl.core.model import NodeState, task_label
from hybridctl.core.reconcile import job_key
from tests.unit.control.autoscaler_kit import IID, NODE, Cloud, cloud  # noqa: F401 - the fixture
from tests.unit.control.parts import Parts, stop_sessions
from tests.waiting import wait_for_async

HOUR = 3600.0


async def running_on_cloud(parts: Parts, scaler: Autoscaler, gpus: int = 2, **spec: object) -> int:
    """The cloud node's session up and a job of `gpus` A100s with `spec` RUNNING on it."""
    if NODE not in parts.fleet.sessions:
        scaler.start_session(NODE)
        await wait_for_async(lambda: parts.store.node(NODE).link_state is NodeState.UP, what="the cloud node's hello")
    job, node = parts.place(resources={"accelerators": f"A100:{gpus}", "use_spot": True}, **spec)
    assert node == NODE
    parts.fleet.kick(NODE)
    await wait_for_async(lambda: parts.state(job) is S.RUNNING, what="the launch on the cloud node")
    return job


def write_manifest(parts: Parts, job: int, mtime: float) -> None:
    d = parts.lifecycle.checkpoint_path(task_label(job, 0))
    d.mkdir(parents=True, exist_ok=True)
    (d / MANIFEST).write_text(json.dumps({"ckpt.pt": [10, int(mtime * 1e9)]}))


async def test_a_running_cloud_task_is_offered_with_what_is_left_of_its_limit_and_its_checkpoints(
        cloud: Cloud) -> None:  # noqa: F811
    parts, scaler, _ = cloud
    try:
        job = await running_on_cloud(parts, scaler, time_limit="3h", checkpoint_dir="/tmp/ck")
        parts.clock.t += 1800  # half an hour into its run
        assert scaler.world(parts.clock()).last_checkpoint == {}  # no checkpoint synced yet
        write_manifest(parts, job, parts.clock() - 120)
        w = scaler.world(parts.clock())
        [t] = w.cloud_tasks
        assert (t.job_id, t.task, t.placement, t.resources.gpus, t.user) == (job, 0, "any", 2, "alice")
        assert t.runtime_s == 3 * HOUR - 1800  # what is left of its time limit
        assert w.last_checkpoint == {(job, 0): parts.clock() - 120}
        assert w.checkpoint_every == {(job, 0): 3600}  # fleet.checkpoint_sync_interval: no interval seen yet
        assert not w.pending  # a running task is not pending
        parts.clock.t += 3 * HOUR  # overdue: nothing left
        assert [t.runtime_s for t in scaler.world(parts.clock()).cloud_tasks] == [0.0]
    finally:
        await stop_sessions(parts.fleet)


async def test_no_recall_candidates_without_an_estimate_when_off_or_for_placement_cloud(
        cloud: Cloud) -> None:  # noqa: F811
    parts, scaler, _ = cloud
    try:
        pinned = await running_on_cloud(parts, scaler, 1, time_limit="3h", placement="cloud")
        # Listed (committed money counts it), but as placement 'cloud', which the policy never recalls.
        assert [(t.job_id, t.placement) for t in scaler.world(parts.clock()).cloud_tasks] == [(pinned, "cloud")]
        open_ended = await running_on_cloud(parts, scaler, 1)  # no time limit, no history
        [t] = [t for t in scaler.world(parts.clock()).cloud_tasks if t.job_id != pinned]
        assert (t.job_id, t.runtime_s) == (open_ended, None)
        scaler.limits = replace(scaler.limits, recall=False, commit_expected=False)  # no one reads them
        assert scaler.world(parts.clock()).cloud_tasks == []
    finally:
        await stop_sessions(parts.fleet)


async def test_a_task_being_stopped_or_near_its_recovery_cap_is_not_offered(cloud: Cloud) -> None:  # noqa: F811
    parts, scaler, _ = cloud
    try:
        job = await running_on_cloud(parts, scaler, time_limit="3h")
        cap = parts.settings.recovery.max_recoveries
        with parts.store.tx() as c:  # it has been recovered (cap/2 - 1) times: one recall more reaches half
            c.execute("UPDATE tasks SET recoveries=? WHERE job_id=?", (cap // 2 - 1, job))
        w = scaler.world(parts.clock())
        assert [t.job_id for t in w.cloud_tasks] == [job] and w.no_recall == frozenset()
        with parts.store.tx() as c:
            c.execute("UPDATE tasks SET recoveries=? WHERE job_id=?", (cap // 2, job))
        assert scaler.world(parts.clock()).no_recall == {(job, 0)}
        with parts.store.tx() as c:
            c.execute("UPDATE tasks SET recoveries=0 WHERE job_id=?", (job,))
        scaler.recalled.add((job, 0))  # recalled once already: never again
        assert scaler.world(parts.clock()).no_recall == {(job, 0)}
        scaler.recalled.clear()
        with parts.store.tx() as c:
            c.execute("UPDATE tasks SET recoveries=0 WHERE job_id=?", (job,))
        parts.lifecycle.preempt(job, 0, "spot preemption notice")  # PREEMPTED, still holding its GPUs
        assert parts.state(job) is S.PREEMPTED and parts.store.task_nodes(job, 0) == [NODE]
        assert scaler.world(parts.clock()).cloud_tasks == []
    finally:
        await stop_sessions(parts.fleet)


async def test_a_task_on_an_onprem_node_is_not_a_cloud_task(cloud: Cloud) -> None:  # noqa: F811
    parts, scaler, _ = cloud
    parts.store.add_node(config_record(NodeConfig(name="p1", host="local", gpus="2xA100", cpus=8, memory="64G")),
                         parts.clock())
    parts.store.set_link("p1", NodeState.UP, "", parts.clock(), seen=True)
    job, node = parts.place(resources={"accelerators": "A100:2"}, time_limit="3h")
    assert node == "p1"  # placement 'any': on-prem first
    parts.lifecycle.mark_running(job, 0)
    assert parts.state(job) is S.RUNNING
    assert scaler.world(parts.clock()).cloud_tasks == []


async def test_a_recall_preempts_with_its_reason_stops_with_the_grace_and_requeues_as_a_recovery(
        cloud: Cloud) -> None:  # noqa: F811
    parts, scaler, _ = cloud
    try:
        job = await running_on_cloud(parts, scaler, time_limit="3h", checkpoint_dir="/tmp/ck")
        key = job_key(job, 0, 0, 0)
        why = "recalled: the on-prem fleet can take it now; its cloud node ($3.00/h) go back"
        scaler.recall(burst.Recall(job, 0, (NODE,), why))
        assert parts.state(job) is S.PREEMPTED  # keeps its GPUs while the node stops it (the grace)
        await wait_for_async(lambda: parts.agents[NODE].ops("cancel"), what="the cancel sent to the cloud node")
        assert parts.agents[NODE].ops("cancel") == [{"key": key, "grace": 7.0}]  # cloud.preemption_grace
        parts.fleet.kick(NODE)
        await wait_for_async(lambda: parts.state(job) is S.PENDING, what="the requeue once the node confirmed the stop")
        events = [e for e in parts.store.events(100) if e["job_id"] == job]
        assert any(e["to"] == "PREEMPTED" and e["reason"] == why for e in events), events
        u = parts.store.retry_usage(job, 0)
        assert (u.restarts, u.recoveries) == (0, 1)  # a recovery, never max_restarts
        scaler.recall(burst.Recall(job, 0, (NODE,), why))  # stale: it holds nothing there any more
        assert parts.state(job) is S.PENDING
    finally:
        await stop_sessions(parts.fleet)


async def test_an_idle_node_is_not_given_back_while_a_stopped_jobs_final_checkpoint_is_pulled_from_it(
        cloud: Cloud) -> None:  # noqa: F811
    """After a recall the task's rank is released before its final checkpoint pull ends; the idle
    path must not terminate the node under that pull."""
    parts, scaler, provider = cloud
    try:
        scaler.start_session(NODE)
        await wait_for_async(lambda: parts.store.node(NODE).link_state is NodeState.UP, what="the cloud node's hello")
        parts.fleet.final_syncs.begin("7.a0.r0", NODE)
        await scaler.scale_down(NODE, "idle for 10s")
        assert provider.terminated == [] and NODE in {n.name for n in parts.store.nodes()}
        parts.fleet.final_syncs.end("7.a0.r0")
        await scaler.scale_down(NODE, "idle for 10s")
        assert provider.terminated == [IID]
    finally:
        await stop_sessions(parts.fleet)


async def test_a_converge_that_reaches_the_node_before_the_preemptors_stop_keeps_its_grace(
        cloud: Cloud) -> None:  # noqa: F811
    """A task PREEMPTED on a cloud node (a spot notice, a recall) is stopped by the autoscaler with
    `cloud.preemption_grace`; the node's converge sees the same task no longer wanted and stops it
    too. Whichever reaches the node first sets the grace the job gets, so the converge's stop must
    not be the shorter one (it was `fleet.poll_interval` x 10: 0.2 s here, and the final
    checkpoint was cut short whenever the converge came first, as under load)."""
    parts, scaler, _ = cloud
    try:
        job = await running_on_cloud(parts, scaler, time_limit="3h", checkpoint_dir="/tmp/ck")
        key = job_key(job, 0, 0, 0)
        parts.lifecycle.preempt(job, 0, "spot preemption notice")  # the autoscaler's stop not sent yet
        parts.fleet.kick(NODE)
        await wait_for_async(lambda: parts.agents[NODE].ops("cancel"), what="the converge's stop")
        assert parts.agents[NODE].ops("cancel")[0] == {"key": key, "grace": 7.0}
    finally:
        await stop_sessions(parts.fleet)


async def test_a_running_cloud_task_carries_its_deadline_so_a_recall_cannot_make_it_late(
        cloud: Cloud) -> None:  # noqa: F811
    parts, scaler, _ = cloud
    try:
        job = await running_on_cloud(parts, scaler, time_limit="3h", deadline="6h")
        w = scaler.world(parts.clock())
        assert [t.job_id for t in w.cloud_tasks] == [job]
        assert set(w.deadlines) == {(job, 0)} and w.deadlines[(job, 0)] > parts.clock()
    finally:
        await stop_sessions(parts.fleet)
