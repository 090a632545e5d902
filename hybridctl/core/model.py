"""The data the whole system speaks: job states and their legal transitions, resources, job specs,
and the snapshots the scheduler reads. Frozen dataclasses, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping

from hybridctl.core.errors import IllegalTransition


class JobStatus(str, enum.Enum):
    """Where one job (or one array task) stands. The transitions below are the only legal ones."""

    PENDING = "PENDING"
    """Waiting for resources; `reason` says why."""
    STARTING = "STARTING"
    """Placed on a node; the launch is on its way to the agent."""
    RUNNING = "RUNNING"
    """The agent confirmed the process started."""
    SUCCEEDED = "SUCCEEDED"
    """Exited with code 0."""
    FAILED = "FAILED"
    """Exited non-zero, failed to launch, or ran out of restarts."""
    CANCELLED = "CANCELLED"
    """Cancelled by its owner or an admin."""
    TIMEOUT = "TIMEOUT"
    """Stopped because it ran past its time limit."""
    PREEMPTED = "PREEMPTED"
    """Its (spot) node was reclaimed or given back; it goes back to PENDING (a recovery, never
    charged to max_restarts) unless past `recovery.max_recoveries` (core/retry.py)."""
    NODE_LOST = "NODE_LOST"
    """Its node stopped answering for good; it goes back to PENDING (a recovery, never charged to
    max_restarts) unless past `recovery.max_recoveries` (core/retry.py)."""

    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def is_active(self) -> bool:
        """Holds resources on a node."""
        return self in (JobStatus.STARTING, JobStatus.RUNNING)


_TERMINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMEOUT}
)

_S = JobStatus
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    _S.PENDING: frozenset({_S.STARTING, _S.CANCELLED, _S.FAILED}),
    _S.STARTING: frozenset(
        {_S.RUNNING, _S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.PREEMPTED, _S.NODE_LOST, _S.PENDING}
    ),
    _S.RUNNING: frozenset(
        {_S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.TIMEOUT, _S.PREEMPTED, _S.NODE_LOST, _S.PENDING}
    ),  # -> PENDING: exited non-zero with restarts left, or with a code in recover_on_exit_codes
    _S.PREEMPTED: frozenset({_S.PENDING, _S.FAILED, _S.CANCELLED}),
    _S.NODE_LOST: frozenset({_S.PENDING, _S.FAILED, _S.CANCELLED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.TIMEOUT: frozenset(),
}


def check_transition(job: str, old: JobStatus, new: JobStatus) -> None:
    """Raise IllegalTransition unless old -> new is an edge of the job state machine."""
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "none (terminal)"
        raise IllegalTransition(
            f"job {job}: cannot go from {old.value} to {new.value}; allowed from {old.value}: {allowed}"
        )


class NodeState(str, enum.Enum):
    """Where a node stands, from the scheduler's point of view."""

    UP = "UP"
    """Reachable and accepting jobs."""
    DRAINING = "DRAINING"
    """Running jobs finish; no new ones are placed."""
    DRAINED = "DRAINED"
    """Drained and empty."""
    UNREACHABLE = "UNREACHABLE"
    """Silent for a while; its jobs are kept, nothing new is placed."""
    LOST = "LOST"
    """Silent for good; its jobs were requeued."""

    def accepts_jobs(self) -> bool:
        return self is NodeState.UP


