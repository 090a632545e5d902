"""Public GPU-cluster traces as replay jobs: Microsoft Philly, Alibaba PAI (2020 task table and
2023 `openb_pod_list_*.csv`) and SenseTime Helios, converted to `TraceJob`s.

None of these traces records what a replay needs to know in advance: time limits, checkpoints,
the GPU models of the lab replaying them. Each of those is an `Assumptions` field, a flag of
`hybridctl simulate`, printed in its summary (`Assumptions.describe`):

    --gpu-map TRACE=FLEET,...  trace GPU type -> a model the fleet asks for ('any' = no model
                               constraint, 'keep' = the trace's name); default '*=any'
    --limit-factor F           every job's time limit is F x its recorded run; default none
    --checkpoint SECONDS|never every job checkpoints this often; default never
    --window-days D            replay only the busiest D days (GPU-hours submitted and run in them)
    --load L                   arrivals L x as dense (submit times divided by L)

Formats (columns as the traces' READMEs describe them):

  philly   cluster_job_log (msr-fiddle/philly-traces): a JSON list (or JSON lines) of jobs with
           `submitted_time`, `user`, `vc`, `attempts: [{start_time, end_time, detail: [{ip,
           gpus}]}]`. The last attempt with both times is the run; its servers are the nodes, its
           GPU count the job's. No GPU type.
  pai      2023 openb_pod_list_*.csv (alibaba/clusterdata cluster-trace-gpu-v2023): `name,
           cpu_milli, memory_mib, num_gpu, gpu_milli, gpu_spec, qos, pod_phase, creation_time,
           deletion_time, scheduled_time`; run = deletion - scheduled; a GPU-sharing pod
           (gpu_milli < 1000) takes a whole GPU. Or the 2020 pai_task_table (cluster-trace-gpu-
           v2020, headerless as shipped): `job_name, task_name, inst_num, status, start_time,
           end_time, plan_cpu, plan_mem, plan_gpu, gpu_type`; plan_gpu is percent per instance
           (rounded up to whole GPUs), the task's instances packed onto 8-GPU nodes; submit = the
           task's start (the trace keeps the submit time in pai_job_table).
  helios   cluster_log.csv (S-Lab-System-Group/HeliosData): `job_id, user, vc, gpu_num,
           cpu_num, node_num, state, submit_time, start_time, end_time, duration, queue`.

Philly's and Helios's `vc` (virtual cluster: the GPU share a team is given) is each job's group,
what `cloud.burst.group_budget_usd` charges; PAI records no group (every job is in `trace.GROUP`).

Leading lines starting with '#' are comments. Jobs without GPUs, without a recorded run, or with
a run of 0 s are skipped and counted. A bad value is a ConfigError naming the file, the line (or
job) and the column."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from hybridctl.config import ConfigError
from hybridctl.simulate.trace import GROUP, TraceJob

FORMATS = ("philly", "pai", "helios")
NODE_GPUS = 8
"""A job wider than this per node is spread over nodes of this many GPUs."""
MAX_RUN_S = 366 * 86400.0
SOURCES = {
    "philly": "Microsoft Philly (msr-fiddle/philly-traces, CC BY 4.0)",
    "pai": "Alibaba PAI (alibaba/clusterdata cluster-trace-gpu-v2020 CC BY 4.0 / v2023)",
    "helios": "SenseTime Helios (S-Lab-System-Group/HeliosData, CC BY 4.0)",
}
PAI_2023 = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec", "qos", "pod_phase",
            "creation_time", "deletion_time", "scheduled_time")
PAI_2020_TASK = ("job_name", "task_name", "inst_num", "status", "start_time", "end_time", "plan_cpu", "plan_mem",
                 "plan_gpu", "gpu_type")
HELIOS = ("job_id", "user", "vc", "gpu_num", "cpu_num", "node_num", "state", "submit_time", "start_time",
          "end_time", "duration", "queue")


@dataclass(frozen=True)
class Assumptions:
    """What the replay assumes that the trace does not say (each a `simulate` flag)."""

    gpu_map: tuple[tuple[str, str], ...] = (("*", "any"),)
    limit_factor: float | None = None
    checkpoint: float = 0.0
    window_days: float | None = None
    load: float = 1.0

    def model(self, raw: str | None) -> str | None:
        """The GPU type a job asks for, from the trace's type (alternatives split on '|')."""
        names = [n.strip() for n in (raw or "").split("|") if n.strip() and n.strip().lower() not in ("nan", "misc")]
        table = {k.lower(): v for k, v in self.gpu_map}
        for n in names or [""]:
            to = table.get(n.lower(), table.get("*", "any"))
            if to.lower() == "keep":
                return n or None
            if to.lower() != "any":
                return to
        return None

    def describe(self) -> list[str]:
        return [
            "--gpu-map " + ",".join(f"{k}={v}" for k, v in self.gpu_map)
            + "  (trace GPU type -> fleet model; any = no model constraint)",
            (f"--limit-factor {self.limit_factor:g}  (every job's time limit = {self.limit_factor:g} x its recorded run)"
             if self.limit_factor else "--limit-factor none  (no job has a time limit: the trace records none)"),
            (f"--checkpoint {self.checkpoint:g}  (every job checkpoints every {self.checkpoint:g} s)" if self.checkpoint
             else "--checkpoint never  (no job checkpoints: the trace does not say)"),
            (f"--window-days {self.window_days:g}  (the busiest {self.window_days:g} days: most GPU-hours submitted and run in them)"
             if self.window_days else "--window-days all  (the whole trace)"),
            f"--load {self.load:g}  " + ("(arrivals as recorded)" if self.load == 1 else
                                          f"(submit times divided by {self.load:g})"),
            f"{NODE_GPUS} GPUs per node at most (wider jobs spread over nodes); GPU-sharing jobs take whole GPUs",
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"gpu_map": dict(self.gpu_map), "limit_factor": self.limit_factor, "checkpoint_s": self.checkpoint,
                "window_days": self.window_days, "load": self.load, "node_gpus": NODE_GPUS}


