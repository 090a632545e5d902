"""A database reset hands job ids out again. The controller's copy of an old cloud job's outputs
must not reach the new job that holds its id: a real controller, started on a home that keeps
root's old copy, sweeps it before it answers, and `nobody`, owner of the new job 1, sees nothing."""

from __future__ import annotations

import json
import pwd
from typing import Any, Callable

from tests.integration.harness import ControllerProc
from tests.integration.other_user import AsUser

NOBODY = pwd.getpwnam("nobody")


def test_a_new_job_with_an_old_id_does_not_read_the_old_jobs_outputs(
        start_controller: Callable[..., ControllerProc], as_user: AsUser) -> None:
    ctl = start_controller()
    assert ctl.cli("submit", "--", "true", check=True).stdout.strip() == "1"  # root's job 1
    ctl.stop()
    old = ctl.home / "outputs" / "1.a0.r0"  # as the autoscaler brings a cloud rank's outputs back
    old.mkdir(parents=True)
    (old / "secret.txt").write_text("root's results")
    for name in ("hybridctl.db", "hybridctl.db-wal", "hybridctl.db-shm"):  # the admin starts over
        ctl.home.joinpath(name).unlink(missing_ok=True)

    ctl.start()
    assert not old.exists()  # swept before the socket answered
    env: dict[str, Any] = ctl.env
    res = as_user(env, NOBODY.pw_uid, NOBODY.pw_gid, "submit", "--", "true")
    assert (res.code, res.out.strip()) == (0, "1"), res.err
    res = as_user(env, NOBODY.pw_uid, NOBODY.pw_gid, "outputs", "1", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["files"] == {}
