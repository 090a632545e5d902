"""Checking what agents send: every hostile value becomes None or drops its entry, with a problem
that names the field, and never raises."""

from __future__ import annotations

import math
from typing import Any

import pytest

from hybridctl.core import wire
from hybridctl.core.wire import JobRecord, Listing, Problem

DEEP: Any = "x"
for _ in range(5000):
    DEEP = [DEEP]
DEEP_DICT: Any = {}
for _ in range(5000):
    DEEP_DICT = {"a": DEEP_DICT}

HOSTILE = [None, True, False, "1", "", "NaN", 1.5, math.nan, math.inf, -math.inf, 10 ** 30, -(10 ** 30),
           2 ** 63, -1, [], [1], {}, {"a": 1}, DEEP, DEEP_DICT, b"1", object()]
"""Values no sane agent sends where a small non-negative int belongs."""


@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: wire.shown(v, 20))
def test_integer_refuses_everything_but_a_small_int(value: Any) -> None:
    assert wire.integer(value, 0, 255) is None


@pytest.mark.parametrize("value, lo, hi, expected", [
    (0, 0, 255, 0), (255, 0, 255, 255), (256, 0, 255, None), (-1, 0, 255, None), (True, 0, 1, None),
    (7, 0, 2 ** 31, 7),
])
def test_integer_ranges(value: Any, lo: int, hi: int, expected: int | None) -> None:
    assert wire.integer(value, lo, hi) == expected


@pytest.mark.parametrize("value, expected", [
    (0, 0.0), (99.5, 99.5), (100, 100.0), (100.1, None), (-0.1, None), (math.nan, None), (math.inf, None),
    (-math.inf, None), (True, None), ("50", None), (10 ** 400, None), ([50], None), (None, None),
])
def test_number_is_finite_and_in_range(value: Any, expected: float | None) -> None:
    assert wire.number(value, 0.0, 100.0) == expected


@pytest.mark.parametrize("value, expected", [
    ("ok", "ok"), ("", ""), ("a" * 4097, None), (5, None), (None, None), (["x"], None),
    ("line\nbreak", "line\ufffdbreak"), ("\x1b[2J", "\ufffd[2J"), ("tab\there", "tab\there"), ("nul\x00", "nul\ufffd"),
])
def test_text_is_bounded_and_cannot_move_a_terminals_cursor(value: Any, expected: str | None) -> None:
    assert wire.text(value) == expected


@pytest.mark.parametrize("value, ok", [
    ("42.a0.r0", True), ("42_7.a1.r2", True), ("foreign-job", True), ("a" * 128, True), ("a" * 129, False),
    (".hidden", False), ("..", False), ("../../etc/passwd", False), ("a/b", False), ("a b", False), ("", False),
    ("k\n", False), (42, False), (None, False), (["42.a0.r0"], False),
])
def test_job_keys_are_what_an_agent_can_hold(value: Any, ok: bool) -> None:
    assert (wire.job_key(value) is not None) is ok


@pytest.mark.parametrize("value, expected", [
    ("/var/lib/hybridctl/checkpoints", "/var/lib/hybridctl/checkpoints"), ("/srv/ck/", "/srv/ck"),
    ("relative/path", None), ("/a/../etc", None), ("/a/./b", None), ("/a\x00b", None), ("/a\nb", None), (7, None),
    ("/" + "a" * 5000, None),
])
def test_checkpoint_root_is_an_absolute_clean_path(value: Any, expected: str | None) -> None:
    assert wire.abs_path(value) == expected


GOOD = {"key": "5.a0.r0", "state": "exited", "pid": 123, "pgid": 123, "exit_code": 3, "signal": None,
        "reason": None, "has_checkpoint": True, "gpus": [0], "user": "alice"}


def test_a_sane_record_is_read_and_extra_keys_are_dropped() -> None:
    problems: list[Problem] = []
    rec = wire.job_record({**GOOD, "surprise": {"deep": DEEP}}, problems)
    assert rec == JobRecord("5.a0.r0", False, 123, 3, None, None, True)
    assert problems == []


@pytest.mark.parametrize("field, value", [
    ("state", "finished"), ("state", None), ("state", ["exited"]), ("state", DEEP_DICT),
    ("pid", 0), ("pid", -5), ("pid", "123"), ("pid", 2 ** 40), ("pid", 1.0),
    ("exit_code", 256), ("exit_code", -1), ("exit_code", "0"), ("exit_code", math.nan), ("exit_code", 10 ** 30),
    ("exit_code", True), ("signal", 0), ("signal", "SIGKILL"), ("signal", 10 ** 6),
    ("reason", 5), ("reason", "x" * 5000), ("reason", ["cancelled"]), ("has_checkpoint", "yes"), ("has_checkpoint", 1),
])
def test_a_bad_field_leaves_only_the_key(field: str, value: Any) -> None:
    problems: list[Problem] = []
    assert wire.job_record({**GOOD, field: value}, problems) == "5.a0.r0"
    assert len(problems) == 1 and field in problems[0].where and "5.a0.r0" in problems[0].where


