"""The per-pass inputs of backfill and preemption read from a real SQLite store
(control/backfill.py RuntimeFacts, store/history.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from hybridctl.control.backfill import RuntimeFacts
from hybridctl.core.model import JobSpec, JobStatus, Placement, Resources
from hybridctl.store.sqlite import Store, Submitter

ALICE = Submitter(1000, "alice", 1000, "lab")
T0 = 1_800_000_000.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "hybridctl.db")
    yield s
    s.close()


def run_to_success(store: Store, spec: JobSpec, start: float, seconds: float) -> int:
    job = store.submit(spec, ALICE, start)
    store.start([Placement(job, 0, "n1", (0,), 1.0, 0)], start)
    store.transition(job, 0, JobStatus.RUNNING, reason="", actor_uid=None, now=start)
    store.transition(job, 0, JobStatus.SUCCEEDED, reason="", actor_uid=None, now=start + seconds)
    return job


def test_history_gives_pending_and_running_tasks_their_runtimes(store: Store) -> None:
    train = JobSpec(run="python train.py", name="train-llm", resources=Resources(gpus=1))
    for k in range(5):
        run_to_success(store, train, T0 + k * 10_000, 600.0 * (k + 1))
    now = T0 + 100_000
    limited = store.submit(JobSpec(run="x", name="x", time_limit=7200, preemptible=True), ALICE, now)
    fresh = store.submit(train, ALICE, now)
    unknown = store.submit(JobSpec(run="never seen", name="new"), ALICE, now)
    facts = RuntimeFacts(store)
    pending = {t.job_id: t for t in facts.pending(store.pending(), now)}
    assert pending[limited].runtime_s == 7200 and pending[limited].preemptible
    assert pending[fresh].runtime_s == 2400.0  # p80 of 600..3000
    assert pending[unknown].runtime_s is None and not pending[unknown].preemptible
    e = facts.estimate(fresh, "alice", now)
    assert e.source == "estimate: p80 of 5 runs of 'train-llm' by alice (40m)"

    store.start([Placement(fresh, 0, "n1", (0, 1), 2.0, 0)], now)
    store.start([Placement(limited, 0, "n1", (2,), 1.0, 0)], now)
    running = {r.job_id: r for r in facts.running(now + 60)}
    assert running[fresh].ends_at == now + 2400.0 and running[fresh].gpus == (0, 1)
    assert running[limited].ends_at == now + 7200 and running[limited].preemptible
    # Past its estimate a task's end is unknown; a limit stays a hard end.
    later = {r.job_id: r for r in facts.running(now + 5000)}
    assert later[fresh].ends_at is None and later[limited].ends_at == now + 7200
    # Being stopped for a preemption: PREEMPTED, still holding its GPUs.
    store.transition(limited, 0, JobStatus.PREEMPTED, reason="p", actor_uid=None, now=now, release=False)
    assert {r.job_id: r for r in facts.running(now + 60)}[limited].stopping


def test_controller_pass_reserves_and_preempts_and_show_says_so(tmp_path: Path) -> None:
    """The real Scheduler wiring in-process: expected ends from time limits reach the view, the
    reservation's start reaches the reason, a preemption marks the victim PREEMPTED (its GPUs kept
    until its node stops it), and `show` names the runtime's source."""
    from hybridctl.config import NodeConfig, SchedulerConfig, Settings
    from hybridctl.control.nodes import config_record
    from hybridctl.control.service import Controller
    from hybridctl.core.backfill import clock as hhmm
    from tests.unit.controller_kit import ALICE, ROOT, Clock, submit

    clock = Clock()
    settings = Settings(home=str(tmp_path), scheduler=SchedulerConfig(preempt_below=0))
    s = Store(tmp_path / "ctl.db")
    s.add_node(config_record(NodeConfig(name="n1", gpus="8xA100", cpus=32, memory="256G", simulated=True)), clock())
    ctl = Controller(s, settings, clock=clock)
    try:
        first = submit(ctl, ALICE, resources={"accelerators": "A100:6"}, time_limit="2h")
        ctl.schedule()
        big = submit(ctl, ALICE, resources={"accelerators": "A100:8"})
        small = submit(ctl, ALICE, resources={"accelerators": "A100:2"})  # unbounded: would delay big
        ctl.schedule()
        show = ctl.op_show(ALICE, str(big))
        assert show["tasks"][0]["reason"] == f"reserved: starts ~{hhmm(clock.t + 7200)} on n1 (8 GPUs)"
        assert show["runtime"].startswith("no time limit and no finished runs")
        assert ctl.op_show(ALICE, str(small))["tasks"][0]["reason"].startswith("backfill: fits only on nodes held")
        assert ctl.op_show(ALICE, str(first))["runtime"] == "time limit 2h"

        # preempt_below 0: the priority -5 job is preemptible, the priority 0 one is not.
        low = submit(ctl, ROOT, resources={"accelerators": "A100:2"}, priority=-5, time_limit="1h")
        ctl.op_cancel(ALICE, jobs=[str(big), str(small)])
        ctl.schedule()
        assert ctl.op_show(ROOT, str(low))["tasks"][0]["state"] in ("STARTING", "RUNNING")
        high = submit(ctl, ROOT, resources={"accelerators": "A100:4"}, priority=500)
        assert ctl.schedule().preempt == ()  # 2 GPUs from the -5 job are not enough
        ctl.op_cancel(ROOT, jobs=[str(high)])
        high = submit(ctl, ROOT, resources={"accelerators": "A100:2"}, priority=500)
        decision = ctl.schedule()
        assert [(p.job_id, p.for_job) for p in decision.preempt] == [(low, high)]
        events = [(e["to"], e["reason"]) for e in ctl.op_show(ROOT, str(low))["events"]]
        assert ("PREEMPTED", f"preempted by job {high} (priority 500) on n1") in events
        assert ctl.op_show(ROOT, str(high))["tasks"][0]["reason"] == f"preempting: job {low} on n1; starts once stopped"
        # n1 is declared only (nothing runs there): the victim is requeued at once, as a recovery.
        t = ctl.op_show(ROOT, str(low))["tasks"][0]
        assert t["state"] == "PENDING" and t["restarts"] == 0 and t["recoveries"] == 1
        ctl.schedule()
        assert ctl.op_show(ROOT, str(high))["tasks"][0]["state"] == "STARTING"
        assert ctl.op_show(ROOT, str(low))["tasks"][0]["state"] == "PENDING"
    finally:
        s.close()


