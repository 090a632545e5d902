"""Controller settings: one typed object, loaded once from YAML plus `HYBRIDCTL_*` environment
overrides (`__` separates levels: `HYBRIDCTL_SCHEDULER__TICK_SECONDS=2`), then passed down.

Only the controller reads it; the submit/queue client never does (it needs just the socket path)."""

from __future__ import annotations

import dataclasses
import math
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
    min_interval: float = 0.05
    """Seconds a pass waits after being woken, so a burst of submits or job ends makes one pass."""
    fairshare_half_life_h: float = 168.0
    """Recent GPU-hours count for fair share with this half-life (hours)."""
    user_gpu_quota: Mapping[str, int] = field(default_factory=dict)
    """Max GPUs in use at once per user name; '*' sets the default for everyone."""
    group_gpu_quota: Mapping[str, int] = field(default_factory=dict)
    """Max GPUs in use at once per Unix group; '*' sets the default."""
    backfill_depth: int = 1
    """Blocked jobs (highest priority first) that get a reservation each pass: smaller jobs start
    ahead of them only where they do not delay it. 0 = greedy, no start-time guarantee."""
    preempt_below: int | None = None
    """Running jobs with a priority below this may be preempted (SIGTERM, the grace, requeue; never
    counted against max_restarts) by a higher-priority job that would otherwise wait. Unset: only
    jobs marked `preemptible: true`."""
    multi_node_priority: int = 0
    """Added to the priority of every job that spans several nodes (a gang), waiting or running, as
    Slurm's job-size factor: it goes first, holds the reservation, and may preempt what is
    preemptible. 0 = size does not count. (bench/RESULTS.md, session 9: with 10 and
    `preempt_checkpointing`, gangs on the generated weeks waited 2-3 h at p95 instead of 8-13 h.)"""
    preempt_checkpointing: bool = False
    """Running jobs that checkpoint (`checkpoint_dir`) and have no `deadline` may be preempted as
    if marked `preemptible: true`: they resume from their last checkpoint."""
    preempt_grace: float = 30.0
    """A job preempted on an on-prem node gets SIGTERM and at least this long (s; the fleet's stop
    grace, `fleet.poll_interval` x 10, where that is longer) to write its final checkpoint before
    SIGKILL (Slurm's GraceTime); its GPUs stay held meanwhile. On a cloud node
    `cloud.preemption_grace` applies instead (a spot notice allows no more)."""

    def __post_init__(self) -> None:
        grace = self.preempt_grace
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= PREEMPT_GRACE_MAX:
            raise ConfigError(f"scheduler.preempt_grace: {grace!r} is not valid; seconds from 0 to "
                              f"{PREEMPT_GRACE_MAX} (one day)")


PREEMPT_GRACE_MAX = 86400


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
    checkpoint_sync_interval: float = 60.0
    """Seconds between copies of a running job's checkpoint directory back to the controller
    (changed files only). A node lost without notice costs at most this much work."""
    log_pull_cap_mb: int = 64
    """When a job ends, up to this much of each of its logs is copied back to the controller."""


