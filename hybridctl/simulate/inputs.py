"""What `hybridctl simulate` reads besides the trace: the fleet file, and the burst limits and the
scheduling policy of a hybridctl config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybridctl.config import ConfigError, Settings
from hybridctl.core import burst
from hybridctl.core.model import Policy
from hybridctl.simulate.engine import NodeGroup

FLEET_EXAMPLE = """nodes:
  - {name: a100-, count: 4, gpus: 8, model: NVIDIA A100-SXM4-80GB, cpus: 128, memory_gb: 1024}
  - {name: h100-, count: 4, gpus: 8, model: NVIDIA H100 80GB HBM3}"""


def load_fleet(path: Path) -> list[NodeGroup]:
    """On-prem node groups of a fleet YAML (`nodes:` list of name, count, gpus, model, cpus, memory_gb)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the fleet file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {exc}") from None
    return parse_fleet(data, str(path))


def parse_fleet(data: Any, source: str) -> list[NodeGroup]:
    groups = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(groups, list) or not groups:
        raise ConfigError(f"{source}: nodes: expected a list of node groups, e.g.\n{FLEET_EXAMPLE}")
    out = []
    for i, g in enumerate(groups):
        where = f"{source}: nodes[{i}]"
        if not isinstance(g, dict):
            raise ConfigError(f"{where}: expected a mapping with name, count, gpus, model")
        try:
            count = int(g.get("count", 1))
            gpus = int(g["gpus"])
            cpus = float(g.get("cpus", 16 * max(gpus, 1)))
            mem = int(float(g.get("memory_gb", 128 * max(gpus, 1))) * 1024)
        except KeyError:
            raise ConfigError(f"{where}.gpus: missing (GPUs per node, an integer)") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"{where}: count, gpus, cpus and memory_gb must be numbers ({exc})") from None
        if count < 0 or gpus < 0:
            raise ConfigError(f"{where}: count {count} / gpus {gpus}: must be >= 0")
        model = g.get("model")
        if gpus and not model:
            raise ConfigError(f"{where}.model: a group with GPUs must name their model, e.g. NVIDIA A100-SXM4-80GB")
        out.append(NodeGroup(str(g.get("name") or f"n{i}-"), count, gpus, str(model or "GPU"), cpus, mem))
    return out


def limits(settings: Settings) -> burst.Limits:
    """The burst policy's limits from `cloud.burst`, exactly as the controller builds them."""
    from hybridctl.control.budget import limits as controller_limits

    return controller_limits(settings)


def policy(settings: Settings) -> Policy:
    """The scheduling policy from `scheduler:` (backfill depth, fair share, quotas, `preempt_below`),
    exactly as the controller builds it: a replay honours the lab's scheduler settings too."""
    from hybridctl.control.scheduler import policy as controller_policy

    return controller_policy(settings)
