"""The telemetry history store (a real SQLite file): tiers, roll-ups, retention, job series and
the finest-tier-first reads `hybridctl eff` relies on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from hybridctl.store.telemetry import TIERS, History

T0 = 1_699_999_200  # a whole hour (472222 x 3600)


def sample(t: float, utils: list[float | None], mem: float = 2048.0, job: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"seq": 1, "time": t, "host": {"cpu_percent": 50.0, "memory_used_mb": 4096},
            "gpus": [{"index": i, "util_gpu": u, "mem_used_mb": mem + i, "mem_total_mb": 81920,
                      "sm_util": None if u is None else u / 2, "temp_c": 40, "power_w": 300.5,
                      "clock_sm_mhz": 1410, "clock_mem_mhz": 1593, "pcie_tx_kbps": 2_000_000}
                     for i, u in enumerate(utils)],
            "jobs": {"7.a0.r0": job} if job else {}}


@pytest.fixture
def hist(tmp_path: Path) -> History:
    h = History(tmp_path / "telemetry.db")
    yield h
    h.close()


def test_raw_samples_read_back_per_gpu_with_peaks_in_mib(hist: History) -> None:
    for s in range(10):
        hist.add({"n1": sample(T0 + s, [float(s * 10), 0.0], mem=1000.0 + s)}, T0 + s)
    pts = hist.gpu_points("n1", [0, 1], T0, T0 + 9)
    assert [p.util for p in pts[0]] == [float(s * 10) for s in range(10)]
    assert pts[0][-1].mem_max_mb == pytest.approx(1009, abs=1) and pts[0][0].mem_total_mb == 81920
    assert pts[1][0].sm == 0.0 and all(p.n == 1 for p in pts[0])
    series = hist.node_series("n1", T0, T0 + 9)
    assert series[0]["cpu"] == 50.0 and series[0]["gpus"][0]["pcie_tx_mbs"] == pytest.approx(2000, rel=0.01)


def test_unknown_metrics_stay_unknown(hist: History) -> None:
    hist.add({"n1": sample(T0, [None])}, T0)
    p = hist.gpu_points("n1", [0], T0, T0)[0][0]
    assert p.util is None and p.sm is None


def test_a_closed_minute_rolls_into_one_weighted_bucket_and_peaks_survive(hist: History) -> None:
    for s in range(60):
        hist.add({"n1": sample(T0 + s, [100.0 if s < 15 else 0.0], mem=1000.0 + (5000.0 if s == 30 else 0.0),
                               job={"cpu_seconds": float(s), "rss_mb": 100 + s, "peak_rss_mb": 100 + s,
                                    "metrics": {"loss": 1.0 / (s + 1)}})}, T0 + s)
    hist.maintain(T0 + 61)
    (minute,) = hist.conn.execute("SELECT n, t FROM points WHERE tier=1 AND series=(SELECT id FROM series WHERE name='node:n1')").fetchall()
    assert minute == (60, T0)
    hist.maintain(T0 + 3600 * 2)  # the raw hour is past retention; the minute is all that is left
    pts = hist.gpu_points("n1", [0], T0, T0 + 60)[0]
    assert len(pts) == 1 and pts[0].n == 60
    assert pts[0].util == pytest.approx(25.0, abs=0.1) and pts[0].util_max == 100.0
    assert pts[0].mem_max_mb == pytest.approx(6000, abs=4)
    (jp,) = hist.job_points("7.a0.r0", T0, T0 + 60)
    assert jp.cpu_seconds == 59.0 and jp.peak_rss_mb == 159 and jp.metrics["loss"] == pytest.approx(1 / 60)


def test_reads_prefer_the_finest_tier_that_still_holds_a_stretch(hist: History) -> None:
    for s in range(0, 180):
        hist.add({"n1": sample(T0 + s, [50.0])}, T0 + s)
    hist.maintain(T0 + 180)  # minutes 0..2 rolled; the raw samples are kept too
    pts = hist.gpu_points("n1", [0], T0, T0 + 179)[0]
    assert len(pts) == 180 and {p.n for p in pts} == {1}  # no double counting of rolled minutes


def test_hours_roll_from_minutes_and_retention_drops_each_tier(hist: History) -> None:
    for m in range(120):  # two hours, one sample a minute
        hist.add({"n1": sample(T0 + m * 60, [float(m % 2) * 100])}, T0 + m * 60)
        hist.maintain(T0 + m * 60 + 1)
    hist.maintain(T0 + 7201)
    hours = hist.conn.execute("SELECT t, n FROM points WHERE tier=2 ORDER BY t").fetchall()
    assert hours == [(T0, 60), (T0 + 3600, 60)]
    hist.maintain(T0 + TIERS[1][1] + 7200)
    assert hist.stats().rows.get(1, 0) == 0 and hist.stats().rows.get(2) == 2
    pts = hist.gpu_points("n1", [0], T0, T0 + 7200)[0]
    assert [p.util for p in pts] == [50.0, 50.0]
    hist.maintain(T0 + TIERS[2][1] + 7200)
    assert hist.stats().rows == {}


def test_job_series_are_found_by_job_and_summaries_outlive_them(hist: History, tmp_path: Path) -> None:
    hist.add({"n1": sample(T0, [1.0], job={"cpu_seconds": 1.0})}, T0)
    assert hist.job_keys("7.") == ["7.a0.r0"] and hist.job_keys("70.") == []
    hist.save_summary("7.0@1699999200.000000", {"util_mean": 1.0})
    hist.close()
    again = History(tmp_path / "telemetry.db")
    assert again.summary("7.0@1699999200.000000") == {"util_mean": 1.0} and again.job_keys("7.") == ["7.a0.r0"]
    again.close()


def test_values_beyond_half_precision_are_clamped_not_lost(hist: History) -> None:
    s = sample(T0, [100.0])
    s["gpus"][0]["pcie_tx_kbps"] = 1e12
    hist.add({"n1": s}, T0)
    g = hist.node_series("n1", T0, T0)[0]["gpus"][0]
    assert g["pcie_tx_mbs"] == 65504.0 and not math.isnan(g["util"])


def test_usage_adds_up_per_hour_user_and_group(hist: History) -> None:
    hist.add_usage({(T0, "alice", "lab"): (3600.0, 1800.0), (T0, "bob", "lab"): (7200.0, 0.0)})
    hist.add_usage({(T0, "alice", "lab"): (3600.0, 3600.0), (T0 + 3600, "alice", "lab"): (3600.0, 0.0)})
    assert hist.usage_since(T0) == {("alice", "lab"): (3.0, 1.5), ("bob", "lab"): (2.0, 0.0)}
    assert hist.usage_since(T0 + 3600 + 59) == {("alice", "lab"): (1.0, 0.0)}  # from the hour that holds `since`


def test_the_writer_thread_survives_any_exception_and_logs_it_boundedly(tmp_path: Path, caplog: Any) -> None:
    """A bug (not only a sqlite3.Error) in one batch must not end the writer thread silently:
    the next batches are still written, and 50 failures in a row log one line, not 50."""
    import logging

    from hybridctl.store.telemetry import HistoryWriter

    w = HistoryWriter(tmp_path / "telemetry.db", maintain_every=1e9)
    real_add, calls = w.history.add, []

    def flaky(samples: Any, now: float) -> None:
        calls.append(now)
        if len(calls) <= 50:
            raise RuntimeError("boom")
        real_add(samples, now)

    w.history.add = flaky  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="hybridctl.history"):
        for i in range(50):
            w.submit({"n1": sample(T0 + i, [1.0])}, T0 + i)
        w.submit({"n1": sample(T0 + 50, [2.0])}, T0 + 50)
        w.close()
    assert not w.thread.is_alive()
    assert w.failures == 50 and len(calls) == 51
    assert len([r for r in caplog.records if "history write failed" in r.getMessage()]) == 1
    again = History(tmp_path / "telemetry.db")
    try:
        assert [r["t"] for r in again.node_series("n1", T0, T0 + 60)] == [T0 + 50]
    finally:
        again.close()


def test_a_failing_roll_up_is_retried_every_maintain_every_not_every_sample(tmp_path: Path) -> None:
    from hybridctl.store.telemetry import HistoryWriter

    w = HistoryWriter(tmp_path / "telemetry.db", maintain_every=10.0)
    tries: list[float] = []

    def broken(now: float) -> None:
        tries.append(now)
        raise OSError("disk")

    w.history.maintain = broken  # type: ignore[method-assign]
    for i in range(30):
        w.submit({"n1": sample(T0 + i, [1.0])}, T0 + i)
    w.close()
    assert tries == [T0, T0 + 10, T0 + 20] and w.failures == 3


def _job_db(path: Path, submitted_at: float, start: float, end: float) -> Any:
    """The two tables of the job database `job_efficiency` reads, holding job 1 (task 0) on n1's GPU 0."""
    import sqlite3

    conn = sqlite3.connect(str(path))
    conn.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, submitted_at REAL NOT NULL);"
        "CREATE TABLE allocations (job_id INTEGER, task INTEGER, attempt INTEGER, rank INTEGER, node TEXT,"
        " gpus TEXT, cpus REAL, start REAL, end REAL);")
    conn.execute("INSERT INTO jobs VALUES (1, ?)", (submitted_at,))
    conn.execute("INSERT INTO allocations VALUES (1, 0, 0, 0, 'n1', '[0]', 1.0, ?, ?)", (start, end))
    conn.commit()
    return conn


