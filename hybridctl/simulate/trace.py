"""Traces: the jobs a replay submits. Read from a generic CSV or Slurm's `sacct --parsable2`
output, or generated (`hard_week`: demand above capacity, several GPU models, multi-node jobs,
jobs that never checkpoint, a deadline surge), always with a fixed seed.

Generic CSV columns (header row required; names case-insensitive, order free):

    submit       seconds from the trace start, or an ISO time (2026-11-02T09:30:00[Z])
    user         who submitted it
    group        optional: the job's group, as `cloud.burst.group_budget_usd` names it; empty = lab
    gpus         GPUs per node (integer >= 0)
    gpu_type     GPU model asked for, e.g. A100; empty = any model
    nodes        nodes (default 1)
    duration     seconds of work (run time on a node that is never taken away)
    checkpoint   seconds between checkpoints; empty or 0 = never checkpoints
    deadline     finish-by: an ISO time, or '+SECONDS' after submit; empty = none
    time_limit   optional: the job's time limit in seconds (what the controller knows in advance)
    priority     optional integer (default 0)
    spot         optional: 'no' = must not run on spot, 'always' = spot whatever the risk
    preemptible  optional: 'yes' = a higher-priority job that would otherwise wait may stop and
                 requeue it (as `preemptible: true`; `scheduler.preempt_below` marks more)
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import random
from dataclasses import dataclass
from typing import Iterable, TextIO

from hybridctl.config import ConfigError

GROUP = "lab"
"""The group of a replayed job whose trace names none (a trace without groups is one lab)."""


@dataclass(frozen=True)
class TraceJob:
    id: int
    user: str
    submit: float
    """Seconds since the trace start."""
    gpus: int
    gpu_type: str | None
    duration: float
    """Seconds of work."""
    nodes: int = 1
    checkpoint: float = 0.0
    """Seconds between checkpoints; 0 = never checkpoints."""
    deadline: float | None = None
    """Seconds since the trace start by which it must have finished."""
    time_limit: float | None = None
    priority: int = 0
    cpus: float = 0.0
    """Per node; 0 = 8 per GPU (at least 4)."""
    memory_mb: int = 0
    spot: str = "auto"
    """'auto', 'no' or 'always'."""
    preemptible: bool = False
    """`preemptible: true`: a higher-priority job that would otherwise wait may stop and requeue it
    (with `scheduler.preempt_below`, jobs below that priority are too)."""
    group: str = GROUP
    """What `cloud.burst.group_budget_usd` charges: the Unix group, or Slurm's account."""

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.nodes * self.duration / 3600.0

    @property
    def size_class(self) -> str:
        if self.nodes > 1:
            return "multi-node"
        if self.gpus >= 8:
            return "8 GPUs"
        if self.gpus > 1:
            return "2-4 GPUs"
        return "1 GPU"


SIZE_CLASSES = ("1 GPU", "2-4 GPUs", "8 GPUs", "multi-node")
MAX_TIME_S = 1e10
"""Trace times in seconds: at most this far from 0 (about 317 years)."""
MAX_RUN_S = 366 * 86400.0
MAX_GPUS = 1024
"""GPUs per node a trace row may ask for."""
MAX_NODES = 10_000


