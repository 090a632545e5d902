"""The job's world through the real controller, real sshd and a real agent: a job file naming a uv
environment (built offline from a wheelhouse), a file_mount of a local directory, one of a local
file and one of an s3:// object (a moto server on 127.0.0.1), and a setup. The second run of the
same job file on the same node builds nothing, runs no setup and moves no byte."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.world_lab import CREDS, ended, lab, succeeded
from tests.waiting import wait_for

from hybridctl_agent.envs import find_uv  # noqa: E402
from tests.agent.tiny_wheel import make_wheel  # noqa: E402

UV = find_uv(None, os.environ.get("PATH", ""))
pytestmark = pytest.mark.needs_sshd


@pytest.fixture(autouse=True)
def _uv() -> None:
    require(UV is not None, "uv is not installed (pip install uv; the dev extra has it)")


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
            out, err = succeeded(ctl, world / "job.yaml")
            assert out.split("\n")[:5] == expected
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
    """The node's jobs see no podman, apptainer or singularity (its job_path is an empty directory,
    whatever this machine has installed): its hello says so, and a SkyPilot task with
    `image_id: docker:...` is refused with the reason instead of waiting forever."""
    job = tmp_path / "task.yaml"
    job.write_text("resources:\n  image_id: docker:nvcr.io/nvidia/pytorch:24.01-py3\nrun: nvidia-smi\n")
    (tmp_path / "nobin").mkdir()
    with lab(tmp_path, {"job_path": str(tmp_path / "nobin")}) as (ctl, _node):
        # the fleet's session has said hello once telemetry shows (before that nothing is refused)
        wait_for(lambda: ctl.cli_json("nodes")[0]["telemetry"], 30, what="the node's session")
        res = ctl.cli("submit", str(job))
        assert res.returncode != 0 and res.stdout == ""
        assert ("job refused: image_id docker:nvcr.io/nvidia/pytorch:24.01-py3 needs podman on a node, and "
                "none of the 1 node(s) has it") in res.stderr, res.stderr
        plain = ctl.cli("submit", "--", "true")
        assert plain.returncode == 0, plain.stderr


def test_an_offline_node_builds_from_the_wheels_the_controller_ships(tmp_path: Path) -> None:
    """The node says it has no package index (`env_offline`) and has no wheelhouse of its own; the
    controller's wheelhouse (`environments.wheelhouse`) ships it the wheels the job's environment
    needs, and only those, into its data cache; uv builds offline from them. A second run sends
    nothing."""
    house = tmp_path / "house"  # the controller's: the node never sees this path
    top = make_wheel(house, "hctiny", "1.0", body="import hcdep\n", requires=("hcdep>=2",))
    dep = make_wheel(house, "hcdep", "2.0")
    other = make_wheel(house, "hcother", "1.0")
    world = tmp_path / "world"
    world.mkdir()
    (world / "requirements.txt").write_text("hctiny==1.0\n")
    (world / "job.yaml").write_text(
        "environment:\n  requirements: requirements.txt\n"
        "run: python -c 'import hctiny, hcdep, os, sys; print(hctiny.VERSION, sys.prefix == os.environ[\"VIRTUAL_ENV\"])'\n")
    with lab(tmp_path, {"env_offline": True, "uv_path": UV},
             {"environments": {"wheelhouse": str(house)}}) as (ctl, node):
        stderr = []
        for _ in range(2):
            out, err = succeeded(ctl, world / "job.yaml")
            assert out.split("\n")[0] == "1.0 True"
            stderr.append(err)
        assert "--offline --no-index --find-links" in stderr[0] and "built in" in stderr[0]
        assert "reused" in stderr[1]
        objects = {p.name for p in (node.state_dir / "cache" / "objects").iterdir()}
        sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (top, dep, other)}
        assert sha[top] in objects and sha[dep] in objects and sha[other] not in objects
        lines = [ln.split("wheels for its environment on ")[1] for p in (tmp_path / "ctl").rglob("*.log")
                 for ln in p.read_text(errors="replace").splitlines() if "wheels for its environment" in ln]
        assert lines == [f"solo (offline), sent {top.stat().st_size + dep.stat().st_size} bytes",
                         "solo (offline), sent 0 bytes"], lines


def test_an_online_node_gets_no_wheels(tmp_path: Path) -> None:
    """Without env_offline the node uses its own index or wheelhouse: the controller sends nothing."""
    house = tmp_path / "house"
    make_wheel(house, "hctiny", "1.0")
    node_house = tmp_path / "nodehouse"
    make_wheel(node_house, "hctiny", "1.0")
    world = tmp_path / "world"
    world.mkdir()
    (world / "requirements.txt").write_text("hctiny==1.0\n")
    (world / "job.yaml").write_text("environment:\n  requirements: requirements.txt\nrun: python -c 'import hctiny'\n")
    with lab(tmp_path, {"env_wheelhouse": str(node_house), "uv_path": UV},
             {"environments": {"wheelhouse": str(house)}}) as (ctl, node):
        job = ctl.cli("submit", str(world / "job.yaml"), check=True).stdout.strip()
        assert ended(ctl, job)["state"] == "SUCCEEDED"
        sha = hashlib.sha256((house / "hctiny-1.0-py3-none-any.whl").read_bytes()).hexdigest()
        assert not (node.state_dir / "cache" / "objects" / sha).exists()
        assert os.path.isdir(node.state_dir / "envs")


def test_wheels_the_controller_downloaded_once_build_an_offline_node(tmp_path: Path) -> None:
    """`environments.download`: with no wheelhouse, the controller fetches the wheels an offline
    node's environment names (and their dependencies) from an index, here a real HTTP index on
    127.0.0.1, once; the next run asks the index nothing and sends nothing."""
    from tests.agent.tiny_wheel import WheelIndex

    pypi = tmp_path / "pypi"
    make_wheel(pypi, "hctiny", "1.0", body="import hcdep\n", requires=("hcdep",))
    make_wheel(pypi, "hcdep", "2.0")
    index = WheelIndex(pypi)
    world = tmp_path / "world"
    world.mkdir()
    (world / "requirements.txt").write_text("hctiny==1.0\n")
    (world / "job.yaml").write_text("environment:\n  requirements: requirements.txt\n"
                                    "run: python -c 'import hctiny; print(hctiny.VERSION)'\n")
    try:
        with lab(tmp_path, {"env_offline": True, "uv_path": UV},
                 {"environments": {"download": True, "index_url": index.url}}) as (ctl, node):
            asked = []
            for _ in range(2):
                assert succeeded(ctl, world / "job.yaml")[0].split("\n")[0] == "1.0"
                asked.append(len(index.requests))
            assert asked[0] > 0 and asked[1] == asked[0], index.requests  # downloaded once
            got = sorted(p.name for p in (tmp_path / "ctl" / "home" / "wheels").iterdir())
            assert got == ["hcdep-2.0-py3-none-any.whl", "hctiny-1.0-py3-none-any.whl"]
            lines = [ln.split("wheels for its environment on ")[1] for p in (tmp_path / "ctl").rglob("*.log")
                     for ln in p.read_text(errors="replace").splitlines() if "wheels for its environment on" in ln]
            assert lines[1] == "solo (offline), sent 0 bytes", lines
    finally:
        index.close()
