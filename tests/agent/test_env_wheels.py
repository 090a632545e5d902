"""An offline node (`env_offline`, no env_wheelhouse of its own) builds a job's environment from the
wheels the controller shipped into its data cache (`environment.wheels`), with `uv --offline
--no-index`: no index is ever asked, even one the agent's environment names."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from hybridctl_agent.client import AgentCallError

from tests.agent.agent_harness import AgentProc
from tests.agent.env_kit import PY, UV, uv_for_all, world  # noqa: F401 - fixture
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
