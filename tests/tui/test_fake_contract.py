"""`tui/fake.py` stands in for the controller in the TUI's snapshot tests and `hybridctl demo
--fake`: its replies must keep the real controller's keys, or the snapshots test a TUI reading
fields the controller never sends (or missing ones it does). Asked of a real controller process.

Compared: every op the TUI sends (`ping`, `nodes`, `queue`, `show`, `events`, `eff`, `history`,
`usage`, and the actions `submit`, `cancel`, `priority`, `drain`, `resume`), at the levels the TUI
reads (a node's GPUs, a job's tasks, events and spec, an efficiency record's GPUs, a history's GPU
series). Not compared here: `logs` (the simulated nodes of this fleet never
run a job) and node `telemetry` (an agent's sample, checked by core/wire.py); the cloud ops are
compared in tests/cloud/test_tui_cloud.py, whose lab has a real burst node."""

from __future__ import annotations

from typing import Any

import pytest

from hybridctl.control.client import Client
from hybridctl.core.spec import apply_flags
from hybridctl.tui.fake import FakeApi
from tests.integration.harness import ControllerProc
from tests.tui.helpers import same_keys as _same
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def replies(controller: ControllerProc) -> dict[str, Any]:
    """The controller's replies to what the TUI asks, with a job placed and an event or two."""
    out: dict[str, Any] = {}
    with Client(controller.socket) as c:
        spec = apply_flags({}, gpus="1", name="contract", run=["sleep", "100"])
        out["submit"] = c.call("submit", spec=spec, source="test")
        job = str(out["submit"]["id"])
        wait_for(lambda: c.call("show", job=job)["tasks"][0]["state"] != "PENDING", 30, what=f"job {job} placed")
        out["ping"] = c.call("ping")
        out["nodes"] = c.call("nodes")
        out["queue"] = c.call("queue", all=True)
        out["show"] = c.call("show", job=job)
        out["events"] = c.call("events", limit=20)
        out["eff"] = c.call("eff", job=job)
        out["history"] = c.call("history", job=job)
        out["usage"] = c.call("usage", by="user")
        out["priority"] = c.call("priority", job=job, priority=3)
        out["drain"] = c.call("drain", node="gpu03", reason="contract test")
        out["resume"] = c.call("resume", node="gpu03")
        out["cancel"] = c.call("cancel", jobs=[job])
    return out


@pytest.mark.parametrize("op,args", [
    ("ping", {}), ("queue", {"all": True}), ("events", {"limit": 20}), ("submit", {"spec": {"run": "true"}}),
    ("priority", {"job": "12", "priority": 3}), ("drain", {"node": "gpu01"}), ("resume", {"node": "gpu01"}),
    ("cancel", {"jobs": ["12"]}), ("eff", {"job": "12"}), ("history", {"job": "12"}), ("usage", {"by": "user"}),
])
def test_the_fake_answers_with_the_controllers_keys(replies: dict[str, Any], op: str, args: dict[str, Any]) -> None:
    _same(op, replies[op], FakeApi().call(op, args))


def test_a_node_has_the_controllers_keys(replies: dict[str, Any]) -> None:
    fake = [n for n in FakeApi().call("nodes", {}) if n["site"] == "onprem"]
    _same("nodes", replies["nodes"], fake)
    # store.NodeRecord.gpus: {index, model, memory_mb?, healthy?, reason?, foreign?}; the ? ones come
    # with the agent's first report, which this fleet's simulated-by-config nodes never send.
    _same("a node's gpus", replies["nodes"][0]["gpus"], fake[0]["gpus"],
          optional=frozenset({"memory_mb", "healthy", "reason", "foreign"}))


def test_a_job_has_the_controllers_keys(replies: dict[str, Any]) -> None:
    real, fake = replies["show"], FakeApi().call("show", {"job": "12"})
    _same("show", real, fake)
    _same("show: tasks", real["tasks"], fake["tasks"])
    _same("show: events", real["events"], fake["events"])
    _same("show: spec", real["spec"], fake["spec"])
    # job 12 of the fake has accelerator candidates; the contract job has one GPU type
    _same("show: spec.resources", real["spec"]["resources"], fake["spec"]["resources"],
          optional=frozenset({"alternatives", "ordered"}))


def test_efficiency_and_history_have_the_controllers_keys(replies: dict[str, Any]) -> None:
    fake = FakeApi()
    _same("eff: gpus", replies["eff"]["gpus"], fake.call("eff", {"job": "12"})["gpus"])
    _same("history: gpus", replies["history"]["gpus"], fake.call("history", {"job": "12"})["gpus"])
