"""The grammar of single job-spec values: GPUs, memory, durations, arrays, env vars, job ids.
Separate from `spec.py` (which knows the document's keys) so the CLI and config can reuse them;
every parser takes the `field` and `source` its errors should name."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from hybridctl.core.errors import SpecError
from hybridctl.core.model import DEPENDENCY_KINDS, ArraySpec

MAX_ARRAY_TASKS = 100_000
MAX_ARRAY_INDEX = 4_000_000  # Slurm's largest MaxArraySize
MAX_GPUS_PER_NODE = 1024
MAX_CPUS = 100_000
MAX_DURATION_S = 366 * 86400
MAX_MEMORY_MB = 1024**3  # 1 PiB: stops nonsense before it overflows a SQLite integer
PLACEMENTS = ("onprem", "cloud", "any")
RESERVED_ENV_PREFIXES = ("HYBRIDCTL_", "CUDA_VISIBLE_DEVICES")

ACCELERATORS = "expected COUNT or TYPE:COUNT with COUNT a whole number ≥ 0, e.g. 'A100:2' or '2'"
MEMORY = "expected a size such as '32G', '512M' or '1.5T', or a number of GiB (32); '32+' = 32G"
CPUS = f"expected a number of cores above 0 and at most {MAX_CPUS}, e.g. 4, 0.5 or '4+'"
DURATION = (
    "expected a duration such as '90s', '30m', '2h', '1d', '1h30m', 'H:MM:SS' or Slurm's"
    " 'D-HH:MM:SS'; a bare number is minutes, as in Slurm"
)
ARRAY = ("expected FIRST-LAST[:STEP][%MAX_RUNNING], one index, or a list of those with one throttle at the"
         " end, e.g. '1-100%10', '0-15:4', '7' or '1,3,5-7%2'")
ENV_NAME = "a name must match [A-Za-z_][A-Za-z0-9_]*"
DEPENDS_ON = "expected job ids: a list [12, 13], '12,13' or Slurm's 'afterok:12:13'"

_GPU_TYPE = r"[A-Za-z][A-Za-z0-9_.\-]*"
_GPU_TYPE_RE = re.compile(_GPU_TYPE)
_ACCEL_RE = re.compile(rf"(?:(?P<type>{_GPU_TYPE})\s*(?::\s*(?P<count>\d+))?|(?P<bare>\d+))", re.ASCII)
_NUMBER = r"(\d+(?:\.\d+)?|\.\d+)"  # re.ASCII wherever used: '٣' is not 3, and 'K' (Kelvin) is not K
_MEMORY_RE = re.compile(_NUMBER + r"\s*(?:([KMGTP])(?:I?B)?)?\s*\+?", re.IGNORECASE | re.ASCII)
_MIB_PER_UNIT = {"": 1024.0, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2, "P": 1024.0**3}
_CPUS_RE = re.compile(_NUMBER + r"\s*\+?", re.ASCII)
_UNITS_RE = re.compile(r"(?:\d+(?:\.\d+)?\s*[dhms]\s*)+", re.ASCII)
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_ARRAY_RE = re.compile(r"(\d{1,19})(?:-(\d{1,19})(?::(\d{1,19}))?)?(?:%(\d{1,19}))?", re.ASCII)  # task ids
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_RE = re.compile(r"[+-]?[0-9]{1,40}")  # ASCII only ('٣' is not 3); int() refuses past 4300 digits


def parse_accelerators(
    value: Any, *, field: str = "accelerators", source: str = ""
) -> tuple[int, str | None]:
    """'A100:2' -> (2, 'A100'); '2' or 2 -> (2, None); 'A100' -> (1, 'A100'); {'A100': 2} too."""
    one_type = "give one GPU type; hybridctl does not pick among several"
    if isinstance(value, Mapping):  # SkyPilot's {A100: 2}; {A100: null} means 1
        if len(value) != 1:
            raise SpecError(field, dict(value), one_type, source)
        ((kind, count),) = value.items()
        if not isinstance(kind, str) or not _GPU_TYPE_RE.fullmatch(kind):
            raise SpecError(field, dict(value), ACCELERATORS, source)
        count = 1 if count is None else count
        return parse_int(count, field, source, 0, MAX_GPUS_PER_NODE, ACCELERATORS), kind
    if isinstance(value, (list, tuple)):  # SkyPilot's "try these in order"
        raise SpecError(field, value, one_type, source)
    if not isinstance(value, str):
        return parse_int(value, field, source, 0, MAX_GPUS_PER_NODE, ACCELERATORS), None
    m = _ACCEL_RE.fullmatch(value.strip())
    if not m:
        raise SpecError(field, value, ACCELERATORS, source)
    count = int(m["bare"] or m["count"] or 1)
    if count > MAX_GPUS_PER_NODE:
        raise SpecError(
            field, value, f"must be at most {MAX_GPUS_PER_NODE}; {ACCELERATORS}", source
        )
    return count, m["type"]


CANDIDATES = (
    "expected TYPE:COUNT ('A100:8'), a set of candidates '{L4:8, A10G:8}' (any of them), or a list"
    " ['A100:8', 'H100:8'] (in order of preference); COUNT a whole number"
)
_ACCEL_FLOAT_RE = re.compile(rf"\s*(?P<type>{_GPU_TYPE})\s*(?::\s*(?P<count>[0-9.]+))?\s*")


def parse_accelerator_candidates(
    value: Any, *, field: str = "resources.accelerators", source: str = ""
) -> tuple[tuple[tuple[str | None, int], ...], bool]:
    """SkyPilot's `accelerators` in every form -> ((type, count), ...) in order, and whether the
    order is a preference (a list) rather than "any of them" (a set or mapping).

    'A100:8', 'A100' (1), 8 (any model), {A100: 8}, {A100: null} (1), {'L4:8': null, ...} (YAML's
    reading of `{L4:8, A10g:8}`), ['A100:8', 'H100:8'], and the same set or list written as one
    string ("{'V100:1', 'A100:1'}"). 'A100:1.0' is 1. Refused, naming the feature: fractional
    GPUs ('T4:0.5') and TPUs ('tpu-v2-8'), which hybridctl does not schedule.
    """
    ordered = False
    items: list[tuple[Any, Any]]
    if isinstance(value, str) and value.strip()[:1] in "{[" and value.strip():
        text = value.strip()
        ordered = text[0] == "["
        if text[-1] != ("]" if ordered else "}"):
            raise SpecError(field, value, CANDIDATES, source)
        items = [(w.strip().strip("'\""), None) for w in text[1:-1].split(",") if w.strip()]
    elif isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        ordered = True
        items = [(w, None) for w in value]
    else:
        items = [(value, None)]
    if not items:
        raise SpecError(field, value, CANDIDATES, source, problem="names no accelerator")
    out: list[tuple[str | None, int]] = []
    for key, count in items:
        if isinstance(key, bool) or not isinstance(key, (str, int, float)):
            raise SpecError(field, key, CANDIDATES, source)
        if not isinstance(key, str) or key.strip().isdigit():  # a bare count: any model
            if count is not None:
                raise SpecError(field, value, CANDIDATES, source)
            out.append((None, parse_int(key, field, source, 0, MAX_GPUS_PER_NODE, ACCELERATORS)))
            continue
        m = _ACCEL_FLOAT_RE.fullmatch(key)
        if not m or (m["count"] is not None and count is not None):
            raise SpecError(field, key, CANDIDATES, source)
        kind = m["type"]
        if kind.lower().startswith("tpu"):
            accepted = "hybridctl schedules GPUs on its nodes; ask for GPUs, e.g. 'A100:8'"
            raise SpecError(field, key, accepted, source, problem=f"TPUs ({key}) are not supported")
        raw = m["count"] if m["count"] is not None else count
        n = _whole_gpus(1 if raw is None else raw, key, field, source)
        if (kind, n) not in out:
            out.append((kind, n))
    return tuple(out), ordered and len(out) > 1


def _whole_gpus(raw: Any, key: Any, field: str, source: str) -> int:
    """A GPU count: a whole number, written 8, '8', 8.0 or '8.0'; a fraction is refused by name."""
    try:
        number = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number < 0 or number > MAX_GPUS_PER_NODE:
        raise SpecError(field, key, CANDIDATES, source)
    if number != int(number):
        accepted = "hybridctl gives whole GPUs; ask for 1"
        problem = f"fractional GPUs ({key}: {raw}) are not supported" if ":" not in str(key) else \
            f"fractional GPUs ({key}) are not supported"
        raise SpecError(field, key, accepted, source, problem=problem)
    return int(number)


def parse_gpu_type(value: Any, *, field: str = "--gpu-type", source: str = "") -> str:
    """A GPU model name such as 'A100' or 'H100-80GB'."""
    if not isinstance(value, str) or not _GPU_TYPE_RE.fullmatch(value.strip()):
        raise SpecError(field, value, "expected a GPU model such as 'A100' or 'H100-80GB'", source)
    return value.strip()


def parse_memory(value: Any, *, field: str = "memory", source: str = "") -> int:
    """Host memory in MiB, rounded up. A bare number is GiB and 'N+' means N (as in SkyPilot)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        mib = float(value) * 1024
    elif isinstance(value, str) and (m := _MEMORY_RE.fullmatch(value.strip())):
        mib = float(m[1]) * _MIB_PER_UNIT[(m[2] or "").upper()]
    else:
        raise SpecError(field, value, MEMORY, source)
    if not (math.isfinite(mib) and 0 <= mib <= MAX_MEMORY_MB):
        raise SpecError(field, value, f"must be from 0 to 1P; {MEMORY}", source)
    return math.ceil(mib)