@pytest.mark.parametrize("raw", [None, "5.a0.r0", 5, [GOOD], DEEP, {**GOOD, "key": None}, {**GOOD, "key": 5},
                                 {k: v for k, v in GOOD.items() if k != "key"}, {**GOOD, "key": "../x"}])
def test_a_record_without_a_sane_key_names_nothing(raw: Any) -> None:
    problems: list[Problem] = []
    assert wire.job_record(raw, problems) is None
    assert len(problems) == 1


def test_a_listing_keeps_the_sane_records_and_marks_the_doubtful_keys() -> None:
    problems: list[Problem] = []
    raw = {"version": "abc123", "jobs": [
        GOOD, {"key": "6.a0.r0", "state": "running", "pid": None},
        {"key": "7.a0.r0", "state": "exited", "exit_code": "0"},  # doubtful: leave job 7 alone
        {"key": "8.a0.r0", "state": "running"}, {"key": "8.a0.r0", "state": "exited", "exit_code": 0},  # twice
        "junk", {"state": "exited"},
    ]}
    listing = wire.job_records(raw, problems)
    assert listing == Listing((JobRecord("5.a0.r0", False, 123, 3, None, None, True), JobRecord("6.a0.r0", True)),
                              frozenset({"7.a0.r0", "8.a0.r0"}), "abc123")
    assert len(problems) == 4


@pytest.mark.parametrize("raw", [None, [], "jobs", {"jobs": None}, {"jobs": {"5.a0.r0": GOOD}}, {"jobs": "[]"},
                                 {"jobs": [GOOD] * (wire.MAX_RECORDS + 1)}, {}])
def test_an_unusable_listing_is_none_never_an_empty_one(raw: Any) -> None:
    """An empty listing would read as "the node lost every job" and requeue them all."""
    problems: list[Problem] = []
    assert wire.job_records(raw, problems) is None
    assert problems


@pytest.mark.parametrize("value", [5, "", "has space", "x" * 200, ["v"], "v\n", None])
def test_a_bad_version_is_none(value: Any) -> None:
    assert wire.version(value) is None


def test_a_launch_answer_about_another_key_is_not_believed() -> None:
    problems: list[Problem] = []
    assert wire.launch_answer({"job": {**GOOD, "key": "9.a0.r0"}}, "5.a0.r0", problems) is None
    assert wire.launch_answer({"job": GOOD}, "5.a0.r0", problems) == JobRecord("5.a0.r0", False, 123, 3, None, None,
                                                                             True)
    assert wire.launch_answer("garbage", "5.a0.r0", problems) is None


HELLO = {"protocol": 1, "agent_version": "0.1.0", "node": "n1", "boot_id": "b", "gpu_source": "simulated",
         "gpu_error": None, "gpus": [{"index": 0, "uuid": "GPU-0", "name": "A100", "memory_total_mb": 81920},
                                     {"index": 1, "uuid": "GPU-1", "name": "A100", "memory_total_mb": 81920}],
         "cpus": 64, "memory_mb": 515000, "uid": 0, "rootless": False, "checkpoint_root": "/var/lib/h/checkpoints",
         "interval_s": 1.0, "history_s": 600.0}


def test_a_sane_hello() -> None:
    problems: list[Problem] = []
    h = wire.hello(HELLO, problems)
    assert problems == []
    assert (h.cpus, h.memory_mb, h.checkpoint_root, h.agent_version) == (64.0, 515000, "/var/lib/h/checkpoints", "0.1.0")
    assert [(g.index, g.model, g.memory_mb) for g in h.gpus or ()] == [(0, "A100", 81920), (1, "A100", 81920)]
    assert h.to_dict()["checkpoint_root"] == "/var/lib/h/checkpoints"


@pytest.mark.parametrize("field, value", [
    ("cpus", 0), ("cpus", -4), ("cpus", "64"), ("cpus", math.nan), ("cpus", math.inf), ("cpus", 10 ** 30),
    ("memory_mb", -1), ("memory_mb", 1.5e300), ("memory_mb", "lots"), ("checkpoint_root", "../../root"),
    ("checkpoint_root", ["/x"]), ("agent_version", {"v": 1}), ("gpus", "8xA100"), ("gpus", {"0": {}}),
    ("gpus", [{}] * 2000), ("rootless", "no"), ("uid", -1), ("interval_s", math.nan), ("node", DEEP),
])
def test_a_bad_hello_field_is_none_and_the_rest_counts(field: str, value: Any) -> None:
    problems: list[Problem] = []
    h = wire.hello({**HELLO, field: value}, problems)
    assert len(problems) == 1 and field in problems[0].where
    assert field not in h.to_dict()
    assert h.memory_mb == (None if field == "memory_mb" else 515000)
    assert (h.gpus is None) == (field == "gpus")


