"""Node records from config and from `hybridctl node add`: shapes, names and defaults."""

from __future__ import annotations

import os
import re
from typing import Any

from hybridctl.config import NodeConfig
from hybridctl.core.errors import SpecError
from hybridctl.core.model import NodeState
from hybridctl.store.sqlite import NodeRecord

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise SpecError("NAME", name, "use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def parse_gpu_shape(text: str) -> list[dict[str, Any]]:
    """'8xA100' / 'A100:8' / '2xRTX3090,1xA6000' -> [{index, model}] in order."""
    gpus: list[dict[str, Any]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "x" in part and part.split("x", 1)[0].isdigit():
            count, model = part.split("x", 1)
        elif ":" in part:
            model, count = part.rsplit(":", 1)
        else:
            count, model = "1", part
        if not (count.isascii() and count.isdigit()) or not model:  # isdigit alone: '٣' is 3, int('²') raises
            raise SpecError("gpus", text, "expected e.g. '8xA100', 'A100:8' or '2xRTX3090,1xA6000'")
        gpus += [{"index": len(gpus) + i, "model": model} for i in range(int(count))]
    return gpus


def config_record(n: NodeConfig) -> NodeRecord:
    """A node declared in config. Simulated nodes are UP at once; real ones wait for their agent."""
    from hybridctl.core.spec import parse_memory

    check_name(n.name)
    if n.cpus < 0:
        raise SpecError(f"nodes.{n.name}.cpus", n.cpus,
                        "a number of CPU cores, e.g. 8 (0 or absent: what the agent reports)")
    return NodeRecord(
        name=n.name, host=n.host, port=n.port, ssh_user=n.user, identity=n.identity, agent_socket=n.agent_socket,
        site=n.site, link_state=NodeState.UP if n.simulated else NodeState.UNREACHABLE,
        link_reason="" if n.simulated else "not contacted yet", drained=False, drain_reason="",
        gpus=tuple(parse_gpu_shape(n.gpus)), cpus=float(n.cpus or (os.cpu_count() if n.simulated else 0) or 0),
        memory_mb=parse_memory(n.memory) if n.memory else 0, simulated=n.simulated,
        cpus_override=float(n.cpus) or None,
    )
