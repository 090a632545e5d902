"""The agent's one typed settings object: defaults (which depend on running as root or not),
an optional YAML/JSON file, then command-line overrides. Paths are decided here only."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from socket import gethostname
from typing import Any, Dict, List, Mapping, Optional

GPU_SOURCES = ("auto", "nvml", "simulated", "none")
NVML_LIBRARY_ENV = "HYBRIDCTL_AGENT_NVML_LIBRARY"
"""Path of libnvidia-ml to load instead of the default; a missing path forces the no-driver case."""

_MODEL_MEMORY_GB = {"A100": 80, "H100": 80, "H200": 141, "V100": 32, "A10": 24, "A10G": 24,
                    "L4": 24, "L40S": 48, "T4": 16, "A6000": 48, "RTX4090": 24}


CACHE_CAPS = ("cache_max_gb", "env_cache_max_gb")
"""The size caps of the node's caches, in GiB: finite and >= 0, checked at load."""


class ConfigError(Exception):
    """A bad config file, key or flag; the message names the file and the key."""


@dataclass
class SimConfig:
    """Simulated GPUs (only used when `gpu_source` is `simulated`)."""

    count: int = 0
    """How many GPUs to simulate."""
    model: str = "A100"
    """Model name; GPUs are reported as 'NVIDIA <model>'."""
    memory_gb: int = 80
    """Memory per GPU in GiB."""
    seed: int = 0
    """Seed of the readings' noise: the same seed gives the same readings."""


@dataclass
class HealthConfig:
    """How GPU faults turn a GPU unhealthy and back."""

    auto_recover: bool = True
    """A GPU becomes healthy again once no fault was seen for `recover_after_s`."""
    recover_after_s: float = 60.0
    """Quiet time before an auto-recovery."""


@dataclass
class AgentConfig:
    """Everything the agent reads from its environment, loaded once and passed down."""

    socket: str
    """Unix socket the agent listens on (the only way in; no TCP port)."""
    state_dir: str
    """Job directories (scripts, logs, exit codes) live under `<state_dir>/jobs/`."""
    name: str = field(default_factory=gethostname)
    """Node name reported in `hello` and given to jobs as HYBRIDCTL_NODE."""
    gpu_source: str = "auto"
    """auto (NVML if a driver answers, else none), nvml, simulated or none."""
    simulate: SimConfig = field(default_factory=SimConfig)
    interval: float = 1.0
    """Seconds between telemetry samples."""
    history: float = 600.0
    """Seconds of samples kept in the ring buffer."""
    allowed_group: Optional[str] = None
    """When root: this group may also use the socket (mode 0660 instead of 0600)."""
    kill_grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a job hits its time limit."""
    jobs_rescan: float = 1.0
    """A `jobs` long poll wakes when a supervisor reports a change; it also re-reads the job
    directory this often, in case a wake-up was lost (the agent was down, or its queue full)."""
    job_path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    """PATH given to jobs."""
    nvml_library: Optional[str] = None
    """Load libnvidia-ml from this path instead of the loader's default."""
    health: HealthConfig = field(default_factory=HealthConfig)
    orphan_timeout: float = 0.0
    """Cloud nodes: with no request from the controller for this many seconds, run
    `orphan_command` and exit, so a dead controller cannot run up a bill (0 = never)."""
    orphan_command: Optional[str] = None
    """Shell command run on orphan timeout, e.g. `sudo -n shutdown -h now`."""
    cgroup_enable: bool = True
    """Run each job in its own cgroup (when root and a cgroup hierarchy is writable), so a stop
    reaches every process it started and its memory/CPU/process limits are enforced; false:
    process-group killing only (hello reports which, as `containment`)."""
    cgroup_root: Optional[str] = None
    """The cgroup mount to use: a cgroup2 mount point, or the directory holding v1 controller
    mounts (memory/, pids/, ...). Default: found in /proc/self/mountinfo, preferring v1
    controllers where a host mounts both (hybrid), else the cgroup2 mount."""
    cgroup_parent: str = "/hybridctl"
    """Job cgroups are `<parent>/job-<key>` in each hierarchy: an absolute parent counts from the
    hierarchy's root, a relative one from the agent's own cgroup (v1, or v2 in a delegated
    subtree whose agent cgroup holds no processes)."""
    job_pids_max: int = 16384
    """Most tasks (processes + threads) per job, a fork-bomb stop (0 = no limit). Generous:
    8 ranks x 8 data-loader workers x one OpenMP thread per core reach thousands on big hosts."""
    gpu_device_rules: bool = True
    """cgroup v1: deny each job the /dev/nvidia<N> of the GPUs it was not given (v2 would need
    eBPF: not done; hello says so)."""
    uv_path: Optional[str] = None
    """uv, which builds jobs' Python environments (envs.py). Default: found on job_path, the
    agent's PATH, or next to the agent's Python."""
    shared_paths: List[str] = field(default_factory=list)
    """Directories this node shares with the submitting hosts (e.g. /home, /data): a file_mount
    under one is used in place here instead of being copied."""
    cache_max_gb: float = 50.0
    """Size cap of the file_mounts data cache (<state_dir>/cache); least recently used data not
    mounted by a job still on the node goes first (0 = no cap)."""
    s3_endpoint_url: Optional[str] = None
    """S3 endpoint for s3:// file_mounts (MinIO, a lab's store); default: AWS. Credentials come
    from the agent's environment or instance role."""
    env_wheelhouse: Optional[str] = None
    """A directory of wheels (uv's --find-links) from which environments are built offline, with
    no package index: air-gapped nodes. Unset: uv uses its default index. Must be readable by
    the jobs' users (builds run as them)."""
    env_offline: bool = False
    """This node reaches no package index: environments are built with `uv --offline
    --no-index` from the wheels the controller ships (its `environments.wheelhouse`) and
    env_wheelhouse. Reported in hello, so the controller knows to ship them."""
    env_cache_max_gb: float = 100.0
    """Size cap of the built environments (<state_dir>/envs); after each build, the least
    recently used envs no unfinished job names are removed until the rest fit (0 = no cap)."""

    @property
    def rootless(self) -> bool:
        return os.geteuid() != 0


