"""The data the whole system speaks: job states and their legal transitions, resources, job specs,
and the snapshots the scheduler reads. Frozen dataclasses, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

from hybridctl.core.errors import IllegalTransition

if TYPE_CHECKING:
    from hybridctl.core.locality import LocalityView, Need


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
        if self.alternatives:  # '[A100:8, H100:8]' in order, '{L4:8, A10G:8}' any of them
            names = ", ".join(f"{t}:{n}" if t else str(n) for t, n in self.alternatives)
            gpu = f"[{names}]" if self.ordered else "{" + names + "}"
        mem = f", {self.memory_mb // 1024}G mem" if self.memory_mb else ""
        return f"{gpu} GPU, {self.cpus:g} CPU{mem}"


@dataclass(frozen=True)
class ArraySpec:
    """A Slurm-style job array: tasks first..last (step), at most `throttle` running at once; or
    Slurm's list form ('1,3,5-7:2%2'): `parts` holds each item's (first, last, step) as given, and
    first/last are the lowest/highest index (step 1)."""

    first: int
    last: int
    step: int = 1
    throttle: int | None = None
    parts: tuple[tuple[int, int, int], ...] = ()
    """The items of a list form, in the order given; () = the one range first..last:step."""

    @property
    def indices(self) -> Sequence[int]:
        """The task indices, ascending, each once (a range for the one-range form)."""
        if not self.parts:
            return range(self.first, self.last + 1, self.step)
        return tuple(sorted({i for a, b, s in self.parts for i in range(a, b + 1, s)}))

    def __str__(self) -> str:
        throttle = f"%{self.throttle}" if self.throttle else ""
        if self.parts:
            items = (f"{a}" if a == b else f"{a}-{b}" + (f":{s}" if s != 1 else "") for a, b, s in self.parts)
            return ",".join(items) + throttle
        step = f":{self.step}" if self.step != 1 else ""
        return f"{self.first}-{self.last}{step}{throttle}"


DEPENDENCY_KINDS = ("after", "afterany", "afterok", "afternotok")
"""Slurm's dependency types hybridctl evaluates (besides `singleton`): after = the job started
(or ended), afterany = it ended, afterok = every task SUCCEEDED, afternotok = it ended and a
task did not succeed."""


@dataclass(frozen=True)
class DependencyFacts:
    """What the store knows of one dependency job, enough to evaluate any kind."""

    exists: bool = True
    started: bool = False
    """No task of it is still waiting for its first start."""
    ended: bool = False
    """Every task of it is in a terminal state."""
    failed: bool = False
    """A task of it ended in a terminal state other than SUCCEEDED."""


def dependency_outcome(kind: str, facts: DependencyFacts) -> str:
    """'met', 'wait' or 'never' (can never be met: the dependent job is cancelled), Slurm's rules."""
    if not facts.exists:
        return "wait"
    if kind == "afterok":
        return "never" if facts.failed else ("met" if facts.ended else "wait")
    if kind == "afternotok":
        return ("met" if facts.failed else "never") if facts.ended else "wait"
    if kind == "afterany":
        return "met" if facts.ended else "wait"
    if kind == "after":
        return "met" if facts.started or facts.ended else "wait"
    raise ValueError(f"unknown dependency kind {kind!r}")


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
    setup_every_attempt: bool = False
    """Run `setup` before every attempt; by default it runs once per node per (setup text,
    environment, user), as SkyPilot runs it once per cluster."""
    environment: Mapping[str, str] | None = None
    """The job's Python environment (core/environment.py): {requirements|pyproject|uv_lock: an
    absolute path, python?: version}, built with uv on the node and cached there."""
    image: str | None = None
    """SkyPilot's resources.image_id when it names a container image (`docker:IMAGE`): only nodes
    with a container runtime could run it; a fleet with none refuses it at submit."""
    file_mounts: Mapping[str, str] = field(default_factory=dict)
    """SkyPilot's file_mounts that hybridctl makes (core/mounts.py): node path -> an absolute local
    path on the submitting host or an s3:// URI, copied into the node's cache before the job."""
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
    dependencies: tuple[tuple[str, int], ...] = ()
    """The other Slurm dependencies: (kind, job id), kind one of 'after', 'afterany',
    'afternotok' (DEPENDENCY_KINDS; afterok ones are in depends_on)."""
    singleton: bool = False
    """Slurm's `singleton`: starts only when no earlier job of the same name and user is
    unfinished and none of them runs (at most one such job runs at a time)."""
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """SkyPilot's `secrets:`: set in the job's environment like `envs` (and winning over them),
    never shown: `show` masks the values, even to the owner (control/limits.mask_secrets)."""
    slurm: Mapping[str, object] = field(default_factory=dict)
    """A Slurm batch script's facts with no field above (core/sbatch.py SLURM_KEYS: tasks per
    node, cpus per task, --signal, --requeue, the submit directory); {} for other jobs. A job
    with this set gets SLURM_* variables and the srun/scontrol shims on its PATH."""
    preemptible: bool = False
    """`preemptible: true`: a higher-priority job that would otherwise wait may stop it (SIGTERM,
    the grace, requeue; never charged to max_restarts). See core/preempt.py."""
    deadline: float | None = None
    """`deadline:`: seconds since the epoch by which the job should have finished (a duration in
    the spec is counted from submit); the burst policy runs it on spot only while there is slack."""
    spot_insist: bool = False
    """`spot_insist: true`: burst to spot even where the policy would not (the expected reclaim loss
    or the deadline's slack would send it on-demand or keep it waiting on-prem)."""

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form; `spec_from_dict` reads it back."""
        r = self.resources
        return {
            "name": self.name,
            "run": self.run,
            "setup": self.setup,
            **({"setup_every_attempt": True} if self.setup_every_attempt else {}),
            **({"environment": dict(self.environment)} if self.environment else {}),
            **({"file_mounts": dict(self.file_mounts)} if self.file_mounts else {}),
            **({"image": self.image} if self.image else {}),
            "workdir": self.workdir,
            "envs": dict(self.envs),
            "num_nodes": self.num_nodes,
            "resources": {
                "gpus": r.gpus,
                "gpu_type": r.gpu_type,
                "cpus": r.cpus,
                "memory_mb": r.memory_mb,
                "use_spot": r.use_spot,
                **({"alternatives": [list(a) for a in r.alternatives], "ordered": r.ordered}
                   if r.alternatives else {}),
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
                **({"parts": [list(p) for p in self.array.parts]} if self.array.parts else {}),
            },
            "depends_on": list(self.depends_on),
            **({"dependencies": [list(d) for d in self.dependencies]} if self.dependencies else {}),
            **({"singleton": True} if self.singleton else {}),
            "secrets": dict(self.secrets),
            "slurm": dict(self.slurm),
            **({"preemptible": True} if self.preemptible else {}),
            **({"deadline": self.deadline} if self.deadline is not None else {}),
            **({"spot_insist": True} if self.spot_insist else {}),
        }


def spec_from_dict(d: Mapping[str, object]) -> JobSpec:
    """Inverse of JobSpec.to_dict (trusted input: already validated)."""
    res = dict(d.get("resources") or {})  # type: ignore[call-overload]
    res["alternatives"] = tuple((t, int(n)) for t, n in res.get("alternatives") or ())
    arr = d.get("array")
    return JobSpec(
        run=str(d["run"]),
        name=str(d.get("name") or ""),
        setup=str(d.get("setup") or ""),
        setup_every_attempt=bool(d.get("setup_every_attempt")),
        environment=dict(d["environment"]) if d.get("environment") else None,  # type: ignore[call-overload]
        file_mounts=dict(d.get("file_mounts") or {}),  # type: ignore[call-overload]
        image=d.get("image"),  # type: ignore[arg-type]
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
        array=None if not arr else _array_from_dict(arr),  # type: ignore[arg-type]
        depends_on=tuple(d.get("depends_on") or ()),  # type: ignore[arg-type]
        dependencies=tuple((str(k), int(j)) for k, j in d.get("dependencies") or ()),  # type: ignore[attr-defined]
        singleton=bool(d.get("singleton")),
        secrets=dict(d.get("secrets") or {}),  # type: ignore[call-overload]
        slurm=dict(d.get("slurm") or {}),  # type: ignore[call-overload]
        preemptible=bool(d.get("preemptible")),
        deadline=float(d["deadline"]) if d.get("deadline") is not None else None,  # type: ignore[arg-type]
        spot_insist=bool(d.get("spot_insist")),
    )


def _array_from_dict(arr: Mapping[str, object]) -> ArraySpec:
    a = dict(arr)
    a["parts"] = tuple(tuple(int(x) for x in p) for p in a.get("parts") or ())  # type: ignore[attr-defined]
    return ArraySpec(**a)  # type: ignore[arg-type]


def task_label(job_id: int, task: int, array: bool = False) -> str:
    """'42' for a plain job, '42_7' for task 7 of array 42 (Slurm's form). Task 0 of an array is
    '42_0' when the caller says it is an array (the CLI and the TUI do, via `hybridctl.fmt.job_label`);
    without that flag task 0 reads '42', which names the whole array in `cancel`/`show`."""
    return f"{job_id}_{task}" if task or array else str(job_id)


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
    market: str | None = None
    """A cloud node's market: 'spot' or 'on-demand'; None on-prem (or unknown). `plan` never
    places a task that may not use spot (`use_spot: false`, or `PendingTask.no_spot`) on a spot node."""
    features: frozenset[str] = frozenset()
    """What the node offers jobs beyond GPUs, CPUs and memory (its hello's runtimes: "podman"):
    a task is placed only where its `PendingTask.requires` are all offered."""


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
    runtime_s: float | None = None
    """Expected run time in seconds: its time limit, else an estimate from its user's history
    (core/estimate.py); None = unbounded (it never frees its GPUs, as far as reservations know)."""
    estimated: bool = False
    """`runtime_s` is an estimate (no time limit): it places reservations, but the task may not
    start ahead of one on the resources it needs (as Slurm): the estimate comes from the user's
    own runs, which they can shape."""
    preemptible: bool = False
    """Marked `preemptible: true` (the config rule `scheduler.preempt_below` is applied by the
    scheduler from the priority)."""
    deps_reason: str = ""
    """Why deps_unmet blocks it, when that is not plain 'waiting for job N to succeed' (another
    dependency kind, or `singleton`); '' = the plain form."""
    exclusive: bool = False
    """Slurm's --exclusive: only nodes running nothing else, and nothing else on them while it runs."""
    need: Need | None = None
    """What its world (environment, file_mounts) is on a node, for cache-aware placement
    (core/locality.py); None or empty = nothing to move, it costs the pass nothing."""
    no_spot: bool = False
    """The burst policy decided it must not run on spot (its expected reclaim loss is too high,
    core/burst.spot_averse): like `use_spot: false`, `plan` keeps it off spot nodes."""
    requires: frozenset[str] = frozenset()
    """Node features it needs (`{"podman"}` for an `image_id: docker:` job): `plan` places it only
    on nodes whose `NodeView.features` hold them all."""
    avoid_nodes: frozenset[str] = frozenset()
    """Nodes `plan` must not place it on: held cloud nodes whose share its owners' budget cannot
    pay, while a cheaper node can (the burst decision's `CloudGate.avoid`)."""


@dataclass(frozen=True)
class RunningTask:
    """One node's share of a task that holds resources now (one entry per node of the task), with
    what backfill and preemption need to know about it."""

    job_id: int
    task: int
    user: str
    priority: int
    node: str
    gpus: tuple[int, ...]
    cpus: float
    memory_mb: int
    started_at: float
    ends_at: float | None = None
    """Expected end (seconds since the epoch): start + time limit, or + estimate; None = unknown."""
    preemptible: bool = False
    """Marked `preemptible: true`; the config rule (Policy.preempt_below) is applied on top."""
    checkpoint_at: float | None = None
    """Its last checkpoint, if known: the work lost by preempting it is counted from here."""
    stopping: bool = False
    """Already told to stop (a preemption in its grace period): its resources are coming free."""
    group: str = ""
    """Its job's Unix group (what a group's cloud budget counts)."""
    estimated: bool = False
    """`ends_at` is a history estimate, not a time limit: no bound on the run."""


@dataclass(frozen=True)
class Policy:
    """Scheduling policy from config."""

    fairshare_half_life_h: float = 168.0
    user_gpu_quota: Mapping[str, int] = field(default_factory=dict)
    """Max GPUs in use at once per user; the key '*' is the default for everyone."""
    group_gpu_quota: Mapping[str, int] = field(default_factory=dict)
    """Max GPUs in use at once per Unix group; '*' is the default."""
    backfill_depth: int = 1
    """Blocked tasks (highest priority first) that get a reservation each pass; 0 = plain greedy
    (a big task may starve behind a stream of small ones)."""
    preempt_below: int | None = None
    """Running tasks with a priority below this are preemptible by higher-priority tasks (Slurm
    PreemptMode=REQUEUE); None = only tasks marked `preemptible: true`."""
    multi_node_priority: int = 0
    preempt_checkpointing: bool = False
    """`scheduler.multi_node_priority` and `preempt_checkpointing`: applied where tasks are built
    from specs (control/backfill.RuntimeFacts, the simulator), since `plan` sees no spec; `plan`
    itself reads neither."""


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
    running: tuple[RunningTask, ...] = ()
    """What holds resources now, with expected ends (reservations) and preemptibility."""
    now: float = 0.0
    """The pass's time (seconds since the epoch): reservations and work lost count from it."""
    busy_nodes: frozenset[str] = frozenset()
    """Nodes holding any task's allocation now: an `exclusive` task passes them over."""
    exclusive_nodes: frozenset[str] = frozenset()
    """Nodes running an `exclusive` task (Slurm's --exclusive): nothing else is placed there."""
    locality: LocalityView | None = None
    """The nodes' caches and the `locality:` policy; None = placement ignores caches (weight 0)."""


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
    gpu_type: str | None = None
    """The accelerator candidate taken (core.fit.candidates), when the job named several."""
    reason: str = ""
    """Why this node, when cache-aware placement chose it ("node03: env warm, ..."); '' otherwise."""


@dataclass(frozen=True)
class Waiting:
    """Task (job_id, task) stays pending for `reason` (one line, shown by `queue` and `show`)."""

    job_id: int
    task: int
    reason: str
    starts_at: float | None = None
    """Its reservation's expected start (seconds since the epoch), if it holds one."""
    reserved_on: tuple[str, ...] = ()
    """The nodes of that reservation."""


@dataclass(frozen=True)
class Preemption:
    """Stop running task (job_id, task) and requeue it (a recovery, never charged to
    max_restarts) so that (for_job, for_task) can have its resources."""

    job_id: int
    task: int
    for_job: int
    for_task: int
    reason: str


@dataclass(frozen=True)
class ScheduleDecision:
    """The outcome of one pass."""

    placements: tuple[Placement, ...]
    waiting: tuple[Waiting, ...]
    preempt: tuple[Preemption, ...] = ()
    """Running tasks to stop now, least work lost first (core/preempt.py)."""
