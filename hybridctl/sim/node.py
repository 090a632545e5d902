"""`python -m hybridctl.sim.node`: one simulated GPU server.

It runs a real `hybridctl-agent` (simulated GPUs) and an embedded asyncssh server on 127.0.0.1
that accepts one client key and allows stream-local channels to the agent's socket only, then
writes `node.json` (port, host key) into its directory. SIGTERM ends the machine: the SSH server,
the agent and every job process, the way a terminated cloud instance ends."""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import asyncssh
import psutil


class _Server(asyncssh.SSHServer):
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is required: public keys only

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        return dest_path == self.socket_path


def kill_tree(state_dir: Path) -> None:
    """End every process that runs on this simulated machine's state: job supervisors (their
    command line names it) and jobs, which a root agent puts in cgroups under its own
    `agent-<id>` subtree (a job's `setsid` children name nothing of the machine)."""
    from hybridctl_agent.containment import agent_parent

    me = os.getpid()
    subtree = "/" + agent_parent("", str(state_dir)).lstrip("/") + "/"
    for p in psutil.process_iter(["cmdline"]):
        if p.pid == me:
            continue
        cmd = " ".join(p.info["cmdline"] or [])
        try:
            with open(f"/proc/{p.pid}/cgroup") as fh:
                in_ours = subtree in fh.read()
        except OSError:
            in_ours = False
        if str(state_dir) in cmd or in_ours:
            try:
                os.killpg(os.getpgid(p.pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.kill()
            except psutil.Error:
                pass
    thaw_subtree(subtree.strip("/").rsplit("/", 1)[-1])


def thaw_subtree(name: str) -> None:
    """Thaw every cgroup under `<hierarchy>/[.../]<name>` (cgroup v1 freezer, or v2): a
    supervisor killed between freezing its job's cgroup and thawing it (cgroup.kill_all) would
    leave the job's processes frozen for ever, their SIGKILL pending."""
    for pattern in ("/sys/fs/cgroup/freezer/{}", "/sys/fs/cgroup/freezer/*/{}", "/sys/fs/cgroup/{}",
                    "/sys/fs/cgroup/*/{}", "/sys/fs/cgroup/unified/*/{}"):
        for top in glob.glob(pattern.format(glob.escape(name))):
            for sub, _dirs, files in os.walk(top):
                for knob, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                    if knob in files:
                        try:
                            with open(os.path.join(sub, knob), "w") as fh:
                                fh.write(value)
                        except OSError:
                            pass


async def serve(args: argparse.Namespace) -> None:
    base = Path(args.dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    authorized_keys = str(Path(args.authorized_keys).resolve())
    os.chdir(base)  # the machine's "home": where SFTP's relative paths land
    sock = base / "agent.sock"
    state = base / "state"
    host_key_path = base / "ssh_host_key"
    if not host_key_path.exists():
        from hybridctl.sim.keys import write_private_key

        write_private_key(asyncssh.generate_private_key("ssh-ed25519"), host_key_path)
    host_key = asyncssh.read_private_key(str(host_key_path))
    log = open(base / "agent.log", "ab")
    agent = subprocess.Popen(
        [sys.executable, "-m", "hybridctl_agent.cli", "serve", "--socket", str(sock), "--state-dir", str(state),
         "--simulate-gpus", args.gpus, "--name", args.name, "--interval", str(args.interval)]
        + (["--orphan-timeout", str(args.orphan_timeout)] if args.orphan_timeout > 0 else [])
        + (["--config", str(Path(args.agent_config).resolve())] if args.agent_config else []),
        stdout=log, stderr=log, stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not sock.exists():
        if agent.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"agent did not start: see {base / 'agent.log'}")
        await asyncio.sleep(0.05)
    server = await asyncssh.create_server(
        lambda: _Server(str(sock)), "127.0.0.1", args.port, server_host_keys=[host_key],
        authorized_client_keys=authorized_keys,
        # SFTP sees the host's paths, as on a real server; its home (relative paths) is this
        # machine's directory, where workdir uploads and outputs land.
        sftp_factory=True,
    )
    port = server.get_port()
    info = {"port": port, "host_key": host_key.export_public_key("openssh").decode().strip(),
            "socket": str(sock), "pid": os.getpid(), "agent_pid": agent.pid}
    tmp = base / "node.json.tmp"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, base / "node.json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set() and agent.poll() is None:
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    server.close()
    agent.kill()
    agent.wait()
    kill_tree(state)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hybridctl.sim.node", description=__doc__)
    p.add_argument("--dir", required=True, help="this machine's directory (state, socket, keys)")
    p.add_argument("--name", required=True)
    p.add_argument("--gpus", default="8:A100", help="N:MODEL[:MEM_GB] simulated GPUs")
    p.add_argument("--authorized-keys", required=True, help="file of client public keys allowed in")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--interval", type=float, default=1.0, help="agent telemetry interval (s)")
    p.add_argument("--orphan-timeout", type=float, default=0.0,
                   help="the agent exits (and so the machine ends) after this long without a request")
    p.add_argument("--agent-config", default="", help="the agent's config file (its other settings: uv_path, ...)")
    asyncio.run(serve(p.parse_args(argv)))
    return 0


def ends_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child sent SIGTERM when the process that started it dies, even
    by SIGKILL (Linux's PR_SET_PDEATHSIG; None elsewhere). For what lives only as long as its
    starter, as the demo's lab does; not for the simulated cloud's machines, which outlive a
    controller restart as real instances do. Linux ties the signal to the starting thread: start
    from a thread that lives as long as the process (the demo's main thread)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def start(base: Path, name: str, gpus: str, authorized_keys: Path, interval: float = 1.0,
          timeout: float = 60.0, orphan_timeout: float = 0.0, agent_config: Path | None = None,
          with_parent: bool = False) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start a simulated machine as a child process; return it and its node.json once ready.
    `agent_config`: a config file for its agent (the machine sets socket, state dir, name, GPUs).
    `with_parent`: the machine ends when this process dies (`ends_with_parent`)."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "node.json").unlink(missing_ok=True)
    log = open(base / "node.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridctl.sim.node", "--dir", str(base), "--name", name, "--gpus", gpus,
         "--authorized-keys", str(authorized_keys), "--interval", str(interval),
         "--orphan-timeout", str(orphan_timeout)] + (["--agent-config", str(agent_config)] if agent_config else []),
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=ends_with_parent() if with_parent else None,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while not (base / "node.json").exists():
        if proc.poll() is not None:
            raise RuntimeError(f"simulated node {name} exited: {(base / 'node.log').read_text()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"simulated node {name} did not start within {timeout:.0f}s")
        time.sleep(0.05)
    return proc, json.loads((base / "node.json").read_text())


if __name__ == "__main__":
    sys.exit(main())
