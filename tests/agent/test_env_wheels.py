"""An offline node (`env_offline`, no env_wheelhouse of its own) builds a job's environment from the
wheels the controller shipped into its data cache (`environment.wheels`), with `uv --offline
--no-index`: no index is ever asked, even one the agent's environment names. The wheels, linked
into the job directory for the build, are the job's uid's alone while it runs."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pwd
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict

import pytest

from hybridctl_agent import envbuild, envs as envs_mod, world as world_mod
from hybridctl_agent.cache import ContentCache
from hybridctl_agent.client import AgentCallError

from tests.agent.agent_harness import AgentProc
from tests.agent.env_kit import PY, UV, uv_for_all, world  # noqa: F401 - fixture
from tests.agent.uid_kit import as_uid, open_as, open_tmp, private_account  # noqa: F401 - fixture
from tests.agent.tiny_wheel import make_wheel
from tests.agent.world_kit import launch, log, no_orphan_preparations  # noqa: F401 - autouse
from tests.conftest import require


@pytest.fixture
def offline_agent(make_agent: Callable[..., AgentProc], world: Path, tmp_path: Path) -> AgentProc:  # noqa: F811
    """An agent with no wheelhouse of its own, that says it has no index. Its environment names an
    index on a closed port of 127.0.0.1: a build that asked any index would fail on it."""
    require(UV is not None, "uv is not installed")
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"env_offline": True, "uv_path": uv_for_all(world)}))
    agent = make_agent("--simulate-gpus", "1:A100", "--config", str(cfg),
                       env={**os.environ, "UV_INDEX_URL": "http://127.0.0.1:9/simple"})
    os.chmod(agent.base, 0o711)
    return agent


def ship(agent: AgentProc, *paths: Path) -> Dict[str, Any]:
    """What control/wheels.ship does, over the agent's socket: stage the files, cache_add them."""
    opened = agent.call("stage_open")
    out = {}
    for p in paths:
        data = p.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        Path(opened["path"], sha).write_bytes(data)
        out[p.name] = [sha, len(data)]
    agent.call("cache_add", token=opened["token"], files={v[0]: v for v in out.values()})
    return out


def test_hello_says_the_node_is_offline(offline_agent: AgentProc) -> None:
    assert offline_agent.call("hello")["env_offline"] is True


def test_an_env_builds_offline_from_shipped_wheels(offline_agent: AgentProc, world: Path) -> None:  # noqa: F811
    dep = make_wheel(world / "ship", "hcdep", "3.0")
    top = make_wheel(world / "ship", "hctiny", "1.0", body="import hcdep\n", requires=("hcdep",))
    shipped = ship(offline_agent, top, dep)
    env = {"requirements": str(world / "requirements.txt"), "wheels": shipped}
    launch(offline_agent, "90.1", f"python -c {PY!r}", environment=env)
    done = offline_agent.wait_exited("90.1")
    notes = log(offline_agent, "90.1", "stderr")
    assert done["exit_code"] == 0, (done, notes)
    assert log(offline_agent, "90.1").split() == ["1.0", "True"]
    assert "--offline --no-index --find-links" in notes and "hcdep" in notes
    job_env = Path(offline_agent.state_dir) / "jobs" / "90.1" / "env"
    assert not (job_env / "wheels").exists()  # the links into the cache went with the build


def test_without_the_wheels_the_build_fails_naming_the_package(offline_agent: AgentProc,
                                                               world: Path) -> None:  # noqa: F811
    launch(offline_agent, "91.1", "echo never", environment={"requirements": str(world / "requirements.txt")})
    done = offline_agent.wait_exited("91.1")
    assert done["reason"].startswith("env_build_failed:") and "hctiny" in done["reason"], done
    assert "127.0.0.1:9" not in log(offline_agent, "91.1", "stderr")  # no index was asked


def test_bad_or_absent_wheels_are_refused(offline_agent: AgentProc, world: Path) -> None:  # noqa: F811
    base = {"requirements": str(world / "requirements.txt")}
    for bad in ({"../x.whl": ["0" * 64, 1]}, {"x.tar.gz": ["0" * 64, 1]}, {"x-1-py3-none-any.whl": ["zz", 1]},
                [1, 2]):
        with pytest.raises(AgentCallError) as err:
            launch(offline_agent, "92.1", "true", environment={**base, "wheels": bad})
        assert err.value.code == "bad_request" and "job.environment.wheels" in str(err.value)
    with pytest.raises(AgentCallError) as err:
        launch(offline_agent, "93.1", "true",
               environment={**base, "wheels": {"hctiny-1.0-py3-none-any.whl": ["a" * 64, 10]}})
    assert err.value.code == "refused" and "not in this node's cache" in str(err.value)


# ---- the shipped wheels are the job's user's alone, during the build too ---------------------------
# A job key is guessable (job id and rank) and job directories are searchable (0711), so what the
# build leaves in `<job>/env/` (the user's definition files, the wheels the controller shipped,
# maybe a lab's private code) must be reachable by the job's uid only (and the agent).

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other uids")
WHEEL = "hcsecret-1.0-py3-none-any.whl"


