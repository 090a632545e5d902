"""Slurm batch scripts: the `#SBATCH` directives of a script read into the user-level mapping
`core.spec.parse_spec` takes (so `submit --dry-run` can print it as hybridctl YAML), with the
script itself as `run`. Pure: the caller passes the submitter's environment, directory and the
lab's `slurm:` config; a directive hybridctl cannot honour raises SpecError naming it."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hybridctl.core.errors import SpecError
from hybridctl.core.fields import format_dependency, parse_array, parse_dependency, parse_gpu_type, parse_memory

__all__ = ["SlurmSite", "SbatchResult", "is_sbatch", "parse_sbatch", "parse_signal", "check_slurm_section",
           "export_env", "DROPPED_ENV"]

SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP", "QUIT", "ALRM", "CONT", "STOP", "KILL", "URG", "XCPU")
SLURM_KEYS = frozenset({"ntasks_per_node", "cpus_per_task", "signal", "signal_before", "signal_batch",
                        "requeue", "submit_dir", "exclusive", "partition", "qos", "account"})
"""The keys of a spec's `slurm:` section (the facts of a Slurm job the JobSpec has no field for)."""

DROPPED_ENV = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "DISPLAY", "HOSTNAME", "HOST", "TERM",
                         "TERMCAP", "COLORTERM", "STY", "WINDOW", "WINDOWID", "TMUX", "TMUX_PANE",
                         "DBUS_SESSION_BUS_ADDRESS", "SESSION_MANAGER", "KRB5CCNAME", "MAIL",
                         "LS_COLORS", "PS1", "PS2", "PROMPT_COMMAND", "HOME", "USER", "LOGNAME",
                         "SHELL", "CUDA_VISIBLE_DEVICES", "GPG_AGENT_INFO", "XAUTHORITY",
                         "WAYLAND_DISPLAY", "MOTD_SHOWN", "LC_TERMINAL", "LC_TERMINAL_VERSION"})
"""Variables of the submitting shell that describe that shell, that host or that login, not the
job (Slurm's --export=ALL would carry them; on another host they mislead): never exported. HOME,
USER, LOGNAME and SHELL are set by the agent for the account on the node."""
_DROPPED_PREFIXES = ("SSH_", "XDG_", "SLURM_", "SBATCH_", "HYBRIDCTL_", "SKYPILOT_", "BASH_FUNC_")
_SECRET_RE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE_KEY)", re.I)

# Directive -> canonical long name. Short forms as sbatch(1) defines them.
_SHORT = {"J": "job-name", "t": "time", "N": "nodes", "n": "ntasks", "c": "cpus-per-task",
          "o": "output", "e": "error", "p": "partition", "q": "qos", "A": "account", "a": "array",
          "D": "chdir", "d": "dependency", "G": "gpus", "s": "oversubscribe", "C": "constraint",
          "w": "nodelist", "x": "exclude", "L": "licenses", "M": "clusters", "i": "input",
          "k": "no-kill", "m": "distribution", "H": "hold", "W": "wait", "F": "nodefile",
          "B": "extra-node-info", "b": "begin", "S": "core-spec", "Q": "quiet", "v": "verbose",
          "h": "help", "V": "version", "O": "overcommit"}
_FLAGS = frozenset({"requeue", "no-requeue", "exclusive", "get-user-env", "quiet", "verbose",
                    "parsable", "no-kill"})
