"""Telemetry history (hybridctl/store/telemetry.py): every node's and GPU's samples, downsampled with age, in its own SQLite file
(`<home>/telemetry.db`) so the job database stays small and its writes never wait on telemetry.

Tiers (see docs/ARCHITECTURE.md, Observability):

    tier 0  every sample as polled (1 s)  kept 1 hour
    tier 1  1-minute buckets              kept 8 days
    tier 2  1-hour buckets                kept 400 days

One row per node per bucket: the node's host figures and all its GPUs packed in a blob of half
floats (`_pack`), so a 200-node x 8-GPU fleet writes 200 rows a second, not 1600. Jobs' own
series (CPU seconds, RSS, values logged with `hybridctl.job.log`) are rows per rank key, in JSON.
Buckets are rolled up from the finer tier already on disk when a minute or an hour closes, so a
restart loses nothing that was written. Only the controller's writer thread writes."""

from __future__ import annotations

import json
import math
import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from hybridctl.core.efficiency import GpuPoint, JobPoint

TIERS: tuple[tuple[int, float], ...] = ((1, 3600.0), (60, 8 * 86400.0), (3600, 400 * 86400.0))
"""(bucket seconds, retention seconds) per tier; tier 0's bucket is the poll interval itself."""

GPU_FIELDS = ("util", "util_max", "mem_gib", "mem_max_gib", "mem_total_gib", "sm", "temp", "power",
              "clock_sm", "clock_mem", "pcie_tx_mbs", "pcie_rx_mbs")
"""What each GPU keeps per bucket (memory in GiB and PCIe in MB/s so half floats hold them)."""
MAX_POINTS = 1500
"""A read picks the finest tier with at most this many buckets per series over its range (a
3-day job reads hours plus the minutes and seconds not rolled up yet)."""
HOST_FIELDS = ("cpu", "mem_used_gib", "load1", "net_rx_mbs", "net_tx_mbs")
_GPU = struct.Struct("<H" + "e" * len(GPU_FIELDS))
_HOST = struct.Struct("<B" + "e" * len(HOST_FIELDS))
_HALF_MAX = 65504.0
_NAN = float("nan")
_MAX_KINDS = {"util_max", "mem_max_gib", "mem_total_gib"}
"""Fields rolled up by max (peaks); the rest by the sample-weighted mean."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS points (
    tier INTEGER NOT NULL, series INTEGER NOT NULL, t INTEGER NOT NULL,
    n INTEGER NOT NULL,                 -- samples in the bucket
    data BLOB NOT NULL,                 -- nodes: _pack(); jobs: JSON
    PRIMARY KEY (tier, series, t)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollups (tier INTEGER PRIMARY KEY, done_until INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS summaries (job TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (      -- GPU-seconds held and used, per hour, user and group
    hour INTEGER NOT NULL, user TEXT NOT NULL, grp TEXT NOT NULL,
    held_s REAL NOT NULL, used_s REAL NOT NULL,
    PRIMARY KEY (hour, user, grp)) WITHOUT ROWID;
"""


