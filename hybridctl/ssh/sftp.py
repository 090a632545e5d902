"""What the fleet and the autoscaler need of SSH beyond the agent link, so that asyncssh stays
behind `hybridctl/ssh/`: an SFTP client on a link's connection, and telling SSH errors apart."""

from __future__ import annotations

from typing import Any

from hybridctl.ssh.link import AgentLink, NodeUnreachable


def is_ssh_error(exc: BaseException) -> bool:
    """Whether `exc` came from the SSH library (a broken connection or channel, a refused SFTP
    operation): callers treat it as a transfer failure, never as a bug."""
    return type(exc).__module__.startswith("asyncssh")


async def start_sftp(link: AgentLink, node: str) -> Any | None:
    """An SFTP client on `link`'s SSH connection, or None for a local link (no SSH);
    NodeUnreachable when the server offers no SFTP."""
    conn = link.ssh_connection
    if conn is None:
        return None
    try:
        return await conn.start_sftp_client()
    except Exception as exc:  # SSH errors stop here
        raise NodeUnreachable(f"node {node}: SFTP is not available: {exc}") from exc