def default_paths(is_root: bool) -> Dict[str, str]:
    """Socket and state directory when neither the file nor a flag names them."""
    if is_root:
        return {"socket": "/run/hybridctl/agent.sock", "state_dir": "/var/lib/hybridctl-agent"}
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/hybridctl-{os.getuid()}"
    return {"socket": str(Path(runtime) / "hybridctl" / "agent.sock"),
            "state_dir": str(Path.home() / ".local" / "state" / "hybridctl-agent")}


def read_file(path: str) -> Dict[str, Any]:
    """Parse a config file: YAML when pyyaml is installed, else JSON."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    data: Any
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise ConfigError(f"{path}: not JSON, and pyyaml is not installed to read YAML; "
                              "write the config as JSON or install pyyaml") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def parse_simulate(text: str) -> SimConfig:
    """`N[:MODEL[:MEM_GB]]`, e.g. `4:A100` or `8:H100:80`."""
    parts = text.split(":")
    try:
        count = int(parts[0])
        model = parts[1] if len(parts) > 1 and parts[1] else "A100"
        mem = int(parts[2]) if len(parts) > 2 else _MODEL_MEMORY_GB.get(model.upper(), 24)
    except ValueError:
        raise ConfigError(f"--simulate-gpus {text!r}: expected N[:MODEL[:MEM_GB]], e.g. 4:A100") \
            from None
    if count < 0 or mem <= 0 or len(parts) > 3:
        raise ConfigError(f"--simulate-gpus {text!r}: expected N[:MODEL[:MEM_GB]], e.g. 4:A100")
    return SimConfig(count=count, model=model, memory_gb=mem)


def _apply(obj: Any, values: Mapping[str, Any], where: str) -> None:
    """Set dataclass fields from a mapping, checking names and types."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: key {key!r} must be a mapping")
            _apply(current, value, f"{where}: {key}")
            continue
        expected = type(current) if current is not None else (str, type(None))
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (isinstance(value, bool) and
                                               not isinstance(current, bool)):
            raise ConfigError(f"{where}: key {key!r} has value {value!r}; expected "
                              f"{type(current).__name__ if current is not None else 'a string'}")
        setattr(obj, key, value)


def load(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None) -> AgentConfig:
    """Defaults, then the file at `path`, then `overrides` (flags; None values are skipped)."""
    is_root = os.geteuid() == 0
    paths = default_paths(is_root)
    cfg = AgentConfig(socket=paths["socket"], state_dir=paths["state_dir"])
    if path:
        _apply(cfg, read_file(path), path)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "simulate":
            cfg.simulate = value
            cfg.gpu_source = "simulated"
        else:
            _apply(cfg, {key: value}, "command line")
    if cfg.gpu_source not in GPU_SOURCES:
        raise ConfigError(f"{path or 'config'}: gpu_source {cfg.gpu_source!r}; "
                          f"expected one of {', '.join(GPU_SOURCES)}")
    if cfg.interval <= 0 or cfg.history < cfg.interval:
        raise ConfigError(f"{path or 'config'}: need interval > 0 and history >= interval "
                          f"(got interval={cfg.interval}, history={cfg.history})")
    if cfg.jobs_rescan <= 0:
        raise ConfigError(f"{path or 'config'}: need jobs_rescan > 0 (got {cfg.jobs_rescan})")
    if cfg.job_pids_max < 0:
        raise ConfigError(f"{path or 'config'}: job_pids_max must be >= 0 (0 = no limit), "
                          f"got {cfg.job_pids_max}")
    if not cfg.cgroup_parent.strip("/") or ".." in cfg.cgroup_parent.split("/"):
        raise ConfigError(f"{path or 'config'}: cgroup_parent {cfg.cgroup_parent!r}; expected a "
                          "cgroup path such as /hybridctl, without '..'")
    for key in CACHE_CAPS:
        value = getattr(cfg, key)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{path or 'config'}: {key} {value!r}; expected a finite number of "
                              "GiB >= 0 (0 = no cap)")
    if not all(isinstance(p, str) and os.path.isabs(p) for p in cfg.shared_paths):
        raise ConfigError(f"{path or 'config'}: shared_paths {cfg.shared_paths!r}; expected a list "
                          "of absolute directories such as [/home, /data]")
    cfg.shared_paths = [os.path.normpath(p) for p in cfg.shared_paths]
    if cfg.nvml_library is None:
        cfg.nvml_library = os.environ.get(NVML_LIBRARY_ENV) or None
    cfg.socket = os.path.abspath(os.path.expanduser(cfg.socket))
    cfg.state_dir = os.path.abspath(os.path.expanduser(cfg.state_dir))
    return cfg
