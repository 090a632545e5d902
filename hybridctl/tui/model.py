"""View models: controller replies turned into the rows the screens show, plus the `/` filter
grammar and column sorting. Pure functions and frozen dataclasses, so they are tested without a
terminal and stay cheap at 1000 nodes and 10k jobs."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from hybridctl.fmt import gpus_text, job_label
from hybridctl.tui.history import History

T = TypeVar("T")

ACTIVE = ("STARTING", "RUNNING")
EMPTY: deque[float | None] = deque(maxlen=1)


# ---- the `/` filter ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """`/alice state:run,pend gpu01 train`: `user:` (or `@name`), `state:` and `node:` narrow by
    field (comma lists; states match by prefix), other words must all appear somewhere in the row."""

    users: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.users or self.states or self.nodes or self.words)

    def match(self, user: str, state: str, nodes: str, text: str) -> bool:
        if self.users and user.lower() not in self.users:
            return False
        if self.states and not any(state.lower().startswith(s) for s in self.states):
            return False
        if self.nodes and not any(n in nodes.lower() for n in self.nodes):
            return False
        low = text.lower()
        return all(w in low for w in self.words)


def parse_filter(text: str) -> Filter:
    users: list[str] = []
    states: list[str] = []
    nodes: list[str] = []
    words: list[str] = []
    for tok in text.lower().split():
        key, sep, value = tok.partition(":")
        values = [v for v in value.split(",") if v]
        if sep and key in ("user", "u"):
            users += values
        elif sep and key in ("state", "s"):
            states += values
        elif sep and key in ("node", "n"):
            nodes += values
        elif tok.startswith("@") and len(tok) > 1:
            users.append(tok[1:])
        else:
            words.append(tok)
    return Filter(tuple(users), tuple(states), tuple(nodes), tuple(words))


def sort_rows(rows: list[T], keys: dict[str, Callable[[T], Any]], column: str, reverse: bool) -> list[T]:
    """Sort by one column; missing values (None) always go last, whichever the direction."""
    fn = keys.get(column)
    if fn is None:
        return rows
    present = [r for r in rows if fn(r) is not None]
    missing = [r for r in rows if fn(r) is None]
    present.sort(key=fn, reverse=reverse)
    return present + missing


# ---- fleet ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeRow:
    name: str
    site: str
    """'on-prem', 'cloud', or 'cloud:<provider>'."""
    state: str
    reason: str
    gpus_used: int
    gpus_total: int
    models: str
    util: float | None
    """Mean GPU util (%) of the latest sample; None without telemetry."""
    util_hist: deque[float | None]
    mem_used: float | None
    mem_total: float | None
    temp_max: float | None
    power: float | None
    price: float | None
    """$/h for cloud nodes (None on-prem or unknown)."""
    unhealthy: int
    foreign: int

    @property
    def search(self) -> str:
        return f"{self.name} {self.site} {self.state} {self.models} {self.reason}"


def site_text(n: dict[str, Any]) -> str:
    if n.get("site") != "cloud":
        return "on-prem"
    provider = n.get("provider")
    return f"cloud:{provider}" if provider else "cloud"


def _sum(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) if vals else None


def node_row(n: dict[str, Any], history: History) -> NodeRow:
    sample = n.get("telemetry") or {}
    gpus = sample.get("gpus") or []
    utils = [g.get("util_gpu") for g in gpus if g.get("util_gpu") is not None]
    temps = [g.get("temp_c") for g in gpus if g.get("temp_c") is not None]
    declared = n.get("gpus") or []
    models = sorted({str(g.get("model", "")) for g in declared if g.get("model")})
    price = n.get("price_hourly")  # cloud nodes only
    return NodeRow(
        name=n["name"], site=site_text(n), state=n.get("state", "?"), reason=n.get("state_reason") or "",
        gpus_used=int(n.get("gpus_used") or 0), gpus_total=int(n.get("gpus_total", len(declared)) or 0),
        models=",".join(models), util=sum(utils) / len(utils) if utils else None,
        util_hist=history.node_util.get(n["name"], EMPTY),
        mem_used=_sum(g.get("mem_used_mb") for g in gpus), mem_total=_sum(g.get("mem_total_mb") for g in gpus),
        temp_max=max(temps) if temps else None, power=_sum(g.get("power_w") for g in gpus),
        price=None if price is None else float(price),
        unhealthy=sum(1 for g in declared if g.get("healthy") is False),
        foreign=sum(1 for g in declared if g.get("foreign")),
    )


NODE_SORT: dict[str, Callable[[NodeRow], Any]] = {
    "name": lambda r: r.name, "site": lambda r: r.site, "state": lambda r: r.state,
    "gpus": lambda r: (r.gpus_used, r.gpus_total), "util": lambda r: r.util, "mem": lambda r: r.mem_used,
    "temp": lambda r: r.temp_max, "power": lambda r: r.power, "price": lambda r: r.price,
    "reason": lambda r: r.reason,
}


def node_rows(nodes: Sequence[dict[str, Any]], history: History, flt: Filter, sort: str = "name",
              reverse: bool = False) -> list[NodeRow]:
    rows = [node_row(n, history) for n in nodes]
    if not flt.empty:
        node_flt = replace(flt, users=())  # nodes have no user: `user:` narrows jobs, not nodes
        rows = [r for r in rows if node_flt.match("", r.state, r.name, r.search)]
    return sort_rows(rows, NODE_SORT, sort, reverse)


# ---- GPUs -------------------------------------------------------------------------------------


class GpuRow:
    """One GPU: the node's declared GPU, the agent's latest sample of it and the jobs holding it.
    Fields are read lazily from those, because the `:gpus` view builds 8000 of these every
    second and draws only the forty on screen."""

    __slots__ = ("node", "index", "_decl", "_s", "_holders", "hist")

    def __init__(self, node: str, index: int, decl: dict[str, Any], sample: dict[str, Any],
                 holders: list[dict[str, Any]], hist: Any) -> None:
        self.node, self.index, self._decl, self._s, self._holders, self.hist = node, index, decl, sample, holders, hist

    model = property(lambda self: str(self._decl.get("model") or self._s.get("name") or "GPU"))
    healthy = property(lambda self: self._decl.get("healthy", self._s.get("healthy", True)) is not False)
    reason = property(lambda self: self._decl.get("reason") or self._s.get("health_reason") or "")
    foreign = property(lambda self: bool(self._decl.get("foreign")))
    util = property(lambda self: self._s.get("util_gpu"))
    mem_used = property(lambda self: self._s.get("mem_used_mb"))
    mem_total = property(lambda self: self._s.get("mem_total_mb", self._decl.get("memory_mb")))
    temp = property(lambda self: self._s.get("temp_c"))
    power = property(lambda self: self._s.get("power_w"))
    power_limit = property(lambda self: self._s.get("power_limit_w"))

    @property
    def held(self) -> bool:
        return bool(self._holders)

    @property
    def jobs(self) -> str:
        """Labels of the jobs holding this GPU ('42', '43_7'), from the queue's allocations."""
        return ",".join(job_label(r) for r in self._holders)

    @property
    def users(self) -> str:
        return ",".join(sorted({r["user"] for r in self._holders}))

    @property
    def key(self) -> str:
        return f"{self.node}/{self.index}"

    @property
    def search(self) -> str:
        return f"{self.node} {self.model} {self.jobs} {self.users} {self.reason}"