def parse_cpus(value: Any, *, field: str = "cpus", source: str = "") -> float:
    """CPU cores, > 0; SkyPilot's '4+' ("at least 4") is taken as 4."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and (m := _CPUS_RE.fullmatch(value.strip())):
        number = float(m[1])
    if number is None or not (math.isfinite(number) and 0 < number <= MAX_CPUS):
        raise SpecError(field, value, CPUS, source)
    return number


def parse_duration(value: Any, *, field: str = "time_limit", source: str = "") -> int:
    """Seconds, rounded up. A bare number (2 or '2') is minutes, as Slurm's --time reads it."""
    seconds: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value * 60
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.isascii() and text.isdigit():  # str.isdigit alone: '٣' is 3, and int('²') raises
            seconds = int(text) * 60
        elif _UNITS_RE.fullmatch(text):
            pairs = re.findall(r"([\d.]+)\s*([dhms])", text)
            seconds = sum(float(n) * _UNIT_S[unit] for n, unit in pairs)
        else:
            seconds = _slurm_time(text)
    if seconds is None:
        raise SpecError(field, value, DURATION, source)
    if not 0 < seconds <= MAX_DURATION_S:
        raise SpecError(field, value, f"must be above 0 and at most 366 days; {DURATION}", source)
    return math.ceil(seconds)


