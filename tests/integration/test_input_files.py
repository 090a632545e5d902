"""What users hand the CLI, end to end through a real controller: files that are not UTF-8 are
refused with the byte that is wrong, and paths in job files and flags mean what the submitter
means (`~` is the submitter's home, a relative path is relative to the file or to the shell)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import ControllerProc

HOME = pwd.getpwuid(os.getuid()).pw_dir


def submit(c: ControllerProc, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI, run from `cwd` (relative paths on the command line are relative to it)."""
    return subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "submit", *args], cwd=cwd, env=c.env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def queued(c: ControllerProc) -> int:
    return len(c.cli_json("queue", "--all"))


def test_a_job_file_that_is_not_utf8_is_refused_naming_the_byte(controller: ControllerProc, tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_bytes(b"name: resnet\nrun: echo caf\xe9\n")
    res = submit(controller, "job.yaml", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr == ("hybridctl: job.yaml: not UTF-8 text: byte 0xe9 at offset 26 (line 2); "
                          "save it as UTF-8\n")
    (tmp_path / "win.yaml").write_text("run: echo hi\n", encoding="utf-16")  # Notepad's "Unicode"
    res = submit(controller, str(tmp_path / "win.yaml"), cwd=tmp_path)
    assert res.returncode == 2 and "win.yaml: not UTF-8 text: byte 0xff at offset 0" in res.stderr
    assert "UTF-16" in res.stderr and "Traceback" not in res.stderr
    assert queued(controller) == 0
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbfname: caf\xc3\xa9\nrun: 'true'\n")  # UTF-8 with a BOM is fine
    job = submit(controller, "bom.yaml", cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    assert controller.cli_json("show", job.stdout.strip())["name"] == "café"


def test_a_config_file_that_is_not_utf8_stops_the_server_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_bytes(b"scheduler:\n  tick_seconds: 1 # \xa0\n")
    env = dict(os.environ, HYBRIDCTL_HOME=str(tmp_path / "home"), HYBRIDCTL_SOCKET=str(tmp_path / "s.sock"))
    res = subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "server", "--config", str(cfg)], env=env,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res.stderr
    assert f"{cfg}: not UTF-8 text: byte 0xa0 at offset 31 (line 2)" in res.stderr
    assert "Traceback" not in res.stderr


def test_paths_in_a_job_file_are_resolved_at_submit_as_the_submitter_means(
    controller: ControllerProc, tmp_path: Path
) -> None:
    jobs = tmp_path / "project" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "job.yaml").write_text("workdir: ~/src/resnet\ncheckpoint_dir: ../ckpt\nrun: python train.py\n")
    res = submit(controller, "project/jobs/job.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    spec = controller.cli_json("show", res.stdout.strip())["spec"]
    assert spec["workdir"] == f"{HOME}/src/resnet"  # ~ = the submitter's home
    assert spec["checkpoint_dir"] == str(tmp_path / "project" / "ckpt")  # relative to the file, not the shell
    (jobs / "rel.yaml").write_text("workdir: .\nrun: python train.py\n")
    spec = controller.cli_json("show", submit(controller, str(jobs / "rel.yaml"), cwd=tmp_path).stdout.strip())["spec"]
    assert spec["workdir"] == str(tmp_path)  # a workdir is relative to the shell, as `sky launch` reads it


def test_paths_in_flags_are_relative_to_the_shell_and_win_over_the_file(
    controller: ControllerProc, tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "job.yaml").write_text("workdir: /elsewhere\nrun: 'true'\n")

    def workdir(*args: str) -> str:
        res = submit(controller, *args, cwd=tmp_path / "sub")
        assert res.returncode == 0, res.stderr
        return str(controller.cli_json("show", res.stdout.strip())["spec"]["workdir"])

    assert workdir("--workdir", "data", "--", "true") == str(tmp_path / "sub" / "data")
    assert workdir("--workdir=~/w", "--", "true") == f"{HOME}/w"  # `=` keeps the shell from expanding it
    assert workdir("../job.yaml", "--workdir", "..") == str(tmp_path)
    assert workdir("../job.yaml") == "/elsewhere"


def test_a_path_that_cannot_be_resolved_is_refused_naming_the_field(
    controller: ControllerProc, tmp_path: Path
) -> None:
    (tmp_path / "job.yaml").write_text("checkpoint_dir: ~no-such-user-here/ckpt\nrun: 'true'\n")
    res = submit(controller, "job.yaml", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.startswith("hybridctl: job.yaml: checkpoint_dir: '~no-such-user-here/ckpt' cannot be "
                                 "resolved: user 'no-such-user-here' has no home directory on this host")
    assert queued(controller) == 0