def job_request(state: Path, uid: int, gid: int, as_root: bool = True) -> Dict[str, Any]:
    """A build request as envs.plan_environment makes it, for a job directory made as jobs.py makes
    it (0711, the env files written by world.write_files), with one shipped wheel in the cache."""
    cache = ContentCache(str(state))
    cache.prepare()
    data = b"a lab's private code " + os.urandom(8).hex().encode()
    sha = hashlib.sha256(data).hexdigest()
    (cache.tmp / "w").write_bytes(data)
    cache.add(str(cache.tmp / "w"), sha, len(data))
    env_cache = envs_mod.EnvCache(str(state))
    env_cache.prepare()
    job = state / "jobs" / "90.1"
    job.mkdir(parents=True, mode=0o711)
    os.chmod(state / "jobs", 0o711)
    files = {"requirements.txt": b"hcsecret==1.0\n"}
    world_mod.write_files(job, SimpleNamespace(setup_marker=None), files, uid, gid)  # type: ignore[arg-type]
    spec = envs_mod.parse({"requirements": "/shipped"})
    return envs_mod.build_request(
        env_cache, spec, "0" * 32, files, uid=uid, gid=gid, groups=[], home="/", as_root=as_root, uv="uv",
        job_path="/usr/bin:/bin", wheelhouse=None, build_dir=str(job / "env"), log=str(job / "stderr"),
        offline=True, wheels=envs_mod.wheel_paths(str(cache.objects), {WHEEL: (sha, len(data))}))


def set_up_build(req: Dict[str, Any]) -> None:
    """What a build does before its first uv step: open its build directory to the job's uid and
    link the shipped wheels (envbuild._build_locked)."""
    bfd = envbuild.open_build_dir(req)
    try:
        envbuild._link_wheels(req, bfd)
    finally:
        os.close(bfd)


@root_only
def test_during_a_build_only_the_jobs_uid_reaches_its_shipped_wheels(open_tmp: Path) -> None:  # noqa: F811
    nobody = pwd.getpwnam("nobody")
    req = job_request(open_tmp, 4242, 4242)
    set_up_build(req)
    env_dir = Path(req["build_dir"])
    paths = [str(env_dir / "wheels" / WHEEL), str(env_dir / "wheels"), str(env_dir / "requirements.txt")]
    assert open_as(4242, 4242, paths) == [0, 0, 0]  # uv, as the job's user, lists and reads them
    for uid, gid in ((nobody.pw_uid, nobody.pw_gid), (4243, 0), (4243, 4242)):  # nor its group's
        assert open_as(uid, gid, paths) == [errno.EACCES] * 3, (uid, gid)
    for d in (env_dir, env_dir / "wheels"):
        st = d.stat()
        assert st.st_uid == 0 and st.st_mode & 0o007 == 0, oct(st.st_mode)  # the agent's; others nothing
    assert os.listxattr(env_dir / "wheels") == ["system.posix_acl_access"]


@root_only
def test_without_posix_acls_the_wheels_go_to_a_private_group_or_the_build_is_refused(
        open_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    nobody, mine = pwd.getpwnam("nobody"), private_account()

    def no_acls(*_a: object, **_k: object) -> None:  # a fake filesystem without POSIX ACLs, on purpose
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_acls)
    req = job_request(open_tmp / "a", mine.pw_uid, mine.pw_gid)
    set_up_build(req)
    wheels = Path(req["build_dir"], "wheels")
    for d in (wheels.parent, wheels):
        assert (d.stat().st_uid, d.stat().st_gid, d.stat().st_mode & 0o777) == (0, mine.pw_gid, 0o750)
    assert open_as(mine.pw_uid, mine.pw_gid, [str(wheels / WHEEL), str(wheels)]) == [0, 0]
    assert open_as(nobody.pw_uid, nobody.pw_gid, [str(wheels / WHEEL)]) == [errno.EACCES]
    req = job_request(open_tmp / "b", nobody.pw_uid, nobody.pw_gid)  # nogroup: shared, never widened
    with pytest.raises(OSError, match=f"cannot give uid {nobody.pw_uid} alone .* gid {nobody.pw_gid} is shared"):
        set_up_build(req)
    assert not os.path.lexists(Path(req["build_dir"], "wheels"))
    assert Path(req["build_dir"]).stat().st_mode & 0o777 == 0o700


def test_a_link_in_place_of_the_wheels_directory_is_not_followed(tmp_path: Path) -> None:
    req = job_request(tmp_path, os.geteuid(), os.getegid(), as_root=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, Path(req["build_dir"], "wheels"))
    with pytest.raises(OSError):
        set_up_build(req)
    assert os.listdir(elsewhere) == []


