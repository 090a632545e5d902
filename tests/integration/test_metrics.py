"""The Prometheus endpoint: a real HTTP scrape of an Exporter fed from a real controller's store,
parsed with prometheus-client's text-format parser (what Prometheus itself accepts)."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybridctl.config import ConfigError, NodeConfig, Settings, parse_listen
from hybridctl.control.identity import Caller
from hybridctl.control.metrics import Exporter, MetricsSnapshot, snapshot_of
from hybridctl.control.nodes import config_record
from hybridctl.control.service import Controller
from hybridctl.store.sqlite import Store
from tests.conftest import free_port
from tests.integration.workloads import FakeFleet

REPO = str(Path(__file__).resolve().parents[2])

ALICE = Caller(1001, 1001, "alice", "lab", admin=False)


def gpu(index: int, util: int, procs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-{index:04d}", "name": "NVIDIA A100", "healthy": True,
            "health_reason": None, "util_gpu": util, "util_mem": 10, "mem_used_mb": 1000,
            "mem_total_mb": 40960, "temp_c": 40, "power_w": 120.5, "power_limit_w": 400.0,
            "clock_sm_mhz": 1410, "clock_mem_mhz": 1215, "sm_util": 30, "ecc_corrected": 2,
            "ecc_uncorrected": 0, "processes": procs or []}


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Controller]:
    store = Store(tmp_path / "hybridctl.db")
    store.add_node(config_record(NodeConfig(name="n1", gpus="2xA100", cpus=8, memory="64G", simulated=True)),
                   1_700_000_000.0)
    c = Controller(store, Settings(home=str(tmp_path)), clock=lambda: 1_700_000_000.0)
    yield c
    store.close()


def scrape(snapshot: MetricsSnapshot) -> dict[str, Any]:
    exporter = Exporter("127.0.0.1:0")
    port = exporter.start()
    try:
        exporter.update(snapshot)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        exporter.stop()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_a_scrape_carries_dcgm_gpu_series_with_the_holding_job_and_user(ctl: Controller) -> None:
    job = ctl.op_submit(ALICE, {"run": "sleep 100", "resources": {"accelerators": "A100:1"}})["id"]
    ctl.schedule()
    held = ctl.store.open_allocations()[0].gpus[0]
    ctl.fleet = FakeFleet({"n1": {"seq": 1, "time": 1.0, "host": {"cpu_percent": 12.5, "memory_used_mb": 100},
                                  "gpus": [gpu(held, 0, [{"pid": 5, "user": "alice", "job": f"{job}.a0.r0"}]),
                                           gpu(1 - held, 97, [{"pid": 9, "user": "mallory", "job": None}])]}})
    families = scrape(snapshot_of(ctl, idle={str(job): 1800.0}, job_metrics={str(job): {"loss": 0.25}}))

    util = {s.labels["gpu"]: s for s in families["DCGM_FI_DEV_GPU_UTIL"].samples}
    assert util[str(held)].value == 0 and util[str(1 - held)].value == 97
    assert util[str(held)].labels["hpc_job"] == str(job) and util[str(held)].labels["user"] == "alice"
    assert util[str(1 - held)].labels["hpc_job"] == ""
    assert {"gpu", "UUID", "modelName", "Hostname", "device"} <= set(util[str(held)].labels)
    assert util[str(held)].labels["Hostname"] == "n1" and util[str(held)].labels["modelName"] == "NVIDIA A100"
    free = {s.labels["gpu"]: s.value for s in families["DCGM_FI_DEV_FB_FREE"].samples}
    assert free[str(held)] == 40960 - 1000
    for name in ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
                 "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK"):
        assert len(families[name].samples) == 2, name
    ecc = families["DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"]  # DCGM's exact name (no `_total` appended)
    assert [s.name for s in ecc.samples] == ["DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"] * 2 and ecc.samples[0].value == 2
    foreign = {s.labels["gpu"]: s.value for s in families["hybridctl_gpu_foreign_processes"].samples}
    assert foreign == {str(held): 0.0, str(1 - held): 1.0}

    states = [(s.labels["hpc_job"], s.labels["user"], s.labels["state"]) for s in families["hybridctl_job_state"].samples]
    assert (str(job), "alice", "STARTING") in states
    assert families["hybridctl_queue_pending"].samples[0].value == 0
    spend = families["hybridctl_cloud_spend_usd"]
    assert spend.type == "counter" and spend.samples[0].name == "hybridctl_cloud_spend_usd_total"
    assert [s.value for s in families["hybridctl_job_idle_seconds"].samples] == [1800.0]
    logged = families["hybridctl_job_metric"].samples[0]
    assert (logged.labels["name"], logged.value) == ("loss", 0.25)
    node = [s.labels for s in families["hybridctl_node_state"].samples]
    assert node == [{"Hostname": "n1", "site": "onprem", "state": "UP"}]
    assert families["hybridctl_node_cpu_percent"].samples[0].value == 12.5


def test_each_owners_cloud_spend_this_period_and_budget_are_series(ctl: Controller) -> None:
    import dataclasses

    from hybridctl.control.budget import utc_day

    burst = dataclasses.replace(ctl.settings.cloud.burst, user_budget_usd={"*": 50.0}, group_budget_usd={"ml": 900.0})
    ctl.settings = dataclasses.replace(ctl.settings, cloud=dataclasses.replace(ctl.settings.cloud, burst=burst))
    now = ctl.clock()  # 2023-11-14: last month's spend is not this period's
    ctl.store.cloud_accrue("i-1", "c1", [(1, 0, "alice", "lab", 12.5, 1.0), (0, 0, "", "", 3.0, 1.0)], now,
                           utc_day(now), now)
    ctl.store.cloud_accrue("i-1", "c1", [(1, 0, "alice", "lab", 99.0, 1.0)], now, "2023-10-31", now)
    families = scrape(snapshot_of(ctl))
    spent = {(s.labels["kind"], s.labels["name"]): s.value for s in families["hybridctl_cloud_owner_spend_usd"].samples}
    assert spent == {("user", "alice"): 12.5, ("group", "lab"): 12.5}  # idle time is no one's
    budgets = {(s.labels["kind"], s.labels["name"]): s.value
               for s in families["hybridctl_cloud_owner_budget_usd"].samples}
    assert budgets == {("user", "alice"): 50.0, ("group", "ml"): 900.0}


def test_a_pending_job_counts_in_the_queue_and_a_node_without_telemetry_has_no_gpu_series(ctl: Controller) -> None:
    ctl.op_submit(ALICE, {"run": "true", "resources": {"accelerators": "A100:2"}})
    ctl.op_submit(ALICE, {"run": "true", "resources": {"accelerators": "A100:2"}})
    ctl.schedule()
    families = scrape(snapshot_of(ctl))
    assert families["hybridctl_queue_pending"].samples[0].value == 1
    assert families["DCGM_FI_DEV_GPU_UTIL"].samples == []


@pytest.mark.parametrize("listen, allow, ok", [
    ("127.0.0.1:9400", False, True), ("[::1]:9400", False, True), ("localhost:9400", False, True),
    ("0.0.0.0:9400", False, False), ("10.0.0.5:9400", False, False), ("0.0.0.0:9400", True, True),
    ("127.0.0.1", False, False), ("127.0.0.1:99999", False, False), (":9400", False, False),
    ("127.0.0.1:٩٤٠٠", False, False), ("127.0.0.1:²", False, False),  # digits, but not ASCII ones
])
def test_the_endpoint_binds_loopback_unless_remote_is_allowed(listen: str, allow: bool, ok: bool) -> None:
    if ok:
        assert parse_listen(listen, allow)[1] == 9400
    else:
        with pytest.raises(ConfigError, match="metrics.listen"):
            parse_listen(listen, allow)


def test_a_taken_port_names_the_setting() -> None:
    first = Exporter("127.0.0.1:0")
    port = first.start()
    try:
        with pytest.raises(OSError, match="metrics.listen"):
            Exporter(f"127.0.0.1:{port}").start()
    finally:
        first.stop()


# ---- a real controller, a real agent node over sshd -------------------------------------------------


@pytest.fixture
def observed_lab(tmp_path: Path) -> Iterator[Any]:
    """One real sshd + agent node (8 simulated A100s) and a controller with the endpoint on, idle
    detection after 3 s, and a notify hook that records its arguments."""
    from tests.integration.harness import make_controller
    from tests.integration.nodes import FLEET_CONFIG, SshLab
    from tests.integration.sshd import require_sshd

    require_sshd()
    lab = SshLab(tmp_path)
    for name in ("node2", "node3"):
        del lab.nodes[name]
    port = free_port()
    hook = tmp_path / "notified"
    config = {**FLEET_CONFIG, "metrics": {"listen": f"127.0.0.1:{port}", "job_metrics": True},
              "idle": {"util_below": 5.0, "after": 3.0, "action": "notify",
                       "notify_command": [sys.executable, "-c",
                                          f"import sys; open({str(hook)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')"]}}
    lab.controller = make_controller(tmp_path / "ctl", config)
    lab.metrics_port, lab.hook = port, hook
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


def test_a_sleeping_job_is_flagged_shows_no_gpu_use_and_a_logged_loss_reaches_show(observed_lab: Any) -> None:
    import json as _json
    import shlex

    from tests.waiting import wait_for

    lab, ctl = observed_lab, observed_lab.controller
    idle = ctl.cli("submit", "--gpus", "A100:2", "--env", "SIMULATED_GPU_UTIL=0", "--", "sleep 300",
                   check=True).stdout.strip()
    script = ("from hybridctl import job; import time\n"
              "for step in range(1, 6): job.log(step=step, loss=1.0 / step)\n"
              "job.flush(); time.sleep(300)\n")
    busy = ctl.cli("submit", "--gpus", "A100:1", "--env", f"PYTHONPATH={REPO}", "--",
                   f"{sys.executable} -c {shlex.quote(script)}", check=True).stdout.strip()
    lab.wait_state(idle, "RUNNING")
    lab.wait_state(busy, "RUNNING")

    flagged = wait_for(lambda: (t := lab.task(idle)).get("idle_s") is not None and t, 60,
                       what=f"job {idle} flagged idle (log: {ctl.log})")
    assert flagged["idle_s"] >= 3.0
    assert lab.task(busy).get("idle_s") is None
    queue = {str(r["job_id"]): r for r in ctl.cli_json("queue")}
    assert queue[idle]["idle_s"] >= 3.0
    lines = {line.split()[0]: line for line in ctl.cli("queue", check=True).stdout.splitlines()[1:]}
    assert "IDLE" in lines[idle] and "IDLE" not in lines[busy]
    events = ctl.cli_json("show", idle)["events"]
    assert any(e["reason"].startswith("idle: every GPU under 5%") for e in events)
    wait_for(lambda: lab.hook.exists() and lab.hook.read_text(), 30, what="the notify hook ran")
    job_arg, user, node, seconds = lab.hook.read_text().split()[:4]
    assert (job_arg, node) == (idle, "node1") and float(seconds) >= 3

    shown = wait_for(lambda: (t := lab.task(busy)).get("metrics") and t, 60, what="job.log values in show")
    assert shown["metrics"] == {"step": 5.0, "loss": 0.2}
    text = ctl.cli("show", busy, check=True).stdout
    assert "logged  loss=0.2  step=5" in text

    eff = wait_for(lambda: (e := _json.loads(ctl.cli("eff", idle, "--json", check=True).stdout))["gpus"][0]["samples"] >= 3
                   and e, 60, what="eff with samples")
    assert [g["index"] for g in eff["gpus"]] == sorted(eff["gpus"][i]["index"] for i in range(2))
    assert all(g["util_mean"] is not None and g["util_mean"] < 2 for g in eff["gpus"])
    assert eff["gpu_hours_used"] <= 0.02 * eff["gpu_hours_held"] + 1e-9 and eff["idle_s"] >= 3
    assert "GPU-hours used" in ctl.cli("eff", idle, check=True).stdout
    assert "USED" in ctl.cli("usage", check=True).stdout
    busy_eff = _json.loads(ctl.cli("eff", busy, "--json", check=True).stdout)
    assert busy_eff["gpus"][0]["util_mean"] is None or busy_eff["gpus"][0]["util_mean"] > 50
    assert busy_eff["metrics"].get("loss") in (None, 0.2)

    def scrape_real() -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{lab.metrics_port}/metrics", timeout=10) as resp:
            fams = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
        held = [s for s in fams["DCGM_FI_DEV_GPU_UTIL"].samples if s.labels["hpc_job"] == idle]
        return len(held) == 2 and fams["hybridctl_job_idle_seconds"].samples and fams

    fams = wait_for(scrape_real, 30, what="a scrape with the idle job's GPUs")
    assert len(fams["DCGM_FI_DEV_GPU_UTIL"].samples) == 8
    assert {s.labels["Hostname"] for s in fams["DCGM_FI_DEV_GPU_UTIL"].samples} == {"node1"}
    assert [s.labels["hpc_job"] for s in fams["hybridctl_job_idle_seconds"].samples] == [idle]
    assert any(s.labels["name"] == "loss" and s.value == 0.2 for s in fams["hybridctl_job_metric"].samples)

    ctl.cli("cancel", idle, busy, check=True)
    lab.wait_state(idle, "CANCELLED")
    after = _json.loads(ctl.cli("eff", idle, "--json", check=True).stdout)
    assert after["state"] == "CANCELLED" and after["gpus"][0]["samples"] >= 3


# ---- the observer in-process: a real store, a fake fleet, an injected clock ----------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("action, final", [("cancel", "CANCELLED"), ("requeue", "PREEMPTED")])
def test_an_idle_job_is_stopped_after_the_grace_when_the_policy_says_so(tmp_path: Path, action: str,
                                                                        final: str) -> None:
    from hybridctl.config import IdleConfig, MetricsConfig
    from hybridctl.control.metrics import Observer

    clock = Clock()
    store = Store(tmp_path / "hybridctl.db")
    store.add_node(config_record(NodeConfig(name="n1", gpus="2xA100", cpus=8, memory="64G", simulated=True)), clock())
    settings = Settings(home=str(tmp_path), metrics=MetricsConfig(history=False),
                        idle=IdleConfig(util_below=5, after=60, grace=30, action=action))
    ctl = Controller(store, settings, clock=clock)
    job = ctl.op_submit(ALICE, {"run": "sleep 1000", "resources": {"accelerators": "A100:1"}})["id"]
    ctl.schedule()
    held = store.open_allocations()[0][3][0]
    fleet = FakeFleet({})
    obs = Observer(store, settings, ctl.lifecycle, fleet, clock)
    try:
        for step in range(0, 100, 5):
            clock.t += 5
            fleet.samples = {"n1": {"seq": step, "time": clock.t, "host": {},
                                    "gpus": [gpu(held, 0, [{"pid": 5, "user": "alice", "job": f"{job}.a0.r0"}]),
                                             gpu(1 - held, 0, [{"pid": 6, "user": "alice", "job": f"{job}.a0.r0"}])]}}
            obs.tick(clock.t)
            state = ctl.op_show(ALICE, str(job))["tasks"][0]["state"]
            if clock.t - 1_700_000_000.0 < 60 + 5:
                assert obs.idle == {} and state == "STARTING"
        # a cancel stops processes only on nodes with an agent (n1 is declared-only); a requeue asks n1 too
        assert state == final and fleet.kicked == ([] if action == "cancel" else ["n1"])
        events = ctl.op_show(ALICE, str(job))["events"]
        assert any(e["reason"].startswith("idle: every GPU under 5%") for e in events)
        stray = obs.misplaced[("n1", 1 - held, 6)]  # the job's process on the GPU it was not given
        assert (stray["user"], stray["job"]) == ("alice", f"{job}.a0.r0")
    finally:
        obs.close()
        store.close()


def test_eff_and_history_ops_read_what_the_observer_stored(tmp_path: Path) -> None:
    import asyncio

    from hybridctl.control.metrics import Observer
    from tests.waiting import wait_for

    clock = Clock()
    store = Store(tmp_path / "hybridctl.db")
    store.add_node(config_record(NodeConfig(name="n1", gpus="2xA100", cpus=8, memory="64G", simulated=True)), clock())
    settings = Settings(home=str(tmp_path))
    fleet = FakeFleet({})
    ctl = Controller(store, settings, clock=clock, fleet=fleet)
    job = ctl.op_submit(ALICE, {"run": "train", "resources": {"accelerators": "A100:1", "cpus": 2}})["id"]
    ctl.schedule()
    held = store.open_allocations()[0][3][0]
    obs = Observer(store, settings, ctl.lifecycle, fleet, clock)
    ctl.observer = obs
    try:
        for step in range(1, 31):
            clock.t += 1
            fleet.samples = {"n1": {"seq": step, "time": clock.t, "host": {"cpu_percent": 10.0},
                                    "gpus": [gpu(held, 80), gpu(1 - held, 0)],
                                    "jobs": {f"{job}.a0.r0": {"cpu_seconds": 2.0 * step, "rss_mb": 100 + step,
                                                               "peak_rss_mb": 100 + step,
                                                               "metrics": {"loss": 1.0 / step}}}}}
            obs.tick(clock.t)
        wait_for(lambda: obs.writer.queue.unfinished_tasks == 0 or obs.writer.queue.empty(), 30, what="history written")
        eff = wait_for(lambda: (e := asyncio.run(ctl.op_eff(ALICE, str(job))))["gpus"][0]["samples"] >= 30 and e, 30,
                       what="30 samples in eff")
        (g,) = eff["gpus"]
        assert (g["index"], g["util_mean"], g["util_p95"], g["sm_mean"]) == (held, 80.0, 80.0, 30.0)
        assert eff["cpu_efficiency"] == pytest.approx(60.0 / (2 * 31), abs=0.05)
        assert eff["peak_rss_mb"] == 130 and eff["metrics"]["loss"] == pytest.approx(1 / 30, rel=1e-3)
        assert ctl.op_show(ALICE, str(job))["tasks"][0]["metrics"] == {"loss": pytest.approx(1 / 30)}
        hist = asyncio.run(ctl.op_history(ALICE, job=str(job)))
        assert len(hist["gpus"][0]["util"]) == 30 and len(hist["metrics"]["loss"]) == 30
        node = asyncio.run(ctl.op_history(ALICE, node="n1", seconds=600))
        assert len(node["gpus"][str(1 - held)]["util"]) == 30 and node["host"]["cpu"][0][1] == 10.0
        (usage,) = ctl.op_usage(ALICE, by="group")
        assert usage["group"] == "lab" and usage["gpu_hours_observed"] == pytest.approx(29 / 3600, abs=1e-4)
        assert usage["gpu_hours_used"] == pytest.approx(0.8 * 29 / 3600, abs=1e-4)  # one GPU held at 80 %
        with pytest.raises(Exception, match="may not see"):
            asyncio.run(ctl.op_eff(Caller(1002, 1002, "bob", "lab", admin=False), str(job)))
    finally:
        obs.close()
        store.close()


@pytest.mark.parametrize("on", [False, True])
def test_logged_values_reach_the_endpoint_only_when_metrics_job_metrics_is_on(tmp_path: Path, on: bool) -> None:
    """`show` hides a job's `job.log` values from other users; the endpoint has no caller, so it
    serves them only when `metrics.job_metrics` is true (default false). The owner's `show` has
    them either way."""
    from hybridctl.config import MetricsConfig
    from hybridctl.control.metrics import Observer

    clock = Clock()
    store = Store(tmp_path / "hybridctl.db")
    store.add_node(config_record(NodeConfig(name="n1", gpus="2xA100", cpus=8, memory="64G", simulated=True)), clock())
    settings = Settings(home=str(tmp_path), metrics=MetricsConfig(listen="127.0.0.1:0", history=False,
                                                                  **({"job_metrics": True} if on else {})))
    fleet = FakeFleet({})
    ctl = Controller(store, settings, clock=clock, fleet=fleet)
    job = ctl.op_submit(ALICE, {"run": "train", "resources": {"accelerators": "A100:1"}})["id"]
    ctl.schedule()
    held = store.open_allocations()[0][3][0]
    obs = Observer(store, settings, ctl.lifecycle, fleet, clock)
    ctl.observer = obs
    port = obs.exporter.start()
    try:
        clock.t += 1
        fleet.samples = {"n1": {"seq": 1, "time": clock.t, "host": {}, "gpus": [gpu(held, 80), gpu(1 - held, 0)],
                                "jobs": {f"{job}.a0.r0": {"metrics": {"secret_loss": 0.5}}}}}
        obs.tick(clock.t)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["hybridctl_job_state"].samples  # the snapshot was served
        logged = [(s.labels["name"], s.value) for s in fams.get("hybridctl_job_metric", None).samples] \
            if "hybridctl_job_metric" in fams else []
        assert logged == ([("secret_loss", 0.5)] if on else [])
        assert ("secret_loss" in text) is on
        assert ctl.op_show(ALICE, str(job))["tasks"][0]["metrics"] == {"secret_loss": 0.5}
    finally:
        obs.close()
        store.close()