def _half(value: Any, scale: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return _NAN
    return max(-_HALF_MAX, min(_HALF_MAX, float(value) * scale))


def _value(x: float) -> float | None:
    return None if math.isnan(x) else x


def gpu_row(g: Mapping[str, Any]) -> tuple[float, ...]:
    """One checked GPU sample (core.wire's shape) as GPU_FIELDS."""
    gib = 1 / 1024
    return (_half(g.get("util_gpu")), _half(g.get("util_gpu")), _half(g.get("mem_used_mb"), gib),
            _half(g.get("mem_used_mb"), gib), _half(g.get("mem_total_mb"), gib), _half(g.get("sm_util")),
            _half(g.get("temp_c")), _half(g.get("power_w")), _half(g.get("clock_sm_mhz")),
            _half(g.get("clock_mem_mhz")), _half(g.get("pcie_tx_kbps"), 1 / 1000),
            _half(g.get("pcie_rx_kbps"), 1 / 1000))


def host_row(h: Mapping[str, Any]) -> tuple[float, ...]:
    mb = 1 / 1e6
    return (_half(h.get("cpu_percent")), _half(h.get("memory_used_mb"), 1 / 1024), _half(h.get("load1")),
            _half(h.get("net_rx_bps"), mb), _half(h.get("net_tx_bps"), mb))


def _pack(host: Sequence[float], gpus: Mapping[int, Sequence[float]]) -> bytes:
    parts = [_HOST.pack(min(len(gpus), 255), *host)]
    parts += [_GPU.pack(index, *vals) for index, vals in sorted(gpus.items())[:255]]
    return b"".join(parts)


_ROWS: dict[int, struct.Struct] = {}


def _row_struct(count: int) -> struct.Struct:
    """The struct of a whole node row holding `count` GPUs (cached)."""
    st = _ROWS.get(count)
    if st is None:
        st = _ROWS[count] = struct.Struct(_HOST.format + (_GPU.format[1:] * count))
    return st


def _unpack(data: bytes) -> tuple[tuple[float, ...], dict[int, tuple[float, ...]]]:
    count, *host = _HOST.unpack_from(data, 0)
    gpus = {}
    for i in range(count):
        index, *vals = _GPU.unpack_from(data, _HOST.size + i * _GPU.size)
        gpus[index] = tuple(vals)
    return tuple(host), gpus


def _merge(rows: Sequence[tuple[int, Sequence[float]]], fields: Sequence[str]) -> tuple[float, ...]:
    """Roll (n, values) rows into one: max for peaks, n-weighted mean for the rest; NaN = unknown."""
    out = []
    for i, name in enumerate(fields):
        known = [(n, v[i]) for n, v in rows if not math.isnan(v[i])]
        if not known:
            out.append(_NAN)
        elif name in _MAX_KINDS:
            out.append(max(v for _n, v in known))
        else:
            out.append(sum(n * v for n, v in known) / sum(n for n, _v in known))
    return tuple(out)


@dataclass(frozen=True)
class HistoryStats:
    rows: dict[int, int]
    """Rows per tier."""
    bytes: int
    """File size including the WAL."""


class History:
    """The history database. `add` and `maintain` write (one thread); reads may come from any
    connection (WAL). Times are Unix seconds passed in: the store reads no clock."""

    def __init__(self, path: Path | str, reader: bool = False) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # losing the last second of telemetry on power loss is fine
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.executescript(SCHEMA)
        # The writer caches every series id; a reader (one per request) looks up the few it reads:
        # series are never deleted, and a million names took ~1.8 s to load.
        self._ids: dict[str, int] = {} if reader else dict(
            (n, i) for i, n in self.conn.execute("SELECT id, name FROM series"))
        if not reader:
            # Summaries were once keyed by the task label alone, which a reset job database
            # reuses: such rows cannot be told apart from a new job's, so they are dropped (an
            # ended job's summary is computed again from its series while those are kept).
            self.conn.execute("DELETE FROM summaries WHERE instr(job, '@') = 0")

    def close(self) -> None:
        self.conn.close()

    def _series(self, name: str) -> int:
        sid = self._ids.get(name)
        if sid is None:
            self.conn.execute("INSERT OR IGNORE INTO series(name) VALUES (?)", (name,))
            sid = self.conn.execute("SELECT id FROM series WHERE name=?", (name,)).fetchone()[0]
            self._ids[name] = sid
        return sid

    # ---- writing --------------------------------------------------------------------------------

    def add(self, samples: Mapping[str, Mapping[str, Any]], now: float) -> None:
        """Store one checked sample per node (core.wire's shape, `jobs` included) at tier 0, in
        one transaction. A node's second sample within one second replaces the first."""
        rows = []
        for node, s in samples.items():
            t = int(s.get("time") or now)
            gpus = {g["index"]: gpu_row(g) for g in s.get("gpus") or ()}
            rows.append((self._series("node:" + node), t, _pack(host_row(s.get("host") or {}), gpus)))
            for key, usage in (s.get("jobs") or {}).items():
                rows.append((self._series("job:" + key), t, json.dumps(usage, separators=(",", ":")).encode()))
        self.conn.execute("BEGIN")
        try:
            self.conn.executemany("INSERT OR REPLACE INTO points(tier, series, t, n, data) VALUES (0, ?, ?, 1, ?)", rows)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def maintain(self, now: float) -> None:
        """Roll closed minutes into tier 1 and closed hours into tier 2, then drop what is past
        each tier's retention. Cheap when nothing closed; call it every few seconds."""
        for tier in (1, 2):
            bucket = TIERS[tier][0]
            closed = int(now // bucket) * bucket  # buckets before this are complete
            row = self.conn.execute("SELECT done_until FROM rollups WHERE tier=?", (tier,)).fetchone()
            start = row[0] if row else None
            if start is None:
                first = self.conn.execute("SELECT MIN(t) FROM points WHERE tier=?", (tier - 1,)).fetchone()[0]
                if first is None:
                    continue
                start = int(first // bucket) * bucket
            if start >= closed:
                continue
            start = max(start, closed - int(TIERS[tier - 1][1]) - bucket)  # never before the finer tier's horizon
            self.conn.execute("BEGIN")
            try:
                self._roll(tier, bucket, start, closed)
                self.conn.execute("INSERT OR REPLACE INTO rollups(tier, done_until) VALUES (?, ?)", (tier, closed))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        self.conn.execute("BEGIN")
        for tier, (_bucket, keep) in enumerate(TIERS):
            self.conn.execute("DELETE FROM points WHERE tier=? AND t < ?", (tier, int(now - keep)))
        self.conn.execute("COMMIT")

    def _roll(self, tier: int, bucket: int, start: int, end: int) -> None:
        groups: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
        for sid, t, n, data in self.conn.execute(
                "SELECT series, t, n, data FROM points WHERE tier=? AND t>=? AND t<?", (tier - 1, start, end)):
            groups.setdefault((sid, t // bucket * bucket), []).append((n, data))
        names = {i: n for n, i in self._ids.items()}
        out = []
        for (sid, t), rows in groups.items():
            total = sum(n for n, _d in rows)
            if names.get(sid, "").startswith("job:"):
                out.append((tier, sid, t, total, _roll_job([json.loads(d) for _n, d in rows])))
                continue
            unpacked = [(n, _unpack(d)) for n, d in rows]
            host = _merge([(n, h) for n, (h, _g) in unpacked], HOST_FIELDS)
            indices = sorted({i for _n, (_h, g) in unpacked for i in g})
            gpus = {i: _merge([(n, g[i]) for n, (_h, g) in unpacked if i in g], GPU_FIELDS) for i in indices}
            out.append((tier, sid, t, total, _pack(host, gpus)))
        self.conn.executemany("INSERT OR REPLACE INTO points(tier, series, t, n, data) VALUES (?, ?, ?, ?, ?)", out)

    # ---- reading --------------------------------------------------------------------------------

    def _points(self, name: str, start: float, end: float, max_points: int = MAX_POINTS) -> list[tuple[int, int, int, bytes]]:
        """(tier, t, n, data) over [start, end]. The base tier is the finest with at most
        `max_points` buckets in the range; older stretches it no longer holds come from coarser
        tiers, the newest stretch it has not rolled up yet from finer ones. No time is counted twice."""
        sid = self._ids.get(name)
        if sid is None:
            row = self.conn.execute("SELECT id FROM series WHERE name=?", (name,)).fetchone()
            if row is None:
                return []
            sid = row[0]
        span = max(1.0, end - start)
        base = next((i for i, (bucket, _k) in enumerate(TIERS) if span / bucket <= max_points), len(TIERS) - 1)
        q = "SELECT t, n, data FROM points WHERE tier=? AND series=? AND t>=? AND t<=? ORDER BY t"
        rows = [(base, t, n, d) for t, n, d in self.conn.execute(q, (base, sid, int(start) - TIERS[base][0], int(end)))]
        lo = rows[0][1] if rows else math.inf
        hi = rows[-1][1] + TIERS[base][0] if rows else int(start) - TIERS[base][0]
        for tier in range(base + 1, len(TIERS)):  # older than the base tier keeps
            bucket = TIERS[tier][0]
            older = [(tier, t, n, d) for t, n, d in self.conn.execute(q, (tier, sid, int(start) - bucket, int(min(end, lo))))
                     if t + bucket <= lo]
            rows = older + rows
            if older:
                lo = older[0][1]
        if not math.isfinite(lo):
            lo = int(start)
        for tier in range(base - 1, -1, -1):  # newer than the base tier has rolled up
            newer = [(tier, t, n, d) for t, n, d in self.conn.execute(q, (tier, sid, int(max(start, hi)), int(end)))]
            rows += newer
            if newer:
                hi = newer[-1][1] + TIERS[tier][0]
        return rows

    def gpu_points(self, node: str, gpus: Iterable[int], start: float, end: float) -> dict[int, list[GpuPoint]]:
        """Each GPU's points on `node` over [start, end] (core.efficiency's shape). The hot path of
        `eff`: one struct unpack per row, no per-field calls."""
        want = set(gpus)
        out: dict[int, list[GpuPoint]] = {i: [] for i in want}
        width = 1 + len(GPU_FIELDS)
        for _tier, t, n, data in self._points("node:" + node, start, end):
            vals = _row_struct(data[0]).unpack(data)
            for off in range(1 + len(HOST_FIELDS), len(vals), width):
                index = vals[off]
                if index not in want:
                    continue
                u, um, _m, mm, mt, sm = vals[off + 1:off + 7]
                out[index].append(GpuPoint(  # x == x is False only for NaN (unknown)
                    t, n, u if u == u else None, um if um == um else None, mm * 1024.0 if mm == mm else None,
                    mt * 1024.0 if mt == mt else None, sm if sm == sm else None))
        return out

    def node_series(self, node: str, start: float, end: float) -> list[dict[str, Any]]:
        """The node's points as dicts (host fields and `gpus`), for charts."""
        out = []
        for tier, t, n, data in self._points("node:" + node, start, end):
            host, gpus = _unpack(data)
            out.append({"t": t, "tier": tier, "n": n, **{k: _value(v) for k, v in zip(HOST_FIELDS, host)},
                        "gpus": {i: {k: _value(v) for k, v in zip(GPU_FIELDS, vals)} for i, vals in gpus.items()}})
        return out

    def job_points(self, key: str, start: float, end: float) -> list[JobPoint]:
        out = []
        for _tier, t, _n, data in self._points("job:" + key, start, end):
            d = json.loads(data)
            out.append(JobPoint(t=t, cpu_seconds=d.get("cpu_seconds"), rss_mb=d.get("rss_mb"),
                                peak_rss_mb=d.get("peak_rss_mb"), metrics=d.get("metrics") or {}))
        return out

    def job_keys(self, prefix: str) -> list[str]:
        """Rank keys stored for a job (`prefix` = '42.' finds '42.a0.r0', '42.a1.r0', ...)."""
        lo, hi = "job:" + prefix, "job:" + prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return [n[4:] for (n,) in self.conn.execute("SELECT name FROM series WHERE name>=? AND name<?", (lo, hi))]

    # ---- GPU-hours held vs used per user and group (`hybridctl usage`) ---------------------------

    def add_usage(self, usage: Mapping[tuple[int, str, str], tuple[float, float]]) -> None:
        """Add (held, used) GPU-seconds per (hour start, user, group)."""
        if not usage:
            return
        self.conn.executemany(
            "INSERT INTO usage(hour, user, grp, held_s, used_s) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(hour, user, grp) DO UPDATE SET held_s=held_s+excluded.held_s, used_s=used_s+excluded.used_s",
            [(h, u, g, held, used) for (h, u, g), (held, used) in usage.items()])

    def usage_since(self, since: float) -> dict[tuple[str, str], tuple[float, float]]:
        """(user, group) -> (GPU-hours held, GPU-hours used) from the hour holding `since` on."""
        return {(u, g): (held / 3600.0, used / 3600.0) for u, g, held, used in self.conn.execute(
            "SELECT user, grp, SUM(held_s), SUM(used_s) FROM usage WHERE hour >= ? GROUP BY user, grp",
            (int(since // 3600) * 3600,))}

    # ---- summaries kept after a job ends --------------------------------------------------------

    def save_summary(self, job: str, summary: Mapping[str, Any]) -> None:
        self.conn.execute("INSERT OR REPLACE INTO summaries(job, data) VALUES (?, ?)", (job, json.dumps(summary)))

    def summary(self, job: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT data FROM summaries WHERE job=?", (job,)).fetchone()
        return json.loads(row[0]) if row else None

    def stats(self) -> HistoryStats:
        rows = dict(self.conn.execute("SELECT tier, COUNT(*) FROM points GROUP BY tier").fetchall())
        size = sum(p.stat().st_size for p in (self.path, Path(str(self.path) + "-wal")) if p.exists())
        return HistoryStats(rows=rows, bytes=size)


def _mb(gib: float) -> float | None:
    return None if math.isnan(gib) else round(gib * 1024.0, 1)


def _roll_job(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """A job bucket keeps the last cumulative figures, the peak RSS, the mean CPU % and the last
    logged values."""
    last: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    cpu = [r["cpu_percent"] for r in rows if isinstance(r.get("cpu_percent"), (int, float))]
    for r in rows:
        last.update({k: v for k, v in r.items() if k != "metrics"})
        metrics.update(r.get("metrics") or {})
    peaks = [r.get("peak_rss_mb") or r.get("rss_mb") for r in rows]
    peaks = [p for p in peaks if isinstance(p, (int, float))]
    if peaks:
        last["peak_rss_mb"] = max(peaks)
    if cpu:
        last["cpu_percent"] = round(sum(cpu) / len(cpu), 1)
    if metrics:
        last["metrics"] = metrics
    return json.dumps(last, separators=(",", ":")).encode()


# ---- the controller's side: one writer thread, and a job's efficiency -----------------------------


class HistoryWriter:
    """Owns the writing connection in one daemon thread: the event loop hands it each poll's
    samples (`submit` never blocks; past `max_queue` waiting batches the newest is dropped and
    counted) and it rolls up and prunes every `maintain_every` seconds of sample time."""

    def __init__(self, path: Path | str, max_queue: int = 120, maintain_every: float = 10.0) -> None:
        import queue
        import threading

        self.history = History(path)
        self.queue: "queue.Queue[tuple[dict[str, Any], float, dict[Any, Any]] | None]" = queue.Queue(max_queue)
        self.dropped = 0
        self.failures = 0
        """Batches whose write raised (logged at most once per LOG_EVERY seconds)."""
        self.maintain_every = maintain_every
        self._last_maintain = -math.inf
        self.thread = threading.Thread(target=self._run, name="hybridctl-history", daemon=True)
        self.thread.start()

    def submit(self, samples: Mapping[str, Mapping[str, Any]], now: float,
               usage: Mapping[tuple[int, str, str], tuple[float, float]] | None = None) -> None:
        import queue

        try:
            self.queue.put_nowait((dict(samples), now, dict(usage or {})))
        except queue.Full:
            self.dropped += 1

    LOG_EVERY = 60.0
    """Seconds of sample time between two logged write failures (the rest are only counted)."""

    def _run(self) -> None:
        import logging

        log = logging.getLogger("hybridctl.history")
        logged_at = -math.inf
        unlogged = 0
        while True:
            item = self.queue.get()
            if item is None:
                break
            samples, now, usage = item
            try:
                self.history.add(samples, now)
                self.history.add_usage(usage)
                if now - self._last_maintain >= self.maintain_every:
                    # Set first: a failing roll-up is retried every maintain_every, not every sample.
                    self._last_maintain = now
                    self.history.maintain(now)
            except Exception:  # noqa: BLE001 - a full disk or a bad sample must not end the thread; history has a gap
                # Each failure costs one batch (never retried, so nothing spins); the log is
                # bounded to one line per LOG_EVERY seconds, with the count of the ones in between.
                self.failures += 1
                if self.history.conn.in_transaction:
                    try:
                        self.history.conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if not now - logged_at < self.LOG_EVERY:
                    logged_at = now
                    log.exception("telemetry history write failed (%d more since the last report)", unlogged)
                    unlogged = 0
                else:
                    unlogged += 1

    def close(self, timeout: float = 10.0) -> None:
        self.queue.put(None)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.history.close()


def job_allocations(conn: sqlite3.Connection, job_id: int, task: int) -> list[Any]:
    """The ranks of the task's latest attempt that held anything (core.efficiency.Allocation),
    read from the controller's job database (`allocations`)."""
    from hybridctl.core.efficiency import Allocation
    from hybridctl.core.reconcile import job_key

    row = conn.execute("SELECT MAX(attempt) FROM allocations WHERE job_id=? AND task=?", (job_id, task)).fetchone()
    if row is None or row[0] is None:
        return []
    attempt = row[0]
    return [Allocation(node=node, gpus=tuple(json.loads(gpus)), cpus=cpus, start=start, end=end,
                       rank_key=job_key(job_id, task, attempt, rank))
            for rank, node, gpus, cpus, start, end in conn.execute(
                "SELECT rank, node, gpus, cpus, start, end FROM allocations WHERE job_id=? AND task=? AND attempt=?"
                " ORDER BY rank", (job_id, task, attempt))]


def summary_key(conn: sqlite3.Connection, job_id: int, label: str) -> str | None:
    """A kept summary's key: the task label and its job's submit time (`7.0@1699999200.123456`).
    Job ids start again at 1 when hybridctl.db is reset while telemetry.db is kept; the submit
    time tells the new job 7 from the old one. None when the job is not in the database."""
    row = conn.execute("SELECT submitted_at FROM jobs WHERE id=?", (job_id,)).fetchone()
    return None if row is None else f"{label}@{float(row[0]):.6f}"


def job_efficiency(history: History, conn: sqlite3.Connection, job_id: int, task: int, label: str, state: str,
                   now: float, memory_mb: int | None = None, idle_s: float | None = None,
                   terminal: bool = False) -> dict[str, Any] | None:
    """`hybridctl eff`'s answer (Efficiency.to_dict), None when the task never held anything. An
    ended task's summary is computed once and kept in the history file, so it outlives the
    downsampled series."""
    from hybridctl.core.efficiency import summarize

    key = summary_key(conn, job_id, label)
    if terminal and key is not None:
        kept = history.summary(key)
        if kept is not None:
            return kept
    allocs = job_allocations(conn, job_id, task)
    if not allocs:
        return None
    gpu_points: dict[tuple[str, int], list[GpuPoint]] = {}
    job_points: dict[str, list[JobPoint]] = {}
    for a in allocs:
        end = a.end if a.end is not None else now
        for index, pts in history.gpu_points(a.node, a.gpus, a.start, end).items():
            gpu_points[(a.node, index)] = pts
        job_points[a.rank_key] = history.job_points(a.rank_key, a.start, end)
    out = summarize(label, state, allocs, gpu_points, job_points, now, memory_mb, idle_s).to_dict()
    if terminal and key is not None and all(a.end is not None for a in allocs):
        history.save_summary(key, out)
    return out


def efficiency_report(history_path: Path | str, db_path: Path | str, job_id: int, task: int, label: str, state: str,
                      now: float, memory_mb: int | None, idle_s: float | None, terminal: bool) -> dict[str, Any] | None:
    """`job_efficiency` on connections of its own (run in a worker thread by the controller): the
    history file as a reader, the job database read-only."""
    history = History(history_path, reader=True)
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        return job_efficiency(history, conn, job_id, task, label, state, now, memory_mb, idle_s, terminal)
    finally:
        conn.close()
        history.close()


def note_event(store: Any, job_id: int, task: int, reason: str, now: float) -> None:
    """An audit-log line about a task that does not change its state (an idle flag): from and to
    are the task's current state, the actor is the controller."""
    with store.tx() as c:
        row = c.execute("SELECT state FROM tasks WHERE job_id=? AND task=?", (job_id, task)).fetchone()
        if row is None:
            return
        c.execute("INSERT INTO events (job_id, task, time, from_state, to_state, reason, actor_uid)"
                  " VALUES (?, ?, ?, ?, ?, ?, NULL)", (job_id, task, now, row[0], row[0], reason))


def _thin(points: list[list[Any]], limit: int) -> list[list[Any]]:
    """At most `limit` points, evenly strided (the newest always kept), for charts."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    out = [points[int(i * step)] for i in range(limit - 1)]
    return out + [points[-1]]


def history_report(history_path: Path | str, db_path: Path | str, job_id: int | None, task: int, node: str | None,
                   start: float, now: float, limit: int = 300) -> dict[str, Any]:
    """Chart series for the TUI: a task's GPUs (util, memory) and logged metrics over its latest
    attempt, or a node's host and GPU figures since `start`. At most `limit` points per series."""
    history = History(history_path, reader=True)
    try:
        if job_id is None:
            rows = history.node_series(str(node), start, now)
            series: dict[str, Any] = {"node": node, "host": {}, "gpus": {}}
            for name in HOST_FIELDS:
                series["host"][name] = _thin([[r["t"], r[name]] for r in rows], limit)
            for index in sorted({i for r in rows for i in r["gpus"]}):
                series["gpus"][str(index)] = {
                    name: _thin([[r["t"], r["gpus"][index][name]] for r in rows if index in r["gpus"]], limit)
                    for name in ("util", "mem_max_gib", "sm", "temp", "power")}
            return series
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            allocs = job_allocations(conn, job_id, task)
        finally:
            conn.close()
        out: dict[str, Any] = {"gpus": [], "metrics": {}, "cpu_percent": [], "rss_mb": []}
        for a in allocs:
            end = a.end if a.end is not None else now
            for index, pts in sorted(history.gpu_points(a.node, a.gpus, a.start, end).items()):
                out["gpus"].append({"node": a.node, "index": index,
                                    "util": _thin([[p.t, p.util] for p in pts], limit),
                                    "mem_mb": _thin([[p.t, p.mem_max_mb] for p in pts], limit)})
            for jp in history.job_points(a.rank_key, a.start, end):
                for name, value in jp.metrics.items():
                    out["metrics"].setdefault(name, []).append([jp.t, value])
                out["rss_mb"].append([jp.t, jp.rss_mb])
        out["metrics"] = {k: _thin(v, limit) for k, v in out["metrics"].items()}
        out["rss_mb"] = _thin(out["rss_mb"], limit)
        out.pop("cpu_percent")
        return out
    finally:
        history.close()


def held_keys_by_node(store: Any) -> dict[str, set[str]]:
    """node -> the keys of the ranks whose allocation is open there (what each node may report on),
    in one query over the open allocations (not one per node and poll)."""
    from hybridctl.core.reconcile import job_key

    out: dict[str, set[str]] = {}
    for node, job_id, task, attempt, rank in store.conn.execute(
            "SELECT node, job_id, task, attempt, rank FROM allocations WHERE end IS NULL"):
        out.setdefault(node, set()).add(job_key(job_id, task, attempt, rank))
    return out


def released_since(store: Any, node: str, keys: Any, since: float) -> set[str]:
    """Those of `keys` (rank keys a node reported) whose allocation on `node` ended at `since` or
    later: the node's sample was taken before the release reached it, which is not a lie. One
    indexed look-up per key (the few a node reports that it no longer holds)."""
    from hybridctl.core.reconcile import parse_key

    out: set[str] = set()
    for key in keys:
        parsed = parse_key(key)
        if parsed is None:
            continue
        job_id, task, attempt, rank = parsed
        if store.conn.execute(
                "SELECT 1 FROM allocations WHERE job_id=? AND task=? AND attempt=? AND rank=? AND node=? AND end >= ?",
                (job_id, task, attempt, rank, node, since)).fetchone():
            out.add(key)
    return out


def count_pending(store: Any) -> int:
    """PENDING tasks in the job database (the endpoint's `hybridctl_queue_pending`), one indexed count."""
    return int(store.conn.execute("SELECT COUNT(*) FROM tasks WHERE state='PENDING'").fetchone()[0])


def usage_report(history_path: Path | str, since: float) -> dict[tuple[str, str], tuple[float, float]]:
    """`History.usage_since` on a connection of its own."""
    history = History(history_path, reader=True)
    try:
        return history.usage_since(since)
    finally:
        history.close()