def parse_time_limit(value: Any, *, field: str = "time_limit", source: str = "") -> int | None:
    """parse_duration, or None (no limit) for null, 'unlimited' or 'infinite' (Slurm's words)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _UNLIMITED):
        return None
    return parse_duration(value, field=field, source=source)


_UNLIMITED = ("unlimited", "infinite")


def _slurm_time(text: str) -> int | None:
    """Slurm's MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; None if `text` is none of them."""
    days, _, rest = text.rpartition("-")
    parts = rest.split(":")
    if not text.isascii() or len(parts) > 3 or not all(p.isdigit() for p in parts) or (days and not days.isdigit()):
        return None
    nums = [int(p) for p in parts]
    if days:  # D-HH[:MM[:SS]]
        h, m, s = nums + [0] * (3 - len(nums))
        return None if h >= 24 or m >= 60 or s >= 60 else int(days) * 86400 + h * 3600 + m * 60 + s
    if len(nums) == 2:  # MM:SS
        return None if nums[1] >= 60 else nums[0] * 60 + nums[1]
    if len(nums) == 3:  # HH:MM:SS
        h, m, s = nums
        return None if m >= 60 or s >= 60 else h * 3600 + m * 60 + s
    return None


def parse_array(value: Any, *, field: str = "array", source: str = "") -> ArraySpec:
    """Slurm's --array: '1-100', '1-100%10' (at most 10 at once), '0-15:4', '7', and lists of
    those, '1,3,5-7:2%2' (the throttle once, at the end); in YAML also a list [1, 3, '5-7']."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, str)) and not isinstance(v, bool) for v in value
    ):
        value = ",".join(str(v).strip() for v in value)
    if not isinstance(value, str) or not value.strip():
        raise SpecError(field, value, ARRAY, source)
    text, pct, thr = value.strip().rpartition("%") if "%" in value else (value.strip(), "", "")
    if pct and not re.fullmatch(r"[0-9]{1,19}", thr.strip()):
        raise SpecError(field, value, ARRAY, source)
    throttle = int(thr) if pct else None
    parts: list[tuple[int, int, int]] = []
    for item in text.split(","):
        m = _ARRAY_RE.fullmatch(item.strip())
        if not m or m[4] is not None:
            raise SpecError(field, value, ARRAY, source)
        first = int(m[1])
        last = first if m[2] is None else int(m[2])
        step = 1 if m[3] is None else int(m[3])
        if first > last:
            raise SpecError(field, value, f"FIRST ({first}) is above LAST ({last}); {ARRAY}", source)
        if step < 1:
            raise SpecError(field, value, f"STEP and MAX_RUNNING must be at least 1; {ARRAY}", source)
        if last > MAX_ARRAY_INDEX:
            raise SpecError(field, value, f"indices go up to {MAX_ARRAY_INDEX}; {ARRAY}", source)
        parts.append((first, last, step))
    if throttle == 0:
        raise SpecError(field, value, f"STEP and MAX_RUNNING must be at least 1; {ARRAY}", source)
    tasks = sum((b - a) // s + 1 for a, b, s in parts)
    if tasks > MAX_ARRAY_TASKS:
        raise SpecError(field, value, f"at most {MAX_ARRAY_TASKS} tasks, not {tasks}", source)
    if len(parts) == 1:
        return ArraySpec(*parts[0], throttle)
    return ArraySpec(min(a for a, _, _ in parts), max(b - (b - a) % s for a, b, s in parts), 1, throttle, tuple(parts))


def parse_env(
    items: Iterable[str] | Mapping[str, Any], *, field: str = "--env", source: str = ""
) -> dict[str, str]:
    """['K=V', ...] (flags) or {K: V} (YAML `envs`) -> {K: 'V'}. Values may be str, int, float
    or bool (written 'true'/'false', as in the YAML); null is SkyPilot's "give it with --env"."""
    if isinstance(items, Mapping):
        pairs = list(items.items())
    elif isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise SpecError(
            field, items, "expected NAME: VALUE pairs or a list of 'NAME=VALUE'", source
        )
    else:
        pairs = []
        for item in items:
            if not isinstance(item, str) or "=" not in item:
                raise SpecError(field, item, f"expected NAME=VALUE; {ENV_NAME}", source)
            name, _, text = item.partition("=")
            pairs.append((name, text))
    out: dict[str, str] = {}
    for name, value in pairs:
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            raise SpecError(field, name, ENV_NAME, source)
        where = f"{field}.{name}" if field == "envs" else field
        if name.startswith(RESERVED_ENV_PREFIXES):
            reserved = "HYBRIDCTL_* and CUDA_VISIBLE_DEVICES are reserved: hybridctl sets them"
            raise SpecError(where, name, reserved, source)
        if value is None:  # SkyPilot's mark for "must be given on the command line"
            accepted = f"give it on the command line with --env {name}=VALUE, or a value here"
            raise SpecError(where, value, accepted, source, problem="is null (set with --env)")
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        elif not isinstance(value, str):
            raise SpecError(where, value, "expected a string, a number or true/false", source)
        if "\0" in value:
            raise SpecError(where, value, "a value cannot hold a NUL character", source)
        out[name] = value
    return out


