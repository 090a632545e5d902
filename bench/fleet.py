"""Fleet benchmark: real OpenSSH sshd on loopback, real `hybridctl-agent` processes with simulated
GPUs, a real `hybridctl server`, and ratios against baselines measured in the same run.

    .venv/bin/python bench/fleet.py [--no-slurm] [--quick] [--profile] [--json FILE] [--keep]

Groups:
  1. dispatch latency on an idle 1-node fleet: wall time just before `hybridctl submit` runs ->
     the job's own `date +%s.%N`, one job at a time; p50/p95, broken down with the job's events
     (PENDING = the controller has it, STARTING = placed, RUNNING = the agent reported the job's
     bash started).
     Reference: `python -c pass` (the CLI's interpreter floor) and, with Slurm up, sbatch -> the
     job's own `date`, the same way.
     Then cancel latency: `hybridctl cancel` of a running job -> its process gone on the node, and
     -> its GPU free again in `nodes` (reference: the 1 s poll a cancel used to wait for).
  2. throughput: 200 trivial 1-GPU jobs (`true`) through ONE node with 8 simulated GPUs over SSH,
     first submit -> all SUCCEEDED (polled every 0.1 s, like the Slurm harness's squeue loop), with
     `scheduler.tick_seconds: 1` and the default `fleet.poll_interval` (1 s; the job watcher's
     long poll is what makes it event-driven), then with `poll_interval: 0.2`. Submits go over one
     persistent API connection (the request `hybridctl submit --gpus 1 -- true` sends); the full run
     also does a bash loop of 200 `hybridctl submit` processes (the Slurm harness's own shape).
     Reference: the Slurm harness's step d (`STEPS=d REPS=1 ND=200 bench.sh`), default and
     `SCHED_PARAMS=batch_sched_delay=0`.
  3. controller load with N nodes (10, 50, 200; --quick: 10, 50) at 1 Hz: N agents
     (`--interval 1`) behind a few sshd processes with 16 `Port` lines each (OpenSSH's
     MAX_LISTEN_SOCKS), nodes added through the API in parallel; time until all N are UP with
     telemetry; then the controller's CPU (% of one core, psutil cpu_times over the window) and RSS,
     next to a 0-node controller measured over the SAME window, the agents' and sshd's total CPU.
     Telemetry freshness: every node's `telemetry.time` in `nodes` must be recent.

Everything started here (sshd, agents, job supervisors, controllers, Slurm) is stopped at the end,
also on failure or Ctrl-C. --profile runs the group-2 (poll 1 s) and the largest group-3 controller
under cProfile and prints the top functions (the CPU figures of a profiled run are inflated).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hybridctl.control.client import Client  # noqa: E402  (stdlib only)

from _common import T0, BenchError, Results, cpu_s, fmt_x, print_table, say, verdict, wait_for  # noqa: E402

PY = sys.executable
_script = Path(PY).parent / "hybridctl"
HYB = [str(_script)] if _script.exists() else [PY, "-m", "hybridctl.cli.main"]
AGENT = [PY, "-m", "hybridctl_agent.cli"]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SLURM_DIR = Path(os.environ.get("SLURM_PEER_DIR", ROOT.parent / "shared" / "peers" / "slurm"))
SLURM_BENCH_DIR = Path(os.environ.get("BENCH_DIR", "/tmp/slurmbench"))
# What `submit --gpus 1 --cpus 0.25 -- true` sends. The agent reports os.cpu_count() CPUs (2 here) and
# every job asks for 1 CPU by default, so without --cpus only 2 of the 8 GPUs could be busy at once;
# 0.25 lets 8 run, like the Slurm harness's OverSubscribe=FORCE:8.
SPEC = {"resources": {"accelerators": 1, "cpus": 0.25}, "run": "true"}
LISTEN_MAX = 16  # OpenSSH's MAX_LISTEN_SOCKS: Port lines per sshd process
GPUS = "8:A100"


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


# ---- everything this run starts, for cleanup ------------------------------------------------


class Reaper:
    """Processes started here. `stop_all` ends them by pid (process group where they got their own
    session), then any leftover whose command line names this run's base directory (job
    supervisors and their bash: they detach from the agent on purpose)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: list[tuple[subprocess.Popen[bytes], bool]] = []

    def add(self, p: subprocess.Popen[bytes], group: bool) -> subprocess.Popen[bytes]:
        self.procs.append((p, group))
        return p

    @staticmethod
    def end(p: subprocess.Popen[bytes], group: bool, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
        if p.poll() is not None:
            return
        try:
            kids = psutil.Process(p.pid).children(recursive=True)
        except psutil.Error:
            kids = []
        try:
            if group:
                os.killpg(p.pid, sig)
            else:
                p.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL) if group else p.kill()
            except (ProcessLookupError, PermissionError):
                pass
            p.wait(timeout=10)
        for k in kids:
            try:
                k.kill()
            except psutil.Error:
                pass

    def stop_all(self) -> None:
        for p, group in reversed(self.procs):
            try:
                self.end(p, group, wait=5.0)
            except Exception as exc:  # keep cleaning up
                say(f"cleanup: pid {p.pid}: {exc!r}")
        self.procs.clear()
        me = os.getpid()
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid != me and str(self.base) in " ".join(p.info["cmdline"] or []):
                    p.kill()
            except psutil.Error:
                pass


