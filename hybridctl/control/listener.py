"""The controller's Unix socket as a claim on a path: bound only when no live controller answers
there, chmod'ed and unlinked only while it is still the file this process bound. asyncio's own
`start_unix_server(path=…)` deletes whatever socket is at the path, a live one included."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from hybridctl.core.errors import HybridctlError

log = logging.getLogger("hybridctl.controller")


class SocketInUse(HybridctlError):
    """Another controller (or something else) already holds the socket path."""


@dataclass(frozen=True)
class Claim:
    """A bound, listening socket and the identity (device, inode) of the file it created."""

    sock: socket.socket
    path: Path
    ident: tuple[int, int]

    def release(self) -> None:
        """Close the socket; unlink its path only if that is still our file (another controller
        may have taken the path since: leave its socket alone)."""
        self.sock.close()
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self.ident:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        else:
            log.warning("socket %s now belongs to another process: left in place", self.path)


def claim(path: Path, mode: int, backlog: int = 512) -> Claim:
    """Bind and listen on `path` with permissions `mode`. A socket file nobody answers on (left by
    a killed controller) is replaced; one that answers, or a file that is not a socket, is not:
    SocketInUse says what to do."""
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
        # Other users must be able to reach a socket meant for them (the umask is 077 here).
        os.chmod(parent, 0o755 if mode & 0o077 else 0o700)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            s.bind(str(path))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise SocketInUse(f"cannot create the controller socket {path}: {exc.strerror}") from None
            _remove_stale(path)
            try:
                s.bind(str(path))
            except OSError as again:
                raise SocketInUse(f"cannot create the controller socket {path}: {again.strerror} "
                                  "(another controller started at the same moment?)") from None
        st = os.lstat(path)
        os.chmod(path, mode)
        s.listen(backlog)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return Claim(s, path, (st.st_dev, st.st_ino))


def _remove_stale(path: Path) -> None:
    """`path` exists: unlink it if it is a socket that nobody answers on; else SocketInUse."""
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; remove it, or give the controller another "
                          "socket path (`socket:` in the config, or HYBRIDCTL_SOCKET)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(5.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: nobody listens
    except OSError as exc:
        raise SocketInUse(f"cannot tell whether a controller listens on {path}: {exc}") from None
    else:
        raise SocketInUse(
            f"another controller is already listening on {path} (its state may be elsewhere); stop it, "
            "or give this one another socket path (`socket:` in the config, or HYBRIDCTL_SOCKET)"
        )
    finally:
        probe.close()
    again = os.lstat(path)
    if (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log.info("removed the stale socket %s (nothing answered on it)", path)
