"""The job spec: a SkyPilot-compatible task YAML plus command-line flags, validated into a
`JobSpec` with messages that name the file, the field, the bad value and what is accepted.
Pure; `yaml` is imported only when YAML text is parsed, since `hybridctl submit` imports this."""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hybridctl.core.errors import SpecError
from hybridctl.core.fields import (
    parse_accelerators,
    parse_array,
    parse_cpus,
    parse_depends_on,
    parse_duration,
    parse_env,
    parse_exit_codes,
    parse_gpu_type,
    parse_int,
    parse_memory,
    parse_placement,
    parse_secrets,
    parse_time_limit,
)
from hybridctl.core.model import JobSpec, Resources

__all__ = [
    "apply_flags",
    "load_yaml",
    "parse_accelerators",
    "parse_array",
    "parse_duration",
    "parse_env",
    "parse_memory",
    "parse_spec",
    "resolve_paths",
]

MAX_NODES = 4096
MAX_RESTARTS = 100
PRIORITY_RANGE = (-1000, 1000)

TOP_KEYS = frozenset(
    {"name", "resources", "num_nodes", "envs", "setup", "run", "workdir", "priority",
     "time_limit", "max_restarts", "recover_on_exit_codes", "checkpoint_dir", "placement", "array",
     "depends_on", "secrets"}
)  # fmt: skip
RESOURCE_KEYS = frozenset({"accelerators", "cpus", "memory", "use_spot", "job_recovery"})
# SkyPilot's resources.job_recovery keys, read as max_restarts / recover_on_exit_codes.
JOB_RECOVERY_KEYS = frozenset({"max_restarts_on_errors", "recover_on_exit_codes"})
# SkyPilot task keys (its sky/utils/schemas.py) that hybridctl accepts and ignores, with a warning.
SKYPILOT_TOP_KEYS = frozenset(
    {"file_mounts", "volumes", "config", "service", "event_callback", "inputs",
     "outputs", "experimental", "file_mounts_mapping", "pool"}
)  # fmt: skip
SKYPILOT_RESOURCE_KEYS = frozenset(
    {"infra", "cloud", "region", "zone", "instance_type", "disk_size", "disk_tier", "ports",
     "image_id", "labels", "any_of", "ordered", "spot_recovery", "network_tier",
     "local_disk", "ephemeral_storage", "max_hourly_cost", "accelerator_args", "autostop",
     "priority", "priority_class", "volumes"}
)  # fmt: skip
# Unknown keys whose meaning is plain but which belong elsewhere; tried before difflib.
_HINTS = {
    "": {"gpus": "resources.accelerators", "accelerators": "resources.accelerators",
         "cpus": "resources.cpus", "memory": "resources.memory", "use_spot": "resources.use_spot",
         "env": "envs", "command": "run", "cmd": "run", "timeout": "time_limit",
         "dependency": "depends_on"},
    "resources.": {"gpus": "accelerators", "gpu": "accelerators", "mem": "memory"},
}  # fmt: skip
# Flags named in errors, where the CLI's name differs from "--" + the key with dashes.
FLAG_NAMES = {"num_nodes": "--nodes", "depends_on": "--dependency", "envs": "--env", "secrets": "--secret"}
_STR, _INT, _FLOAT = (f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float"))
_TYPED = frozenset({_INT, _FLOAT, "tag:yaml.org,2002:bool"})
_RUN = "give the command to run, in the YAML `run:` or after `--` on the command line"
PATH_KEYS = ("workdir", "checkpoint_dir")
"""Top-level keys holding a path on the submitter's machine; `resolve_paths` makes them absolute."""


def load_yaml(text: str, source: str) -> dict[str, Any]:
    """YAML text -> its top-level mapping. Syntax errors and duplicate keys name the line."""
    import yaml  # lazily: a flags-only `hybridctl submit` never pays for it

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            # PyYAML keeps the last of two equal keys; two `run:` keys are a mistake, not a merge.
            first: dict[str, int] = {}
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in first:
                        problem = f"duplicate key '{key.value}' (first on line {first[key.value]})"
                        raise yaml.constructor.ConstructorError(None, None, problem, key.start_mark)
                    first[key.value] = key.start_mark.line + 1
            return super().construct_mapping(node, deep)

        def construct_document(self, node: Any) -> Any:
            # YAML 1.1 reads env values 0123, 1.10 and `on` as 83, 1.1 and True: keep their text.
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if key.value == "envs" and isinstance(value, yaml.MappingNode):
                        for _, env in value.value:
                            if isinstance(env, yaml.ScalarNode) and env.tag in _TYPED:
                                env.tag = _STR
            return super().construct_document(node)

        def construct_yaml_int(self, node: Any) -> Any:
            # YAML 1.1 reads 1:30:00 as 5400 (base 60); here it is a time, so keep the text.
            return node.value if ":" in node.value else super().construct_yaml_int(node)

        def construct_yaml_float(self, node: Any) -> Any:
            return node.value if ":" in node.value else super().construct_yaml_float(node)

    Loader.add_constructor(_INT, Loader.construct_yaml_int)
    Loader.add_constructor(_FLOAT, Loader.construct_yaml_float)
    try:
        data = yaml.load(text, Loader=Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        syntax = not isinstance(exc, yaml.constructor.ConstructorError)
        problem = f"YAML {'syntax ' if syntax else ''}error: {exc.problem or exc}"
        raise SpecError(where, None, "", source, problem=problem) from None
    except yaml.YAMLError as exc:  # e.g. a control character in the text
        problem = f"YAML error: {str(exc).splitlines()[0]}"  # the rest is a position dump
        raise SpecError("", None, "", source, problem=problem) from None
    if data is None:
        raise SpecError(
            "", None, "expected at least 'run: COMMAND'", source, problem="the file is empty"
        )
    return _mapping(data, "", source)


def resolve_paths(
    data: Mapping[str, Any],
    *,
    base_dir: str | None,
    home: Callable[[str], str | None],
    source: str = "",
    flags: bool = False,
) -> dict[str, Any]:
    """Make the path keys (`PATH_KEYS`) of a user-level mapping, or of the flags with `flags`,
    absolute as the submitter means them, at submit time: nothing later knows who typed `~`
    or from where. `~` and `~/x` are under `home("")`, the submitter's home; `~name/x` under
    `home("name")`; a relative path is relative to `base_dir` (the job file's directory, or the
    directory the flags were typed in). Pure: the caller looks homes up (the controller, from
    the caller's uid) and passes the directories in. Returns a new mapping; a path that cannot
    be resolved raises SpecError naming the field. Values that are not strings, or blank, are
    left for `parse_spec` / `apply_flags` to reject.
    """
    out = dict(data)
    for key in PATH_KEYS:
        value = out.get(key)
        if not isinstance(value, str) or not value.strip() or posixpath.isabs(value):
            continue
        field = FLAG_NAMES.get(key, "--" + key.replace("_", "-")) if flags else key
        out[key] = _resolve_path(value, base_dir, home, field, "" if flags else source)
    return out


def _resolve_path(
    value: str, base_dir: str | None, home: Callable[[str], str | None], field: str, source: str
) -> str:
    if value.startswith("~"):
        name, _, rest = value[1:].partition("/")
        root = home(name)
        if not root or not posixpath.isabs(root):
            whose = f"user {name!r} has" if name else "you have"
            problem = f"{value!r} cannot be resolved: {whose} no home directory on this host"
            raise SpecError(field, value, "give an absolute path", source, problem=problem)
        return posixpath.normpath(posixpath.join(root, rest))
    if not base_dir or not posixpath.isabs(base_dir):
        problem = f"{value!r} is a relative path, and no directory came with it to resolve it against"
        raise SpecError(field, value, "give an absolute path, or one starting with ~", source, problem=problem)
    return posixpath.normpath(posixpath.join(base_dir, value))


def parse_spec(data: Mapping[str, Any], source: str = "") -> tuple[JobSpec, list[str]]:
    """Validate a user-level mapping (SkyPilot task keys plus hybridctl's) into a JobSpec.

    Returns (spec, warnings). A key set to null counts as not given, except `run` and env values.
    """
    data = _mapping(data, "", source)
    ignored = _check_keys(data, TOP_KEYS, SKYPILOT_TOP_KEYS, "", source)

    def opt(d: Mapping[str, Any], field: str, parse: Callable[..., Any], default: Any) -> Any:
        """parse(value, field=, source=) if the key is given, else the default."""
        value = d.get(field.rpartition(".")[2])
        return default if value is None else parse(value, field=field, source=source)

    res = _section(data, "resources", source)
    ignored += _check_keys(res, RESOURCE_KEYS, SKYPILOT_RESOURCE_KEYS, "resources.", source)
    recovery: dict[str, Any] = {}
    if isinstance(res.get("job_recovery"), str):  # a bare strategy name ('EAGER_NEXT_REGION'): not ours
        ignored.append("resources.job_recovery")
    else:
        recovery = _section(res, "job_recovery", source)
        ignored += _check_keys(recovery, JOB_RECOVERY_KEYS, frozenset({"strategy"}), "resources.job_recovery.", source)
    warnings = []
    if ignored:
        where = f"{source}: " if source else ""
        keys = ", ".join(ignored)
        warnings.append(f"{where}ignoring SkyPilot keys hybridctl does not act on: {keys}")
    gpus, gpu_type = opt(res, "resources.accelerators", parse_accelerators, (0, None))
    resources = Resources(
        gpus=gpus,
        gpu_type=gpu_type,
        cpus=opt(res, "resources.cpus", parse_cpus, Resources.cpus),
        memory_mb=opt(res, "resources.memory", parse_memory, 0),
        use_spot=opt(res, "resources.use_spot", _bool, Resources.use_spot),
    )
    setup = _text(data.get("setup"), field="setup", source=source, allow_empty=True)
    spec = JobSpec(
        run=_run(data.get("run"), source),
        name=opt(data, "name", _name, ""),
        resources=resources,
        num_nodes=opt(data, "num_nodes", _ranged(1, MAX_NODES), 1),
        envs=parse_env(_section(data, "envs", source), field="envs", source=source),
        setup=setup if setup.strip() else "",
        workdir=opt(data, "workdir", _text, None),
        priority=opt(data, "priority", _ranged(*PRIORITY_RANGE), 0),
        time_limit=opt(data, "time_limit", parse_time_limit, None),
        max_restarts=opt(data, "max_restarts", _ranged(0, MAX_RESTARTS),
                         opt(recovery, "resources.job_recovery.max_restarts_on_errors", _ranged(0, MAX_RESTARTS), 0)),
        recover_on_exit_codes=opt(data, "recover_on_exit_codes", parse_exit_codes,
                                  opt(recovery, "resources.job_recovery.recover_on_exit_codes", parse_exit_codes, ())),
        checkpoint_dir=opt(data, "checkpoint_dir", _text, None),
        placement=opt(data, "placement", parse_placement, "any"),
        array=opt(data, "array", parse_array, None),
        depends_on=opt(data, "depends_on", parse_depends_on, ()),
        secrets=_secrets(data, source),
    )
    return spec, warnings


def apply_flags(
    data: Mapping[str, Any],
    *,
    gpus: str | int | None = None,
    gpu_type: str | None = None,
    cpus: str | float | None = None,
    memory: str | int | None = None,
    name: str | None = None,
    priority: str | int | None = None,
    time_limit: str | int | None = None,
    array: str | int | None = None,
    envs: Iterable[str] | None = None,
    run: list[str] | None = None,
    num_nodes: str | int | None = None,
    placement: str | None = None,
    max_restarts: str | int | None = None,
    recover_on_exit_codes: str | None = None,
    depends_on: str | None = None,
    workdir: str | None = None,
    secrets: Iterable[str] | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Merge command-line flags (None = not given) into a user-level mapping; flags win.

    Returns a new mapping for `parse_spec`. Each flag is checked here so that its error names
    the flag (`--memory: 'lots' is not valid; ...`); the value is stored as typed. `run` is the
    argv after `--`: several words are joined with shlex.join; a single word is kept as a shell
    script, as `ssh host 'a | b'` does. `secrets` are 'NAME=VALUE' (the CLI has already read a
    bare `--secret NAME` from the submitting shell, which only it can see). `--gpus N` keeps the file's GPU type and `--gpu-type T`
    its count (or 1). `source` names the file in errors about the file's own values.
    """
    out = dict(data)
    res = _section(out, "resources", source)
    if gpus is not None or gpu_type is not None:
        count, kind = 1, None
        if res.get("accelerators") is not None:
            field = "resources.accelerators"
            count, kind = parse_accelerators(res["accelerators"], field=field, source=source)
        if gpus is not None:
            count, flag_kind = parse_accelerators(gpus, field="--gpus")
            if flag_kind and gpu_type is not None and flag_kind.lower() != gpu_type.lower():
                accepted = f"it contradicts --gpus {gpus!r}; give the GPU type once"
                raise SpecError("--gpu-type", gpu_type, accepted)
            kind = flag_kind or kind
        if gpu_type is not None:
            kind = parse_gpu_type(gpu_type, field="--gpu-type")
        res["accelerators"] = f"{kind}:{count}" if kind else count
    checks: list[tuple[dict[str, Any], str, Any, Callable[..., Any]]] = [
        (res, "cpus", cpus, parse_cpus),
        (res, "memory", memory, parse_memory),
        (out, "name", name, _name),
        (out, "priority", priority, _ranged(*PRIORITY_RANGE)),
        (out, "time_limit", time_limit, parse_time_limit),
        (out, "array", array, parse_array),
        (out, "num_nodes", num_nodes, _ranged(1, MAX_NODES)),
        (out, "placement", placement, parse_placement),
        (out, "max_restarts", max_restarts, _ranged(0, MAX_RESTARTS)),
        (out, "recover_on_exit_codes", recover_on_exit_codes, parse_exit_codes),
        (out, "depends_on", depends_on, parse_depends_on),
        (out, "workdir", workdir, _text),
    ]
    for target, key, value, check in checks:
        if value is not None:
            flag = FLAG_NAMES.get(key, "--" + key.replace("_", "-"))
            check(value, field=flag, source="")
            target[key] = value
    if res:
        out["resources"] = res
    if envs is not None:
        # The file's values are checked by parse_spec: a flag may fill SkyPilot's `KEY: null`.
        merged = _section(out, "envs", source)
        merged.update(parse_env(envs, field=FLAG_NAMES["envs"]))
        out["envs"] = merged
    if secrets is not None:  # as envs: a flag fills the file's `NAME: null`, or overrides its value
        given = _section(out, "secrets", source)
        given.update(parse_secrets(secrets, field=FLAG_NAMES["secrets"]))
        out["secrets"] = given
    if run:  # None, or [] from a bare `--`: keep the file's `run:`
        out["run"] = run[0] if len(run) == 1 else shlex.join(run)
    return out


# ---- helpers ------------------------------------------------------------------------------


def _mapping(value: Any, field: str, source: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    examples = {"resources": "accelerators: A100:2", "envs": "HF_HOME: /data/hf"}
    example = examples.get(field, "run: python train.py")
    problem = f"{'it' if field else 'the top level'} is a {type(value).__name__}, not a mapping"
    raise SpecError(
        field, value, f"expected a mapping such as '{example}'", source, problem=problem
    )


def _section(d: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    """A copy of the mapping under `key`; {} when it is absent or null."""
    value = d.get(key)
    return {} if value is None else _mapping(value, key, source)


def _check_keys(
    d: Mapping[Any, Any], known: frozenset[str], skypilot: frozenset[str], prefix: str, source: str
) -> list[str]:
    """Raise on an unknown key (with a did-you-mean); return the SkyPilot keys to ignore."""
    ignored = []
    for key in d:
        if not isinstance(key, str):
            raise SpecError(f"{prefix}{key}", key, "keys are names", source, problem="is not a key")
        if key in skypilot:
            ignored.append(prefix + key)
        elif key not in known:
            import difflib  # only on this error path

            choices = sorted(known | skypilot)  # SkyPilot's may be suggested, not listed
            hint = _HINTS.get(prefix, {}).get(key.lower())
            same = [c for c in choices if c == key.lower()]
            close = same or difflib.get_close_matches(key.lower(), choices, n=1)
            suggestion = hint or (close[0] if close else "")
            listed = "accepted keys here: " + ", ".join(sorted(known))
            accepted = f"did you mean '{suggestion}'?" if suggestion else listed
            raise SpecError(prefix + key, key, accepted, source, problem="unknown key")
    return ignored


def _secrets(data: Mapping[str, Any], source: str) -> dict[str, str]:
    """The `secrets:` mapping, every value given: a null left (SkyPilot's "required") is refused
    with the flag that fills it. No message names a value."""
    raw = data.get("secrets")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError("secrets", type(raw).__name__, "expected a mapping such as 'HF_TOKEN: null'", source,
                        problem="is not a mapping")
    out = {}
    for name, value in parse_secrets(raw, field="secrets", source=source).items():
        if value is None:
            accepted = (f"give it with --secret {name}=VALUE, or export {name} in your shell and "
                        f"pass --secret {name}")
            raise SpecError(f"secrets.{name}", None, accepted, source, problem="is null and no value was given")
        out[name] = value
    return out


def _ranged(lo: int, hi: int) -> Callable[..., int]:
    def check(value: Any, *, field: str, source: str) -> int:
        return parse_int(value, field, source, lo, hi)

    return check


def _bool(value: Any, *, field: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(field, value, "expected true or false", source)
    return value


def _text(value: Any, *, field: str, source: str, allow_empty: bool = False) -> str:
    """A string (a path, a script); None -> ''. Blank only where `allow_empty`."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SpecError(field, value, "expected a string", source)
    if not allow_empty and not value.strip():
        raise SpecError(field, value, "expected a non-empty string, or leave the key out", source)
    return value


def _name(value: Any, *, field: str, source: str) -> str:
    text = _text(value, field=field, source=source, allow_empty=True)
    if any(ord(c) < 32 for c in text) or len(text) > 200:
        accepted = "expected one line of at most 200 characters, no control characters"
        raise SpecError(field, value, accepted, source)
    return text


def _run(value: Any, source: str) -> str:
    if value is None:
        raise SpecError("run", value, _RUN, source, problem="is missing")
    if not isinstance(value, str):
        raise SpecError("run", value, "expected a string: the shell script bash runs", source)
    if not value.strip():
        raise SpecError("run", value, _RUN, source, problem="is empty")
    return value
