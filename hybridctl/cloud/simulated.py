"""The simulated provider, the embedded default: sells the catalog's instance types with spot
prices that drift, per-pool capacity limits, capacity errors, launch delays and preemptions with
a warning ahead. Its instances are real machines (`hybridctl.sim.node`: a real agent behind a real
SSH server on loopback), so everything after the launch is the same code path as a real cloud.

State lives on disk (`<dir>/i/<id>/instance.json`, next to the machine's own files), so another process (a test, a second
controller) sees the same instances, the way two API clients see one cloud."""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import math
import os
import random
import secrets
import signal
import stat
import subprocess
import threading
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from hybridctl.cloud.base import (
    TAG_NODE,
    CapacityError,
    CloudProvider,
    Instance,
    InstanceState,
    LaunchFailed,
    LaunchSpec,
    Notice,
)
from hybridctl.cloud.catalog import Catalog
from hybridctl.core.burst import Offer

DRIFT_PERIOD_S = 6 * 3600.0
"""Spot prices swing around the catalog's with this period (each pool at its own phase)."""


def spot_price(base: float, pool: str, t: float, drift: float, seed: int = 0) -> float:
    """The simulated spot price of `pool` at time `t`: the catalog's, swung by up to ±`drift`."""
    phase = (zlib.crc32(f"{seed}:{pool}".encode()) % 10_000) / 10_000 * 2 * math.pi
    return round(base * (1.0 + drift * math.sin(2 * math.pi * t / DRIFT_PERIOD_S + phase)), 4)


