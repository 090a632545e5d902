"""Controller settings: one typed object, loaded once from YAML plus `HYBRIDCTL_*` environment
overrides (`__` separates levels: `HYBRIDCTL_SCHEDULER__TICK_SECONDS=2`), then passed down.

Only the controller reads it; the submit/queue client never does (it needs just the socket path)."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from hybridctl.core.errors import HybridctlError


class ConfigError(HybridctlError):
    """The configuration is invalid."""

    exit_code = 2


@dataclass(frozen=True)
class NodeConfig:
    """A node declared in config (nodes can also be added at run time with `hybridctl node add`)."""

    name: str
    host: str = "localhost"
    """SSH host name or address."""
    port: int = 22
    user: str | None = None
    """SSH user; None = the controller's user."""
    identity: str | None = None
    """SSH private key file; None = the SSH agent and default keys."""
    agent_socket: str | None = None
    """Path of the agent's Unix socket on the node; None = the agent's default."""
    site: str = "onprem"
    gpus: str = ""
    """For simulated nodes: '8xA100' or 'A100:8' or '2xRTX3090,1xA6000'. Real nodes report their own."""
    cpus: float = 0
    memory: str = ""
    simulated: bool = False
    """Declared shape only; nothing runs (placements are recorded). For tests and dry runs."""


@dataclass(frozen=True)
class SchedulerConfig:
    tick_seconds: float = 5.0
    """A scheduling pass also runs this often, besides on every submit, job end and node change."""
    fairshare_half_life_h: float = 168.0
    """Recent GPU-hours count for fair share with this half-life (hours)."""
    user_gpu_quota: Mapping[str, int] = field(default_factory=dict)
    """Max GPUs in use at once per user name; '*' sets the default for everyone."""
    group_gpu_quota: Mapping[str, int] = field(default_factory=dict)
    """Max GPUs in use at once per Unix group; '*' sets the default."""


@dataclass(frozen=True)
class FleetConfig:
    poll_interval: float = 1.0
    """Seconds between telemetry/job polls of each node, over its one persistent SSH channel."""
    unreachable_after: float = 30.0
    """A node silent this long is UNREACHABLE: nothing new is placed there, its jobs are kept."""
    lost_after: float = 300.0
    """A node silent this long is LOST: its jobs are requeued (attempt + 1) or failed."""
    connect_concurrency: int = 8
    """At most this many SSH handshakes at once (OpenSSH's MaxStartups drops bursts)."""
    foreign_gpu_busy: bool = True
    """A GPU used by a process that is not a hybridctl job counts as busy."""
    known_hosts: str = ""
    """The controller's own known_hosts file; empty = <home>/known_hosts."""
    bridge: bool = False
    """Reach agents through `hybridctl-agent bridge` on an exec channel instead of stream-local forwarding."""
    agent_command: str = "hybridctl-agent"
    """The agent command on nodes (for the bridge)."""
    log_pull_cap_mb: int = 64
    """When a job ends, up to this much of each of its logs is copied back to the controller."""


@dataclass(frozen=True)
class Settings:
    home: str = ""
    """State directory (database, socket, logs); empty = `$HYBRIDCTL_HOME` or ~/.local/state/hybridctl."""
    socket: str = ""
    """Controller socket path; empty = `<home>/hybridctl.sock`."""
    admin_group: str = "hybridctl-admin"
    """Members of this Unix group (and root) may act on every job and node."""
    socket_mode: int = 0o666
    """Permissions of the controller socket. Identity comes from SO_PEERCRED, so any local user may
    connect; each may act only on their own jobs."""
    max_user_priority: int = 100
    """Non-admins may set priorities up to this value; admins up to 1000."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    nodes: tuple[NodeConfig, ...] = ()

    @property
    def home_path(self) -> Path:
        from hybridctl import paths

        return Path(self.home) if self.home else paths.home()

    @property
    def socket_path(self) -> Path:
        if self.socket:
            return Path(self.socket)
        if os.environ.get("HYBRIDCTL_SOCKET"):
            return Path(os.environ["HYBRIDCTL_SOCKET"])
        return self.home_path / "hybridctl.sock"

    @property
    def db_path(self) -> Path:
        return self.home_path / "hybridctl.db"

    @property
    def known_hosts_path(self) -> Path:
        return Path(self.fleet.known_hosts) if self.fleet.known_hosts else self.home_path / "known_hosts"


def load(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `path` (None = defaults) and apply HYBRIDCTL_* overrides from `env`."""
    import yaml

    data: dict[str, Any] = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{where}: YAML syntax error: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of settings")
    _apply_env(data, os.environ if env is None else env)
    return _build(Settings, data, source, "")


_ENV_SKIP = {"HOME_DIR"}


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    import yaml

    for key, value in env.items():
        if not key.startswith("HYBRIDCTL_") or key in ("HYBRIDCTL_CONFIG", "HYBRIDCTL_SOCKET", "HYBRIDCTL_HOME"):
            continue
        parts = key[len("HYBRIDCTL_"):].lower().split("__")
        if not parts[0] in {f.name for f in dataclasses.fields(Settings)}:
            continue
        cur = data
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = yaml.safe_load(value)


def _build(cls: type, data: Mapping[str, Any], source: str, prefix: str) -> Any:
    import difflib
    import typing

    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; accepted: {', '.join(names)}"
            raise ConfigError(f"{source}: {dotted}: unknown setting{hint}")
        kwargs[key] = _coerce(hints[key], value, source, dotted)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, source: str, dotted: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {dotted}: expected a mapping, got {value!r}")
        return _build(hint, value, source, dotted + ".")
    if hint is SchedulerConfig:  # pragma: no cover - covered by is_dataclass
        return value
    text = str(hint)
    if text.startswith("tuple[hybridctl.config.NodeConfig"):
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {dotted}: expected a list of nodes, got {value!r}")
        nodes = tuple(_build(NodeConfig, v, source, f"{dotted}[{i}].") for i, v in enumerate(value))
        for i, n in enumerate(nodes):
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", n.name):
                raise ConfigError(f"{source}: {dotted}[{i}].name: {n.name!r} is not a valid node name; use letters, digits, '.', '_' and '-'")
        return nodes
    if hint in (int, float) or text in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {dotted}: {value!r} is not a number")
        return hint(value) if hint in (int, float) else value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {dotted}: {value!r} is not true/false")
        return value
    if text.startswith("typing.Mapping[str, int]"):
        if not isinstance(value, dict) or not all(isinstance(v, int) and v >= 0 for v in value.values()):
            raise ConfigError(f"{source}: {dotted}: expected a mapping of name: GPU count (≥ 0), got {value!r}")
        return {str(k): int(v) for k, v in value.items()}
    if value is None:
        return None
    return str(value) if hint is str or "str" in text else value