@root_only
def test_an_agent_not_root_keeps_the_build_directory_to_itself(open_tmp: Path) -> None:  # noqa: F811
    nobody = pwd.getpwnam("nobody")
    state = open_tmp / "state"
    state.mkdir()
    os.chown(state, nobody.pw_uid, nobody.pw_gid)

    def agent() -> str:  # the agent, as nobody; its jobs are nobody's
        req = job_request(state, nobody.pw_uid, nobody.pw_gid, as_root=False)
        set_up_build(req)
        wheels = Path(req["build_dir"], "wheels")
        return repr([oct(p.stat().st_mode & 0o777) for p in (wheels.parent, wheels)] + [len((wheels / WHEEL).read_bytes())])

    size = len(b"a lab's private code ") + 16
    assert as_uid(nobody.pw_uid, nobody.pw_gid, agent) == repr(["0o700", "0o700", size])


@root_only
def test_another_user_cannot_open_a_shipped_wheel_while_the_real_build_runs(
        make_agent: Callable[..., AgentProc], world: Path, tmp_path: Path) -> None:  # noqa: F811
    """The probe runs inside the build (uv's wrapper, at the install step, the wheels linked),
    as nobody: no sleeps, no guess at when the build is under way."""
    require(UV is not None and shutil.which("setpriv") is not None, "uv or setpriv is not installed")
    nobody = pwd.getpwnam("nobody")
    probe = world / "probe.txt"
    wrapper = world / "uv-probe"  # uv itself, after trying the wheels as nobody (root's job only)
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1 $2" = "pip install" ] && [ "$(id -u)" = 0 ]; then\n'
        '  for w in "$(pwd)"/wheels/*.whl; do\n'
        f"    if setpriv --reuid={nobody.pw_uid} --regid={nobody.pw_gid} --clear-groups /bin/cat -- \"$w\""
        " >/dev/null 2>&1; then echo \"opened $w\"; else echo \"refused $w\"; fi\n"
        f"  done >> {probe}\n"
        "fi\n"
        f'exec {uv_for_all(world)} "$@"\n')
    wrapper.chmod(0o755)
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"env_offline": True, "uv_path": str(wrapper)}))
    agent = make_agent("--simulate-gpus", "1:A100", "--config", str(cfg))
    os.chmod(agent.base, 0o711)  # the jobs directory is reachable, as on a node
    shipped = ship(agent, make_wheel(world / "ship", "hctiny", "1.0"))
    launch(agent, "94.1", f"python -c {PY!r}",
           environment={"requirements": str(world / "requirements.txt"), "wheels": shipped})
    done = agent.wait_exited("94.1")
    assert done["exit_code"] == 0, (done, log(agent, "94.1", "stderr"))
    job_env = agent.job_dir("94.1") / "env"
    assert probe.read_text().split() == ["refused", str(job_env / "wheels" / "hctiny-1.0-py3-none-any.whl")]
    assert not (job_env / "wheels").exists()
    assert open_as(nobody.pw_uid, nobody.pw_gid, [str(job_env / "requirements.txt")]) == [13]  # EACCES


@root_only
def test_a_users_own_job_builds_from_its_shipped_wheels_through_the_acl(
        offline_agent: AgentProc, world: Path) -> None:  # noqa: F811
    nobody = pwd.getpwnam("nobody")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    require(os.path.exists(f"/usr/bin/python{version}"), f"no /usr/bin/python{version} for the job's user")
    shipped = ship(offline_agent, make_wheel(world / "ship", "hctiny", "1.0"))
    env = {"requirements": str(world / "requirements.txt"), "wheels": shipped, "python": version}
    launch(offline_agent, "95.1", f"python -c {PY!r}", environment=env,
           uid=nobody.pw_uid, gid=nobody.pw_gid, user="nobody")
    done = offline_agent.wait_exited("95.1")
    assert done["exit_code"] == 0, (done, log(offline_agent, "95.1", "stderr"))
    assert log(offline_agent, "95.1").split() == ["1.0", "True"]
    assert not (offline_agent.job_dir("95.1") / "env" / "wheels").exists()


def test_a_copy_across_file_systems_is_whole_or_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a hard link cannot be made (another file system), the wheel is copied under a temporary
    name and renamed into place: a copy cut short by a crash (its `.part` left behind) is
    replaced, never taken for the wheel by the next build in that job directory."""
    req = job_request(tmp_path, os.geteuid(), os.getegid(), as_root=False)
    wheels = Path(req["build_dir"], "wheels")
    wheels.mkdir(mode=0o700)
    (wheels / f".{WHEEL}.part").write_bytes(b"half a wh")  # what a killed copy left

    def other_fs(*_a: object, **_k: object) -> None:  # a link across file systems, on purpose
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", other_fs)
    set_up_build(req)
    src = Path(req["wheels"][WHEEL])
    assert (wheels / WHEEL).read_bytes() == src.read_bytes()
    assert sorted(os.listdir(wheels)) == [WHEEL]
