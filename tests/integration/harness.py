"""Real controller processes for integration tests: start `hybridctl server` on a temporary state
dir, wait for its socket, run the real CLI against it, kill it however a test likes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ControllerProc:
    home: Path
    socket: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.home / "controller.log"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(HYBRIDCTL_HOME=str(self.home), HYBRIDCTL_SOCKET=str(self.socket), HYBRIDCTL_CONFIG=str(self.config))
        return env

    def start(self, timeout: float = 60.0) -> None:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hybridctl.cli.main", "server"], env=self.env, stdout=out, stderr=out,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        out.close()
        wait_for(self._answers, timeout, what=f"controller socket {self.socket} (log: {self.log})")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"controller exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(self.socket))
                s.sendall(b'{"op": "ping"}\n')
                return b'"ok": true' in s.recv(4096)
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the real `hybridctl` CLI in a fresh process against this controller."""
        res = subprocess.run(
            [sys.executable, "-m", "hybridctl.cli.main", *args], env=self.env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"hybridctl {' '.join(args)} exited {res.returncode}: {res.stderr}")
        return res

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json", check=True).stdout)


def make_controller(base: Path, config: dict[str, Any]) -> ControllerProc:
    """A controller whose socket lives in a world-traversable directory (so other uids can reach it)."""
    home = base / "home"
    home.mkdir(parents=True, exist_ok=True)
    sockdir = Path(tempfile.mkdtemp(prefix="hyb-sock-"))
    os.chmod(sockdir, 0o755)
    cfg = base / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return ControllerProc(home=home, socket=sockdir / "hybridctl.sock", config=cfg)


SMALL_FLEET = {
    "scheduler": {"tick_seconds": 1.0},
    "nodes": [
        {"name": "gpu01", "gpus": "8xA100", "cpus": 64, "memory": "512G", "simulated": True},
        {"name": "gpu02", "gpus": "2xRTX3090,1xA6000", "cpus": 32, "memory": "128G", "simulated": True},
    ],
}
