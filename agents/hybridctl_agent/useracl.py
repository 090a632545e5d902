"""One directory of the agent's opened to one uid alone (cache.py's `users/<uid>/`, envbuild.py's
build directory and its shipped wheels): the agent keeps it, mode 0700, and a POSIX access ACL
(the `system.posix_acl_access` xattr, version 2) adds an entry for that uid; the owning group
and others get nothing. Where the filesystem has no POSIX ACLs, the directory's group carries
the permission instead, but only when that group is the user's alone (a user-private group)."""

from __future__ import annotations

import errno
import os
import struct

ACL_ANY = 0xFFFFFFFF
SEARCH = 1
"""--x: open a name it knows, never list (cache links)."""
READ_SEARCH = 5
"""r-x: list and open (a --find-links directory uv lists)."""


def access_acl(uid: int, perm: int) -> bytes:
    """Owner rwx, `uid` `perm`, owning group and others nothing; the mask (the mode's group bits)
    is `perm`. Entries sorted by tag, as the kernel requires."""
    entry = lambda tag, p, who: struct.pack("<HHI", tag, p, who)  # noqa: E731
    return (struct.pack("<I", 2) + entry(0x01, 7, ACL_ANY) + entry(0x02, perm, uid)
            + entry(0x04, 0, ACL_ANY) + entry(0x10, perm, ACL_ANY) + entry(0x20, 0, ACL_ANY))


def private_group(uid: int, gid: int) -> bool:
    """Whether `gid` is `uid`'s alone: a user-private group, i.e. `uid`'s primary group and named
    as the account (what a name service that does not enumerate, sssd or LDAP, still answers);
    and no other account seen has it as primary group or lists itself a member."""
    import grp
    import pwd

    try:
        user = pwd.getpwuid(uid)
        group = grp.getgrgid(gid)
        if gid != user.pw_gid or group.gr_name != user.pw_name:
            return False
        return set(group.gr_mem) <= {user.pw_name} and all(
            p.pw_uid == uid for p in pwd.getpwall() if p.pw_gid == gid)
    except (KeyError, OSError):
        return False


def open_to(fd: int, uid: int, gid: int, perm: int) -> bool:
    """Give `uid` alone `perm` (SEARCH or READ_SEARCH) on the directory `fd`, which must be the
    agent's (PermissionError otherwise): 0700 plus an ACL entry; our own uid: plain 0700; no
    POSIX ACLs: group `gid` with `perm`, if it is `uid`'s private group. False where neither is
    possible (the directory is left 0700: the caller refuses, naming why); never wider."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise PermissionError(errno.EPERM, f"the directory is uid {st.st_uid}'s, not the agent's")
    if uid == os.geteuid():
        os.fchmod(fd, 0o700)
        return True
    try:
        os.setxattr(fd, "system.posix_acl_access", access_acl(uid, perm))
        return True
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
    os.fchmod(fd, 0o700)
    if not private_group(uid, gid):
        return False
    os.fchown(fd, -1, gid)
    os.fchmod(fd, 0o700 | perm << 3)
    return True
