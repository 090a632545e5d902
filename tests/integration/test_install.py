"""`hybridctl node add --install` against a real OpenSSH sshd where no agent runs: the agent is
copied over SFTP, started detached (--no-systemd: tests have no systemd), answers, and runs jobs;
adding the node again upgrades it in place while jobs keep running. Also the per-node CPU override."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest

from tests.conftest import require
from tests.integration.harness import ControllerProc
from tests.integration.nodes import FLEET_CONFIG
from tests.integration.sshd import Sshd, keygen, require_sshd
from tests.waiting import wait_for


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Sshd, Path, Path]]:
    """A fresh sshd with no agent; yields (sshd, client key, the install dir to use there). Its
    shell prints on every command, on stdout and stderr, as a .bashrc whose `pyenv` is missing does
    (CI's did): install steps must neither parse nor report that as theirs."""
    require_sshd()
    key = keygen(tmp_path / "id_ed25519")
    noisy = tmp_path / "noisy_rc"
    noisy.write_text("echo 'Welcome to n9'\necho '/root/.bashrc: line 21: pyenv: command not found' >&2\n")
    sshd = Sshd(tmp_path / "sshd", key, extra=(f"SetEnv BASH_ENV={noisy}",))
    sshd.start()
    node_dir = tmp_path / "node"
    try:
        yield sshd, key, node_dir
    finally:
        sshd.stop()
        # The agent and the job supervisors outlive the SSH session on purpose: end this test's.
        for p in psutil.process_iter(["cmdline"]):
            if str(node_dir) in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid():
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass


def add_args(sshd: Sshd, key: Path, node_dir: Path, *extra: str) -> list[str]:
    return ["node", "add", "n9", "--host", "127.0.0.1", "--port", str(sshd.port), "--identity", str(key),
            "--accept-new", "--install", "--no-systemd", "--install-dir", str(node_dir), *extra]


def agent_pid(node_dir: Path) -> int:
    pid = int((node_dir / "agent.pid").read_text())
    assert "hybridctl_agent.cli" in " ".join(psutil.Process(pid).cmdline())
    return pid


def node_row(ctl: ControllerProc) -> dict[str, Any]:
    return next(n for n in ctl.cli_json("nodes") if n["name"] == "n9")


def test_install_starts_the_agent_jobs_run_and_a_rerun_upgrades_in_place(
    server: tuple[Sshd, Path, Path], start_controller: Callable[..., ControllerProc]
) -> None:
    sshd, key, node_dir = server
    ctl = start_controller(FLEET_CONFIG)
    # More CPUs than the box has: one-CPU jobs beyond os.cpu_count() run at once only if the
    # override wins over the count the agent reports.
    cpus = (os.cpu_count() or 1) + 2
    res = ctl.cli(*add_args(sshd, key, node_dir, "--python", sys.executable, "--cpus", str(cpus)), timeout=240)
    assert res.returncode == 0, res.stderr
    assert f"node n9 added: 0 GPUs (none), {cpus} CPUs (the agent reports {os.cpu_count()})" in res.stdout
    assert "dependencies: already importable" in res.stderr
    assert f"wait: the agent listens on {node_dir / 'agent.sock'}" in res.stderr
    assert (node_dir / "pkg" / "hybridctl_agent" / "daemon.py").exists()
    first = agent_pid(node_dir)

    # The node's own session (not only the add probe) has said hello: its telemetry arrives.
    n = wait_for(lambda: (r := node_row(ctl))["telemetry"] and r, 60, what="telemetry from n9")
    assert (n["state"], n["cpus"], n["cpus_override"]) == ("UP", cpus, cpus)

    release = node_dir.parent / "release"
    jobs = [ctl.cli("submit", "--cpus", "1", "--", f"while [ ! -e {release} ]; do sleep 0.05; done; echo ran",
                    check=True).stdout.strip() for _ in range(cpus)]

    def states() -> list[str]:
        return [ctl.cli_json("show", j)["tasks"][0]["state"] for j in jobs]

    wait_for(lambda: states() == ["RUNNING"] * cpus, 90, what=f"{cpus} one-CPU jobs running at once on n9")

    # Again: an upgrade in place. The old agent stops, a new one starts, the jobs keep running.
    res = ctl.cli(*add_args(sshd, key, node_dir, "--python", sys.executable, "--cpus", str(cpus)), timeout=240)
    assert res.returncode == 0, res.stderr
    assert "node n9 upgraded" in res.stdout
    second = agent_pid(node_dir)
    assert second != first and not psutil.pid_exists(first)
    release.touch()
    wait_for(lambda: states() == ["SUCCEEDED"] * cpus, 90, what="the jobs to finish after the upgrade")
    assert ctl.cli("logs", jobs[0], check=True).stdout.strip() == "ran"
    assert node_row(ctl)["cpus"] == cpus  # the new agent's hello did not overwrite the override


def _python_without_psutil(where: Path) -> str | None:
    """A fresh venv: a node's Python with pip (from ensurepip, offline) and without psutil."""
    made = subprocess.run([sys.executable, "-m", "venv", str(where)], capture_output=True, text=True, timeout=120)
    python = where / "bin" / "python"
    if made.returncode != 0 or subprocess.run([str(python), "-c", "import psutil"], capture_output=True).returncode == 0:
        return None
    return str(python)


def test_install_with_an_offline_wheel_bundle(server: tuple[Sshd, Path, Path], tmp_path: Path,
                                              start_controller: Callable[..., ControllerProc]) -> None:
    sshd, key, node_dir = server
    python = _python_without_psutil(tmp_path / "node-python")
    require(python is not None, "needs `python -m venv` with ensurepip (the node's Python, without psutil)")
    wheels = tmp_path / "wheels"
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                          str(wheels), "psutil", "nvidia-ml-py"], capture_output=True, text=True, timeout=120)
    require(got.returncode == 0, f"needs psutil and nvidia-ml-py wheels (pip download): {got.stderr[-300:]}")
    ctl = start_controller(FLEET_CONFIG)
    res = ctl.cli(*add_args(sshd, key, node_dir, "--python", str(python), "--wheels", str(wheels)), timeout=240)
    assert res.returncode == 0, res.stderr
    assert f"dependencies: installed into {node_dir / 'deps'}" in res.stderr
    assert (node_dir / "deps" / "psutil").is_dir() and (node_dir / "deps" / "pynvml.py").exists()
    assert psutil.Process(agent_pid(node_dir)).cmdline()[0] == python
    job = ctl.cli("submit", "--", "echo offline", check=True).stdout.strip()
    wait_for(lambda: ctl.cli_json("show", job)["tasks"][0]["state"] == "SUCCEEDED", 90, what=f"job {job} on n9")