def _machine_dir(path: Path, parents: bool = False, new: bool = False) -> None:
    """Make `path` a directory of this user's that others may pass through (0711) but not list,
    as a server's `/` and `/var/lib` are: the machine's agent runs each job as its owner, in a
    working directory under the machine's state directory, which that user must reach (the
    controller's umask is 077). Its files stay the controller's own (0600). A directory another
    user owns or may write to is refused: its owner could swap in links. With `parents`, the
    directories it makes above it are the same (under umask 077 they would stop everyone else)."""
    if parents and not path.parent.exists():
        _machine_dir(path.parent, parents=True)
    try:
        path.mkdir(0o711)
    except FileExistsError:
        if new:
            raise
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # a link (ELOOP), a file
        raise LaunchFailed(f"cloud.simulated.dir: {path} is not a directory of its own (a link is not followed):"
                           f" {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            mode = stat.S_IMODE(st.st_mode)
            raise LaunchFailed(f"cloud.simulated.dir: {path} belongs to uid {st.st_uid} with mode {mode:04o}; the"
                               f" simulated machines need a directory of this user's (uid {os.geteuid()}) that no one"
                               " else may write to")
        os.fchmod(fd, 0o711)
    finally:
        os.close(fd)


def preempt_after(rate_per_h: float, key: str, seed: int = 0) -> float | None:
    """Seconds after launch at which a machine is reclaimed (exponential, seeded), or None."""
    if rate_per_h <= 0:
        return None
    return random.Random(f"{seed}:{key}").expovariate(rate_per_h / 3600.0)


class SimulatedProvider(CloudProvider):
    """Machines under `root`; see the module docstring."""

    name = "simulated"

    def __init__(
        self,
        root: Path,
        catalog: Catalog,
        *,
        launch_delay: float = 5.0,
        capacity_per_pool: int = 8,
        capacity_errors: Sequence[str] = (),
        preemption_rate_per_h: float = 0.0,
        preemption_warning: float = 120.0,
        price_drift: float = 0.2,
        seed: int = 0,
        agent_interval: float = 1.0,
        regions: Sequence[str] | None = None,
        clock: Callable[[], float] = time.time,
        agent_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.catalog = catalog
        self.launch_delay = launch_delay
        self.capacity_per_pool = capacity_per_pool
        self.capacity_errors = frozenset(capacity_errors)
        self.preemption_rate_per_h = preemption_rate_per_h
        self.preemption_warning = preemption_warning
        self.price_drift = price_drift
        self.seed = seed
        self.agent_interval = agent_interval
        self.regions = regions
        self.clock = clock
        self.agent_config = dict(agent_config or {})
        """Settings of every machine's agent (`cloud.simulated.agent_config`), written to its
        `agent.json`; the machine sets its socket, state dir, name, GPUs and intervals itself."""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        _machine_dir(root, parents=True)
        _machine_dir(root / "i")

    # ---- the port ----------------------------------------------------------------------------

    def offers(self, refresh: bool = False) -> builtins.list[Offer]:
        now = self.clock()
        out = []
        for o in self.catalog.offers(self.name, self.regions):
            if o.spot:
                o = replace(o, price_hourly=spot_price(o.price_hourly, o.pool, now, self.price_drift, self.seed))
            out.append(o)
        return out

    def launch(self, spec: LaunchSpec) -> Instance:
        from hybridctl.sim import node

        offer = spec.offer
        with self._locked():
            if offer.instance_type in self.capacity_errors or f"{offer.zone}/{offer.instance_type}" in self.capacity_errors:
                raise CapacityError(
                    f"simulated: InsufficientInstanceCapacity: no {offer.market} capacity for {offer.instance_type}"
                    f" in {offer.zone} (cloud.simulated.capacity_errors)"
                )
            live = [r for r in self._records() if r["state"] != InstanceState.TERMINATED and r["pool"] == offer.pool]
            if len(live) >= self.capacity_per_pool:
                raise CapacityError(
                    f"simulated: InsufficientInstanceCapacity: {offer.pool} already runs {len(live)} machines"
                    f" (cloud.simulated.capacity_per_pool {self.capacity_per_pool})"
                )
            iid = f"sim-{secrets.token_hex(4)}"
            base = self.root / "i" / iid
            if len(str(base / "agent.sock")) > 100:
                raise LaunchFailed(f"simulated: {base} is too deep for the agent's Unix socket path"
                                   " (about 100 characters at most); set a shorter cloud.simulated.dir")
            _machine_dir(base, new=True)
            now = self.clock()
            # The spot market reclaims; on-demand machines stay until given back.
            after = preempt_after(self.preemption_rate_per_h, spec.name, self.seed) if offer.spot else None
            rec: dict[str, Any] = {
                "id": iid, "name": spec.name, "tags": {**spec.tags, TAG_NODE: spec.name}, "offer": offer.to_dict(),
                "pool": offer.pool, "launched_at": now, "state": InstanceState.PENDING, "reason": "", "pid": None,
                "preempt_at": None if after is None else now + after,
            }
            self._write(rec)
        keys = base / "authorized_keys"
        keys.write_text(spec.ssh_public_key.strip() + "\n")
        gpus = f"{offer.gpus}:{_model(offer.gpu_type)}"
        agent_config = None
        if self.agent_config:
            agent_config = base / "agent.json"
            fd = os.open(agent_config, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(self.agent_config, fh)
        try:
            proc, _info = node.start(base, spec.name, gpus, keys, interval=self.agent_interval,
                                     orphan_timeout=spec.orphan_timeout, agent_config=agent_config)
        except RuntimeError as exc:
            with self._locked():
                rec.update(state=InstanceState.TERMINATED, reason=f"failed to boot: {exc}")
                self._write(rec)
            raise LaunchFailed(f"simulated: machine {iid} did not boot: {exc}") from exc
        with self._locked():
            self._procs[iid] = proc
            rec = self._read(iid) or rec
            rec["pid"] = proc.pid
            if rec["state"] == InstanceState.TERMINATED:  # terminated while booting
                self._stop(rec)
            self._write(rec)
        return self._instance(rec)

    def describe(self, instance_id: str) -> Instance:
        with self._locked():
            rec = self._read(instance_id)
            if rec is None:
                return Instance(instance_id, self.name, "", InstanceState.TERMINATED, reason="unknown instance")
            self._settle(rec)
            return self._instance(rec)

    def list(self, tags: Mapping[str, str]) -> builtins.list[Instance]:
        out = []
        with self._locked():
            for rec in self._records():
                if rec["state"] == InstanceState.TERMINATED or any(rec["tags"].get(k) != v for k, v in tags.items()):
                    continue
                self._settle(rec)
                if rec["state"] != InstanceState.TERMINATED:
                    out.append(self._instance(rec))
        return out

    def terminate(self, instance_id: str) -> None:
        with self._locked():
            rec = self._read(instance_id)
            if rec is None or rec["state"] == InstanceState.TERMINATED:
                return
            rec.update(state=InstanceState.TERMINATED, reason=rec.get("reason") or "terminated")
            self._write(rec)
        self._stop(rec)

    def preemption_notices(self, instance_ids: Sequence[str]) -> builtins.list[Notice]:
        now = self.clock()
        out = []
        with self._locked():
            for iid in instance_ids:
                rec = self._read(iid)
                if rec is None or rec["state"] == InstanceState.TERMINATED or rec.get("preempt_at") is None:
                    continue
                if now >= rec["preempt_at"] - self.preemption_warning:
                    out.append(Notice(iid, rec["preempt_at"]))
        return out

    def preempt(self, instance_id: str, at: float) -> None:
        """Schedule a reclaim of `instance_id` at `at` (notice starts `preemption_warning` before):
        what the market does at `preemption_rate_per_h`, on demand, for tests and demos."""
        with self._locked():
            rec = self._read(instance_id)
            if rec is None or rec["state"] == InstanceState.TERMINATED:
                raise KeyError(f"simulated: no live instance {instance_id}")
            rec["preempt_at"] = at
            self._write(rec)

    def close(self) -> None:
        """Reap machines this process started that have ended (running ones keep running: they are
        instances, not children to clean up)."""
        for iid, proc in list(self._procs.items()):
            rec = self._read(iid)
            if rec is not None and rec["state"] == InstanceState.TERMINATED:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)  # being ended (perhaps by another process): let it finish
            if proc.poll() is not None:
                del self._procs[iid]

    # ---- machines on disk ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One lock across threads and processes sharing `root`."""
        with self._lock:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _records(self) -> builtins.list[dict[str, Any]]:
        out = []
        for d in sorted((self.root / "i").iterdir()):
            rec = self._read(d.name)
            if rec is not None:
                out.append(rec)
        return out

    def _read(self, iid: str) -> dict[str, Any] | None:
        if "/" in iid or iid.startswith("."):
            return None
        try:
            return json.loads((self.root / "i" / iid / "instance.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def _write(self, rec: dict[str, Any]) -> None:
        path = self.root / "i" / rec["id"] / "instance.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, path)

    def _settle(self, rec: dict[str, Any]) -> None:
        """Apply what happened since: a reclaim that came due, a machine that shut itself down."""
        if rec["state"] == InstanceState.TERMINATED:
            return
        now = self.clock()
        if rec.get("preempt_at") is not None and now >= rec["preempt_at"]:
            rec.update(state=InstanceState.TERMINATED, reason="preempted")
            self._write(rec)
            self._stop(rec)
            return
        if rec["pid"] is not None and not self._alive(rec):
            rec.update(state=InstanceState.TERMINATED, reason="the machine shut itself down (orphan timeout or crash)")
            self._write(rec)
            return
        if rec["pid"] is not None and now >= rec["launched_at"] + self.launch_delay and rec["state"] == InstanceState.PENDING:
            rec["state"] = InstanceState.RUNNING
            self._write(rec)

    def _alive(self, rec: dict[str, Any]) -> bool:
        proc = self._procs.get(rec["id"])
        if proc is not None:
            return proc.poll() is None
        import psutil

        try:
            p = psutil.Process(rec["pid"])
            return p.status() != psutil.STATUS_ZOMBIE and str(self.root) in " ".join(p.cmdline())
        except psutil.Error:
            return False

    def _stop(self, rec: dict[str, Any]) -> None:
        """End the machine (its SSH server, agent and jobs), waiting a few seconds for it."""
        pid = rec.get("pid")
        if pid is None or not self._alive(rec):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._alive(rec):
            time.sleep(0.05)
        if self._alive(rec):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        proc = self._procs.pop(rec["id"], None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def _instance(self, rec: dict[str, Any]) -> Instance:
        offer = Offer.from_dict(rec["offer"])
        base = self.root / "i" / rec["id"]
        info: dict[str, Any] = {}
        if rec["state"] == InstanceState.RUNNING:
            with contextlib.suppress(OSError, ValueError):
                info = json.loads((base / "node.json").read_text())
        return Instance(
            id=rec["id"], provider=self.name, name=rec["name"], state=InstanceState(rec["state"]), tags=dict(rec["tags"]),
            instance_type=offer.instance_type, zone=offer.zone, spot=offer.spot, launched_at=rec["launched_at"],
            host="127.0.0.1" if info else "", port=int(info.get("port", 22)), ssh_user="",
            host_key=info.get("host_key", ""), agent_socket=info.get("socket", ""),
            declared_shape=True, reason=rec.get("reason", ""),
        )


def _model(gpu_type: str | None) -> str:
    """The agent's simulated-GPU model ('N:MODEL'): any name without ':'."""
    return (gpu_type or "A100").replace(":", "-")
