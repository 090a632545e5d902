"""The job spec: a SkyPilot-compatible task YAML plus command-line flags, validated into a
`JobSpec` with messages that name the file, the field, the bad value and what is accepted.
Pure; `yaml` is imported only when YAML text is parsed, since `hybridctl submit` imports this."""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hybridctl.core.environment import parse_environment, resolve_environment
from hybridctl.core.errors import SpecError
from hybridctl.core.mounts import parse_file_mounts, resolve_file_mounts
from hybridctl.core.fields import (
    parse_accelerator_candidates,
    parse_accelerators,
    parse_array,
    parse_cpus,
    Dependencies,
    parse_dependency,
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
from hybridctl.core.sbatch import check_slurm_section

__all__ = [
    "apply_flags",
    "load_tasks",
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
     "depends_on", "secrets", "slurm", "environment", "setup_every_attempt", "file_mounts", "preemptible",
     "deadline", "spot_insist"}
)  # fmt: skip
RESOURCE_KEYS = frozenset(
    {"accelerators", "gpus", "cpus", "memory", "use_spot", "job_recovery", "spot_recovery", "any_of", "ordered"}
)  # fmt: skip
# SkyPilot's resources.job_recovery keys, read as max_restarts / recover_on_exit_codes.
JOB_RECOVERY_KEYS = frozenset({"max_restarts_on_errors", "recover_on_exit_codes"})
# SkyPilot task and resources keys (its sky/utils/schemas.py, checked at the corpus's commit, see
# tests/data/skypilot/INDEX.md) that hybridctl accepts and does not act on: each with what hybridctl
# does instead, said in the warning. Keys starting with '_' (SkyPilot's internal ones) are ignored too.
_NOT_MOUNTED = "not mounted: the job sees its node's own filesystem"
SKYPILOT_TOP_KEYS: Mapping[str, str] = {
    "file_mounts_mapping": _NOT_MOUNTED, "volumes": _NOT_MOUNTED,
    "volume_mounts": _NOT_MOUNTED,
    "service": "read only by `sky serve up`; the task runs once as one job, as `sky launch` runs it",
    "config": "SkyPilot's own settings, which do not apply here",
    "event_callback": "not run", "inputs": "not used", "outputs": "not used", "experimental": "not used",
    "api_server_access": "not used",
}  # fmt: skip
_PLACES = "hybridctl picks the node (on-prem, else a cloud offer from its own catalog)"
SKYPILOT_RESOURCE_KEYS: Mapping[str, str] = {
    **dict.fromkeys(("infra", "cloud", "region", "zone", "instance_type", "max_hourly_cost",
                     "labels", "priority_class", "priority"), _PLACES),
    **dict.fromkeys(("disk_size", "disk_tier", "local_disk", "ephemeral_storage", "network_tier",
                     "volumes"), "the node's own disks and network are used"),
    "image_id": "no machine image is booted; only a docker:IMAGE is used (the job runs in it under podman)",
    "ports": "not opened: the job's ports are reachable as far as its node's network allows",
    "accelerator_args": "not used", "autostop": "not used: idle cloud nodes follow cloud.burst.idle_timeout",
}  # fmt: skip
# SkyPilot features hybridctl refuses, by key: the refusal names the feature.
REFUSED_TOP_KEYS: Mapping[str, str] = {
    "pool": "SkyPilot pools (`pool:`, worker pools for `sky jobs launch --pool`)",
    "managed_secrets": "SkyPilot managed secrets (`managed_secrets:`, stored with `sky secrets`)",
}
# Unknown keys whose meaning is plain but which belong elsewhere; tried before difflib.
_HINTS = {
    "": {"gpus": "resources.accelerators", "accelerators": "resources.accelerators",
         "cpus": "resources.cpus", "memory": "resources.memory", "use_spot": "resources.use_spot",
         "env": "envs", "command": "run", "cmd": "run", "timeout": "time_limit",
         "dependency": "depends_on"},
    "resources.": {"gpu": "accelerators", "mem": "memory"},
}  # fmt: skip
# Flags named in errors, where the CLI's name differs from "--" + the key with dashes.
FLAG_NAMES = {"num_nodes": "--nodes", "depends_on": "--dependency", "envs": "--env", "secrets": "--secret"}
_STR, _INT, _FLOAT = (f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float"))
_TYPED = frozenset({_INT, _FLOAT, "tag:yaml.org,2002:bool"})
_RUN = "give the command to run, in the YAML `run:` or after `--` on the command line"
JOB_GROUP_KEYS = frozenset({"primary_tasks", "termination_delay"})
"""Keys of a SkyPilot job group's header document (besides name and execution)."""
PATH_KEYS = ("workdir", "checkpoint_dir")
"""Top-level keys holding a path on the submitter's machine; `resolve_paths` makes them absolute."""


def load_yaml(text: str, source: str) -> dict[str, Any]:
    """YAML text -> its top-level mapping. Syntax errors and duplicate keys name the line. A
    SkyPilot pipeline (several documents) is refused here, naming `load_tasks`' form."""
    tasks = load_tasks(text, source)
    if len(tasks) > 1:
        problem = f"is a SkyPilot pipeline of {len(tasks)} tasks (several YAML documents)"
        raise SpecError("", None, "submit it with `hybridctl submit FILE`, which runs the tasks"
                        " one after the other", source, problem=problem)
    return tasks[0]


def load_tasks(text: str, source: str) -> list[dict[str, Any]]:
    """A job file's tasks, as user-level mappings: one for a task file; for a SkyPilot pipeline
    (several YAML documents: an optional header holding only `name:` (and `execution: serial`),
    then one task per document) each task in order, to run one after the other, each after the
    previous one succeeded (`depends_on`, which the caller fills in). A task without a name takes
    the pipeline's. SkyPilot job groups (`execution: parallel`) are refused by name."""
    docs = [d for d in _load_documents(text, source) if d is not None]
    if not docs:
        raise SpecError(
            "", None, "expected at least 'run: COMMAND'", source, problem="the file is empty"
        )
    if len(docs) == 1:
        return [_mapping(docs[0], "", source)]
    header = docs[0] if isinstance(docs[0], Mapping) else {}
    keys = set(header)
    if header.get("execution") == "parallel" or keys & JOB_GROUP_KEYS:
        raise SpecError("execution", header.get("execution"), "submit each task as its own job, or run"
                        " them as one multi-node job (num_nodes)", source,
                        problem="SkyPilot job groups (tasks run in parallel, `execution: parallel`)"
                        " are not supported by hybridctl")
    name = ""
    if keys and keys <= {"name", "execution"} and "name" in keys:
        if header.get("execution") not in (None, "serial"):
            raise SpecError("execution", header["execution"], "expected serial (a pipeline) or no"
                            " execution key", source)
        name = header["name"] if isinstance(header["name"], str) else ""
        docs = docs[1:]
    tasks = []
    for i, doc in enumerate(docs):
        task = _mapping(doc, f"document {i + 1 + bool(name)}", source)
        if name and task.get("name") is None:
            task["name"] = name
        tasks.append(task)
    return tasks


def _load_documents(text: str, source: str) -> list[Any]:
    """Every YAML document of the text (None for an empty one)."""
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
        # A SafeLoader subclass: no arbitrary objects.
        return list(yaml.load_all(text, Loader=Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        syntax = not isinstance(exc, yaml.constructor.ConstructorError)
        problem = f"YAML {'syntax ' if syntax else ''}error: {exc.problem or exc}"
        raise SpecError(where, None, "", source, problem=problem) from None
    except yaml.YAMLError as exc:  # e.g. a control character in the text
        problem = f"YAML error: {str(exc).splitlines()[0]}"  # the rest is a position dump
        raise SpecError("", None, "", source, problem=problem) from None


def resolve_paths(
    data: Mapping[str, Any],
    *,
    base_dir: str | None,
    home: Callable[[str], str | None],
    source: str = "",
    flags: bool = False,
    cwd: str | None = None,
) -> dict[str, Any]:
    """Make the path keys (`PATH_KEYS`) of a user-level mapping, or of the flags with `flags`,
    absolute as the submitter means them, at submit time: nothing later knows who typed `~`
    or from where. `~` and `~/x` are under `home("")`, the submitter's home; `~name/x` under
    `home("name")`; a relative path is relative to `base_dir` (the job file's directory, or the
    directory the flags were typed in). A relative `workdir` in a file is relative to `cwd`, the
    directory `submit` was typed in, when given (SkyPilot resolves it so: `sky launch` runs
    `os.path.abspath`). Pure: the caller looks homes up (the controller, from
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
        base = cwd if key == "workdir" and cwd and not flags else base_dir
        out[key] = _resolve_path(value, base, home, field, "" if flags else source)
    if not flags and "environment" in out:  # its file is the submitter's too (core/environment.py)
        out["environment"] = resolve_environment(
            out["environment"], lambda path, field: _resolve_path(path, base_dir, home, field, source))
    if not flags and "file_mounts" in out:  # local sources too (core/mounts.py)
        out["file_mounts"] = resolve_file_mounts(
            out["file_mounts"], lambda path, field: _resolve_path(path, base_dir, home, field, source))
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


def parse_spec(
    data: Mapping[str, Any], source: str = "", *, default_use_spot: bool = True, now: float | None = None
) -> tuple[JobSpec, list[str]]:
    """Validate a user-level mapping (SkyPilot task keys plus hybridctl's) into a JobSpec.

    Returns (spec, warnings). A key set to null counts as not given, except `run` and env values.
    `default_use_spot` is the market of a job that does not say `use_spot` (config's
    `cloud.default_market`; SkyPilot's own default is on-demand). `now` is the submit time a
    relative `deadline` counts from (None: checking only; it counts from 0 and a past deadline is
    not refused).
    """
    data = _mapping(data, "", source)
    for key, feature in REFUSED_TOP_KEYS.items():
        if data.get(key) is not None:
            raise SpecError(key, None, "", source, problem=f"{feature} are not supported by hybridctl")
    ignored = _check_keys(data, TOP_KEYS, SKYPILOT_TOP_KEYS, "", source)

    def opt(d: Mapping[str, Any], field: str, parse: Callable[..., Any], default: Any) -> Any:
        """parse(value, field=, source=) if the key is given, else the default."""
        value = d.get(field.rpartition(".")[2])
        return default if value is None else parse(value, field=field, source=source)

    res = _section(data, "resources", source)
    ignored += _check_keys(res, RESOURCE_KEYS, SKYPILOT_RESOURCE_KEYS, "resources.", source)
    if isinstance(res.get("image_id"), str) and res["image_id"].startswith("docker:"):
        ignored.remove("resources.image_id")  # a container image is used, not ignored
    recovery: dict[str, Any] = {}
    for key in ("job_recovery", "spot_recovery"):  # spot_recovery: SkyPilot's deprecated name
        if isinstance(res.get(key), str):  # a bare strategy name ('EAGER_NEXT_REGION'): not ours
            ignored.append(f"resources.{key}")
        elif res.get(key) is not None:
            recovery = _section(res, key, source)
            ignored += _check_keys(recovery, JOB_RECOVERY_KEYS, {"strategy": "recovery is hybridctl's own"},
                                   f"resources.{key}.", source)
    if res.get("job_recovery") is not None and res.get("spot_recovery") is not None:
        raise SpecError("resources.spot_recovery", res["spot_recovery"],
                        "give job_recovery only (spot_recovery is its old name)", source)
    # `spot_insist: true` asks for spot: it allows spot where the config's default market would not.
    resources, more = _resources(res, source, default_use_spot or data.get("spot_insist") is True)
    ignored += more
    warnings = _ignored_warnings(ignored, source)
    mounts, notes = parse_file_mounts(data["file_mounts"], source=source) if data.get("file_mounts") is not None \
        else ({}, [])
    warnings += [f"{source}: {n}" if source else n for n in notes]
    if isinstance(data.get("workdir"), Mapping):
        raise SpecError("workdir", dict(data["workdir"]), "`hybridctl submit FILE` clones it on your machine and"
                        " submits the clone; or give a directory", source,
                        problem="a git workdir ({url, ref}) must be cloned by the submitting client")
    setup = _text(data.get("setup"), field="setup", source=source, allow_empty=True)
    spec = JobSpec(
        run=_run(data.get("run"), source, setup_only=bool(set(data) & {"setup", "resources", "num_nodes"})),
        name=opt(data, "name", _name, ""),
        resources=resources,
        num_nodes=opt(data, "num_nodes", _ranged(1, MAX_NODES), 1),
        envs=parse_env(_section(data, "envs", source), field="envs", source=source),
        setup=setup if setup.strip() else "",
        setup_every_attempt=opt(data, "setup_every_attempt", _bool, False),
        environment=opt(data, "environment", parse_environment, None),
        file_mounts=mounts,
        image=parse_image(res.get("image_id"), source),
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
        depends_on=(deps := opt(data, "depends_on", parse_dependency, Dependencies())).afterok,
        dependencies=deps.others,
        singleton=deps.singleton,
        secrets=_secrets(data, source),
        slurm=check_slurm_section(data.get("slurm"), source),
        preemptible=opt(data, "preemptible", _bool, False),
        deadline=opt(data, "deadline", lambda v, **kw: parse_deadline(v, now=now, **kw), None),
        spot_insist=opt(data, "spot_insist", _bool, False),
    )
    if spec.spot_insist and not spec.resources.use_spot:
        raise SpecError("spot_insist", True, "spot_insist: true needs spot allowed; drop it or resources.use_spot: false",
                        source, problem="true contradicts resources.use_spot: false")
    if spec.singleton and not spec.name:
        raise SpecError("depends_on", "singleton", "a job name too (`name:` or --name): singleton means one job of"
                        " this name and user at a time", source, problem="'singleton' needs a job name")
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
    deadline: str | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Merge command-line flags (None = not given) into a user-level mapping; flags win.

    Returns a new mapping for `parse_spec`. Each flag is checked here so that its error names
    the flag (`--memory: 'lots' is not valid; ...`); the value is stored as typed. `run` is the
    argv after `--`: several words are joined with shlex.join; a single word is kept as a shell
    script, as `ssh host 'a | b'` does. `secrets` are 'NAME=VALUE' (the CLI has already read a
    bare `--secret NAME` from the submitting shell, which only it can see). `--gpus N` keeps the file's GPU type (each
    of its accelerator candidates, with N GPUs) and `--gpu-type T` its count (or 1), replacing candidates. `source` names the file in errors about the file's own values.
    """
    out = dict(data)
    res = _section(out, "resources", source)
    if gpus is not None or gpu_type is not None:
        count, kind = 1, None
        key = "gpus" if res.get("gpus") is not None else "accelerators"
        if res.get(key) is not None:
            cands, ordered = parse_accelerator_candidates(res[key], field=f"resources.{key}", source=source)
            kind, count = cands[0]
            if len(cands) > 1 and gpu_type is None and gpus is not None:
                # --gpus N with the file's candidates: N of each candidate type
                n, flag_kind = parse_accelerators(gpus, field="--gpus")
                if flag_kind is None:
                    names = [f"{t}:{n}" if t else str(n) for t, _ in cands]
                    res.pop("gpus", None)
                    res["accelerators"] = names if ordered else {name: None for name in names}
                    gpus = None
        if gpus is not None:
            count, flag_kind = parse_accelerators(gpus, field="--gpus")
            if flag_kind and gpu_type is not None and flag_kind.lower() != gpu_type.lower():
                accepted = f"it contradicts --gpus {gpus!r}; give the GPU type once"
                raise SpecError("--gpu-type", gpu_type, accepted)
            kind = flag_kind or kind
        if gpu_type is not None:
            kind = parse_gpu_type(gpu_type, field="--gpu-type")
        if gpus is not None or gpu_type is not None:
            res.pop("gpus", None)
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
        (out, "depends_on", depends_on, parse_dependency),
        (out, "workdir", workdir, _text),
        (out, "deadline", deadline, parse_deadline),
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


# The Docker reference grammar (distribution/reference); agents/hybridctl_agent/container.py checks
# the same on the node. No part can start with '-', so no image reads as a podman option.
_IMAGE_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?\Z"
)


def parse_image(value: Any, source: str = "") -> str | None:
    """resources.image_id: `docker:IMAGE` (a container image, run under podman on a node that has
    it) checked against the image reference grammar; any other image_id (a machine image) is
    ignored with a warning, as before. Exit 2 on `docker:--privileged` and the like."""
    if not isinstance(value, str) or not value.startswith("docker:"):
        return None
    ref = value[len("docker:"):]
    if len(ref) > 512 or not _IMAGE_RE.match(ref):
        raise SpecError("resources.image_id", value, "expected docker:[registry[:port]/]name[:tag][@sha256:digest], "
                        "e.g. docker:nvcr.io/nvidia/pytorch:24.05-py3", source)
    return value


def _resources(res: Mapping[str, Any], source: str, default_use_spot: bool) -> tuple[Resources, list[str]]:
    """`resources:` -> Resources, and the SkyPilot keys of `any_of`/`ordered` entries to ignore.

    Accelerator candidates come from `accelerators` (or its alias `gpus`) and from each entry of
    `any_of` (any of them) or `ordered` (in that order); an entry without accelerators of its own
    takes the top level's, as in SkyPilot. Entries may differ in where they run (ignored) and in
    `use_spot` (spot allowed if any allows it), not in cpus or memory, which are per job here."""
    if res.get("accelerators") is not None and res.get("gpus") is not None:
        raise SpecError("resources.gpus", res["gpus"], "give accelerators or gpus (its alias), not both", source)

    def accel(d: Mapping[str, Any], where: str) -> tuple[tuple[tuple[str | None, int], ...], bool]:
        k = "gpus" if d.get("gpus") is not None else "accelerators"
        if d.get(k) is None:
            return (), False
        return parse_accelerator_candidates(d[k], field=f"{where}{k}", source=source)

    top, ordered = accel(res, "resources.")
    cpus = _opt(res, "cpus", "resources.cpus", parse_cpus, Resources.cpus, source)
    memory = _opt(res, "memory", "resources.memory", parse_memory, 0, source)
    spot = _opt(res, "use_spot", "resources.use_spot", _bool, None, source)
    ignored: list[str] = []
    if res.get("any_of") is not None and res.get("ordered") is not None:
        raise SpecError("resources.ordered", res["ordered"], "give any_of or ordered, not both", source)
    group = "ordered" if res.get("ordered") is not None else "any_of"
    entries = res.get(group)
    if entries is not None:
        if not isinstance(entries, list) or not entries:
            raise SpecError(f"resources.{group}", entries, "expected a list of resources mappings, e.g."
                            " '- accelerators: A100:8'", source)
        found: list[tuple[str | None, int]] = []
        spots: list[bool] = []
        for i, entry in enumerate(entries):
            where = f"resources.{group}[{i}]."
            entry = _mapping(entry, where[:-1], source)
            known = RESOURCE_KEYS - {"any_of", "ordered", "job_recovery", "spot_recovery"}
            ignored += [where + k for k in _check_keys(entry, known, SKYPILOT_RESOURCE_KEYS, where, source)]
            for k, field in (("cpus", parse_cpus), ("memory", parse_memory)):
                if entry.get(k) is not None and field(entry[k], field=where + k, source=source) != \
                        (cpus if k == "cpus" else memory):
                    raise SpecError(where + k, entry[k], f"give {k} once, under resources:", source,
                                    problem=f"a {k} per candidate in resources.{group} is not supported")
            got, _ = accel(entry, where)
            for cand in got or top:
                if cand not in found:
                    found.append(cand)
            entry_spot = _opt(entry, "use_spot", where + "use_spot", _bool, None, source)
            spots.append(spot if entry_spot is None else entry_spot)
        top, ordered = tuple(found), group == "ordered" and len(found) > 1
        if any(s is not None for s in spots):
            spot = any(bool(s) for s in spots)
    gpu_type, gpus = top[0] if top else (None, 0)
    resources = Resources(
        gpus=gpus,
        gpu_type=gpu_type,
        cpus=cpus,
        memory_mb=memory,
        use_spot=default_use_spot if spot is None else spot,
        alternatives=top if len(top) > 1 else (),
        ordered=ordered and len(top) > 1,
    )
    return resources, ignored


def _opt(d: Mapping[str, Any], key: str, field: str, parse: Callable[..., Any], default: Any, source: str) -> Any:
    value = d.get(key)
    return default if value is None else parse(value, field=field, source=source)


def _ignored_warnings(ignored: list[str], source: str) -> list[str]:
    """One warning line per thing hybridctl does instead, naming the keys it covers."""
    by_what: dict[str, list[str]] = {}
    for key in ignored:
        last = key.rpartition(".")[2].partition("[")[0]
        table = SKYPILOT_TOP_KEYS if "." not in key else SKYPILOT_RESOURCE_KEYS
        what = table.get(last) or ("SkyPilot internals" if last.startswith("_") else "not used")
        if key.endswith(("job_recovery", "spot_recovery", ".strategy")):
            what = "recovery is hybridctl's own: preemptions always requeue"
        by_what.setdefault(what, []).append(key)
    if not by_what:
        return []
    where = f"{source}: " if source else ""
    parts = "; ".join(f"{', '.join(keys)} ({what})" for what, keys in by_what.items())
    return [f"{where}ignoring SkyPilot keys hybridctl does not act on: {parts}"]


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
    d: Mapping[Any, Any], known: frozenset[str], skypilot: Mapping[str, str], prefix: str, source: str
) -> list[str]:
    """Raise on an unknown key (with a did-you-mean); return the SkyPilot keys to ignore: those of
    `skypilot` and SkyPilot's internal ones (a leading '_')."""
    ignored = []
    for key in d:
        if not isinstance(key, str):
            raise SpecError(f"{prefix}{key}", key, "keys are names", source, problem="is not a key")
        if key in skypilot or (key.startswith("_") and key not in known):
            if d[key] is not None:
                ignored.append(prefix + key)
        elif key not in known:
            import difflib  # only on this error path

            choices = sorted(known | set(skypilot))  # SkyPilot's may be suggested, not listed
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
    if isinstance(raw, list):  # SkyPilot's array form: names of secrets its server stores
        raise SpecError("secrets", raw, "give secrets: {NAME: null} and --secret NAME at submit", source,
                        problem="SkyPilot managed secrets (a list of secret names) are not supported")
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


def _run(value: Any, source: str, setup_only: bool = False) -> str:
    if value is None:
        # SkyPilot runs a task without `run:` to bring a cluster up for later `sky exec` jobs.
        problem = ("is missing: a SkyPilot task without run: only sets up a long-lived cluster for later"
                   " `sky exec` jobs, which hybridctl does not do (no clusters; each job gets its nodes)"
                   if setup_only else "is missing")
        raise SpecError("run", value, _RUN, source, problem=problem)
    if not isinstance(value, str):
        raise SpecError("run", value, "expected a string: the shell script bash runs", source)
    if not value.strip():
        raise SpecError("run", value, _RUN, source, problem="is empty")
    return value


DEADLINE = ("an ISO 8601 time ('2026-12-06T18:00', UTC unless it gives an offset such as '+01:00') or a"
            " duration after submit ('6h', '90m', '1d12h', '+6h'; a bare number is minutes)")


def parse_deadline(value: Any, *, field: str = "deadline", source: str = "", now: float | None = None) -> float:
    """`deadline:` -> seconds since the epoch by which the job should have finished: an absolute
    time, or a duration counted from `now` (the submit time). With `now`, a time already past is
    refused."""
    import datetime as dt

    at: float | None = None
    if isinstance(value, dt.datetime):  # YAML reads an unquoted timestamp itself
        at = (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
    elif isinstance(value, dt.date):
        at = dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc).timestamp()
    elif isinstance(value, str) and value.strip()[:4].isdigit() and value.strip()[4:5] == "-":  # YYYY-...
        try:
            t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise SpecError(field, value, DEADLINE, source) from None
        at = (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()
    elif isinstance(value, bool) or not isinstance(value, (str, int)):
        raise SpecError(field, value, DEADLINE, source)
    else:
        text = value.strip().lstrip("+") if isinstance(value, str) else value
        try:
            at = (now or 0.0) + parse_duration(text, field=field, source=source)
        except SpecError:
            raise SpecError(field, value, DEADLINE, source) from None
    if now is not None and at <= now:
        raise SpecError(field, value, DEADLINE, source, problem=f"{value!r} has already passed")
    return at