@dataclass(frozen=True)
class BurstConfig:
    """When to rent cloud nodes and the limits that are never crossed (`cloud.burst`)."""

    after: float = 0.0
    """A job that fits on no on-prem node may burst once it has waited this long (s); with
    `wait_value_usd` it bursts when waiting would cost more than renting (0: as soon as that says
    so; a wait of 60 s cost the generated hard week 17 a p95 of 26 vs 25 min and week 23 55 vs 21
    min, bench/RESULTS.md). Jobs with
    `placement: cloud` go at once; `placement: onprem` never bursts."""
    idle_timeout: float = 600.0
    """A cloud node idle this long (s) is drained and terminated."""
    allow_on_demand: bool = True
    """Rent on-demand when spot is refused or scarce, when a reclaim would cost a job more than
    spot saves, for deadlines, and for jobs with use_spot: false."""
    max_nodes: int = 16
    """At most this many cloud nodes at once (starting ones included)."""
    max_hourly_usd: float = 400.0
    """The cloud nodes held may cost at most this much per hour together."""
    budget_usd: float = 10000.0
    """Spend per budget period; a launch must leave `budget_reserve_h` of burn in it, and every
    cloud node is given back before it would be crossed."""
    budget_period: str = "month"
    """day, week (from Monday) or month, in UTC."""
    budget_reserve_h: float = 1.0
    """Hours of the whole cloud fleet's burn a launch must leave room for in the budget."""
    backoff: float = 300.0
    """After a capacity error, that offer's pool is not asked again for this long (s)."""
    spread_penalty: float = 0.15
    """Several nodes spread over pools of similar price: each node already in a pool makes it look
    this much (fraction) dearer."""
    count_freeing_within: float = 0.0
    """On-prem jobs whose time limit ends within this many seconds count as already free when
    deciding that the fleet is saturated (0 = only what is free now)."""
    wait_value_usd: float = 8.0
    """What one GPU-hour of waiting costs the lab in US dollars: a job bursts when its expected
    on-prem wait x its GPUs x this exceeds what the cloud would cost it (`after` stays a minimum);
    0 = the `after` timer alone decides. 8 rather than 4 (session 11, bench/RESULTS.md): on the
    generated hard weeks, p95 1.21-1.40x all-on-demand's against 1.40-1.73x, for 36 % of its $
    against 35-36 %; Alibaba PAI 2023 without limits 0.89x against 3.91x, at 40 % against 38 %."""
    count_preemption_loss: bool = True
    """Price in the work a spot reclaim would throw away (checkpoints, run time, node count, the
    pool's reclaim rate): jobs that would lose more than spot saves, or more than `max_spot_loss`
    of their run, go on-demand (with `allow_on_demand`) or wait on-prem."""
    max_spot_loss: float = 0.2
    """Largest expected fraction of a job's run time spot reclaims may throw away (a job under it
    still goes on-demand where its expected loss costs more than spot saves). 0.2 rather than 0.1
    (session 15, bench/RESULTS.md): on the generated hard weeks 0.2-2.2 points less of
    all-on-demand's $ at the same p95 (week 31: 1.20x against 1.16x), with 0.9-2.6 % of cloud
    GPU-hours lost; above it the loss climbs (0.3: 1.8-2.4 %, no cap: 2.7-3.4 %) for ~1 point more."""
    reclaim_per_h: float = 0.05
    """Spot reclaims per node-hour assumed where the catalog gives no rate (`interruptions:`)."""
    pace_budget: bool = True
    """Spread `budget_usd` over its period (never spend ahead of the calendar by more than
    `pace_ahead` of it; keep `deadline_reserve` of it for jobs with a deadline), and never give
    back busy nodes for money: launches stop instead."""
    pace_ahead: float = 0.5
    """Fraction of the budget that may be committed ahead of the calendar (0.15 held a hard week's
    p95 wait at 5.7 h against 79 min at 0.5, bench/RESULTS.md)."""
    deadline_reserve: float = 0.2
    """Share of the budget kept for jobs with a deadline as its period starts; the lab's shrinks
    with what is left of the period (kept whole to the end, it walled the generated week 23 on its
    last day with a fifth of the budget unspent), each user's and group's stays whole (bench/
    RESULTS.md, session 11). A job with a deadline uses it only when waiting on-prem would miss the
    deadline; with slack it is paced like any other."""
    unknown_runtime: float = 3600.0
    """Run time (s) assumed for a job with no time limit and no history to estimate from: it decides
    whether waiting or the cloud pays, and what a spot reclaim would cost such a job (a job that
    never checkpoints goes to spot only while this is short enough)."""
    recall: bool = True
    """Bring a task running on cloud nodes back on-prem once the fleet can take it now (after
    every waiting task had its turn) and stopping it loses little (at most `recall_max_loss` of
    what is left, `recall_min` or more, counted from its last checkpoint): it is stopped as at a
    reclaim notice (SIGTERM, `preemption_grace`, the final checkpoint), requeued without using
    `max_restarts`, and its cloud node goes back once idle."""
    recall_min: float = 3600.0
    """A task is recalled only with at least this much (s) of its run left (time limit or estimate)."""
    recall_max_loss: float = 0.1
    """A task is recalled only while stopping it now throws away at most this fraction (0 to 1)
    of what is left of its run (the work since its last checkpoint; since its start when none
    was seen)."""
    lindy: float = 2.0
    """A job without a time limit whose earlier attempt ran X and was stopped before it finished
    (spot reclaim, recall, preemption, requeue) is expected to run at least lindy x X, where its
    history estimate (or `unknown_runtime`) says less: a run tends to go on about as long again as
    it has gone. Its spot risk, cloud price and wait forecast follow; 0 = attempts teach nothing."""
    learn_unknown: bool = True
    """Price the spot risk of a job with no time limit, no history estimate and no earlier attempt
    as that of a run drawn from the lab's latest 200 runs without a limit (from 20 of them on),
    each weighted by its length: where those are long and never checkpoint, such jobs are kept off
    spot (on-demand, or they wait on-prem); where they are short, they go. Before there are 20,
    `unknown_risk` decides."""
    unknown_risk: float = 0.0
    """Run time (s) a spot reclaim is priced at for a job with no time limit and no history
    estimate (a reclaim throws away more of a longer run); 0 = at the run time assumed for it
    (`unknown_runtime`, or what `lindy` learnt). A day sends every such job that never
    checkpoints to on-demand, short ones too."""
    user_budget_usd: Mapping[str, float] = field(default_factory=dict)
    """Cloud $ each user may spend per `budget_period`, beside the lab's `budget_usd`: user name ->
    dollars, '*' for everyone not named (e.g. {'*': 500, alice: 2000}); unset = no budget of their
    own. What they spent this period, what their running cloud jobs will still cost (to their time
    limit; a whole period without one: an estimate bounds nothing) and the launch may not pass it;
    they pay their share of a node (their GPUs over its GPUs). Running jobs are never stopped for
    it: their next job waits on-prem, and `show` says why."""
    group_budget_usd: Mapping[str, float] = field(default_factory=dict)
    """The same per Unix group (the job's group when it was submitted), beside each user's."""

    def __post_init__(self) -> None:
        low, high = UNKNOWN_RUNTIME_RANGE
        if not (isinstance(self.unknown_runtime, (int, float)) and low <= self.unknown_runtime <= high):
            raise ConfigError(f"cloud.burst.unknown_runtime: {self.unknown_runtime!r} is not valid; seconds from"
                              f" {low:.0f} (1 min) to {high:.0f} (30 days)")
        for key, (low, high, accepted) in BURST_RANGES.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError(f"cloud.burst.{key}: {value!r} is not valid; {accepted}")