@dataclass(frozen=True)
class Resources:
    """What one node of a job needs."""

    gpus: int = 0
    """GPUs per node."""
    gpu_type: str | None = None
    """GPU model, e.g. 'A100' (matched case-insensitively as a prefix-free name); None = any model."""
    cpus: float = 1.0
    """CPU cores per node."""
    memory_mb: int = 0
    """Host memory per node in MiB; 0 = no requirement."""
    use_spot: bool = True
    """May run on cloud spot nodes (SkyPilot's `use_spot`)."""
    alternatives: tuple[tuple[str | None, int], ...] = ()
    """Accelerator candidates (SkyPilot's `{L4:8, A10G:8}` set, `[A100:8, H100:8]` list,
    `any_of`/`ordered`) as (gpu_type, gpus) pairs in order of preference, the first being
    (gpu_type, gpus) above; () = exactly gpu_type/gpus. See core.fit.candidates."""
    ordered: bool = False
    """True: candidates are a preference order (SkyPilot list / `ordered`); False: any of them
    (a set / `any_of`), the cheapest or first that fits."""

    def describe(self) -> str:
        gpu = f"{self.gpu_type}:{self.gpus}" if self.gpu_type else str(self.gpus)
        mem = f", {self.memory_mb // 1024}G mem" if self.memory_mb else ""
        return f"{gpu} GPU, {self.cpus:g} CPU{mem}"


@dataclass(frozen=True)
class ArraySpec:
    """A Slurm-style job array: tasks first..last (step), at most `throttle` running at once."""

    first: int
    last: int
    step: int = 1
    throttle: int | None = None

    @property
    def indices(self) -> range:
        return range(self.first, self.last + 1, self.step)

    def __str__(self) -> str:
        step = f":{self.step}" if self.step != 1 else ""
        throttle = f"%{self.throttle}" if self.throttle else ""
        return f"{self.first}-{self.last}{step}{throttle}"