def allocations(queue: Sequence[dict[str, Any]] | None) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """(node, gpu index) -> the active queue rows holding it. A multi-node job's GPU list is the
    same on each of its nodes (gang placement gives every rank the same shape)."""
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in queue or ():
        nodes = r.get("nodes")
        if not nodes or r.get("state") not in ACTIVE:
            continue
        ids = [int(x) for x in str(r.get("gpu_ids") or "").split(",") if x.isdigit()]
        for node in nodes.split(",") if "," in nodes else (nodes,):
            for i in ids:
                out.setdefault((node, i), []).append(r)
    return out


def gpu_rows(node: dict[str, Any], history: History, allocs: dict[tuple[str, int], list[dict[str, Any]]]
             ) -> list[GpuRow]:
    name = node["name"]
    sample = {int(g["index"]): g for g in ((node.get("telemetry") or {}).get("gpus") or [])}
    hist = history.gpus
    return [GpuRow(name, int(g["index"]), g, sample.get(int(g["index"]), {}), allocs.get((name, int(g["index"])), []),
                   hist.get((name, int(g["index"])))) for g in node.get("gpus") or []]


GPU_SORT: dict[str, Callable[[GpuRow], Any]] = {
    "node": lambda r: (r.node, r.index), "gpu": lambda r: r.index, "model": lambda r: r.model,
    "state": lambda r: (r.healthy, r.held), "util": lambda r: r.util, "mem": lambda r: r.mem_used,
    "temp": lambda r: r.temp, "power": lambda r: r.power, "job": lambda r: r.jobs, "user": lambda r: r.users,
}


def gpu_state(r: GpuRow) -> str:
    if not r.healthy:
        return "FAULT"
    if r.foreign:
        return "FOREIGN"
    return "BUSY" if r.held else "FREE"


