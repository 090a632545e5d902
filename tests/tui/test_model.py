"""The TUI's pure parts: filter grammar, sorting, rows from controller replies, cells, commands,
history; and that `hybridctl submit` never imports textual."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hybridctl.tui import cells
from hybridctl.tui.commands import Command, UnknownCommand, parse_command
from hybridctl.tui.fake import NOW, FakeApi
from hybridctl.tui.history import History
from hybridctl.tui.model import (
    Filter,
    JobRowCache,
    allocations,
    event_rows,
    gpu_rows,
    job_rows,
    node_rows,
    parse_filter,
    proc_rows,
)
from hybridctl.tui.widgets.table import Column, layout


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("", Filter()),
        ("alice", Filter(words=("alice",))),
        ("user:alice,bob s:run", Filter(users=("alice", "bob"), states=("run",))),
        ("@carol node:gpu0 Train", Filter(users=("carol",), nodes=("gpu0",), words=("train",))),
        ("state:", Filter(words=())),
    ],
)
def test_filter_grammar(text: str, want: Filter) -> None:
    assert parse_filter(text) == want


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("nodes", Command("view", "fleet")), (":jobs", Command("view", "queue")), ("ev", Command("view", "events")),
        ("gpus", Command("view", "gpus")), ("cloud", Command("view", "cloud")), ("job 42_7", Command("job", "42_7")),
        ("node gpu01", Command("node", "gpu01")), ("gpu gpu01/3", Command("gpu", "gpu01/3")),
        ("q", Command("quit")), ("help", Command("help")),
    ],
)
def test_command_aliases(line: str, want: Command) -> None:
    assert parse_command(line) == want


def test_unknown_command_lists_the_known_ones() -> None:
    with pytest.raises(UnknownCommand, match=r"unknown command :pods; known: :nodes, :jobs"):
        parse_command("pods")


def test_queue_rows_filter_sort_and_times() -> None:
    api = FakeApi()
    queue = api.op_queue(all=True, finished=True)
    rows = job_rows(queue, NOW, parse_filter("state:run,pend"), "wait", True)
    assert {r.state for r in rows} == {"RUNNING", "PENDING"}
    assert rows[0].label == "14_4" and rows[0].wait(NOW) == 2000  # longest wait first
    running = next(r for r in rows if r.label == "12")
    assert (running.wait(NOW), running.run(NOW), running.node) == (300, 3600, "gpu01")
    assert [r.label for r in job_rows(queue, NOW, parse_filter("user:bob sweep"))] == ["14_1", "14_2", "14_3", "14_4"]
    # a column with missing values sorts them last in both directions
    for rev in (False, True):
        assert job_rows(queue, NOW, Filter(), "run", rev)[-1].run(NOW) is None
    cache = JobRowCache()
    first = job_rows(queue, NOW, Filter(), cache=cache)
    again = job_rows(queue, NOW + 5, Filter(), cache=cache)
    assert all(a is b for a, b in zip(first, again))  # unchanged jobs keep their row objects


def test_node_rows_from_telemetry_and_without() -> None:
    api = FakeApi()
    h = History()
    h.add(api.nodes)
    rows = {r.name: r for r in node_rows(api.nodes, h, Filter())}
    assert rows["gpu01"].foreign == 1 and rows["gpu01"].temp_max is not None
    assert rows["gpu02"].unhealthy == 1 and rows["gpu02"].state == "DRAINING"
    assert rows["gpu03"].util is None and rows["gpu03"].reason.startswith("silent")
    assert rows["aws-g5-1"].site == "cloud:aws" and rows["aws-g5-1"].price == pytest.approx(1.006)
    assert [r.name for r in node_rows(api.nodes, h, parse_filter("user:x state:un"))] == ["gpu03"]


def test_gpus_and_processes_flag_foreign_ones() -> None:
    api = FakeApi()
    allocs = allocations(api.op_queue(all=True))
    gpu01 = next(n for n in api.nodes if n["name"] == "gpu01")
    gpus = gpu_rows(gpu01, History(), allocs)
    assert [g.jobs for g in gpus][:6] == ["12", "12", "12", "12", "14_3", "17"]
    procs = proc_rows(gpu01, allocs)
    foreign = [p for p in procs if p.foreign]
    assert [(p.pid, p.user, p.gpu) for p in foreign] == [(9876, "mallory", 7)]
    assert any(p.pid is None and p.job == "17" for p in procs)  # placed, not yet seen by the agent
    assert [p.job for p in proc_rows(gpu01, allocs, gpu=4)] == ["14_3"]


def test_events_user_filter_matches_actor_or_owner() -> None:
    ev = FakeApi().op_events()
    assert {e.job for e in event_rows(ev, parse_filter("user:bob"))} == {"14", "14_2", "14_3"}
    assert [e.actor for e in event_rows(ev, parse_filter("priority"))] == ["root"]


def test_history_keeps_a_sample_once_and_forgets_removed_nodes() -> None:
    api = FakeApi()
    h = History(size=5)
    for _ in range(3):
        h.add(api.nodes)  # the same agent sample polled three times
    assert len(h.node_util["gpu01"]) == 1 and len(h.gpus[("gpu01", 0)].util) == 1
    h.forget({"gpu02"})
    assert "gpu01" not in h.node_util and ("gpu01", 0) not in h.gpus


def test_cells_state_values_in_text() -> None:
    assert cells.bar(50, 100, 4) == "██  "
    assert cells.spark([0, 50, 100, None], 100, 6) == "  ▁▄█ "
    assert cells.column_chart([100, 50], 100, 2, 2) == ["█ ", "██"]
    assert (cells.mib(512), cells.mib(81920), cells.mib(None)) == ("512M", "80.0G", "–")
    assert (cells.money(1.006), cells.money(1234), cells.watts(12500)) == ("$1.01", "$1,234", "12.5kW")


def test_narrow_tables_drop_the_least_important_columns() -> None:
    cols = [Column("a", "A", 10, keep=9), Column("b", "B", 10, keep=1), Column("c", "C", 10, keep=5, flex=True)]
    assert [(c.key, w) for _i, c, w in layout(cols, 40)] == [("a", 10), ("b", 10), ("c", 18)]
    assert [(c.key, w) for _i, c, w in layout(cols, 25)] == [("a", 10), ("c", 14)]


def test_submit_and_queue_never_import_textual() -> None:
    code = ("import sys; from hybridctl.cli.main import build_parser, main; build_parser();"
            "import hybridctl.cli.main as m; import hybridctl.core.spec;"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('textual', 'rich') or k.startswith('hybridctl.tui')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "hybridctl.cli.main", "submit", "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "textual" not in res.stderr


def test_no_command_without_a_terminal_prints_help() -> None:
    res = subprocess.run([sys.executable, "-m", "hybridctl.cli.main"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    assert res.returncode == 0 and "usage: hybridctl" in res.stdout


# ---- efficiency, history, waste (issue #16) ------------------------------------------------------


def test_reserved_start_and_idle_badge_on_queue_rows() -> None:
    from hybridctl.tui.model import idle_text, reserved_start

    assert reserved_start("reserved: starts ~14:05 on gpu01 and gpu02 (8 GPUs each)") == "~14:05"
    assert reserved_start("reserved: starts as soon as possible on gpu01 (1 GPU)") == "soon"
    assert reserved_start("resources: 8 A100 free on no node") is None
    assert idle_text(2520) == "IDLE 42m" and idle_text(7200) == "IDLE 2.0h" and idle_text(None) == ""
    rows = {r.label: r for r in job_rows(FakeApi().call("queue", {"all": True}), NOW, Filter())}
    assert rows["13"].idle_s == 2520 and rows["12"].idle_s is None
    assert rows["16"].starts == "~23:40" and rows["18"].starts is None
    assert [r.label for r in job_rows(FakeApi().call("queue", {"all": True}), NOW, parse_filter("idle"))] == ["13"]


def test_eff_text_states_every_figure() -> None:
    from hybridctl.tui.model import eff_text

    lines = dict(eff_text(FakeApi().call("eff", {"job": "12"})))
    assert lines["GPU util"] == "mean 74% · p95 95% · SM 63%"
    assert lines["GPU memory"] == "peak 40.6G of 80.0G"
    assert lines["GPU-hours"] == "2.98 used / 4.00 held (74%)"
    assert lines["CPU"] == "62% of 8 CPUs" and lines["memory"] == "peak RSS 23.0G of 64.0G"
    idle = eff_text(FakeApi().call("eff", {"job": "13"}))
    assert idle[0] == ("IDLE", "every GPU idle for 42:00")
    # a record with nothing measured yet (a job just placed on a node without telemetry)
    bare = dict(eff_text({"gpus": [], "gpu_hours_held": 0.0, "gpu_hours_used": 0.0, "util_mean": None,
                          "cpus": 1.0, "cpu_efficiency": None, "peak_rss_mb": None, "wall_s": 0.0}))
    assert bare["GPU util"] == "mean – · p95 –" and bare["GPU-hours"] == "0.00 used / 0.00 held"


def test_history_series_for_the_sparklines() -> None:
    from hybridctl.tui.model import gpu_util_chart, mean_series, metric_charts, metric_value

    assert mean_series([[[1, 10], [2, 20]], [[1, 30], [2, None], [3, 50]]]) == [20.0, 20.0, 50.0]
    hist = FakeApi().call("history", {"job": "12"})
    assert len(gpu_util_chart(hist)) == 60
    names = [n for n, _v in metric_charts(hist)]
    assert names == ["loss", "tokens_per_s"]  # `step` is an axis, not a chart; loss first
    assert metric_charts({"metrics": {"zeta": [[1, 1.0]], "lr": [[1, 0.1]], "loss": [[1, 2.0]], "acc": [[1, 0.5]]}},
                         limit=3) == [("loss", [2.0]), ("lr", [0.1]), ("acc", [0.5])]
    assert gpu_util_chart(None) == [] and metric_charts({}) == []
    assert [metric_value(v) for v in (0.4261, 38919.4, 2.5e-05, 3e7)] == ["0.4261", "38919", "2.5e-05", "3e+07"]


def test_waste_rows_sort_by_gpu_hours_held_idle() -> None:
    from hybridctl.tui.model import waste_jobs, waste_users

    api = FakeApi()
    active = api.call("queue", {"all": True, "states": ["STARTING", "RUNNING"]})
    effs = {lbl: api.call("eff", {"job": lbl}) for lbl in ("12", "13", "14_3", "15")}
    jobs = waste_jobs(active, effs, Filter())
    assert [r.key for r in jobs] == ["12", "13", "14_3", "15", "17"]  # 17: no record yet, last
    assert jobs[-1].held is None and jobs[-1].wasted is None
    assert jobs[0].wasted == pytest.approx(4.0 - 2.9767, abs=1e-3) and jobs[1].idle_s == 2520
    assert [r.key for r in waste_jobs(active, effs, parse_filter("@carol"))] == ["13"]
    assert all(r.wasted is None for r in waste_jobs(active, {}, Filter()))  # no eff yet: not guessed
    users = waste_users(api.call("usage", {"by": "user"}), Filter())
    assert [u.user for u in users] == ["bob", "carol", "alice", "dave"]
    assert users[0].wasted == pytest.approx(25.8) and users[1].util == pytest.approx(100 * 2.1 / 25.5)
    # a controller without history: no held/used figures, rows kept, sorted last
    plain = waste_users([{"user": "x", "gpu_hours": 3.0, "job_hours": 3.0}], Filter())
    assert plain[0].wasted is None and plain[0].util is None


def test_waste_reads_eff_of_running_gpu_jobs_only_those_the_caller_may_see() -> None:
    from hybridctl.tui.screens.waste import MAX_EFF, eff_targets

    active = FakeApi().call("queue", {"all": True, "states": ["STARTING", "RUNNING"]})
    # placed jobs (STARTING too: it holds its GPUs), the most GPU-time first
    assert eff_targets(active, {"user": "alice", "admin": True}, NOW) == ["12", "13", "14_3", "15", "17"]
    assert eff_targets(active, {"user": "alice", "admin": False}, NOW) == ["12", "17"]
    many = [{"job_id": i, "task": 0, "user": "u", "gpus": 1, "state": "RUNNING", "started_at": NOW - i}
            for i in range(1, MAX_EFF + 50)]
    got = eff_targets(many, {"admin": True}, NOW)
    assert len(got) == MAX_EFF and got[0] == str(MAX_EFF + 49)  # the longest held first


def test_waste_is_a_view() -> None:
    assert parse_command("waste") == Command("view", "waste")
    assert parse_command(":idle") == Command("view", "waste")


def test_hidden_columns_are_left_out_of_the_layout() -> None:
    cols = [Column("a", "A", 3), Column("sm", "SM", 4), Column("b", "B", 3, flex=True)]
    assert [(i, c.key) for i, c, _w in layout(cols, 40, frozenset({"sm"}))] == [(0, "a"), (2, "b")]
    assert [c.key for _i, c, _w in layout(cols, 40)] == ["a", "sm", "b"]


def test_the_job_screen_says_what_earlier_attempts_taught_and_what_the_scheduler_rules_do() -> None:
    from hybridctl.tui.screens.job import spec_text

    api = FakeApi()
    job = api.call("show", {"job": str(api.jobs[0]["job_id"])})
    assert "earlier attempt" not in spec_text(job, NOW).plain
    job["earlier_run"] = {"task": 0, "ran_s": 11400.0, "expected_s": 22800.0,
                          "text": "ran 3h 10m in an earlier attempt without finishing: expected ≥ 6h 20m"}
    assert "ran 3h 10m in an earlier attempt without finishing: expected ≥ 6h 20m" in spec_text(job, NOW).plain
    job["preemptible_by"] = "it checkpoints and has no deadline (scheduler.preempt_checkpointing)"
    job["priority_boost"] = 10
    text = spec_text(job, NOW).plain
    assert "preemptible: it checkpoints and has no deadline (scheduler.preempt_checkpointing)" in text
    assert "priority +10: a job over several nodes (scheduler.multi_node_priority)" in text
