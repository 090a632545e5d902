"""Runtime estimates from history (core/estimate.py): pure."""

from __future__ import annotations

import pytest

from hybridctl.core.estimate import (
    Estimator,
    Run,
    command_key,
    duration,
    expected_end,
    quantile,
)

NOW = 1_800_000_000.0


def runs(user: str, name: str, times: list[float], job: int = 1, cmd: str = "") -> list[Run]:
    return [Run(user, job, name, cmd, t, NOW - 1000 + i) for i, t in enumerate(times)]


def test_quantile_nearest_rank() -> None:
    assert quantile([10.0] * 4 + [100.0], 0.8) == 10.0
    assert quantile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.8) == 8
    assert quantile([7.0]) == 7.0
    with pytest.raises(ValueError):
        quantile([])


def test_time_limit_wins() -> None:
    e = Estimator(runs("alice", "train", [100.0])).estimate(
        user="alice", job_id=9, name="train", time_limit=9000
    )
    assert e.seconds == 9000 and e.source == "time limit 2h 30m"


def test_p80_of_same_name_by_same_user() -> None:
    history = runs("alice", "train-llm", [600.0 * k for k in range(1, 13)], job=3)
    history += runs("bob", "train-llm", [1.0] * 20, job=4)
    e = Estimator(history).estimate(user="alice", job_id=99, name="train-llm")
    assert e.seconds == 600.0 * 10
    assert e.source == "estimate: p80 of 12 runs of 'train-llm' by alice (1h 40m)"


def test_array_siblings_come_first_then_command() -> None:
    key = command_key("python  train.py\n")
    assert key == command_key("python train.py")
    history = runs("alice", "sweep", [30.0, 40.0], job=42) + runs(
        "alice", "other", [500.0], job=7, cmd=key
    )
    est = Estimator(history)
    e = est.estimate(user="alice", job_id=42, name="sweep")
    assert e.seconds == 40.0 and e.source.startswith("estimate: p80 of 2 finished tasks of job 42")
    e = est.estimate(user="alice", job_id=50, name="new", command=key)
    assert e.seconds == 500.0
    assert e.source == "estimate: p80 of 1 run of the same command by alice (8m)"


def test_only_recent_runs_count() -> None:
    old = [Run("alice", 1, "t", "", 10_000.0, NOW - 10**6 + i) for i in range(30)]
    new = [Run("alice", 2, "t", "", 60.0, NOW - i) for i in range(20)]
    assert Estimator(old + new).estimate(user="alice", job_id=5, name="t").seconds == 60.0


def test_no_limit_no_history_is_unbounded() -> None:
    e = Estimator([]).estimate(user="alice", job_id=1, name="x")
    assert e.seconds is None and "unbounded" in e.source


def test_expected_end() -> None:
    assert expected_end(NOW - 100, 60, None, NOW) == NOW - 40  # a limit is a hard end
    assert expected_end(NOW - 100, None, 600, NOW) == NOW + 500
    assert expected_end(NOW - 1000, None, 600, NOW) is None  # outlived its estimate
    assert expected_end(NOW, None, None, NOW) is None


def test_duration() -> None:
    assert [duration(s) for s in (5, 90, 3600, 5400, 90000, 86400)] == [
        "5s", "1m", "1h", "1h 30m", "1d 1h", "1d",
    ]  # fmt: skip
