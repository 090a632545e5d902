"""Python environments built with uv by a real agent, offline from a wheelhouse of a tiny wheel made
here: built once per (user, content hash) however many jobs ask at once, reused later, a failed
build named in the job's end, files read with the job's user's rights; setup once per node."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
from pathlib import Path
from typing import Callable

import pytest

from hybridctl_agent.client import AgentCallError
from tests.conftest import require

from tests.agent.agent_harness import AgentProc
from tests.agent.world_kit import launch, log, no_orphan_preparations  # noqa: F401 - autouse
from tests.agent.tiny_wheel import make_wheel
from tests.agent.env_kit import PY, UV, uv_for_all, world  # noqa: F401 - fixture


@pytest.fixture(autouse=True)
def _uv() -> None:
    require(UV is not None, "uv is not installed (pip install uv; the dev extra has it)")


@pytest.fixture
def env_agent(make_agent: Callable[..., AgentProc], world: Path, tmp_path: Path) -> AgentProc:
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"env_wheelhouse": str(world / "wheels"), "uv_path": uv_for_all(world)}))
    agent = make_agent("--simulate-gpus", "2:A100", "--config", str(cfg))
    os.chmod(agent.base, 0o711)  # jobs of other users must reach their job directories
    return agent


def test_concurrent_jobs_build_one_env_once_and_a_later_job_reuses_it(
        env_agent: AgentProc, world: Path) -> None:
    environment = {"requirements": str(world / "requirements.txt")}
    keys = [f"70_{i}.1" for i in range(3)]
    with env_agent.client() as c:
        for key in keys:
            c.call("launch", job={"key": key, "run": f"python -c {PY!r}", "uid": os.getuid(),
                                  "environment": environment})
    for key in keys:
        done = env_agent.wait_exited(key)
        assert done["exit_code"] == 0, (done, log(env_agent, key, "stderr"))
        assert log(env_agent, key).split() == ["1.0", "True"]
    notes = [log(env_agent, k, "stderr") for k in keys]
    assert sum("built in" in n for n in notes) == 1, notes
    assert sum("reused" in n for n in notes) == 2, notes
    launch(env_agent, "71.1", f"python -c {PY!r}", environment=environment)
    assert env_agent.wait_exited("71.1")["exit_code"] == 0
    assert "reused" in log(env_agent, "71.1", "stderr")
    ready = list((Path(env_agent.state_dir) / "envs" / "ready").glob("*.json"))
    assert len(ready) == 1 and json.loads(ready[0].read_text())["bytes"] > 0


def test_a_changed_definition_is_another_env(env_agent: AgentProc, world: Path) -> None:
    make_wheel(world / "wheels", version="2.0")
    os.chmod(world / "wheels" / "hctiny-2.0-py3-none-any.whl", 0o644)
    (world / "two.txt").write_text("hctiny==2.0\n")
    launch(env_agent, "72.1", f"python -c {PY!r}",
           environment={"requirements": str(world / "requirements.txt")})
    launch(env_agent, "73.1", f"python -c {PY!r}", environment={"requirements": str(world / "two.txt")})
    assert env_agent.wait_exited("72.1")["exit_code"] == 0
    assert env_agent.wait_exited("73.1")["exit_code"] == 0
    assert log(env_agent, "72.1").split()[0] == "1.0"
    assert log(env_agent, "73.1").split()[0] == "2.0"


def test_a_failed_build_ends_the_job_naming_the_step_and_showing_its_log(
        env_agent: AgentProc, world: Path) -> None:
    (world / "bad.txt").write_text("no-such-package-hc==9\n")
    launch(env_agent, "74.1", "echo should-not-run", environment={"requirements": str(world / "bad.txt")})
    done = env_agent.wait_exited("74.1")
    assert done["exit_code"] is None
    assert done["reason"].startswith("env_build_failed:"), done
    assert "step 'uv pip install'" in done["reason"] and "no-such-package-hc" in done["reason"]
    assert "no-such-package-hc" in log(env_agent, "74.1", "stderr")
    assert log(env_agent, "74.1") == ""
    assert not list((Path(env_agent.state_dir) / "envs" / "ready").glob("*.json"))


def test_a_uv_lock_env_builds_from_the_lock(env_agent: AgentProc, world: Path) -> None:
    proj = world / "proj"
    proj.mkdir(mode=0o755)
    (proj / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0.1"\nrequires-python = ">=3.8"\n'
        'dependencies = ["hctiny==1.0"]\n')
    import subprocess
    subprocess.run([UV, "lock", "--offline", "--no-index", "--find-links", str(world / "wheels"),
                    "--project", str(proj), "--no-config"], check=True, capture_output=True)
    for p in proj.iterdir():
        os.chmod(p, 0o644)
    launch(env_agent, "75.1", f"python -c {PY!r}", environment={"uv_lock": str(proj / "uv.lock")})
    done = env_agent.wait_exited("75.1")
    assert done["exit_code"] == 0, (done, log(env_agent, "75.1", "stderr"))
    assert log(env_agent, "75.1").split() == ["1.0", "True"]


def test_a_bad_environment_is_refused_naming_the_field(env_agent: AgentProc, world: Path) -> None:
    for bad, words in [({"requirements": "rel.txt"}, "job.environment.requirements"),
                       ({"pyproject": "/a", "requirements": "/b"}, "exactly one"),
                       ({"requirements": "/a", "pip": 1}, "'pip'"),
                       ({"requirements": "/a", "python": "3.12; rm"}, "job.environment.python")]:
        with pytest.raises(AgentCallError) as err:
            launch(env_agent, "76.1", "true", environment=bad)
        assert err.value.code == "bad_request" and words in str(err.value), err.value


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run jobs as nobody")
def test_another_users_env_is_theirs_and_files_are_read_with_their_rights(
        env_agent: AgentProc, world: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    if not os.access(sys.executable, os.X_OK):
        pytest.skip("no interpreter")
    secret = world / "private.txt"
    secret.write_text("hctiny==1.0\n")
    os.chmod(secret, 0o600)  # root's: the job's user may not read it, so neither may its launch
    job = {"uid": nobody.pw_uid, "gid": nobody.pw_gid, "user": "nobody"}
    with pytest.raises(AgentCallError) as err:
        launch(env_agent, "77.1", "true", environment={"requirements": str(secret)}, **job)
    assert "cannot read the environment's file" in str(err.value) and "Permission denied" in str(err.value)
    # uv needs a Python the job's user may run: one on the jobs' PATH (the test's may be private).
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not os.path.exists(f"/usr/bin/python{version}"):
        pytest.skip(f"no /usr/bin/python{version} for the job's user")
    environment = {"requirements": str(world / "requirements.txt"), "python": version}
    launch(env_agent, "78.1", f"python -c {PY!r}", environment=environment, **job)
    done = env_agent.wait_exited("78.1")
    assert done["exit_code"] == 0, (done, log(env_agent, "78.1", "stderr"))
    envs_dir = Path(env_agent.state_dir) / "envs"
    mine = envs_dir / f"u{nobody.pw_uid}"
    assert mine.stat().st_uid == nobody.pw_uid and (mine.stat().st_mode & 0o777) == 0o700
    assert all(p.stat().st_uid == nobody.pw_uid for p in mine.iterdir())
    # root's job naming the same file gets its own env: nobody's cannot end up in root's jobs
    launch(env_agent, "79.1", f"python -c {PY!r}", environment=environment)
    assert env_agent.wait_exited("79.1")["exit_code"] == 0
    assert "built in" in log(env_agent, "79.1", "stderr")
    assert (envs_dir / "locks").stat().st_uid == 0 and (envs_dir / "ready").stat().st_uid == 0


def test_setup_runs_once_per_node_unless_every_attempt(env_agent: AgentProc, tmp_path: Path) -> None:
    count = tmp_path / "setups"
    setup = f"echo x >> {count}"
    for key in ("80.1", "81.1"):
        launch(env_agent, key, "echo ran", setup=setup)
        assert env_agent.wait_exited(key)["exit_code"] == 0
    assert count.read_text().count("x") == 1
    launch(env_agent, "82.1", "echo ran", setup=setup, setup_every_attempt=True)
    assert env_agent.wait_exited("82.1")["exit_code"] == 0
    assert count.read_text().count("x") == 2
    launch(env_agent, "83.1", "echo ran", setup=setup + "\n")  # another setup text: runs
    assert env_agent.wait_exited("83.1")["exit_code"] == 0
    assert count.read_text().count("x") == 3


def test_a_failed_setup_runs_again_next_time(env_agent: AgentProc, tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    setup = f"echo try >> {tmp_path / 'tries'}; test -e {flag}"
    launch(env_agent, "84.1", "true", setup=setup)
    assert env_agent.wait_exited("84.1")["exit_code"] != 0
    flag.touch()
    for key in ("85.1", "86.1"):
        launch(env_agent, key, "true", setup=setup)
        assert env_agent.wait_exited(key)["exit_code"] == 0
    assert (tmp_path / "tries").read_text().count("try") == 2


def test_hello_advertises_uv_and_the_container_runtimes_found(env_agent: AgentProc, world: Path) -> None:
    hello = env_agent.call("hello")
    assert hello["runtimes"]["uv"] == uv_for_all(world) and hello["shared_paths"] == []
    for name in ("podman", "apptainer", "singularity"):
        assert (name in hello["runtimes"]) == (shutil.which(name, path=
                                                            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") is not None)


def test_a_shipped_definition_builds_from_the_nodes_cache(env_agent: AgentProc, world: Path) -> None:
    """Nodes that do not share the submitter's paths (cloud) get the defining file through the data
    cache (cache_add), and name the same env as a node that reads the path."""
    import hashlib

    data = (world / "requirements.txt").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    opened = env_agent.call("stage_open")
    Path(opened["path"], sha).write_bytes(data)
    env_agent.call("cache_add", token=opened["token"], files={sha: [sha, len(data)]})
    shipped = {"kind": "requirements", "files": {"requirements.txt": [sha, len(data)]}}
    launch(env_agent, "87.1", f"python -c {PY!r}", environment=shipped)
    launch(env_agent, "88.1", f"python -c {PY!r}", environment={"requirements": str(world / "requirements.txt")})
    for key in ("87.1", "88.1"):
        done = env_agent.wait_exited(key)
        assert done["exit_code"] == 0, (done, log(env_agent, key, "stderr"))
    assert len(list((Path(env_agent.state_dir) / "envs" / "ready").glob("*.json"))) == 1
    with pytest.raises(AgentCallError) as err:
        launch(env_agent, "89.1", "true", environment={"kind": "uv_lock", "files": shipped["files"]})
    assert err.value.code == "bad_request" and "naming exactly its defining files" in str(err.value)


def test_cancel_during_a_build_stops_it_and_the_job_never_starts(
        make_agent: Callable[..., AgentProc], world: Path, tmp_path: Path) -> None:
    slow = tmp_path / "slow-uv"
    slow.write_text(f"#!/bin/sh\necho $$ >> {tmp_path / 'pids'}\nsleep 300\nexec {UV} \"$@\"\n")
    slow.chmod(0o755)
    cfg = tmp_path / "slow.json"
    cfg.write_text(json.dumps({"env_wheelhouse": str(world / "wheels"), "uv_path": str(slow)}))
    agent = make_agent("--simulate-gpus", "1:A100", "--config", str(cfg))
    rec = launch(agent, "60.1", "echo ran", environment={"requirements": str(world / "requirements.txt")})
    assert rec["state"] == "running" and rec["pid"] is None
    from tests.agent.agent_harness import alive
    from tests.waiting import wait_for

    pids = tmp_path / "pids"
    pid = int(wait_for(lambda: pids.exists() and pids.read_text().split()[:1] and pids.read_text().split()[0],
                       what="the build to start uv"))
    agent.call("cancel", key="60.1", grace=1)
    done = agent.wait_exited("60.1")
    assert done["reason"] == "cancelled" and done["pid"] is None
    wait_for(lambda: not alive(pid), timeout=10, what="uv to be killed with the build")
    assert log(agent, "60.1") == ""
