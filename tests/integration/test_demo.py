"""`hybridctl demo --headless`: the README's first command, end to end, and its clean exit."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from hybridctl.control.client import Client
from hybridctl.demo import sweep_killed
from tests.conftest import ctrl_c_reaches_it
from tests.waiting import wait_for


REPO = Path(__file__).resolve().parents[2]


def demo(*args: str, script: bool = False) -> subprocess.Popen[str]:
    """`hybridctl demo --headless ARGS`, or with `script` the README's own `scripts/demo`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCTL_")}
    cmd = [str(REPO / "scripts" / "demo")] if script else [sys.executable, "-m", "hybridctl.cli.main", "demo"]
    return subprocess.Popen([*cmd, "--headless", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO, preexec_fn=ctrl_c_reaches_it)


def leftovers(base: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if base in cmd:
            found.append(cmd)
    return found


def test_the_readme_demo_bursts_recovers_a_preemption_and_scales_down() -> None:
    """The README's first command, as written: default fleet (4 servers x 8 GPUs), 60 s."""
    p = demo("--duration", "60", "--json", script=True)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
    s = json.loads(out)
    why = f"summary {s}\nthe demo's stderr ends:\n{err[-3000:]}"  # a failure on a slow machine says what ran
    assert s["failed"] == 0, why
    assert s["succeeded"] >= 10 and s["jobs_submitted"] >= s["succeeded"] // 8, why
    assert s["cloud_nodes_launched"] >= 1, why  # a burst
    assert s["preemptions"] >= 1 and s["recoveries"] >= 1, why  # a reclaimed spot node's job ran again,
    assert s["resumed_from_checkpoint"] >= 1, why  # from the checkpoint it wrote in the grace period
    assert s["scale_downs"] >= 1, why  # an idle cloud node given back
    assert 0 < s["spent_usd"] <= s["budget_usd"], why
    assert 0 < s["onprem_gpu_utilisation"] <= 1, why
    base = re.search(r"state in (\S+)", err).group(1)  # type: ignore[union-attr]
    assert not Path(base).exists()
    assert leftovers(base) == []


def test_ctrl_c_leaves_no_process_socket_or_temp_dir() -> None:
    p = demo("--duration", "600", "--nodes", "2", "--gpus", "2")
    try:
        _ctrl_c_while_bursting(p)
    finally:
        if p.poll() is None:  # a failed wait must not leave the lab running for its 600 s
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()


def controller_up(p: subprocess.Popen[str]) -> tuple[str, threading.Thread]:
    """Follow the demo's stderr until its controller is up; return its state directory and the
    thread that goes on reading (join it once the demo has ended)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(p.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def ready() -> bool:
        if p.poll() is not None:
            raise AssertionError("".join(lines))
        return any("controller up" in line for line in lines)

    wait_for(ready, 120, what="demo controller up")
    return re.search(r"state in (\S+)", "".join(lines)).group(1), reader  # type: ignore[union-attr]


def _ctrl_c_while_bursting(p: subprocess.Popen[str]) -> None:
    base, reader = controller_up(p)

    def cloud_nodes_up() -> bool:  # Ctrl-C while spot nodes are rented: they must go too
        with Client(Path(base) / "home" / "hybridctl.sock") as c:
            return any(i["state"] == "up" for i in c.call("cloud_status")["instances"])

    # A simulated node's bootstrap (the agent installed over SSH) takes ~80 s on an idle 2-core
    # machine: the bound leaves room for a loaded one.
    wait_for(cloud_nodes_up, 360, what="a burst to a simulated spot node")
    assert any(f"{base}/cloud/" in cmd for cmd in leftovers(base))
    p.send_signal(signal.SIGINT)
    p.wait(timeout=120)
    reader.join(timeout=30)
    p.stdout.close()  # type: ignore[union-attr]
    p.stderr.close()  # type: ignore[union-attr]
    assert p.returncode == 130
    assert not Path(base).exists()
    wait_for(lambda: leftovers(base) == [], 30, what="every demo process gone")


def test_without_a_terminal_the_demo_says_why_instead_of_running_without_its_tui() -> None:
    """No quiet fallback: the TUI cannot start, so the demo says so and starts nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCTL_")}
    res = subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "demo"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert res.returncode == 1
    assert "needs a terminal" in res.stderr and "--headless" in res.stderr
    assert "state in" not in res.stderr  # nothing was started


def test_a_demo_killed_with_sigkill_takes_its_lab_with_it() -> None:
    """No cleanup code runs after SIGKILL (an out-of-memory kill, `kill -9`): the controller and
    the simulated servers must still end, not run on with no one left to stop them."""
    p = demo("--duration", "600", "--nodes", "2", "--gpus", "2", "--no-cloud")
    base, reader = "", None
    lab: list[psutil.Process] = []
    try:
        base, reader = controller_up(p)
        lab = psutil.Process(p.pid).children(recursive=True)  # controller, servers, agents, jobs
        cmds = [" ".join(c.cmdline()) for c in lab]
        assert sum("hybridctl.cli.main server" in c for c in cmds) == 1
        assert sum("hybridctl.sim.node" in c for c in cmds) == 2

        def alive() -> list[str]:
            out = []
            for c in lab:
                with contextlib.suppress(psutil.Error):
                    if c.is_running() and c.status() != psutil.STATUS_ZOMBIE:
                        out.append(" ".join(c.cmdline()))
            return out + leftovers(base)

        p.kill()
        p.wait(timeout=30)
        try:
            wait_for(lambda: not alive(), 60, what="every process of the killed demo's lab gone")
        except TimeoutError:
            raise AssertionError(f"still running: {alive()}") from None
        # Its directory stays (no one was left to remove it) until the next demo of this user.
        assert Path(base).is_dir()
        assert Path(base) in sweep_killed(Path(base).parent)
        assert not Path(base).exists()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
        for proc in [*lab, *(q for q in psutil.process_iter(["cmdline"])  # a failed test must not leave
                              if base and base in " ".join(q.info["cmdline"] or []))]:  # the lab running
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if reader is not None:
            reader.join(timeout=30)
        p.stdout.close()  # type: ignore[union-attr]
        p.stderr.close()  # type: ignore[union-attr]
        if base:
            shutil.rmtree(base, ignore_errors=True)  # the demo could not remove its state directory