def test_checkpoint_time_from_the_sync_manifest(store: Store, tmp_path: Path) -> None:
    """A preemptible task's last checkpoint is the newest file of the controller's copy (the
    checkpoint sync's manifest); work lost is counted from there."""
    import json

    from hybridctl.control.checkpoints import MANIFEST

    now = T0 + 1000
    job = store.submit(JobSpec(run="x", preemptible=True, checkpoint_dir="/tmp/ck"), ALICE, T0)
    other = store.submit(JobSpec(run="y"), ALICE, T0)
    store.start([Placement(job, 0, "n1", (0,), 1.0, 0), Placement(other, 0, "n1", (1,), 1.0, 0)], T0)
    facts = RuntimeFacts(store, tmp_path)
    assert {r.job_id: r.checkpoint_at for r in facts.running(now)} == {job: None, other: None}
    copy = tmp_path / "checkpoints" / str(job)
    copy.mkdir(parents=True)
    (copy / MANIFEST).write_text(json.dumps({
        "step1.pt": [10, int((T0 + 300) * 1e9), "n1"], "step2.pt": [10, int((T0 + 600) * 1e9), "n1"],
    }))  # fmt: skip
    assert {r.job_id: r.checkpoint_at for r in facts.running(now)}[job] == T0 + 600


def test_history_is_learnt_incrementally(store: Store) -> None:
    spec = JobSpec(run="python sweep.py", name="sweep")
    run_to_success(store, spec, T0, 100.0)
    facts = RuntimeFacts(store)
    job = store.submit(spec, ALICE, T0 + 500)
    assert facts.estimate(job, "alice", T0 + 500).seconds == 100.0
    run_to_success(store, spec, T0 + 100, 410.0)  # ends at T0 + 510
    assert facts.estimate(job, "alice", T0 + 540).seconds == 100.0  # within REFRESH_S: cached
    e = facts.estimate(job, "alice", T0 + 600)
    assert e.seconds == 410.0 and e.source.startswith("estimate: p80 of 2 runs of 'sweep'")


def test_the_size_and_checkpoint_rules_mark_pending_and_running_tasks(store: Store) -> None:
    """`scheduler.multi_node_priority`: a gang's priority, waiting or running, is raised by it;
    `scheduler.preempt_checkpointing`: a job that checkpoints and has no deadline is preemptible.
    Off (the defaults), neither changes anything."""
    from hybridctl.core.model import Policy

    now = T0
    gang = store.submit(JobSpec(run="x", num_nodes=2, priority=3), ALICE, now)
    ckpt = store.submit(JobSpec(run="x", checkpoint_dir="/ck"), ALICE, now)
    due = store.submit(JobSpec(run="x", checkpoint_dir="/ck", deadline=now + 6 * 3600), ALICE, now)
    plain = store.submit(JobSpec(run="x"), ALICE, now)
    rules = RuntimeFacts(store, policy=Policy(multi_node_priority=10, preempt_checkpointing=True))
    got = {t.job_id: (t.priority, t.preemptible) for t in rules.pending(store.pending(), now)}
    assert got == {gang: (13, False), ckpt: (0, True), due: (0, False), plain: (0, False)}
    off = {t.job_id: (t.priority, t.preemptible) for t in RuntimeFacts(store).pending(store.pending(), now)}
    assert off == {gang: (3, False), ckpt: (0, False), due: (0, False), plain: (0, False)}
    store.start([Placement(ckpt, 0, "n1", (0,), 1.0, 0)], now)
    store.start([Placement(gang, 0, "n1", (1,), 1.0, 0, rank=0), Placement(gang, 0, "n2", (0,), 1.0, 0, rank=1)], now)
    running = {(r.job_id, r.node): (r.priority, r.preemptible) for r in rules.running(now)}
    assert running == {(ckpt, "n1"): (0, True), (gang, "n1"): (13, False), (gang, "n2"): (13, False)}


