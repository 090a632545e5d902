"""Who is calling: built from the kernel's peer credentials on the Unix socket, never from anything
the client sends."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    uid: int
    gid: int
    user: str
    group: str
    admin: bool


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid{gid}"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def caller(uid: int, gid: int, admin_group: str) -> Caller:
    """Root, the controller's own user, and members of `admin_group` are admins."""
    user = user_name(uid)
    admin = uid == 0 or uid == os.getuid()
    if not admin:
        try:
            g = grp.getgrnam(admin_group)
        except KeyError:
            g = None
        if g is not None:
            admin = gid == g.gr_gid or user in g.gr_mem
            if not admin:
                try:
                    admin = g.gr_gid in os.getgrouplist(user, gid)
                except OSError:
                    pass
    return Caller(uid, gid, user, group_name(gid), admin)