@dataclass
class Converted:
    """The jobs of a public trace, and what the conversion did."""

    fmt: str
    variant: str
    jobs: list[TraceJob]
    rows: int
    skipped: dict[str, int] = field(default_factory=dict)
    window: tuple[float, float] | None = None
    """Seconds from the trace's first submit: the replayed window."""
    span_days: float = 0.0

    def describe(self) -> str:
        skip = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        where = ""
        if self.window is not None:
            where = f"; window days {self.window[0] / 86400:.1f}-{self.window[1] / 86400:.1f} of {self.span_days:.1f}"
        return f"{self.variant}: {self.rows} rows, {len(self.jobs)} jobs replayed, skipped: {skip}{where}"


def parse_gpu_map(text: str) -> tuple[tuple[str, str], ...]:
    """'V100M16=A100,T4=L40S,*=any' -> pairs; ConfigError naming --gpu-map otherwise."""
    pairs = []
    for item in text.split(","):
        k, eq, v = item.partition("=")
        if not eq or not k.strip() or not v.strip() or len(item) > 200:
            raise ConfigError(f"--gpu-map {text!r}: {item!r} is not TRACE=FLEET; accepted: comma-separated"
                              " TRACE_TYPE=FLEET_MODEL pairs, '*' for every other type, FLEET_MODEL 'any' (no"
                              " constraint) or 'keep' (the trace's name), e.g. V100M32=A100,*=any")
        pairs.append((k.strip(), v.strip()))
    return tuple(pairs)


# ---- readers: raw jobs with absolute submit seconds ------------------------------------------------

def _bad(source: str, where: str, column: str, value: object, accepted: str) -> ConfigError:
    return ConfigError(f"{source}:{where}: {column}: {value!r}; accepted: {accepted}")


def _float(v: str, source: str, where: str, column: str, lo: float = 0.0, hi: float = 1e12,
           accepted: str | None = None) -> float:
    try:
        x = float(v)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and lo <= x <= hi):
        raise _bad(source, where, column, v, accepted or f"a number from {lo:g} to {hi:g}")
    return x


def _stamp(v: str, source: str, where: str, column: str) -> float:
    try:
        t = dt.datetime.fromisoformat(v.strip())
    except (ValueError, TypeError):
        raise _bad(source, where, column, v, "a time like 2017-10-07 01:12:09") from None
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


def _spread(total: int, nodes: int) -> tuple[int, int]:
    """(GPUs per node, nodes) for `total` GPUs over at least `nodes` nodes of NODE_GPUS."""
    nodes = max(1, nodes, math.ceil(total / NODE_GPUS))
    return math.ceil(total / nodes), nodes


