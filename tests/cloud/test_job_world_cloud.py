"""Issue #15's "done when", walked end to end with real processes: one job file, never edited,
naming a uv-locked environment (built offline from a wheelhouse of a tiny wheel), a local
directory and an s3:// prefix (the suite's moto server) as file_mounts, a setup, and a step
checkpoint. A real controller, an on-prem simulated machine and the simulated cloud, whose
machines get the same agent settings (`cloud.simulated.agent_config`). The job

1. runs on-prem (prem1): the environment is built, the data fetched and shipped;
2. bursts by itself to a cloud node while prem1 is busy: the node builds the same environment
   (same content hash) and gets the same bytes;
3. runs again on that cloud node: nothing built, no setup, 0 bytes sent or fetched;
4. after a spot reclaim of that node, resumes on prem1 at the step it was stopped at.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from hybridctl.cloud.base import TAG_CLUSTER
from tests.agent.tiny_wheel import make_wheel
from tests.cloud.lab import CLUSTER, CloudLab
from tests.conftest import require
from tests.waiting import wait_for

try:
    from hybridctl_agent.envs import find_uv
except ImportError:  # pragma: no cover - the agents package is installed with the dev extra
    find_uv = None

UV = find_uv(None, os.environ.get("PATH", "")) if find_uv is not None else None

RUN = r"""python -c 'import hctiny, os, sys; print(hctiny.VERSION, sys.prefix == os.environ["VIRTUAL_ENV"])'
cat data/a.txt; sha256sum < data/sub/b.bin | cut -c1-16; sha256sum < s3data/obj.bin | cut -c1-16
ckpt="$HYBRIDCTL_CHECKPOINT_DIR/step"
i=$(cat "$ckpt" 2>/dev/null || echo 0)
trap 'echo "SIGTERM at step $i"; echo $i > "$ckpt"; exit 143' TERM
[ "$i" -gt 0 ] && echo "resumed from step $i"
while [ "$i" -lt "$STEPS" ]; do i=$((i + 1)); echo "step $i"; sleep "$STEP_TIME"; echo $i > "$ckpt"; done
echo "done at step $i"
"""


def world(base: Path, moto: str, setups: Path) -> tuple[Path, list[str]]:
    """The job's world on the submitting host: a wheelhouse, a uv project locked offline against
    it, a local data directory, objects under an s3:// prefix, and the job file. Returns the job
    file and the first lines every run prints (the environment's and the data's fingerprints)."""
    import boto3

    make_wheel(base / "wheels")
    proj = base / "proj"
    proj.mkdir(parents=True)
    (proj / "pyproject.toml").write_text('[project]\nname = "world"\nversion = "0.1"\nrequires-python = ">=3.8"\n'
                                         'dependencies = ["hctiny==1.0"]\n')
    assert UV is not None
    subprocess.run([UV, "lock", "--offline", "--no-index", "--find-links", str(base / "wheels"), "--project", str(proj),
                    "--no-config"], check=True, capture_output=True, timeout=60)
    (base / "data" / "sub").mkdir(parents=True)
    (base / "data" / "a.txt").write_text("local dir file\n")
    local = os.urandom(40_000)
    (base / "data" / "sub" / "b.bin").write_bytes(local)
    bucket = f"world-{uuid.uuid4().hex[:12]}"  # the moto server is the suite's: a bucket of our own
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-2")
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-east-2"})
    blob = os.urandom(60_000)
    s3.put_object(Bucket=bucket, Key="ds/obj.bin", Body=blob)
    job = base / "job.yaml"
    job.write_text(
        "name: world\n"
        "resources:\n  accelerators: A100:1\n"
        "environment:\n  uv_lock: proj/uv.lock\n"
        f"file_mounts:\n  data: data\n  s3data: s3://{bucket}/ds/\n"
        "envs:\n  STEPS: '2'\n  STEP_TIME: '0'\n"
        f'setup: echo "setup on $HYBRIDCTL_NODE" >> {setups}\n'
        "run: |\n" + "".join(f"  {line}\n" for line in RUN.splitlines())
    )
    return job, ["1.0 True", "local dir file", hashlib.sha256(local).hexdigest()[:16], hashlib.sha256(blob).hexdigest()[:16]]


def logs(lab: CloudLab, job: str, *args: str) -> str:
    return lab.ctl.cli("logs", job, *args, check=True).stdout


def env_note(stderr: str) -> tuple[str, str]:
    """(digest prefix, 'built' or 'reused') from the agent's note on the job's environment."""
    m = re.search(r"environment ([0-9a-f]{12}) (built in|is ready on this node: reused)", stderr)
    assert m, stderr
    return m.group(1), "built" if m.group(2) == "built in" else "reused"


def sent(lab: CloudLab) -> list[str]:
    """The controller's `file_mounts: sent N bytes to NODE, ...` lines, oldest first."""
    return [ln.split("file_mounts: ", 1)[1] for ln in lab.ctl.log.read_text(errors="replace").splitlines()
            if "file_mounts: sent" in ln]


