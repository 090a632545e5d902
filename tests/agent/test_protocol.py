"""The agent's socket and wire protocol, its command line (bridge, status, config errors) and
the rule that the agent imports nothing beyond the stdlib, psutil and pynvml."""

from __future__ import annotations

import ast
import grp
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from hybridctl_agent import config
from hybridctl_agent.client import AgentCallError, AgentClient, AsyncAgentClient
from tests.agent.agent_harness import AGENTS_DIR, TIMEOUT, AgentProc

PKG = AGENTS_DIR / "hybridctl_agent"


def run_cli(agent: AgentProc, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybridctl_agent.cli", *args], input=stdin,
                          capture_output=True, text=True, env=agent.env, timeout=TIMEOUT)


def test_socket_is_private_to_the_agents_user(agent: AgentProc) -> None:
    st = os.stat(agent.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


@pytest.mark.needs_root
@pytest.mark.skipif(os.geteuid() != 0, reason="only root may hand the socket to another group")
def test_allowed_group_makes_the_socket_group_accessible(make_agent: Callable[..., AgentProc]
                                                         ) -> None:
    group = next(g for g in ("nogroup", "daemon", "users") if _group_exists(g))
    base = make_agent("--gpu-source", "none", start=False)
    cfg = base.base / "agent.json"
    cfg.write_text(json.dumps({"allowed_group": group}))
    base.args += ["--config", str(cfg)]
    base.start()
    st = os.stat(base.socket)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam(group).gr_gid


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_hello_describes_the_node(agent: AgentProc) -> None:
    hello = agent.call("hello")
    assert hello["protocol"] == 1 and hello["ok"] is True
    assert hello["gpu_source"] == "simulated" and hello["gpu_error"] is None
    assert [g["index"] for g in hello["gpus"]] == [0, 1, 2, 3]
    assert all(g["name"] == "NVIDIA A100" and g["memory_total_mb"] == 80 * 1024
               for g in hello["gpus"])
    assert len({g["uuid"] for g in hello["gpus"]}) == 4
    assert hello["cpus"] >= 1 and hello["memory_mb"] > 0
    assert hello["uid"] == os.geteuid() and hello["rootless"] is (os.geteuid() != 0)


def test_requests_are_answered_in_order_and_errors_are_coded(agent: AgentProc) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(agent.socket)
        s.sendall(b'{"id": 1, "op": "hello"}\n{"id": 2, "op": "frobnicate"}\nnot json\n'
                  b'[1, 2]\n\n{"id": 3, "op": "jobs", "extra": "ignored"}\n'
                  b'{"id": 4, "op": "cancel"}\n')
        buf = b""
        while buf.count(b"\n") < 6:
            chunk = s.recv(65536)
            assert chunk, "agent closed the connection early"
            buf += chunk
    answers: List[Dict[str, Any]] = [json.loads(line) for line in buf.splitlines()]
    assert [a["id"] for a in answers] == [1, 2, None, None, 3, 4]
    assert [a["ok"] for a in answers] == [True, False, False, False, True, False]
    assert [a.get("code") for a in answers[1:4]] == ["bad_request"] * 3
    assert "unknown op 'frobnicate'" in answers[1]["error"]
    assert answers[4]["jobs"] == []
    assert answers[5]["code"] == "bad_request" and "'key'" in answers[5]["error"]


def test_a_second_agent_on_the_same_socket_or_state_dir_is_refused(agent: AgentProc) -> None:
    def second(sock: str, state: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hybridctl_agent.cli", "serve", "--socket",
                               sock, "--state-dir", state, "--gpu-source", "none"],
                              capture_output=True, text=True, env=agent.env, timeout=TIMEOUT)

    res = second(agent.socket, str(agent.base / "other-state"))
    assert res.returncode == 2 and "another agent already listens" in res.stderr
    res = second(str(agent.base / "other.sock"), agent.state_dir)
    assert res.returncode == 2 and "already uses the state directory" in res.stderr
    assert not (agent.base / "other.sock").exists()
    assert agent.call("hello")["ok"]  # the first one is untouched


def test_bridge_copies_stdin_and_stdout(agent: AgentProc) -> None:
    res = run_cli(agent, "bridge", "--socket", agent.socket,
                  stdin='{"id": 1, "op": "hello"}\n{"id": 2, "op": "jobs"}\n')
    assert res.returncode == 0, res.stderr
    first, second = (json.loads(line) for line in res.stdout.splitlines())
    assert first["node"] and second["jobs"] == []
    missing = run_cli(agent, "bridge", "--socket", str(agent.base / "nope.sock"))
    assert missing.returncode == 1 and "is the agent running" in missing.stderr


