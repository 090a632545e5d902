"""Real OpenSSH `sshd` processes on loopback for tests: each test node gets its own port, host key,
authorized key and config, all under the test's temporary directory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.conftest import free_port, require
from tests.waiting import wait_for

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def require_sshd() -> None:
    require(os.path.exists(SSHD) and shutil.which("ssh-keygen") is not None,
            "needs OpenSSH sshd (apt-get install openssh-server)")
    require(os.geteuid() == 0, "needs root to run sshd")


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@dataclass
class Sshd:
    """One sshd on 127.0.0.1:port that accepts `client_key` for root."""

    base: Path
    client_key: Path
    port: int = field(default_factory=free_port)
    allow_forwarding: bool = True
    extra: tuple[str, ...] = ()
    """More sshd_config lines (e.g. `SetEnv BASH_ENV=…` for a shell that prints on every command)."""
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.host_key = self.base / "ssh_host_ed25519_key"
        if not self.host_key.exists():
            keygen(self.host_key)
        auth = self.base / "authorized_keys"
        auth.write_text(Path(f"{self.client_key}.pub").read_text())
        auth.chmod(0o600)
        self.config = self.base / "sshd_config"
        self.config.write_text(
            "\n".join([
                f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
                f"AuthorizedKeysFile {auth}", f"PidFile {self.base / 'sshd.pid'}",
                "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "UsePAM no", "StrictModes no", "MaxStartups 100:30:200", "LogLevel ERROR",
                f"AllowStreamLocalForwarding {'yes' if self.allow_forwarding else 'no'}",
                # OpenSSH gates direct-streamlocal channels on AllowTcpForwarding too (channel_permit_all).
                f"AllowTcpForwarding {'local' if self.allow_forwarding else 'no'}", "X11Forwarding no", "PrintMotd no",
                # Keep the test's environment (PATH to the venv) for exec'd commands.
                "PermitUserEnvironment no", "AcceptEnv *",
                "Subsystem sftp internal-sftp",  # checkpoints and workdirs travel over SFTP
                *self.extra,
            ]) + "\n"
        )

    def start(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(self.base / "sshd.log", "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        wait_for(self._listening, 30, what=f"sshd on port {self.port}")

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(self.base / 'sshd.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def drop_connections(self) -> int:
        """Kill every per-connection sshd child (the listener stays): a cut link."""
        assert self.proc is not None
        kids = psutil.Process(self.proc.pid).children(recursive=False)
        for k in kids:
            k.kill()
        return len(kids)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for k in psutil.Process(self.proc.pid).children(recursive=True):
                k.kill()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def new_host_key(self) -> None:
        """Replace the host key (a reinstalled server, or a man in the middle)."""
        self.host_key.unlink()
        Path(f"{self.host_key}.pub").unlink()
        keygen(self.host_key)