def run_to_end(lab: CloudLab, job: str) -> tuple[dict[str, Any], str, str]:
    """The task once ended, its stdout and stderr."""
    t = lab.wait_state(job, "SUCCEEDED", "FAILED", "CANCELLED", timeout=90)
    err = logs(lab, job, "--stderr")
    assert t["state"] == "SUCCEEDED", (t, err, lab.ctl.log.read_text()[-3000:])
    return t, logs(lab, job), err


def test_one_job_file_runs_on_prem_bursts_reruns_warm_and_resumes_after_a_reclaim(
        make_lab: Any, moto_endpoint: str, tmp_path: Path) -> None:
    require(UV is not None, "uv is not installed (pip install uv; the dev extra has it)")
    pytest.importorskip("boto3")
    setups = tmp_path / "setups"
    job_file, first_lines = world(tmp_path / "world", moto_endpoint, setups)
    body = job_file.read_bytes()
    agent = {"uv_path": UV, "env_wheelhouse": str(tmp_path / "world" / "wheels"), "s3_endpoint_url": moto_endpoint}
    lab: CloudLab = make_lab(burst={"after": 0.5, "idle_timeout": 120.0}, agent=agent)
    size = sum(p.stat().st_size for p in (tmp_path / "world" / "data" / "a.txt", tmp_path / "world" / "data" / "sub" / "b.bin",
                                          tmp_path / "world" / "proj" / "uv.lock", tmp_path / "world" / "proj" / "pyproject.toml"))

    # 1. on-prem: the environment is built there, the local data shipped and the S3 data fetched.
    one = lab.submit(str(job_file))
    t, out, err = run_to_end(lab, one)
    assert t["nodes"] == "prem1"
    assert out.splitlines()[:4] == first_lines and out.splitlines()[-1] == "done at step 2", out
    digest, how = env_note(err)
    assert how == "built" and "60000 bytes fetched, 0 bytes cached" in err, err
    assert sent(lab) == [f"sent {size} bytes to prem1, read {size} here (2 mounts, 2 environment files)"]

    # 2. prem1 is busy: the same file bursts, by itself, to a cloud node, which builds the same env.
    hog = lab.submit("--gpus", "A100:1", "--", "sleep 600")
    lab.wait_state(hog, "RUNNING")
    two = lab.submit(str(job_file))
    t, out, err = run_to_end(lab, two)
    cloud = t["nodes"]
    assert cloud.startswith("cloud-"), t
    assert out.splitlines()[:4] == first_lines and out.splitlines()[-1] == "done at step 2", out
    assert env_note(err) == (digest, "built") and "60000 bytes fetched, 0 bytes cached" in err, err
    assert sent(lab)[-1] == f"sent {size} bytes to {cloud}, read {size} here (2 mounts, 2 environment files)"

    # 3. again on that node: nothing built, no setup, not a byte sent or fetched.
    three = lab.submit(str(job_file))
    t, out, err = run_to_end(lab, three)
    assert t["nodes"] == cloud, t
    assert out.splitlines()[:4] == first_lines, out
    assert env_note(err) == (digest, "reused") and "0 bytes fetched, 60000 bytes cached" in err, err
    assert sent(lab)[-1] == f"sent 0 bytes to {cloud}, read 0 here (2 mounts, 2 environment files)"
    assert setups.read_text().splitlines() == ["setup on prem1", f"setup on {cloud}"]

    # 4. a long run on the cloud node is reclaimed (with notice) part way; prem1 is free by then,
    # and the job resumes there from the checkpoint it wrote when stopped (then it is cancelled).
    four = lab.submit("--env", "STEPS=100000", "--env", "STEP_TIME=0.1", str(job_file))
    assert lab.wait_state(four, "RUNNING")["nodes"] == cloud
    lab.ctl.cli("cancel", hog, check=True)  # a running job stays where it is
    lab.wait_state(hog, "CANCELLED")
    wait_for(lambda: "step 2\n" in logs(lab, four), 60, interval=0.2, what="job 4 at step 2")
    [inst] = [i for i in lab.provider().list({TAG_CLUSTER: CLUSTER}) if i.name == cloud]
    lab.provider().preempt(inst.id, time.time() + 4)  # the notice comes now (preemption_warning 120 s)
    t = wait_for(lambda: (x := lab.task(four))["attempt"] == 1 and x["state"] == "RUNNING" and x, 60, interval=0.2,
                 what=f"job {four} running again (controller log: {lab.ctl.log})")
    assert t["nodes"] == "prem1", t
    before = wait_for(lambda: "SIGTERM at step " in (x := logs(lab, four, "--attempt", "0")) and x, 30, interval=0.2,
                      what="attempt 0's log")
    stopped = int(before.split("SIGTERM at step ")[1].split()[0])
    assert stopped >= 2, before
    after = wait_for(lambda: f"step {stopped + 2}\n" in (x := logs(lab, four)) and x, 30, interval=0.2,
                     what=f"attempt 1 past step {stopped + 2}")
    assert after.splitlines()[:6] == [*first_lines, f"resumed from step {stopped}", f"step {stopped + 1}"], after
    err = logs(lab, four, "--stderr")
    assert env_note(err) == (digest, "reused") and "0 bytes fetched, 60000 bytes cached" in err, err
    assert sent(lab)[-1] == "sent 0 bytes to prem1, read 0 here (2 mounts, 2 environment files)"
    events = [e["to"] for e in lab.ctl.cli_json("show", four)["events"]]
    assert events == ["PENDING", "STARTING", "RUNNING", "PREEMPTED", "PENDING", "STARTING", "RUNNING"], events
    lab.ctl.cli("cancel", four, check=True)
    assert job_file.read_bytes() == body  # one file, never edited


