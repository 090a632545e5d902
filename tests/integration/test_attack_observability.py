"""Attacks on the observability features (issue #16): a node lying about jobs it does not run, a
job flooding metric names, hostile strings in Prometheus labels, another user reading a job's
efficiency/history/logged values, and the idle hook (argv only, bounded, its whole group killed).
A real store and history file, a fake fleet, an injected clock (the observer in-process)."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybridctl.config import NodeConfig, Settings
from hybridctl.control.identity import Caller
from hybridctl.control.metrics import Exporter, MetricsSnapshot, Observer
from hybridctl.control.nodes import config_record
from hybridctl.control.service import Controller
from hybridctl.core.errors import PermissionDenied
from hybridctl.store.sqlite import Store
from tests.integration.workloads import FakeFleet
from tests.waiting import wait_for

ALICE = Caller(1001, 1001, "alice", "lab", admin=False)
BOB = Caller(1002, 1002, "bob", "lab", admin=False)
T0 = 1_700_000_000.0


def gpu(index: int, util: float) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-{index}", "name": "NVIDIA A100", "healthy": True, "util_gpu": util,
            "mem_used_mb": 1000, "mem_total_mb": 40960, "processes": []}


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Any]:
    """n1 (2 A100) runs alice's 2-GPU job; n2 (1 A100) runs nothing of hers and lies."""
    clock = Clock()
    store = Store(tmp_path / "hybridctl.db")
    store.add_node(config_record(NodeConfig(name="n1", gpus="2xA100", cpus=8, memory="64G", simulated=True)), T0)
    store.add_node(config_record(NodeConfig(name="n2", gpus="1xA100", cpus=8, memory="64G", simulated=True)), T0)
    settings = Settings(home=str(tmp_path))
    fleet = FakeFleet()
    ctl = Controller(store, settings, clock=clock, fleet=fleet)
    job = ctl.op_submit(ALICE, {"run": "train", "resources": {"accelerators": "A100:2"}})["id"]
    ctl.schedule()
    assert {a[2] for a in store.open_allocations()} == {"n1"}
    obs = Observer(store, settings, ctl.lifecycle, fleet, clock)
    ctl.observer = obs

    lab = SimpleNamespace(ctl=ctl, obs=obs, fleet=fleet, clock=clock, job=job, store=store)
    try:
        yield lab
    finally:
        obs.close()
        store.close()


def flushed(lab: Any, samples: int) -> None:
    """Wait until the writer thread stored `samples` points of the job's GPUs."""
    wait_for(lambda: asyncio.run(lab.ctl.op_eff(ALICE, str(lab.job)))["gpus"][0]["samples"] >= samples, 30,
             what="history written")


def test_a_node_is_not_believed_about_a_job_it_does_not_run(lab: Any) -> None:
    key = f"{lab.job}.a0.r0"
    for step in range(1, 11):
        lab.clock.t += 1
        honest = {"seq": step, "time": lab.clock.t, "gpus": [gpu(0, 90), gpu(1, 90)],
                  "jobs": {key: {"rss_mb": 100, "peak_rss_mb": 100, "metrics": {"loss": 0.5}}}}
        lie = {"seq": step, "time": lab.clock.t, "gpus": [gpu(0, 0)],
               "jobs": {key: {"rss_mb": 900_000, "peak_rss_mb": 900_000, "metrics": {"loss": 666.0, "pwned": 1.0}},
                        f"{lab.job}.a7.r3": {"metrics": {"ghost": 1.0}},
                        **{f"{9000 + i}.a0.r0": {"metrics": {"junk": 1.0}} for i in range(50)}}}
        # the liar's sample comes last, so without a check it overwrites the honest point of that second
        lab.fleet.samples = {"n1": honest, "n2": lie}
        lab.obs.tick(lab.clock.t)
    flushed(lab, 10)
    shown = lab.ctl.op_show(ALICE, str(lab.job))["tasks"][0]["metrics"]
    assert shown == {"loss": 0.5}
    assert not any(k.startswith("9000") or k.startswith("9001") for k in lab.obs.job_metrics)
    eff = asyncio.run(lab.ctl.op_eff(ALICE, str(lab.job)))
    assert eff["peak_rss_mb"] == 100 and eff["metrics"] == {"loss": 0.5}
    hist = asyncio.run(lab.ctl.op_history(ALICE, job=str(lab.job)))
    assert set(hist["metrics"]) == {"loss"} and {v for _t, v in hist["metrics"]["loss"]} == {0.5}
    names = {n for (n,) in lab.obs.writer.history.conn.execute("SELECT name FROM series")}
    assert names == {"node:n1", "node:n2", f"job:{key}"}, "series the liar made up were stored"


