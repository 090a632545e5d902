"""Agent overhead: run `hybridctl-agent serve` with 8 simulated GPUs at 1 Hz for ~30 s, polled
once a second like the controller does, and report its CPU (% of one core) and RSS next to an
idle Python process measured over the same window. Targets: <= 1 % CPU, <= 50 MB RSS.

    .venv/bin/python bench/agent_overhead.py [--duration 30] [--gpus 8] [--jobs 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import psutil

AGENTS = Path(__file__).resolve().parents[1] / "agents"
sys.path.insert(0, str(AGENTS))

from hybridctl_agent.client import AgentClient  # noqa: E402

from _common import cpu_s  # noqa: E402

CPU_TARGET_PCT = 1.0
RSS_TARGET_MB = 50.0


def _wait_socket(path: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"agent exited with {proc.returncode}")
        try:
            with AgentClient(path, timeout=5) as c:
                c.call("hello")
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("agent did not answer within 60 s")


def _start_jobs(sock: str, n: int, gpus: int) -> List[str]:
    keys = []
    with AgentClient(sock, timeout=60) as c:
        for i in range(n):
            key = f"bench_{i}.1"
            c.call("launch", job={"key": key, "run": "sleep 3600", "gpus": [i % gpus] if gpus
                                  else [], "uid": os.getuid()})
            keys.append(key)
    return keys


def _stop_jobs(sock: str, keys: List[str]) -> None:
    with AgentClient(sock, timeout=60) as c:
        for key in keys:
            c.call("cancel", key=key, grace=1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(j["state"] == "exited" for j in c.call("jobs")["jobs"]):
                return
            time.sleep(0.1)


def measure(duration: float, gpus: int, jobs: int = 0) -> Dict[str, Any]:
    base = tempfile.mkdtemp(prefix="hca-bench-", dir="/tmp")
    sock = os.path.join(base, "agent.sock")
    env = dict(os.environ, PYTHONPATH=str(AGENTS))
    agent = subprocess.Popen(
        [sys.executable, "-m", "hybridctl_agent.cli", "serve", "--socket", sock, "--state-dir",
         os.path.join(base, "state"), "--simulate-gpus", f"{gpus}:A100", "--interval", "1"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    idle = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({duration + 30})"])
    keys: List[str] = []
    try:
        _wait_socket(sock, agent)
        keys = _start_jobs(sock, jobs, gpus)
        time.sleep(2.0)  # let start-up work (imports, first samples) finish before measuring
        procs = {"agent": psutil.Process(agent.pid), "baseline": psutil.Process(idle.pid)}
        cpu0 = {k: cpu_s(p) for k, p in procs.items()}
        rss_peak = {k: 0 for k in procs}
        seq, polls = 0, 0
        t0 = time.monotonic()
        with AgentClient(sock, timeout=30) as client:
            while time.monotonic() - t0 < duration:
                answer = client.call("sample", since=seq)
                seq, polls = answer["seq"], polls + 1
                for k, p in procs.items():
                    rss_peak[k] = max(rss_peak[k], p.memory_info().rss)
                time.sleep(1.0)
        wall = time.monotonic() - t0
        cpu = {k: (cpu_s(p) - cpu0[k]) / wall * 100.0 for k, p in procs.items()}
        rss = {k: p.memory_info().rss / 1e6 for k, p in procs.items()}
    finally:
        if keys:
            _stop_jobs(sock, keys)
        for child in (agent, idle):
            child.terminate()
            child.wait(timeout=30)
        shutil.rmtree(base, ignore_errors=True)
    return {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
        f"{psutil.cpu_count()} CPUs, Python {platform.python_version()}",
        "duration_s": round(wall, 1), "gpus": gpus, "running_jobs": jobs,
        "samples_polled": polls,
        "agent_cpu_pct": round(cpu["agent"], 3), "baseline_cpu_pct": round(cpu["baseline"], 3),
        "agent_rss_mb": round(rss["agent"], 1),
        "agent_rss_peak_mb": round(rss_peak["agent"] / 1e6, 1),
        "baseline_rss_mb": round(rss["baseline"], 1),
        "rss_ratio": round(rss["agent"] / rss["baseline"], 2) if rss["baseline"] else None,
        "cpu_ok": cpu["agent"] <= CPU_TARGET_PCT,
        "rss_ok": rss_peak["agent"] / 1e6 <= RSS_TARGET_MB,
    }


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=0, help="running jobs (sleep) during the run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = measure(args.duration, args.gpus, args.jobs)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"agent overhead, {r['date']}, {r['machine']}: {r['gpus']} simulated GPUs at 1 Hz, "
          f"{r['running_jobs']} running jobs, {r['duration_s']} s, "
          f"{r['samples_polled']} sample polls")
    print(f"  CPU  agent {r['agent_cpu_pct']:.3f} % of one core   baseline (idle python) "
          f"{r['baseline_cpu_pct']:.3f} %   target <= {CPU_TARGET_PCT} %  "
          f"{'OK' if r['cpu_ok'] else 'OVER'}")
    print(f"  RSS  agent {r['agent_rss_mb']} MB (peak {r['agent_rss_peak_mb']})   baseline "
          f"{r['baseline_rss_mb']} MB   ratio {r['rss_ratio']}x   target <= {RSS_TARGET_MB} MB  "
          f"{'OK' if r['rss_ok'] else 'OVER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
