"""A controller's parts built in-process on a real Store (a tmp SQLite file) with fake agents:
the lifecycle, the fleet and the request handlers, wired as daemon.py wires them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from hybridctl.config import FleetConfig, NodeConfig, Settings
from hybridctl.control.fleet import Fleet, NodeSession
from hybridctl.control.identity import Caller
from hybridctl.control.lifecycle import Lifecycle
from hybridctl.control.nodes import config_record
from hybridctl.control.scheduler import Scheduler
from hybridctl.control.service import Controller
from hybridctl.core.model import JobStatus, NodeState
from hybridctl.store.sqlite import Store
from tests.unit.control.fakes import FakeAgent, FakeAgentLink, FakeConnect

ALICE = Caller(1001, 1001, "alice", "lab", admin=False)


class Clock:
    """Wall time that moves only when a test moves it."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Parts:
    store: Store
    settings: Settings
    clock: Clock
    mono: Clock
    lifecycle: Lifecycle
    scheduler: Scheduler
    fleet: Fleet
    ctl: Controller
    agents: dict[str, FakeAgent]
    connect: FakeConnect
    changes: list[int] = field(default_factory=list)

    def submit(self, **spec: object) -> int:
        spec.setdefault("run", "true")
        spec.setdefault("resources", {"accelerators": "A100:2"})
        return int(self.ctl.op_submit(ALICE, spec)["id"])

    def place(self, **spec: object) -> tuple[int, str]:
        """Submit a 2-GPU job and schedule it: (job, the node it was placed on)."""
        job = self.submit(**spec)
        self.scheduler.schedule()
        (node,) = self.store.task_nodes(job, 0)
        return job, node

    def state(self, job: int, task: int = 0) -> JobStatus:
        return self.store.task_states(job, task)[0][1]

    def session(self, name: str) -> NodeSession:
        """A session of `name` whose link is up (as after a hello), driven by hand: `await s.poll()`."""
        s = NodeSession(self.fleet, name)
        s.link = FakeAgentLink(self.agents[name])  # type: ignore[assignment]  # the fake speaks AgentLink's calls
        return s


def build(tmp_path: Path, names: tuple[str, ...] = ("n1", "n2"), settings: Settings | None = None) -> Parts:
    settings = settings or Settings(home=str(tmp_path), fleet=FleetConfig(poll_interval=0.02,
                                                                          checkpoint_sync_interval=3600))
    clock, mono = Clock(), Clock(0.0)
    store = Store(tmp_path / "hybridctl.db")
    for name in names:
        store.add_node(config_record(NodeConfig(name=name, host="local", gpus="2xA100", cpus=8, memory="64G")),
                       clock())
        store.set_link(name, NodeState.UP, "", clock(), seen=True)
    changes: list[int] = []
    lifecycle = Lifecycle(store, settings, clock, on_change=lambda: changes.append(1))
    scheduler = Scheduler(store, settings, lifecycle, clock)
    agents = {name: FakeAgent(name) for name in names}
    connect = FakeConnect(agents)
    fleet = Fleet(store, settings, lifecycle, connect=connect, monotonic=mono)
    ctl = Controller(store, settings, clock, lifecycle=lifecycle, scheduler=scheduler, fleet=fleet)
    return Parts(store, settings, clock, mono, lifecycle, scheduler, fleet, ctl, agents, connect, changes)


async def stop_sessions(fleet: Fleet) -> None:
    """Stop every running session and wait until their tasks have ended."""
    tasks = [s.task for s in fleet.sessions.values() if s.task is not None]
    fleet.stop_all()
    await asyncio.gather(*tasks, return_exceptions=True)
