"""The README's first command as a newcomer meets it: `scripts/demo` in a real terminal (tmux),
the fleet view on the live lab, `:cloud` once the burst came, then `q`, Ctrl-C or a closed
terminal, each leaving no process of the demo's tree and no `hybridctl-demo-*` directory."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

from tests.conftest import require
from tests.waiting import wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# A small lab that bursts within seconds: one 2-GPU server and a job every two seconds. The
# default demo (4 x 8 GPUs, waves) is what the README runs; test_demo.py runs it headless.
DEMO = [str(REPO / "scripts" / "demo"), "--nodes", "1", "--gpus", "2", "--rate", "30"]
TUI_WITHIN = 60.0  # ~10 s on an idle 2-core machine; others' tests share it
PROMPT = "nodes, jobs, gpus"  # the open `:` prompt's placeholder
SPOT_NODE = re.compile(r"^cloud-\w+\s+simulated\s+\S+\s+\S+\s+spot\s+up\b", re.M)


class Terminal:
    """One tmux server of our own (`-L`, no user config) running one command in one pane."""

    def __init__(self, command: list[str]) -> None:
        self.tmux = ["tmux", "-L", f"hyb-demo-{uuid.uuid4().hex[:8]}", "-f", "/dev/null"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCTL_")}
        env["TERM"] = "xterm-256color"
        shell = f"{shlex.join(command)}; echo DEMO-EXITED $?; sleep 600"
        subprocess.run([*self.tmux, "new-session", "-d", "-s", "demo", "-x", "120", "-y", "36", shell],
                       env=env, check=True, timeout=30, cwd=REPO)
        pane = self._tmux("list-panes", "-t", "demo", "-F", "#{pane_pid}")
        self.shell = psutil.Process(int(pane.strip()))

    def _tmux(self, *args: str) -> str:
        return subprocess.run([*self.tmux, *args], capture_output=True, text=True, check=True, timeout=30).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "demo")

    def keys(self, *keys: str, literal: bool = False) -> None:
        self._tmux("send-keys", "-t", "demo", *(["-l"] if literal else []), *keys)

    def wait(self, what: str, check: "re.Pattern[str] | str", timeout: float) -> str:
        """Capture the pane until it shows `check`; fail with the last screen after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if (check.search(text) if isinstance(check, re.Pattern) else check in text):
                return text
            if "DEMO-EXITED" in text and "DEMO-EXITED" not in str(check):
                raise AssertionError(f"the demo ended while waiting for {what}:\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; the pane showed:\n{text}")
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True, timeout=30)


Open = Callable[[list[str]], Terminal]


@pytest.fixture
def terminal() -> Iterator[Open]:
    require(shutil.which("tmux") is not None, "tmux is not installed (apt-get install tmux)")
    opened: list[Terminal] = []

    def open_(command: list[str]) -> Terminal:
        t = Terminal(command)
        opened.append(t)
        return t

    yield open_
    for t in opened:
        t.close()  # a SIGHUP: the demo cleans up after a failed test too


def demo_tree(term: Terminal) -> tuple[Path, list[psutil.Process]]:
    """The demo's state directory (the controller's HYBRIDCTL_HOME is in it) and every process
    under the pane now: the demo, its controller, simulated servers and agents, cloud nodes, jobs."""
    procs = term.shell.children(recursive=True)
    homes = []
    for p in procs:
        try:
            homes.append(p.environ().get("HYBRIDCTL_HOME", ""))
        except psutil.Error:
            continue
    base = next(Path(h).parent for h in homes if "hybridctl-demo-" in h)
    return base, procs


def assert_nothing_left(base: Path, procs: list[psutil.Process]) -> None:
    assert not base.exists(), f"{base} was left behind"

    def alive() -> list[str]:
        left = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(" ".join(p.cmdline()))
            except psutil.Error:
                continue
        for p in psutil.process_iter(["cmdline"]):  # anything else naming the directory
            cmd = " ".join(p.info["cmdline"] or [])
            if str(base) in cmd:
                left.append(cmd)
        return left

    try:
        wait_for(lambda: not alive(), 30, what="every process of the demo gone")
    except TimeoutError:
        raise AssertionError(f"left running: {alive()}") from None


def test_scripts_demo_opens_the_tui_shows_the_burst_and_q_cleans_up(terminal: Open) -> None:
    started = time.monotonic()
    term = terminal(DEMO)
    fleet = term.wait("the fleet view of the demo's lab", re.compile(r"^node01\s+on-prem\s+UP", re.M), TUI_WITHIN)
    shown_after = time.monotonic() - started
    assert "hybridctl ▸ Fleet" in fleet and "q Quit" in fleet  # the footer says how to leave
    term.keys(":")
    term.wait("the command prompt", PROMPT, 30)  # as a person would: see the prompt, then type
    term.keys("cloud", literal=True)
    term.keys("Enter")
    cloud = term.wait("a spot node up in :cloud", SPOT_NODE, 120)
    assert "hybridctl ▸ Cloud" in cloud
    base, procs = demo_tree(term)
    assert any(f"{base}/cloud/" in " ".join(p.cmdline()) for p in procs), "no spot node process seen"
    assert (base / "home" / "hybridctl.sock").exists()
    term.keys("q")
    after = term.wait("the demo to end", "DEMO-EXITED 0", 90)
    assert "stopping the lab" in after
    assert_nothing_left(base, procs)
    print(f"TUI shown after {shown_after:.1f}s")


def test_ctrl_c_in_the_demo_tui_ends_it_cleanly(terminal: Open) -> None:
    term = terminal(DEMO)
    term.wait("the fleet view", re.compile(r"^node01\s+on-prem\s+UP", re.M), TUI_WITHIN)
    base, procs = demo_tree(term)
    term.keys(":")  # from inside the command prompt, where `q` would be a letter
    term.wait("the command prompt", PROMPT, 30)
    term.keys("C-c")
    term.wait("the demo to end", "DEMO-EXITED 0", 90)
    assert_nothing_left(base, procs)


def test_closing_the_terminal_ends_the_demo_cleanly(terminal: Open) -> None:
    term = terminal(DEMO)
    term.wait("the fleet view", re.compile(r"^node01\s+on-prem\s+UP", re.M), TUI_WITHIN)
    base, procs = demo_tree(term)
    demo = next(p for p in procs if "demo" in p.cmdline())
    term.close()  # tmux hangs up on the pane: SIGHUP
    psutil.wait_procs([demo], timeout=90)  # the bound the q and Ctrl-C tests give the same cleanup
    assert not demo.is_running()
    assert_nothing_left(base, procs)