def test_status_prints_json_and_text(agent: AgentProc) -> None:
    res = run_cli(agent, "status", "--socket", agent.socket, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["hello"]["gpu_source"] == "simulated" and "ok" not in data["hello"]
    assert len(data["sample"]["samples"][0]["gpus"]) == 4
    text = run_cli(agent, "status", "--socket", agent.socket)
    assert text.returncode == 0 and "gpu 3 NVIDIA A100" in text.stdout


def test_config_errors_name_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "agent.json"
    bad.write_text(json.dumps({"interval": 1, "sockt": "/tmp/x"}))
    with pytest.raises(config.ConfigError, match=r"agent\.json: unknown key 'sockt'"):
        config.load(str(bad))
    bad.write_text(json.dumps({"health": {"auto_recover": "yes"}}))
    with pytest.raises(config.ConfigError, match="health: key 'auto_recover'"):
        config.load(str(bad))
    bad.write_text(json.dumps({"gpu_source": "cuda"}))
    with pytest.raises(config.ConfigError, match="gpu_source 'cuda'"):
        config.load(str(bad))
    good = tmp_path / "agent.yaml"
    good.write_text("interval: 2\nname: node7\nsimulate:\n  count: 2\n  model: H100\n"
                    "gpu_source: simulated\n")
    cfg = config.load(str(good), {"history": 30, "name": None})
    assert (cfg.interval, cfg.name, cfg.history, cfg.simulate.count) == (2.0, "node7", 30.0, 2)


def test_simulate_flag_parsing() -> None:
    assert config.parse_simulate("4:A100") == config.SimConfig(4, "A100", 80)
    assert config.parse_simulate("2:T4") == config.SimConfig(2, "T4", 16)
    assert config.parse_simulate("8:H100:94") == config.SimConfig(8, "H100", 94)
    assert config.parse_simulate("3").count == 3
    for bad in ("x", "-1", "2:A100:0", "1:a:2:3"):
        with pytest.raises(config.ConfigError):
            config.parse_simulate(bad)


def test_default_paths_depend_on_root() -> None:
    assert config.default_paths(True) == {"socket": "/run/hybridctl/agent.sock",
                                          "state_dir": "/var/lib/hybridctl-agent"}
    user = config.default_paths(False)
    assert user["socket"].endswith("hybridctl/agent.sock")
    assert user["state_dir"].endswith(".local/state/hybridctl-agent")


def test_agent_imports_only_stdlib_psutil_and_pynvml() -> None:
    modules = sorted(p.stem for p in PKG.glob("*.py") if p.stem != "__main__")
    code = ("import sys\n"
            + "".join(f"import hybridctl_agent.{m}\n" for m in modules)
            + "bad = [m for m in ('hybridctl', 'textual', 'asyncssh', 'torch', 'yaml')"
            " if m in sys.modules]\nprint(bad)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(AGENTS_DIR)), timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_supervisor_is_stdlib_only() -> None:
    """One supervisor runs per job: it must stay small (no psutil, no asyncio)."""
    code = ("import sys, hybridctl_agent.supervise\n"
            "print([m for m in ('psutil', 'pynvml', 'asyncio') if m in sys.modules])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(AGENTS_DIR)), timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted(PKG.glob("*.py")), ids=lambda p: p.name)
def test_agent_source_parses_as_python_3_9(path: Path) -> None:
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))
    assert len(path.read_text().splitlines()) <= 400


def test_client_reconnects_after_the_agent_restarts(agent: AgentProc) -> None:
    client = AgentClient(agent.socket, timeout=TIMEOUT)
    first = client.call("hello")["boot_id"]
    agent.restart()
    with pytest.raises(OSError):
        client.call("hello")  # the old connection is gone ...
    assert client.call("hello")["boot_id"] != first  # ... and the next call reconnects
    client.close()


async def test_async_client_speaks_the_protocol(agent: AgentProc) -> None:
    client = await AsyncAgentClient.connect_unix(agent.socket)
    try:
        hello = await client.call("hello")
        assert hello["gpu_source"] == "simulated"
        assert (await client.call("jobs"))["jobs"] == []
        stale = await client.call("sample", since=10 ** 9)  # a seq from an earlier agent run
        assert stale["samples"] and stale["samples"][-1]["seq"] == stale["seq"]
        with pytest.raises(AgentCallError) as err:
            await client.call("cancel", key="missing")
        assert err.value.code == "not_found"
    finally:
        await client.close()


def test_checkpoint_files_sees_a_rewrite_within_the_same_second(agent: AgentProc) -> None:
    root = Path(agent.call("hello")["checkpoint_root"]) / "77"
    root.mkdir(parents=True)
    ckpt = root / "sub" / "ckpt.bin"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"a" * 100)
    os.utime(ckpt, ns=(1_700_000_000_100_000_000, 1_700_000_000_100_000_000))
    first = agent.call("checkpoint_files", key="77.a0.r0")
    assert (first["root"], first["files"]) == (str(root), {"sub/ckpt.bin": [100, 1_700_000_000_100_000_000]})
    ckpt.write_bytes(b"b" * 100)  # same size, same second: SFTP's whole-second mtime could not tell
    os.utime(ckpt, ns=(1_700_000_000_600_000_000, 1_700_000_000_600_000_000))
    assert agent.call("checkpoint_files", key="77.a1.r0")["files"]["sub/ckpt.bin"] == [100, 1_700_000_000_600_000_000]
    assert agent.call("checkpoint_files", key="78")["files"] == {}
    with pytest.raises(AgentCallError, match="field 'key'"):
        agent.call("checkpoint_files", key="../etc")
