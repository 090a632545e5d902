"""`hybridctl demo`: a whole lab on one machine, for newcomers and for the tests.

It starts simulated GPU servers (real agents behind real SSH servers on loopback, see
`hybridctl.sim`), a controller with its state in a temporary directory, and a workload generator
that submits a realistic mix fast enough to fill the fleet; then it opens the TUI, or with
`--headless` runs for `--duration` seconds and prints a summary. Everything it started is stopped
and its temporary directory removed on exit, Ctrl-C included."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hybridctl.control.client import Client
from hybridctl.core.errors import HybridctlError
from hybridctl.sim import keys
from hybridctl.sim import node as simnode

MODELS = ["A100", "A100", "L40S", "RTX4090"]


@dataclass
class Lab:
    base: Path
    nodes: int
    gpus: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    controller: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def socket(self) -> Path:
        return self.home / "hybridctl.sock"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(HYBRIDCTL_HOME=str(self.home), HYBRIDCTL_SOCKET=str(self.socket),
                   HYBRIDCTL_CONFIG=str(self.base / "config.yaml"))
        return env

    def start(self, say: Any) -> None:
        key = keys.client_key(self.base / "keys")
        nodes = []
        for i in range(1, self.nodes + 1):
            name = f"node{i:02d}"
            model = MODELS[(i - 1) % len(MODELS)]
            proc, info = simnode.start(self.base / name, name, f"{self.gpus}:{model}", Path(f"{key}.pub"))
            self.procs.append(proc)
            keys.pin(self.home / "known_hosts", info["port"], info["host_key"])
            nodes.append({"name": name, "host": "127.0.0.1", "port": info["port"], "identity": str(key),
                          "agent_socket": info["socket"], "user": _user()})
            say(f"  {name}: {self.gpus}× {model} (agent over SSH on 127.0.0.1:{info['port']})")
        config = {"scheduler": {"tick_seconds": 1.0}, "fleet": {"poll_interval": 0.5}, "nodes": nodes}
        (self.base / "config.yaml").write_text(yaml.safe_dump(config))
        log = open(self.home / "controller.log", "ab")
        self.controller = subprocess.Popen([sys.executable, "-m", "hybridctl.cli.main", "server"], env=self.env(),
                                           stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(self.socket, timeout=5) as c:
                    nodes_up = [n for n in c.call("nodes") if n["state"] == "UP"]
                if len(nodes_up) == self.nodes:
                    break
            except HybridctlError:
                pass
            if self.controller.poll() is not None or time.monotonic() > deadline:
                raise HybridctlError(f"the demo controller did not come up; see {self.home / 'controller.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.controller is not None and self.controller.poll() is None:
            self.controller.terminate()
            try:
                self.controller.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


# ---- workload ------------------------------------------------------------------------------


def _job(rng: random.Random, gpus_per_node: int) -> dict[str, Any]:
    """One job of a lab's mix: mostly short single-GPU experiments, some full-node trainings, sweeps."""
    kind = rng.random()
    secs = rng.randint(4, 15)
    script = (f'echo "job $HYBRIDCTL_JOB_ID on $HYBRIDCTL_NODE, GPUs $CUDA_VISIBLE_DEVICES"; '
              f'for i in $(seq {secs}); do echo "step $i/{secs} loss=$((1000 / i))"; sleep 1; done; echo done')
    if kind < 0.6:
        return {"name": f"exp-{rng.randint(100, 999)}", "resources": {"accelerators": 1}, "run": script}
    if kind < 0.8:
        return {"name": "train-big", "resources": {"accelerators": f"A100:{gpus_per_node}"}, "run": script,
                "priority": 10}
    return {"name": "sweep", "resources": {"accelerators": 1}, "array": f"1-{rng.randint(4, 12)}%4", "run": script}


def workload(lab: Lab, stop: threading.Event, rate_per_min: float, seed: int = 7) -> None:
    rng = random.Random(seed)
    with Client(lab.socket) as c:
        while not stop.is_set():
            try:
                c.call("submit", spec=_job(rng, lab.gpus), source="demo")
            except HybridctlError:
                return  # the controller went away: the demo is ending
            stop.wait(rng.expovariate(rate_per_min / 60.0))