SECRET_SHOWN = "<secret>"
"""How a secret's value appears in anything hybridctl prints: errors, `show`, `--json`."""


def parse_secrets(
    items: Iterable[str] | Mapping[str, Any], *, field: str = "--secret", source: str = ""
) -> dict[str, str | None]:
    """SkyPilot's `secrets:` ({K: V} in YAML) or `--secret K=V` flags -> {K: 'V'}, keeping null
    (the file's "give it on the command line"); `parse_spec` refuses a null left unfilled. Names
    follow the `envs` rules. No error ever shows a value: messages are logged and printed."""
    if isinstance(items, Mapping):
        pairs = list(items.items())
    elif isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise SpecError(field, SECRET_SHOWN, "expected NAME: VALUE pairs or a list of 'NAME=VALUE'", source)
    else:
        pairs = []
        for item in items:
            if not isinstance(item, str) or "=" not in item:
                raise SpecError(field, SECRET_SHOWN, "expected NAME=VALUE, or NAME to take the value "
                                "from your shell's environment", source)
            name, _, text = item.partition("=")
            pairs.append((name, text))
    out: dict[str, str | None] = {}
    for name, value in pairs:
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            raise SpecError(field, name, ENV_NAME, source)
        where = f"{field}.{name}" if field == "secrets" else field
        if name.startswith(RESERVED_ENV_PREFIXES):
            reserved = "HYBRIDCTL_* and CUDA_VISIBLE_DEVICES are reserved: hybridctl sets them"
            raise SpecError(where, name, reserved, source)
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        elif value is not None and not isinstance(value, str):
            raise SpecError(where, SECRET_SHOWN, "expected a string (or null: given with --secret)", source,
                            problem=f"a {type(value).__name__} is not valid")
        if value is not None and "\0" in value:
            raise SpecError(where, SECRET_SHOWN, "a value cannot hold a NUL character", source,
                            problem="holds a NUL character")
        out[name] = value
    return out


