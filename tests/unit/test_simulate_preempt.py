"""The simulator honours the config's `scheduler:` section and the scheduler's priority
preemption (Slurm PreemptMode=REQUEUE): a job that would otherwise wait stops a preemptible
lower-priority one, which resumes from its last checkpoint and is never charged a restart."""

from __future__ import annotations

from pathlib import Path

from hybridctl import config
from hybridctl.simulate import inputs, report, trace
from hybridctl.simulate.engine import NodeGroup, Strategy, run
from hybridctl.simulate.market import Market, MarketModel
from hybridctl.simulate.trace import TraceJob

FLEET = [NodeGroup("a", 1, 8, "NVIDIA A100-SXM4-80GB")]
HOUR = 3600.0


def low(preemptible: bool) -> TraceJob:
    """8 GPUs for 10 h, checkpointing every 30 min, priority 0."""
    return TraceJob(1, "u", 0.0, 8, None, 10 * HOUR, checkpoint=1800.0, time_limit=20 * HOUR, priority=0,
                    preemptible=preemptible)


URGENT = TraceJob(2, "v", 2 * HOUR + 600.0, 8, None, HOUR, time_limit=2 * HOUR, priority=100)


def replay(jobs: list[TraceJob], policy=None):  # type: ignore[no-untyped-def]
    from hybridctl.cloud import catalog

    market = Market(catalog.load(), None, MarketModel(), 1, max(j.submit for j in jobs))
    return run(jobs, FLEET, Strategy("on-prem only"), market, policy=policy)


def test_a_high_priority_job_preempts_a_preemptible_one_which_resumes_from_its_checkpoint() -> None:
    r = replay([low(True), URGENT])
    assert r.preempted == 1
    assert r.classes["8 GPUs"][1] <= 120.0  # the urgent job waited a tick or two, not 8 h
    # Stopped 10 min after its 2 h checkpoint: 10 min x 8 GPUs thrown away, not counted as spot loss.
    assert abs(r.preempt_lost_gpu_h - 8 * 600 / 3600) < 8 * 61 / 3600 and r.lost_gpu_h == 0.0
    # Not preemptible: the urgent job waits for the whole 10 h run.
    r = replay([low(False), URGENT])
    assert r.preempted == 0 and r.classes["8 GPUs"][1] > 7 * HOUR


def test_the_table_shows_how_many_jobs_were_preempted_and_the_work_they_lost() -> None:
    """What preemption cost is in `simulate`'s table, beside the recalls (an admin trying
    `scheduler.preempt_checkpointing` compares it with the waits it saved)."""
    head, _rule, row = report.table([replay([low(True), URGENT])]).splitlines()
    cells = dict(zip(head.strip("| ").split(" | "), row.strip("| ").split(" | ")))
    assert cells["preempted (GPU-h lost)"] == "1 (1.3)"  # 10 min x 8 GPUs since its last checkpoint
    assert cells["recalled (GPU-h lost)"] == "0"


def test_the_configs_scheduler_section_reaches_the_replay(tmp_path: Path) -> None:
    """`scheduler.preempt_below: 50` marks the priority-0 job preemptible, as the controller does."""
    path = tmp_path / "c.yaml"
    path.write_text("scheduler:\n  preempt_below: 50\n  backfill_depth: 4\n")
    policy = inputs.policy(config.load(path, env={}))
    assert (policy.preempt_below, policy.backfill_depth) == (50, 4)
    assert replay([low(False), URGENT], policy).preempted == 1
    assert replay([low(False), URGENT], inputs.policy(config.load(None, env={}))).preempted == 0


def test_the_csv_carries_preemptible_and_spot_both_ways() -> None:
    import io

    jobs = [low(True), URGENT]
    out = io.StringIO()
    trace.write_csv(jobs, out)
    back, _ = trace.read_csv(io.StringIO(out.getvalue()))
    assert [(j.preemptible, j.spot, j.priority) for j in back] == [(True, "auto", 0), (False, "auto", 100)]


def test_the_size_and_checkpoint_rules_let_a_gang_preempt_checkpointing_jobs(tmp_path: Path) -> None:
    """Two nodes busy with one checkpointing 8-GPU job each; a 2-node gang arrives. With
    `scheduler.multi_node_priority: 10` and `preempt_checkpointing: true` it stops both and starts
    within a tick or two; with neither it waits for them to end (10 h)."""
    fleet = [NodeGroup("a", 2, 8, "NVIDIA A100-SXM4-80GB")]
    work = [TraceJob(i, "u", 0.0, 8, None, 10 * HOUR, checkpoint=1800.0, time_limit=20 * HOUR) for i in (1, 2)]
    gang = TraceJob(3, "v", HOUR + 600.0, 8, None, HOUR, nodes=2, time_limit=2 * HOUR)
    path = tmp_path / "c.yaml"
    path.write_text("scheduler:\n  multi_node_priority: 10\n  preempt_checkpointing: true\n")
    rules = inputs.policy(config.load(path, env={}))
    assert (rules.multi_node_priority, rules.preempt_checkpointing) == (10, True)

    def gang_wait(policy):  # type: ignore[no-untyped-def]
        from hybridctl.cloud import catalog

        market = Market(catalog.load(), None, MarketModel(), 1, HOUR + 600.0)
        r = run([*work, gang], fleet, Strategy("on-prem only"), market, policy=policy)
        return r.classes["multi-node"][0], r.preempted

    waited, preempted = gang_wait(rules)
    assert preempted == 2 and waited <= 120.0
    waited, preempted = gang_wait(inputs.policy(config.load(None, env={})))
    assert preempted == 0 and waited > 8 * HOUR


def test_a_bad_preemptible_value_names_line_column_value_and_what_is_accepted() -> None:
    import io

    import pytest

    from hybridctl.config import ConfigError

    with pytest.raises(ConfigError) as e:
        trace.read_csv(io.StringIO("submit,gpus,duration,preemptible\n0,1,60,maybe\n"), "t.csv")
    assert str(e.value) == "t.csv:2: preemptible: 'maybe'; accepted: yes, no"
