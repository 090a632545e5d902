"""The job spec's `environment:` key: a Python environment named by one defining file, which the
node builds with uv into a per-node cache (agents/hybridctl_agent/envs.py). SkyPilot has no such
key; this one is kept small:

    environment:
      requirements: requirements.txt     # or   pyproject: pyproject.toml   or   uv_lock: uv.lock
      python: "3.12"                     # optional: a version uv can find on the node

A relative path is relative to the job file's directory, as `workdir` is. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

from hybridctl.core.errors import SpecError

KINDS = ("requirements", "pyproject", "uv_lock")
"""The keys that name an environment's defining file; exactly one is given."""
KEYS = (*KINDS, "python")
_ACCEPTED = "give one of requirements:, pyproject:, uv_lock: (a file path) and optionally python: (\"3.12\")"


def parse_environment(value: Any, *, field: str = "environment", source: str = "") -> dict[str, str]:
    """Check the `environment` mapping; return it normalised ({kind: path, "python": v?})."""
    if not isinstance(value, Mapping):
        raise SpecError(field, value, _ACCEPTED, source)
    for key in value:
        if key not in KEYS:
            raise SpecError(f"{field}.{key}", value[key], _ACCEPTED, source, problem="unknown key")
    named = [k for k in KINDS if value.get(k) is not None]
    if len(named) != 1:
        problem = "names no defining file" if not named else f"names {', '.join(named)}: only one may be given"
        raise SpecError(field, dict(value), _ACCEPTED, source, problem=problem)
    out: dict[str, str] = {}
    path = value[named[0]]
    if not isinstance(path, str) or not path.strip() or "\0" in path:
        raise SpecError(f"{field}.{named[0]}", path, "expected a file path", source)
    out[named[0]] = path
    python = value.get("python")
    if python is not None:
        if isinstance(python, (int, float)) and not isinstance(python, bool):
            raise SpecError(f"{field}.python", python, 'quote it, e.g. "3.10" (YAML reads 3.10 as the number 3.1)',
                            source)
        if not isinstance(python, str) or not python or len(python) > 64 or not all(
            c.isalnum() or c in ".+-_" for c in python
        ):
            raise SpecError(f"{field}.python", python, 'expected a Python version such as "3.12"', source)
        out["python"] = python
    return out


IMAGE_RUNTIMES = ("podman",)
"""What the agent runs `image_id: docker:IMAGE` jobs with (agents/hybridctl_agent/container.py);
apptainer and singularity are advertised by nodes but not used yet."""


def image_refusal(image: str, runtimes: Mapping[str, Mapping[str, str]],
                  cloud_runtimes: Sequence[str] = ()) -> str | None:
    """Why a job with `image_id: docker:IMAGE` can never run on this fleet (no node that said
    hello offers podman, and the cloud, if bursting is on, does not either), or None. A fleet
    with no node heard from yet refuses nothing."""
    if not runtimes or any(r in tools for tools in runtimes.values() for r in IMAGE_RUNTIMES):
        return None
    if any(r in cloud_runtimes for r in IMAGE_RUNTIMES):
        return None
    return (f"image_id {image} needs podman on a node, and none of the {len(runtimes)} node(s) has it "
            "(see `hybridctl nodes`; apptainer and singularity are not used yet); install podman there, "
            "list it in cloud.runtimes if the cloud nodes' image has it, or drop image_id to run on the "
            "nodes' own OS")


def resolve_environment(
    value: Any, resolve: Callable[[str, str], str]
) -> Any:
    """The `environment` mapping with its file path made absolute by `resolve(path, field)`;
    anything else is returned as it is, for `parse_environment` to reject."""
    if not isinstance(value, Mapping):
        return value
    out = dict(value)
    for kind in KINDS:
        path = out.get(kind)
        if isinstance(path, str) and path.strip() and not path.startswith("/"):
            out[kind] = resolve(path, f"environment.{kind}")
    return out
