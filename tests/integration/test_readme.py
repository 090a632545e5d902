"""The README's "Submitting jobs" examples, taken from README.md itself and submitted to a real
controller: an edit that breaks one of them (or a change of the CLI that does) fails here."""

from __future__ import annotations

import os
import pwd
import re
import select
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hybridctl.control.client import Client
from tests.conftest import ctrl_c_reaches_it
from tests.integration.harness import REPO, ControllerProc

SECTION = "Submitting jobs"


def readme_examples() -> tuple[list[list[str]], str]:
    """(every `hybridctl submit ...` line of the section's sh blocks as argv, its job file YAML)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"^## {SECTION}\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, f"README.md has no '## {SECTION}' section"
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", m[1], re.S | re.M)
    commands = [shlex.split(line, comments=True) for lang, body in blocks if lang == "sh"
                for line in body.splitlines() if line.startswith("hybridctl submit")]
    yamls = [body for lang, body in blocks if lang == "yaml"]
    assert len(yamls) == 1, f"expected one job file example in '{SECTION}', found {len(yamls)}"
    return commands, yamls[0]


def run_cli(c: ControllerProc, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hybridctl.cli.main", *argv[1:]], cwd=cwd, env=c.env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def run_waiting(c: ControllerProc, argv: list[str], cwd: Path) -> str:
    """`submit --wait` blocks until the job ends (never, on simulated nodes): take the job id it
    prints first, then stop waiting with Ctrl-C as a user would."""
    p = subprocess.Popen([sys.executable, "-m", "hybridctl.cli.main", *argv[1:]], cwd=cwd, env=c.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                         preexec_fn=ctrl_c_reaches_it)
    try:
        assert p.stdout is not None and p.stderr is not None
        ready, _, _ = select.select([p.stdout], [], [], 60)
        assert ready, "submit --wait printed no job id within 60 s"
        job_id = p.stdout.readline().strip()
        ready, _, _ = select.select([p.stderr], [], [], 60)  # its first progress line: it is waiting
        assert ready, "submit --wait printed no progress within 60 s"
        progress = p.stderr.readline()
        assert progress.startswith(f"job {job_id}: "), progress
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert job_id.isdigit(), err
    assert f"stopped waiting; job {job_id} goes on" in err
    return job_id


def fill_to(c: ControllerProc, last_id: int) -> None:
    """Queue throwaway jobs until job `last_id` exists (the job file depends on job 41)."""
    with Client(c.socket, timeout=60) as client:
        while int(client.call("submit", spec={"run": "true", "name": "filler"}, source="test")["id"]) < last_id:
            pass


def test_the_readme_examples_are_accepted_as_written(controller: ControllerProc, tmp_path: Path) -> None:
    commands, job_yaml = readme_examples()
    assert len(commands) >= 4, commands
    (tmp_path / "job.yaml").write_text(job_yaml)
    depends = [int(d) for d in re.findall(r"^depends_on: \[(.*)\]", job_yaml, re.M)[0].split(",")]
    submitted: dict[str, list[str]] = {}
    for argv in commands:
        if "job.yaml" in argv:
            fill_to(controller, max(depends))
        if "--wait" in argv:
            job_id = run_waiting(controller, argv, tmp_path)
        else:
            res = run_cli(controller, argv, tmp_path)
            assert res.returncode == 0, f"{shlex.join(argv)}: {res.stderr}"
            job_id = res.stdout.strip()
        assert job_id.isdigit(), (argv, job_id)
        submitted[job_id] = argv
    home = pwd.getpwuid(os.getuid()).pw_dir
    for job_id, argv in submitted.items():
        job: dict[str, Any] = controller.cli_json("show", job_id)
        spec = job["spec"]
        assert job["user"] == pwd.getpwuid(os.getuid()).pw_name
        for key in ("workdir", "checkpoint_dir"):  # every path comes out absolute
            assert spec[key] is None or spec[key].startswith("/"), (argv, key, spec[key])
        if "job.yaml" in argv:
            assert spec["workdir"] == f"{home}/src/resnet"  # `~` is the submitter's home
            assert (job["name"], job["priority"], len(job["tasks"])) == ("resnet", 10, 20)  # the flag wins
            assert spec["depends_on"] == depends and spec["envs"] == {"EPOCHS": "10"}
        else:
            run = argv[argv.index("--") + 1:]
            assert spec["run"] == (shlex.join(run) if len(run) > 1 else run[0])
            assert spec["workdir"] is None
    assert len(submitted) == len(commands)
