"""Identity comes from the kernel (SO_PEERCRED): user B cannot touch user A's job."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import pytest

from tests.integration.harness import ControllerProc
from tests.integration.other_user import AsUser

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def nobody(controller: ControllerProc, as_user: AsUser) -> Callable[..., tuple[int, str]]:
    """`nobody(*args)`: the CLI as nobody against `controller`; (exit code, stderr)."""
    def run(*args: str) -> tuple[int, str]:
        res = as_user(controller.env, NOBODY.pw_uid, NOBODY.pw_gid, *args)
        return res.code, res.err.strip()
    return run


def test_other_user_cannot_cancel_or_reprioritise(controller: ControllerProc, nobody: Callable[..., tuple[int, str]]) -> None:
    job = controller.cli("submit", "--", "true", check=True).stdout.strip()
    code, err = nobody("cancel", job)
    assert code == 3, err
    assert "nobody" in err and "root" in err and "may not cancel" in err
    code, err = nobody("priority", job, "10")
    assert code == 3
    code, err = nobody("node", "drain", "gpu01")
    assert code == 3 and "drain" in err
    assert controller.cli_json("show", job)["tasks"][0]["state"] != "CANCELLED"
    # nobody's own job: submitted and cancelled by nobody, attributed to nobody.
    code, err = nobody("submit", "--", "true")
    assert code == 0, err
    rows = controller.cli_json("queue", "--all")
    mine = [r for r in rows if r["user"] == "nobody"]
    assert len(mine) == 1
    code, err = nobody("cancel", "--all-mine")
    assert code == 0, err
    assert [r["user"] for r in controller.cli_json("queue", "--all")] == ["root"]


def test_non_admin_cannot_submit_above_user_priority_cap(nobody: Callable[..., tuple[int, str]]) -> None:
    code, err = nobody("submit", "--priority", "500", "--", "true")
    assert code == 3 and "500" in err


def test_tilde_in_a_job_file_is_the_home_of_the_uid_that_submits_it(
    controller: ControllerProc, nobody: Callable[..., tuple[int, str]]
) -> None:
    """The controller expands `~` from the caller's uid (SO_PEERCRED), not from anything the client
    says: the same file submitted by root and by nobody gets each one's own home."""
    shared = Path(tempfile.mkdtemp(prefix="hyb-jobs-"))
    try:
        os.chmod(shared, 0o755)
        (shared / "job.yaml").write_text("workdir: ~/src\ncheckpoint_dir: ckpt\nrun: 'true'\n")
        (shared / "job.yaml").chmod(0o644)
        code, err = nobody("submit", str(shared / "job.yaml"))
        assert code == 0, err
        controller.cli("submit", str(shared / "job.yaml"), check=True)
    finally:
        shutil.rmtree(shared)
    rows = controller.cli_json("queue", "--all")
    specs = {r["user"]: controller.cli_json("show", str(r["job_id"]))["spec"] for r in rows}
    assert specs["nobody"]["workdir"] == os.path.join(NOBODY.pw_dir, "src")
    assert specs["root"]["workdir"] == os.path.join(pwd.getpwuid(0).pw_dir, "src")
    assert specs["nobody"]["checkpoint_dir"] == specs["root"]["checkpoint_dir"] == str(shared / "ckpt")
