"""SSH key material for simulated fleets: one client key the controller uses, and the
known_hosts lines that pin each simulated machine's host key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def write_private_key(key: Any, path: Path) -> None:
    """Write an asyncssh private key to a new file that is 0600 from its creation (asyncssh's own
    `write_private_key` creates it with the umask's mode, readable by all until a chmod)."""
    data = key.export_private_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def client_key(base: Path) -> Path:
    """Create (once) an ed25519 client key pair under `base`; return the private key's path."""
    import asyncssh

    path = base / "id_ed25519"
    if not path.exists():
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519")
        write_private_key(key, path)
        key.write_public_key(str(path) + ".pub")
    return path


def pin(known_hosts: Path, port: int, host_key: str, host: str = "127.0.0.1") -> None:
    """Append `[host]:port key` to known_hosts (the controller then verifies it on every connect)."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    with open(known_hosts, "a") as f:
        f.write(f"[{host}]:{port} {host_key}\n")
