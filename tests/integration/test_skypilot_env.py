"""SkyPilot task files inside hybridctl: the SKYPILOT_* variables of a single-node job, and
`secrets:` that reach the job and nothing else (not show, not --json, not the controller's log)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.harness import ControllerProc
from tests.integration.other_user import AsUser
from tests.waiting import wait_for

FLEET = {"poll_interval": 0.5}
SECRET = "hf_Zq9-sekrit-Vx81"
"""What must never be printed: greppable, and not a substring of anything else."""
ECHO_VARS = (
    "for v in SKYPILOT_NODE_RANK SKYPILOT_NODE_IPS SKYPILOT_NUM_NODES SKYPILOT_NUM_GPUS_PER_NODE "
    "SKYPILOT_TASK_ID SKYPILOT_USER SKYPILOT_SETUP_NODE_RANK SKYPILOT_CLUSTER_INFO HYBRIDCTL_ATTEMPT; "
    'do printf "%s=%s|\\n" "$v" "${!v-UNSET}"; done'
)


def done(ctl: ControllerProc, job: str) -> dict[str, Any]:
    def ended() -> Any:
        t = ctl.cli_json("show", job)["tasks"][0]
        return t if t["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    return wait_for(ended, 60, what=f"job {job} to end")


def submit(ctl: ControllerProc, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI with the submitting shell's HF_TOKEN as given (ctl.cli's environment is fixed)."""
    shell = {k: v for k, v in ctl.env.items() if k != "HF_TOKEN"}
    return subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "submit", *args],
                          env={**shell, **(env or {})}, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_a_single_node_job_sees_skypilots_variables(tmp_path: Path) -> None:
    from tests.integration.nodes import solo_node

    with solo_node(tmp_path, FLEET) as ctl:
        job = ctl.cli("submit", "--gpus", "2", "--name", "vllm serve", "--", ECHO_VARS, check=True).stdout.strip()
        assert done(ctl, job)["state"] == "SUCCEEDED"
        out = ctl.cli("logs", job, check=True).stdout
        seen = dict(line.rstrip("|").split("=", 1) for line in out.split("|\n") if "=" in line)
        submitted = ctl.cli_json("show", job)["submitted_at"]
        from datetime import datetime, timezone

        when = datetime.fromtimestamp(submitted, tz=timezone.utc).strftime("%Y-%m-%d-%H-%M-%S-%f")
        assert seen == {
            "SKYPILOT_NODE_RANK": "0", "SKYPILOT_NODE_IPS": "127.0.0.1", "SKYPILOT_NUM_NODES": "1",
            "SKYPILOT_NUM_GPUS_PER_NODE": "2", "SKYPILOT_TASK_ID": f"hybridctl-{when}_vllm-serve_{job}-0",
            "SKYPILOT_USER": pwd.getpwuid(os.getuid()).pw_name, "SKYPILOT_SETUP_NODE_RANK": "0",
            "SKYPILOT_CLUSTER_INFO": seen["SKYPILOT_CLUSTER_INFO"], "HYBRIDCTL_ATTEMPT": "0",
        }, out
        assert json.loads(seen["SKYPILOT_CLUSTER_INFO"])["cluster_name"] == "solo"


def test_a_secret_reaches_the_job_and_is_never_shown(tmp_path: Path, as_user: AsUser) -> None:
    from tests.integration.nodes import solo_node

    job_file = tmp_path / "task.yaml"
    job_file.write_text(
        "secrets:\n  HF_TOKEN: null\n  WANDB_KEY: abc-wandb\n"
        # The job prints a digest, so the secret itself appears in no file hybridctl keeps but its database.
        'run: |\n  echo "hf=$(printf %s "$HF_TOKEN" | sha256sum | cut -c1-16) wandb=$WANDB_KEY"\n'
    )
    nobody = pwd.getpwnam("nobody")
    digest = hashlib.sha256(SECRET.encode()).hexdigest()[:16]
    with solo_node(tmp_path, FLEET) as ctl:
        refused = submit(ctl, str(job_file))
        assert refused.returncode == 2 and "secrets.HF_TOKEN" in refused.stderr and "--secret HF_TOKEN" in refused.stderr
        unset = submit(ctl, "--secret", "HF_TOKEN", str(job_file), env=None)
        assert unset.returncode == 2 and "HF_TOKEN is not set in your environment" in unset.stderr, unset.stderr

        res = submit(ctl, "--secret", "HF_TOKEN", "--json", str(job_file), env={"HF_TOKEN": SECRET})
        assert res.returncode == 0, res.stderr
        assert SECRET not in res.stdout + res.stderr
        job = str(json.loads(res.stdout)["id"])
        assert done(ctl, job)["state"] == "SUCCEEDED"
        assert ctl.cli("logs", job, check=True).stdout.strip() == f"hf={digest} wandb=abc-wandb"

        mine = ctl.cli_json("show", job)
        assert mine["spec"]["secrets"] == {"HF_TOKEN": "<secret>", "WANDB_KEY": "<secret>"}
        for args in (("show", job), ("show", job, "--json"), ("queue", "--all", "--json"),
                     ("queue", "--finished", "--json")):
            res = ctl.cli(*args, check=True)
            assert SECRET not in res.stdout and "abc-wandb" not in res.stdout, args
            theirs = as_user(ctl.env, nobody.pw_uid, nobody.pw_gid, *args)
            assert theirs.code == 0, (args, theirs)
            assert SECRET not in theirs.out and "abc-wandb" not in theirs.out, (args, theirs.out)
        # The controller's own files: only its database holds the value (in the 0700 home).
        ctl.stop()
        leaks = [str(p) for p in ctl.home.rglob("*") if p.is_file() and not p.name.startswith("hybridctl.db")
                 and SECRET.encode() in p.read_bytes()]
        assert leaks == [] and ctl.log.exists()
        assert SECRET.encode() not in ctl.log.read_bytes()
