"""What a node's agent sends, checked before the controller believes any of it.

Every field the controller reads from an agent's `hello`, `sample` and job records is type- and
range-checked here, in pure code: a bad value becomes None (or drops the entry it belongs to), and
a `Problem` names the field, the value and what is accepted, so one bad record never stops a node's
session and the rest of its report still counts. Unknown fields are dropped."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from hybridctl.core.reconcile import AgentJob

MAX_GPUS = 1024
"""GPUs one node may report (NVML numbers them with an unsigned int; no server has this many)."""
MAX_RECORDS = 20000
"""Job records one listing may hold; a longer listing is refused whole (see `job_records`)."""
MAX_PROCESSES = 4096
"""Processes listed per GPU in a sample; the rest are dropped."""
MAX_TEXT = 4096
"""Longest free text kept (a reason, an error message)."""

_KEY = re.compile(r"[A-Za-z0-9_.-]{1,128}\Z")
"""The agent's job key alphabet (hybridctl_agent.jobfiles.KEY_RE)."""
_VERSION = re.compile(r"[A-Za-z0-9_.:+-]{1,128}\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Problem:
    """One value an agent sent that the controller does not believe."""

    where: str
    """Which part of the report: 'hello.cpus', 'job 42.a0.r0: exit_code', 'sample: gpus[3].temp_c'."""
    value: str
    """The value as sent, shortened for the log."""
    accepted: str

    def __str__(self) -> str:
        return f"{self.where} = {self.value} (accepted: {self.accepted})"


def shown(value: object, limit: int = 60) -> str:
    """A short, single-line rendering of a hostile value (never the whole of a huge one)."""
    if isinstance(value, (dict, list, tuple)):
        text = f"{type(value).__name__} of {len(value)}"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10 ** 18:
        text = "a huge int"
    elif isinstance(value, str) and len(value) > limit:
        text = repr(value[:limit]) + "..."
    else:
        text = repr(value)
    return text[: limit + 8]


# ---- small validators: a typed value, or None ---------------------------------------------------

def integer(value: object, lo: int, hi: int) -> int | None:
    """An int (not a bool) within [lo, hi]."""
    if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
        return value
    return None


def number(value: object, lo: float, hi: float) -> float | None:
    """A finite int or float (not a bool) within [lo, hi], as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and not -(2 ** 63) <= value <= 2 ** 63:
        return None  # float() of a huge int raises or loses it; no metric is that large
    x = float(value)
    return x if math.isfinite(x) and lo <= x <= hi else None


def flag(value: object) -> bool | None:
    """A JSON boolean (not 0/1, not "true")."""
    return value if isinstance(value, bool) else None


def text(value: object, limit: int = MAX_TEXT) -> str | None:
    """A string of at most `limit` characters, with control characters (which could move a
    terminal's cursor when `nodes` or the TUI shows it) replaced by U+FFFD."""
    if not isinstance(value, str) or len(value) > limit:
        return None
    return _CONTROL.sub("\ufffd", value)


def job_key(value: object) -> str | None:
    """A key an agent can hold: `[A-Za-z0-9_.-]{1,128}`, not starting with '.'."""
    if isinstance(value, str) and _KEY.match(value) and not value.startswith("."):
        return value
    return None


def version(value: object) -> str | None:
    """An agent's job-list version digest (sent back as `since`, so it must be one the agent accepts)."""
    return value if isinstance(value, str) and _VERSION.match(value) else None


def abs_path(value: object) -> str | None:
    """An absolute, normalised POSIX path: no NUL or control characters, no '.' or '..' parts."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_TEXT:
        return None
    if _CONTROL.search(value) or any(p in (".", "..") for p in value.split("/")):
        return None
    return value.rstrip("/") or "/"


class _Checker:
    """Collects problems while fields are read from one mapping."""

    def __init__(self, where: str, problems: list[Problem]) -> None:
        self.where = where
        self.problems = problems

    def bad(self, name: str, value: object, accepted: str) -> None:
        self.problems.append(Problem(f"{self.where}{name}", shown(value), accepted))

    def get(self, raw: Mapping[str, Any], name: str, check: Any, accepted: str, *, optional: bool = True,
            ) -> Any:
        """`check(raw[name])`; None (with a problem) when the value is there but wrong, or missing
        and not optional. A missing optional field, or a JSON null, is None without a problem."""
        if name not in raw or raw[name] is None:
            if not optional:
                self.bad(name, raw.get(name), accepted)
            return None
        value = check(raw[name])
        if value is None:
            self.bad(name, raw[name], accepted)
        return value


# ---- job records --------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobRecord:
    """The fields of an agent's job record that the controller acts on, checked."""

    key: str
    running: bool
    pid: int | None = None
    """None while the job's processes have not started yet (`launch` answers before that)."""
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    has_checkpoint: bool | None = None
    """None from an agent too old to say (then the controller asks for a listing anyway)."""

    def agent_job(self) -> AgentJob:
        return AgentJob(self.key, self.running, self.exit_code, self.signal, self.reason)


@dataclass(frozen=True)
class Listing:
    """A `jobs` answer, checked. `unreadable` holds the keys of records that named a job but said
    something wrong about it (or named it twice): the controller must take no action on those
    jobs at all (neither finish, requeue nor relaunch them) until the node reports them sanely."""

    records: tuple[JobRecord, ...]
    unreadable: frozenset[str] = frozenset()
    version: str | None = None


def job_record(raw: object, problems: list[Problem]) -> JobRecord | str | None:
    """One record: a `JobRecord`; its key (a str) when the key is sane but a field is not; None
    when not even the key can be read."""
    if not isinstance(raw, dict):
        problems.append(Problem("job record", shown(raw), "an object"))
        return None
    key = job_key(raw.get("key"))
    if key is None:
        problems.append(Problem("job record: key", shown(raw.get("key")), "[A-Za-z0-9_.-]{1,128}, not starting with '.'"))
        return None
    c = _Checker(f"job {key}: ", problems)
    before = len(problems)
    state = c.get(raw, "state", lambda v: v if v in ("running", "exited") else None, "'running' or 'exited'",
                  optional=False)
    pid = c.get(raw, "pid", lambda v: integer(v, 1, 2 ** 31 - 1), "a process id, 1 to 2^31-1")
    exit_code = c.get(raw, "exit_code", lambda v: integer(v, 0, 255), "an exit status, 0 to 255")
    sig = c.get(raw, "signal", lambda v: integer(v, 1, 128), "a signal number, 1 to 128")
    reason = c.get(raw, "reason", text, f"text of at most {MAX_TEXT} characters")
    has_checkpoint = c.get(raw, "has_checkpoint", flag, "true or false")
    if len(problems) > before:
        return key
    return JobRecord(key, state == "running", pid, exit_code, sig, reason, has_checkpoint)


def job_records(answer: object, problems: list[Problem]) -> Listing | None:
    """A `jobs` answer; None when it is unusable as a whole (not an object, `jobs` not a list, or
    longer than MAX_RECORDS): an unusable listing must never read as "the node has no jobs", which
    would requeue everything it runs."""
    if not isinstance(answer, dict):
        problems.append(Problem("jobs answer", shown(answer), "an object"))
        return None
    raw = answer.get("jobs")
    if not isinstance(raw, list) or len(raw) > MAX_RECORDS:
        problems.append(Problem("jobs answer: jobs", shown(raw), f"a list of at most {MAX_RECORDS} records"))
        return None
    ver = answer.get("version")
    if ver is not None and version(ver) is None:
        problems.append(Problem("jobs answer: version", shown(ver), "a short digest string"))
    records: dict[str, JobRecord] = {}
    unreadable: set[str] = set()
    seen: set[str] = set()
    for item in raw:
        rec = job_record(item, problems)
        key = rec if isinstance(rec, str) else rec.key if rec is not None else None
        if key is None:
            continue
        if key in seen:
            problems.append(Problem(f"job {key}", "a second record", "one record per key"))
            unreadable.add(key)
        seen.add(key)
        if isinstance(rec, JobRecord):
            records[key] = rec
        else:
            unreadable.add(key)
    return Listing(tuple(r for k, r in records.items() if k not in unreadable), frozenset(unreadable), version(ver))


def launch_answer(answer: object, key: str, problems: list[Problem]) -> JobRecord | None:
    """The record in a `launch` answer, if it is sane and about the job that was launched."""
    rec = job_record(answer.get("job") if isinstance(answer, dict) else answer, problems)
    if isinstance(rec, JobRecord) and rec.key != key:
        problems.append(Problem(f"launch of {key}: job.key", shown(rec.key), f"{key!r}"))
        return None
    return rec if isinstance(rec, JobRecord) else None


# ---- hello --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuInfo:
    index: int
    model: str
    memory_mb: int | None


@dataclass(frozen=True)
class Hello:
    """A `hello` answer, checked. A None field was missing or unusable: keep what is known."""

    gpus: tuple[GpuInfo, ...] | None = None
    cpus: float | None = None
    memory_mb: int | None = None
    checkpoint_root: str | None = None
    agent_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """The other fields the controller shows (gpu_source, gpu_error, boot_id, ...), checked."""

    def to_dict(self) -> dict[str, Any]:
        """What the node session keeps as `hello` (only checked values)."""
        out: dict[str, Any] = dict(self.extra)
        if self.gpus is not None:
            out["gpus"] = [{"index": g.index, "name": g.model, "memory_total_mb": g.memory_mb} for g in self.gpus]
        out.update({k: v for k, v in (("cpus", self.cpus), ("memory_mb", self.memory_mb),
                                      ("checkpoint_root", self.checkpoint_root),
                                      ("agent_version", self.agent_version)) if v is not None})
        return out


def gpu_list(raw: object, where: str, problems: list[Problem]) -> tuple[GpuInfo, ...] | None:
    if not isinstance(raw, list) or len(raw) > MAX_GPUS:
        problems.append(Problem(where, shown(raw), f"a list of at most {MAX_GPUS} GPUs"))
        return None
    out: dict[int, GpuInfo] = {}
    for i, g in enumerate(raw):
        c = _Checker(f"{where}[{i}].", problems)
        if not isinstance(g, dict):
            c.bad("", g, "an object")
            continue
        index = c.get(g, "index", lambda v: integer(v, 0, MAX_GPUS - 1), f"0 to {MAX_GPUS - 1}", optional=False)
        if index is None:
            continue
        if index in out:
            c.bad("index", index, "each index once")
            continue
        name = c.get(g, "name", lambda v: text(v, 128), "text of at most 128 characters")
        mem = c.get(g, "memory_total_mb", lambda v: integer(v, 0, 1 << 30), "MiB, 0 to 2^30")
        out[index] = GpuInfo(index, name or "GPU", mem)
    return tuple(out[i] for i in sorted(out))


RUNTIMES = ("uv", "podman", "apptainer", "singularity")
"""What a node may offer jobs' environments and images (hello's `runtimes`)."""


def runtimes(value: object) -> dict[str, str] | None:
    """hello's `runtimes`: known tool names -> absolute paths."""
    if not isinstance(value, dict) or any(k not in RUNTIMES or abs_path(v) is None for k, v in value.items()):
        return None
    return {k: str(abs_path(v)) for k, v in value.items()}


def shared_paths(value: object) -> list[str] | None:
    """hello's `shared_paths`: the node's directories shared with the submitting hosts."""
    if not isinstance(value, list) or len(value) > 64 or any(abs_path(v) is None for v in value):
        return None
    return [str(abs_path(v)) for v in value]


def hello(answer: object, problems: list[Problem]) -> Hello:
    if not isinstance(answer, dict):
        problems.append(Problem("hello", shown(answer), "an object"))
        return Hello()
    c = _Checker("hello.", problems)
    gpus = gpu_list(answer["gpus"], "hello.gpus", problems) if answer.get("gpus") is not None else None
    extra: dict[str, Any] = {}
    for name, check, accepted in (
        ("protocol", lambda v: integer(v, 0, 1 << 16), "a small int"),
        ("node", lambda v: text(v, 256), "a name"),
        ("boot_id", lambda v: text(v, 128), "an id"),
        ("gpu_source", lambda v: text(v, 32), "nvml, simulated or none"),
        ("gpu_error", text, "text"),
        ("uid", lambda v: integer(v, 0, 2 ** 32 - 1), "a uid"),
        ("rootless", flag, "true or false"),
        ("containment", lambda v: text(v, 512), "cgroup-v1, cgroup-v2 (...) or none: <why>"),
        ("interval_s", lambda v: number(v, 0.0, 86400.0), "seconds"),
        ("history_s", lambda v: number(v, 0.0, 86400.0 * 366), "seconds"),
        ("runtimes", runtimes, "{uv|podman|apptainer|singularity: an absolute path}"),
        ("shared_paths", shared_paths, "a list of at most 64 absolute paths"),
        ("env_offline", flag, "true or false"),  # no package index: ship wheels (control/wheels.py)
    ):
        value = c.get(answer, name, check, accepted)
        if value is not None:
            extra[name] = value
    return Hello(
        gpus=gpus,
        cpus=c.get(answer, "cpus", lambda v: number(v, 0.001, 1e6), "a CPU count greater than 0"),
        memory_mb=c.get(answer, "memory_mb", lambda v: integer(v, 0, 1 << 40), "MiB, 0 to 2^40"),
        checkpoint_root=c.get(answer, "checkpoint_root", abs_path, "an absolute path without '..'"),
        agent_version=c.get(answer, "agent_version", lambda v: text(v, 64), "a version string"),
        extra=extra,
    )


# ---- samples ------------------------------------------------------------------------------------

_HOST_METRICS = {
    "cpu_percent": (0.0, 1e5), "load1": (0.0, 1e7), "load5": (0.0, 1e7), "load15": (0.0, 1e7),
    "memory_total_mb": (0.0, 1e12), "memory_used_mb": (0.0, 1e12), "disk_total_mb": (0.0, 1e15),
    "disk_used_mb": (0.0, 1e15), "net_rx_bps": (0.0, 1e15), "net_tx_bps": (0.0, 1e15),
    "uptime_s": (0.0, 1e11),
}
_GPU_METRICS = {
    "util_gpu": (0.0, 100.0), "util_mem": (0.0, 100.0), "mem_used_mb": (0.0, 1e9), "mem_total_mb": (0.0, 1e9),
    "temp_c": (-100.0, 300.0), "power_w": (0.0, 1e5), "power_limit_w": (0.0, 1e5), "fan_pct": (0.0, 100.0),
    "clock_sm_mhz": (0.0, 1e6), "clock_mem_mhz": (0.0, 1e6), "sm_util": (0.0, 100.0),
    "pcie_tx_kbps": (0.0, 1e12), "pcie_rx_kbps": (0.0, 1e12), "ecc_corrected": (0.0, 1e18),
    "ecc_uncorrected": (0.0, 1e18),
}
_JOB_METRICS = {
    "cpu_percent": (0.0, 1e7), "cpu_seconds": (0.0, 1e12), "rss_mb": (0.0, 1e12), "peak_rss_mb": (0.0, 1e12),
    "metrics_time": (0.0, 1e11),
}
MAX_JOB_METRICS = 32
"""Values logged with `hybridctl.job.log` kept per job and sample (the agent sends at most this many)."""
_METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}\Z")
_PROC_METRICS = {"used_mem_mb": (0.0, 1e9), "sm_util": (0.0, 100.0)}


def _metrics(raw: Mapping[str, Any], table: Mapping[str, tuple[float, float]], c: _Checker) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (lo, hi) in table.items():
        if name in raw:
            out[name] = c.get(raw, name, lambda v, lo=lo, hi=hi: number(v, lo, hi), f"a number from {lo:g} to {hi:g}")
    return out


def _process(raw: object, c: _Checker) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        c.bad("", raw, "an object")
        return None
    out = {
        "pid": c.get(raw, "pid", lambda v: integer(v, 0, 2 ** 31 - 1), "a process id"),
        "user": c.get(raw, "user", lambda v: text(v, 64), "a user name"),
        "job": c.get(raw, "job", job_key, "a job key or null"),
    }
    out.update(_metrics(raw, _PROC_METRICS, c))
    return out


def _gpu_sample(raw: object, where: str, problems: list[Problem]) -> dict[str, Any] | None:
    c = _Checker(where, problems)
    if not isinstance(raw, dict):
        c.bad("", raw, "an object")
        return None
    index = c.get(raw, "index", lambda v: integer(v, 0, MAX_GPUS - 1), f"0 to {MAX_GPUS - 1}", optional=False)
    if index is None:
        return None
    out: dict[str, Any] = {
        "index": index,
        "uuid": c.get(raw, "uuid", lambda v: text(v, 128), "a GPU uuid"),
        "name": c.get(raw, "name", lambda v: text(v, 128), "a GPU model name"),
        "healthy": c.get(raw, "healthy", flag, "true or false") if "healthy" in raw else True,
        "health_reason": c.get(raw, "health_reason", text, "text"),
    }
    out.update(_metrics(raw, _GPU_METRICS, c))
    procs = raw.get("processes")
    if procs is not None and not isinstance(procs, list):
        c.bad("processes", procs, "a list")
        procs = None
    out["processes"] = [p for i, r in enumerate((procs or [])[:MAX_PROCESSES])
                        if (p := _process(r, _Checker(f"{where}processes[{i}].", problems))) is not None]
    return out


def sample(raw: object, problems: list[Problem]) -> dict[str, Any] | None:
    """One telemetry sample as the controller keeps and serves it (only checked fields; a bad
    metric is None, as one the GPU cannot report); None when it is not a sample at all."""
    if not isinstance(raw, dict):
        problems.append(Problem("sample", shown(raw), "an object"))
        return None
    c = _Checker("sample: ", problems)
    out: dict[str, Any] = {
        "seq": c.get(raw, "seq", lambda v: integer(v, 0, 2 ** 53), "0 to 2^53"),
        "time": c.get(raw, "time", lambda v: number(v, 0.0, 1e11), "a Unix time"),
    }
    host = raw.get("host")
    if isinstance(host, dict):
        hc = _Checker("sample: host.", problems)
        out["host"] = _metrics(host, _HOST_METRICS, hc)
        out["host"]["agent_version"] = hc.get(host, "agent_version", lambda v: text(v, 64), "a version string")
    elif host is not None:
        c.bad("host", host, "an object")
    gpus = raw.get("gpus")
    if gpus is not None and (not isinstance(gpus, list) or len(gpus) > MAX_GPUS):
        c.bad("gpus", gpus, f"a list of at most {MAX_GPUS} GPUs")
        gpus = None
    seen: set[int] = set()
    out["gpus"] = []
    for i, g in enumerate(gpus or []):
        entry = _gpu_sample(g, f"sample: gpus[{i}].", problems)
        if entry is None:
            continue
        if entry["index"] in seen:
            problems.append(Problem(f"sample: gpus[{i}].index", str(entry["index"]), "each index once"))
            continue
        seen.add(entry["index"])
        out["gpus"].append(entry)
    out["jobs"] = _job_usage(raw.get("jobs"), problems)
    return out


def _job_usage(raw: object, problems: list[Problem]) -> dict[str, dict[str, Any]]:
    """Per running job key: CPU, memory and the last values it logged (`hybridctl.job.log`)."""
    out: dict[str, dict[str, Any]] = {}
    if raw is None:
        return out
    if not isinstance(raw, dict) or len(raw) > MAX_RECORDS:
        problems.append(Problem("sample: jobs", shown(raw), f"an object of at most {MAX_RECORDS} jobs"))
        return out
    for key, entry in raw.items():
        c = _Checker(f"sample: jobs[{shown(key)}].", problems)
        if job_key(key) is None or not isinstance(entry, dict):
            c.bad("", entry, "a job key mapped to an object")
            continue
        got = _metrics(entry, _JOB_METRICS, c)
        logged = entry.get("metrics")
        if isinstance(logged, dict):
            kept = {}
            for name, value in list(logged.items())[:MAX_JOB_METRICS]:
                v = number(value, -1e300, 1e300)
                if isinstance(name, str) and _METRIC_NAME.match(name) and v is not None:
                    kept[name] = v
                else:
                    c.bad(f"metrics.{shown(name)}", value, "a name of letters, digits, '_' or '.' and a finite number")
            got["metrics"] = kept
        elif logged is not None:
            c.bad("metrics", logged, "an object of name: number")
        out[key] = got
    return out


@dataclass(frozen=True)
class SampleAnswer:
    seq: int | None
    """The newest sequence number (sent back as `since`); None when unusable."""
    latest: dict[str, Any] | None
    """The newest sample, checked; None when the answer held none usable."""


def sample_answer(answer: object, problems: list[Problem]) -> SampleAnswer:
    if not isinstance(answer, dict):
        problems.append(Problem("sample answer", shown(answer), "an object"))
        return SampleAnswer(None, None)
    c = _Checker("sample answer: ", problems)
    seq = c.get(answer, "seq", lambda v: integer(v, 0, 2 ** 53), "0 to 2^53")
    samples = answer.get("samples")
    if samples is not None and not isinstance(samples, list):
        c.bad("samples", samples, "a list")
        samples = None
    latest = sample(samples[-1], problems) if samples else None
    return SampleAnswer(seq, latest)


# ---- chunked checkpoint moves (stage_pull with `chunks`) ----------------------------------------

MAX_CHUNKS = 1 << 22
"""Chunks one checkpoint file may have (16 TiB at 4 MiB); a larger one is refused."""
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def chunk_count(size: int, chunk: int) -> int:
    return (size + chunk - 1) // chunk


def chunk_hashes(value: object, size: int, chunk: int) -> list[str] | None:
    """The SHA-256 hex digests of every chunk of a file of `size` bytes, or None when `value` is
    not exactly that many of them."""
    if not isinstance(value, list) or chunk <= 0 or size < 0 or chunk_count(size, chunk) > MAX_CHUNKS:
        return None
    if len(value) != chunk_count(size, chunk) or not all(isinstance(h, str) and _SHA256.match(h) for h in value):
        return None
    return value


def chunked_files(raw: object, staged: Mapping[str, list[int]], chunk: int,
                  problems: list[Problem]) -> dict[str, tuple[list[str], list[int]]]:
    """A node's `chunks` answer ({path: {hashes, sent}}) for the files it `staged` ({path: [size,
    mtime_ns]}, already checked): {path: (hashes, sent)} for the entries that are whole, the rest
    dropped with a problem each. A node is believed only about the files of this job it staged
    now: an entry for any other path is dropped, `hashes` must be one SHA-256 per chunk of the
    staged size and `sent` ascending chunk indices of that file."""
    out: dict[str, tuple[list[str], list[int]]] = {}
    if not isinstance(raw, dict):
        if raw is not None:
            problems.append(Problem("stage_pull.chunks", shown(raw), "a mapping of staged paths"))
        return out
    for rel, entry in raw.items():
        where = f"stage_pull.chunks[{shown(rel)}]"
        if not isinstance(rel, str) or rel not in staged:
            problems.append(Problem(where, shown(entry), "a path the node staged in this answer"))
            continue
        size = staged[rel][0]
        hashes = chunk_hashes(entry.get("hashes") if isinstance(entry, dict) else None, size, chunk)
        if hashes is None:
            problems.append(Problem(f"{where}.hashes", shown(entry), f"one SHA-256 hex digest per {chunk}-byte "
                                    f"chunk of {size} bytes (at most {MAX_CHUNKS})"))
            continue
        sent = entry.get("sent")
        if not (isinstance(sent, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in sent)
                and all(0 <= a < b for a, b in zip(sent, sent[1:])) and (not sent or 0 <= sent[-1] < len(hashes))
                and (not sent or sent[0] >= 0)):
            problems.append(Problem(f"{where}.sent", shown(sent), f"ascending chunk indices below {len(hashes)}"))
            continue
        out[rel] = (hashes, sent)
    return out


def node_hashes(raw: object, listing: Mapping[str, list[int]], chunk: int,
                problems: list[Problem]) -> dict[str, list[str]]:
    """A node's `hashes` answer ({path: [sha256...]}) for the files it listed: entries for paths
    it did not list, or of the wrong count, are dropped with a problem."""
    out: dict[str, list[str]] = {}
    if not isinstance(raw, dict):
        return out
    for rel, value in raw.items():
        hashes = chunk_hashes(value, listing[rel][0], chunk) if isinstance(rel, str) and rel in listing else None
        if hashes is None:
            problems.append(Problem(f"stage_pull.hashes[{shown(rel)}]", shown(value),
                                    "one SHA-256 per chunk of a file the node listed"))
            continue
        out[rel] = hashes
    return out
