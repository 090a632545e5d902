"""Trust at the cloud file-transfer boundary (issue 12, attack 6): a job's workdir is read with its
owner's rights, never the controller's (root), and its outputs come back as the agent staged them
as the job's user, links not followed. Real controller, simulated cloud machines (agent + SSH
server on loopback), jobs submitted and run as `nobody`."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.cloud.lab import CloudLab
from tests.conftest import require
from tests.integration.other_user import AsUser, BoundCli


@pytest.fixture
def cloud(as_user: AsUser) -> Iterator[tuple[CloudLab, BoundCli, Path]]:
    require(os.geteuid() == 0, "needs root to run jobs as nobody")
    base = Path(tempfile.mkdtemp(prefix="hyb-tfc-"))  # every uid can enter: jobs run as nobody there
    base.chmod(0o755)
    lab = CloudLab(base, burst={"after": 0.5, "idle_timeout": 60.0})
    try:
        lab.start()
        yield lab, BoundCli(as_user, lab.ctl.env), base
    finally:
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)


def submit_as_nobody(lab: CloudLab, as_user: BoundCli, *args: str) -> str:
    nobody = pwd.getpwnam("nobody")
    before = {r["job_id"] for r in lab.ctl.cli_json("queue", "--all")}
    code, err = as_user(nobody.pw_uid, nobody.pw_gid, "submit", *args)
    assert code == 0, err
    [job] = {r["job_id"] for r in lab.ctl.cli_json("queue", "--all") if r["job_id"] not in before}
    return str(job)


def test_workdir_is_read_as_the_submitter_and_outputs_never_through_links(cloud: Any) -> None:
    lab, as_user, base = cloud
    private = base / "private"  # root's, mode 0700: nobody cannot list or read it
    private.mkdir(mode=0o700)
    (private / "secret.txt").write_text("TOPSECRET-workdir\n")
    secret = base / "root-only"
    secret.write_text("TOPSECRET-output\n")
    secret.chmod(0o600)
    mine = base / "mine"
    mine.mkdir()
    (mine / "input.txt").write_text("payload\n")

    stolen = submit_as_nobody(lab, as_user, "--placement", "cloud", "--gpus", "A100:1", "--workdir", str(private),
                              "--", "cat secret.txt")
    # Links in the output directory must be skipped, not followed (nobody's own jobs are below).
    outputs = lab.submit(
        "--placement", "cloud", "--gpus", "A100:1", "--workdir", str(mine), "--",
        f'cat input.txt; O="$HYBRIDCTL_OUTPUT_DIR"; echo result > "$O/out.txt"; mkdir "$O/d"; echo x > "$O/d/y";'
        f' ln -s {secret} "$O/leak"; ln -s {base} "$O/dirlink"; echo done')

    t = lab.wait_state(stolen, "FAILED", "SUCCEEDED", timeout=120)
    assert t["state"] == "FAILED"
    why = lab.ctl.cli_json("show", stolen)["events"][-1]["reason"]
    assert why.startswith("workdir upload to cloud-") and "Permission denied" in why, why
    assert "TOPSECRET" not in lab.ctl.cli("logs", stolen).stdout

    t = lab.wait_state(outputs, "FAILED", "SUCCEEDED", timeout=120)
    assert t["state"] == "SUCCEEDED", lab.ctl.log.read_text()[-3000:]
    assert lab.ctl.cli("logs", outputs, check=True).stdout.startswith("payload\n")
    out = lab.ctl.home / "outputs" / f"{outputs}.a0.r0"
    assert (out / "out.txt").read_text() == "result\n" and (out / "d" / "y").read_text() == "x\n"
    assert not (out / "leak").exists() and not (out / "dirlink").exists()
    for path in (lab.ctl.home / "outputs").rglob("*"):
        if path.is_file():
            assert b"TOPSECRET" not in path.read_bytes(), path


def test_a_job_of_another_user_runs_on_a_simulated_machine_and_cannot_read_its_keys(cloud: Any) -> None:
    """The simulated machines are the default provider's: another user's job must run there as on
    a server (it failed "cannot enter working directory": the machines' directories were 0700,
    the controller's umask), and the machine's own files (host key, authorized keys, records)
    must stay closed to it."""
    lab, as_user, base = cloud
    mine = base / "nobody-work"
    mine.mkdir()
    (mine / "input.txt").write_text("payload\n")
    job = submit_as_nobody(
        lab, as_user, "--placement", "cloud", "--gpus", "A100:1", "--workdir", str(mine), "--",
        'id -un; cat input.txt; M="${PWD%%/state/*}"; ls "$M"; cat "$M/ssh_host_key" "$M/authorized_keys"'
        ' "$M/instance.json"; ls "$M/state/jobs"; echo result > "$HYBRIDCTL_OUTPUT_DIR/out.txt"; echo END')
    t = lab.wait_state(job, "FAILED", "SUCCEEDED", timeout=120)
    assert t["state"] == "SUCCEEDED", lab.ctl.cli_json("show", job)["events"][-1]
    out = lab.ctl.cli("logs", job, check=True).stdout
    assert out.startswith("nobody\npayload\n") and out.rstrip().endswith("END"), out
    err = lab.ctl.cli("logs", job, "--stderr", check=True).stdout
    assert err.count("Permission denied") == 5, err  # the machine's listing, its 3 files, the jobs' listing
    assert "PRIVATE KEY" not in out + err and "ssh-ed25519" not in out + err
    assert (lab.ctl.home / "outputs" / f"{job}.a0.r0" / "out.txt").read_text() == "result\n"
