"""Fixtures for the node agent tests: real agent processes on private sockets. The agent is not
installed with the controller (it is copied to nodes on its own), so `agents/` goes on sys.path
here, before any test module imports `hybridctl_agent`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

AGENTS_DIR = str(Path(__file__).resolve().parents[2] / "agents")
if AGENTS_DIR not in sys.path:
    sys.path.insert(0, AGENTS_DIR)

from tests.agent.agent_harness import AgentProc  # noqa: E402


@pytest.fixture
def make_agent() -> Iterator[Callable[..., AgentProc]]:
    """Start agents with extra `serve` args; all are stopped and their jobs killed at the end."""
    made: List[AgentProc] = []

    def make(*args: str, env: Optional[Dict[str, str]] = None, start: bool = True) -> AgentProc:
        agent = AgentProc(list(args), env=env)
        made.append(agent)
        return agent.start() if start else agent

    yield make
    for agent in made:
        agent.cleanup()


@pytest.fixture
def agent(make_agent: Callable[..., AgentProc]) -> AgentProc:
    """An agent with 4 simulated A100s, sampling every 0.2 s."""
    return make_agent("--simulate-gpus", "4:A100", "--interval", "0.2", "--history", "60")
