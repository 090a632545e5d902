"""The job spec's `file_mounts:` (SkyPilot's key, COPY meaning): destination on the node -> a
local path on the submitting host or an `s3://` URI, there before the job starts. SkyPilot's
other forms (gs://, r2://, https://, a storage object without `source`, a list of sources) are
accepted and not acted on, with a warning naming the destination, as before. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from hybridctl.core.errors import SpecError

MAX_MOUNTS = 256
_ACCEPTED = "a mapping of node paths to local paths or s3:// URIs"


def _source(value: Any) -> tuple[str | None, str | None]:
    """(source we act on, why not) of one file_mounts value."""
    note = None
    if isinstance(value, Mapping):
        mode = str(value.get("mode") or "COPY").upper()
        if mode != "COPY":
            note = f"mode {mode} is served as COPY (a cached copy on the node)"
        value = value.get("source")
        if not isinstance(value, str):
            return None, "a storage object without one `source` path is not created or mounted"
    if not isinstance(value, str) or not value.strip():
        return None, "not a path or URI"
    scheme, sep, _ = value.partition("://")
    if sep and scheme != "s3":
        return None, f"{scheme}:// is not fetched (local paths and s3:// are)"
    return value, note


def parse_file_mounts(value: Any, *, field: str = "file_mounts",
                      source: str = "") -> tuple[dict[str, str], list[str]]:
    """(dst -> src for the mounts hybridctl makes, notes on the others), checked."""
    if not isinstance(value, Mapping):
        raise SpecError(field, value, _ACCEPTED, source)
    if len(value) > MAX_MOUNTS:
        raise SpecError(field, f"{len(value)} mounts", f"at most {MAX_MOUNTS}", source)
    out: dict[str, str] = {}
    notes: list[str] = []
    for dst, raw in value.items():
        if not isinstance(dst, str) or not dst.strip() or "\0" in dst or "://" in dst:
            raise SpecError(f"{field}.{dst}", dst, "a destination path on the node (absolute, ~/..., or relative"
                            " to the job's working directory)", source, problem="is not a destination path")
        src, why = _source(raw)
        if src is None:
            notes.append(f"{field}.{dst}: {why}: not mounted")
            continue
        if why:
            notes.append(f"{field}.{dst}: {why}")
        out[dst] = src
    return out, notes


def resolve_file_mounts(value: Any, resolve: Callable[[str, str], str]) -> Any:
    """`file_mounts` with each local source made absolute by `resolve(path, field)` (as the
    submitter means it, relative to the job file's directory); the rest as it is."""
    if not isinstance(value, Mapping):
        return value
    out: dict[Any, Any] = {}
    for dst, raw in value.items():
        src = raw.get("source") if isinstance(raw, Mapping) else raw
        if isinstance(src, str) and src.strip() and "://" not in src and not src.startswith("/"):
            src = resolve(src, f"file_mounts.{dst}")
            raw = {**raw, "source": src} if isinstance(raw, Mapping) else src
        out[dst] = raw
    return out


def is_local(src: str) -> bool:
    return "://" not in src
