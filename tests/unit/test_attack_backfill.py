"""Attack on backfill through runtime estimates: a user's estimate is the p80 of their own
SUCCEEDED runs of the same name, so 20 trivial runs named 'train' make it ~1 s, and a long 'train'
job without a time limit would be backfilled ahead of a reservation and delay it. As in Slurm,
only a time limit that ends before the reservation lets a task start on what the reservation
needs; estimates still place reservations."""

from __future__ import annotations

from pathlib import Path

from hybridctl.core.backfill import clock as hhmm
from hybridctl.core.model import JobSpec, JobStatus, PendingTask, Placement, Resources
from tests.unit.backfill_kit import H, NOW, easy_cluster, reasons, run, started, task


def estimated(job: int, gpus: int, runtime: float) -> PendingTask:
    t = task(job, gpus, runtime=runtime)
    return PendingTask(**{**t.__dict__, "estimated": True})


def test_an_estimate_alone_never_backfills_ahead_of_a_reservation() -> None:
    nodes, held = easy_cluster()  # a: 2 GPUs free now, 8 at +1 h (10 reserves them); b: full
    pending = [task(10, 8, priority=10), estimated(11, 2, 1.0), task(12, 2, runtime=0.5 * H)]
    d = run(nodes, held, pending)
    assert reasons(d)[10] == f"reserved: starts ~{hhmm(NOW + H)} on a (8 GPUs)"
    # 11's ~1 s estimate came from its user's own runs: it waits; 12's 30 min limit backfills.
    assert started(d) == {12: {"a"}}
    assert reasons(d)[11].startswith("backfill: fits only on nodes held for job 10")


def test_an_estimated_task_still_starts_where_no_reservation_needs_the_resources() -> None:
    nodes, held = easy_cluster()
    # The reservation needs 4 of a's 8 GPUs at +1 h: 2 of the 4 spare may go to anything.
    d = run(nodes, held, [task(10, 4, priority=10), estimated(11, 2, 1.0)])
    assert started(d) == {11: {"a"}}


def test_estimates_still_give_reservations_their_expected_start() -> None:
    """A running task's estimated end (RunningTask.ends_at) still places the head's reservation."""
    nodes, held = easy_cluster()
    d = run(nodes, held, [task(10, 8, priority=10)])
    assert {w.job_id: w.starts_at for w in d.waiting} == {10: NOW + H}


def test_twenty_trivial_runs_named_train_do_not_let_a_long_train_job_jump_a_reservation(tmp_path: Path) -> None:
    """End to end through the controller's pass (real store, RuntimeFacts estimates)."""
    from hybridctl.config import NodeConfig, Settings
    from hybridctl.control.nodes import config_record
    from hybridctl.control.service import Controller
    from hybridctl.store.sqlite import Store, Submitter
    from tests.unit.controller_kit import ALICE, Clock, submit

    clock = Clock()
    s = Store(tmp_path / "ctl.db")
    s.add_node(config_record(NodeConfig(name="n1", gpus="8xA100", cpus=32, memory="256G", simulated=True)), clock())
    who = Submitter(ALICE.uid, ALICE.user, ALICE.gid, ALICE.group)
    trivial = JobSpec(run="python train.py", name="train", resources=Resources(gpus=1))
    for k in range(20):  # the gaming: 20 runs of 1 s
        start = clock.t - 86400 + k * 60
        job = s.submit(trivial, who, start)
        s.start([Placement(job, 0, "n1", (0,), 1.0, 0)], start)
        s.transition(job, 0, JobStatus.RUNNING, reason="", actor_uid=None, now=start)
        s.transition(job, 0, JobStatus.SUCCEEDED, reason="", actor_uid=None, now=start + 1)
    ctl = Controller(s, Settings(home=str(tmp_path)), clock=clock)
    try:
        submit(ctl, ALICE, resources={"accelerators": "A100:6"}, time_limit="2h")
        ctl.schedule()
        big = submit(ctl, ALICE, resources={"accelerators": "A100:8"}, priority=10)
        train = submit(ctl, ALICE, name="train", run="python train.py", resources={"accelerators": "A100:2"})
        ctl.schedule()
        assert ctl.op_show(ALICE, str(train))["runtime"].startswith("estimate: p80 of 20 runs of 'train'")
        assert ctl.op_show(ALICE, str(big))["tasks"][0]["reason"] == \
            f"reserved: starts ~{hhmm(clock.t + 7200)} on n1 (8 GPUs)"
        t = ctl.op_show(ALICE, str(train))["tasks"][0]
        assert t["state"] == "PENDING" and t["reason"].startswith(f"backfill: fits only on nodes held for job {big}")
        # A time limit that ends before the reservation is what lets a task backfill.
        limited = submit(ctl, ALICE, name="train", run="python train.py", resources={"accelerators": "A100:2"},
                         time_limit="30m")
        ctl.schedule()
        assert ctl.op_show(ALICE, str(limited))["tasks"][0]["state"] == "STARTING"
        assert ctl.op_show(ALICE, str(train))["tasks"][0]["state"] == "PENDING"
    finally:
        s.close()