@pytest.mark.parametrize("agent_config, message", [
    ({"socket": "/tmp/x.sock"}, "cloud.simulated.agent_config.socket: '/tmp/x.sock' is not valid; each machine sets"),
    ({"uvpath": "/usr/bin/uv"}, "cloud.simulated.agent_config: unknown key 'uvpath'; known keys: "),
    ({"cache_max_gb": "lots"}, "cloud.simulated.agent_config: key 'cache_max_gb' has value 'lots'; expected float"),
    ({"shared_paths": ["data"]}, "cloud.simulated.agent_config: shared_paths ['data']; expected a list of absolute"),
    (["uv_path"], "cloud.simulated.agent_config: expected a mapping of settings, got ['uv_path']"),
])
def test_the_simulated_machines_agent_config_is_checked_when_the_config_loads(
        tmp_path: Path, agent_config: Any, message: str) -> None:
    """A mistake is refused naming the key at the controller's start, not found later as machines
    that fail to boot."""
    import yaml

    from hybridctl import config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cloud": {"simulated": {"agent_config": agent_config}}}))
    with pytest.raises(config.ConfigError) as err:
        config.load(path, env={})
    assert message in err.value.message and err.value.exit_code == 2
    path.write_text(yaml.safe_dump({"cloud": {"simulated": {"agent_config": {"uv_path": "/opt/uv", "cache_max_gb": 2}}}}))
    assert config.load(path, env={}).cloud.simulated.agent_config == {"uv_path": "/opt/uv", "cache_max_gb": 2}