# ---- processes on a node ------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcRow:
    gpu: int
    pid: int | None
    """None for a job the controller placed but whose process the agent has not reported."""
    user: str
    job: str
    """Job label, '' for a foreign process."""
    mem: float | None
    sm: float | None
    foreign: bool

    @property
    def key(self) -> str:
        return f"{self.gpu}/{self.pid or self.job}"


def proc_rows(node: dict[str, Any], allocs: dict[tuple[str, int], list[dict[str, Any]]],
              gpu: int | None = None) -> list[ProcRow]:
    """nvitop's process table: what the agent saw on each GPU, plus placed jobs it did not see."""
    out: list[ProcRow] = []
    seen: set[tuple[int, str]] = set()
    for g in (node.get("telemetry") or {}).get("gpus") or []:
        i = int(g["index"])
        if gpu is not None and i != gpu:
            continue
        for p in g.get("processes") or []:
            job = str(p["job"]).split(".")[0] if p.get("job") else ""
            seen.add((i, job))
            out.append(ProcRow(i, p.get("pid"), str(p.get("user") or "?"), job, p.get("used_mem_mb"),
                               p.get("sm_util", p.get("sm_pct")), not job))
    for (node_name, i), rows in sorted(allocs.items(), key=lambda kv: kv[0][1]):
        if node_name != node["name"] or (gpu is not None and i != gpu):
            continue
        for r in rows:
            label = job_label(r)
            if (i, label) not in seen:
                out.append(ProcRow(i, None, r["user"], label, None, None, False))
    return out


# ---- queue ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRow:
    """One queue row. Wait and run times are computed from the timestamps at draw time, so an
    unchanged job keeps its JobRow from one refresh to the next (see `job_rows`'s cache)."""

    label: str
    job_id: int
    user: str
    name: str
    state: str
    reason: str
    gpus: str
    node: str
    attempt: int
    priority: int
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    idle_s: float | None = None
    """Seconds every GPU of the job has been idle, when the controller flags it (`idle:`)."""

    @property
    def starts(self) -> str | None:
        """A reserved job's expected start ('~14:05'), from its waiting reason."""
        return reserved_start(self.reason) if self.state == "PENDING" else None

    def wait(self, now: float) -> float | None:
        if self.started_at is not None:
            return self.started_at - self.submitted_at
        if self.state in ("PENDING", "STARTING"):
            return now - self.submitted_at
        return None if self.ended_at is None else self.ended_at - self.submitted_at

    def run(self, now: float) -> float | None:
        return None if self.started_at is None else (self.ended_at or now) - self.started_at

    @property
    def search(self) -> str:
        return f"{self.label} {self.user} {self.name} {self.state} {self.node} {self.reason}" + (
            " idle" if self.idle_s is not None else "")


def job_row(r: dict[str, Any]) -> JobRow:
    return JobRow(
        label=job_label(r), job_id=int(r["job_id"]), user=r.get("user") or "", name=r.get("name") or "",
        state=r["state"], reason=r.get("reason") or "",
        gpus=gpus_text(r.get("gpus") or 0, r.get("gpu_type"), r.get("num_nodes") or 1), node=r.get("nodes") or "",
        attempt=int(r.get("attempt") or 0), priority=int(r.get("priority") or 0),
        submitted_at=float(r.get("submitted_at") or 0.0), started_at=r.get("started_at"), ended_at=r.get("ended_at"),
        idle_s=r.get("idle_s"),
    )


def job_sort(now: float) -> dict[str, Callable[[JobRow], Any]]:
    return {
        "id": lambda r: (r.job_id, r.label), "user": lambda r: r.user, "name": lambda r: r.name,
        "state": lambda r: r.state, "gpus": lambda r: r.gpus, "node": lambda r: r.node,
        "wait": lambda r: r.wait(now), "run": lambda r: r.run(now), "attempt": lambda r: r.attempt,
        "priority": lambda r: r.priority, "reason": lambda r: r.reason,
    }


JOB_SORT = job_sort(0.0)
"""The sortable columns (the keys; the functions of `job_sort(now)` are the ones to sort with)."""


class JobRowCache:
    """Reuses the JobRow of every queue entry that did not change since the last refresh: at 10k
    jobs, building rows was the largest part of a refresh."""

    def __init__(self) -> None:
        self._rows: dict[tuple[Any, ...], JobRow] = {}

    def rows(self, queue: Sequence[dict[str, Any]]) -> list[JobRow]:
        old, new = self._rows, {}
        out = []
        for r in queue:
            # A record's dict values (`recovery_causes`) are not hashable: key them by their repr.
            key = tuple(repr(v) if isinstance(v, (dict, list)) else v for v in r.values())
            row = old.get(key)
            if row is None:
                row = job_row(r)
            new[key] = row
            out.append(row)
        self._rows = new
        return out


