"""The Prometheus endpoint (fleet, node, GPU and job metrics, GPU series under DCGM exporter's names
and labels so existing DCGM Grafana dashboards work unchanged) and the `Observer` that feeds it,
the telemetry history and the idle-GPU rule once per poll interval.

The controller hands an `Exporter` a `MetricsSnapshot` (plain data, built on the event loop by
`snapshot_of`); scrapes run in prometheus-client's HTTP thread and read only the last snapshot, so
a scrape never touches the store or the fleet and the collector is testable in-process."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from hybridctl.config import parse_listen
from hybridctl.core.estimate import duration
from hybridctl.core.errors import SpecError
from hybridctl.core.fields import parse_job_ref
from hybridctl.core.wire import MAX_JOB_METRICS

log = logging.getLogger("hybridctl.observe")

GPU_LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "hpc_job", "user")
"""DCGM exporter's labels, plus the GPU's current job and its owner. The job label is `hpc_job`
(DCGM exporter's HPC job-mapping label): a label named `job` would collide with Prometheus's own
scrape `job` label and be renamed `exported_job`."""

DCGM_GPU_FIELDS: tuple[tuple[str, str, str, float], ...] = (
    # (DCGM name, sample key, help, scale)
    ("DCGM_FI_DEV_GPU_UTIL", "util_gpu", "GPU utilization (in %).", 1.0),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "util_mem", "Memory utilization (in %).", 1.0),
    ("DCGM_FI_DEV_FB_USED", "mem_used_mb", "Framebuffer memory used (in MiB).", 1.0),
    ("DCGM_FI_DEV_GPU_TEMP", "temp_c", "GPU temperature (in C).", 1.0),
    ("DCGM_FI_DEV_POWER_USAGE", "power_w", "Power draw (in W).", 1.0),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", "power_limit_w", "Power management limit (in W).", 1.0),
    ("DCGM_FI_DEV_SM_CLOCK", "clock_sm_mhz", "SM clock frequency (in MHz).", 1.0),
    ("DCGM_FI_DEV_MEM_CLOCK", "clock_mem_mhz", "Memory clock frequency (in MHz).", 1.0),
    ("DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "pcie_tx_kbps", "PCIe TX throughput (in KB/s).", 1.0),
    ("DCGM_FI_DEV_PCIE_RX_THROUGHPUT", "pcie_rx_kbps", "PCIe RX throughput (in KB/s).", 1.0),
)
DCGM_GPU_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "ecc_corrected", "Total number of single-bit volatile ECC errors."),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "ecc_uncorrected", "Total number of double-bit volatile ECC errors."),
)
OWN_GPU_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("hybridctl_gpu_sm_util_percent", "sm_util",
     "SM utilisation summed over the GPU's processes (NVML process utilisation; not DCGM's profiling SM_ACTIVE)."),
    ("hybridctl_gpu_fan_percent", "fan_pct", "Fan speed (in %); absent on passively cooled cards."),
)
_HOST_FIELDS: tuple[tuple[str, str, str, float], ...] = (
    ("hybridctl_node_cpu_percent", "cpu_percent", "Host CPU use (in %, all cores).", 1.0),
    ("hybridctl_node_load1", "load1", "1-minute load average.", 1.0),
    ("hybridctl_node_memory_used_bytes", "memory_used_mb", "Host memory in use (bytes).", 1048576.0),
    ("hybridctl_node_memory_total_bytes", "memory_total_mb", "Host memory (bytes).", 1048576.0),
    ("hybridctl_node_network_receive_bytes_per_second", "net_rx_bps", "Network receive rate.", 1.0),
    ("hybridctl_node_network_transmit_bytes_per_second", "net_tx_bps", "Network transmit rate.", 1.0),
)


@dataclass(frozen=True)
class MetricsSnapshot:
    """What one scrape shows: plain data copied from the controller at one moment."""

    nodes: Sequence[Mapping[str, Any]] = ()
    """Per node: `name`, `site`, `state` (the node's state word) and `telemetry` (its latest
    checked sample, core.wire's shape, or None)."""
    holders: Mapping[tuple[str, int], tuple[str, str]] = field(default_factory=dict)
    """(node, GPU index) -> (job label, user) for every GPU held by an open allocation."""
    tasks: Sequence[Mapping[str, Any]] = ()
    """Active tasks: `job` (label), `user`, `state`."""
    queue_pending: int = 0
    cloud_spend_usd_total: float = 0.0
    owner_spend: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """('user'|'group', name) -> cloud $ spent in the current budget period."""
    owner_budgets: Mapping[tuple[str, str], float] = field(default_factory=dict)
    """('user'|'group', name) -> its own cloud budget (`cloud.burst.user_budget_usd`...), for
    those named and those '*' covers that spent this period."""
    idle: Mapping[str, float] = field(default_factory=dict)
    """Job label -> seconds its GPUs have been idle (flagged jobs only)."""
    job_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Job label -> the last values it logged with `hybridctl.job.log`."""


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class SnapshotCollector(Collector):
    """A prometheus-client collector over the latest snapshot (swapped atomically by `update`)."""

    def __init__(self, snapshot: MetricsSnapshot | None = None) -> None:
        self._snapshot = snapshot or MetricsSnapshot()
        self._lock = threading.Lock()

    def update(self, snapshot: MetricsSnapshot) -> None:
        with self._lock:
            self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # no fixed description: families depend on the snapshot (registry auto_describe off)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = self._snapshot
        yield from _gpu_families(snap)
        yield from _node_families(snap)
        yield from _job_families(snap)


def _gpu_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    gauges = {name: GaugeMetricFamily(name, help_, labels=GPU_LABELS) for name, _k, help_, _s in DCGM_GPU_FIELDS}
    fb_free = GaugeMetricFamily("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels=GPU_LABELS)
    # Typed gauge, not counter: prometheus-client appends `_total` to every counter's name, which
    # would break DCGM's `..._VOL_TOTAL` names; rate()/increase() work on them either way.
    counters = {name: GaugeMetricFamily(name, help_, labels=GPU_LABELS) for name, _k, help_ in DCGM_GPU_COUNTERS}
    own = {name: GaugeMetricFamily(name, help_, labels=GPU_LABELS) for name, _k, help_ in OWN_GPU_FIELDS}
    healthy = GaugeMetricFamily("hybridctl_gpu_healthy", "1 when the agent reports the GPU healthy.",
                                labels=GPU_LABELS)
    foreign = GaugeMetricFamily(
        "hybridctl_gpu_foreign_processes",
        "Processes on the GPU that belong to no job allocated that GPU (foreign, or a job reaching outside its GPUs).",
        labels=GPU_LABELS)
    for node in snap.nodes:
        sample = node.get("telemetry") or {}
        for g in sample.get("gpus") or ():
            index = g["index"]
            job, user = snap.holders.get((node["name"], index), ("", ""))
            labels = [str(index), g.get("uuid") or "", f"nvidia{index}", g.get("name") or "",
                      node["name"], job, user]
            for name, key, _h, scale in DCGM_GPU_FIELDS:
                v = _num(g.get(key))
                if v is not None:
                    gauges[name].add_metric(labels, v * scale)
            used, total = _num(g.get("mem_used_mb")), _num(g.get("mem_total_mb"))
            if used is not None and total is not None:
                fb_free.add_metric(labels, max(0.0, total - used))
            for name, key, _h in DCGM_GPU_COUNTERS:
                v = _num(g.get(key))
                if v is not None:
                    counters[name].add_metric(labels, v)
            for name, key, _h in OWN_GPU_FIELDS:
                v = _num(g.get(key))
                if v is not None:
                    own[name].add_metric(labels, v)
            if g.get("healthy") is not None:
                healthy.add_metric(labels, 1.0 if g["healthy"] else 0.0)
            foreign.add_metric(labels, float(len(misplaced(g.get("processes") or (), job))))
    yield from gauges.values()
    yield fb_free
    yield from counters.values()
    yield from own.values()
    yield healthy
    yield foreign


def misplaced(processes: Sequence[Mapping[str, Any]], holder: str) -> list[Mapping[str, Any]]:
    """Processes on a GPU that do not belong to the job holding it (`holder`, a job label, '' when
    none): a foreign process (job None) or another job's process reaching outside its GPUs."""
    out = []
    for p in processes:
        key = p.get("job")
        if key is None or not holder or str(key).split(".", 1)[0] != holder:
            out.append(p)
    return out


def _node_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    state = GaugeMetricFamily("hybridctl_node_state", "1 for the node's current state.",
                              labels=("Hostname", "site", "state"))
    host = {name: GaugeMetricFamily(name, help_, labels=("Hostname",)) for name, _k, help_, _s in _HOST_FIELDS}
    gpus = GaugeMetricFamily("hybridctl_node_gpus", "GPUs on the node by use.", labels=("Hostname", "use"))
    for node in snap.nodes:
        name = node["name"]
        state.add_metric([name, str(node.get("site") or ""), str(node.get("state") or "")], 1.0)
        sample = node.get("telemetry") or {}
        h = sample.get("host") or {}
        for metric, key, _h, scale in _HOST_FIELDS:
            v = _num(h.get(key))
            if v is not None:
                host[metric].add_metric([name], v * scale)
        if sample.get("gpus") is not None:
            held = sum(1 for g in sample["gpus"] if (name, g["index"]) in snap.holders)
            gpus.add_metric([name, "allocated"], float(held))
            gpus.add_metric([name, "free"], float(len(sample["gpus"]) - held))
    yield state
    yield from host.values()
    yield gpus


def _job_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    state = GaugeMetricFamily("hybridctl_job_state", "1 for each running task's state (STARTING, RUNNING, PREEMPTED).",
                              labels=("hpc_job", "user", "state"))
    for t in snap.tasks:
        state.add_metric([str(t["job"]), str(t.get("user") or ""), str(t["state"])], 1.0)
    yield state
    yield GaugeMetricFamily("hybridctl_queue_pending", "Tasks waiting to be placed.", value=float(snap.queue_pending))
    yield CounterMetricFamily("hybridctl_cloud_spend_usd", "Cloud spend accrued since the controller's database began (USD).",
                              value=float(snap.cloud_spend_usd_total))
    for family, doc, values in (
            ("hybridctl_cloud_owner_spend_usd", "Cloud spend of a user or group in the current budget period (USD):"
                                                " their share of the nodes they held.", snap.owner_spend),
            ("hybridctl_cloud_owner_budget_usd", "A user's or group's own cloud budget per budget period (USD;"
                                                 " cloud.burst.user_budget_usd, group_budget_usd).", snap.owner_budgets)):
        owners = GaugeMetricFamily(family, doc, labels=("kind", "name"))
        for (kind, name), usd in sorted(values.items()):
            owners.add_metric([kind, name], float(usd))
        yield owners
    idle = GaugeMetricFamily("hybridctl_job_idle_seconds",
                             "Seconds every GPU of a flagged job has stayed under idle.util_below.",
                             labels=("hpc_job", "user"))
    users = {str(t["job"]): str(t.get("user") or "") for t in snap.tasks}
    for job, seconds in sorted(snap.idle.items()):
        idle.add_metric([job, users.get(job, "")], float(seconds))
    yield idle
    logged = GaugeMetricFamily("hybridctl_job_metric", "The last value a job logged with hybridctl.job.log.",
                               labels=("hpc_job", "user", "name"))
    for job, values in sorted(snap.job_metrics.items()):
        for name, value in sorted(values.items()):
            v = _num(value)
            if v is not None:
                logged.add_metric([job, users.get(job, ""), name], v)
    yield logged


MAX_SCRAPES = 8
"""Connections the endpoint serves at once; more are closed at accept. Any local user reaches a
loopback endpoint: prometheus-client's own server held a thread per connection, for ever."""
SCRAPE_TIMEOUT = 10.0
"""Seconds a connection may stay silent mid-request or mid-response before it is closed."""


def _make_server(host: str, port: int, app: Any) -> Any:
    """A threading WSGI server with at most MAX_SCRAPES handler threads, each with a socket timeout."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    slots = threading.BoundedSemaphore(MAX_SCRAPES)

    class Handler(WSGIRequestHandler):
        timeout = SCRAPE_TIMEOUT

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
            pass

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        request_queue_size = 64  # listen backlog (5 by default: a burst of connects waited on SYN retries)
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def process_request(self, request: Any, client_address: Any) -> None:
            if not slots.acquire(blocking=False):
                self.shutdown_request(request)  # full: closed at once, never a thread
                return
            try:
                super().process_request(request, client_address)
            except BaseException:
                slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                slots.release()

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.debug("metrics endpoint: connection from %s failed", client_address, exc_info=True)  # no traceback on stderr

    return make_server(host, port, app, Server, handler_class=Handler)


class Exporter:
    """The endpoint: a private registry with one `SnapshotCollector`, served on `listen` by one
    HTTP server thread and at most MAX_SCRAPES handler threads. Binds only the configured address."""

    def __init__(self, listen: str, allow_remote: bool = False) -> None:
        self.host, self.port = parse_listen(listen, allow_remote)
        self.collector = SnapshotCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._server: Any = None

    def start(self) -> int:
        """Start serving; returns the bound port (useful with port 0 in tests). Raises OSError
        when the address is taken, with a message naming it and the key to change."""
        from prometheus_client import make_wsgi_app

        try:
            self._server = _make_server(self.host, self.port, make_wsgi_app(self.registry))
        except OSError as exc:
            raise OSError(exc.errno, f"metrics.listen {self.host}:{self.port}: {exc.strerror}; "
                                     "choose another address in metrics.listen") from exc
        threading.Thread(target=self._server.serve_forever, name="hybridctl-metrics", daemon=True).start()
        return int(self._server.server_address[1])

    def update(self, snapshot: MetricsSnapshot) -> None:
        self.collector.update(snapshot)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def snapshot_of(controller: Any, idle: Mapping[str, float] | None = None,
                job_metrics: Mapping[str, Mapping[str, float]] | None = None) -> MetricsSnapshot:
    """Copy what the endpoint shows out of the controller (call on the event loop thread)."""
    from hybridctl.core.burst import label

    store = controller.store
    telemetry = controller.fleet.telemetry() if getattr(controller, "fleet", None) else {}
    holders: dict[tuple[str, int], tuple[str, str]] = {}
    busy: set[str] = set()
    for a in store.open_allocations():
        busy.add(a.node)
        for gpu in a.gpus:
            holders[(a.node, int(gpu))] = (label((a.job_id, a.task)), a.user)
    nodes = [{"name": n.name, "site": n.site, "state": n.state(n.name in busy)[0].value,
              "telemetry": telemetry.get(n.name)} for n in store.nodes()]
    from hybridctl.store.telemetry import count_pending

    # Active tasks only: a 100k-task array's PENDING rows are one count, not 100k series (or dicts).
    tasks = [{"job": label((r["job_id"], r["task"])), "user": r["user"], "state": r["state"]}
             for r in store.queue(user=None, states=["STARTING", "RUNNING", "PREEMPTED"], include_finished=False)]
    pending = count_pending(store)
    owners, budgets = _owners(store, controller.settings, controller.clock())
    return MetricsSnapshot(nodes=nodes, holders=holders, tasks=tasks, queue_pending=pending,
                           cloud_spend_usd_total=store.cloud_spent_since("0000-00-00"),
                           owner_spend=owners, owner_budgets=budgets,
                           idle=dict(idle or {}), job_metrics=dict(job_metrics or {}))


def _owners(store: Any, settings: Any, now: float) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
    """Each user's and group's cloud spend this budget period, and the budgets of their own."""
    from hybridctl.control.budget import limits, utc_day
    from hybridctl.core.allowance import owners_with_budgets
    from hybridctl.core.burst import period_start

    lim = limits(settings)
    spent = store.cloud_owner_spent_since(utc_day(period_start(now, lim.budget_period)))
    return spent, owners_with_budgets(lim.user_budget_usd, lim.group_budget_usd, spent)



# ---- the controller's observation loop --------------------------------------------------------------


SNAPSHOT_EVERY = 5.0
"""Seconds between endpoint snapshots (Prometheus scrapes every 15-60 s; a snapshot reads the queue)."""
NOTIFY_TIMEOUT = 60.0
MISPLACED_LOGGED = 10
"""New misplaced processes logged one by one per node and sample; the rest as one count."""
MAX_MISPLACED = 1024
"""Misplaced processes remembered at once (a node listing more new ones each sample stays bounded)."""
MAX_GAP = 30.0
"""Seconds between two samples of a node above which the time between is not counted in usage."""


RELEASE_GRACE_S = 120.0
"""How long after a rank's allocation on a node ended that node may still report it without being
logged as a liar (its sample was taken before the release reached it); it is not believed either way."""


class Observer:
    """Once per poll interval: hands the fleet's fresh samples to the history writer, tracks idle
    GPUs per job (core.efficiency.IdleTracker) and acts on its decisions, keeps each job's last
    `job.log` values, and refreshes the Prometheus snapshot. Built once by the daemon."""

    def __init__(self, store: Any, settings: Any, lifecycle: Any, fleet: Any, clock: Any) -> None:
        from hybridctl.core.efficiency import IdlePolicy, IdleTracker

        self.store = store
        self.settings = settings
        self.lifecycle = lifecycle
        self.fleet = fleet
        self.clock = clock
        idle = settings.idle
        self.tracker = IdleTracker(IdlePolicy(idle.util_below, idle.after, idle.action, idle.grace))
        self.writer: Any = None
        if settings.metrics.history:
            from hybridctl.store.telemetry import HistoryWriter

            self.writer = HistoryWriter(settings.history_path)
        self.exporter = Exporter(settings.metrics.listen, settings.metrics.allow_remote) if settings.metrics.listen else None
        self.job_metrics: dict[str, dict[str, float]] = {}
        """Task label -> the last values its ranks logged (`show`, the endpoint)."""
        self.idle: dict[str, float] = {}
        """Task label -> idle seconds, for the tasks flagged now (`queue`, `show`, the endpoint)."""
        self.misplaced: dict[tuple[str, int, Any], dict[str, Any]] = {}
        """(node, GPU, pid) -> a process on a GPU not allocated to its job (each logged once)."""
        self._seen: dict[str, float] = {}
        self._snapshot_at = -math.inf
        self._notifies: set[asyncio.Task[None]] = set()
        self._lied: set[str] = set()
        """Nodes already logged for reporting on jobs they do not hold (logged once each)."""

    def start(self) -> None:
        if self.exporter is not None:
            port = self.exporter.start()
            log.info("Prometheus metrics on http://%s:%d/metrics", self.exporter.host, port)

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.stop()
        if self.writer is not None:
            self.writer.close()

    async def run(self) -> None:
        interval = max(0.2, self.settings.fleet.poll_interval)
        while True:
            self.tick(self.clock())
            await asyncio.sleep(interval)

    def tick(self, now: float) -> None:
        from hybridctl.core.burst import label
        from hybridctl.core.reconcile import parse_key

        telemetry = self.fleet.telemetry() if self.fleet is not None else {}
        from functools import cache

        from hybridctl.store.telemetry import held_keys_by_node

        held_keys = cache(lambda: held_keys_by_node(self.store))
        fresh = {n: self._own_jobs(n, s, held_keys, now) for n, s in telemetry.items()
                 if s.get("time") and s["time"] != self._seen.get(n)}
        held: dict[str, dict[str, list[int]]] = {}
        users: dict[str, str] = {}
        owners: dict[str, tuple[str, str]] = {}
        for a in self.store.open_allocations():
            lbl = label((a.job_id, a.task))
            held.setdefault(lbl, {}).setdefault(a.node, []).extend(int(g) for g in a.gpus)
            users[lbl] = a.user
            owners[lbl] = (a.user, a.group)
        gpu_holder = {(node, g): lbl for lbl, nodes in held.items() for node, gs in nodes.items() for g in gs}
        usage: dict[tuple[int, str, str], tuple[float, float]] = {}
        for n, s in fresh.items():  # GPU-seconds held and used since the node's previous sample
            prev, t = self._seen.get(n), float(s["time"])
            self._seen[n] = s["time"]
            if prev is None or not 0 < t - prev <= MAX_GAP:
                continue
            hour = int(t // 3600) * 3600
            for g in s.get("gpus") or ():
                lbl = gpu_holder.get((n, g["index"]))
                if lbl is None:
                    continue
                key = (hour, *owners[lbl])
                held_s, used_s = usage.get(key, (0.0, 0.0))
                usage[key] = (held_s + (t - prev), used_s + (t - prev) * (g.get("util_gpu") or 0.0) / 100.0)
        if self.writer is not None and fresh:
            self.writer.submit(fresh, now, usage)
        for node, s in fresh.items():
            util = {g["index"]: g.get("util_gpu") for g in s.get("gpus") or ()}
            unlogged = 0  # a node may list thousands of processes per sample: a few lines, then a count
            logged = 0
            for g in s.get("gpus") or ():
                for p in misplaced(g.get("processes") or (), gpu_holder.get((node, g["index"]), "")):
                    seen = (node, g["index"], p.get("pid"))
                    full = len(self.misplaced) >= MAX_MISPLACED
                    if seen not in self.misplaced and (logged >= MISPLACED_LOGGED or full):
                        unlogged += 1
                        if full:
                            continue  # kept: the first MAX_MISPLACED, until they are a minute old
                    elif seen not in self.misplaced:
                        logged += 1
                        log.warning("GPU %d of %s is used by pid %s (user %s, job %s), not by the job it is allocated "
                                    "to (%s)", g["index"], node, p.get("pid"), p.get("user"), p.get("job") or "none",
                                    gpu_holder.get((node, g["index"])) or "none")
                    self.misplaced[seen] = {"node": node, "gpu": g["index"], "pid": p.get("pid"),
                                            "user": p.get("user"), "job": p.get("job"), "time": s["time"]}
            if unlogged:
                log.warning("%s: %d more processes on GPUs not allocated to their job (not logged one by one)",
                            node, unlogged)
            for lbl, nodes in held.items():
                if node in nodes and nodes[node]:
                    self.tracker.observe(lbl, node, [util.get(g) for g in nodes[node]], float(s["time"]))
            for key, usage in (s.get("jobs") or {}).items():
                parsed = parse_key(key)
                if parsed is not None and usage.get("metrics"):
                    kept = self.job_metrics.setdefault(label(parsed[:2]), {})
                    for name, value in usage["metrics"].items():  # a task's ranks share MAX_JOB_METRICS names
                        if name in kept or len(kept) < MAX_JOB_METRICS:
                            kept[name] = value
        for lbl in [k for k in self.job_metrics if k not in held]:
            del self.job_metrics[lbl]
        for key in [k for k, v in self.misplaced.items() if now - v["time"] > 60]:
            del self.misplaced[key]  # gone for a minute: forget it (and log it again if it returns)
        decisions = self.tracker.decide({lbl: list(nodes) for lbl, nodes in held.items() if any(nodes.values())}, now)
        self.idle = {d.job: d.idle_s for d in decisions}
        for d in decisions:
            self._act(d, users.get(d.job, ""), sorted(held.get(d.job, {})), now)
        if self.exporter is not None and now - self._snapshot_at >= SNAPSHOT_EVERY:
            self._snapshot_at = now
            # Logged values reach the endpoint only when asked for (metrics.job_metrics): any local
            # user who can connect reads them, while `show` hides them from other users.
            logged = self.job_metrics if self.settings.metrics.job_metrics else None
            self.exporter.update(snapshot_of(self, self.idle, logged))

    def _act(self, d: Any, user: str, nodes: list[str], now: float) -> None:
        from hybridctl.store.telemetry import note_event

        ref = _task_ref(d.job)
        cfg = self.settings.idle
        if d.flag:
            why = f"idle: every GPU under {cfg.util_below:g}% for {duration(d.idle_s)}"
            log.warning("job %s (%s) holds GPUs on %s and uses none: %s", d.job, user, ",".join(nodes), why)
            if ref is not None:
                note_event(self.store, ref[0], ref[1], why, now)
            if cfg.action == "notify" and cfg.notify_command:
                self._spawn_notify([*cfg.notify_command, d.job, user, ",".join(nodes), f"{d.idle_s:.0f}"])
        if d.act and ref is not None:
            reason = f"idle GPUs: under {cfg.util_below:g}% for {duration(d.idle_s)} (idle.action {d.act})"
            if d.act == "cancel":
                simulated = {n.name for n in self.store.nodes() if n.simulated}
                _c, _s, stopping = self.lifecycle.cancel(
                    [ref], reason=reason, actor_uid=None,
                    real_nodes=lambda j, t: [n for n in self.store.task_nodes(j, t) if n not in simulated])
            else:
                self.lifecycle.preempt(ref[0], ref[1], reason)
                stopping = set(nodes)
            for node in stopping:
                if self.fleet is not None:
                    self.fleet.kick(node)
            log.warning("job %s: %s", d.job, reason)

    def _own_jobs(self, node: str, sample: dict[str, Any], held_keys: Any, now: float) -> dict[str, Any]:
        """The sample with only the `jobs` entries of ranks whose open allocation is on `node`: a
        node is believed only about itself (its lies would reach history, `eff`, `show` and the
        endpoint under another job's name, and make up series without end). `held_keys()` gives
        node -> keys, read once per tick."""
        jobs = sample.get("jobs")
        if not jobs:
            return sample
        held = held_keys().get(node, set())
        foreign = [k for k in jobs if k not in held]
        if not foreign:
            return sample
        if node not in self._lied:  # once per node: a sample taken just before a release is no lie
            from hybridctl.store.telemetry import released_since

            ending = released_since(self.store, node, foreign, now - RELEASE_GRACE_S)
            lies = [k for k in foreign if k not in ending]
            if lies:
                self._lied.add(node)
                log.warning("node %s reported usage of %d job(s) it holds no allocation for (e.g. %s): not believed",
                            node, len(lies), lies[0])
        return {**sample, "jobs": {k: v for k, v in jobs.items() if k in held}}

    def _spawn_notify(self, argv: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(_notify(argv))
        self._notifies.add(task)
        task.add_done_callback(self._notifies.discard)

    async def efficiency(self, job_id: int, task: int) -> dict[str, Any] | None:
        """`eff` for one task: computed in a thread on read-only connections (the loop never waits
        on the history file)."""
        from hybridctl.core.burst import label
        from hybridctl.store.telemetry import efficiency_report

        lbl = label((job_id, task))
        states = self.store.task_states(job_id, task)
        if not states:
            return None
        state = states[0].state
        spec = self.store.job(job_id)["spec"]
        memory = (spec.get("resources") or {}).get("memory_mb") or None
        return await asyncio.to_thread(
            efficiency_report, self.settings.history_path, self.settings.db_path, job_id, task, lbl, state.value,
            self.clock(), memory, self.idle.get(lbl), state.is_terminal())


async def usage_of(settings: Any, since: float) -> dict[tuple[str, str], tuple[float, float]]:
    """(user, group) -> (GPU-hours held, used) from the history, read in a worker thread."""
    from hybridctl.store.telemetry import usage_report

    return await asyncio.to_thread(usage_report, settings.history_path, since)


async def history_of(settings: Any, clock: Any, job_id: int | None, task: int, node: str | None,
                     seconds: float) -> dict[str, Any]:
    """Chart series (store.telemetry.history_report) read in a worker thread."""
    from hybridctl.store.telemetry import history_report

    now = clock()
    return await asyncio.to_thread(history_report, settings.history_path, settings.db_path, job_id, task, node,
                                   now - seconds, now)


async def _notify(argv: list[str]) -> None:
    """Run the idle hook without a shell; log its failure, never raise into the loop."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        log.warning("idle.notify_command %s could not start: %s", argv[0], exc)
        return
    try:
        _out, err = await asyncio.wait_for(proc.communicate(), NOTIFY_TIMEOUT)
    except asyncio.TimeoutError:
        # Its own session: kill what it started too (a child left holding stderr kept this task,
        # and the process, alive past the bound). A child that left the group is not waited for.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except asyncio.TimeoutError:
            pass
        log.warning("idle.notify_command %s ran over %g s: killed", argv[0], NOTIFY_TIMEOUT)
        return
    if proc.returncode:
        log.warning("idle.notify_command %s exited %s: %s", argv[0], proc.returncode, err.decode(errors="replace")[-500:])


def _task_ref(label: str) -> tuple[int, int] | None:
    """'42' -> (42, 0), '42_7' -> (42, 7) (core.model.task_label's forms); None for anything else.
    core/fields.parse_job_ref reads it: ASCII digits only (str.isdigit is true for '٣' and '²')."""
    if not isinstance(label, str) or label != label.strip():
        return None
    try:
        job, task = parse_job_ref(label)
    except SpecError:
        return None
    return job, task or 0