"""Directives that take no value."""
_ALIASES = {"cluster": "clusters", "workdir": "chdir", "job_name": "job-name", "gpus_per_node": "gpus-per-node"}
_IGNORED = {
    "account": "hybridctl has no accounts; usage is by user and group",
    "mail-type": "hybridctl sends no mail; watch the job with `hybridctl queue` / `show`",
    "mail-user": "hybridctl sends no mail; watch the job with `hybridctl queue` / `show`",
    "open-mode": "--output/--error always append (a requeued job keeps its earlier output)",
    "get-user-env": "the submitter's environment is exported already (--export=ALL)",
    "comment": "comments are not stored",
    "quiet": "", "verbose": "", "parsable": "",
    "wait-all-nodes": "every node of a hybridctl job starts together",
    "kill-on-invalid-dep": "a job whose dependency failed is failed",
    "no-kill": "a job whose node is lost is requeued",
    "nice": "use --qos (mapped to a priority through config) or --priority",
}
_SUPPORTED = frozenset({"job-name", "time", "gres", "gpus", "gpus-per-node", "gpus-per-task",
                        "cpus-per-task", "cpus-per-gpu", "mem", "mem-per-cpu", "mem-per-gpu", "nodes",
                        "ntasks", "ntasks-per-node", "array", "dependency", "output", "error", "chdir",
                        "export", "requeue", "no-requeue", "signal", "exclusive", "partition", "qos"})
_WHY_NOT = {
    "constraint": "node features are not modelled; ask for a GPU type with --gres=gpu:TYPE:N or map a partition to one in config `slurm.partitions`",
    "nodelist": "hybridctl chooses nodes itself; ask for a GPU type or a partition instead",
    "exclude": "hybridctl chooses nodes itself and skips unhealthy ones; drain a bad node with `hybridctl drain`",
    "clusters": "one hybridctl controller is one cluster (no federation)",
    "licenses": "licenses are not modelled",
    "reservation": "reservations are not modelled",
    "begin": "delayed starts are not supported; submit later",
    "deadline": "deadlines are not supported",
    "hold": "held jobs are not supported; submit when ready",
    "ntasks-per-gpu": "give --ntasks-per-node and --gpus-per-node instead",
    "gpu-bind": "GPU binding is not supported; every task of a node sees the node's GPUs",
    "tmp": "local scratch space is not modelled",
    "dependency": "",
}
_TIME_HELP = "Slurm times: MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED"


@dataclass(frozen=True)
class SlurmSite:
    """The lab's `slurm:` config: what a partition and a qos mean here."""

    partitions: Mapping[str, str] = field(default_factory=dict)
    """partition name -> the GPU type a job of that partition asks for (config `slurm.partitions`)."""
    qos: Mapping[str, int] = field(default_factory=dict)
    """qos name -> the job's priority, -1000..1000 (config `slurm.qos`)."""


@dataclass(frozen=True)
class SbatchResult:
    data: dict[str, Any]
    """The user-level spec mapping (parse_spec's input; `submit --dry-run` prints it)."""
    warnings: list[str]
    directives: dict[str, str]
    """Each directive given (canonical long name -> last value), for tests and messages."""


def is_sbatch(text: str) -> bool:
    """A Slurm batch script: starts with `#!` and has an `#SBATCH` line before its first command."""
    return text.startswith("#!") and bool(_directive_lines(text))


