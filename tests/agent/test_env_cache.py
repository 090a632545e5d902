"""The env cache's size cap (`env_cache_max_gb`): least recently used envs go first, an env a job
still on the node names is pinned, an env whose build lock is held is skipped, and deletion never
follows a link. Both cache caps refuse NaN, inf and negative values. The eviction itself
(envbuild.evict) runs on real directories here; the last tests drive it through a real agent."""

from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path
from typing import Callable, Dict, Iterator, Tuple

import pytest

from hybridctl_agent import config, envbuild

from tests.agent.agent_harness import AgentProc
from tests.agent.env_kit import PY, UV, uv_for_all, world  # noqa: F401 - fixture
from tests.agent.world_kit import launch, log, no_orphan_preparations  # noqa: F401 - autouse
from tests.conftest import require

MB = 1 << 20


class Cache:
    """An `<state>/envs` tree as the agent lays it out, with envs made by hand."""

    def __init__(self, base: Path) -> None:
        self.root = base / "envs"
        self.jobs = base / "jobs"
        for d in (self.root / "locks", self.root / "ready", self.jobs):
            d.mkdir(parents=True)
        self.n = 0

    def env(self, uid: int, size: int, age: float) -> str:
        """A ready env of `size` bytes last used `age` seconds ago; returns its hash."""
        self.n += 1
        digest = f"{self.n:032x}"
        d = self.root / f"u{uid}" / digest
        (d / "bin").mkdir(parents=True)
        (d / "bin" / "python").write_text("#!/bin/false\n")
        marker = self.root / "ready" / f"u{uid}-{digest}.json"
        marker.write_text(json.dumps({"uid": uid, "hash": digest, "bytes": size}))
        t = 1_700_000_000.0 - age
        os.utime(marker, (t, t))
        return digest

    def ready(self) -> set:
        return {p.name.split("-")[1][:-5] for p in (self.root / "ready").glob("*.json")}

    def job(self, key: str, uid: int, digest: str, exited: bool = False) -> Path:
        d = self.jobs / key
        d.mkdir()
        (d / "spec.json").write_text(json.dumps({"environment": {"uid": uid, "digest": digest}}))
        if exited:
            (d / "exit.json").write_text("{}")
        return d

    def evict(self, max_bytes: int) -> list:
        return envbuild.evict(self.root, self.jobs, max_bytes)


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path)


UID = os.getuid()


def test_least_recently_used_go_first_until_the_rest_fit(cache: Cache) -> None:
    old, mid, new = cache.env(UID, 40 * MB, 300), cache.env(UID, 40 * MB, 200), cache.env(UID, 40 * MB, 100)
    gone = cache.evict(90 * MB)
    assert gone == [(UID, old, 40 * MB)]
    assert cache.ready() == {mid, new}
    assert not (cache.root / f"u{UID}" / old).exists() and (cache.root / f"u{UID}" / mid / "bin").is_dir()
    assert cache.evict(90 * MB) == []  # fits now
    assert cache.evict(0) == []  # 0 = no cap


def test_an_env_named_by_a_job_without_an_exit_record_is_pinned(cache: Cache) -> None:
    old, new = cache.env(UID, 40 * MB, 300), cache.env(UID, 40 * MB, 100)
    cache.job("5.1", UID, old)
    cache.job(".build-6.1-1-2", UID, new)  # a job directory not yet renamed into place counts too
    assert cache.evict(1) == []
    (cache.jobs / "5.1" / "exit.json").write_text("{}")
    assert cache.evict(1) == [(UID, old, 40 * MB)]
    assert cache.ready() == {new}
    cache.job("7.1", UID + 1, new)  # another user's job names another env, whatever the hash
    assert cache.evict(1) == []


def test_an_env_whose_build_lock_is_held_is_skipped_and_the_next_goes(cache: Cache) -> None:
    busy, other = cache.env(UID, 40 * MB, 300), cache.env(UID, 40 * MB, 200)
    fd = os.open(cache.root / "locks" / f"u{UID}-{busy}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a build or reuse check of `busy` in progress
        assert cache.evict(50 * MB) == [(UID, other, 40 * MB)]
        assert cache.ready() == {busy}
    finally:
        os.close(fd)
    assert cache.evict(1) == [(UID, busy, 40 * MB)]


def test_a_planted_link_is_unlinked_never_followed(cache: Cache, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    (precious / "bin").mkdir(parents=True)
    (precious / "bin" / "data").write_text("keep me")
    digest = cache.env(UID, 40 * MB, 300)
    d = cache.root / f"u{UID}" / digest
    for p in sorted(d.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    d.rmdir()
    d.symlink_to(precious)  # the env's owner swapped its env for a link to someone's tree
    inner = cache.env(UID, 40 * MB, 200)
    (cache.root / f"u{UID}" / inner / "lib").symlink_to(precious)  # and a link inside an env
    assert [g[1] for g in cache.evict(1)] == [digest, inner]
    assert not os.path.lexists(d) and not (cache.root / f"u{UID}" / inner).exists()
    assert (precious / "bin" / "data").read_text() == "keep me"


def test_a_user_directory_that_is_a_link_is_not_entered(cache: Cache, tmp_path: Path) -> None:
    digest = cache.env(UID, 40 * MB, 300)
    elsewhere = tmp_path / "elsewhere"
    (cache.root / f"u{UID}").rename(elsewhere)
    (cache.root / f"u{UID}").symlink_to(elsewhere)
    assert cache.evict(1) == []  # skipped (no longer offered for reuse), nothing followed
    assert (elsewhere / digest / "bin" / "python").exists()


def test_deletion_checks_ownership(cache: Cache) -> None:
    require(os.geteuid() == 0, "changing a directory's owner needs root")
    theirs = cache.env(UID, 40 * MB, 300)
    os.chown(cache.root / f"u{UID}" / theirs, 65534, 65534)  # not the uid the marker names
    later = cache.env(UID, 40 * MB, 200)
    assert cache.evict(1) == [(UID, later, 40 * MB)]
    assert (cache.root / f"u{UID}" / theirs / "bin" / "python").exists()  # left alone
    assert cache.ready() == set()  # and no longer offered for reuse


@pytest.mark.parametrize("key", config.CACHE_CAPS)
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "-1", "-0.5"])
def test_cache_caps_refuse_nan_inf_and_negative(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "agent.json"
    path.write_text(f'{{"{key}": {value}}}')  # JSON as Python reads it: NaN and Infinity pass
    with pytest.raises(config.ConfigError) as err:
        config.load(str(path), {"state_dir": str(tmp_path / "s"), "socket": str(tmp_path / "a.sock")})
    text = str(err.value)
    assert key in text and repr(float(value)) in text and "finite number of GiB >= 0" in text, text
    assert str(path) in text


def test_cache_caps_accept_zero_and_finite_sizes(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"cache_max_gb": 0, "env_cache_max_gb": 2.5}))
    cfg = config.load(str(path), {"state_dir": str(tmp_path / "s"), "socket": str(tmp_path / "a.sock")})
    assert cfg.cache_max_gb == 0.0 and cfg.env_cache_max_gb == 2.5 and not math.isnan(cfg.env_cache_max_gb)
    assert config.load(None, {"state_dir": str(tmp_path / "s"), "socket": str(tmp_path / "a.sock")}
                       ).env_cache_max_gb == 100.0