UNKNOWN_RUNTIME_RANGE = (60.0, 30 * 86400.0)
"""Accepted `cloud.burst.unknown_runtime`, seconds."""

BURST_RANGES: Mapping[str, tuple[float, float, str]] = {
    "recall_min": (0.0, 30 * 86400.0, "seconds from 0 to 2592000 (30 days)"),
    "recall_max_loss": (0.0, 1.0, "a fraction from 0 to 1"),
    "lindy": (0.0, 100.0, "a factor from 0 (off) to 100"),
    "unknown_risk": (0.0, 365 * 86400.0, "seconds from 0 (off) to 31536000 (365 days)"),
}
"""Accepted values of the `cloud.burst` keys checked by range: (lowest, highest, as the error says)."""


SIMULATED_MACHINE_OWNS = ("socket", "state_dir", "name", "gpu_source", "simulate", "interval", "orphan_timeout")
"""Agent settings a simulated machine sets itself (`cloud.simulated.agent_config` may not)."""


@dataclass(frozen=True)
class SimulatedCloudConfig:
    """The simulated provider: real agent processes behind real SSH on loopback, sold from the
    catalog with drifting spot prices, capacity limits and preemptions (`cloud.simulated`)."""

    dir: str = ""
    """Where its machines live; empty = `<home>-simulated` beside the state directory (e.g.
    /var/lib/hybridctl-simulated): others pass through it (0711) to their jobs' directories."""
    launch_delay: float = 5.0
    """Seconds from launch until a machine is reported running."""
    capacity_per_pool: int = 8
    """At most this many machines per (zone, instance type, market); more is a capacity error."""
    capacity_errors: tuple[str, ...] = ()
    """Instance types (or zone/type) that always answer with a capacity error."""
    preemption_rate_per_h: float = 0.0
    """Expected reclaims per spot machine-hour (0 = none); on-demand machines are never reclaimed."""
    preemption_warning: float = 120.0
    """Seconds of notice before a reclaim."""
    price_drift: float = 0.2
    """Spot prices swing by up to this fraction around the catalog's."""
    seed: int = 0
    """Seed of preemption times and price phases: the same seed gives the same market."""
    agent_interval: float = 1.0
    """Telemetry interval of the machines' agents (s)."""
    agent_config: Mapping[str, Any] = field(default_factory=dict)
    """Settings of every machine's agent, as in an agent config file (e.g. uv_path,
    env_wheelhouse, s3_endpoint_url, cache_max_gb), so a simulated cloud node can build the
    environments and fetch the data a real one would. The machine sets its own socket, state_dir,
    name, GPUs, interval and orphan timeout."""

    def __post_init__(self) -> None:
        if not isinstance(self.agent_config, Mapping):
            raise ConfigError(f"cloud.simulated.agent_config: {self.agent_config!r} is not valid; "
                              "a mapping of agent settings, e.g. {uv_path: /usr/bin/uv}")
        if not self.agent_config:
            return
        own = sorted(set(self.agent_config) & set(SIMULATED_MACHINE_OWNS))
        if own:
            raise ConfigError(f"cloud.simulated.agent_config.{own[0]}: {self.agent_config[own[0]]!r} is not valid; "
                              f"each machine sets {', '.join(SIMULATED_MACHINE_OWNS)} itself: leave them out")
        from hybridctl_agent import config as agent_config

        try:  # the agent's own checks (names, types, values), as a machine's agent would run them
            agent_config.load(None, dict(self.agent_config))
        except agent_config.ConfigError as exc:
            why = str(exc).removeprefix("command line: ").removeprefix("config: ")  # the agent's own "where"
            raise ConfigError(f"cloud.simulated.agent_config: {why}") from None


