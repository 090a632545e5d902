"""Turning a fresh instance into a fleet node: pin its SSH host key, and where the image does not
already run an agent, copy the agent over SFTP and start it (rootless, as the SSH user, with the
orphan guard on), then cancel the provider's power-off deadline."""

from __future__ import annotations

import asyncio
import posixpath
import shlex
from pathlib import Path
from typing import Any

from hybridctl.cloud.base import Instance
from hybridctl.core.errors import HybridctlError


class BootstrapFailed(HybridctlError):
    """A launched instance could not be made into a node."""


def known_host_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def forget_host(known_hosts: Path, host: str, port: int) -> None:
    """Drop pinned keys for host:port: a new instance may reuse an address (or a loopback port)
    with a new key, and it was just launched by us."""
    if not known_hosts.exists():
        return
    name = known_host_name(host, port)
    lines = known_hosts.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if ln.split(" ", 1)[0] != name]
    if len(kept) != len(lines):
        known_hosts.write_text("".join(kept))


def pin(known_hosts: Path, host: str, port: int, host_key: str) -> None:
    """Pin `host_key` (learnt out of band from the provider) for host:port, replacing old pins."""
    forget_host(known_hosts, host, port)
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    with open(known_hosts, "a") as f:
        f.write(f"{known_host_name(host, port)} {host_key.strip()}\n")


async def pin_first_contact(known_hosts: Path, host: str, port: int) -> str:
    """Accept-new for a host we just launched: fetch its key over SSH and pin it."""
    from hybridctl.ssh.link import pin_host_key

    forget_host(known_hosts, host, port)
    return await pin_host_key(host, port, known_hosts)


def agent_package() -> Path:
    """The `hybridctl_agent` package directory on the controller (what gets copied)."""
    import hybridctl_agent

    return Path(hybridctl_agent.__file__).resolve().parent


async def install_agent(inst: Instance, known_hosts: Path, identity: Path, orphan_timeout: float,
                        python: str = "python3", timeout: float = 300.0, remote_dir: str = "",
                        cancel_deadline: bool = True) -> str:
    """Copy the agent to `~/.hybridctl/pkg` (or `remote_dir`/pkg) on the node and start it; return
    its socket path. `cancel_deadline` cancels the power-off the provider's user data scheduled.

    The agent runs rootless (jobs run as the SSH user), needs only psutil (installed with pip
    --user if missing) and, on GPU images, nvidia-ml-py. With `orphan_timeout` it powers the
    instance off by itself (`sudo shutdown -h now`) after that long without the controller."""
    import asyncssh

    options: dict[str, Any] = {"port": inst.port, "known_hosts": str(known_hosts), "client_keys": [str(identity)],
                               "connect_timeout": 30}
    if inst.ssh_user:
        options["username"] = inst.ssh_user
    try:
        async with asyncssh.connect(inst.host, **options) as conn:
            base = remote_dir
            if not base:
                home = (await conn.run('printf %s "$HOME"', check=True, timeout=30)).stdout
                base = posixpath.join(str(home), ".hybridctl")
            pkg = posixpath.join(base, "pkg")
            async with conn.start_sftp_client() as sftp:
                await sftp.makedirs(posixpath.join(pkg, "hybridctl_agent"), exist_ok=True)
                for f in sorted(agent_package().glob("*.py")):
                    await sftp.put(str(f), posixpath.join(pkg, "hybridctl_agent", f.name))
            q = shlex.quote
            sock = posixpath.join(base, "agent.sock")
            serve = [python, "-m", "hybridctl_agent.cli", "serve", "--socket", sock, "--state-dir",
                     posixpath.join(base, "state"), "--name", inst.name or inst.id]
            if orphan_timeout > 0:
                serve += ["--orphan-timeout", str(orphan_timeout), "--orphan-command", "sudo -n shutdown -h now"]
            script = "\n".join([
                "set -e",
                f"{q(python)} -c 'import psutil' 2>/dev/null || {q(python)} -m pip install --user -q psutil nvidia-ml-py",
                # The provider's power-off deadline (user data): the node made it in time.
                "sudo -n shutdown -c 2>/dev/null || true" if cancel_deadline else "true",
                f"rm -f {q(sock)}",
                f"cd {q(base)}",
                # Its own session, and no fd of this channel: the exec must end while the agent runs.
                f"PYTHONPATH={q(pkg)} setsid nohup {shlex.join(serve)} > agent.log 2>&1 < /dev/null &",
                f"for i in $(seq 1 300); do [ -S {q(sock)} ] && exit 0; sleep 0.1; done",
                f"echo 'the agent did not start:' >&2; tail -20 {q(posixpath.join(base, 'agent.log'))} >&2; exit 1",
            ])
            res = await conn.run(script, timeout=timeout)
            if res.exit_status != 0:
                raise BootstrapFailed(f"{inst.id}: starting the agent failed: {str(res.stderr).strip()[-800:]}")
            return sock
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        raise BootstrapFailed(f"{inst.id}: cannot bootstrap over SSH ({inst.host}:{inst.port}): {exc}") from exc