def test_bad_gpu_entries_are_dropped_one_by_one() -> None:
    problems: list[Problem] = []
    gpus = [{"index": 0, "name": "A100"}, {"index": 0, "name": "again"}, {"index": "1"}, {"index": -1},
            {"index": 5000}, "GPU", {"index": 3, "name": "T4\x1b[31m", "memory_total_mb": -5}, {"name": "no index"}]
    h = wire.hello({**HELLO, "gpus": gpus}, problems)
    assert [(g.index, g.model, g.memory_mb) for g in h.gpus or ()] == [(0, "A100", None), (3, "T4\ufffd[31m", None)]
    assert len(problems) == 7


@pytest.mark.parametrize("raw", [None, [], "hello", 5, DEEP])
def test_a_hello_that_is_not_an_object_changes_nothing(raw: Any) -> None:
    problems: list[Problem] = []
    assert wire.hello(raw, problems) == wire.Hello()
    assert len(problems) == 1


SAMPLE = {"seq": 7, "time": 1.7e9, "host": {"cpu_percent": 12.5, "load1": 0.5, "memory_total_mb": 1000,
                                            "agent_version": "0.1.0", "surprise": 5},
          "gpus": [{"index": 0, "uuid": "GPU-0", "name": "A100", "util_gpu": 93, "util_mem": 50, "mem_used_mb": 1000,
                    "mem_total_mb": 81920, "temp_c": 70, "power_w": 300.5, "power_limit_w": 400, "fan_pct": None,
                    "clock_sm_mhz": 1410, "healthy": True, "health_reason": None,
                    "processes": [{"pid": 5, "user": "alice", "used_mem_mb": 900, "job": "1.a0.r0"}]}]}


def test_a_sane_sample_is_kept_without_unknown_fields() -> None:
    problems: list[Problem] = []
    ans = wire.sample_answer({"seq": 7, "samples": [SAMPLE]}, problems)
    assert problems == [] and ans.seq == 7
    latest = ans.latest
    assert latest is not None and "surprise" not in latest["host"]
    g = latest["gpus"][0]
    assert (g["util_gpu"], g["power_w"], g["fan_pct"], g["healthy"]) == (93.0, 300.5, None, True)
    assert g["processes"] == [{"pid": 5, "user": "alice", "job": "1.a0.r0", "used_mem_mb": 900.0}]


@pytest.mark.parametrize("field, value", [
    ("util_gpu", 101), ("util_gpu", math.nan), ("util_gpu", "93"), ("temp_c", 10 ** 30), ("mem_used_mb", -1),
    ("power_w", math.inf), ("healthy", "false"), ("healthy", 0), ("health_reason", ["Xid"]), ("name", DEEP),
])
def test_a_bad_metric_is_none_and_its_gpu_stays(field: str, value: Any) -> None:
    problems: list[Problem] = []
    gpu = {**SAMPLE["gpus"][0], field: value}
    latest = wire.sample({**SAMPLE, "gpus": [gpu]}, problems)
    assert latest is not None and latest["gpus"][0][field] is None and latest["gpus"][0]["index"] == 0
    assert len(problems) == 1 and field in problems[0].where


@pytest.mark.parametrize("answer", [None, "x", [], {"seq": "7", "samples": [SAMPLE]}, {"seq": 7, "samples": "x"},
                                    {"seq": 7, "samples": ["x"]}, {"seq": -1, "samples": []}, {"seq": 2 ** 60}])
def test_bad_sample_answers_do_not_raise(answer: Any) -> None:
    problems: list[Problem] = []
    ans = wire.sample_answer(answer, problems)
    assert problems
    assert ans.latest is None or ans.seq is None


def test_bad_gpu_and_process_entries_of_a_sample_are_dropped() -> None:
    problems: list[Problem] = []
    procs = [{"pid": "5"}, "proc", {"pid": 6, "job": "../x"}]
    gpus = [{"index": "0"}, {"index": 1, "processes": procs}, {"index": 1}, None, {"index": 2, "processes": "x"}]
    latest = wire.sample({"gpus": gpus, "host": [1]}, problems)
    assert latest is not None
    assert [g["index"] for g in latest["gpus"]] == [1, 2]
    assert latest["gpus"][1]["processes"] == []
    assert [p["pid"] for p in latest["gpus"][0]["processes"]] == [None, 6]
    assert latest["gpus"][0]["processes"][1]["job"] is None
    assert len(problems) == 8


def test_shown_never_renders_a_huge_value_whole() -> None:
    assert wire.shown("x" * 10 ** 6).endswith("...") and len(wire.shown("x" * 10 ** 6)) < 80
    assert wire.shown(10 ** 400) == "a huge int"
    assert wire.shown(DEEP) == "list of 1"


def test_the_checks_are_pure() -> None:
    """core/ does no I/O: importing the checks loads no network, database or event-loop module."""
    import subprocess
    import sys

    code = ("import sys, hybridctl.core.wire; "
            "print(sorted(m for m in ('asyncio', 'asyncssh', 'sqlite3', 'socket', 'textual') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
