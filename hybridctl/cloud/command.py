"""The command provider: an admin's own scripts create, delete and list instances (Slurm's
ResumeProgram/SuspendProgram, for any other cloud or an internal VM pool). Each script gets one
JSON request on stdin and answers JSON on stdout; the contract is in docs/cloud.md."""

from __future__ import annotations

import builtins
import json
import os
import shlex
import subprocess
from typing import Any, Mapping, Sequence

from hybridctl.cloud.base import (
    TAG_NODE,
    CapacityError,
    CloudError,
    CloudProvider,
    Instance,
    InstanceState,
    LaunchFailed,
    LaunchSpec,
    Notice,
    ProviderUnavailable,
)
from hybridctl.cloud.catalog import Catalog
from hybridctl.core.burst import Offer

EX_TEMPFAIL = 75
"""Exit status of `create` meaning "no capacity now, try another offer" (sysexits.h)."""

_STATES = {"pending": InstanceState.PENDING, "running": InstanceState.RUNNING}
"""What `list` may print as a state; anything else counts as terminated."""


class CommandProvider(CloudProvider):
    """Runs `create`, `delete`, `list` (and optionally `offers`) commands; see the module docstring."""

    name = "command"

    def __init__(self, create: str, delete: str, list_cmd: str, offers_cmd: str = "",
                 catalog: Catalog | None = None, timeout: float = 600.0, ssh_user: str = "",
                 env: Mapping[str, str] | None = None) -> None:
        missing = [k for k, v in (("create", create), ("delete", delete), ("list", list_cmd)) if not v.strip()]
        if missing:
            from hybridctl.config import ConfigError

            raise ConfigError(f"cloud.command: {', '.join(missing)} must name a command (docs/cloud.md)")
        self.commands = {"create": create, "delete": delete, "list": list_cmd, "offers": offers_cmd}
        self.catalog = catalog
        self.timeout = timeout
        self.ssh_user = ssh_user
        self.env = dict(env or {})

    def _run(self, action: str, request: Any) -> tuple[int, Any, str]:
        argv = shlex.split(self.commands[action])
        env = {**os.environ, **self.env, "HYBRIDCTL_ACTION": action}
        try:
            res = subprocess.run(argv, input=json.dumps(request), capture_output=True, text=True,
                                 timeout=self.timeout, env=env)
        except FileNotFoundError as exc:
            raise ProviderUnavailable(f"cloud.command.{action}: {argv[0]} not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise ProviderUnavailable(f"cloud.command.{action}: no answer within {self.timeout:.0f}s") from exc
        err = res.stderr.strip()[-500:]
        if res.returncode != 0:
            return res.returncode, None, err
        try:
            return 0, json.loads(res.stdout) if res.stdout.strip() else None, err
        except ValueError as exc:
            raise ProviderUnavailable(
                f"cloud.command.{action}: stdout is not JSON ({exc}): {res.stdout[:200]!r}") from exc

    def offers(self, refresh: bool = False) -> builtins.list[Offer]:
        if not self.commands["offers"]:
            return self.catalog.offers(self.name) if self.catalog else []
        code, out, err = self._run("offers", {})
        if code != 0 or not isinstance(out, list):
            raise ProviderUnavailable(f"cloud.command.offers failed (exit {code}): {err or out!r}")
        try:
            return [
                Offer(self.name, str(o["instance_type"]), str(o["region"]), str(o.get("zone") or o["region"]),
                      o.get("gpu_type") or None, int(o.get("gpus", 0)), float(o["vcpus"]),
                      int(float(o["memory_gb"]) * 1024), bool(o.get("spot", False)), float(o["price_hourly"]))
                for o in out
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderUnavailable(f"cloud.command.offers: malformed offer ({exc!r}); see docs/cloud.md") from exc

    def launch(self, spec: LaunchSpec) -> Instance:
        o = spec.offer
        request = {
            "name": spec.name, "instance_type": o.instance_type, "region": o.region, "zone": o.zone,
            "spot": o.spot, "tags": {**spec.tags, TAG_NODE: spec.name}, "ssh_public_key": spec.ssh_public_key,
            "orphan_timeout": spec.orphan_timeout,
        }
        code, out, err = self._run("create", request)
        if code == EX_TEMPFAIL:
            raise CapacityError(f"cloud.command.create: no capacity for {o.pool}: {err or 'exit 75'}")
        if code != 0:
            raise LaunchFailed(f"cloud.command.create failed (exit {code}): {err}")
        if not isinstance(out, dict) or not out.get("id"):
            raise LaunchFailed(f"cloud.command.create printed no instance id: {out!r}")
        return self._instance({**request, **out})

    def describe(self, instance_id: str) -> Instance:
        for inst in self._list({}):
            if inst.id == instance_id:
                return inst
        return Instance(instance_id, self.name, "", InstanceState.TERMINATED, reason="not listed by cloud.command.list")

    def list(self, tags: Mapping[str, str]) -> builtins.list[Instance]:
        return [i for i in self._list(tags) if i.alive and all(i.tags.get(k) == v for k, v in tags.items())]

    def _list(self, tags: Mapping[str, str]) -> builtins.list[Instance]:
        code, out, err = self._run("list", {"tags": dict(tags)})
        if code != 0 or not isinstance(out, list):
            raise ProviderUnavailable(f"cloud.command.list failed (exit {code}): {err or out!r}")
        return [self._instance(d) for d in out if isinstance(d, dict) and d.get("id")]

    def terminate(self, instance_id: str) -> None:
        code, _out, err = self._run("delete", {"id": instance_id})
        if code != 0:
            raise CloudError(f"cloud.command.delete {instance_id} failed (exit {code}): {err}")

    def preemption_notices(self, instance_ids: Sequence[str]) -> builtins.list[Notice]:
        wanted = set(instance_ids)
        code, out, _err = self._run("list", {"tags": {}})
        if code != 0 or not isinstance(out, list):
            return []
        return [Notice(str(d["id"]), float(d["preempt_at"])) for d in out
                if isinstance(d, dict) and d.get("id") in wanted and d.get("preempt_at")]

    def _instance(self, d: Mapping[str, Any]) -> Instance:
        tags = {str(k): str(v) for k, v in (d.get("tags") or {}).items()}
        return Instance(
            id=str(d["id"]), provider=self.name, name=str(d.get("name") or tags.get(TAG_NODE, "")),
            state=_STATES.get(str(d.get("state", "pending")), InstanceState.TERMINATED), tags=tags,
            instance_type=str(d.get("instance_type", "")), zone=str(d.get("zone", "")), spot=bool(d.get("spot", True)),
            launched_at=float(d.get("launched_at") or 0.0), host=str(d.get("host") or ""),
            port=int(d.get("port") or 22), ssh_user=str(d.get("ssh_user") or self.ssh_user),
            host_key=str(d.get("host_key") or ""), agent_socket=str(d.get("agent_socket") or ""),
            reason=str(d.get("reason") or ""),
        )
