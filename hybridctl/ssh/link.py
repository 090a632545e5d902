"""One persistent stream to one node's agent.

Over SSH the controller opens a `direct-streamlocal` channel to the agent's Unix socket on the
node (OpenSSH's `ssh -L local:/run/hybridctl/agent.sock`), or, where the node's sshd forbids
stream-local forwarding, runs `hybridctl-agent bridge` on an exec channel. A node that is the
controller host itself can be reached through its socket directly (`host: local`)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridctl.core.errors import ExitCode, HybridctlError
from hybridctl_agent.client import AgentCallError, AsyncAgentClient


class NodeUnreachable(HybridctlError):
    """The node or its agent cannot be reached."""


class HostKeyRefused(HybridctlError):
    """The node's SSH host key is unknown or changed."""

    exit_code = ExitCode.HOST_KEY


class AgentRefused(HybridctlError):
    """The agent answered with an error."""

    def __init__(self, node: str, op: str, code: str, message: str) -> None:
        super().__init__(f"node {node}: agent refused {op}: {message}")
        self.code = code


@dataclass(frozen=True)
class Target:
    """How to reach one node's agent."""

    name: str
    host: str
    port: int = 22
    user: str | None = None
    identity: str | None = None
    agent_socket: str | None = None
    """The agent's socket path on the node; None = the agent's default for that user."""
    known_hosts: str | None = None
    """The controller's own known_hosts file; host keys are checked against it."""
    bridge: bool = False
    """Use `hybridctl-agent bridge` over an exec channel instead of stream-local forwarding."""
    agent_command: str = "hybridctl-agent"

    @property
    def local(self) -> bool:
        return self.host in ("local", "")


def bridge_command(target: Target) -> str:
    """The remote command line for `hybridctl-agent bridge`. `agent_command` is split like a shell
    would (it may be e.g. `/opt/venv/bin/python -m hybridctl_agent.cli`); every part is quoted."""
    import shlex

    argv = [*shlex.split(target.agent_command), "bridge"]
    if target.agent_socket:
        argv += ["--socket", target.agent_socket]
    return shlex.join(argv)


def default_agent_socket(root: bool) -> str:
    return "/run/hybridctl/agent.sock" if root else "agent.sock"


class AgentLink:
    """A connected agent: `await link.call("hello")`. Requests go one at a time over one channel."""

    def __init__(self, target: Target, conn: Any, client: AsyncAgentClient, path: str | None = None) -> None:
        self.target = target
        self._conn = conn
        self._client = client
        self._path = path
        self._owns_conn = True

    async def second_channel(self) -> AgentLink:
        """Another stream to the same agent over the same SSH connection (for long polls, so they
        never queue in front of launches). Closing it leaves the connection open."""
        try:
            if self._conn is None:
                client = await AsyncAgentClient.connect_unix(self._path or "")
            elif self.target.bridge:
                proc = await self._conn.create_process(bridge_command(self.target), encoding=None)
                client = AsyncAgentClient(proc.stdout, proc.stdin)
            else:
                reader, writer = await self._conn.open_unix_connection(self._path)
                client = AsyncAgentClient(reader, writer)
        except Exception as exc:
            if isinstance(exc, OSError) or type(exc).__module__.startswith("asyncssh"):
                raise NodeUnreachable(f"node {self.target.name}: cannot open a second channel: {exc}") from exc
            raise
        link = AgentLink(self.target, self._conn, client, self._path)
        link._owns_conn = False
        return link

    async def call(self, op: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self._client.call(op, **fields), timeout)
        except AgentCallError as exc:
            raise AgentRefused(self.target.name, op, exc.code, exc.message) from exc
        except asyncio.TimeoutError as exc:
            raise NodeUnreachable(f"node {self.target.name}: agent did not answer {op} within {timeout:.0f}s") from exc
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            raise NodeUnreachable(f"node {self.target.name}: link broke during {op}: {exc}") from exc
        except Exception as exc:  # asyncssh errors must not leak past this module
            if type(exc).__module__.startswith("asyncssh"):
                raise NodeUnreachable(f"node {self.target.name}: SSH error during {op}: {exc}") from exc
            raise

    async def close(self) -> None:
        try:
            # Bounded: closing a channel waits for the peer's close, which a node that fell off
            # the network never sends; it ended only when SSH keepalives gave up (a minute or
            # more), holding up the session's reconnect and the controller's shutdown.
            await asyncio.wait_for(self._client.close(), 5)
        except Exception:  # closing a broken link: nothing more to learn from it
            pass
        if self._conn is not None and self._owns_conn:
            self._conn.close()
            try:
                await asyncio.wait_for(self._conn.wait_closed(), 5)
            except (asyncio.TimeoutError, Exception):
                pass

    @property
    def ssh_connection(self) -> Any:
        """The asyncssh connection (for SFTP), or None for a local link."""
        return self._conn