# ---- sshd: a few processes, 16 ports each -----------------------------------------------------


def pick_ports(n: int) -> list[int]:
    """n free loopback ports below the ephemeral range (so outgoing connections cannot take them
    between this check and sshd's bind)."""
    try:
        lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    out: list[int] = []
    start = random.randrange(10000, max(10001, lo - 4 * n - 1000))
    port = start
    while len(out) < n:
        if port >= lo:
            raise BenchError("no free ports below the ephemeral range")
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                out.append(port)
            except OSError:
                pass
        port += 1
    return out


class SshdPool:
    """sshd processes on 127.0.0.1 accepting `client_key` for root; each listens on <= 16 ports."""

    def __init__(self, base: Path, client_key: Path, reaper: Reaper) -> None:
        self.base = base
        self.key = client_key
        self.reaper = reaper
        self.procs: list[subprocess.Popen[bytes]] = []
        base.mkdir(parents=True, exist_ok=True)
        self.host_key = base / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        self.auth = base / "authorized_keys"
        self.auth.write_text(Path(f"{client_key}.pub").read_text())
        self.auth.chmod(0o600)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)

    def start(self, ports: list[int]) -> None:
        for i in range(0, len(ports), LISTEN_MAX):
            self._one(ports[i:i + LISTEN_MAX])
        wait_for(lambda: all(self._listening(p) for p in ports), 60, f"sshd on {len(ports)} ports")

    def _one(self, ports: list[int]) -> None:
        k = len(self.procs)
        cfg = self.base / f"sshd_config.{k}"
        cfg.write_text("\n".join([
            *(f"Port {p}" for p in ports), "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.auth}", f"PidFile {self.base / f'sshd.{k}.pid'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "MaxStartups 400:30:800", "LogLevel ERROR",
            "AllowStreamLocalForwarding yes", "AllowTcpForwarding local", "X11Forwarding no", "PrintMotd no",
            "PermitUserEnvironment no", "UseDNS no",
        ]) + "\n")
        log = open(self.base / f"sshd.{k}.log", "ab")
        p = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self.reaper.add(p, group=False)
        self.procs.append(p)

    def _listening(self, port: int) -> bool:
        for k, p in enumerate(self.procs):
            if p.poll() is not None:
                raise BenchError(f"sshd {k} exited: {(self.base / f'sshd.{k}.log').read_text()[-1500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def all_procs(self) -> list[psutil.Process]:
        out = []
        for p in self.procs:
            try:
                pp = psutil.Process(p.pid)
                out += [pp, *pp.children(recursive=True)]
            except psutil.Error:
                pass
        return out


# ---- agents -----------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> Path:
        return self.dir / "a.sock"


def start_agents(nodes: list[Node], reaper: Reaper, interval: float = 1.0) -> float:
    """Start the agents, wait for every socket; return the seconds it took."""
    t = time.perf_counter()
    for n in nodes:
        n.dir.mkdir(parents=True, exist_ok=True)
        log = open(n.dir / "agent.log", "ab")
        n.proc = subprocess.Popen(
            [*AGENT, "serve", "--socket", str(n.sock), "--state-dir", str(n.dir / "state"), "--simulate-gpus", GPUS,
             "--name", n.name, "--interval", str(interval)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        reaper.add(n.proc, group=True)

    def ready() -> bool:
        for n in nodes:
            assert n.proc is not None
            if n.proc.poll() is not None:
                raise BenchError(f"agent {n.name} exited: {(n.dir / 'agent.log').read_text()[-1500:]}")
        return all(n.sock.exists() for n in nodes)

    wait_for(ready, 120 + len(nodes), f"{len(nodes)} agent sockets", interval=0.1)
    return time.perf_counter() - t


# ---- a controller -----------------------------------------------------------------------------


class Ctl:
    def __init__(self, base: Path, name: str, config: dict[str, Any], reaper: Reaper,
                 profile: Path | None = None) -> None:
        self.dir = base / name
        self.dir.mkdir(parents=True)
        self.home = self.dir / "home"
        self.sock = self.dir / "c.sock"
        self.cfg = self.dir / "config.yaml"
        self.cfg.write_text(json.dumps(config))  # JSON is YAML
        self.reaper = reaper
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ, HYBRIDCTL_HOME=str(self.home), HYBRIDCTL_SOCKET=str(self.sock),
                        HYBRIDCTL_CONFIG=str(self.cfg))

    def start(self) -> Ctl:
        log = open(self.dir / "controller.log", "ab")
        prof = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        self.proc = subprocess.Popen([PY, *prof, "-m", "hybridctl.cli.main", "server"], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.reaper.add(self.proc, group=True)
        wait_for(self._ping, 60, f"controller {self.dir.name} (log: {self.dir / 'controller.log'})")
        self.ps = psutil.Process(self.proc.pid)
        return self

    def _ping(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"controller exited {self.proc.returncode}: {self.log_tail()}")
        try:
            with Client(self.sock, timeout=30) as c:
                c.call("ping")
            return True
        except Exception:
            return False

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.dir / "controller.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def client(self, timeout: float = 120) -> Client:
        return Client(self.sock, timeout=timeout)

    def call(self, op: str, **args: Any) -> Any:
        with self.client() as c:
            return c.call(op, **args)

    def rss_kb(self) -> int:
        return self.ps.memory_info().rss // 1024

    def stop(self) -> None:
        if self.proc is not None:
            Reaper.end(self.proc, group=True, wait=30.0)


def add_nodes(ctl: Ctl, nodes: list[Node], key: Path, parallel: int = 16) -> list[float]:
    """`node add --accept-new` for every node through the API, `parallel` requests at a time;
    returns each call's seconds."""
    def one(n: Node) -> float:
        t = time.perf_counter()
        with ctl.client(timeout=300) as c:
            c.call("node_add", name=n.name, host="127.0.0.1", port=n.port, identity=str(key),
                   agent_socket=str(n.sock), accept_new=True)
        return time.perf_counter() - t

    with ThreadPoolExecutor(max(1, min(parallel, len(nodes)))) as ex:
        return list(ex.map(one, nodes))


def telemetry_ages(ctl: Ctl) -> tuple[int, list[float], int]:
    """(#nodes, age of each node's latest sample in s (inf if none), #nodes not UP)."""
    rows = ctl.call("nodes")
    now = time.time()
    ages = [now - float(r["telemetry"]["time"]) if r.get("telemetry") else float("inf") for r in rows]
    return len(rows), ages, sum(1 for r in rows if r["state"] != "UP")


def wait_fleet_up(ctl: Ctl, n: int, timeout: float) -> tuple[bool, float]:
    """Wait until all n nodes are UP with a first telemetry sample (their session connected and
    polled; `node add` itself records UP). Returns (reached, seconds waited); not reaching it is a
    result, not an error."""
    t = time.perf_counter()

    def done() -> bool:
        total, ages, down = telemetry_ages(ctl)
        return total == n and down == 0 and all(a != float("inf") for a in ages)

    try:
        wait_for(done, timeout, f"{n} nodes UP with telemetry", interval=0.25)
        return True, time.perf_counter() - t
    except BenchError:
        return False, time.perf_counter() - t


# ---- Slurm (the peer harness) -----------------------------------------------------------------


class Slurm:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.ok = False
        self.started = False
        self.why = "skipped (--no-slurm)"
        self.env = dict(os.environ, SLURM_CONF=str(SLURM_BENCH_DIR / "etc" / "slurm.conf"))

    def usable(self) -> bool:
        if not self.enabled:
            return False
        if os.geteuid() != 0:
            self.why = "needs root (the harness runs slurmctld/munged as root)"
            return False
        if not (SLURM_DIR / "setup.sh").exists():
            self.why = f"no harness at {SLURM_DIR}"
            return False
        return True

    def up(self, sched_params: str = "") -> bool:
        say(f"Slurm: {'SCHED_PARAMS=' + sched_params + ' ' if sched_params else ''}setup.sh --restart")
        t = time.perf_counter()
        env = dict(self.env, SCHED_PARAMS=sched_params)
        self.started = True
        res = subprocess.run([str(SLURM_DIR / "setup.sh"), "--restart"], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            self.ok = False
            self.why = f"setup.sh failed ({res.returncode}): {res.stderr.strip()[-300:]}"
            return False
        self.ok = True
        say(f"Slurm up in {time.perf_counter() - t:.1f}s")
        return True

    def down(self) -> None:
        if self.started:
            say("Slurm: teardown.sh")
            subprocess.run([str(SLURM_DIR / "teardown.sh")], capture_output=True, text=True)
            self.started = False

    def run_d(self, nd: int, tag: str) -> dict[str, float]:
        """The harness's step d, one rep; returns its raw figures."""
        env = dict(self.env, STEPS="d", REPS="1", ND=str(nd), TAG=tag)
        res = subprocess.run([str(SLURM_DIR / "bench.sh")], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise BenchError(f"bench.sh ({tag}) exited {res.returncode}: {res.stderr.strip()[-500:]}")
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("results: ")]
        if not line:
            raise BenchError(f"bench.sh ({tag}) printed no results dir: {res.stdout[-500:]}")
        raw = Path(line[-1].split(" ", 1)[1]) / "raw.tsv"
        out: dict[str, float] = {}
        for ln in raw.read_text().splitlines()[1:]:
            metric, _rep, value, _unit = ln.split("\t")
            if metric.startswith("d_"):
                out[metric] = float(value)
        return out

    def latency(self, n: int, outdir: Path) -> list[float]:
        """sbatch -> the job's own `date`, one job at a time on the idle node."""
        outdir.mkdir(parents=True, exist_ok=True)
        lat = []
        for i in range(n):
            f = outdir / f"s{i}"
            t0 = time.time()
            res = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "-e", "/dev/null", "--gres=gpu:1",
                                  "-J", "fleet_lat", f"--wrap=date +%s.%N > {f}"], env=self.env,
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise BenchError(f"sbatch exited {res.returncode}: {res.stderr[-300:]}")
            jid = res.stdout.strip().split(";")[0]
            wait_for(lambda: f.exists() and f.read_text().strip(), 30, f"slurm job {jid} to start", interval=0.01)
            lat.append(float(f.read_text()) - t0)
            wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", jid], env=self.env, capture_output=True,
                                                text=True).stdout.strip(), 30, f"slurm job {jid} to leave the queue",
                     interval=0.1)
        return lat


# ---- results ------------------------------------------------------------------------------------


def ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.0f} ms"


