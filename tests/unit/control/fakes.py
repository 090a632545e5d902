"""In-process stand-ins for what the fleet and the autoscaler talk to: an agent link that records
every call and answers from a small scripted agent, and a cloud provider that records launches and
terminations. Both speak the real wire shapes, so the controller's `core.wire` checks run on them."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any, Callable, Mapping, Sequence

from hybridctl.cloud.base import CloudProvider, Instance, InstanceState, LaunchSpec, Notice
from hybridctl.core.burst import Offer
from hybridctl.ssh.link import AgentRefused, NodeUnreachable, Target


class FakeAgent:
    """One node's agent: its job records, as the real agent keeps them (key -> record)."""

    def __init__(self, name: str, gpus: int = 2) -> None:
        self.name = name
        self.hello: dict[str, Any] = {
            "protocol": 1, "node": name, "gpu_source": "simulated", "cpus": 8.0, "memory_mb": 65536,
            "gpus": [{"index": i, "name": "A100", "memory_total_mb": 40960} for i in range(gpus)],
            "agent_version": "test", "containment": "none: in-process test",
        }
        self.jobs: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.listing: Callable[[], object] | None = None
        """A scripted `jobs` answer (a lying or malformed agent) instead of the records."""
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.next_pid = 1000

    def answer(self, op: str, fields: dict[str, Any]) -> Any:
        self.calls.append((op, fields))
        if op == "hello":
            return self.hello
        if op == "sample":
            return {"seq": 1, "samples": [{"seq": 1, "time": 1.0, "gpus": []}]}
        if op == "jobs":
            if self.listing is not None:
                return self.listing()
            return {"jobs": [dict(r) for r in self.jobs.values()], "version": f"v{self.version}"}
        if op == "launch":
            job = fields["job"]
            rec = self.jobs.setdefault(job["key"], {"key": job["key"], "state": "running", "pid": self.next_pid,
                                                    "has_checkpoint": False})
            self.next_pid += 1
            self.version += 1
            return {"job": dict(rec)}
        if op == "cancel":
            rec = self.jobs.get(fields["key"])
            if rec is not None and rec["state"] == "running":
                rec.update(state="exited", signal=15, reason="cancelled")
                rec.pop("pid", None)
                self.version += 1
            return {"ok": True}
        if op == "forget":
            if self.jobs.pop(fields["key"], None) is None:
                raise AgentRefused(self.name, op, "unknown", f"no job {fields['key']}")
            self.version += 1
            return {"ok": True}
        if op == "logs":
            return {"data": f"log of {fields['key']}\n" if fields["offset"] == 0 else "",
                    "offset": fields["offset"] + (len(f"log of {fields['key']}\n") if fields["offset"] == 0 else 0),
                    "eof": True}
        raise AgentRefused(self.name, op, "unknown-op", f"the fake agent has no {op!r}")

    def exit(self, key: str, code: int) -> None:
        """The job's processes ended with `code`."""
        self.jobs[key].update(state="exited", exit_code=code)
        self.jobs[key].pop("pid", None)
        self.version += 1

    def ops(self, name: str) -> list[dict[str, Any]]:
        """The fields of every call of `name` so far."""
        return [f for op, f in self.calls if op == name]


class FakeAgentLink:
    """`ssh.link.AgentLink` over a `FakeAgent`: no SSH connection (files would be local)."""

    ssh_connection = None

    def __init__(self, agent: FakeAgent) -> None:
        self.agent = agent
        self.closed = False

    async def call(self, op: str, timeout: float = 30.0, **fields: Any) -> Any:
        if self.closed:
            raise NodeUnreachable(f"node {self.agent.name}: link closed")
        if op == "jobs" and "wait" in fields:  # the watcher's long poll: answer when the version moves
            since = fields.get("since")
            for _ in range(int(fields["wait"] * 100)):
                if since is None or f"v{self.agent.version}" != since:
                    break
                await asyncio.sleep(0.01)
            return {"version": f"v{self.agent.version}"}
        return self.agent.answer(op, fields)

    async def second_channel(self) -> FakeAgentLink:
        return FakeAgentLink(self.agent)

    async def close(self) -> None:
        self.closed = True


class FakeConnect:
    """`ssh.link.connect` for a set of fake agents; a name missing from `agents` is unreachable."""

    def __init__(self, agents: Mapping[str, FakeAgent]) -> None:
        self.agents = dict(agents)
        self.targets: list[Target] = []

    async def __call__(self, target: Target) -> FakeAgentLink:
        self.targets.append(target)
        agent = self.agents.get(target.name)
        if agent is None:
            raise NodeUnreachable(f"node {target.name}: no fake agent")
        return FakeAgentLink(agent)


OFFER = Offer("fake", "g.2x", "r1", "r1a", "A100", 2, 8.0, 65536, True, 1.5)


class FakeProvider(CloudProvider):
    """A provider whose instances are rows in a dict; it records what it was asked."""

    name = "fake"

    def __init__(self) -> None:
        self.instances: dict[str, Instance] = {}
        self.launched: list[LaunchSpec] = []
        self.terminated: list[str] = []
        self.notices: list[Notice] = []

    def offers(self, refresh: bool = False) -> builtins.list[Offer]:
        return [OFFER]

    def launch(self, spec: LaunchSpec) -> Instance:
        self.launched.append(spec)
        inst = Instance(f"i-{len(self.launched)}", "fake", spec.name, "pending", dict(spec.tags))
        self.instances[inst.id] = inst
        return inst

    def describe(self, instance_id: str) -> Instance:
        return self.instances.get(instance_id) or Instance(instance_id, "fake", "", InstanceState.TERMINATED)

    def list(self, tags: Mapping[str, str]) -> builtins.list[Instance]:
        return [i for i in self.instances.values() if i.alive and all(i.tags.get(k) == v for k, v in tags.items())]

    def terminate(self, instance_id: str) -> None:
        self.terminated.append(instance_id)
        inst = self.instances.get(instance_id)
        if inst is not None:
            self.instances[instance_id] = Instance(inst.id, inst.provider, inst.name, InstanceState.TERMINATED, inst.tags)

    def preemption_notices(self, instance_ids: Sequence[str]) -> builtins.list[Notice]:
        return [n for n in self.notices if n.instance_id in instance_ids]
