"""Per-job efficiency and the idle-GPU rule (pure), and the agent's per-job usage as core.wire
checks it."""

from __future__ import annotations

import pytest

from hybridctl.core import wire
from hybridctl.core.efficiency import (Allocation, GpuPoint, IdlePolicy, IdleTracker, JobPoint, percentile,
                                       summarize)

T0 = 1_700_000_000.0


def series(utils: list[float], start: float = T0, step: float = 1.0, mem: float = 1000.0) -> list[GpuPoint]:
    return [GpuPoint(t=start + i * step, n=1, util=u, util_max=u, mem_max_mb=mem, mem_total_mb=40960.0, sm=u / 2)
            for i, u in enumerate(utils)]


@pytest.mark.parametrize("values, q, want", [
    ([], 95, None), ([5.0], 95, 5.0), ([0.0, 100.0], 50, 50.0), (list(map(float, range(101))), 95, 95.0),
])
def test_percentile_interpolates(values: list[float], q: float, want: float | None) -> None:
    assert percentile(values, q) == want


def test_a_job_that_holds_two_gpus_and_uses_one_used_half_its_gpu_hours() -> None:
    alloc = Allocation("n1", (0, 1), cpus=4.0, start=T0, end=T0 + 3600, rank_key="7.a0.r0")
    eff = summarize("7", "SUCCEEDED", [alloc],
                    {("n1", 0): series([100.0] * 3600, mem=30000.0), ("n1", 1): series([0.0] * 3600)},
                    {"7.a0.r0": [JobPoint(T0 + 10, cpu_seconds=100.0, rss_mb=500, peak_rss_mb=800,
                                          metrics={"loss": 2.0}),
                                 JobPoint(T0 + 3590, cpu_seconds=7200.0, rss_mb=600, peak_rss_mb=900,
                                          metrics={"loss": 0.5, "step": 10.0})]},
                    now=T0 + 9999, memory_mb=16384)
    assert eff.gpu_hours_held == 2.0 and eff.gpu_hours_used == 1.0
    g0, g1 = eff.gpus
    assert (g0.util_mean, g0.util_p95, g0.mem_peak_mb, g0.sm_mean) == (100.0, 100.0, 30000.0, 50.0)
    assert (g1.util_mean, g1.util_p95, g1.samples) == (0.0, 0.0, 3600)
    assert eff.util_mean == 50.0
    assert eff.cpu_efficiency == 0.5  # 7200 CPU-s over 4 CPUs x 3600 s
    assert eff.peak_rss_mb == 900 and eff.memory_mb == 16384
    assert eff.metrics == {"loss": 0.5, "step": 10.0}
    assert eff.to_dict()["gpus"][0]["index"] == 0


def test_coarse_buckets_weigh_by_their_sample_count_and_a_running_job_ends_now() -> None:
    alloc = Allocation("n1", (3,), cpus=1.0, start=T0, end=None)
    pts = [GpuPoint(t=T0, n=59, util=10.0), GpuPoint(t=T0 + 60, n=1, util=70.0)]
    eff = summarize("8", "RUNNING", [alloc], {("n1", 3): pts}, {}, now=T0 + 60)
    assert eff.gpus[0].util_mean == 11.0 and eff.wall_s == 60.0
    assert eff.cpu_efficiency is None and eff.peak_rss_mb is None


def test_a_job_without_telemetry_has_unknown_utilisation_and_counts_no_used_hours() -> None:
    eff = summarize("9", "RUNNING", [Allocation("n1", (0,), 1.0, T0, None)], {}, {}, now=T0 + 7200)
    assert eff.gpus[0].util_mean is None and eff.gpu_hours_held == 2.0 and eff.gpu_hours_used == 0.0


def policy(**kw: object) -> IdlePolicy:
    return IdlePolicy(**{"util_below": 5.0, "after": 600.0, "grace": 300.0, **kw})  # type: ignore[arg-type]


def test_a_job_idle_on_every_gpu_is_flagged_once_after_the_configured_time() -> None:
    tr = IdleTracker(policy())
    for t in range(0, 700, 10):
        tr.observe("5", "n1", [0.0, 3.0], T0 + t)
    held = {"5": ["n1"]}
    assert tr.decide(held, T0 + 590) == []
    first = tr.decide(held, T0 + 600)
    assert [(d.job, d.idle_s, d.flag, d.act) for d in first] == [("5", 600.0, True, None)]
    again = tr.decide(held, T0 + 690)
    assert again[0].flag is False and again[0].act is None  # flagged once, no action by default


def test_one_busy_gpu_or_node_keeps_a_job_from_being_idle() -> None:
    tr = IdleTracker(policy())
    tr.observe("5", "n1", [0.0, 90.0], T0)
    tr.observe("6", "n1", [0.0], T0)
    tr.observe("6", "n2", [80.0], T0)
    assert tr.decide({"5": ["n1"], "6": ["n1", "n2"]}, T0 + 10_000) == []
    assert tr.idle_for("6", ["n1"], T0 + 10) == 10.0


def test_work_resets_the_clock_and_an_unknown_reading_does_not() -> None:
    tr = IdleTracker(policy())
    tr.observe("5", "n1", [0.0], T0)
    tr.observe("5", "n1", [None], T0 + 300)
    assert tr.idle_for("5", ["n1"], T0 + 400) == 400.0
    tr.observe("5", "n1", [50.0], T0 + 500)
    tr.observe("5", "n1", [0.0], T0 + 510)
    assert tr.idle_for("5", ["n1"], T0 + 610) == 100.0


@pytest.mark.parametrize("action", ["cancel", "requeue"])
def test_cancel_or_requeue_comes_once_after_the_grace(action: str) -> None:
    tr = IdleTracker(policy(action=action))
    tr.observe("5", "n1", [0.0], T0)
    assert tr.decide({"5": ["n1"]}, T0 + 899)[0].act is None
    assert tr.decide({"5": ["n1"]}, T0 + 900)[0].act == action
    assert tr.decide({"5": ["n1"]}, T0 + 950)[0].act is None


def test_a_job_that_ends_is_forgotten() -> None:
    tr = IdleTracker(policy())
    tr.observe("5", "n1", [0.0], T0)
    tr.decide({"5": ["n1"]}, T0 + 700)
    assert tr.decide({}, T0 + 800) == [] and tr.since == {} and tr.flagged == set()


def test_wire_keeps_a_jobs_usage_and_numeric_logged_metrics_only() -> None:
    problems: list[wire.Problem] = []
    s = wire.sample({"seq": 1, "time": 1.0, "gpus": [{"index": 0, "sm_util": 40, "clock_mem_mhz": 1593,
                                                      "ecc_corrected": 3, "pcie_tx_kbps": -5}],
                     "jobs": {"7.a0.r0": {"cpu_percent": 99.5, "peak_rss_mb": 800,
                                          "metrics": {"loss": 0.5, "bad name": 1, "word": "x"}},
                              "../x": {}}}, problems)
    assert s is not None
    assert s["jobs"] == {"7.a0.r0": {"cpu_percent": 99.5, "peak_rss_mb": 800.0, "metrics": {"loss": 0.5}}}
    g = s["gpus"][0]
    assert (g["sm_util"], g["clock_mem_mhz"], g["ecc_corrected"], g["pcie_tx_kbps"]) == (40.0, 1593.0, 3.0, None)
    wheres = " ".join(p.where for p in problems)
    assert "pcie_tx_kbps" in wheres and "bad name" in wheres and "'../x'" in wheres
    assert wire.sample({"gpus": []}, [])["jobs"] == {}