def parse_depends_on(value: Any, *, field: str = "depends_on", source: str = "") -> tuple[int, ...]:
    """Job ids from [12, 13], 12, '12,13', 'afterok:12:13' or 'afterok:12,afterok:13'."""
    if value is None:
        return ()
    if isinstance(value, str):
        ids: list[Any] = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            kind, colon, rest = part.partition(":")
            if colon and kind.strip().lower() != "afterok":
                accepted = f"only 'afterok' dependencies are supported; {DEPENDS_ON}"
                raise SpecError(field, value, accepted, source)
            ids += rest.split(":") if colon else [part]
    elif isinstance(value, (list, tuple)):
        ids = list(value)
    else:
        ids = [value]
    out: list[int] = []
    for job in ids:
        job_id = parse_int(job, field, source, 1, 2**63 - 1, DEPENDS_ON)
        if job_id not in out:
            out.append(job_id)
    return tuple(out)


DEPENDENCY = ("expected Slurm's dependency list TYPE:ID[:ID...][,TYPE:ID...] with TYPE one of after, afterany,"
              " afterok, afternotok, or 'singleton', e.g. 'afterany:42:43,afterok:12:13'; or job ids [12, 13]"
              " (afterok)")
_DEP_REFUSED = {
    "aftercorr": "aftercorr (array task to array task) dependencies are not supported",
    "afterburstbuffer": "burst buffers are not modelled",
}


class Dependencies(tuple):  # type: ignore[type-arg]
    """(afterok job ids, ((kind, job id), ...) of the other kinds, singleton) of parse_dependency."""

    __slots__ = ()

    def __new__(cls, afterok: tuple[int, ...] = (), others: tuple[tuple[str, int], ...] = (),
                singleton: bool = False) -> "Dependencies":
        return super().__new__(cls, (afterok, others, singleton))

    @property
    def afterok(self) -> tuple[int, ...]:
        return self[0]  # type: ignore[no-any-return]

    @property
    def others(self) -> tuple[tuple[str, int], ...]:
        return self[1]  # type: ignore[no-any-return]

    @property
    def singleton(self) -> bool:
        return self[2]  # type: ignore[no-any-return]


def parse_dependency(value: Any, *, field: str = "depends_on", source: str = "") -> Dependencies:
    """Slurm's --dependency ('afterany:42:43,afterok:44', 'singleton') or job ids ([12, 13],
    12, '12,13': afterok), also a YAML list mixing both ([12, 'afterany:13']). '?' (any of) and
    '+MINUTES' delays are refused by name."""
    if value is None:
        return Dependencies()
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    afterok: list[int] = []
    others: list[tuple[str, int]] = []
    singleton = False
    for item in items:
        if not isinstance(item, str):
            job_id = parse_int(item, field, source, 1, 2**63 - 1, DEPENDENCY)
            if job_id not in afterok:
                afterok.append(job_id)
            continue
        if "?" in item:
            raise SpecError(field, value, DEPENDENCY, source, problem=repr(item) + ": '?' (any of"
                            " the dependencies) is not supported; ',' (all of them) is")
        for part in filter(None, (p.strip() for p in item.split(","))):
            kind, colon, rest = part.partition(":")
            kind = kind.strip().lower()
            if not colon:
                if kind == "singleton":
                    singleton = True
                    continue
                if not _INT_RE.fullmatch(kind):
                    raise SpecError(field, value, DEPENDENCY, source,
                                    problem=f"{item!r} is not valid" if part == item else
                                    f"{item!r}: {_DEP_REFUSED.get(kind, repr(part) + ' is not a dependency')}")
                kind, rest = "afterok", part
            if kind in _DEP_REFUSED:
                raise SpecError(field, value, DEPENDENCY, source, problem=repr(item) + ": " + _DEP_REFUSED[kind])
            if kind not in DEPENDENCY_KINDS:
                raise SpecError(field, value, DEPENDENCY, source, problem=repr(item) + ": " + f"'{kind}' is not a dependency type")
            for job in rest.split(":"):
                job = job.strip()
                if "+" in job:
                    raise SpecError(field, value, DEPENDENCY, source,
                                    problem=repr(item) + ": " + f"'{job}': a delay after the dependency (+MINUTES) is not supported")
                job = job.split("_", 1)[0]  # 42_7: the whole array 42 (stricter than Slurm's one task)
                job_id = parse_int(job, field, source, 1, 2**63 - 1, DEPENDENCY)
                if kind == "afterok":
                    if job_id not in afterok:
                        afterok.append(job_id)
                elif (kind, job_id) not in others:
                    others.append((kind, job_id))
    return Dependencies(tuple(afterok), tuple(others), singleton)


