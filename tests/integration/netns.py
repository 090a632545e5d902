"""A lab of separate hosts on one machine, for the install rehearsal: a switch namespace holding a
bridge and the controller's address, and one network namespace per server, each with its own
`eth0` on the bridge, its own address, its own sshd on port 22 and its own /opt (a private mount
namespace bind-mounts a test directory there). Nothing is added to the root namespace: every
address lives on an interface created here, inside a namespace created here, and `stop` removes
them all, with every process still running inside them."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require
from tests.integration.sshd import SSHD, Sshd
from tests.waiting import wait_for

IP = shutil.which("ip") or "/usr/sbin/ip"
PREFIX = "hybmh"
"""Names of this module's namespaces: PREFIX + the pid of the test process + '-' + a role."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
    return res


def netns_pids(name: str) -> list[int]:
    res = ip("netns", "pids", name, check=False)
    return [int(p) for p in res.stdout.split()] if res.returncode == 0 else []


def netns_inode(name: str) -> int:
    """What `readlink /proc/self/ns/net` shows (net:[INODE]) for a process inside `name`."""
    return os.stat(f"/run/netns/{name}").st_ino


def remove_netns(name: str) -> None:
    """Kill every process left inside `name` (agents and job supervisors detach from sshd on
    purpose), then delete it; its veth ends go with it."""
    for pid in netns_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not netns_pids(name), 30, what=f"the processes in netns {name} to end")
    ip("netns", "del", name, check=False)


def remove_stale() -> None:
    """Namespaces an earlier, killed run of this module left behind (its pid is gone)."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        m = re.match(rf"({PREFIX}(\d+)-\S+)", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            remove_netns(m.group(1))


def require_netns() -> None:
    """Skip (fail under HYBRIDCTL_STRICT=1) where this process cannot make network namespaces."""
    require(os.geteuid() == 0 and os.path.exists(IP), "needs root and iproute2 (`ip`) for network namespaces")
    require(shutil.which("unshare") is not None, "needs util-linux `unshare` (a private /opt per server)")
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = ip("netns", "add", probe, check=False)
    if made.returncode == 0:
        bridge = ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        ip("netns", "del", probe, check=False)
        require(bridge.returncode == 0, f"needs bridges inside network namespaces: {bridge.stderr.strip()}")
    require(made.returncode == 0, f"cannot create network namespaces here: {made.stderr.strip()}")


@dataclass
class NsSshd(Sshd):
    """A server's OpenSSH sshd: port 22 on its own address inside its namespace, with the
    server's own directory mounted over /opt (so /opt/hybridctl-agent is per server)."""

    netns: str = ""
    addr: str = ""
    opt: Path = Path()

    def __post_init__(self) -> None:
        super().__post_init__()
        text = self.config.read_text()
        text = re.sub(r"(?m)^Port \d+$", f"Port {self.port}", text)
        text = text.replace("ListenAddress 127.0.0.1", f"ListenAddress {self.addr}")
        self.config.write_text(text)
        self.opt.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(self.base / "sshd.log", "ab")
        # ip, unshare and sh each exec the next: the Popen's pid is sshd's.
        self.proc = subprocess.Popen(
            [IP, "netns", "exec", self.netns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount --bind "$1" /opt && exec "$2" -D -e -f "$3"', "sh", str(self.opt), SSHD, str(self.config)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        wait_for(self._listening, 30, what=f"sshd on {self.addr}:{self.port} in {self.netns}")

    def _listening(self) -> bool:
        """Its listening socket in /proc/PID/net/tcp, which lists the sockets of that process's
        network namespace (no connection from this namespace could reach it)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(self.base / 'sshd.log').read_text()[-2000:]}")
        try:
            rows = Path(f"/proc/{self.proc.pid}/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return False
        return any(r.split()[1].endswith(f":{self.port:04X}") and r.split()[3] == "0A" for r in rows)


@dataclass
class Host:
    """One server of the lab."""

    name: str
    addr: str
    netns: str
    port: str
    """Its switch port: the bridge end of its veth, in the switch namespace."""
    root: Path
    """Its own files: root/opt is its /opt."""
    sshd: NsSshd | None = None

    @property
    def opt(self) -> Path:
        return self.root / "opt"


@dataclass
class Lan:
    """The lab network (10.213.1.0/24 by default): the controller at .1 on the switch's bridge,
    servers from .11 up. `unplug` takes a server's switch port down, like pulling its cable."""

    base: Path
    names: list[str]
    subnet: str = "10.213.1"
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        self.controller_addr = f"{self.subnet}.1"
        for i, name in enumerate(self.names):
            self.hosts[name] = Host(name, f"{self.subnet}.{11 + i}", f"{self.tag}-{name}", f"port{i}",
                                    self.base / name)

    def start(self, client_key: Path) -> None:
        remove_stale()
        ip("netns", "add", self.switch)
        sw = ("-n", self.switch)
        ip(*sw, "link", "add", "br0", "type", "bridge")
        ip(*sw, "addr", "add", f"{self.controller_addr}/24", "dev", "br0")
        ip(*sw, "link", "set", "br0", "up")
        ip(*sw, "link", "set", "lo", "up")
        for h in self.hosts.values():
            ip("netns", "add", h.netns)
            ip(*sw, "link", "add", h.port, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
            ip(*sw, "link", "set", h.port, "master", "br0", "up")
            ip("-n", h.netns, "addr", "add", f"{h.addr}/24", "dev", "eth0")
            ip("-n", h.netns, "link", "set", "eth0", "up")
            ip("-n", h.netns, "link", "set", "lo", "up")
            h.sshd = NsSshd(h.root / "sshd", client_key, port=22, netns=h.netns, addr=h.addr, opt=h.opt)
            h.sshd.start()

    def in_switch(self) -> list[str]:
        """A command prefix that runs a program in the switch namespace (the controller host)."""
        return [IP, "netns", "exec", self.switch]

    def unplug(self, name: str) -> None:
        ip("-n", self.switch, "link", "set", self.hosts[name].port, "down")

    def stop(self) -> None:
        for h in self.hosts.values():
            if h.sshd is not None:
                h.sshd.stop()
        for ns in [*(h.netns for h in self.hosts.values()), self.switch]:
            remove_netns(ns)