def read_philly(text: str, source: str, skipped: dict[str, int], skip: int = 0) -> tuple[list[TraceJob], int]:
    try:
        if text.lstrip().startswith("["):
            items = json.loads(text)
        else:
            items = []
            for n, ln in enumerate(text.splitlines(), start=1):
                if ln.strip():
                    try:
                        items.append(json.loads(ln))
                    except json.JSONDecodeError as exc:
                        raise json.JSONDecodeError(exc.msg, text, sum(len(x) + 1 for x in text.splitlines()[:n - 1])
                                                   + exc.pos) from None
    except RecursionError:
        raise ConfigError(f"{source}: JSON nested too deep; expected Philly's cluster_job_log, a list of jobs") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}:{skip + exc.lineno}: not JSON ({exc.msg}); expected Philly's cluster_job_log,"
                          " a JSON list of jobs") from None
    if not isinstance(items, list):
        raise ConfigError(f"{source}: expected a JSON list of jobs (Philly's cluster_job_log)")
    jobs: list[TraceJob] = []
    for i, j in enumerate(items):
        where = f"job {i}" + (f" ({j.get('jobid')})" if isinstance(j, dict) and isinstance(j.get("jobid"), str) else "")
        if not isinstance(j, dict):
            raise _bad(source, where, "job", j, "an object with submitted_time, user, attempts")
        attempts = j.get("attempts") or []
        if not isinstance(attempts, list):
            raise _bad(source, where, "attempts", attempts, "a list of {start_time, end_time, detail}")
        last = None
        for a in attempts:
            if not isinstance(a, dict):
                raise _bad(source, where, "attempts", a, "objects with start_time, end_time, detail")
            if a.get("start_time") and a.get("end_time"):
                last = a
        if j.get("submitted_time") in (None, "", "None"):
            skipped["without a submit time"] = skipped.get("without a submit time", 0) + 1
            continue
        submit = _stamp(str(j["submitted_time"]), source, where, "submitted_time")
        if last is None:
            skipped["without a finished attempt"] = skipped.get("without a finished attempt", 0) + 1
            continue
        start = _stamp(str(last["start_time"]), source, where, "attempts.start_time")
        end = _stamp(str(last["end_time"]), source, where, "attempts.end_time")
        detail = last.get("detail") or []
        if not isinstance(detail, list) or not all(isinstance(d, dict) and isinstance(d.get("gpus", []), list)
                                                   for d in detail):
            raise _bad(source, where, "attempts.detail", detail, "a list of {ip, gpus: [..]}")
        total = sum(len(d.get("gpus") or []) for d in detail)
        if total <= 0:
            skipped["without GPUs"] = skipped.get("without GPUs", 0) + 1
            continue
        run = end - start
        if run <= 0:
            skipped["with a run of 0 s"] = skipped.get("with a run of 0 s", 0) + 1
            continue
        if run > MAX_RUN_S:
            raise _bad(source, where, "attempts.end_time", last["end_time"], "a run of at most 366 days")
        per, nodes = _spread(total, len(detail))
        jobs.append(TraceJob(len(jobs) + 1, str(j.get("user") or "user"), submit, per, None, run, nodes,
                             group=str(j.get("vc") or GROUP)))
    return jobs, len(items)


def _rows(text: str, source: str, expect: tuple[str, ...], headerless_ok: bool,
          skip: int = 0) -> tuple[Iterable[tuple[int, dict[str, str]]], int]:
    """(file line, {column: cell}) of each data row; `skip` comment lines came before `text`."""
    lines = text.splitlines()
    first = next(csv.reader([lines[0]])) if lines else []
    header = [h.strip().lower() for h in first]
    if header[:1] == [""] and len(header) > 1:  # pandas' unnamed index column
        header = header[1:]
        offset = 1
    else:
        offset = 0
    if set(expect) <= set(header):
        cols = {h: i + offset for i, h in enumerate(header)}
        start = 1
    elif headerless_ok and len(first) == len(expect):
        cols = {h: i for i, h in enumerate(expect)}
        start = 0
    else:
        raise ConfigError(f"{source}:{skip + 1}: header {','.join(first)[:200]!r}; expected the columns {','.join(expect)}")
    body = lines[start:]

    def gen() -> Iterable[tuple[int, dict[str, str]]]:
        for n, cells in enumerate(csv.reader(body), start=skip + start + 1):
            if not cells or not any(c.strip() for c in cells):
                continue
            if len(cells) < max(cols.values()) + 1:
                raise ConfigError(f"{source}:{n}: {len(cells)} fields; expected {len(expect)} ({','.join(expect)})")
            yield n, {h: cells[i].strip() for h, i in cols.items()}

    return gen(), len([ln for ln in body if ln.strip()])