def test_a_sample_taken_just_before_a_release_is_not_called_a_lie(lab: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A cancel releases the job on n1 before n1 hears of it: its next sample still names the job.
    That is not believed (the job holds nothing there now) but not logged as a lie either: the
    warning, once per node, must be left for a node that speaks of a job it never held."""
    key = f"{lab.job}.a0.r0"
    lab.ctl.op_cancel(ALICE, [str(lab.job)])
    assert not lab.store.open_allocations()
    lab.clock.t += 5
    late = {"seq": 1, "time": lab.clock.t, "gpus": [gpu(0, 90), gpu(1, 90)],
            "jobs": {key: {"rss_mb": 100, "peak_rss_mb": 100, "metrics": {"loss": 0.5}}}}
    lab.fleet.samples = {"n1": late}
    with caplog.at_level("WARNING", logger="hybridctl.observe"):
        lab.obs.tick(lab.clock.t)
    assert "holds no allocation" not in caplog.text
    assert key not in lab.obs.job_metrics  # not believed all the same
    lab.clock.t += 1
    lab.fleet.samples = {"n1": {**late, "seq": 2, "time": lab.clock.t, "jobs": {"9000.a0.r0": {"metrics": {"x": 1.0}}}}}
    with caplog.at_level("WARNING", logger="hybridctl.observe"):
        lab.obs.tick(lab.clock.t)
    assert "node n1 reported usage of 1 job(s) it holds no allocation for (e.g. 9000.a0.r0)" in caplog.text


def test_a_job_flooding_metric_names_stays_bounded(lab: Any) -> None:
    key = f"{lab.job}.a0.r0"
    for step in range(1, 21):  # a lying or buggy agent: 32 new names every sample
        lab.clock.t += 1
        lab.fleet.samples = {"n1": {"seq": step, "time": lab.clock.t, "gpus": [gpu(0, 50), gpu(1, 50)],
                                    "jobs": {key: {"metrics": {f"m{step}_{i}": 1.0 for i in range(32)}}}}}
        lab.obs.tick(lab.clock.t)
    assert len(lab.obs.job_metrics[str(lab.job)]) <= 32


def test_another_user_reads_no_efficiency_history_or_logged_values(lab: Any) -> None:
    key = f"{lab.job}.a0.r0"
    lab.clock.t += 1
    lab.fleet.samples = {"n1": {"seq": 1, "time": lab.clock.t, "gpus": [gpu(0, 10), gpu(1, 10)],
                                "jobs": {key: {"metrics": {"secret_val_loss": 0.125}}}}}
    lab.obs.tick(lab.clock.t)
    for op in (lambda: lab.ctl.op_eff(BOB, str(lab.job)), lambda: lab.ctl.op_history(BOB, job=str(lab.job)),
               lambda: lab.ctl.op_eff(BOB, f"{lab.job}_0"), lambda: lab.ctl.op_history(BOB, job=f"{lab.job}_0")):
        with pytest.raises(PermissionDenied):
            asyncio.run(op())
    shown = lab.ctl.op_show(BOB, str(lab.job))
    assert shown["tasks"][0]["metrics"] is None and shown["spec"]["run"] != "train"
    assert lab.ctl.op_show(ALICE, str(lab.job))["tasks"][0]["metrics"] == {"secret_val_loss": 0.125}
    rows = lab.ctl.op_queue(BOB, all=True)
    assert rows and "secret_val_loss" not in repr(rows)
    node = asyncio.run(lab.ctl.op_history(BOB, node="n1", seconds=600))  # nodes are everyone's
    assert "secret_val_loss" not in repr(node)


def test_hostile_label_values_are_escaped_in_the_exposition(tmp_path: Path) -> None:
    user = 'eve"} injected_metric 1\n#'
    snap = MetricsSnapshot(tasks=[{"job": "5", "user": user, "state": "RUNNING"}],
                           job_metrics={"5": {"loss": 1.0}})
    exporter = Exporter("127.0.0.1:0")
    port = exporter.start()
    try:
        exporter.update(snap)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        exporter.stop()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert "injected_metric" not in fams
    (s,) = fams["hybridctl_job_state"].samples
    assert s.labels["user"] == user
    (m,) = fams["hybridctl_job_metric"].samples
    assert m.labels["user"] == user and m.value == 1.0


# ---- the idle hook -------------------------------------------------------------------------------------


def test_the_idle_hook_gets_argv_without_a_shell(tmp_path: Path) -> None:
    from hybridctl.control.metrics import _notify

    out, pwned = tmp_path / "args", tmp_path / "pwned"
    hostile = f"$(touch {pwned}); touch {pwned} `touch {pwned}`"
    hook = [sys.executable, "-c", f"import sys; open({str(out)!r}, 'w').write(repr(sys.argv[1:]))"]
    asyncio.run(_notify([*hook, "5", hostile, "n1", "60"]))
    assert out.read_text() == repr(["5", hostile, "n1", "60"]) and not pwned.exists()


def test_a_hook_that_hangs_is_killed_with_everything_it_started(tmp_path: Path, monkeypatch: Any) -> None:
    from hybridctl.control import metrics

    monkeypatch.setattr(metrics, "NOTIFY_TIMEOUT", 1.0)
    pidfile = tmp_path / "pid"
    # a hook that backgrounds a long child and waits: killing only the shell would leave it behind
    hook = ["/bin/sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"]
    asyncio.run(asyncio.wait_for(metrics._notify(hook), 30))
    pid = int(pidfile.read_text())

    def gone() -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split(") ", 1)[1].startswith("Z")
        except FileNotFoundError:
            return True

    try:
        wait_for(gone, 10, what=f"the hook's child {pid} killed")
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


# ---- the real controller, the CLI as another uid (SO_PEERCRED) ------------------------------------------


def test_nobody_cannot_read_roots_job_efficiency_through_the_cli(controller: Any, as_user: Any) -> None:
    import json
    import pwd

    who = pwd.getpwnam("nobody")
    job = controller.cli("submit", "--name", "secret-run", "--", "sleep 100", check=True).stdout.strip()
    res = as_user(controller.env, who.pw_uid, who.pw_gid, "eff", job)
    assert res.code != 0 and "may not see the efficiency of" in res.err, res
    res = as_user(controller.env, who.pw_uid, who.pw_gid, "eff", f"{job}_0", "--json")
    assert res.code != 0 and "may not see the efficiency of" in res.err, res
    shown = as_user(controller.env, who.pw_uid, who.pw_gid, "show", job, "--json")
    assert shown.code == 0, shown
    assert all(t.get("metrics") is None for t in json.loads(shown.out)["tasks"])


def test_a_node_flooding_foreign_processes_logs_and_keeps_a_bounded_amount(lab: Any,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A lying (or very busy) node lists thousands of new processes on its GPUs every sample: the
    warning per misplaced process must not become thousands of log lines per poll, nor grow memory."""
    import logging

    caplog.set_level(logging.WARNING, logger="hybridctl.observe")
    for step in range(1, 4):
        lab.clock.t += 1
        procs = [{"pid": step * 100_000 + i, "user": "mallory", "job": None} for i in range(4096)]
        lab.fleet.samples = {"n2": {"seq": step, "time": lab.clock.t, "gpus": [{**gpu(0, 0), "processes": procs}]}}
        lab.obs.tick(lab.clock.t)
    lines = [r for r in caplog.records if r.name == "hybridctl.observe"]
    assert len(lines) <= 3 * 20, f"{len(lines)} warning lines for 3 samples"
    assert len(lab.obs.misplaced) <= 1024


def test_absurd_values_from_a_node_stay_finite_in_history_eff_and_the_endpoint(lab: Any) -> None:
    """What a node sends passes core.wire first (as in the fleet); what survives, at the edges of
    its ranges, must give eff, history and a scrape that are finite and serialisable."""
    import json

    from hybridctl.control.metrics import snapshot_of
    from hybridctl.core import wire

    key = f"{lab.job}.a0.r0"
    for step in range(1, 6):
        lab.clock.t += 1
        raw = {"seq": step, "time": lab.clock.t,
               "host": {"cpu_percent": float("nan"), "load1": -5, "memory_used_mb": 1e12, "net_rx_bps": 1e308},
               "gpus": [{**gpu(i, 100), "mem_used_mb": 1e9, "mem_total_mb": 1e9, "power_w": 1e5, "temp_c": -100,
                         "pcie_tx_kbps": 1e12, "ecc_corrected": 1e18, "sm_util": float("inf"), "util_mem": -1}
                        for i in (0, 1)],
               "jobs": {key: {"cpu_seconds": 1e12 * step, "rss_mb": 1e12, "peak_rss_mb": 1e12, "cpu_percent": 1e7,
                              "metrics": {"big": 1e300, "small": -1e300, "nan": float("nan"), "huge": 1e308}}}}
        problems: list[Any] = []
        lab.fleet.samples = {"n1": wire.sample(raw, problems)}
        assert problems  # the NaN, the negative load, the infinite SM and the out-of-range values were dropped
        lab.obs.tick(lab.clock.t)
    flushed(lab, 5)
    eff = asyncio.run(lab.ctl.op_eff(ALICE, str(lab.job)))
    json.dumps(eff, allow_nan=False)
    assert eff["metrics"] == {"big": 1e300, "small": -1e300}
    hist = asyncio.run(lab.ctl.op_history(ALICE, job=str(lab.job)))
    json.dumps(hist, allow_nan=False)
    node = asyncio.run(lab.ctl.op_history(ALICE, node="n1", seconds=600))
    json.dumps(node)  # unknown values are null
    exporter = Exporter("127.0.0.1:0")
    port = exporter.start()
    try:
        exporter.update(snapshot_of(lab.ctl, lab.obs.idle, lab.obs.job_metrics))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            fams = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    finally:
        exporter.stop()
    assert {s.value for s in fams["hybridctl_job_metric"].samples} == {1e300, -1e300}


def test_idle_connections_to_the_endpoint_hold_a_bounded_number_of_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any local user reaches a loopback endpoint: 300 half-sent requests held 300 threads in the
    controller for ever (prometheus-client's server: a thread per connection, no timeout)."""
    import socket
    import threading

    from hybridctl.control import metrics

    monkeypatch.setattr(metrics, "SCRAPE_TIMEOUT", 1.0, raising=False)
    exporter = Exporter("127.0.0.1:0")
    port = exporter.start()
    base = threading.active_count()
    socks = []
    try:
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /metr")
            socks.append(s)
        peak = max(threading.active_count() for _ in range(20))
        assert peak <= base + getattr(metrics, "MAX_SCRAPES", 0) + 2, f"{peak - base} threads for 100 idle connections"

        def scraped() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    return b"hybridctl_queue_pending" in resp.read()
            except OSError:
                return False

        wait_for(scraped, 30, what="a scrape once the idle connections timed out")
    finally:
        for s in socks:
            s.close()
        exporter.stop()
