"""`cloud.burst.unknown_runtime`: the run time the burst policy assumes for a job with no time limit
and no history (it was a hard-coded hour); checked at load, exit 2 naming key, value and range."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hybridctl import config
from hybridctl.control.budget import limits


def _load(tmp_path: Path, value: object) -> config.Settings:
    path = tmp_path / "c.yaml"
    path.write_text(f"cloud:\n  burst:\n    unknown_runtime: {value}\n")
    return config.load(path, env={})


def test_the_default_is_an_hour_and_the_policy_assumes_what_the_lab_sets(tmp_path: Path) -> None:
    assert limits(config.load(None, env={})).default_runtime_s == 3600.0
    assert limits(_load(tmp_path, 21600)).default_runtime_s == 21600.0
    assert limits(_load(tmp_path, 60)).default_runtime_s == 60.0
    assert limits(_load(tmp_path, 30 * 86400)).default_runtime_s == 30 * 86400.0


@pytest.mark.parametrize("value", [59, 30 * 86400 + 1, -1, ".nan", ".inf"])
def test_a_bad_unknown_runtime_exits_2_naming_key_value_and_range(tmp_path: Path, value: object) -> None:
    with pytest.raises(config.ConfigError) as e:
        _load(tmp_path, value)
    assert e.value.exit_code == 2
    msg = str(e.value)
    assert "cloud.burst.unknown_runtime" in msg and "from 60 (1 min) to 2592000 (30 days)" in msg
    assert "c.yaml" in msg


def test_a_job_without_limit_or_history_is_priced_at_unknown_runtime(tmp_path: Path) -> None:
    """12 h assumed for a never-checkpointing 8-GPU job: too risky for spot, so on-demand; at the
    shipped hour it would go to spot, were a reclaim not priced at a day for a job of unknown
    length (`Limits.unknown_risk_s`, 0 = at the assumed run time)."""
    import datetime as dt

    from hybridctl.core.burst import Offer, World, decide
    from hybridctl.core.model import ClusterView, GpuSlot, NodeState, NodeView, PendingTask, Policy, Resources

    now = dt.datetime(2026, 11, 4, 12, tzinfo=dt.timezone.utc).timestamp()
    node = NodeView("a1", tuple(GpuSlot(i, "A100", free=False) for i in range(8)), 128, 0, 1 << 20, 0, NodeState.UP)
    job = PendingTask(1, 0, "u", "lab", 0, now - 3600, Resources(gpus=8, gpu_type="A100", cpus=16),
                      placement="cloud")
    spot = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, True, 12.0, 0.03)
    od = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, False, 32.0)
    w = World([job], ClusterView((node,)), offers=[spot, od])
    shipped = limits(config.load(None, env={}))
    short = decide(w, replace(shipped, unknown_risk_s=0.0), Policy(), now)
    long = decide(w, replace(limits(_load(tmp_path, 12 * 3600)), unknown_risk_s=0.0), Policy(), now)
    assert [r.offer.spot for r in short.launches] == [True]
    assert [r.offer.spot for r in long.launches] == [False] and "no checkpoints" in long.launches[0].why
    assert [r.offer.spot for r in decide(w, shipped, Policy(), now).launches] == [True]
    assert [r.offer.spot for r in decide(w, replace(shipped, unknown_risk_s=86400.0), Policy(), now).launches] == [False]


@pytest.mark.parametrize("assumed", [3600.0, 6 * 3600.0])
def test_shows_wait_forecast_assumes_unknown_runtime_for_a_run_without_limit_or_history(
        tmp_path: Path, assumed: float) -> None:
    from hybridctl.config import BurstConfig, CloudConfig, Settings
    from tests.unit.control.parts import ALICE, build

    settings = Settings(home=str(tmp_path), cloud=CloudConfig(burst=BurstConfig(unknown_runtime=assumed)))
    parts = build(tmp_path, names=("n1",), settings=settings)
    try:
        parts.place()  # both GPUs of the only node, no time limit, no history
        waiting = parts.submit()
        got = parts.ctl.op_show(ALICE, waiting)["wait_or_pay"]
        assert got["local_wait_s"] == pytest.approx(assumed)
    finally:
        parts.store.close()


def test_limit_use_is_learnt_from_the_runs_that_succeeded_with_a_time_limit(tmp_path: Path) -> None:
    """The autoscaler's world carries it: 1.0 until 20 time-limited runs have succeeded, then the
    median share of their limit they used (runs without a limit do not count)."""
    from hybridctl.control.budget import limit_use
    from tests.unit.history_kit import scaler_with_history

    parts, scaler, run = scaler_with_history(tmp_path, 86400)
    store = parts.store
    try:
        for i in range(19):
            run(600.0 + 60 * i, 3600.0)  # 17 % ... 47 % of their hour
        for _ in range(5):
            run(60.0, None)
        scaler.limits = replace(scaler.limits, limit_use_forecast=True)  # off by default (bench/RESULTS.md)
        assert scaler.world(parts.clock()).limit_use == 1.0
        run(3000.0, 3600.0)
        assert limit_use(store, parts.clock()) == pytest.approx((1140 + 1200) / 2 / 3600)
        assert scaler.world(parts.clock()).limit_use == pytest.approx((1140 + 1200) / 2 / 3600)
        # Committed money at expected ends (a paced budget) reads it too; with neither, nobody does.
        scaler.limits = replace(scaler.limits, limit_use_forecast=False)
        assert scaler.world(parts.clock()).limit_use == pytest.approx((1140 + 1200) / 2 / 3600)
        scaler.limits = replace(scaler.limits, commit_expected=False)
        assert scaler.world(parts.clock()).limit_use == 1.0
    finally:
        store.close()


def test_shows_wait_forecast_puts_a_limited_run_at_its_expected_end(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """20 time-limited runs used a quarter of their limit: with `limit_use_forecast` the node a
    4 h-limited job just took is expected back in 1 h, not 4 h (as the burst pass would)."""
    from hybridctl.control import cloud_requests
    from hybridctl.config import Settings
    from hybridctl.core.model import JobSpec, JobStatus, Placement
    from hybridctl.store.sqlite import Submitter
    from tests.unit.control.parts import ALICE, build

    parts = build(tmp_path, names=("n1",), settings=Settings(home=str(tmp_path)))
    store = parts.store
    try:
        who = Submitter(1000, "alice", 1000, "lab")
        t = parts.clock() - 86400
        for _ in range(20):
            job = store.submit(JobSpec(run="x", time_limit=4000.0), who, t)
            store.start([Placement(job, 0, "gone", (0,), 1.0, 0)], t)
            store.transition(job, 0, JobStatus.RUNNING, reason="", actor_uid=None, now=t)
            store.transition(job, 0, JobStatus.SUCCEEDED, reason="", actor_uid=None, now=t + 1000)
            t += 1001
        parts.place(time_limit="4h")  # both GPUs of the only node
        waiting = parts.submit()
        assert parts.ctl.op_show(ALICE, waiting)["wait_or_pay"]["local_wait_s"] == pytest.approx(4 * 3600.0)
        on = replace(limits(parts.settings), limit_use_forecast=True)
        monkeypatch.setattr(cloud_requests, "limits", lambda settings: on)
        assert parts.ctl.op_show(ALICE, waiting)["wait_or_pay"]["local_wait_s"] == pytest.approx(3600.0)
    finally:
        store.close()
