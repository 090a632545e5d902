"""`hybridctl demo`: a whole lab on one machine, for newcomers and for the tests.

It starts simulated GPU servers (real agents behind real SSH servers on loopback, see
`hybridctl.sim`), a controller with its state in a temporary directory and the simulated spot
cloud with a small budget, and a workload generator that submits a realistic mix in waves: each
wave overfills the fleet, so the controller bursts to spot nodes; the market reclaims one of them
(with notice) while it runs a checkpointing job, which resumes elsewhere; between waves the cloud
nodes go idle and are scaled down. Then it opens the TUI, or with `--headless` runs for
`--duration` seconds and prints a summary. Everything it started is stopped and its temporary
directory removed on exit: `q`, `:q` or Ctrl-C in the TUI, Ctrl-C or SIGTERM headless, SIGHUP (a
closed terminal) in both. A TUI that cannot start is an error, never a quiet headless run. A demo
killed outright (SIGKILL, the OOM killer) takes its lab with it but cannot remove its directory:
the next demo of the same user removes it (`sweep_killed`)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import yaml

from hybridctl.control.client import Client
from hybridctl.core.errors import ExitCode, HybridctlError
from hybridctl.sim import keys
from hybridctl.sim import node as simnode

MODELS = ["A100", "A100", "L40S", "RTX4090"]
BUDGET_USD = 25.0
PREFIX = "hybridctl-demo-"
LIVE = "demo.pid"
"""In a running demo's directory: its pid and that process's start time (pids are reused)."""


def _started(pid: int) -> str | None:
    """When process `pid` started (psutil's create time, to 10 ms), or None: gone or unreadable."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.Error, OSError):
        return None


def _end_machines(cloud_dir: Path) -> None:
    """Terminate the simulated spot machines a demo's controller left running (a controller leaves
    rented nodes to the next one, as with a real cloud; a demo's lab has no next one)."""
    if not cloud_dir.is_dir():
        return
    from hybridctl.cloud import catalog
    from hybridctl.cloud.simulated import SimulatedProvider

    market = SimulatedProvider(cloud_dir, catalog.load())
    for inst in market.list({}):
        market.terminate(inst.id)


def sweep_killed(tmp: Path) -> list[Path]:
    """Remove the directories demos of this user left in `tmp` when they were killed outright:
    each `hybridctl-demo-*` that is a real directory of this uid and whose `demo.pid` names a
    process that is gone (or another process with that pid). A running demo's, another user's, a
    link, and one kept with `--keep` (it has no `demo.pid`) are left alone. Their spot machines
    are terminated first. Returns what was removed. Where this process's start time cannot be
    read, nothing is: a running demo could not be told from a killed one."""
    removed: list[Path] = []
    if _started(os.getpid()) is None:
        return removed
    for d in sorted(tmp.glob(PREFIX + "*")):
        try:
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            fd = os.open(d / LIVE, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as f:
                pid, started = f.read().split()
            if _started(int(pid)) == started:
                continue
        except (OSError, ValueError):
            continue
        with contextlib.suppress(Exception):  # a damaged record must not stop the new demo
            _end_machines(d / "cloud")
        shutil.rmtree(d, ignore_errors=True)  # fd-based: never follows a link inside it
        removed.append(d)
    return removed


@dataclass
class DemoLab:
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

    @property
    def cloud_dir(self) -> Path:
        return self.base / "cloud"

    def start(self, say: Any, cloud: bool = True) -> None:
        key = keys.client_key(self.base / "keys")
        nodes = []
        for i in range(1, self.nodes + 1):
            name = f"node{i:02d}"
            model = MODELS[(i - 1) % len(MODELS)]
            proc, info = simnode.start(self.base / name, name, f"{self.gpus}:{model}", Path(f"{key}.pub"),
                                       with_parent=True)
            self.procs.append(proc)
            keys.pin(self.home / "known_hosts", info["port"], info["host_key"])
            # cpus: a server's cores, not this machine's (the agent would report os.cpu_count()).
            nodes.append({"name": name, "host": "127.0.0.1", "port": info["port"], "identity": str(key),
                          "agent_socket": info["socket"], "user": _user(), "cpus": 8 * self.gpus})
            say(f"  {name}: {self.gpus}× {model} (agent over SSH on 127.0.0.1:{info['port']})")
        config: dict[str, Any] = {
            "scheduler": {"tick_seconds": 1.0},
            "fleet": {"poll_interval": 0.5, "checkpoint_sync_interval": 2.0},
            "idle": {"after": 20.0, "util_below": 5.0},  # flag GPU jobs idle for 20 s (a lab: 30 min)
            "nodes": nodes,
        }
        if cloud:
            config["cloud"] = {
                "enabled": True, "providers": ["simulated"], "cluster": "demo", "poll_interval": 1.0,
                "leak_grace": 10.0, "bootstrap_timeout": 60.0, "orphan_timeout": 120.0,
                "preemption_grace": 10.0, "default_market": "spot",  # the demo's market is spot
                "burst": {"after": 4.0, "idle_timeout": 6.0, "max_nodes": 3, "max_hourly_usd": 40.0, "budget_reserve_h": 0.05,
                          "budget_usd": BUDGET_USD, "budget_period": "day"},
                "simulated": {"dir": str(self.cloud_dir), "launch_delay": 1.0, "agent_interval": 1.0,
                              "preemption_rate_per_h": 0.0},
            }
            say(f"  cloud: simulated spot market, up to 3 nodes, budget ${BUDGET_USD:.0f}/day")
        (self.base / "config.yaml").write_text(yaml.safe_dump(config))
        log = open(self.home / "controller.log", "ab")
        # The lab ends with the demo, even one killed with SIGKILL (its rented machines end by
        # their orphan timeout): a lab left behind would hold ports and CPUs with no one to stop it.
        self.controller = subprocess.Popen([sys.executable, "-m", "hybridctl.cli.main", "server"], env=self.env(),
                                           stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
                                           preexec_fn=simnode.ends_with_parent())
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
                # Quote the log: the state directory, the log with it, is removed on the way out.
                tail = (self.home / "controller.log").read_text(errors="replace").splitlines()[-15:]
                raise HybridctlError("the demo controller did not come up; the end of its log:\n  " + "\n  ".join(tail))
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
        _end_machines(self.cloud_dir)


def _tui() -> Callable[..., int]:
    """The TUI's entry point, checked before the lab starts: a demo that cannot show its TUI says
    why and exits non-zero instead of quietly running without it (which once hid a TUI that no
    longer imported)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise HybridctlError("the demo's TUI needs a terminal, and stdin or stdout is not one; "
                             "run `scripts/demo --headless --duration 60` to run the demo without it")
    try:
        from hybridctl.tui.app import main
    except ImportError as exc:
        raise HybridctlError(f"the TUI cannot start: {exc}; `scripts/demo --headless` runs the demo without it") \
            from exc
    return main


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


# ---- workload ------------------------------------------------------------------------------


def _script(steps: int) -> str:
    """A training-like job: one step a second, a checkpoint after each step, resumed from it when the
    job is requeued (a spot reclaim), and saved on SIGTERM."""
    return f"""ckpt="$HYBRIDCTL_CHECKPOINT_DIR/step"
i=$(cat "$ckpt" 2>/dev/null || echo 0)
trap 'echo "SIGTERM at step $i: checkpoint saved"; echo $i > "$ckpt"; exit 143' TERM
echo "job $HYBRIDCTL_JOB_ID (attempt $HYBRIDCTL_ATTEMPT) on $HYBRIDCTL_NODE, GPUs $CUDA_VISIBLE_DEVICES"
[ "$i" -gt 0 ] && echo "resumed from step $i"
while [ "$i" -lt {steps} ]; do
  i=$((i + 1)); echo "step $i/{steps} loss=$((1000 / i))"
  # what `from hybridctl import job; job.log(step=..., loss=...)` writes, from bash
  [ -n "$HYBRIDCTL_METRICS_FILE" ] && printf '{{"v":{{"step":%d,"loss":%d,"tokens_per_s":%d}}}}\n' \
    "$i" "$((1000 / i))" "$((2000 + RANDOM % 500))" >> "$HYBRIDCTL_METRICS_FILE"
  sleep 1; echo "$i" > "$ckpt"
done
echo done
"""


def _job(rng: random.Random, gpus_per_node: int) -> dict[str, Any]:
    """One job of a lab's mix: mostly short single-GPU experiments, some full-node trainings, sweeps,
    and now and then a 2-node job."""
    kind = rng.random()
    # A time limit, as a lab's jobs have: the burst policy prices what a cloud node will run from it
    # (without one it must assume an hour, and the demo's small budget would pace every burst out).
    job: dict[str, Any] = {"run": _script(rng.randint(4, 15)), "max_restarts": 3, "time_limit": "2m"}
    if kind < 0.6:
        return {**job, "name": f"exp-{rng.randint(100, 999)}", "resources": {"accelerators": 1}}
    if kind < 0.75:
        return {**job, "name": "train-big", "resources": {"accelerators": f"A100:{gpus_per_node}"}, "priority": 10}
    if kind < 0.8:
        return {**job, "name": "ddp-2node", "num_nodes": 2, "resources": {"accelerators": 2}}
    if kind < 0.83:  # holds a GPU and forgets it (the simulated GPU stays at 0 %): flagged idle
        return {"name": "notebook", "run": "echo 'a notebook left open'; sleep 90",
                "resources": {"accelerators": 1}, "envs": {"SIMULATED_GPU_UTIL": "0"}, "placement": "onprem",
                "time_limit": "2m"}
    return {**job, "name": "sweep", "resources": {"accelerators": 1}, "array": f"1-{rng.randint(4, 8)}%4"}


GPUS_PER_JOB = 0.6 * 1 + 0.15 * 8 + 0.05 * 4 + 0.03 * 1 + 0.17 * 6
"""GPUs per submitted job on average (the mix above with 8-GPU servers; arrays of ~6 tasks)."""
SECONDS_PER_JOB = 10.5


def rate(lab: DemoLab, t: float, wave: float, cycle: float) -> float:
    """Jobs per minute at `t` seconds into the demo: waves that overfill the fleet (a burst), then a
    calm that leaves it part-idle (cloud nodes scale down)."""
    capacity = lab.nodes * lab.gpus * 60.0 / (SECONDS_PER_JOB * GPUS_PER_JOB)  # jobs/min the fleet absorbs
    return capacity * (1.5 if t % cycle < wave else 0.3)


def workload(lab: DemoLab, stop: threading.Event, wave: float, cycle: float, fixed_rate: float | None = None,
             seed: int = 7) -> None:
    rng = random.Random(seed)
    started = time.monotonic()
    with Client(lab.socket) as c:
        while not stop.is_set():
            try:
                c.call("submit", spec=_job(rng, lab.gpus), source="demo")
            except HybridctlError:
                return  # the controller went away: the demo is ending
            per_min = fixed_rate or rate(lab, time.monotonic() - started, wave, cycle)
            stop.wait(rng.expovariate(per_min / 60.0))


def spot_market(lab: DemoLab, stop: threading.Event, say: Any, every: float, notice: float = 8.0,
                ran: float = 4.0) -> None:
    """The spot market reclaims a cloud node, with `notice`, once a job on it has run `ran` seconds
    (long enough to have written and synced a checkpoint); then again every `every` seconds at most.
    A reclaim that caught none of those jobs (they ended before the controller acted on the notice,
    as can happen on a slow machine) does not count: the market reclaims another node, so the demo
    shows a job that moves and resumes from its checkpoint."""
    from hybridctl.cloud import catalog
    from hybridctl.cloud.simulated import SimulatedProvider

    market = SimulatedProvider(lab.cloud_dir, catalog.load())
    last = float("-inf")
    reclaimed: tuple[str, float, set[tuple[int, int]]] | None = None  # (instance, when, its seasoned tasks)
    try:
        with Client(lab.socket) as c:
            while not stop.wait(1.0):
                instances = c.call("cloud_status")["instances"]
                live = {i["instance_id"] for i in instances if i["state"] in ("up", "draining")}
                if reclaimed is not None and reclaimed[0] not in live:  # given back: did it catch one?
                    caught = {(e["job_id"], e["task"]) for e in _events(c, reclaimed[1]) if e["to"] == "PREEMPTED"}
                    if not caught & reclaimed[2]:
                        last = float("-inf")
                    reclaimed = None
                now = time.monotonic()
                if reclaimed is not None or now - last < every:
                    continue
                seasoned: dict[str, set[tuple[int, int]]] = {}  # node -> its tasks that have run `ran` s
                for r in c.call("queue", all=True, states=["RUNNING"]):
                    if r["started_at"] and time.time() - r["started_at"] >= ran:
                        for node in (r["nodes"] or "").split(","):
                            seasoned.setdefault(node, set()).add((r["job_id"], r["task"]))
                for i in instances:
                    if i["state"] == "up" and i["node"] in seasoned:
                        market.preempt(i["instance_id"], time.time() + notice)
                        say(f"  spot market: reclaiming {i['node']} in {notice:.0f}s (its jobs checkpoint and move)")
                        last, reclaimed = now, (i["instance_id"], time.time() - 1, seasoned[i["node"]])
                        break
    except HybridctlError:
        return  # the controller went away: the demo is ending


# ---- summary -------------------------------------------------------------------------------


def _events(c: Client, since: float) -> list[dict[str, Any]]:
    """Every job state change since `since`, oldest first (the audit log pages newest first)."""
    out: list[dict[str, Any]] = []
    before = None
    for _ in range(1000):  # bounded: 10k events a page
        page = c.call("events", limit=10000, **({"before_id": before} if before is not None else {}))
        out += [e for e in page if e["time"] >= since]
        if len(page) < 10000 or page[-1]["time"] < since:
            break
        before = page[-1]["id"]
    return out[::-1]


def summary(lab: DemoLab, started: float) -> dict[str, Any]:
    with Client(lab.socket) as c:
        rows = c.call("queue", all=True, finished=True)
        nodes = c.call("nodes")
        usage = c.call("usage", since=time.time() - started + 1)
        events = _events(c, started - 1)
        cloud = c.call("cloud_status", all=True)
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    waits = sorted((r["started_at"] - r["submitted_at"]) for r in rows if r["started_at"])
    onprem = {n["name"] for n in nodes if n["site"] == "onprem"}
    onprem_gpus = sum(n["gpus_total"] for n in nodes if n["site"] == "onprem")
    elapsed_h = max(1e-9, (time.time() - started) / 3600)
    gpu_hours = sum(u["gpu_hours"] for u in usage)  # all sites: an upper bound for on-prem alone
    preempted: set[tuple[int, int]] = set()
    recovered: set[tuple[int, int]] = set()
    for e in events:
        key = (e["job_id"], e["task"])
        if e["to"] == "PREEMPTED":
            preempted.add(key)
        elif e["to"] == "RUNNING" and key in preempted:
            recovered.add(key)
    resumed = 0
    with Client(lab.socket) as c:
        for job_id, task in sorted(recovered):
            ref = f"{job_id}_{task}" if task else str(job_id)
            with contextlib.suppress(HybridctlError):
                resumed += "resumed from step" in c.call("logs", job=ref, offset=0, max_bytes=4096)["data"]
    instances = cloud.get("instances", [])
    ended = [i for i in instances if i["state"] == "terminated"]

    def pct(p: float) -> float | None:
        return round(waits[min(len(waits) - 1, int(p * len(waits)))], 2) if waits else None

    return {
        "jobs_submitted": len({r["job_id"] for r in rows}),
        "tasks": len(rows),
        "succeeded": states.get("SUCCEEDED", 0),
        "failed": states.get("FAILED", 0) + states.get("TIMEOUT", 0),
        "running_at_end": states.get("RUNNING", 0) + states.get("STARTING", 0),
        "pending_at_end": states.get("PENDING", 0),
        "onprem_nodes": len(onprem),
        "onprem_gpu_utilisation": round(min(1.0, gpu_hours / (onprem_gpus * elapsed_h)), 3) if onprem_gpus else 0.0,
        "queue_wait_p50_s": pct(0.5),
        "queue_wait_p95_s": pct(0.95),
        "queue_wait_mean_s": round(statistics.fmean(waits), 2) if waits else None,
        "cloud_nodes_launched": sum(1 for i in instances if i["state"] != "failed"),
        "cloud_nodes_terminated": len(ended),
        "scale_downs": sum(1 for i in ended if "idle" in i["reason"]),
        "preemptions": len(preempted),
        "recoveries": len(recovered),
        "resumed_from_checkpoint": resumed,
        "spent_usd": round(float(cloud.get("spent_usd") or 0.0), 4),
        "budget_usd": cloud.get("budget_usd"),
        "duration_s": round(time.time() - started, 1),
    }


def run(nodes: int = 4, gpus: int = 8, headless: bool = False, duration: float = 60.0, as_json: bool = False,
        rate_per_min: float | None = None, keep: bool = False, readonly: bool = False, cloud: bool = True) -> int:
    tui = None if headless else _tui()
    swept = sweep_killed(Path(tempfile.gettempdir()))
    base = Path(tempfile.mkdtemp(prefix=PREFIX))
    born = _started(os.getpid())
    if born is not None:  # what sweep_killed reads
        (base / LIVE).write_text(f"{os.getpid()} {born}\n")
    lab = DemoLab(base, nodes, gpus)
    lab.home.mkdir(parents=True)
    def say(msg: str) -> None:  # progress goes to stderr; stdout carries only the summary
        print(msg, file=sys.stderr, flush=True)

    stop = threading.Event()
    # SIGTERM and SIGHUP end the demo the way Ctrl-C does: through the finally below. While the
    # TUI runs it takes them over (it must restore the terminal first) and gives them back.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        if swept:
            say(f"hybridctl demo: removed {len(swept)} {'directory' if len(swept) == 1 else 'directories'} left by"
                f" killed demos: {', '.join(map(str, swept))}")
        say(f"hybridctl demo: state in {base}")
        lab.start(say, cloud=cloud)
        say(f"controller up. From another shell:\n  HYBRIDCTL_SOCKET={lab.socket} hybridctl queue --all\n"
            f"  HYBRIDCTL_SOCKET={lab.socket} hybridctl submit --gpus 1 -- 'nvidia-smi || echo hello'")
        # Headless: one wave over the first third, so the run ends with the cloud scaled down.
        # In the TUI: a wave every two minutes.
        wave, cycle = (duration / 3, float("inf")) if headless else (45.0, 120.0)
        started = time.time()
        threads = [threading.Thread(target=workload, args=(lab, stop, wave, cycle, rate_per_min), daemon=True,
                                    name="workload")]
        if cloud:
            threads.append(threading.Thread(target=spot_market, args=(lab, stop, say, 1e9 if headless else 120.0),
                                            daemon=True, name="spot-market"))
        for t in threads:
            t.start()
        if headless:
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
                if not as_json:
                    s = summary(lab, started)
                    say(f"  t={s['duration_s']:.0f}s  submitted {s['jobs_submitted']}  running {s['running_at_end']}"
                        f"  pending {s['pending_at_end']}  done {s['succeeded']}  failed {s['failed']}"
                        f"  cloud nodes {s['cloud_nodes_launched'] - s['cloud_nodes_terminated']}"
                        f"  ${s['spent_usd']:.2f}")
            stop.set()
            result = summary(lab, started)
            if as_json:
                print(json.dumps(result, indent=2))
            else:
                for k, v in result.items():
                    print(f"{k:>24}: {v}")
            return 0 if result["failed"] == 0 else 1
        os.environ["HYBRIDCTL_SOCKET"] = str(lab.socket)
        assert tui is not None  # checked before the lab started
        return tui(readonly=readonly)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    finally:
        # Cleanup is bounded (DemoLab.stop waits 20 s at most per process, then kills): let it finish
        # rather than be cut short by an impatient second Ctrl-C or the terminal closing.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        stop.set()
        with contextlib.suppress(OSError):  # stderr may be a terminal that has gone away
            say("hybridctl demo: stopping the lab and removing its state...")
        lab.stop()
        if keep:
            with contextlib.suppress(OSError):
                (base / LIVE).unlink()  # kept on purpose: not a later demo's to remove
            with contextlib.suppress(OSError):
                say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