def test_a_bad_cap_stops_the_agent_with_exit_2_naming_the_key(make_agent: Callable[..., AgentProc],
                                                              tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "agent.json"
    path.write_text('{"env_cache_max_gb": -1}')
    done = subprocess.run([sys.executable, "-m", "hybridctl_agent", "serve", "--config", str(path),
                           "--state-dir", str(tmp_path / "s"), "--socket", str(tmp_path / "a.sock")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(envbuild.__file__).parent.parent)})
    assert done.returncode == 2, done
    assert "env_cache_max_gb -1.0" in done.stderr and "finite number of GiB >= 0" in done.stderr


# ---- through a real agent -------------------------------------------------------------------


@pytest.fixture
def capped_agent(make_agent: Callable[..., AgentProc], world: Path, tmp_path: Path) -> AgentProc:  # noqa: F811
    """An agent whose env cache holds less than one env: every build evicts what it may."""
    require(UV is not None, "uv is not installed")
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"env_wheelhouse": str(world / "wheels"), "uv_path": uv_for_all(world),
                               "env_cache_max_gb": 1e-9}))
    agent = make_agent("--simulate-gpus", "1:A100", "--config", str(cfg))
    os.chmod(agent.base, 0o711)
    return agent


def _two_envs(world: Path) -> Tuple[Dict[str, str], Dict[str, str]]:  # noqa: F811
    from tests.agent.tiny_wheel import make_wheel

    make_wheel(world / "wheels", version="2.0")
    os.chmod(world / "wheels" / "hctiny-2.0-py3-none-any.whl", 0o644)
    (world / "two.txt").write_text("hctiny==2.0\n")
    os.chmod(world / "two.txt", 0o644)
    return {"requirements": str(world / "requirements.txt")}, {"requirements": str(world / "two.txt")}


def test_a_build_evicts_finished_envs_and_keeps_a_running_jobs(capped_agent: AgentProc,
                                                               world: Path, tmp_path: Path) -> None:  # noqa: F811
    one, two = _two_envs(world)
    ready = Path(capped_agent.state_dir) / "envs" / "ready"
    go = tmp_path / "go"
    # Job 80 holds env one (runs until `go` exists) while job 81 builds env two over the cap.
    launch(capped_agent, "80.1", f"python -c {PY!r}; while [ ! -e {go} ]; do sleep 0.05; done",
           environment=one)
    from tests.waiting import wait_for

    wait_for(lambda: capped_agent.job("80.1")["pid"], what="job 80 to start")
    launch(capped_agent, "81.1", f"python -c {PY!r}", environment=two)
    assert capped_agent.wait_exited("81.1")["exit_code"] == 0, log(capped_agent, "81.1", "stderr")
    # Over the cap, yet both stay: one is pinned by job 80 (running), two by job 81 (building).
    assert len(list(ready.glob("*.json"))) == 2
    assert "evicted" not in log(capped_agent, "81.1", "stderr")
    go.touch()
    assert capped_agent.wait_exited("80.1")["exit_code"] == 0
    # A third env's build evicts both, now that no unfinished job names them.
    (world / "three.txt").write_text("hctiny==1.0\nhctiny\n")
    os.chmod(world / "three.txt", 0o644)
    launch(capped_agent, "82.1", f"python -c {PY!r}", environment={"requirements": str(world / "three.txt")})
    assert capped_agent.wait_exited("82.1")["exit_code"] == 0, log(capped_agent, "82.1", "stderr")
    notes = log(capped_agent, "82.1", "stderr")
    assert notes.count("evicted environment") == 2, notes
    assert len(list(ready.glob("*.json"))) == 1
    users = Path(capped_agent.state_dir) / "envs" / f"u{os.getuid()}"
    assert len([p for p in users.iterdir() if not p.name.startswith(".")]) == 1
    launch(capped_agent, "83.1", f"python -c {PY!r}", environment=one)
    assert capped_agent.wait_exited("83.1")["exit_code"] == 0
    assert "built in" in log(capped_agent, "83.1", "stderr")  # it was evicted: built again