@dataclass(frozen=True)
class AwsCloudConfig:
    """The aws provider (boto3 EC2). Credentials come from boto3's usual chain, never from here."""

    regions: tuple[str, ...] = ("us-east-1",)
    """Regions to buy in (their offers come from the catalog, refreshed from the API)."""
    image_id: str = ""
    """AMI to launch (needs python3 and sshd; a Deep Learning AMI has the NVIDIA driver)."""
    key_name: str = ""
    """EC2 key pair for the SSH user; empty = the controller's cloud key is passed in user data."""
    security_group_ids: tuple[str, ...] = ()
    """Must allow SSH from the controller."""
    ssh_user: str = "ubuntu"
    use_private_ip: bool = False
    """SSH to the private address (controller inside the VPC) instead of the public one."""
    endpoint_url: str = ""
    """EC2 endpoint override (tests point it at a local moto server)."""


@dataclass(frozen=True)
class CommandCloudConfig:
    """The command provider: admin scripts for any other cloud or VM pool (Slurm's
    ResumeProgram/SuspendProgram); their JSON contract is in docs/cloud.md."""

    create: str = ""
    """Command that creates one instance (JSON request on stdin, the instance on stdout)."""
    delete: str = ""
    """Command that deletes one instance; must succeed for an unknown id."""
    list: str = ""
    """Command that lists instances carrying given tags."""
    offers: str = ""
    """Command that prints the offers; empty = the catalog's."""
    timeout: float = 600.0
    """Seconds one command may run."""
    ssh_user: str = ""
    """SSH user on its instances when the script does not say; empty = the controller's user."""


CLOUD_RUNTIMES = ("podman",)
"""What `cloud.runtimes` may list: the container runtimes image jobs run with (agent container.py)."""


