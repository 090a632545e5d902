"""Where hybridctl keeps its state: one place, so the CLI, controller and tests agree.

Stdlib only: the submit/queue client imports this to find the socket."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """`$HYBRIDCTL_HOME`, else `~/.local/state/hybridctl` (systemd units set `/var/lib/hybridctl`)."""
    env = os.environ.get("HYBRIDCTL_HOME")
    if env:
        return Path(env)
    return Path.home() / ".local" / "state" / "hybridctl"


def socket_path() -> Path:
    """The controller's Unix socket: `$HYBRIDCTL_SOCKET`, else `<home>/hybridctl.sock`."""
    env = os.environ.get("HYBRIDCTL_SOCKET")
    return Path(env) if env else home() / "hybridctl.sock"


def db_path() -> Path:
    return home() / "hybridctl.db"


def config_path() -> Path | None:
    """`$HYBRIDCTL_CONFIG`, else `/etc/hybridctl/config.yaml` if it exists, else None (defaults)."""
    env = os.environ.get("HYBRIDCTL_CONFIG")
    if env:
        return Path(env)
    system = Path("/etc/hybridctl/config.yaml")
    return system if system.exists() else None