def test_show_says_when_a_rule_makes_a_job_preemptible_or_raises_its_priority(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A user learns from `show` that their job may be stopped before it is: the rule that says so
    (`preempt_checkpointing`, `preempt_below`), and a gang's added priority."""
    from hybridctl.cli import common
    from hybridctl.cli.main import main
    from hybridctl.config import SchedulerConfig, Settings
    from hybridctl.control.service import Controller
    from tests.unit.controller_kit import ALICE, Clock, show_client, submit

    clock = Clock()
    settings = Settings(home=str(tmp_path), scheduler=SchedulerConfig(
        multi_node_priority=10, preempt_checkpointing=True, preempt_below=5))
    ctl = Controller(Store(tmp_path / "ctl.db"), settings, clock=clock)
    ckpt = submit(ctl, ALICE, checkpoint_dir="/tmp/ck", priority=7)
    gang = submit(ctl, ALICE, num_nodes=2, priority=-3)
    low = submit(ctl, ALICE, priority=1)
    due = submit(ctl, ALICE, checkpoint_dir="/tmp/ck", deadline="6h", priority=7)
    assert ctl.op_show(ALICE, str(ckpt))["preemptible_by"] == \
        "it checkpoints and has no deadline (scheduler.preempt_checkpointing)"
    g = ctl.op_show(ALICE, str(gang))
    assert g["priority_boost"] == 10 and "preemptible_by" not in g  # -3 + 10 is not below 5
    assert ctl.op_show(ALICE, str(low))["preemptible_by"] == "its priority 1 is below scheduler.preempt_below 5"
    assert "preemptible_by" not in ctl.op_show(ALICE, str(due))
    assert ctl.op_show(ALICE, str(ckpt))["preempt_grace"] == 30.0  # scheduler.preempt_grace, what it gets on-prem
    assert "preempt_grace" not in ctl.op_show(ALICE, str(due))

    monkeypatch.setattr(common, "client", show_client(ctl, ALICE))
    assert main(["show", str(ckpt)]) == 0
    assert ("  preemptible yes: a higher-priority job may stop and requeue it, giving it 30 s to checkpoint;"
            " it checkpoints and has no deadline (scheduler.preempt_checkpointing)") in capsys.readouterr().out.splitlines()
    assert main(["show", str(gang)]) == 0
    assert "  priority   +10 in the queue: a job over several nodes (scheduler.multi_node_priority)" in \
        capsys.readouterr().out.splitlines()


def test_show_gives_the_grace_of_each_site_where_they_differ(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A preemption stops a job with its node's site's grace (`scheduler.preempt_grace` on-prem,
    `cloud.preemption_grace` on a cloud node, each at least `fleet.poll_interval` x 10, as
    control/fleet's `_stop_grace`): `show` says both where they differ."""
    from hybridctl.cli import common
    from hybridctl.cli.main import main
    from hybridctl.config import CloudConfig, FleetConfig, SchedulerConfig, Settings
    from hybridctl.control.service import Controller
    from tests.unit.controller_kit import ALICE, Clock, show_client, submit

    settings = Settings(home=str(tmp_path), scheduler=SchedulerConfig(preempt_grace=5.0),
                        cloud=CloudConfig(preemption_grace=120.0), fleet=FleetConfig(poll_interval=1.0))
    ctl = Controller(Store(tmp_path / "ctl.db"), settings, clock=Clock())
    job = submit(ctl, ALICE, preemptible=True)
    shown = ctl.op_show(ALICE, str(job))
    assert (shown["preempt_grace"], shown["preempt_grace_cloud"]) == (10.0, 120.0)  # 5 s is under 1 s x 10
    monkeypatch.setattr(common, "client", show_client(ctl, ALICE))
    assert main(["show", str(job)]) == 0
    assert ("  preemptible yes: a higher-priority job may stop and requeue it, giving it 10 s to checkpoint"
            " (120 s on a cloud node)") in capsys.readouterr().out.splitlines()