@dataclass
class Knobs:
    lat_n: int = 30
    lat_warmup: int = 3
    slurm_lat_n: int = 5
    nd: int = 200
    cli_n: int = 100  # 0 = skip the bash loop of `hybridctl submit` processes
    sizes: tuple[int, ...] = (10, 50, 200)
    window: float = 30.0  # for the largest N; smaller fleets get small_window
    small_window: float = 20.0
    settle: float = 5.0
    up_timeout: float = 45.0  # after the last `node add` returned


# ---- 1. dispatch latency ----------------------------------------------------------------------


def g1_latency(k: Knobs, ctl: Ctl, base: Path, R: Results) -> None:
    outdir = base / "lat"
    outdir.mkdir()
    say(f"1. dispatch latency: {k.lat_warmup}+{k.lat_n} jobs, one at a time")
    comp: dict[str, list[float]] = {k_: [] for k_ in ("total", "cli", "pending", "placed", "launch", "running")}
    no_running = 0
    with ctl.client() as c:
        for i in range(k.lat_warmup + k.lat_n):
            time.sleep(0.3 + random.random() * 0.2)  # idle fleet, and not in phase with the 1 s loops
            t0 = time.time()
            res = subprocess.run([*HYB, "submit", "--gpus", "1", "--", f"date +%s.%N > {outdir}/$HYBRIDCTL_JOB_ID"],
                                 env=ctl.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            t1 = time.time()
            if res.returncode != 0:
                raise BenchError(f"submit exited {res.returncode}: {res.stderr[-500:]}")
            jid = res.stdout.strip()
            job = wait_for(lambda: (j := c.call("show", job=jid))["tasks"][0]["state"] in
                           ("SUCCEEDED", "FAILED") and j, 30, f"job {jid} to finish", interval=0.1)
            if job["tasks"][0]["state"] != "SUCCEEDED":
                raise BenchError(f"latency job {jid} failed: {job['tasks'][0]}")
            started = float((outdir / jid).read_text())
            ev = {e["to"]: float(e["time"]) for e in job["events"]}
            if i < k.lat_warmup:
                continue
            comp["total"].append(started - t0)
            comp["cli"].append(t1 - t0)
            comp["pending"].append(ev["PENDING"] - t0)
            comp["placed"].append(ev["STARTING"] - ev["PENDING"])
            comp["launch"].append(started - ev["STARTING"])
            after = [t for t in (ev.get("RUNNING"), ev.get("SUCCEEDED")) if t is not None]
            comp["running"].append(min(after) - started)
            if "RUNNING" not in ev:
                no_running += 1
    R.raw["g1"] = comp
    tot = comp["total"]
    R.add("1", f"submit -> job started, p50 (of {len(tot)})", ms(pct(tot, 50)), "", "", "<= 300 ms",
          verdict(pct(tot, 50), 0.300, True))
    R.add("1", "submit -> job started, p95", ms(pct(tot, 95)))
    labels = {
        "cli": "  `hybridctl submit` round trip (process)",
        "pending": "  t0 -> PENDING recorded (CLI start + request)",
        "placed": "  PENDING -> STARTING (scheduling pass)",
        "launch": "  STARTING -> job's `date` (kick, poll, launch)",
        "running": "  job's `date` -> RUNNING (or SUCCEEDED) recorded",
    }
    for key, label in labels.items():
        R.add("1", label, f"{ms(pct(comp[key], 50))} / {ms(pct(comp[key], 95))}", "p50 / p95")
    R.raw["g1_no_running"] = no_running
    if no_running:
        R.add("1", "  jobs that went STARTING -> SUCCEEDED (no RUNNING event)", f"{no_running} of {len(tot)}")


def g1_cancel(k: Knobs, ctl: Ctl, base: Path, R: Results) -> None:
    """`hybridctl cancel` of a running job -> its process gone on the node, and -> its GPUs free
    again in `nodes`. Reference: fleet.poll_interval (1 s), what a cancel waited for before the
    controller kicked the node's session."""
    outdir = base / "cancel"
    outdir.mkdir()
    n = max(5, k.lat_n // 3)
    say(f"1. cancel latency: {n} running jobs, one at a time")
    gone: list[float] = []
    freed: list[float] = []
    with ctl.client() as c:
        for _ in range(n):
            run = f"echo $$ > {outdir}/$HYBRIDCTL_JOB_ID; exec sleep 600"
            jid = str(c.call("submit", spec={**SPEC, "run": run}, source="command line")["id"])
            pid_file = outdir / jid
            wait_for(lambda: pid_file.exists() and pid_file.read_text().strip()
                     and c.call("show", job=jid)["tasks"][0]["state"] == "RUNNING", 30, f"job {jid} running", 0.02)
            pid = int(pid_file.read_text())
            time.sleep(0.3 + random.random() * 0.5)  # not in phase with the 1 s loops
            t0 = time.time()
            res = subprocess.run([*HYB, "cancel", jid], env=ctl.env, capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL)
            if res.returncode != 0:
                raise BenchError(f"cancel exited {res.returncode}: {res.stderr[-500:]}")
            wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                     30, f"job {jid}'s process gone", 0.002)
            gone.append(time.time() - t0)
            wait_for(lambda: all(x["gpus_used"] == 0 for x in c.call("nodes")), 30, "GPUs freed", 0.01)
            freed.append(time.time() - t0)
    R.raw["g1_cancel"] = {"gone": gone, "freed": freed}
    R.add("1", f"cancel -> job's process gone, p50 / p95 (of {n})", f"{ms(pct(gone, 50))} / {ms(pct(gone, 95))}",
          "poll 1 s", fmt_x(pct(gone, 50) / 1.0))
    R.add("1", "cancel -> its GPUs free in `nodes`, p50 / p95", f"{ms(pct(freed, 50))} / {ms(pct(freed, 95))}")


def pypass_floor(env: dict[str, str], n: int = 10) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([PY, "-c", "pass"], env=env, stdin=subprocess.DEVNULL)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


# ---- 2. throughput --------------------------------------------------------------------------


def clear_done(node: Node) -> None:
    """Drop the agent's finished-job directories (a later controller reuses job ids, so keys)."""
    done = node.dir / "state" / "done"
    if done.is_dir():
        for d in done.iterdir():
            shutil.rmtree(d, ignore_errors=True)


def agent_times(node: Node) -> dict[int, tuple[float, float | None, float]]:
    """job id -> (job dir created, bash started, bash ended) from the agent's finished-job dirs."""
    out = {}
    for d in (node.dir / "state" / "done").iterdir():
        try:
            spec = json.loads((d / "spec.json").read_text())
            ex = json.loads((d / "exit.json").read_text())
            st = json.loads((d / "started.json").read_text()) if (d / "started.json").exists() else {}
            out[int(d.name.split(".")[0])] = (float(spec["created_at"]), st.get("started_at"), float(ex["ended_at"]))
        except (OSError, ValueError, KeyError):
            continue
    return out


def g2_timeline(ctl: Ctl, node: Node, ids: list[int]) -> dict[str, float]:
    """Where a throughput run's time went, from the jobs' events and the agent's job files."""
    ag = agent_times(node)
    placed, created, launch, recorded = [], [], [], []
    no_running = 0
    with ctl.client() as c:
        for jid in ids:
            ev = {e["to"]: float(e["time"]) for e in c.call("show", job=str(jid))["events"]}
            if "RUNNING" not in ev:
                no_running += 1
            if jid not in ag or "STARTING" not in ev:
                continue
            cr, st, end = ag[jid]
            placed.append(ev["STARTING"])
            created.append(cr)
            if st is not None:
                launch.append(float(st) - cr)
            fin = [ev[x] for x in ("SUCCEEDED", "FAILED") if x in ev]
            if fin:
                recorded.append(fin[0] - end)
    passes = len({round(x, 4) for x in placed})
    created.sort()
    gaps = [b - a for a, b in zip(created, created[1:])]
    return {"per_pass": len(placed) / passes if passes else 0.0, "launch_p50": pct(launch, 50),
            "create_gap_p50": pct(gaps, 50), "recorded_p50": pct(recorded, 50), "no_running": no_running}


def g2_run(ctl: Ctl, node: Node, n: int, mode: str) -> dict[str, Any]:
    """n trivial 1-GPU jobs; first submit -> none active (polled every 0.1 s); all must SUCCEED."""
    clear_done(node)
    cpu0 = cpu_s(ctl.ps)
    t0 = time.time()
    if mode == "api":
        with ctl.client() as c:
            ids = [c.call("submit", spec=dict(SPEC), source="command line")["id"] for _ in range(n)]
    else:
        script = 'for _ in $(seq "$0"); do "$@" || exit 1; done'
        res = subprocess.run(["bash", "-c", script, str(n), *HYB, "submit", "--gpus", "1", "--cpus", "0.25", "--", "true"],
                             env=ctl.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise BenchError(f"submit loop exited {res.returncode}: {res.stderr[-500:]}")
        ids = [int(x) for x in res.stdout.split()]
    t_sub = time.time()
    want = set(ids)
    with ctl.client() as c:
        while True:
            active = [r for r in c.call("queue", all=True) if r["job_id"] in want]
            if not active:
                break
            if time.time() - t0 > 600:
                raise BenchError(f"{len(active)} of {n} jobs still active after 600 s")
            time.sleep(0.1)
        t_end = time.time()
        done = [r for r in c.call("queue", all=True, finished=True) if r["job_id"] in want]
    cpu = cpu_s(ctl.ps) - cpu0
    states: dict[str, int] = {}
    for r in done:
        states[r["state"]] = states.get(r["state"], 0) + 1
    last_end = max((r["ended_at"] or 0) for r in done) if done else t_end
    out = {"n": n, "mode": mode, "submit_s": t_sub - t0, "total_s": t_end - t0, "last_end_s": last_end - t0,
           "states": states, "rate": states.get("SUCCEEDED", 0) / (t_end - t0), "ctl_cpu_s": cpu}
    try:
        out["timeline"] = g2_timeline(ctl, node, ids)
    except Exception as exc:  # the breakdown is a bonus; the rate stands without it
        out["timeline_error"] = repr(exc)
    return out


def g2_rows(R: Results, label: str, r: dict[str, Any], slurm_d: dict[str, dict[str, float]], target: bool) -> None:
    rate = r["rate"]
    refs = []
    for tag, name in (("default", "Slurm default"), ("bsd0", "Slurm bsd=0")):
        d = slurm_d.get(tag)
        refs.append((name, d["d_jobs_per_s"] if d else None))
    first = True
    for name, sr in refs:
        R.add("2", label if first else "", f"{rate:.1f} jobs/s" if first else "",
              f"{name} {sr:.2f} jobs/s" if sr else f"{name} n/a", fmt_x(rate / sr) if sr else "n/a",
              ">= 25 jobs/s" if (first and target) else "", verdict(rate, 25, False) if (first and target) else "")
        first = False
    bad = {s: c for s, c in r["states"].items() if s != "SUCCEEDED"}
    R.add("2", f"  submit phase {r['submit_s']:.2f}s, total {r['total_s']:.2f}s, controller CPU "
               f"{r['ctl_cpu_s']:.1f}s ({100 * r['ctl_cpu_s'] / r['total_s']:.0f}% of a core)"
               + (f", NOT SUCCEEDED: {bad}" if bad else ""), "")
    tl = r.get("timeline")
    if tl:
        R.add("2", f"  {tl['per_pass']:.1f} placements/pass; agent: job dir -> bash started p50 "
                   f"{tl['launch_p50'] * 1000:.0f} ms, successive launches {tl['create_gap_p50'] * 1000:.0f} ms apart",
              "")
        R.add("2", f"  bash ended -> SUCCEEDED recorded p50 {tl['recorded_p50'] * 1000:.0f} ms; "
                   f"{tl['no_running']} of {r['n']} never shown RUNNING", "")


# ---- 3. controller load with N nodes --------------------------------------------------------


def g3_size(k: Knobs, n: int, base: Path, nodes: list[Node], key: Path, idle: Ctl, reaper: Reaper,
            pool: SshdPool, R: Results, profile: Path | None) -> None:
    ctl = Ctl(base, f"g3-n{n}", {"scheduler": {"tick_seconds": 1}}, reaper, profile).start()
    try:
        say(f"3. N={n}: adding {n} nodes through the API, 16 at a time")
        t = time.perf_counter()
        calls = add_nodes(ctl, nodes[:n], key)
        t_added = time.perf_counter() - t
        reached, _ = wait_fleet_up(ctl, n, k.up_timeout)
        t_up = time.perf_counter() - t
        say(f"3. N={n}: all added in {t_added:.1f}s, " + (f"all UP with telemetry after {t_up:.1f}s" if reached else
            f"NOT all UP with telemetry after {t_up:.1f}s; measuring anyway") + f"; settling {k.settle:.0f}s")
        time.sleep(k.settle)
        agents = [psutil.Process(x.proc.pid) for x in nodes[:n] if x.proc is not None]
        sshds = pool.all_procs()
        bench = psutil.Process()

        def snap() -> tuple[float, ...]:
            def tot(ps: list[psutil.Process]) -> float:
                s = 0.0
                for p in ps:
                    try:
                        s += cpu_s(p)
                    except psutil.Error:
                        pass
                return s
            m = psutil.cpu_times()
            busy = sum(m) - m.idle - getattr(m, "iowait", 0.0)
            return (time.perf_counter(), cpu_s(ctl.ps), cpu_s(idle.ps), tot(agents), tot(sshds), cpu_s(bench), busy)

        window = k.window if n == max(k.sizes) else k.small_window
        say(f"3. N={n}: measuring {window:.0f}s")
        a = snap()
        time.sleep(window)
        b = snap()
        wall = b[0] - a[0]
        c_pct, i_pct, ag_pct, ss_pct, be_pct, m_pct = (100 * (b[j] - a[j]) / wall for j in range(1, 7))
        rss = ctl.rss_kb()
        total, ages, down = telemetry_ages(ctl)
        stale = sum(1 for x in ages if x > 3.0)  # sampled at 1 Hz, polled at 1 Hz: <= ~2 s when keeping up
        R.raw[f"g3_n{n}"] = {"add_s": t_added, "up_s": t_up, "add_call_p50": pct(calls, 50),
                             "add_call_max": max(calls), "ctl_cpu_pct": c_pct, "idle_ctl_cpu_pct": i_pct,
                             "agents_cpu_pct": ag_pct, "sshd_cpu_pct": ss_pct, "bench_cpu_pct": be_pct, "machine_busy_pct": m_pct,
                             "rss_kb": rss, "idle_rss_kb": idle.rss_kb(), "wall": wall, "max_age": max(ages),
                             "stale": stale, "down": down, "nodes": total, "reached_up": reached,
                             "ages": sorted(ages)}
        tgt = n >= 200
        R.add("3", f"N={n}: controller CPU (% of one core, {wall:.0f}s)", f"{c_pct:.1f} %",
              f"0-node controller {i_pct:.1f} %", fmt_x(c_pct / i_pct) if i_pct > 0 else "n/a",
              "<= 25 % at 200" if tgt else "", verdict(c_pct, 25, True) if tgt else "")
        R.add("3", "  per node (above the 0-node controller)", f"{10 * (c_pct - i_pct) / n:.2f} ms/s",
              f"agents total {ag_pct:.1f} %", fmt_x(c_pct / ag_pct) if ag_pct > 0 else "n/a")
        R.add("3", "  sshd total (listeners + per-connection)", "", f"{ss_pct:.1f} %")
        R.add("3", f"  whole machine busy ({os.cpu_count()} cores = {100 * (os.cpu_count() or 1)} %; shared)", "",
              f"{m_pct:.0f} %")
        R.add("3", "  controller RSS", f"{rss / 1024:.1f} MiB", f"0-node {idle.rss_kb() / 1024:.1f} MiB",
              fmt_x(rss / idle.rss_kb()))
        R.add("3", f"  all {n} added / all UP with telemetry", f"{t_added:.1f} s / " +
              (f"{t_up:.1f} s" if reached else f"not after {t_up:.0f} s"),
              f"node_add p50 {pct(calls, 50):.2f}s, max {max(calls):.2f}s")
        R.add("3", "  telemetry age p50 / max over nodes (stale: > 3 s)", f"{pct(ages, 50):.2f} s / {max(ages):.2f} s",
              f"{stale} stale, {down} not UP, {total} nodes", "", "0 stale", "ok" if stale == 0 and down == 0 else "MISS")
    finally:
        ctl.stop()
    if profile is not None and profile.exists():
        R.notes.append(profile_text(profile, f"cProfile of the N={n} controller (whole life: adds + window)"))


def profile_text(path: Path, title: str, top: int = 25) -> str:
    import io
    import pstats

    buf = io.StringIO()
    st = pstats.Stats(str(path), stream=buf)
    st.sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    body = text[text.find("   ncalls"):] if "   ncalls" in text else text
    return f"{title}, by tottime:\n{body.rstrip()}"


# ---- main ---------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--no-slurm", action="store_true", help="skip the Slurm side (its columns print n/a)")
    ap.add_argument("--quick", action="store_true", help="fewer jobs, N = 10 and 50 only, shorter windows")
    ap.add_argument("--profile", action="store_true", help="cProfile the group-2 and the largest group-3 controller")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the state dirs and logs (path printed)")
    ap.add_argument("--sizes", help="comma list of fleet sizes for group 3 (default 10,50,200; quick 10,50)")
    ap.add_argument("--groups", default="123", help="which groups to run (default 123)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/fleet.py runs sshd and root agents: run it as root", file=sys.stderr)
        return 2
    if not os.path.exists(SSHD):
        print("needs OpenSSH sshd (apt-get install openssh-server)", file=sys.stderr)
        return 2

    k = Knobs()
    if args.quick:
        k = Knobs(lat_n=15, lat_warmup=2, slurm_lat_n=3, nd=100, cli_n=0, sizes=(10, 50), window=15.0,
                  small_window=15.0, settle=3.0)
    if args.sizes:
        k.sizes = tuple(int(x) for x in args.sizes.split(","))
    # Short: agent socket paths must fit in sun_path (108 bytes).
    base = Path(tempfile.mkdtemp(prefix="bf-", dir="/tmp"))
    reaper = Reaper(base)
    R = Results()
    slurm = Slurm(enabled=not args.no_slurm)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    key = base / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pool = SshdPool(base / "sshd", key, reaper)
    max_n = max(k.sizes) if "3" in args.groups else 0
    ports = pick_ports(1 + max_n)
    lab1 = Node("gpu01", base / "n" / "gpu01", ports[0])
    fleet = [Node(f"node{i:03d}", base / "n" / f"{i:03d}", ports[1 + i]) for i in range(max_n)]
    slurm_d: dict[str, dict[str, float]] = {}
    interrupted = False
    try:
        # ---- groups 1 and 2 on one node ----------------------------------------------------------
        if "1" in args.groups or "2" in args.groups:
            pool.start([lab1.port])
            start_agents([lab1], reaper)
            prof2 = base / "g2.prof" if args.profile else None
            cfg = {"scheduler": {"tick_seconds": 1}}
            ctl = Ctl(base, "g12-poll1", cfg, reaper, prof2).start()
            add_nodes(ctl, [lab1], key)
            if not wait_fleet_up(ctl, 1, 60)[0]:
                raise BenchError(f"the node never came up; log: {ctl.log_tail()}")
            if "1" in args.groups:
                t = time.perf_counter()
                try:
                    g1_latency(k, ctl, base, R)
                    g1_cancel(k, ctl, base, R)
                    floor = pypass_floor(ctl.env)
                    R.raw["pypass"] = floor
                    R.add("1", "  (reference: `python -c pass`, same interpreter)", "", ms(floor))
                except Exception as exc:
                    R.errors.append(f"group 1: {exc}")
                    traceback.print_exc()
                say(f"group 1 took {time.perf_counter() - t:.1f}s")
            g2: dict[str, dict[str, Any]] = {}
            if "2" in args.groups:
                t = time.perf_counter()
                try:
                    say(f"2. throughput: {k.nd} jobs over one API connection, poll_interval 1.0 (default)")
                    g2["api_poll1"] = g2_run(ctl, lab1, k.nd, "api")
                    if k.cli_n:
                        time.sleep(1.0)
                        say(f"2. throughput: {k.cli_n} `hybridctl submit` processes in a bash loop, poll_interval 1.0")
                        g2["cli_poll1"] = g2_run(ctl, lab1, k.cli_n, "cli")
                except Exception as exc:
                    R.errors.append(f"group 2 (poll 1.0): {exc}")
                    traceback.print_exc()
                ctl.stop()
                if prof2 is not None and prof2.exists():
                    R.notes.append(profile_text(prof2, "cProfile of the group-1/2 controller (poll_interval 1.0)"))
                try:
                    ctl2 = Ctl(base, "g2-poll02", {"scheduler": {"tick_seconds": 1}, "fleet": {"poll_interval": 0.2}},
                               reaper).start()
                    add_nodes(ctl2, [lab1], key)
                    if not wait_fleet_up(ctl2, 1, 60)[0]:
                        raise BenchError(f"the node never came up; log: {ctl2.log_tail()}")
                    say(f"2. throughput: {k.nd} jobs over one API connection, poll_interval 0.2")
                    g2["api_poll02"] = g2_run(ctl2, lab1, k.nd, "api")
                    ctl2.stop()
                except Exception as exc:
                    R.errors.append(f"group 2 (poll 0.2): {exc}")
                    traceback.print_exc()
                say(f"group 2 (hybridctl) took {time.perf_counter() - t:.1f}s")
            else:
                ctl.stop()
            R.raw["g2"] = g2
            # Agent and sshd of the 1-node lab stay up (idle, ~0.1 % CPU) until the end.

            # ---- Slurm: latency and step d, default then batch_sched_delay=0 ----------------------
            if slurm.usable():
                t = time.perf_counter()
                try:
                    for tag, params in (("default", ""), ("bsd0", "batch_sched_delay=0")):
                        if not slurm.up(params):
                            break
                        if "1" in args.groups and k.slurm_lat_n:
                            say(f"Slurm {tag}: {k.slurm_lat_n} x sbatch -> job's date")
                            lat = slurm.latency(k.slurm_lat_n, base / f"slat-{tag}")
                            R.raw[f"slurm_lat_{tag}"] = lat
                        if "2" in args.groups:
                            say(f"Slurm {tag}: bench.sh step d, {k.nd} jobs")
                            slurm_d[tag] = slurm.run_d(k.nd, f"fleet-{tag}")
                            say(f"Slurm {tag}: {slurm_d[tag].get('d_jobs_per_s', 0):.2f} jobs/s")
                except Exception as exc:
                    R.errors.append(f"Slurm: {exc}")
                    traceback.print_exc()
                finally:
                    slurm.down()
                say(f"Slurm took {time.perf_counter() - t:.1f}s")
            R.raw["slurm_d"] = slurm_d
            if "1" in args.groups and R.raw.get("g1"):
                tot = R.raw["g1"]["total"]
                for tag, name in (("default", "Slurm default"), ("bsd0", "Slurm bsd=0")):
                    sl = R.raw.get(f"slurm_lat_{tag}")
                    if sl:
                        R.add("1", f"  submit -> started vs {name} (p50 of {len(sl)})", ms(pct(tot, 50)),
                              f"sbatch {ms(pct(sl, 50))} (p95 {ms(pct(sl, 95))})", fmt_x(pct(tot, 50) / pct(sl, 50)))
            for key_, label, target in (("api_poll1", f"{k.nd} jobs, 1 node x 8 GPUs, poll 1.0 (API submits)", True),
                                        ("cli_poll1", f"{k.cli_n} jobs, poll 1.0, bash loop of `hybridctl submit`", False),
                                        ("api_poll02", f"{k.nd} jobs, poll 0.2 (API submits)", False)):
                if key_ in g2:
                    g2_rows(R, label, g2[key_], slurm_d, target)

        # ---- group 3 ------------------------------------------------------------------------------
        if "3" in args.groups:
            t = time.perf_counter()
            idle = Ctl(base, "g3-idle", {"scheduler": {"tick_seconds": 1}}, reaper).start()
            have = 0
            for i, n in enumerate(sorted(k.sizes)):
                try:
                    new = fleet[have:n]
                    say(f"3. starting {len(new)} more agents and sshd ports (fleet of {n})")
                    pool.start([x.port for x in new])
                    dt = start_agents(new, reaper)
                    say(f"3. {len(new)} agents up in {dt:.1f}s")
                    have = n
                    prof = base / f"g3-{n}.prof" if (args.profile and n == max(k.sizes)) else None
                    g3_size(k, n, base, fleet, key, idle, reaper, pool, R, prof)
                except Exception as exc:
                    R.errors.append(f"group 3, N={n}: {exc}")
                    traceback.print_exc()
                    break
            idle.stop()
            say(f"group 3 took {time.perf_counter() - t:.1f}s")
    except KeyboardInterrupt as exc:
        interrupted = True
        R.errors.append(f"interrupted ({exc})")
    finally:
        say("cleanup: controllers, agents, job supervisors, sshd")
        slurm.down()
        reaper.stop_all()
        if args.keep:
            say(f"state dirs and logs kept under {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    elapsed = time.perf_counter() - T0
    print_table(R, "fleet", args.quick, "measured" if R.raw.get("slurm_d") else slurm.why, "latency, CPU, memory",
                elapsed)
    if args.json:
        R.write_json(args.json, elapsed)
    return 130 if interrupted else (1 if R.errors else 0)


if __name__ == "__main__":
    sys.exit(main())