@dataclass(frozen=True)
class JobSpec:
    """A validated job: the SkyPilot-compatible subset plus hybridctl's own keys."""

    run: str
    """Shell script run by bash on each node."""
    name: str = ""
    resources: Resources = field(default_factory=Resources)
    num_nodes: int = 1
    envs: Mapping[str, str] = field(default_factory=dict)
    setup: str = ""
    workdir: str | None = None
    priority: int = 0
    """Higher runs first. Range -1000..1000; only admins may go above 100."""
    time_limit: int | None = None
    """Seconds; None = unlimited."""
    max_restarts: int = 0
    """Requeues allowed after failures: a non-zero exit, a preemption, a lost node."""
    recover_on_exit_codes: tuple[int, ...] = ()
    """Exit codes that always requeue without counting against max_restarts (SkyPilot's)."""
    checkpoint_dir: str | None = None
    placement: str = "any"
    array: ArraySpec | None = None
    depends_on: tuple[int, ...] = ()
    """Job ids that must have SUCCEEDED first (Slurm's afterok)."""
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """SkyPilot's `secrets:`: set in the job's environment like `envs` (and winning over them),
    never shown: `show` masks the values, even to the owner (control/limits.mask_secrets)."""

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form; `spec_from_dict` reads it back."""
        r = self.resources
        return {
            "name": self.name,
            "run": self.run,
            "setup": self.setup,
            "workdir": self.workdir,
            "envs": dict(self.envs),
            "num_nodes": self.num_nodes,
            "resources": {
                "gpus": r.gpus,
                "gpu_type": r.gpu_type,
                "cpus": r.cpus,
                "memory_mb": r.memory_mb,
                "use_spot": r.use_spot,
            },
            "priority": self.priority,
            "time_limit": self.time_limit,
            "max_restarts": self.max_restarts,
            "recover_on_exit_codes": list(self.recover_on_exit_codes),
            "checkpoint_dir": self.checkpoint_dir,
            "placement": self.placement,
            "array": None
            if self.array is None
            else {
                "first": self.array.first,
                "last": self.array.last,
                "step": self.array.step,
                "throttle": self.array.throttle,
            },
            "depends_on": list(self.depends_on),
            "secrets": dict(self.secrets),
        }


def spec_from_dict(d: Mapping[str, object]) -> JobSpec:
    """Inverse of JobSpec.to_dict (trusted input: already validated)."""
    res = dict(d.get("resources") or {})  # type: ignore[call-overload]
    arr = d.get("array")
    return JobSpec(
        run=str(d["run"]),
        name=str(d.get("name") or ""),
        setup=str(d.get("setup") or ""),
        workdir=d.get("workdir"),  # type: ignore[arg-type]
        envs=dict(d.get("envs") or {}),  # type: ignore[call-overload]
        num_nodes=int(d.get("num_nodes") or 1),  # type: ignore[call-overload]
        resources=Resources(**res),
        priority=int(d.get("priority") or 0),  # type: ignore[call-overload]
        time_limit=d.get("time_limit"),  # type: ignore[arg-type]
        max_restarts=int(d.get("max_restarts") or 0),  # type: ignore[call-overload]
        recover_on_exit_codes=tuple(d.get("recover_on_exit_codes") or ()),  # type: ignore[arg-type]
        checkpoint_dir=d.get("checkpoint_dir"),  # type: ignore[arg-type]
        placement=str(d.get("placement") or "any"),
        array=None if not arr else ArraySpec(**arr),  # type: ignore[arg-type]
        depends_on=tuple(d.get("depends_on") or ()),  # type: ignore[arg-type]
        secrets=dict(d.get("secrets") or {}),  # type: ignore[call-overload]
    )


def task_label(job_id: int, task: int) -> str:
    """'42' for a plain job, '42_7' for task 7 of array 42 (Slurm's form)."""
    return f"{job_id}_{task}" if task else str(job_id)


# ---- what the scheduler reads and returns ------------------------------------------------


@dataclass(frozen=True)
class GpuSlot:
    """One GPU of a node as the scheduler sees it."""

    index: int
    model: str
    free: bool = True
    """No job holds it and no foreign process uses it."""
    healthy: bool = True


@dataclass(frozen=True)
class NodeView:
    """A node's free resources at the moment of a scheduling pass."""

    name: str
    gpus: tuple[GpuSlot, ...]
    cpus_total: float
    cpus_free: float
    memory_total_mb: int
    memory_free_mb: int
    state: NodeState = NodeState.UP
    site: str = "onprem"
    """'onprem' or 'cloud'."""


@dataclass(frozen=True)
class PendingTask:
    """One schedulable unit: a plain job (task 0) or one array task."""

    job_id: int
    task: int
    user: str
    group: str
    priority: int
    submitted_at: float
    """Seconds since the epoch; earlier runs first among equals."""
    resources: Resources
    num_nodes: int = 1
    placement: str = "any"
    array_throttle: int | None = None
    deps_unmet: tuple[int, ...] = ()


@dataclass(frozen=True)
class Policy:
    """Scheduling policy from config."""

    fairshare_half_life_h: float = 168.0
    user_gpu_quota: Mapping[str, int] = field(default_factory=dict)
    """Max GPUs in use at once per user; the key '*' is the default for everyone."""
    group_gpu_quota: Mapping[str, int] = field(default_factory=dict)
    """Max GPUs in use at once per Unix group; '*' is the default."""


@dataclass(frozen=True)
class ClusterView:
    """Everything one scheduling pass reads."""

    nodes: tuple[NodeView, ...]
    gpus_in_use_by_user: Mapping[str, int] = field(default_factory=dict)
    gpus_in_use_by_group: Mapping[str, int] = field(default_factory=dict)
    running_tasks_by_array: Mapping[int, int] = field(default_factory=dict)
    """job_id of an array -> its tasks now STARTING/RUNNING (for the %N throttle)."""
    usage_by_user: Mapping[str, float] = field(default_factory=dict)
    """Decayed GPU-hours per user (fair share): lower runs first among equal priority."""


@dataclass(frozen=True)
class Placement:
    """Start task (job_id, task) on `node` with these GPU indices (one entry per node of the job)."""

    job_id: int
    task: int
    node: str
    gpus: tuple[int, ...]
    cpus: float
    memory_mb: int
    rank: int = 0


@dataclass(frozen=True)
class Waiting:
    """Task (job_id, task) stays pending for `reason` (one line, shown by `queue` and `show`)."""

    job_id: int
    task: int
    reason: str


@dataclass(frozen=True)
class ScheduleDecision:
    """The outcome of one pass."""

    placements: tuple[Placement, ...]
    waiting: tuple[Waiting, ...]