def job_rows(queue: Sequence[dict[str, Any]], now: float, flt: Filter, sort: str = "id",
             reverse: bool = False, cache: JobRowCache | None = None) -> list[JobRow]:
    rows = cache.rows(queue) if cache is not None else [job_row(r) for r in queue]
    if not flt.empty:
        rows = [r for r in rows if flt.match(r.user, r.state, r.node, r.search)]
    if sort == "id" and not reverse:
        return rows  # the controller's order already
    return sort_rows(rows, job_sort(now), sort, reverse)


# ---- events -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRow:
    id: int
    time: float
    actor: str
    job: str
    owner: str
    change: str
    reason: str

    @property
    def search(self) -> str:
        return f"{self.actor} {self.job} {self.owner} {self.change} {self.reason}"


def event_rows(events: Sequence[dict[str, Any]], flt: Filter) -> list[EventRow]:
    rows = []
    for e in events:
        task = e.get("task")
        job = f"{e['job_id']}_{task}" if task else str(e["job_id"])
        change = f"{e['from']} → {e['to']}" if e.get("from") else str(e.get("to"))
        actor = e.get("actor") or ("controller" if e.get("actor_uid") is None else f"uid{e['actor_uid']}")
        row = EventRow(int(e["id"]), float(e["time"]), actor, job, e.get("owner") or "", change, e.get("reason") or "")
        state = e.get("to") or ""
        if flt.empty or flt.match(row.actor, state, "", row.search) or flt.match(row.owner, state, "", row.search):
            rows.append(row)
    return rows


# ---- efficiency, history and waste (issue #16) ---------------------------------------------------

_RESERVED = re.compile(r"reserved: starts (~\d{1,2}:\d{2}|as soon as possible)")


def reserved_start(reason: str) -> str | None:
    """'~14:05' from a backfill reservation's waiting reason ('reserved: starts ~14:05 on gpu01
    (8 GPUs)'), 'soon' for 'as soon as possible', None for any other reason."""
    m = _RESERVED.search(reason or "")
    if m is None:
        return None
    return "soon" if m.group(1) == "as soon as possible" else m.group(1)


def idle_text(seconds: float | None) -> str:
    """The IDLE badge: 'IDLE 42m' (None: not flagged)."""
    if seconds is None:
        return ""
    minutes = float(seconds) / 60
    return f"IDLE {minutes / 60:.1f}h" if minutes >= 100 else f"IDLE {minutes:.0f}m"


def mean_series(series: Sequence[Sequence[Sequence[Any]]]) -> list[float]:
    """The mean, per sample time, of several [[t, value], ...] series (a job's GPUs, sampled
    together on a node); missing values are skipped, times with none dropped. Oldest first."""
    by_t: dict[float, list[float]] = {}
    for points in series:
        for t, v in points:
            if v is not None:
                by_t.setdefault(round(float(t)), []).append(float(v))
    return [sum(vs) / len(vs) for _t, vs in sorted(by_t.items())]


METRIC_ORDER = ("loss", "tokens_per_s", "tokens/s", "throughput", "lr")
"""Logged metrics drawn first, in this order; the others follow by name (`step` is an x-axis,
not a chart)."""


def metric_charts(history: Mapping[str, Any] | None, limit: int = 3) -> list[tuple[str, list[float]]]:
    """(name, values oldest first) for up to `limit` of a job's logged metrics (`history` op)."""
    metrics = (history or {}).get("metrics") or {}
    names = [n for n in metrics if n != "step"]
    names.sort(key=lambda n: (METRIC_ORDER.index(n) if n in METRIC_ORDER else len(METRIC_ORDER), n))
    out = []
    for name in names[:limit]:
        values = [float(v) for _t, v in metrics[name] if v is not None]
        if values:
            out.append((name, values))
    return out


def gpu_util_chart(history: Mapping[str, Any] | None) -> list[float]:
    """The job's mean GPU utilisation over its GPUs, per sample (`history` op)."""
    return mean_series([g.get("util") or [] for g in (history or {}).get("gpus") or []])


def metric_value(value: float) -> str:
    """A logged value, short: 0.0123, 1.23e+05, 4521."""
    v = float(value)
    if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
        return f"{v:.3g}"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.4g}"


