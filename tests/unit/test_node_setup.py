"""Setting nodes up: the systemd units `node add --install` writes (checked by systemd's own
parser, since no test can run systemd), and an admin's CPU count winning over the agent's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hybridctl.cloud.bootstrap import agent_unit
from hybridctl.config import NodeConfig, Settings
from hybridctl.control.identity import Caller
from hybridctl.control.nodes import config_record
from hybridctl.control.service import Controller
from hybridctl.core.errors import SpecError
from hybridctl.store.sqlite import Store
from tests.conftest import require

ROOT = Caller(0, 0, "root", "root", admin=True)


@pytest.mark.parametrize("system", [True, False])
def test_agent_unit_passes_systemd_analyze_verify(tmp_path: Path, system: bool) -> None:
    require(shutil.which("systemd-analyze") is not None, "needs systemd-analyze (the systemd package)")
    unit = tmp_path / "hybridctl-agent.service"
    unit.write_text(agent_unit(sys.executable, "/opt/hybridctl-agent", "gpu01", system))
    (tmp_path / "run").mkdir()
    res = subprocess.run(["systemd-analyze", *([] if system else ["--user"]), "verify", str(unit)],
                         capture_output=True, text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")})
    # verify exits 0 on values it ignores (e.g. a bad KillMode); every complaint goes to stderr.
    assert (res.returncode, res.stderr) == (0, "")


def test_agent_unit_content() -> None:
    system = agent_unit("/usr/bin/python3", "/opt/hybridctl-agent", "gpu01", True).splitlines()
    user = agent_unit("/usr/bin/python3", "/home/lab/.hybridctl", "gpu01", False).splitlines()
    assert ("ExecStart=/usr/bin/python3 -m hybridctl_agent.cli serve --socket /opt/hybridctl-agent/agent.sock "
            "--state-dir /opt/hybridctl-agent/state --name gpu01") in system
    assert "Environment=PYTHONPATH=/home/lab/.hybridctl/pkg:/home/lab/.hybridctl/deps" in user
    for lines in (system, user):
        assert "KillMode=process" in lines  # an upgrade (restart) must not kill running jobs
        assert "Restart=on-failure" in lines
    assert "WantedBy=multi-user.target" in system and "LimitMEMLOCK=infinity" in system
    assert "WantedBy=default.target" in user and not any(ln.startswith(("Limit", "After=")) for ln in user)


@pytest.mark.parametrize(("python", "where", "field"), [
    ("/usr/bin/python3", "/opt/my agent", "--install-dir"),
    ("/usr/bin/python3", "/opt/$HOME", "--install-dir"),
    ("/opt/py%n/python3", "/opt/hybridctl-agent", "--python"),
])
def test_agent_unit_refuses_words_systemd_would_split_or_expand(python: str, where: str, field: str) -> None:
    with pytest.raises(SpecError) as err:
        agent_unit(python, where, "gpu01", True)
    assert err.value.message.startswith(f"{field}: ")
    assert "--no-systemd" in err.value.message


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    store = Store(tmp_path / "hybridctl.db")
    for n in (NodeConfig(name="big", host="big.lab", cpus=64), NodeConfig(name="plain", host="plain.lab")):
        store.add_node(config_record(n), 1.0)
    return Controller(store, Settings(home=str(tmp_path)), clock=lambda: 2.0)


def test_config_cpus_win_over_the_agents_count_and_nodes_json_shows_both(ctl: Controller) -> None:
    ctl.lifecycle.node_hardware("big", [{"index": 0, "model": "A100"}], 2, 1024)
    ctl.lifecycle.node_hardware("plain", [{"index": 0, "model": "A100"}], 2, 1024)
    nodes = {n["name"]: n for n in ctl.op_nodes(ROOT)}
    assert (nodes["big"]["cpus"], nodes["big"]["cpus_override"], nodes["big"]["cpus_free"]) == (64, 64, 64)
    assert (nodes["plain"]["cpus"], nodes["plain"]["cpus_override"]) == (2, None)
    assert nodes["big"]["gpus"] == [{"index": 0, "model": "A100"}] and nodes["big"]["memory_mb"] == 1024


def test_config_cpus_must_not_be_negative() -> None:
    with pytest.raises(SpecError, match=r"nodes\.n1\.cpus: -4 is not valid; a number of CPU cores"):
        config_record(NodeConfig(name="n1", host="n1.lab", cpus=-4))
