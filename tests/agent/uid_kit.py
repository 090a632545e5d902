"""Running a check as another uid, for the trust tests (test_cache_capability.py,
test_env_wheels.py): fork, drop to the uid, report back through a pipe (no interpreter under
/root is needed after the setuid); an account with a private group; a temp dir others can search."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List

import pytest


def as_uid(uid: int, gid: int, work: Callable[[], str]) -> str:
    """What `work()` returns, run in a forked child dropped to `uid`/`gid` (so no interpreter
    under /root is needed after the setuid); an exception it raises comes back as its repr."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.write(wfd, work().encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            os.write(wfd, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as fh:
        out = fh.read()
    os.waitpid(pid, 0)
    return out


def open_as(uid: int, gid: int, paths: List[str]) -> List[int]:
    """The errno of opening each path for reading as `uid` (0: it opened)."""
    def opens() -> str:
        codes = []
        for p in paths:
            try:
                os.close(os.open(p, os.O_RDONLY))
                codes.append(0)
            except OSError as exc:
                codes.append(exc.errno or -1)
        return json.dumps(codes)
    return json.loads(as_uid(uid, gid, opens))


def private_account() -> pwd.struct_passwd:
    """An account other than root whose primary group is its alone (daemon, on most hosts)."""
    import grp

    for p in pwd.getpwall():
        try:
            g = grp.getgrgid(p.pw_gid)
        except KeyError:
            continue
        if p.pw_uid != 0 and g.gr_name == p.pw_name and set(g.gr_mem) <= {p.pw_name} and all(
                q.pw_uid == p.pw_uid for q in pwd.getpwall() if q.pw_gid == p.pw_gid):
            return p
    pytest.skip("no account with a private primary group on this host")


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temp dir other uids can search (pytest's tmp_path sits in a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="hcc-", dir="/tmp"))
    os.chmod(d, 0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