def read_pai(text: str, source: str, skipped: dict[str, int], skip: int = 0) -> tuple[list[TraceJob], int, str]:
    head = text.split("\n", 1)[0].lower()
    if "cpu_milli" in head:
        rows, count = _rows(text, source, PAI_2023, headerless_ok=False, skip=skip)
        return _pai_2023(rows, source, skipped), count, "Alibaba PAI 2023 openb_pod_list"
    rows, count = _rows(text, source, PAI_2020_TASK, headerless_ok=True, skip=skip)
    return _pai_2020(rows, source, skipped), count, "Alibaba PAI 2020 pai_task_table"


def _skip(skipped: dict[str, int], why: str) -> None:
    skipped[why] = skipped.get(why, 0) + 1


def _span(r: dict[str, str], source: str, w: str, begin: str, end: str,
          skipped: dict[str, int]) -> tuple[float, float] | None:
    """(start, run) from the columns `begin` and `end`; None, counted in `skipped`, for a run of 0 s."""
    start = _float(r[begin], source, w, begin, 0, 1e10)
    run = _float(r[end], source, w, end, 0, 1e10) - start
    if run <= 0:
        _skip(skipped, "with a run of 0 s")
        return None
    if run > MAX_RUN_S:
        raise _bad(source, w, end, r[end], f"at most 366 days after {begin}")
    return start, run


def _pai_2023(rows: Iterable[tuple[int, dict[str, str]]], source: str, skipped: dict[str, int]) -> list[TraceJob]:
    jobs: list[TraceJob] = []
    for n, r in rows:
        w = str(n)
        gpus = _float(r["num_gpu"], source, w, "num_gpu", 0, 1024, "an integer from 0 to 1024")
        if gpus != int(gpus):
            raise _bad(source, w, "num_gpu", r["num_gpu"], "an integer from 0 to 1024")
        if gpus == 0:
            _skip(skipped, "without GPUs")
            continue
        if not r["scheduled_time"] or not r["deletion_time"]:
            _skip(skipped, "never scheduled")
            continue
        created = _float(r["creation_time"], source, w, "creation_time", 0, 1e10)
        span = _span(r, source, w, "scheduled_time", "deletion_time", skipped)
        if span is None:
            continue
        run = span[1]
        per, nodes = _spread(int(gpus), 1)
        # The trace names no users: the pod's QoS class stands for one.
        jobs.append(TraceJob(len(jobs) + 1, r.get("qos") or "user", created, per, r.get("gpu_spec") or None, run, nodes))
    return jobs


def _pai_2020(rows: Iterable[tuple[int, dict[str, str]]], source: str, skipped: dict[str, int]) -> list[TraceJob]:
    jobs: list[TraceJob] = []
    for n, r in rows:
        w = str(n)
        plan = _float(r["plan_gpu"], source, w, "plan_gpu", 0, 102400, "GPU percent per instance, 0 to 102400") \
            if r["plan_gpu"] else 0.0
        if plan <= 0:
            _skip(skipped, "without GPUs")
            continue
        if not r["start_time"] or not r["end_time"]:
            _skip(skipped, "without a start and end time")
            continue
        inst = _float(r["inst_num"] or "1", source, w, "inst_num", 1, 100000, "an instance count from 1 to 100000")
        span = _span(r, source, w, "start_time", "end_time", skipped)
        if span is None:
            continue
        start, run = span
        per_inst = math.ceil(plan / 100.0)
        per, nodes = _spread(per_inst * int(inst), 1)
        jobs.append(TraceJob(len(jobs) + 1, r.get("job_name") or "user", start, per, r.get("gpu_type") or None, run,
                             nodes))
    return jobs


def read_helios(text: str, source: str, skipped: dict[str, int], skip: int = 0) -> tuple[list[TraceJob], int]:
    rows, count = _rows(text, source, HELIOS, headerless_ok=False, skip=skip)
    jobs: list[TraceJob] = []
    for n, r in rows:
        w = str(n)
        gpus = _float(r["gpu_num"] or "0", source, w, "gpu_num", 0, 100000, "an integer from 0 to 100000")
        if gpus != int(gpus):
            raise _bad(source, w, "gpu_num", r["gpu_num"], "an integer from 0 to 100000")
        if gpus == 0:
            _skip(skipped, "without GPUs")
            continue
        nodes = _float(r["node_num"] or "1", source, w, "node_num", 0, 10000, "an integer from 0 to 10000")
        submit = _stamp(r["submit_time"], source, w, "submit_time")
        run = _float(r["duration"] or "0", source, w, "duration", 0, MAX_RUN_S, "seconds from 0 to 31622400")
        if run <= 0:
            _skip(skipped, "with a run of 0 s")
            continue
        per, k = _spread(int(gpus), int(nodes))
        jobs.append(TraceJob(len(jobs) + 1, r.get("user") or "user", submit, per, None, run, k,
                             group=r.get("vc") or GROUP))
    return jobs, count


