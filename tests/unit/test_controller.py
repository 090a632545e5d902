"""The controller's handlers in-process: a real SQLite file, an injected clock, no socket."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import pytest

from hybridctl.config import NodeConfig, RecoveryConfig, SchedulerConfig, Settings
from hybridctl.control.nodes import config_record
from hybridctl.control.service import Controller
from hybridctl.core.errors import IllegalTransition, PermissionDenied, SpecError, Unschedulable
from hybridctl.core.model import JobStatus, NodeState
from hybridctl.store.sqlite import Store
from tests.unit.controller_kit import ALICE, BOB, ROOT, Clock, submit

@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ctl(tmp_path: Path, clock: Clock) -> Iterator[Controller]:
    settings = Settings(home=str(tmp_path), scheduler=SchedulerConfig(user_gpu_quota={"*": 6}))
    store = Store(tmp_path / "hybridctl.db")
    for n in (NodeConfig(name="n1", gpus="8xA100", cpus=32, memory="256G", simulated=True),):
        store.add_node(config_record(n), clock())
    yield Controller(store, settings, clock=clock)
    store.close()


def task(ctl: Controller, job: int, t: int = 0) -> dict:
    return ctl.op_show(ROOT, str(job))["tasks"][t]


def test_usage_is_gpus_times_hours_held(ctl: Controller, clock: Clock) -> None:
    j = submit(ctl, ALICE, resources={"accelerators": "A100:4"})
    ctl.schedule()
    clock.t += 1800
    ctl.op_cancel(ALICE, jobs=[str(j)])
    clock.t += 3600  # time after release does not count
    rows = ctl.op_usage(ROOT, by="user", since=86400)
    assert rows == [{"user": "alice", "gpu_hours": 2.0, "job_hours": 0.5}]
    assert ctl.op_usage(ROOT, by="group")[0]["group"] == "lab"


def test_user_quota_holds_and_reason_says_so(ctl: Controller) -> None:
    a = submit(ctl, ALICE, resources={"accelerators": 4})
    b = submit(ctl, ALICE, resources={"accelerators": 4})
    c = submit(ctl, BOB, resources={"accelerators": 2})
    ctl.schedule()
    assert task(ctl, a)["state"] == "STARTING"
    assert task(ctl, b)["state"] == "PENDING" and "quota" in task(ctl, b)["reason"]
    assert task(ctl, c)["state"] == "STARTING"


def test_fair_share_puts_the_lighter_user_first(ctl: Controller, clock: Clock) -> None:
    big = submit(ctl, ALICE, resources={"accelerators": 6})
    ctl.schedule()
    clock.t += 10 * 3600
    ctl.op_cancel(ALICE, jobs=[str(big)])
    ctl.scheduler._usage_cache = (0.0, {})
    a = submit(ctl, ALICE, resources={"accelerators": 6})
    b = submit(ctl, BOB, resources={"accelerators": 6})  # later, but bob has used nothing
    ctl.schedule()
    assert task(ctl, b)["state"] == "STARTING"
    assert task(ctl, a)["state"] == "PENDING"


def test_dependency_waits_then_cancels_when_parent_fails(ctl: Controller, clock: Clock) -> None:
    parent = submit(ctl, ALICE)
    child = submit(ctl, ALICE, depends_on=[parent])
    ctl.schedule()
    assert "dependency" in task(ctl, child)["reason"]
    ctl.store.transition(parent, 0, JobStatus.FAILED, reason="exit 1", actor_uid=None, now=clock(), exit_code=1)
    ctl.schedule()
    t = task(ctl, child)
    assert t["state"] == "CANCELLED"
    events = ctl.op_show(ROOT, str(child))["events"]
    assert events[-1]["reason"] == f"dependency {parent} did not succeed"


def test_priority_permissions(ctl: Controller) -> None:
    j = submit(ctl, ALICE)
    with pytest.raises(PermissionDenied, match="belongs to alice"):
        ctl.op_priority(BOB, str(j), 5)
    with pytest.raises(PermissionDenied, match="above 100"):
        ctl.op_priority(ALICE, str(j), 500)
    assert ctl.op_priority(ROOT, str(j), 500)["priority"] == 500
    with pytest.raises(SpecError, match="-1000 to 1000"):
        ctl.op_priority(ROOT, str(j), 5000)


def test_refused_when_it_can_never_fit(ctl: Controller) -> None:
    with pytest.raises(Unschedulable, match="n1"):
        submit(ctl, ALICE, resources={"accelerators": "A100:9"})
    with pytest.raises(Unschedulable):
        submit(ctl, ALICE, resources={"accelerators": "H100:1"})


def test_illegal_transition_is_refused_by_the_store(ctl: Controller, clock: Clock) -> None:
    j = submit(ctl, ALICE)
    ctl.op_cancel(ALICE, jobs=[str(j)])
    with pytest.raises(IllegalTransition, match="CANCELLED to RUNNING"):
        ctl.store.transition(j, 0, JobStatus.RUNNING, reason="x", actor_uid=None, now=clock())
    assert task(ctl, j)["state"] == "CANCELLED"


def test_requeue_bumps_attempt_and_frees_gpus(ctl: Controller, clock: Clock) -> None:
    j = submit(ctl, ALICE, resources={"accelerators": 6})
    ctl.schedule()
    ctl.store.transition(j, 0, JobStatus.NODE_LOST, reason="n1 silent", actor_uid=None, now=clock())
    assert ctl.store.open_allocations() == []
    ctl.store.transition(j, 0, JobStatus.PENDING, reason="requeued", actor_uid=None, now=clock())
    t = task(ctl, j)
    assert (t["state"], t["attempt"], t["nodes"]) == ("PENDING", 1, "")
    ctl.schedule()
    assert task(ctl, j)["state"] == "STARTING"


def test_failures_requeue_until_max_restarts_and_recover_codes_do_not_count(ctl: Controller, clock: Clock) -> None:
    j = submit(ctl, ALICE, resources={"accelerators": 1}, max_restarts=1, recover_on_exit_codes=[75])

    def run_and_exit(code: int) -> dict:
        ctl.schedule()
        ctl.store.transition(j, 0, JobStatus.RUNNING, reason="started", actor_uid=None, now=clock())
        ctl.lifecycle.finish(j, 0, code, f"exited with code {code}")
        return task(ctl, j)

    t = run_and_exit(75)  # in recover_on_exit_codes: requeued, no restart used
    assert (t["state"], t["attempt"]) == ("PENDING", 1) and "recover_on_exit_codes" in t["reason"]
    t = run_and_exit(75)
    assert (t["state"], t["attempt"]) == ("PENDING", 2)
    t = run_and_exit(1)  # a failure: uses the one restart
    assert (t["state"], t["attempt"], t["reason"]) == ("PENDING", 3, "exited with code 1; requeued (restart 1 of 1)")
    ctl.schedule()
    ctl.lifecycle.requeue_or_fail(j, 0, "node n1 lost", JobStatus.NODE_LOST)  # not the job's fault: no restart used
    t = task(ctl, j)
    assert (t["state"], t["attempt"], t["restarts"], t["recoveries"]) == ("PENDING", 4, 1, 3)
    assert t["recovery_causes"] == {"exit code 75": 2, "node loss": 1}
    t = run_and_exit(1)  # its own failure again: none left
    assert (t["state"], t["exit_code"]) == ("FAILED", 1)
    assert ctl.op_show(ROOT, str(j))["events"][-1]["reason"] == "exited with code 1; no restarts left (max_restarts 1)"
    assert ctl.store.open_allocations() == []


def test_preemption_and_node_loss_are_recovered_with_the_default_spec(ctl: Controller, clock: Clock) -> None:
    j = submit(ctl, ALICE, resources={"accelerators": 1})  # max_restarts 0
    for n in range(1, 5):
        ctl.schedule()
        assert task(ctl, j)["state"] == "STARTING"
        if n % 2:
            ctl.lifecycle.preempt(j, 0, "spot reclaim notice")  # PREEMPTED, then PENDING once its processes are gone
            assert task(ctl, j)["state"] == "PREEMPTED"
            ctl.lifecycle.requeue_or_fail(j, 0, "preempted")
        else:
            ctl.lifecycle.node_lost("n1", "silent for 300 s")
            ctl.lifecycle.set_link("n1", NodeState.UP, "back")
        t = task(ctl, j)
        assert (t["state"], t["attempt"], t["restarts"], t["recoveries"]) == ("PENDING", n, 0, n)
    assert t["recovery_causes"] == {"preemption": 2, "node loss": 2}
    assert "does not use max_restarts" in t["reason"]
    [row] = ctl.op_queue(ALICE)
    assert (row["recoveries"], row["restarts"], row["max_restarts"]) == (4, 0, 0)
    assert row["recovery_causes"] == {"preemption": 2, "node loss": 2}
    assert ctl.op_show(ALICE, str(j))["max_restarts"] == 0


def test_a_job_recovered_past_the_cap_fails_naming_the_cap_and_its_key(ctl: Controller, clock: Clock) -> None:
    capped = Controller(ctl.store, dataclasses.replace(ctl.settings, recovery=RecoveryConfig(max_recoveries=2)),
                        clock=clock)
    j = submit(capped, ALICE, resources={"accelerators": 1}, max_restarts=5)  # restarts left do not help
    for _ in range(2):
        capped.schedule()
        capped.lifecycle.requeue_or_fail(j, 0, "cloud node c1 is gone: preempted", JobStatus.PREEMPTED)
        assert task(capped, j)["state"] == "PENDING"
    capped.schedule()
    capped.lifecycle.requeue_or_fail(j, 0, "cloud node c2 is gone: preempted", JobStatus.PREEMPTED)
    t = task(capped, j)
    assert (t["state"], t["recoveries"], t["restarts"]) == ("FAILED", 2, 0)
    last = capped.op_show(ROOT, str(j))["events"][-1]
    assert last["to"] == "FAILED"
    assert last["reason"] == ("cloud node c2 is gone: preempted; not requeued: already recovered 2 times, the most"
                              " recovery.max_recoveries (2) allows")
    assert ctl.store.open_allocations() == []


def test_a_time_limit_is_final_even_with_restarts_left(ctl: Controller, clock: Clock) -> None:
    j = submit(ctl, ALICE, resources={"accelerators": 1}, max_restarts=3, recover_on_exit_codes=[143])
    ctl.schedule()
    ctl.store.transition(j, 0, JobStatus.RUNNING, reason="started", actor_uid=None, now=clock())
    ctl.lifecycle.finish(j, 0, 143, "time limit reached", status=JobStatus.TIMEOUT)
    t = task(ctl, j)
    assert (t["state"], t["attempt"], t["restarts"], t["recoveries"]) == ("TIMEOUT", 0, 0, 0)


def test_non_zero_exit_fails_at_once_without_restarts(ctl: Controller, clock: Clock) -> None:
    j = submit(ctl, ALICE, resources={"accelerators": 1})
    ctl.schedule()
    ctl.store.transition(j, 0, JobStatus.RUNNING, reason="started", actor_uid=None, now=clock())
    ctl.lifecycle.finish(j, 0, 3, "exited with code 3")
    t = task(ctl, j)
    assert (t["state"], t["exit_code"], t["attempt"]) == ("FAILED", 3, 0)


def test_schema_reopens_without_migrating_twice(tmp_path: Path) -> None:
    s1 = Store(tmp_path / "x.db")
    s1.close()
    s2 = Store(tmp_path / "x.db")
    n = s2.conn.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0]
    s2.close()
    from hybridctl.store.migrations import MIGRATIONS

    assert n == len(MIGRATIONS)


def test_events_audit_log_names_the_actor(ctl: Controller) -> None:
    j = submit(ctl, ALICE)
    ctl.op_cancel(ROOT, jobs=[str(j)])
    ev = ctl.op_events(ROOT, limit=10)
    assert [(e["to"], e["actor_uid"]) for e in ev] == [("CANCELLED", 0), ("PENDING", 1001)]
    assert ev[0]["owner"] == "alice" and ev[0]["reason"] == "cancelled by root"