def test_install_step_failures_name_the_step_and_what_to_do(server: tuple[Sshd, Path, Path],
                                                          start_controller: Callable[..., ControllerProc]) -> None:
    sshd, key, node_dir = server
    ctl = start_controller(FLEET_CONFIG)
    res = ctl.cli(*add_args(sshd, key, node_dir, "--python", "/nonexistent/python3"), timeout=120)
    assert res.returncode == 1
    assert "n9: python failed: /nonexistent/python3 not found on the PATH" in res.stderr
    assert "--python PATH" in res.stderr
    # Without --no-systemd on a node that runs no systemd: refused before anything is written.
    require(not os.path.isdir("/run/systemd/system"), "this host runs systemd: the test would install a unit here")
    args = [a for a in add_args(sshd, key, node_dir, "--python", sys.executable) if a != "--no-systemd"]
    res = ctl.cli(*args, timeout=120)
    assert res.returncode == 1
    assert "n9: systemd failed: systemd is not running on this node; add --no-systemd" in res.stderr
    assert not node_dir.exists()
    assert ctl.cli_json("nodes") == []


@pytest.mark.parametrize(("extra", "named"), [
    (["--cpus", "0"], "--cpus: 0.0 is not valid; a number of CPU cores greater than 0"),
    (["--cpus", "lots"], "argument --cpus: invalid float value: 'lots'"),
    (["--install", "--wheels", "/nonexistent"], "--wheels: '/nonexistent' is not valid; a directory of .whl files"),
    (["--install", "--install-dir", "rel/dir"], "--install-dir: 'rel/dir' is not valid; an absolute path"),
    (["--install", "--agent-socket", "/x.sock"], "--agent-socket: '/x.sock' is not valid; leave it out with --install"),
    (["--no-systemd"], "--no-systemd: applies to --install only"),
])
def test_node_add_bad_flags_exit_2_naming_the_flag(controller: ControllerProc, extra: list[str], named: str) -> None:
    res = controller.cli("node", "add", "n9", "--host", "127.0.0.1", "--port", "1", *extra)
    assert res.returncode == 2 and named in res.stderr, res.stderr
