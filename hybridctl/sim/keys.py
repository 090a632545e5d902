"""SSH key material for simulated fleets: one client key the controller uses, and the
known_hosts lines that pin each simulated machine's host key."""

from __future__ import annotations

from pathlib import Path


def client_key(base: Path) -> Path:
    """Create (once) an ed25519 client key pair under `base`; return the private key's path."""
    import asyncssh

    path = base / "id_ed25519"
    if not path.exists():
        base.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(path))
        key.write_public_key(str(path) + ".pub")
        path.chmod(0o600)
    return path


def pin(known_hosts: Path, port: int, host_key: str, host: str = "127.0.0.1") -> None:
    """Append `[host]:port key` to known_hosts (the controller then verifies it on every connect)."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    with open(known_hosts, "a") as f:
        f.write(f"[{host}]:{port} {host_key}\n")