def format_dependency(afterok: Iterable[int], others: Iterable[tuple[str, int]], singleton: bool) -> str:
    """Slurm's form of a job's dependencies: 'afterok:12:13,afterany:14,singleton' ('' = none)."""
    by_kind: dict[str, list[int]] = {}
    for job_id in afterok:
        by_kind.setdefault("afterok", []).append(job_id)
    for kind, job_id in others:
        by_kind.setdefault(kind, []).append(job_id)
    parts = [kind + "".join(f":{j}" for j in ids) for kind, ids in by_kind.items()]
    return ",".join(parts + (["singleton"] if singleton else []))


EXIT_CODES = "exit codes 0 to 255, e.g. [75, 143] or '75,143'"


def parse_exit_codes(value: Any, *, field: str = "recover_on_exit_codes", source: str = "") -> tuple[int, ...]:
    """Exit codes from [75, 143], 75 or '75,143'; duplicates dropped, order kept."""
    if isinstance(value, str):
        items: list[Any] = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    out: list[int] = []
    for item in items:
        code = parse_int(item, field, source, 0, 255, EXIT_CODES)
        if code not in out:
            out.append(code)
    return tuple(out)


def parse_placement(value: Any, *, field: str = "placement", source: str = "") -> str:
    """'onprem', 'cloud' or 'any' (any case)."""
    if isinstance(value, str) and value.strip().lower() in PLACEMENTS:
        return value.strip().lower()
    raise SpecError(field, value, "expected one of onprem, cloud, any", source)


MAX_JOB_ID = 2**63 - 1
"""The largest job or array task id: SQLite's INTEGER. Beyond it a lookup would overflow."""
JOB_REF = "expected a job id like 42, or an array task like 42_7 (ASCII digits, below 2**63)"
_JOB_REF_RE = re.compile(r"([0-9]{1,19})(?:_([0-9]{1,19}))?")  # [0-9], never \d: '٣' is not 3


def parse_job_ref(value: Any, *, field: str = "JOB", source: str = "") -> tuple[int, int | None]:
    """'42' -> (42, None): the whole job; '42_7' -> (42, 7): one array task; an int is a job id.
    Anything else (another script's digits, a sign, more than 2**63 - 1) is a SpecError."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_JOB_ID:
        return value, None
    m = _JOB_REF_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None or int(m[1]) > MAX_JOB_ID or (m[2] is not None and int(m[2]) > MAX_JOB_ID):
        raise SpecError(field, value, JOB_REF, source)
    return int(m[1]), None if m[2] is None else int(m[2])


def parse_int(
    value: Any, field: str, source: str, lo: int, hi: int, accepted: str | None = None
) -> int:
    """A whole number in lo..hi: an int, a whole float or a decimal string; never a bool."""
    generic = f"expected a whole number from {lo} to {hi}"
    number = value
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        number = int(value)
    if not isinstance(number, int) or isinstance(number, bool):
        raise SpecError(field, value, accepted or generic, source)
    if not lo <= number <= hi:
        bound = f"must be at least {lo}" if number < lo else f"must be at most {hi}"
        raise SpecError(field, value, f"{bound}; {accepted}" if accepted else generic, source)
    return number