@dataclass(frozen=True)
class CloudConfig:
    """Cloud bursting (`cloud:`): off unless `enabled`."""

    enabled: bool = False
    """Rent cloud nodes when the on-prem fleet is saturated."""
    providers: tuple[str, ...] = ("simulated",)
    """Providers to buy from, cheapest offer first across all: simulated, aws, command."""
    catalog: str = ""
    """Offer catalog YAML; empty = hybridctl/cloud/offers.yaml shipped with hybridctl."""
    cluster: str = "hybridctl"
    """Value of the hybridctl-cluster tag on everything this controller creates (leak sweeps
    terminate tagged instances it has no record of)."""
    poll_interval: float = 10.0
    """Seconds between autoscaler passes (offers, instances, notices, costs, decisions)."""
    offers_refresh: float = 3600.0
    """Seconds between refreshes of prices and availability from the providers' APIs."""
    orphan_timeout: float = 900.0
    """A cloud node's agent that hears nothing from the controller this long shuts the instance
    down by itself (0 = never)."""
    leak_grace: float = 600.0
    """A tagged instance with no record is terminated once it is this old (s)."""
    bootstrap_timeout: float = 600.0
    """A launched node must join the fleet within this long, else it is terminated and another
    offer is tried."""
    identity: str = ""
    """SSH private key for cloud nodes; empty = <home>/cloud/id_ed25519 (created on first use)."""
    preemption_grace: float = 30.0
    """On a preemption notice, jobs get SIGTERM and this long before SIGKILL."""
    workdir_cap_mb: int = 512
    """A job's workdir is uploaded to its cloud node before it starts; larger is an error."""
    workdir_excludes: tuple[str, ...] = (".git", "__pycache__", "*.pyc", ".venv", "node_modules")
    """Names (glob patterns) left out of workdir uploads."""
    output_cap_mb: int = 2048
    """At most this much of HYBRIDCTL_OUTPUT_DIR comes back from a cloud node per job."""
    output_keep_days: float = 14.0
    """The controller's copies of those outputs (`hybridctl outputs`) are deleted this many days
    after they came back (swept hourly); a copy whose job is gone goes at once."""
    runtimes: tuple[str, ...] = ()
    """What the cloud nodes' image offers jobs (`[podman]`): `image_id: docker:` jobs burst only
    when this lists podman; otherwise they wait for an on-prem node with podman, and `show`
    says so (a rented node would not take them, and the autoscaler would rent again)."""
    burst: BurstConfig = field(default_factory=BurstConfig)
    simulated: SimulatedCloudConfig = field(default_factory=SimulatedCloudConfig)
    aws: AwsCloudConfig = field(default_factory=AwsCloudConfig)
    command: CommandCloudConfig = field(default_factory=CommandCloudConfig)
    default_market: str = "on-demand"
    """The market of a job that does not say `use_spot` (SkyPilot's default is on-demand): 'spot'
    lets such jobs burst to spot nodes; 'on-demand' rents them on-demand nodes, which needs
    `burst.allow_on_demand` (else they wait for on-prem nodes, and the reason says so)."""

    def __post_init__(self) -> None:
        if self.default_market not in ("spot", "on-demand"):
            raise ConfigError(f"cloud.default_market: {self.default_market!r} is not valid; accepted: spot, on-demand")
        keep = self.output_keep_days
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 36500:
            raise ConfigError(f"cloud.output_keep_days: {keep!r} is not valid; a number of days above 0 and at "
                              "most 36500")
        for r in self.runtimes:
            if r not in CLOUD_RUNTIMES:
                raise ConfigError(f"cloud.runtimes: {r!r} is not valid; accepted: a list of {', '.join(CLOUD_RUNTIMES)} "
                                  "(what the cloud nodes' image has installed)")