# ---- the assumptions applied ------------------------------------------------------------------------

def busiest(jobs: list[TraceJob], days: float) -> tuple[float, float]:
    """[start, end) of the `days` window with the most GPU-hours submitted in it and run inside it
    (a job's run counts up to the window's end, so a months-long pod counts for the window only).
    Windows start on the hour from the first submit (every span/2000, at least an hour, apart).

    One sweep, O(n log n): for a window [c, C), the work is sum(g * min(e, C)) - sum(g * s) over
    jobs submitted in it (s submit, e = s + run, g GPUs), kept as running sums while C moves."""
    width = days * 86400.0
    s = sorted(jobs, key=lambda j: j.submit)
    t0, t1 = s[0].submit, s[-1].submit
    step = max(3600.0, (t1 - t0) / 2000)
    g = [j.gpus * j.nodes for j in s]
    ends = sorted(range(len(s)), key=lambda i: s[i].submit + s[i].duration)
    active = [False] * len(s)
    ended = [False] * len(s)
    gs = low = high = 0.0  # sum g*s; sum g*e of active jobs ended before C; sum g of the others
    enter = leave = done = 0
    best, best_at = -1.0, t0
    c = t0
    while True:
        cap = c + width
        while enter < len(s) and s[enter].submit < cap:
            active[enter] = True
            gs += g[enter] * s[enter].submit
            high += g[enter]
            enter += 1
        while done < len(ends) and s[ends[done]].submit + s[ends[done]].duration < cap:
            i = ends[done]
            ended[i] = True
            if active[i]:
                high -= g[i]
                low += g[i] * (s[i].submit + s[i].duration)
            done += 1
        while leave < len(s) and s[leave].submit < c:
            i = leave
            if active[i]:
                active[i] = False
                gs -= g[i] * s[i].submit
                if ended[i]:
                    low -= g[i] * (s[i].submit + s[i].duration)
                else:
                    high -= g[i]
            leave += 1
        total = low + cap * high - gs
        if total > best * (1 + 1e-12) + 1e-6:
            best, best_at = total, c
        if cap >= t1:
            break
        c += step
    return best_at, best_at + width


def convert(fmt: str, text: str, source: str, assume: Assumptions) -> Converted:
    """The replay jobs of a public trace `text` in format `fmt`, under `assume`."""
    skipped: dict[str, int] = {}
    lines = text.split("\n")
    skip = 0
    while skip < len(lines) and lines[skip].lstrip().startswith("#"):
        skip += 1
    text = "\n".join(lines[skip:])
    if fmt == "philly":
        raw, rows = read_philly(text, source, skipped, skip)
        variant = "Microsoft Philly cluster_job_log"
    elif fmt == "pai":
        raw, rows, variant = read_pai(text, source, skipped, skip)
    elif fmt == "helios":
        raw, rows = read_helios(text, source, skipped, skip)
        variant = "SenseTime Helios cluster_log"
    else:
        raise ConfigError(f"--format {fmt!r}; accepted: {', '.join(FORMATS)}")
    out = Converted(fmt, variant, [], rows, skipped)
    if not raw:
        return out
    t0 = min(j.submit for j in raw)
    out.span_days = (max(j.submit for j in raw) - t0) / 86400.0
    lo, hi = t0, math.inf
    if assume.window_days:
        lo, hi = busiest(raw, assume.window_days)
        lo, hi = math.floor(lo), math.floor(lo) + (hi - lo)  # whole seconds, as the trace's times
        out.window = (lo - t0, hi - t0)
        outside = sum(1 for j in raw if not lo <= j.submit < hi)
        if outside:
            skipped["outside the window"] = outside
    picked = sorted((j for j in raw if lo <= j.submit < hi), key=lambda j: (j.submit, j.id))
    jobs = []
    for j in picked:
        limit = float(math.ceil(j.duration * assume.limit_factor)) if assume.limit_factor else None
        jobs.append(replace(j, id=len(jobs) + 1, submit=(j.submit - lo) / assume.load,
                            gpu_type=assume.model(j.gpu_type), checkpoint=assume.checkpoint, time_limit=limit))
    out.jobs = jobs
    return out

