"""The controller believes a node only about that node. A lying node (a real agent with its job
listing doctored, behind a real sshd) claims another node's job as finished, or sends records no
real agent would: the other node's job must keep running, keep its GPUs, its logs and checkpoint,
and the lying node must stay in the fleet for what it reports truthfully."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest

from tests.integration.harness import REPO, ControllerProc, make_controller
from tests.integration.nodes import LabNode
from tests.integration.sshd import Sshd, keygen, require_sshd
from tests.waiting import wait_for

FLEET = {"poll_interval": 0.5, "unreachable_after": 3.0, "lost_after": 8.0, "checkpoint_sync_interval": 1.0}


class LyingNode(LabNode):
    """A node whose agent adds the records of `lies` (a JSON list) to every job listing."""

    @property
    def lies(self) -> Path:
        return self.base / "lies.json"

    def lie(self, records: list[Any]) -> None:
        tmp = self.base / "lies.json.tmp"
        tmp.write_text(json.dumps(records))
        os.replace(tmp, self.lies)

    def start_agent(self) -> None:
        log = open(self.base / "agent.log", "ab")
        self.agent = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "integration" / "lying_agent.py"), "serve", "--socket",
             str(self.socket), "--state-dir", str(self.state_dir), "--simulate-gpus", self.gpus, "--name", self.name,
             "--interval", "0.5"],
            env={**os.environ, "HYBRIDCTL_TEST_LIES": str(self.lies)},
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        wait_for(self.socket.exists, 30, what=f"agent socket of {self.name}")


class Pair:
    """A controller with one honest node (2×A100) and one lying node (2×T4)."""

    def __init__(self, base: Path) -> None:
        key = keygen(base / "id_ed25519")
        self.key = key
        self.honest = LabNode("honest", base / "honest", "2:A100", Sshd(base / "honest" / "sshd", key))
        self.liar = LyingNode("liar", base / "liar", "2:T4", Sshd(base / "liar" / "sshd", key))
        self.ctl: ControllerProc = make_controller(base / "ctl", {"scheduler": {"tick_seconds": 1.0}, "fleet": FLEET})

    def start(self) -> None:
        for n in (self.honest, self.liar):
            n.sshd.start()
            n.start_agent()
        self.ctl.start()
        for n in (self.honest, self.liar):
            res = self.ctl.cli(*n.add_args(self.key), timeout=120)
            assert res.returncode == 0, res.stderr

    def stop(self) -> None:
        self.ctl.stop()
        self.honest.stop()
        self.liar.stop()

    def submit(self, *args: str) -> str:
        return self.ctl.cli("submit", *args, check=True).stdout.strip()

    def task(self, job: str) -> dict[str, Any]:
        return self.ctl.cli_json("show", job)["tasks"][0]

    def wait_state(self, job: str, *states: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: (t := self.task(job))["state"] in states and t, timeout,
                        what=f"job {job} in {states} (controller log: {self.ctl.log})")

    def node_state(self, name: str) -> str:
        return str({n["name"]: n for n in self.ctl.cli_json("nodes")}[name]["state"])


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    require_sshd()
    p = Pair(tmp_path)
    try:
        p.start()
        yield p
    finally:
        p.stop()


def test_a_node_that_lies_about_another_nodes_job_changes_nothing_of_it(pair: Pair) -> None:
    script = 'echo "real $$"; echo real > "$HYBRIDCTL_CHECKPOINT_DIR/state"; exec sleep 600'
    victim = pair.submit("--gpus", "A100:2", "--", script)
    t = pair.wait_state(victim, "RUNNING")
    assert t["nodes"] == "honest"
    key = f"{victim}.a0.r0"
    pid = int(wait_for(lambda: next((w for w in pair.ctl.cli("logs", victim).stdout.split() if w.isdigit()), None),
                       30, what="the victim's pid in its log"))
    wait_for(lambda: (pair.ctl.home / "checkpoints" / victim / "state").exists(), 30,
             what="the victim's checkpoint synced from the honest node")
    waiting = pair.submit("--gpus", "A100:2", "--", "echo second")  # needs the victim's GPUs
    # The liar claims the victim ended on it, with a checkpoint and logs of its own.
    forged = pair.liar.state_dir / "checkpoints" / victim
    forged.mkdir(parents=True, exist_ok=True)
    (forged / "state").write_text("forged\n")
    pair.liar.lie([{"key": key, "state": "exited", "pid": 4242, "pgid": 4242, "exit_code": 0, "signal": None,
                    "reason": None, "has_checkpoint": True}])
    # A job on the liar runs through several listings (launch, start, end), each with the lie in it.
    own = pair.submit("--gpus", "T4:1", "--", "echo mine")
    assert pair.wait_state(own, "SUCCEEDED")["nodes"] == "liar"  # what the liar says of its own job counts

    t = pair.task(victim)
    assert (t["state"], t["nodes"]) == ("RUNNING", "honest")
    assert pair.task(waiting)["state"] == "PENDING"  # nobody got the victim's GPUs
    assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    job_dir = pair.honest.state_dir / "jobs" / key
    assert not (job_dir / "cancel.json").exists()  # the honest node was never told to stop it
    assert not (pair.ctl.home / "logs" / f"{key}.stdout").exists()  # no copy taken from the liar
    assert pair.ctl.cli("logs", victim, check=True).stdout.split()[0] == "real"
    assert (pair.ctl.home / "checkpoints" / victim / "state").read_text() == "real\n"
    assert pair.node_state("liar") == "UP"
    assert any(key in line and "liar" in line for line in pair.ctl.log.read_text().splitlines())

    # The allocation still works as it should: cancelling the victim frees its GPUs for the next job.
    pair.ctl.cli("cancel", victim, check=True)
    assert pair.wait_state(waiting, "SUCCEEDED")["nodes"] == "honest"


MALFORMED: list[Any] = [
    {"state": "exited", "exit_code": 0},  # no key
    {"key": ["1.a0.r0"], "state": "exited"},  # a key that is not a string
    {"key": "77.a0.r0", "state": "exited", "exit_code": "NaN"},  # a string where a number belongs
    {"key": "78.a0.r0", "state": "exited", "exit_code": 10 ** 30},  # a huge int
    {"key": "79.a0.r0", "state": {"a": {"b": {"c": [[[["deep"]]]]}}}},  # nesting where a word belongs
    {"key": "../../etc/passwd", "state": "exited", "exit_code": 0},  # not a key an agent can have
]


def test_a_node_that_sends_malformed_records_stays_up_and_is_logged_once(pair: Pair) -> None:
    pair.liar.lie(MALFORMED)
    first = pair.submit("--gpus", "T4:1", "--", "echo one")
    assert pair.wait_state(first, "SUCCEEDED")["nodes"] == "liar"  # the rest of its report still counts
    second = pair.submit("--gpus", "T4:2", "--", "echo two")  # more listings with the same bad records
    assert pair.wait_state(second, "SUCCEEDED")["nodes"] == "liar"
    assert pair.node_state("liar") == "UP"
    log = pair.ctl.log.read_text()
    bad = [line for line in log.splitlines() if "liar" in line and "malformed" in line]
    assert len(bad) == len(MALFORMED), "\n".join(bad)  # each problem once, whatever the number of listings
    assert not any("Traceback" in line for line in log.splitlines())

    # The node behaves again: nothing more is logged and it goes on working.
    pair.liar.lie([])
    third = pair.submit("--gpus", "T4:1", "--", "echo three")
    assert pair.wait_state(third, "SUCCEEDED")["nodes"] == "liar"
    assert pair.node_state("liar") == "UP"
    assert len([line for line in pair.ctl.log.read_text().splitlines() if "liar" in line and "malformed" in line]) \
        == len(MALFORMED)