def eff_text(eff: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The efficiency panel's lines, (label, value), from the `eff` op's reply."""
    from hybridctl.fmt import duration

    def pct(v: Any) -> str:
        return "–" if v is None else f"{float(v):.0f}%"

    def mib(v: Any) -> str:
        if v is None:
            return "–"
        return f"{float(v) / 1024:.1f}G" if float(v) >= 1024 else f"{float(v):.0f}M"

    gpus = eff.get("gpus") or []
    p95 = [g["util_p95"] for g in gpus if g.get("util_p95") is not None]
    sm = [g["sm_mean"] for g in gpus if g.get("sm_mean") is not None]
    peak = [g["mem_peak_mb"] for g in gpus if g.get("mem_peak_mb") is not None]
    cap = [g["mem_total_mb"] for g in gpus if g.get("mem_total_mb") is not None]
    util = f"mean {pct(eff.get('util_mean'))} · p95 {pct(max(p95) if p95 else None)}"
    if sm:
        util += f" · SM {pct(sum(sm) / len(sm))}"
    held, used = float(eff.get("gpu_hours_held") or 0.0), float(eff.get("gpu_hours_used") or 0.0)
    hours = f"{used:.2f} used / {held:.2f} held"
    if held > 0:
        hours += f" ({100 * used / held:.0f}%)"
    mem = f"peak {mib(max(peak) if peak else None)} of {mib(max(cap) if cap else None)}"
    cpu = pct(None if eff.get("cpu_efficiency") is None else 100 * float(eff["cpu_efficiency"]))
    cpu += f" of {float(eff.get('cpus') or 0):g} CPUs"
    rss = f"peak RSS {mib(eff.get('peak_rss_mb'))}"
    if eff.get("memory_mb"):
        rss += f" of {mib(eff['memory_mb'])}"
    lines = [("GPU util", util), ("GPU memory", mem), ("GPU-hours", hours), ("CPU", cpu), ("memory", rss)]
    if eff.get("idle_s") is not None:
        lines.insert(0, ("IDLE", f"every GPU idle for {duration(eff['idle_s'])}"))
    return lines


@dataclass(frozen=True)
class WasteRow:
    """One job or one user in the waste view: GPU-hours held, used, and held idle (held − used)."""

    key: str
    """The job label, or the user name."""
    user: str
    name: str
    gpus: str
    held: float | None
    used: float | None
    idle_s: float | None = None
    """Seconds flagged idle now (jobs only)."""

    @property
    def wasted(self) -> float | None:
        return None if self.held is None or self.used is None else max(0.0, self.held - self.used)

    @property
    def util(self) -> float | None:
        return None if not self.held or self.used is None else 100.0 * self.used / self.held

    @property
    def search(self) -> str:
        return f"{self.key} {self.user} {self.name}"


def waste_jobs(active: Sequence[dict[str, Any]] | None, effs: Mapping[str, Any], flt: Filter) -> list[WasteRow]:
    """The placed GPU jobs, most GPU-hours held idle first, from their efficiency records
    (`effs`: job label -> `eff` reply); a job without one yet (not read, or refused) comes last
    with its figures unknown, never guessed."""
    rows = []
    for r in active or ():
        label = job_label(r)
        eff = effs.get(label)
        if not r.get("gpus") or r.get("state") not in ACTIVE:
            continue
        held = used = None
        if isinstance(eff, dict):
            held, used = float(eff.get("gpu_hours_held") or 0.0), float(eff.get("gpu_hours_used") or 0.0)
        row = WasteRow(label, r.get("user") or "", r.get("name") or "",
                       gpus_text(r.get("gpus") or 0, r.get("gpu_type"), r.get("num_nodes") or 1),
                       held, used, r.get("idle_s"))
        if flt.empty or flt.match(row.user, r.get("state") or "", r.get("nodes") or "", row.search):
            rows.append(row)
    return sort_rows(rows, {"wasted": lambda w: w.wasted}, "wasted", True)


def waste_users(usage: Sequence[dict[str, Any]] | None, flt: Filter) -> list[WasteRow]:
    """Users from `usage --by user`: GPU-hours the telemetry saw them hold and use (USED)."""
    rows = []
    for u in usage or ():
        held = u.get("gpu_hours_observed")
        used = u.get("gpu_hours_used")
        row = WasteRow(str(u.get("user")), str(u.get("user")), "", "",
                       None if held is None else float(held), None if used is None else float(used))
        if flt.empty or flt.match(row.user, "", "", row.search):
            rows.append(row)
    return sort_rows(rows, {"wasted": lambda w: w.wasted}, "wasted", True)
