"""The job's world through the real controller, real sshd and a real agent: a job file naming a uv
environment (built offline from a wheelhouse), a file_mount of a local directory, one of a local
file and one of an s3:// object (a moto server on 127.0.0.1), and a setup. The second run of the
same job file on the same node builds nothing, runs no setup and moves no byte."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.integration.harness import ControllerProc, make_controller
from tests.integration.nodes import LabNode
from tests.waiting import wait_for

AGENTS = str(Path(__file__).resolve().parents[2] / "agents")
if AGENTS not in sys.path:
    sys.path.insert(0, AGENTS)

from hybridctl_agent.envs import find_uv  # noqa: E402
from tests.agent.tiny_wheel import make_wheel  # noqa: E402

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-2"}
UV = find_uv(None, os.environ.get("PATH", ""))
pytestmark = pytest.mark.needs_sshd


@pytest.fixture(autouse=True)
def _uv() -> None:
    require(UV is not None, "uv is not installed (pip install uv; the dev extra has it)")


class WorldNode(LabNode):
    """A lab node whose agent has a wheelhouse, uv and an S3 endpoint configured."""

    config: dict[str, Any] = {}

    def start_agent(self) -> None:
        cfg = self.base / "agent.json"
        cfg.write_text(json.dumps(self.config))
        log = open(self.base / "agent.log", "ab")
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "hybridctl_agent.cli", "serve", "--socket", str(self.socket), "--state-dir",
             str(self.state_dir), "--simulate-gpus", self.gpus, "--name", self.name, "--interval", "0.5",
             "--config", str(cfg)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **CREDS, "PYTHONPATH": AGENTS},
        )
        log.close()
        wait_for(self.socket.exists, 30, what=f"agent socket of {self.name}")


@contextlib.contextmanager
def lab(tmp_path: Path, agent_config: dict[str, Any]) -> Iterator[tuple[ControllerProc, WorldNode]]:
    """A controller and one 1-GPU node (`solo`: real sshd, a real agent with `agent_config`), added."""
    from tests.integration.sshd import Sshd, keygen, require_sshd

    require_sshd()
    key = keygen(tmp_path / "id_ed25519")
    node = WorldNode("solo", tmp_path / "solo", "1:T4", Sshd(tmp_path / "solo" / "sshd", key))
    node.config = agent_config
    ctl = make_controller(tmp_path / "ctl", {"scheduler": {"tick_seconds": 1.0}, "fleet": {"poll_interval": 0.5}})
    try:
        node.sshd.start()
        node.start_agent()
        ctl.start()
        assert ctl.cli(*node.add_args(key), timeout=120).returncode == 0
        yield ctl, node
    finally:
        ctl.stop()
        node.stop()


def ended(ctl: ControllerProc, job: str) -> dict[str, Any]:
    def probe() -> Any:
        t = ctl.cli_json("show", job)["tasks"][0]
        return t if t["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    return wait_for(probe, 120, what=f"job {job} to end")


def test_an_env_is_built_once_and_mounts_move_once(tmp_path: Path, moto_server: str) -> None:
    boto3 = pytest.importorskip("boto3")
    world = tmp_path / "world"
    make_wheel(world / "wheels")
    (world / "requirements.txt").write_text("hctiny==1.0\n")
    (world / "data" / "sub").mkdir(parents=True)
    (world / "data" / "a.txt").write_text("local dir file\n")
    (world / "data" / "sub" / "b.bin").write_bytes(os.urandom(50_000))
    (world / "one.txt").write_text("local single file\n")
    s3 = boto3.client("s3", endpoint_url=moto_server, **{k.lower(): v for k, v in CREDS.items()
                                                   if k != "AWS_DEFAULT_REGION"}, region_name="us-east-2")
    s3.create_bucket(Bucket="world", CreateBucketConfiguration={"LocationConstraint": "us-east-2"})
    blob = os.urandom(80_000)
    s3.put_object(Bucket="world", Key="ds/obj.bin", Body=blob)
    (world / "job.yaml").write_text(
        "environment:\n  requirements: requirements.txt\n"
        "file_mounts:\n  data: data\n  one.txt: ./one.txt\n  s3data: s3://world/ds/\n"
        f"setup: echo setup-ran >> {tmp_path / 'setups'}\n"
        "run: |\n"
        "  python -c 'import hctiny, os, sys; print(hctiny.VERSION, sys.prefix == os.environ[\"VIRTUAL_ENV\"])'\n"
        "  cat data/a.txt one.txt; sha256sum < data/sub/b.bin | cut -c1-16; sha256sum < s3data/obj.bin | cut -c1-16\n"
    )
    config = {"env_wheelhouse": str(world / "wheels"), "uv_path": UV, "s3_endpoint_url": moto_server}
    with lab(tmp_path, config) as (ctl, node):
        expected = ["1.0 True", "local dir file", "local single file",
                    hashlib.sha256((world / "data" / "sub" / "b.bin").read_bytes()).hexdigest()[:16],
                    hashlib.sha256(blob).hexdigest()[:16]]
        stderr = []
        for _ in range(2):
            job = ctl.cli("submit", str(world / "job.yaml"), check=True).stdout.strip()
            t = ended(ctl, job)
            err = ctl.cli("logs", job, "--stderr").stdout
            assert t["state"] == "SUCCEEDED", (t, err)
            assert ctl.cli("logs", job, check=True).stdout.split("\n")[:5] == expected
            stderr.append(err)
        first, second = stderr
        assert "built in" in first and "reused" in second and "built in" not in second
        assert "80000 bytes fetched" in first and "0 bytes fetched, 80000 bytes cached" in second
        assert (tmp_path / "setups").read_text().count("setup-ran") == 1
        objects = list((node.state_dir / "cache" / "objects").iterdir())
        # a.txt, b.bin, one.txt, obj.bin and requirements.txt (shipped: this node declares no shared_paths)
        assert len(objects) == 5
        log = (tmp_path / "ctl").rglob("*.log")
        sent = [ln for p in log for ln in p.read_text(errors="replace").splitlines() if "file_mounts:" in ln]
        assert [ln.split("file_mounts: ")[1] for ln in sent] == [
            "sent 50045 bytes to solo, read 50045 here (3 mounts, 1 environment files)",
            "sent 0 bytes to solo, read 0 here (3 mounts, 1 environment files)"]
        # a changed file (its size and mtime differ) is read again and only it is sent
        (world / "data" / "a.txt").write_text("changed local dir file\n")
        job = ctl.cli("submit", str(world / "job.yaml"), check=True).stdout.strip()
        assert ended(ctl, job)["state"] == "SUCCEEDED"
        assert ctl.cli("logs", job, check=True).stdout.split("\n")[1] == "changed local dir file"
        sent = [ln for p in (tmp_path / "ctl").rglob("*.log")
                for ln in p.read_text(errors="replace").splitlines() if "file_mounts:" in ln]
        assert sent[-1].split("file_mounts: ")[1] == \
            "sent 23 bytes to solo, read 50023 here (3 mounts, 1 environment files)"
        # the controller names the env as the node does, so the scorer can match them
        from hybridctl.control import mounts as ctl_mounts

        req = world / "requirements.txt"
        digest = ctl_mounts.env_digest("requirements", None, {"requirements.txt": hashlib.sha256(req.read_bytes()).hexdigest()},
                                       os.uname().machine)
        assert [p.name for p in (node.state_dir / "envs" / f"u{os.getuid()}").iterdir() if not p.name.startswith(".")] == [digest]
        # the controller's cache index: what the node reported in cache_list
        cache = wait_for(lambda: (c := ctl.cli_json("nodes")[0]["cache"]) and c["envs"] == 1 and c, 30,
                         what="the node's cache in `nodes --json`")
        assert cache["objects"] == 6 and cache["object_bytes"] == 50045 + 80000 + 23 and cache["env_bytes"] > 0


def test_an_image_job_is_refused_at_submit_when_no_node_has_a_container_runtime(tmp_path: Path) -> None:
    """This machine has neither podman nor apptainer: the node's hello says so, and a SkyPilot
    task with `image_id: docker:...` is refused with the reason instead of waiting forever."""
    import shutil

    if any(shutil.which(r, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
           for r in ("podman", "apptainer", "singularity")):
        pytest.skip("this machine has a container runtime: the refusal cannot happen here")
    job = tmp_path / "task.yaml"
    job.write_text("resources:\n  image_id: docker:nvcr.io/nvidia/pytorch:24.01-py3\nrun: nvidia-smi\n")
    with lab(tmp_path, {}) as (ctl, _node):
        # the fleet's session has said hello once telemetry shows (before that nothing is refused)
        wait_for(lambda: ctl.cli_json("nodes")[0]["telemetry"], 30, what="the node's session")
        res = ctl.cli("submit", str(job))
        assert res.returncode != 0 and res.stdout == ""
        assert ("job refused: image_id docker:nvcr.io/nvidia/pytorch:24.01-py3 needs podman, apptainer or "
                "singularity on a node, and none of the 1 node(s) has one") in res.stderr, res.stderr
        plain = ctl.cli("submit", "--", "true")
        assert plain.returncode == 0, plain.stderr