@dataclass(frozen=True)
class LimitsConfig:
    """What one local user may take of the controller that every user shares (`limits:`). A
    request over a submit limit is refused at submit (exit 2, naming the key); a client over a
    connection limit gets one error line and is disconnected."""

    max_connections_per_uid: int = 64
    """Open connections one uid may hold at once (the CLI holds one, the TUI two)."""
    max_connections: int = 1024
    """Open connections of all users together (the controller also raises its file limit to fit)."""
    idle_timeout: float = 60.0
    """A connection that sends no complete request for this long (s) is closed. A request being
    answered (a long poll) is never cut; clients reconnect by themselves."""
    max_request_bytes: int = 1048576
    """A request line longer than this is refused and its connection closed (memory per connection
    stays bounded; a job file is far smaller)."""
    max_array_tasks: int = 1001
    """Tasks in one array job (Slurm's MaxArraySize default: indices 0-1000)."""
    max_pending_tasks_per_user: int = 10000
    """PENDING tasks one user may have queued at once, arrays counted by task (Slurm's MaxSubmitJobs)."""
    bad_request_log_per_minute: int = 10
    """Malformed requests are logged one line each (no traceback), at most this many per uid per
    minute; the rest are counted in one line. The same budget applies to refused connections and
    to internal errors (logged with their traceback)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value > 0 or (f.type in (int, "int") and value != int(value)):
                raise ConfigError(f"limits.{f.name}: {value!r} is not valid; a number above 0")


@dataclass(frozen=True)
class RecoveryConfig:
    """Requeues the job did not cause (`recovery:`): a spot reclaim, a scale-down the controller
    made, a lost node, an exit code in `recover_on_exit_codes`. They never use up a job's
    `max_restarts` (which counts its own failures); this cap only stops a job that loses every
    node it lands on from looping for ever."""

    max_recoveries: int = 100
    """A task is requeued at most this many times for such causes, then ends FAILED with a reason
    naming this key; 0 = never recover (every preemption or lost node fails the job)."""

    def __post_init__(self) -> None:
        value = self.max_recoveries
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() \
                or not 0 <= value <= MAX_RECOVERIES_LIMIT:
            raise ConfigError(f"recovery.max_recoveries: {value!r} is not valid; a whole number from 0 to "
                              f"{MAX_RECOVERIES_LIMIT}")


MAX_RECOVERIES_LIMIT = 100000
"""Above this a cap is no cap: a looping job would fill the event log first."""


@dataclass(frozen=True)
class LocalityConfig:
    """Cache-aware placement (`locality:`, core/locality.py): prefer nodes that already hold a
    job's environment and data (control/scheduler.Scheduler.with_locality feeds core/schedule.plan)."""

    weight: float = 0.0
    """0 = placement ignores what nodes hold (the scheduler's order, as before); 1 = a second of
    transfer counts as a second of waiting; more prefers warm nodes harder."""
    max_wait: float = 120.0
    """Seconds a job may be held back waiting for a busy node that already holds its data."""
    onprem_bandwidth_mbps: float = 1000.0
    """What moving a job's world to an on-prem node costs, in megabits per second."""
    cloud_bandwidth_mbps: float = 100.0
    """The same for cloud nodes (object store or the controller's uplink)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            low = 0.0 if f.name in ("weight", "max_wait") else 1e-3
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= 1e9:
                raise ConfigError(f"locality.{f.name}: {value!r} is not valid; a number from {low:g}")


@dataclass(frozen=True)
class EnvironmentsConfig:
    """Jobs' Python environments (`environments:`)."""

    wheelhouse: str = ""
    """A directory of wheels on the controller, kept by the admin (writable by admins only): a node
    whose agent says `env_offline` (no package index) receives from it the wheels a job's
    environment needs, into its data cache, before the build (control/wheels.py). Empty: none."""
    download: bool = False
    """For offline nodes, fetch the wheels an environment names that no wheelhouse holds, once, with
    `pip download --only-binary=:all:` (wheels only: no build code runs; only names and version
    specifiers are passed on) into `<home>/wheels`, and ship them too."""
    index_url: str = ""
    """The index `download` uses (pip's --index-url); empty: pip's own setting (PyPI)."""

    def __post_init__(self) -> None:
        if self.wheelhouse and (not isinstance(self.wheelhouse, str) or not os.path.isabs(self.wheelhouse)):
            raise ConfigError(f"environments.wheelhouse: {self.wheelhouse!r} is not valid; an absolute "
                              "directory of .whl files")
        if not isinstance(self.download, bool):
            raise ConfigError(f"environments.download: {self.download!r} is not valid; true or false")
        if self.index_url and (not isinstance(self.index_url, str)
                               or not re.fullmatch(r"https?://[^\s]+", self.index_url)):
            raise ConfigError(f"environments.index_url: {self.index_url!r} is not valid; an http:// or "
                              "https:// URL")


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint and the telemetry history (`metrics:`)."""

    listen: str = ""
    """`HOST:PORT` for the Prometheus endpoint (DCGM exporter's port is 9400); empty = off. Its
    series carry user names and job names: a non-loopback address is refused unless
    `allow_remote` is true."""
    allow_remote: bool = False
    """Allow `listen` on an address other than loopback (put a firewall or proxy in front)."""
    history: bool = True
    """Keep per-node and per-GPU telemetry history in `<home>/telemetry.db` (see ARCHITECTURE.md,
    Observability, for the tiers); `hybridctl eff` reads it."""
    job_metrics: bool = False
    """Serve the values jobs log with `hybridctl.job.log` as `hybridctl_job_metric` on the
    endpoint. Off by default: anyone who can connect to the endpoint reads them, while `show`
    shows them only to the job's owner and admins."""

    def __post_init__(self) -> None:
        if self.listen:
            parse_listen(self.listen, self.allow_remote)


def parse_listen(listen: str, allow_remote: bool) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:9400` for IPv6) as (host, port); ConfigError naming `metrics.listen`
    for a malformed value or, without `allow_remote`, an address that is not loopback."""
    import ipaddress

    accepted = "HOST:PORT, e.g. 127.0.0.1:9400"
    host, sep, port_text = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) < 65536:
        raise ConfigError(f"metrics.listen: {listen!r} is not valid; accepted: {accepted}")
    if not allow_remote:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ConfigError(f"metrics.listen: {listen!r} is not a loopback address; the metrics carry "
                              "user and job names: set metrics.allow_remote: true to serve them beyond this host")
    return host, int(port_text)


IDLE_ACTIONS = ("none", "notify", "cancel", "requeue")


@dataclass(frozen=True)
class IdleConfig:
    """Jobs that hold GPUs and do not use them (`idle:`). Flagging is always on; acting is off."""

    util_below: float = 5.0
    """A GPU under this utilisation (%) counts as idle."""
    after: float = 1800.0
    """A job whose every GPU has been idle this long (s) is flagged (an event, `idle` in queue/show)."""
    action: str = "none"
    """What to do with a flagged job: none, notify (run `notify_command`), cancel or requeue
    (after `grace` more seconds idle)."""
    grace: float = 600.0
    """Seconds between the flag and cancel/requeue (the owner's chance to react)."""
    notify_command: tuple[str, ...] = ()
    """argv run without a shell when a job is flagged (action notify); hybridctl appends
    the job, its user, the node and the idle seconds as arguments."""

    def __post_init__(self) -> None:
        if self.action not in IDLE_ACTIONS:
            raise ConfigError(f"idle.action: {self.action!r} is not valid; accepted: {', '.join(IDLE_ACTIONS)}")
        if not 0 <= self.util_below <= 100:
            raise ConfigError(f"idle.util_below: {self.util_below!r} is not valid; a percentage from 0 to 100")
        if not self.after > 0 or self.grace < 0:
            raise ConfigError(f"idle.after/grace: {self.after!r}/{self.grace!r} are not valid; seconds, after > 0, grace >= 0")
        if self.action == "notify" and not self.notify_command:
            raise ConfigError("idle.notify_command: empty; action notify needs a command (a list: [program, args...])")


@dataclass(frozen=True)
class SlurmConfig:
    partitions: Mapping[str, str] = field(default_factory=dict)
    """`#SBATCH --partition` name -> the GPU type its jobs ask for (when the script names none),
    e.g. {a100: A100}. A partition not listed runs on any node, with a warning."""
    qos: Mapping[str, str] = field(default_factory=dict)
    """`#SBATCH --qos` name -> job priority, a whole number -1000..1000 (non-admins up to
    max_user_priority), e.g. {high: 100, low: -100}."""

    def __post_init__(self) -> None:
        for name, value in self.qos.items():
            if not re.fullmatch(r"-?[0-9]+", value) or not -1000 <= int(value) <= 1000:
                raise ConfigError(f"slurm.qos.{name}: {value!r} is not valid; a priority, a whole number from -1000 to 1000")


@dataclass(frozen=True)
class Settings:
    home: str = ""
    """State directory (database, socket, logs); empty = `$HYBRIDCTL_HOME` or ~/.local/state/hybridctl."""
    socket: str = ""
    """Controller socket path; empty = `$HYBRIDCTL_SOCKET`, else `<home>/hybridctl.sock` (reachable by
    the controller's user only, as the home is private: a shared controller names a path outside
    it; the systemd unit uses /run/hybridctl/controller.sock)."""
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
    cloud: CloudConfig = field(default_factory=CloudConfig)
    """Cloud bursting: providers, burst policy and limits."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """Per-user limits that keep the shared controller up for everyone."""
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    """How often a job is requeued after stops it did not cause (preemption, lost nodes)."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Prometheus endpoint and telemetry history."""
    idle: IdleConfig = field(default_factory=IdleConfig)
    """Idle-GPU detection and its optional policy."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """What `#SBATCH --partition` and `--qos` mean here (`hybridctl submit job.sbatch`)."""
    locality: LocalityConfig = field(default_factory=LocalityConfig)
    """Cache-aware placement: weight (0 = off) and how long a job may wait for a warm node."""
    environments: EnvironmentsConfig = field(default_factory=EnvironmentsConfig)
    """Jobs' Python environments: the wheelhouse offline nodes are built from."""

    def preemption_grace(self, cloud: bool) -> float:
        """Seconds a preempted task gets to write its final checkpoint on a node of that site:
        `cloud.preemption_grace` on a cloud node (a spot notice, a recall), `scheduler.preempt_grace`
        on-prem (a priority preemption), never less than a stop's `fleet.poll_interval` x 10."""
        site = self.cloud.preemption_grace if cloud else self.scheduler.preempt_grace
        return max(self.fleet.poll_interval * 10, site)

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
    def history_path(self) -> Path:
        """The telemetry history database, beside the job database (kept apart so that one stays small)."""
        return self.home_path / "telemetry.db"

    @property
    def known_hosts_path(self) -> Path:
        return Path(self.fleet.known_hosts) if self.fleet.known_hosts else self.home_path / "known_hosts"


def load(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `path` (None = defaults) and apply HYBRIDCTL_* overrides from `env`."""
    import yaml

    data: dict[str, Any] = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        from hybridctl.textfile import NotText, read_text

        try:
            text = read_text(path)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
        except NotText as exc:  # one error type for the config, as every other mistake in it
            raise ConfigError(exc.message) from None
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
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a range check in __post_init__: add the file
        raise ConfigError(f"{source}: {exc.message}") from None


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
    if text.startswith("tuple[str"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {dotted}: expected a list of strings, got {value!r}")
        return tuple(value)
    if text == "int | None" and value is not None:
        return _coerce(int, value, source, dotted)
    if hint in (int, float) or text in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            known = BURST_RANGES.get(dotted.removeprefix("cloud.burst.")) if dotted.startswith("cloud.burst.") else None
            raise ConfigError(f"{source}: {dotted}: {value!r} is not a number" + (f"; {known[2]}" if known else ""))
        if hint is int and not float(value).is_integer():  # int(2.5) would quietly make it 2
            raise ConfigError(f"{source}: {dotted}: {value!r} is not a whole number")
        return hint(value) if hint in (int, float) else value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {dotted}: {value!r} is not true/false")
        return value
    if text.startswith("typing.Mapping[str, str]"):
        if not isinstance(value, dict) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                  for v in value.values()):
            raise ConfigError(f"{source}: {dotted}: expected a mapping of names to values, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if text.startswith("typing.Mapping[str, float]"):  # name -> US dollars (cloud.burst.*_budget_usd)
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {dotted}: expected a mapping of name: US dollars, e.g. {{'*': 500}};"
                              f" got {value!r}")
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ConfigError(f"{source}: {dotted}.{k}: {v!r} is not valid; US dollars, 0 or more")
        return {str(k): float(v) for k, v in value.items()}
    if text.startswith("typing.Mapping[str, int]"):
        if not isinstance(value, dict) or not all(isinstance(v, int) and v >= 0 for v in value.values()):
            raise ConfigError(f"{source}: {dotted}: expected a mapping of name: GPU count (≥ 0), got {value!r}")
        return {str(k): int(v) for k, v in value.items()}
    if text == "typing.Mapping[str, typing.Any]":  # checked by its dataclass (cloud.simulated.agent_config)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{source}: {dotted}: expected a mapping of settings, got {value!r}")
        return dict(value)
    if value is None:
        return None
    return str(value) if hint is str or "str" in text else value