def _time(value: str, where: str) -> float | dt.datetime:
    v = value.strip()
    try:
        x = float(v)
    except ValueError:
        pass
    else:
        if not (math.isfinite(x) and abs(x) <= MAX_TIME_S):
            raise ConfigError(f"{where}: {value!r}; accepted: seconds from -{MAX_TIME_S:g} to {MAX_TIME_S:g}, or an ISO time")
        return x
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not a time: give seconds or an ISO time like 2026-11-02T09:30:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _num(value: str, where: str, integer: bool = False, minimum: float = 0.0, maximum: float = MAX_TIME_S) -> float:
    try:
        x = int(value) if integer else float(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not {'an integer' if integer else 'a number'}") from None
    if not (minimum <= x <= maximum) or (not integer and not math.isfinite(x)):
        raise ConfigError(f"{where}: {value!r}; accepted: {'an integer' if integer else 'a number'} from {minimum:g}"
                          f" to {maximum:g}")
    return x


def read_csv(f: TextIO, source: str = "trace") -> tuple[list[TraceJob], float | None]:
    """Jobs of a generic CSV (columns in the module docstring), and the epoch of its start when
    submit times are ISO times (None for relative seconds). Errors name the line and column."""
    reader = csv.DictReader(f)
    if not reader.fieldnames:
        raise ConfigError(f"{source}: empty file: expected a header row with submit, user, gpus, duration, ...")
    cols = {c.strip().lower(): c for c in reader.fieldnames}
    for need in ("submit", "gpus", "duration"):
        if need not in cols:
            raise ConfigError(f"{source}: no {need!r} column; columns are submit, user, group, gpus, gpu_type,"
                              " nodes, duration, checkpoint, deadline (see `hybridctl simulate --help`)")
    raw: list[tuple[int, dict[str, str]]] = []
    for i, row in enumerate(reader, start=2):
        raw.append((i, {k: (row.get(c) or "").strip() for k, c in cols.items()}))
    submits = [(_time(r["submit"], f"{source}:{i}: submit"), i) for i, r in raw]
    absolute = [s for s, _ in submits if isinstance(s, dt.datetime)]
    origin = min(absolute).timestamp() if absolute else None
    if absolute and len(absolute) != len(submits):
        raise ConfigError(f"{source}: submit: mix of ISO times and seconds; use one kind")
    jobs: list[TraceJob] = []
    for (i, r), (sub, _) in zip(raw, submits):
        where = f"{source}:{i}"
        t = sub.timestamp() - origin if isinstance(sub, dt.datetime) and origin is not None else float(sub)  # type: ignore[arg-type]
        deadline = None
        if r.get("deadline"):
            d = r["deadline"]
            if d.startswith("+"):
                deadline = t + _num(d[1:], f"{where}: deadline")
            else:
                when = _time(d, f"{where}: deadline")
                if isinstance(when, dt.datetime):
                    if origin is None:
                        raise ConfigError(f"{where}: deadline: {d!r} is an ISO time but submit times are seconds; use +SECONDS")
                    deadline = when.timestamp() - origin
                else:
                    deadline = float(when)
        spot = (r.get("spot") or "auto").lower()
        if spot not in ("auto", "no", "always", "yes"):
            raise ConfigError(f"{where}: spot: {spot!r}; accepted: auto, no, always")
        tl = r.get("time_limit")
        pre = (r.get("preemptible") or "no").lower()
        if pre not in ("yes", "no", "true", "false", "1", "0"):
            raise ConfigError(f"{where}: preemptible: {pre!r}; accepted: yes, no")
        jobs.append(TraceJob(
            id=len(jobs) + 1, user=r.get("user") or "user", group=r.get("group") or GROUP, submit=t,
            gpus=int(_num(r["gpus"], f"{where}: gpus", integer=True, maximum=MAX_GPUS)),
            gpu_type=r.get("gpu_type") or None,
            duration=_num(r["duration"], f"{where}: duration", minimum=1.0, maximum=MAX_RUN_S),
            nodes=int(_num(r.get("nodes") or "1", f"{where}: nodes", integer=True, minimum=1, maximum=MAX_NODES)),
            checkpoint=_num(r.get("checkpoint") or "0", f"{where}: checkpoint"),
            deadline=deadline,
            time_limit=_num(tl, f"{where}: time_limit", minimum=1.0) if tl else None,
            priority=int(_num(r.get("priority") or "0", f"{where}: priority", integer=True, minimum=-10**9,
                              maximum=10**9)),
            spot="always" if spot == "yes" else spot,
            preemptible=pre in ("yes", "true", "1"),
        ))
    # Seconds are "from the trace start" already (ISO times count from the earliest): kept as
    # written, so a trace written by `--write-trace` replays as the run that wrote it (the market
    # is seeded by time; moved to start at 0, a generated week replayed with 1.7x the p95).
    return sorted(jobs, key=lambda j: (j.submit, j.id)), origin


def _rebase(jobs: list[TraceJob]) -> list[TraceJob]:
    from dataclasses import replace

    if not jobs:
        return jobs
    t0 = min(j.submit for j in jobs)
    if t0 == 0:
        return sorted(jobs, key=lambda j: (j.submit, j.id))
    return sorted((replace(j, submit=j.submit - t0, deadline=None if j.deadline is None else j.deadline - t0)
                   for j in jobs), key=lambda j: (j.submit, j.id))


def _slurm_limit(value: str) -> float | None:
    """A Slurm time limit; one longer than MAX_RUN_S (an admin's 'forever') counts as none."""
    try:
        return _slurm_seconds(value)
    except ValueError:
        if value.strip().split("-", 1)[0].isdigit() and int(value.strip().split("-", 1)[0]) > 366:
            return None
        raise


def _slurm_seconds(value: str) -> float | None:
    """Slurm durations: [D-]HH:MM:SS, MM:SS, or minutes; 'UNLIMITED' / empty = None."""
    v = value.strip()
    if not v or v.upper() in ("UNLIMITED", "PARTITION_LIMIT", "INVALID"):
        return None
    days = 0
    if "-" in v:
        d, v = v.split("-", 1)
        days = int(d)
    parts = [float(p) for p in v.split(":")]
    if len(parts) == 1:
        return _bounded(days * 86400 + parts[0] * 60, 0, MAX_RUN_S)
    while len(parts) < 3:
        parts.insert(0, 0.0)
    h, m, s = parts
    return _bounded(days * 86400 + h * 3600 + m * 60 + s, 0, MAX_RUN_S)


def _bounded(x: float, lo: float, hi: float) -> float:
    """`x` if finite and in [lo, hi], else ValueError."""
    if not (math.isfinite(x) and lo <= x <= hi):
        raise ValueError(x)
    return x


def _tres_gpus(tres: str) -> tuple[int, str | None]:
    """GPUs in an AllocTRES/ReqTRES string: 'cpu=8,gres/gpu:a100=4,gres/gpu=4' -> (4, 'a100')."""
    count, model = 0, None
    for item in tres.split(","):
        k, _, v = item.partition("=")
        if k == "gres/gpu" and v:
            count = max(count, int(_bounded(float(v), 0, MAX_GPUS * MAX_NODES)))
        elif k.startswith("gres/gpu:") and v:
            count = max(count, int(_bounded(float(v), 0, MAX_GPUS * MAX_NODES)))
            model = k.split(":", 1)[1]
    return count, model


def read_sacct(f: TextIO, source: str = "sacct") -> tuple[list[TraceJob], float | None]:
    """Jobs of `sacct --parsable2 --allocations -o JobID,User,Account,Submit,Start,End,Elapsed,NNodes,AllocTRES,Timelimit,State`
    (any superset of: JobID, Submit, Elapsed, AllocTRES or ReqTRES; User, Account or Group, NNodes,
    Timelimit, Priority used when present). The group a group budget charges is the Account column,
    where Slurm sets group limits (GrpTRESMins), else the Unix Group column, not a mix of the two
    (one namespace for the budget's names); an empty cell is `GROUP`.
    Job steps (JobID with a '.') and jobs that never started are skipped. Nothing says how often a
    Slurm job checkpointed: all count as never checkpointing."""
    lines = [ln.rstrip("\n") for ln in f if ln.strip()]
    if not lines:
        raise ConfigError(f"{source}: empty file")
    head_raw = [h.strip() for h in lines[0].split("|")]
    head = [h.lower() for h in head_raw]
    col = {h: i for i, h in enumerate(head)}
    tres_col = col.get("alloctres", col.get("reqtres"))
    group_col = col.get("account", col.get("group"))
    for need in ("jobid", "submit", "elapsed"):
        if need not in col:
            raise ConfigError(f"{source}: sacct output without a {need} column; run sacct --parsable2 -o"
                              " JobID,User,Account,Submit,Elapsed,NNodes,AllocTRES,Timelimit")
    if tres_col is None:
        raise ConfigError(f"{source}: sacct output without AllocTRES or ReqTRES (GPUs come from gres/gpu there)")
    jobs: list[TraceJob] = []
    stamps: list[float] = []
    for n, line in enumerate(lines[1:], start=2):
        cells = line.split("|")
        if len(cells) < len(head):
            raise ConfigError(f"{source}:{n}: {len(cells)} fields, the header has {len(head)}")
        if "." in cells[col["jobid"]]:
            continue

        def field(name: str, parse, accepted: str):  # type: ignore[no-untyped-def]
            """A cell parsed, else a ConfigError naming the line, the column and the value."""
            v = cells[col[name]] if name in col else cells[tres_col]
            try:
                return parse(v)
            except (ValueError, OverflowError):
                raise ConfigError(f"{source}:{n}: {head_raw[col[name]] if name in col else head_raw[tres_col]}:"
                                  f" {v!r}; accepted: {accepted}") from None

        slurm_time = "a Slurm duration [D-]HH:MM:SS, MM:SS or minutes, at most 366 days"
        elapsed = field("elapsed", _slurm_seconds, slurm_time) or 0.0
        submit = field("submit", lambda v: dt.datetime.fromisoformat(v).replace(tzinfo=dt.timezone.utc).timestamp(),
                       "an ISO time like 2026-11-02T09:00:00")
        if elapsed <= 0:
            continue
        gpus, model = field("tres", _tres_gpus, "cpu=N,gres/gpu[:MODEL]=N, GPUs a whole number")
        nodes = field("nnodes", lambda v: _bounded(int(v or 1), 1, MAX_NODES), f"an integer from 1 to {MAX_NODES}") \
            if "nnodes" in col else 1
        tl = field("timelimit", _slurm_limit, slurm_time + ", UNLIMITED") if "timelimit" in col else None
        prio = cells[col["priority"]] if "priority" in col else ""
        jobs.append(TraceJob(
            id=len(jobs) + 1, user=cells[col["user"]] if "user" in col else "user",
            group=(cells[group_col].strip() if group_col is not None else "") or GROUP, submit=submit,
            gpus=gpus // max(nodes, 1) if gpus >= nodes else gpus, gpu_type=model.upper() if model else None,
            duration=elapsed, nodes=nodes, time_limit=tl, priority=int(prio) if prio.lstrip("-").isdigit() else 0,
        ))
        stamps.append(submit)
    origin = min(stamps) if stamps else None
    return _rebase(jobs), origin


# ---- a hard week, generated ---------------------------------------------------------------------

MODELS = ("A100", "H100", "L40S")


def hard_week(seed: int = 17, days: float = 7.0, gpus: int = 96, load: float = 1.35,
              surge_day: float = 4.0) -> list[TraceJob]:
    """A lab week harder than the fleet: `load` x the GPU-hours `gpus` GPUs give in `days`, three GPU
    models asked by name (a fifth of jobs take any), sizes 1/2/4/8 GPUs and 2-4-node jobs, log-normal
    run times with a long tail, 35 % of jobs never checkpointing, working-hours arrivals, and on
    `surge_day` (day 4 = the 5th day) a surge of jobs due within hours."""
    rng = random.Random(seed)
    horizon = days * 86400.0
    target = load * gpus * horizon / 3600.0
    users = [f"u{i:02d}" for i in range(24)]
    jobs: list[TraceJob] = []
    total = 0.0

    def arrival() -> float:
        while True:
            t = rng.uniform(0, horizon)
            hour = (t % 86400) / 3600
            weekday = int(t // 86400) % 7 < 5
            shape = 0.3 + 0.7 * math.exp(-((hour - 14.0) / 4.5) ** 2)
            if rng.random() < shape * (1.0 if weekday else 0.5):
                return t

    while total < target * 0.9:
        size = rng.choices(["1", "2", "4", "8", "2x8", "4x8"], [42, 20, 15, 15, 5, 2])[0]
        nodes, per = (int(size[0]), 8) if "x" in size else (1, int(size))
        model = rng.choices([*MODELS, None], [35, 25, 20, 20])[0]
        if nodes > 1 and model is None:
            model = "A100"
        median = 3600.0 * (1.0 if per < 8 else 2.5) * (1.5 if nodes > 1 else 1.0)
        duration = min(48 * 3600.0, max(120.0, rng.lognormvariate(math.log(median), 1.1)))
        ckpt = 0.0 if rng.random() < 0.35 else rng.choice([600.0, 1200.0, 1800.0, 3600.0])
        limit = math.ceil(duration * rng.uniform(1.2, 3.0)) if rng.random() < 0.8 else None
        j = TraceJob(len(jobs) + 1, rng.choice(users), arrival(), per, model, duration, nodes, ckpt,
                     None, limit)
        jobs.append(j)
        total += j.gpu_hours
    # The deadline surge: a conference due at the end of `surge_day`; jobs come in its last 10 h.
    due = (surge_day + 1) * 86400.0
    while total < target:
        t = due - rng.uniform(4 * 3600, 14 * 3600)
        per = rng.choices([1, 2, 4, 8], [40, 25, 20, 15])[0]
        model = rng.choices([*MODELS, None], [35, 25, 20, 20])[0]
        duration = min(due - t - 1800.0, max(600.0, rng.lognormvariate(math.log(1.5 * 3600), 0.6)))
        ckpt = 0.0 if rng.random() < 0.35 else 1200.0
        j = TraceJob(len(jobs) + 1, rng.choice(users), t, per, model, max(600.0, duration), 1, ckpt, due,
                     math.ceil(duration * 1.5))
        jobs.append(j)
        total += j.gpu_hours
    jobs.sort(key=lambda j: (j.submit, j.id))
    from dataclasses import replace

    return [replace(j, id=i + 1) for i, j in enumerate(jobs)]


def write_csv(jobs: Iterable[TraceJob], f: TextIO) -> None:
    """The generic CSV of these jobs (what `read_csv` reads back)."""
    w = csv.writer(f)
    w.writerow(["submit", "user", "group", "gpus", "gpu_type", "nodes", "duration", "checkpoint", "deadline",
                "time_limit", "priority", "spot", "preemptible"])
    for j in jobs:
        w.writerow([f"{j.submit:.0f}", j.user, j.group, j.gpus, j.gpu_type or "", j.nodes, f"{j.duration:.0f}",
                    f"{j.checkpoint:.0f}" if j.checkpoint else "", f"+{j.deadline - j.submit:.0f}" if j.deadline is not None else "",
                    f"{j.time_limit:.0f}" if j.time_limit else "", j.priority, j.spot, "yes" if j.preemptible else ""])