def _directive_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text after '#SBATCH') of the directives sbatch reads: those before the
    first line that is neither blank nor a comment."""
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if not s.startswith("#"):
            break
        if s.startswith("#SBATCH") and (len(s) == 7 or s[7] in " \t"):
            out.append((no, s[7:].strip()))
    return out


def _directives(text: str, source: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for no, rest in _directive_lines(text):
        where = f"{source}:{no}" if source else f"line {no}"
        try:
            words = shlex.split(rest, comments=True)
        except ValueError as exc:
            raise SpecError("#SBATCH", rest, f"a directive such as '--time=1:00:00' ({exc})", where) from None
        i = 0
        while i < len(words):
            word = words[i]
            if word.startswith("--"):
                name, eq, value = word[2:].partition("=")
                name = _ALIASES.get(name, name)
                if not eq and name not in _FLAGS:
                    i += 1
                    value = words[i] if i < len(words) else ""
            elif word.startswith("-") and len(word) >= 2:
                name = _SHORT.get(word[1], "-" + word[1])
                value = word[2:].lstrip("=")
                if not value and name not in _FLAGS and name != "overcommit":
                    i += 1
                    value = words[i] if i < len(words) else ""
            else:
                raise SpecError("#SBATCH", word, "an option such as '--time=1:00:00' or '-t 60'", where)
            i += 1
            _check_known(name, value, where)
            opts[name] = value
    return opts


def _check_known(name: str, value: str, where: str) -> None:
    if name in _SUPPORTED or name in _IGNORED:
        return
    why = _WHY_NOT.get(name)
    raise SpecError(
        f"#SBATCH --{name}", value or True,
        why or "remove the line; docs/ARCHITECTURE.md 'Slurm batch scripts' lists the directives hybridctl reads",
        where, problem=f"--{name} is not supported",
    )


def parse_time(value: str, field_: str = "#SBATCH --time", source: str = "") -> int | None:
    """Seconds (None = UNLIMITED) from Slurm's time formats; a bare number is minutes."""
    v = value.strip()
    if v.upper() in ("UNLIMITED", "INFINITE", "-1"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", v)
    if not m:
        raise SpecError(field_, value, _TIME_HELP, source)
    d, a, b, c = m.groups()
    if d is not None:  # D-HH[:MM[:SS]]
        secs = int(d) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        secs = int(a) * 60 + int(b)
    else:  # minutes
        secs = int(a) * 60
    if secs <= 0:
        raise SpecError(field_, value, "a time limit above 0; " + _TIME_HELP, source)
    return secs


def _slurm_mem(value: str, field_: str, source: str) -> int:
    """MiB from Slurm's sizes: a bare number is megabytes; K/M/G/T suffixes, optional B."""
    v = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", v):
        v += "M"
    return parse_memory(v, field=field_, source=source)


def _count(value: str, field_: str, source: str, lo: int = 1) -> int:
    if not re.fullmatch(r"\d+", value.strip()):
        raise SpecError(field_, value, f"a whole number of at least {lo}", source)
    n = int(value)
    if n < lo:
        raise SpecError(field_, value, f"a whole number of at least {lo}", source)
    return n


def _typed_gpus(value: str, field_: str, source: str) -> tuple[str | None, int]:
    """'[type:]N' of --gpus, --gpus-per-node, --gpus-per-task."""
    parts = value.strip().split(":")
    if len(parts) == 1:
        return None, _count(parts[0], field_, source)
    if len(parts) == 2 and parts[0]:
        return parse_gpu_type(parts[0], field=field_, source=source), _count(parts[1], field_, source)
    raise SpecError(field_, value, "[TYPE:]COUNT, e.g. '2' or 'a100:2'", source)


def _gres(value: str, source: str) -> tuple[str | None, int]:
    """--gres=gpu[:type][:N] (N defaults to 1); other generic resources are refused."""
    field_ = "#SBATCH --gres"
    kind, count = None, 0
    for item in filter(None, (p.strip() for p in value.split(","))):
        parts = item.split(":")
        if parts[0] != "gpu":
            raise SpecError(field_, value, "gpu[:TYPE][:COUNT]; hybridctl knows no other generic "
                            f"resource than gpu (not {parts[0]!r})", source)
        if len(parts) == 1:
            t, n = None, 1
        elif len(parts) == 2:
            t, n = (None, _count(parts[1], field_, source)) if parts[1].isdigit() else (parts[1], 1)
        elif len(parts) == 3:
            t, n = parts[1], _count(parts[2], field_, source)
        else:
            raise SpecError(field_, value, "gpu[:TYPE][:COUNT], e.g. 'gpu:a100:2'", source)
        if count:
            raise SpecError(field_, value, "one gpu entry", source)
        kind, count = (None if t is None else parse_gpu_type(t, field=field_, source=source)), n
    return kind, count


def parse_signal(value: str, field_: str = "#SBATCH --signal", source: str = "") -> tuple[str, int, bool]:
    """'[B:]SIG[@SECS]' -> (signal name without SIG, seconds before the limit, batch shell only).
    Slurm's default is 60 seconds."""
    m = re.fullmatch(r"(?:([BR]+):)?(?:SIG)?([A-Za-z0-9]+)(?:@(\d+))?", value.strip())
    accepted = f"[B:]SIGNAL[@SECONDS], e.g. 'USR1@90' or 'B:SIGUSR1@60'; signals: {', '.join(SIGNALS)}"
    if not m:
        raise SpecError(field_, value, accepted, source)
    flags, sig, secs = m.groups()
    sig = sig.upper()
    if sig.isdigit():
        names = {10: "USR1", 12: "USR2", 15: "TERM", 2: "INT", 1: "HUP", 3: "QUIT", 14: "ALRM"}
        sig = names.get(int(sig), sig)
    if sig not in SIGNALS:
        raise SpecError(field_, value, accepted, source)
    if flags and "R" in flags:
        raise SpecError(field_, value, "the R: flag (reservation end) is not supported; " + accepted, source)
    return sig, int(secs) if secs is not None else 60, bool(flags and "B" in flags)


def _dependency(value: str, source: str) -> list[int] | str:
    """--dependency, checked; job ids when all are afterok, else Slurm's form normalized."""
    field_ = "#SBATCH --dependency" if source else "--dependency"
    deps = parse_dependency(value, field=field_, source=source)
    if not deps.others and not deps.singleton:
        return list(deps.afterok)
    return format_dependency(*deps)


def _output_prelude(out: str | None, err: str | None) -> str:
    """Bash that copies the job's stdout/stderr into Slurm's --output/--error files as well (the
    job's hybridctl logs keep them too). Patterns become variables expanded inside the job."""
    def expand(pattern: str) -> str:
        subs = {"j": "${SLURM_JOB_ID}", "J": "${SLURM_JOB_ID}", "A": "${SLURM_ARRAY_JOB_ID}",
                "a": "${SLURM_ARRAY_TASK_ID}", "x": "${SLURM_JOB_NAME}", "u": "${USER}",
                "N": "$(hostname -s)", "n": "${SLURM_NODEID}", "t": "0", "s": "batch", "%": "%"}
        res, i = [], 0
        while i < len(pattern):
            ch = pattern[i]
            if ch == "%" and i + 1 < len(pattern):
                m = re.match(r"%(\d*)([jJAaxuNnts%])", pattern[i:])
                if m:
                    res.append(subs[m[2]])
                    i += len(m[0])
                    continue
            res.append("\\" + ch if ch in '\\$`"' else ch)
            i += 1
        return '"' + "".join(res) + '"'

    lines = ["# hybridctl: Slurm's --output/--error (the job's own logs keep a copy)"]
    if out:
        lines.append(f"exec > >(tee -a {expand(out)})")
    if err:
        lines.append(f"exec 2> >(tee -a {expand(err)} >&2)")
    elif out:
        lines.append("exec 2>&1")
    return "\n".join(lines) + "\n"


def export_env(value: str | None, environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(envs, secrets) the job gets from the submitting shell under Slurm's --export VALUE
    (None = ALL). Variables whose names look like credentials go to `secrets` (never shown)."""
    spec = (value or "ALL").strip()
    items = [p for p in spec.split(",") if p]
    take_all = bool(items) and items[0].upper() == "ALL"
    none = bool(items) and items[0].upper() == "NONE"
    chosen: dict[str, str] = {}
    if take_all:
        chosen = {k: v for k, v in environ.items() if _exportable(k)}
    for item in items[1:] if (take_all or none) else items:
        name, eq, val = item.partition("=")
        if eq:
            chosen[name] = val
        elif name in environ:
            chosen[name] = environ[name]
    envs, secrets = {}, {}
    for k, v in sorted(chosen.items()):
        if "\0" in v or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            continue
        (secrets if _SECRET_RE.search(k) else envs)[k] = v
    return envs, secrets


def _exportable(name: str) -> bool:
    return name not in DROPPED_ENV and not name.startswith(_DROPPED_PREFIXES)


def parse_sbatch(
    text: str,
    *,
    source: str = "",
    submit_dir: str,
    environ: Mapping[str, str] | None = None,
    site: SlurmSite | None = None,
    args: Sequence[str] = (),
) -> SbatchResult:
    """Read a batch script into a spec mapping. `environ` is the submitting shell's environment
    (exported as Slurm's --export=ALL would, less DROPPED_ENV), `submit_dir` its directory (the
    job's working directory unless --chdir), `args` the script's arguments ($1...)."""
    site = site or SlurmSite()
    o = _directives(text, source)
    where = source
    warnings: list[str] = []
    f = lambda name: f"#SBATCH --{name}"  # noqa: E731

    nodes = _count(o["nodes"].split("-")[0], f("nodes"), where) if "nodes" in o else None
    ntasks = _count(o["ntasks"], f("ntasks"), where) if "ntasks" in o else None
    per_node = _count(o["ntasks-per-node"], f("ntasks-per-node"), where) if "ntasks-per-node" in o else None
    if nodes is None:
        nodes = 1 if per_node is None or ntasks is None else max(1, ntasks // per_node)
    if per_node is None:
        per_node = 1 if ntasks is None else math.ceil(ntasks / nodes)
        if ntasks is not None and ntasks % nodes:
            raise SpecError(f("ntasks"), ntasks, f"a multiple of --nodes ({nodes}): hybridctl gives "
                            "every node the same number of tasks", where)
    elif ntasks is not None and ntasks != nodes * per_node:
        raise SpecError(f("ntasks"), ntasks, f"--nodes × --ntasks-per-node ({nodes} × {per_node})", where)
    cpt = _count(o["cpus-per-task"], f("cpus-per-task"), where) if "cpus-per-task" in o else 1

    # GPUs per node, from whichever form the script used (one form only).
    forms = [k for k in ("gres", "gpus", "gpus-per-node", "gpus-per-task") if k in o]
    gpu_type, gpus = None, 0
    if len(forms) > 1 and not (set(forms) == {"gres", "gpus-per-node"}):
        raise SpecError(f(forms[1]), o[forms[1]], f"one way of asking for GPUs; the script also gives --{forms[0]}", where)
    for k in forms:
        if k == "gres":
            gpu_type, gpus = _gres(o[k], where)
        elif k == "gpus-per-node":
            gpu_type, gpus = _typed_gpus(o[k], f(k), where)
        elif k == "gpus-per-task":
            gpu_type, n = _typed_gpus(o[k], f(k), where)
            gpus = n * per_node
        else:
            gpu_type, total = _typed_gpus(o[k], f(k), where)
            if total % nodes:
                raise SpecError(f(k), o[k], f"a multiple of --nodes ({nodes})", where)
            gpus = total // nodes
    if "cpus-per-gpu" in o:
        cpus = _count(o["cpus-per-gpu"], f("cpus-per-gpu"), where) * max(1, gpus)
    else:
        cpus = cpt * per_node
    mem_forms = [k for k in ("mem", "mem-per-cpu", "mem-per-gpu") if k in o]
    if len(mem_forms) > 1:
        raise SpecError(f(mem_forms[1]), o[mem_forms[1]], f"one of --mem, --mem-per-cpu, --mem-per-gpu; the script also gives --{mem_forms[0]}", where)
    memory_mb = 0
    if mem_forms:
        k = mem_forms[0]
        each = _slurm_mem(o[k], f(k), where)
        memory_mb = each * {"mem": 1, "mem-per-cpu": cpus, "mem-per-gpu": max(1, gpus)}[k]
        if k == "mem" and each == 0:
            warnings.append(f"{where}: --mem=0 (all of a node's memory) is read as no memory requirement")

    partition = o.get("partition")
    if partition:
        names = [p for p in partition.split(",") if p]
        mapped = [site.partitions[p] for p in names if p in site.partitions]
        if mapped and mapped[0] and gpus and not gpu_type:
            gpu_type = parse_gpu_type(mapped[0], field=f"config slurm.partitions.{names[0]}")
        if not mapped:
            warnings.append(f"{where}: partition {partition!r} is not in config `slurm.partitions`; "
                            "the job may run on any node")
    priority = None
    if o.get("qos"):
        q = site.qos.get(o["qos"])
        if q is None:
            warnings.append(f"{where}: qos {o['qos']!r} is not in config `slurm.qos`; default priority")
        else:
            priority = int(q)

    data: dict[str, Any] = {}
    name = o.get("job-name") or _script_name(source)
    if name:
        data["name"] = re.sub(r"[^A-Za-z0-9._-]", "-", name)[:63].strip("-.") or "sbatch"
    res: dict[str, Any] = {"cpus": cpus}
    if gpus:
        res["accelerators"] = f"{gpu_type}:{gpus}" if gpu_type else gpus
    if memory_mb:
        res["memory"] = f"{memory_mb}M"
    data["resources"] = res
    if nodes > 1:
        data["num_nodes"] = nodes
    if "time" in o:
        limit = parse_time(o["time"], f("time"), where)
        if limit:
            data["time_limit"] = f"{limit // 3600}:{limit % 3600 // 60:02d}:{limit % 60:02d}"
    if "array" in o:
        parse_array(o["array"], field=f("array"), source=where)
        data["array"] = o["array"]
    if "dependency" in o and o["dependency"]:
        data["depends_on"] = _dependency(o["dependency"], where)
    if priority is not None:
        data["priority"] = priority
    workdir = o.get("chdir") or submit_dir
    data["workdir"] = workdir
    envs, secrets = export_env(o.get("export"), environ or {})
    if envs:
        data["envs"] = envs
    if secrets:
        data["secrets"] = secrets

    slurm: dict[str, Any] = {"ntasks_per_node": per_node, "cpus_per_task": cpt, "submit_dir": submit_dir}
    if "no-requeue" in o or "requeue" in o:  # absent: Slurm's default (JobRequeue=1): scontrol requeue works
        slurm["requeue"] = "no-requeue" not in o
    if "signal" in o:
        sig, before, batch = parse_signal(o["signal"], f("signal"), where)
        slurm.update(signal=sig, signal_before=before, signal_batch=batch)
    if "exclusive" in o:
        slurm["exclusive"] = True  # enforced by the scheduler: its nodes run nothing else meanwhile
    for key in ("partition", "qos", "account"):
        if o.get(key):
            slurm[key] = o[key]
    data["slurm"] = slurm
    for k in sorted(set(o) & set(_IGNORED)):
        if _IGNORED[k]:
            warnings.append(f"{where}: ignoring --{k}: {_IGNORED[k]}")

    prelude = ""
    if o.get("output") or o.get("error"):
        prelude += _output_prelude(o.get("output"), o.get("error"))
    if args:
        prelude += "set -- " + " ".join(shlex.quote(a) for a in args) + "\n"
    data["run"] = prelude + text if prelude else text
    return SbatchResult(data, warnings, o)


def _script_name(source: str) -> str:
    base = source.rsplit("/", 1)[-1]
    return base


def check_slurm_section(value: Any, source: str = "") -> dict[str, Any]:
    """Validate a spec's `slurm:` mapping (written by parse_sbatch, or by hand in a YAML)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError("slurm", value, "a mapping such as {ntasks_per_node: 4, signal: USR1, signal_before: 90}", source)
    out = dict(value)
    unknown = sorted(set(out) - SLURM_KEYS)
    if unknown:
        raise SpecError(f"slurm.{unknown[0]}", out[unknown[0]], "one of " + ", ".join(sorted(SLURM_KEYS)), source,
                        problem="unknown key")
    for key in ("ntasks_per_node", "cpus_per_task"):
        if key in out and (not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1):
            raise SpecError(f"slurm.{key}", out[key], "a whole number of at least 1", source)
    if out.get("signal") is not None:
        sig, _, _ = parse_signal(str(out["signal"]), "slurm.signal", source)
        out["signal"] = sig
        before = out.get("signal_before", 60)
        if not isinstance(before, int) or isinstance(before, bool) or not 0 <= before <= 65535:
            raise SpecError("slurm.signal_before", before, "seconds from 0 to 65535", source)
        out["signal_before"] = before
    for key in ("requeue", "signal_batch", "exclusive"):
        if key in out and not isinstance(out[key], bool):
            raise SpecError(f"slurm.{key}", out[key], "true or false", source)
    return out