CIPHERS = [
    "aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
    "aes256-ctr", "aes192-ctr", "aes128-ctr",
]
"""asyncssh's defaults with AES-GCM first: on CPUs with AES instructions (every GPU server) it
moves checkpoints over SFTP ~1.3-1.6x faster than chacha20-poly1305, asyncssh's first choice
(bench: 1 GB over loopback sftp get 128 -> 172-239 MB/s, put 97 -> 134 MB/s). The server still
picks from this list, so one without AES-GCM falls back as before."""


async def connect(target: Target, timeout: float = 20.0) -> AgentLink:
    """Open the link; raise NodeUnreachable or HostKeyRefused."""
    if target.local:
        path = target.agent_socket or default_agent_socket(os.getuid() == 0)
        try:
            client = await asyncio.wait_for(AsyncAgentClient.connect_unix(path), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise NodeUnreachable(f"node {target.name}: no agent answers on {path}: {exc}") from exc
        return AgentLink(target, None, client, path)
    import asyncssh

    options: dict[str, Any] = {
        "port": target.port,
        "known_hosts": target.known_hosts,
        "keepalive_interval": 15,
        "keepalive_count_max": 4,
        "connect_timeout": timeout,
        "encryption_algs": CIPHERS,
    }
    if target.user:
        options["username"] = target.user
    if target.identity:
        options["client_keys"] = [target.identity]
    try:
        conn = await asyncssh.connect(target.host, **options)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyRefused(
            f"node {target.name}: the SSH host key of {target.host}:{target.port} does not match the one pinned in "
            f"{target.known_hosts} ({exc.reason}). If the server was reinstalled, remove its line from that file and "
            f"add the node again with --accept-new; otherwise someone may be intercepting the connection."
        ) from exc
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        raise NodeUnreachable(f"node {target.name}: cannot connect to {target.host}:{target.port}: {exc}") from exc
    try:
        if target.bridge:
            proc = await conn.create_process(bridge_command(target), encoding=None)
            reader, writer = proc.stdout, proc.stdin
            path = None
        else:
            path = target.agent_socket or await _remote_default_socket(conn)
            reader, writer = await conn.open_unix_connection(path)
    except (OSError, asyncssh.Error) as exc:
        conn.close()
        raise NodeUnreachable(
            f"node {target.name}: SSH works but the agent socket cannot be opened ({exc}); is hybridctl-agent "
            f"running there? (`systemctl status hybridctl-agent`)"
        ) from exc
    return AgentLink(target, conn, AsyncAgentClient(reader, writer), path)


async def _remote_default_socket(conn: Any) -> str:
    """The agent's default socket for the SSH user: /run/hybridctl/agent.sock as root, else under
    $XDG_RUNTIME_DIR (the agent's own rule)."""
    res = await conn.run('echo "$(id -u) ${XDG_RUNTIME_DIR:-}"', check=True, timeout=15)
    # The last line: a startup file of the user's shell may print before it.
    uid, _, runtime = (str(res.stdout).strip().splitlines() or [""])[-1].partition(" ")
    if uid == "0":
        return "/run/hybridctl/agent.sock"
    return f"{runtime or '/tmp/hybridctl-' + uid}/hybridctl/agent.sock"


async def pin_host_key(host: str, port: int, known_hosts: Path) -> str:
    """Fetch the host's SSH key and append it to `known_hosts` (OpenSSH's accept-new); return the
    key's fingerprint. Raise NodeUnreachable if the host does not answer."""
    import asyncssh

    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(host, port), 20)
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        raise NodeUnreachable(f"cannot fetch the SSH host key of {host}:{port}: {exc}") from exc
    if key is None:
        raise NodeUnreachable(f"{host}:{port} offered no host key")
    name = host if port == 22 else f"[{host}]:{port}"
    if known_hosts.exists() and any(
        ln.split(" ", 1)[0] == name for ln in known_hosts.read_text().splitlines()
    ):
        return str(key.get_fingerprint())  # already pinned: the connection itself checks it
    line = f"{name} {key.export_public_key('openssh').decode().split(' comment')[0].strip()}\n"
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    with open(known_hosts, "a") as f:
        f.write(line)
    return str(key.get_fingerprint())
