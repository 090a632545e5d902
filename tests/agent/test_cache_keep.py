"""cache_add's `keep`: the objects a launch uses that the node already holds are not evicted to
make room for the ones it sends (a capped cache used to drop them, and the job then failed
"not in this node's cache")."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import pytest

from hybridctl_agent.client import AgentCallError
from tests.agent.agent_harness import AgentProc


def add(agent: AgentProc, data: bytes, **extra: object) -> str:
    sha = hashlib.sha256(data).hexdigest()
    opened = agent.call("stage_open")
    Path(opened["path"], sha).write_bytes(data)
    agent.call("cache_add", token=opened["token"], files={sha: [sha, len(data)]}, **extra)
    return sha


@pytest.mark.parametrize("keep", [True, False])
def test_cache_add_keeps_what_the_same_launch_uses(make_agent: Callable[..., AgentProc], tmp_path: Path,
                                                   keep: bool) -> None:
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"cache_max_gb": 20_000 / 1e9}))  # room for one 12 kB object
    agent = make_agent("--simulate-gpus", "1:A100", "--config", str(cfg))
    first = add(agent, os.urandom(12_000))
    second = add(agent, os.urandom(12_000), **({"keep": [first]} if keep else {}))
    held = {o["sha256"] for o in agent.call("cache_list")["objects"]}
    assert held == ({first, second} if keep else {second})
    with pytest.raises(AgentCallError) as err:
        add(agent, b"x", keep=["../etc"])
    assert err.value.code == "bad_request" and "keep" in str(err.value)
