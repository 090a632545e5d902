"""The nodes table: addresses, link state, an admin's drain, and the hardware an agent reported;
`node_views` joins it with the open allocations into what the scheduler sees free."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from hybridctl.core.errors import HybridctlError, NotFound
from hybridctl.core.model import GpuSlot, NodeState, NodeView
from hybridctl.store.base import Tables


@dataclass(frozen=True)
class NodeRecord:
    name: str
    host: str
    port: int
    ssh_user: str | None
    identity: str | None
    agent_socket: str | None
    site: str
    link_state: NodeState
    """UP, UNREACHABLE or LOST: whether the controller can reach the node's agent."""
    link_reason: str
    drained: bool
    drain_reason: str
    gpus: tuple[dict[str, Any], ...]
    """[{index, model, memory_mb?, healthy?, reason?, foreign?}] as the agent last reported."""
    cpus: float
    memory_mb: int
    simulated: bool
    last_seen: float | None = None
    cpus_override: float | None = None
    """An admin's CPU count (config or `node add --cpus`); `cpus` follows it, not the agent's report."""

    def state(self, busy: bool) -> tuple[NodeState, str]:
        """The state users see: a link problem first, then an admin's drain, else UP."""
        if self.link_state is not NodeState.UP:
            return self.link_state, self.link_reason
        if self.drained:
            return (NodeState.DRAINING if busy else NodeState.DRAINED), self.drain_reason
        return NodeState.UP, ""

    def to_dict(self, busy: bool = False) -> dict[str, Any]:
        state, reason = self.state(busy)
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "ssh_user": self.ssh_user,
            "site": self.site,
            "state": state.value,
            "state_reason": reason,
            "drained": self.drained,
            "gpus": list(self.gpus),
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "simulated": self.simulated,
            "last_seen": self.last_seen,
            "cpus_override": self.cpus_override,
        }


class NodeTables(Tables):
    # ---- nodes --------------------------------------------------------------------------------

    _NODE_COLS = (
        "name, host, port, ssh_user, identity, agent_socket, site, link_state, link_reason, drained, drain_reason,"
        " gpus, cpus, memory_mb, simulated, last_seen, cpus_override"
    )

    def add_node(self, rec: NodeRecord, now: float, *, replace: bool = True) -> None:
        """Insert a node, or (replace=True) update its address and shape, keeping an admin's drain."""
        self.fleet_version += 1
        conflict = (
            " ON CONFLICT(name) DO UPDATE SET host=excluded.host, port=excluded.port, ssh_user=excluded.ssh_user,"
            " identity=excluded.identity, agent_socket=excluded.agent_socket, site=excluded.site,"
            " gpus=excluded.gpus, cpus=excluded.cpus, cpus_override=excluded.cpus_override,"
            " memory_mb=excluded.memory_mb, simulated=excluded.simulated, updated_at=excluded.updated_at"
            if replace else ""
        )
        with self.tx() as c:
            if not replace and c.execute("SELECT 1 FROM nodes WHERE name=?", (rec.name,)).fetchone():
                raise HybridctlError(f"node {rec.name!r} already exists; `hybridctl node remove {rec.name}` first")
            c.execute(
                f"INSERT INTO nodes ({self._NODE_COLS}, added_at, updated_at) VALUES (?{',?' * 18})" + conflict,
                (rec.name, rec.host, rec.port, rec.ssh_user, rec.identity, rec.agent_socket, rec.site,
                 rec.link_state.value, rec.link_reason, int(rec.drained), rec.drain_reason,
                 json.dumps(list(rec.gpus)), rec.cpus, rec.memory_mb, int(rec.simulated), rec.last_seen,
                 rec.cpus_override, now, now),
            )

    def remove_node(self, name: str) -> None:
        self.fleet_version += 1
        with self.tx() as c:
            if c.execute("SELECT 1 FROM allocations WHERE node=? AND end IS NULL", (name,)).fetchone():
                raise HybridctlError(
                    f"node {name} still runs jobs; drain it (`hybridctl node drain {name}`) and wait, or cancel them"
                )
            if c.execute("DELETE FROM nodes WHERE name=?", (name,)).rowcount == 0:
                raise NotFound(f"node {name!r} does not exist; `hybridctl nodes` lists the nodes")

    def set_drain(self, name: str, drained: bool, reason: str, now: float) -> None:
        self._update_node(name, now, drained=int(drained), drain_reason=reason if drained else "")

    def set_link(self, name: str, state: NodeState, reason: str, now: float, seen: bool = False) -> None:
        fields: dict[str, Any] = {"link_state": state.value, "link_reason": reason}
        if seen:
            fields["last_seen"] = now
        self._update_node(name, now, **fields)

    def set_hardware(self, name: str, gpus: Sequence[dict[str, Any]], cpus: float, memory_mb: int, now: float) -> None:
        self.fleet_version += 1
        self._update_node(name, now, gpus=json.dumps(list(gpus)), cpus=cpus, memory_mb=memory_mb)

    def _update_node(self, name: str, now: float, **fields: Any) -> None:
        sets = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            cur = c.execute(f"UPDATE nodes SET {sets}, updated_at=? WHERE name=?", (*fields.values(), now, name))
            if cur.rowcount == 0:
                raise NotFound(f"node {name!r} does not exist; `hybridctl nodes` lists the nodes")

    def nodes(self) -> list[NodeRecord]:
        return self._node_rows(" ORDER BY name", ())

    def _node_rows(self, where: str, args: tuple[Any, ...]) -> list[NodeRecord]:
        return [
            NodeRecord(n, h, p, u, i, a, s, NodeState(ls), lr, bool(d), dr, tuple(json.loads(g)), c, m, bool(sim), seen,
                       co)
            for n, h, p, u, i, a, s, ls, lr, d, dr, g, c, m, sim, seen, co in self.conn.execute(
                f"SELECT {self._NODE_COLS} FROM nodes{where}", args
            )
        ]

    def node(self, name: str) -> NodeRecord:
        """One node by name: a single-row query (called per node per poll, so never a full scan)."""
        found = self._node_rows(" WHERE name=?", (name,))
        if not found:
            raise NotFound(f"node {name!r} does not exist; `hybridctl nodes` lists the nodes")
        return found[0]

    def node_views(self) -> list[NodeView]:
        """Nodes with what is free on them now (total minus held allocations)."""
        held_gpus: dict[str, set[int]] = {}
        held_cpu: dict[str, float] = {}
        held_mem: dict[str, int] = {}
        for a in self.open_allocations():
            held_gpus.setdefault(a.node, set()).update(a.gpus)
            held_cpu[a.node] = held_cpu.get(a.node, 0.0) + a.cpus
            held_mem[a.node] = held_mem.get(a.node, 0) + a.memory_mb
        views = []
        for n in self.nodes():
            used = held_gpus.get(n.name, set())
            slots = tuple(
                GpuSlot(int(g["index"]), str(g["model"]), free=int(g["index"]) not in used and not g.get("foreign"),
                        healthy=bool(g.get("healthy", True)))
                for g in n.gpus
            )
            state, _reason = n.state(busy=n.name in held_cpu)
            views.append(
                NodeView(n.name, slots, n.cpus, n.cpus - held_cpu.get(n.name, 0.0), n.memory_mb,
                         n.memory_mb - held_mem.get(n.name, 0), state, n.site)
            )
        return views