# ---- summary -------------------------------------------------------------------------------


def summary(lab: Lab, started: float) -> dict[str, Any]:
    with Client(lab.socket) as c:
        rows = c.call("queue", all=True, finished=True)
        nodes = c.call("nodes")
        usage = c.call("usage", since=time.time() - started + 1)
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    waits = sorted((r["started_at"] - r["submitted_at"]) for r in rows if r["started_at"])
    onprem_gpus = sum(n["gpus_total"] for n in nodes if n["site"] == "onprem")
    elapsed_h = max(1e-9, (time.time() - started) / 3600)
    gpu_hours = sum(u["gpu_hours"] for u in usage)

    def pct(p: float) -> float | None:
        return round(waits[min(len(waits) - 1, int(p * len(waits)))], 2) if waits else None

    return {
        "jobs_submitted": len({r["job_id"] for r in rows}),
        "tasks": len(rows),
        "succeeded": states.get("SUCCEEDED", 0),
        "failed": states.get("FAILED", 0) + states.get("TIMEOUT", 0),
        "running_at_end": states.get("RUNNING", 0) + states.get("STARTING", 0),
        "pending_at_end": states.get("PENDING", 0),
        "onprem_gpu_utilisation": round(gpu_hours / (onprem_gpus * elapsed_h), 3) if onprem_gpus else 0.0,
        "queue_wait_p50_s": pct(0.5),
        "queue_wait_p95_s": pct(0.95),
        "queue_wait_mean_s": round(statistics.fmean(waits), 2) if waits else None,
        "cloud_nodes_launched": 0,
        "cloud_nodes_terminated": 0,
        "preemptions": 0,
        "recoveries": 0,
        "spent_usd": 0.0,
        "duration_s": round(time.time() - started, 1),
    }


def run(nodes: int = 4, gpus: int = 8, headless: bool = False, duration: float = 60.0, as_json: bool = False,
        rate_per_min: float | None = None, keep: bool = False, readonly: bool = False) -> int:
    base = Path(tempfile.mkdtemp(prefix="hybridctl-demo-"))
    lab = Lab(base, nodes, gpus)
    lab.home.mkdir(parents=True)
    def say(msg: str) -> None:  # progress goes to stderr; stdout carries only the summary
        print(msg, file=sys.stderr, flush=True)

    stop = threading.Event()
    # SIGTERM ends the demo the way Ctrl-C does: through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        say(f"hybridctl demo: state in {base}")
        lab.start(say)
        say(f"controller up. From another shell:\n  HYBRIDCTL_SOCKET={lab.socket} hybridctl queue --all\n"
            f"  HYBRIDCTL_SOCKET={lab.socket} hybridctl submit --gpus 1 -- 'nvidia-smi || echo hello'")
        rate = rate_per_min or nodes * gpus * 4.0  # enough to keep the fleet full
        gen = threading.Thread(target=workload, args=(lab, stop, rate), daemon=True, name="workload")
        started = time.time()
        gen.start()
        if headless:
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                if not as_json:
                    s = summary(lab, started)
                    say(f"  t={s['duration_s']:.0f}s  submitted {s['jobs_submitted']}  running {s['running_at_end']}"
                        f"  pending {s['pending_at_end']}  done {s['succeeded']}  failed {s['failed']}")
            stop.set()
            result = summary(lab, started)
            if as_json:
                print(json.dumps(result, indent=2))
            else:
                for k, v in result.items():
                    print(f"{k:>24}: {v}")
            return 0 if result["failed"] == 0 else 1
        try:
            from hybridctl.tui.app import run as run_tui
        except ImportError:
            say("the TUI is not available in this build; running headless for the duration instead")
            stop.wait(duration)
            return 0
        os.environ["HYBRIDCTL_SOCKET"] = str(lab.socket)
        run_tui(readonly=readonly)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        stop.set()
        lab.stop()
        if keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
