"""Identity comes from the kernel (SO_PEERCRED): user B cannot touch user A's job."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import require
from tests.integration.harness import ControllerProc

# Runs as root, imports everything, then drops to the other uid before connecting: the interpreter
# lives under /root (mode 700), so a fresh process as `nobody` could not even start Python.
AS_OTHER_USER = textwrap.dedent(
    """
    import contextlib, io, os, sys
    from hybridctl.cli.main import build_parser, main
    import difflib, shlex, hybridctl.cli.output, hybridctl.control.client, hybridctl.control.identity, hybridctl.core.spec
    build_parser()  # argparse loads gettext/locale lazily: do it while the interpreter's files are readable
    uid, gid = int(sys.argv[1]), int(sys.argv[2])
    os.setgroups([]); os.setgid(gid); os.setuid(uid)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(sys.argv[3:])
    print(code); print(err.getvalue().strip())
    """
)


def as_user(c: ControllerProc, uid: int, gid: int, *args: str) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-c", AS_OTHER_USER, str(uid), str(gid), *args], env=c.env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    code, _, err = p.stdout.partition("\n")
    return int(code), err


def test_other_user_cannot_cancel_or_reprioritise(controller: ControllerProc) -> None:
    require(os.geteuid() == 0, "needs root to run a client as another uid")
    nobody = pwd.getpwnam("nobody")
    job = controller.cli("submit", "--", "true", check=True).stdout.strip()
    code, err = as_user(controller, nobody.pw_uid, nobody.pw_gid, "cancel", job)
    assert code == 3, err
    assert "nobody" in err and "root" in err and "may not cancel" in err
    code, err = as_user(controller, nobody.pw_uid, nobody.pw_gid, "priority", job, "10")
    assert code == 3
    code, err = as_user(controller, nobody.pw_uid, nobody.pw_gid, "node", "drain", "gpu01")
    assert code == 3 and "drain" in err
    assert controller.cli_json("show", job)["tasks"][0]["state"] != "CANCELLED"
    # nobody's own job: submitted and cancelled by nobody, attributed to nobody.
    code, err = as_user(controller, nobody.pw_uid, nobody.pw_gid, "submit", "--", "true")
    assert code == 0, err
    rows = controller.cli_json("queue", "--all")
    mine = [r for r in rows if r["user"] == "nobody"]
    assert len(mine) == 1
    code, err = as_user(controller, nobody.pw_uid, nobody.pw_gid, "cancel", "--all-mine")
    assert code == 0, err
    assert [r["user"] for r in controller.cli_json("queue", "--all")] == ["root"]


def test_non_admin_cannot_submit_above_user_priority_cap(controller: ControllerProc) -> None:
    require(os.geteuid() == 0, "needs root to run a client as another uid")
    nobody = pwd.getpwnam("nobody")
    code, err = as_user(controller, nobody.pw_uid, nobody.pw_gid, "submit", "--priority", "500", "--", "true")
    assert code == 3 and "500" in err
