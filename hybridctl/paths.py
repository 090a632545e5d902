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


SYSTEM_SOCKET = Path("/run/hybridctl/controller.sock")
"""Where the systemd unit's controller listens (its home, /var/lib/hybridctl, is private)."""


def socket_path() -> Path:
    """The controller's Unix socket: `$HYBRIDCTL_SOCKET`; else `<home>/hybridctl.sock` when
    `$HYBRIDCTL_HOME` is set or that socket exists (a personal controller); else the system
    controller's `/run/hybridctl/controller.sock` when it exists; else `<home>/hybridctl.sock`."""
    env = os.environ.get("HYBRIDCTL_SOCKET")
    if env:
        return Path(env)
    own = home() / "hybridctl.sock"
    if os.environ.get("HYBRIDCTL_HOME") or own.exists() or not SYSTEM_SOCKET.exists():
        return own
    return SYSTEM_SOCKET


def db_path() -> Path:
    return home() / "hybridctl.db"


def config_path() -> Path | None:
    """`$HYBRIDCTL_CONFIG`, else `/etc/hybridctl/config.yaml` if it exists, else None (defaults)."""
    env = os.environ.get("HYBRIDCTL_CONFIG")
    if env:
        return Path(env)
    system = Path("/etc/hybridctl/config.yaml")
    return system if system.exists() else None


class UnsafeHome(Exception):
    """The state directory is shared with other users (see `make_private`)."""


def make_private(path: Path) -> list[str]:
    """Create the controller's state directory 0700, or tighten an existing one: the directory and
    its top-level entries lose every group/other bit (the database, its WAL, the log, checkpoint
    and output copies hold other users' secrets). Entries are opened without following links and
    only those owned by this process's user are changed. Return the names that were tightened.
    Raises UnsafeHome for a directory another user owns or may write to (such as /tmp)."""
    import stat

    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafeHome(f"state directory {path} belongs to uid {st.st_uid}, not to this user "
                             f"(uid {os.geteuid()}); point HYBRIDCTL_HOME at a directory of your own")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeHome(f"state directory {path} is writable by other users (mode "
                             f"{stat.S_IMODE(st.st_mode):04o}); point HYBRIDCTL_HOME at a private directory")
        changed = []
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
            changed.append(str(path))
        for name in os.listdir(fd):
            try:
                entry = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
            except OSError:  # a link, a socket, or gone: left alone
                continue
            try:
                est = os.fstat(entry)
                if est.st_uid == os.geteuid() and stat.S_IMODE(est.st_mode) & 0o077:
                    os.fchmod(entry, stat.S_IMODE(est.st_mode) & 0o700)
                    changed.append(name)
            finally:
                os.close(entry)
        return changed
    finally:
        os.close(fd)