def test_a_reset_job_database_does_not_show_the_old_job_1s_summary(hist: History, tmp_path: Path) -> None:
    """hybridctl.db reset, telemetry.db kept: the new job 1 must get its own efficiency, not the
    summary kept for the old job 1 (same label '1.0')."""
    from hybridctl.store.telemetry import job_efficiency

    for i in range(10):
        hist.add({"n1": sample(T0 + i, [90.0])}, T0 + i)
        hist.add({"n1": sample(T0 + 100 + i, [10.0])}, T0 + 100 + i)
    old = _job_db(tmp_path / "old.db", T0 - 5, T0, T0 + 10)
    first = job_efficiency(hist, old, 1, 0, "1.0", "SUCCEEDED", T0 + 50, terminal=True)
    assert first is not None and first["util_mean"] == pytest.approx(90.0, abs=0.5)
    new = _job_db(tmp_path / "new.db", T0 + 95, T0 + 100, T0 + 110)
    second = job_efficiency(hist, new, 1, 0, "1.0", "SUCCEEDED", T0 + 150, terminal=True)
    assert second is not None and second["util_mean"] == pytest.approx(10.0, abs=0.5)
    again = job_efficiency(hist, old, 1, 0, "1.0", "SUCCEEDED", T0 + 150, terminal=True)
    assert again == first  # each keeps its own
    old.close()
    new.close()


def test_summaries_kept_under_the_old_label_only_key_are_dropped_on_open(tmp_path: Path) -> None:
    h = History(tmp_path / "telemetry.db")
    h.save_summary("1.0", {"util_mean": 99.0})  # written by a version that keyed by label alone
    h.save_summary("1.0@5.000000", {"util_mean": 1.0})
    h.close()
    again = History(tmp_path / "telemetry.db")
    try:
        assert again.summary("1.0") is None and again.summary("1.0@5.000000") == {"util_mean": 1.0}
    finally:
        again.close()
