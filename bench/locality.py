"""Cache-aware placement end to end (issue 15): a real `hybridctl server`, N nodes each a real
OpenSSH sshd on loopback plus a real `hybridctl-agent` with one simulated GPU and a capped
file_mounts cache, and a workload of repeated jobs over a few generated data sets (local
directories, copied by the controller into the nodes' content caches).

The same workload (same seed) runs twice, each on a fresh controller and fresh nodes: with
locality off (`locality.weight: 0`, the cache-blind placement every release before had) and on
(`weight: 1`). Jobs arrive in waves of N (one per node, as a busy lab's queue drains); each prints
`date +%s.%N` first. Reported per mode:
  bytes moved      the sum of the controller's "file_mounts: sent N bytes" (what crossed SSH);
                   the copy-everything baseline is every job's data sets in full (no cache);
  first line       submit (wall time just before the API call) -> the job's first output line,
                   p50/p95 over the workload jobs, and over bare jobs (no file_mounts) run first
                   on the same fleet: the floor a warm job should be within 1 s of;
  queue wait       PENDING -> STARTING from the job's events, p95; and the waiting summed in
                   GPU-hours.

    .venv/bin/python bench/locality.py [--nodes 4] [--datasets 8] [--mb 200] [--waves 8] [--seed 1] [--backlog] [--history]

--backlog submits the whole workload at once (a queue to drain) instead of one wave per node.
--history waits a minute per mode so the controller's history index has learnt the bare runs
before the workload: the locality score's free-in and places in line then come from history (the
jobs run ~0.5 s) rather than from their --time-limit (15 s).

--mb is the total size of the generated data sets (keep it CI-sized on a shared box: the default
200 MB is written once to a temp dir; every node's cache is capped at `--cache-share` of it, so a
cache-blind fleet evicts and copies again while a placement that partitions the data need not).
Everything started here is stopped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agents")]

from _common import say, wait_for  # noqa: E402

from hybridctl.control.client import Client  # noqa: E402
from tests.integration.harness import ControllerProc, make_controller  # noqa: E402
from tests.integration.sshd import Sshd, keygen, require_sshd  # noqa: E402
from tests.integration.world_lab import ConfiguredNode  # noqa: E402

SENT = re.compile(r"job (\d+)\S*: file_mounts: sent (\d+) bytes to (\S+)")


def make_data(root: Path, datasets: int, total_mb: int, seed: int) -> list[Path]:
    """`datasets` directories of 4 files each, `total_mb` MB in all, random bytes (incompressible)."""
    rnd = random.Random(seed)
    per_file = max(1, total_mb * 10**6 // (datasets * 4))
    out = []
    for d in range(datasets):
        path = root / f"ds{d}"
        path.mkdir(parents=True)
        for f in range(4):
            (path / f"part{f}.bin").write_bytes(rnd.randbytes(per_file))
        out.append(path)
    return out


def workload(datasets: list[Path], waves: int, nodes: int, seed: int) -> list[list[int]]:
    """Per wave, the data set index of each of its `nodes` jobs: skewed (a few data sets hot, as
    repeated training runs over a lab's main corpora are)."""
    rnd = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(datasets))]
    return [rnd.choices(range(len(datasets)), weights, k=nodes) for _ in range(waves)]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def run_mode(base: Path, weight: float, args: argparse.Namespace, data: list[Path], waves: list[list[int]],
             key: Path) -> dict[str, Any]:
    nodes = [ConfiguredNode(f"node{i:02d}", base / f"node{i:02d}", "1:T4", Sshd(base / f"node{i:02d}" / "sshd", key))
             for i in range(args.nodes)]
    total = sum(p.stat().st_size for d in data for p in d.iterdir())
    for n in nodes:  # each agent's file_mounts cache capped at a share of all the data
        n.config = {"cache_max_gb": total * args.cache_share / 1e9}
    ctl: ControllerProc = make_controller(base / "ctl", {
        "scheduler": {"tick_seconds": 1.0}, "fleet": {"poll_interval": 0.5},
        "locality": {"weight": weight, "onprem_bandwidth_mbps": args.bandwidth_mbps}})
    try:
        for n in nodes:
            n.sshd.start()
            n.start_agent()
        ctl.start()
        started = time.time()
        for n in nodes:
            res = ctl.cli(*n.add_args(key), timeout=120)
            if res.returncode != 0:
                raise RuntimeError(f"node add {n.name}: {res.stderr}")
        with Client(ctl.socket, timeout=60) as c:
            def submit(spec: dict[str, Any]) -> tuple[int, float]:
                t = time.time()
                return int(c.call("submit", spec=spec)["id"]), t

            def done(job: int) -> dict[str, Any]:
                def probe() -> Any:
                    s = c.call("show", job=str(job))
                    return s if s["tasks"][0]["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None
                return wait_for(probe, 300, what=f"job {job} to end", interval=0.1)

            def first_line(job: int, submitted: float) -> float:
                out = c.call("logs", job=str(job))["data"].split("\n", 1)[0]
                return float(out) - submitted

            # A time limit the scheduler plans with (estimates from history refresh each minute, longer than
            # this bench): a busy warm node frees within it, a cold copy costs --bandwidth-mbps.
            res_spec = {"resources": {"accelerators": "T4:1"}, "time_limit": f"{args.time_limit}s", "name": "loc"}
            bare = []
            for _ in range(2):  # bare launches: the floor (one per node per round)
                jobs = [submit({**res_spec, "run": "date +%s.%N"}) for _ in nodes]
                for job, t in jobs:
                    assert done(job)["tasks"][0]["state"] == "SUCCEEDED"
                    bare.append(first_line(job, t))
            if args.history:  # the controller's history index refreshes every 60 s (control/backfill.REFRESH_S):
                # wait for it to learn the bare runs (same job name), so free-in and places in line are
                # planned on what runs named "loc" take, not on their time limit
                until = started + 62.0
                while time.time() < until:
                    time.sleep(0.5)
                jobs = [submit({**res_spec, "run": "date +%s.%N"}) for _ in nodes]  # a pass after the refresh
                for job, t in jobs:
                    assert done(job)["tasks"][0]["state"] == "SUCCEEDED"
                    bare.append(first_line(job, t))
            rows = []
            groups = [[d for wave in waves for d in wave]] if args.backlog else waves
            for w, wave in enumerate(groups):
                jobs = [(d, *submit({**res_spec, "file_mounts": {"data": str(data[d])},
                                     "run": "date +%s.%N; cat data/part0.bin | head -c 1 >/dev/null"}))
                        for d in wave]
                for d, job, t in jobs:
                    s = done(job)
                    if s["tasks"][0]["state"] != "SUCCEEDED":
                        raise RuntimeError(f"job {job}: {s['tasks'][0]['state']}: {s['events'][-1]['reason']}")
                    ev = {e["to"]: e["time"] for e in s["events"] if e["to"] in ("PENDING", "STARTING")}
                    rows.append({"job": job, "ds": d, "node": s["tasks"][0]["nodes"], "first": first_line(job, t),
                                 "wait": ev["STARTING"] - ev["PENDING"], "placed": (s.get("placed") or {}).get("0", "")})
                say(f"weight {weight:g}: wave {w + 1}/{len(groups)} done")
        sent: dict[int, int] = {}
        for line in ctl.log.read_text(errors="replace").splitlines():
            m = SENT.search(line)
            if m:
                sent[int(m.group(1))] = sent.get(int(m.group(1)), 0) + int(m.group(2))
        for r in rows:
            r["sent"] = sent.get(r["job"], 0)
        return {"rows": rows, "bare": bare}
    finally:
        ctl.stop()
        for n in nodes:
            n.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--datasets", type=int, default=8)
    ap.add_argument("--mb", type=int, default=200, help="total size of the generated data sets, MB")
    ap.add_argument("--waves", type=int, default=8)
    ap.add_argument("--cache-share", type=float, default=0.3, help="each node's cache cap, as a share of --mb")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-limit", type=int, default=15, help="the jobs' time limit, s (they run ~0.5 s)")
    ap.add_argument("--bandwidth-mbps", type=float, default=8.0,
                    help="locality.onprem_bandwidth_mbps: what the scorer assumes a copy costs. The data here is "
                    "~1000x smaller than a lab's, so the link is scaled down alike (25 MB at 8 Mbit/s = 25 GB at "
                    "8 Gbit/s) to keep the wait-or-move trade-off real")
    ap.add_argument("--backlog", action="store_true",
                    help="submit every job at once (a backlog the fleet drains) instead of in waves of --nodes")
    ap.add_argument("--history", action="store_true",
                    help="wait ~1 min after the bare launches, so the controller's history index (refreshed "
                    "every 60 s) knows what runs named 'loc' take: free-in and places in line then come "
                    "from history, not from --time-limit")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    require_sshd()
    tmp = Path(tempfile.mkdtemp(prefix="hyb-locality-"))
    try:
        data = make_data(tmp / "data", args.datasets, args.mb, args.seed)
        sizes = [sum(p.stat().st_size for p in d.iterdir()) for d in data]
        waves = workload(data, args.waves, args.nodes, args.seed)
        key = keygen(tmp / "id_ed25519")
        results = {}
        for name, weight in (("off", 0.0), ("on", 1.0)):
            say(f"locality {name}: {args.nodes} nodes, {len(waves) * args.nodes} jobs over {args.datasets} data sets")
            results[name] = run_mode(tmp / name, weight, args, data, waves, key)
        everything = sum(sizes[d] for wave in waves for d in wave)
        arrival = "submitted at once (backlog)" if args.backlog else f"in {len(waves)} waves"
        print(f"{args.nodes} nodes x 1 GPU over real SSH; {len(waves) * args.nodes} jobs {arrival} over "
              f"{args.datasets} data sets ({sum(sizes) / 1e6:.0f} MB); node cache cap "
              f"{args.cache_share * sum(sizes) / 1e6:.0f} MB")
        print(f"{'':24} {'bytes moved':>12} {'vs copy-all':>11} {'first line p50/p95 s':>21} "
              f"{'warm p50 s':>10} {'queue wait p95 s':>16} {'wait GPU-h':>10}")
        print(f"{'copy everything':24} {everything / 1e6:>10.0f}MB {1.0:>11.2f}")
        bare_all: list[float] = []
        for name, res in results.items():
            rows = res["rows"]
            moved = sum(r["sent"] for r in rows)
            firsts = [r["first"] for r in rows]
            warm = [r["first"] for r in rows if r["sent"] == 0]
            waits = [r["wait"] for r in rows]
            bare_all += res["bare"]
            print(f"{'locality ' + name:24} {moved / 1e6:>10.0f}MB {moved / everything:>11.2f} "
                  f"{pct(firsts, 0.5):>10.2f}/{pct(firsts, 0.95):<10.2f} {pct(warm, 0.5):>10.2f} "
                  f"{pct(waits, 0.95):>16.2f} {sum(waits) / 3600:>10.4f}")
        off = sum(r["sent"] for r in results["off"]["rows"])
        on = sum(r["sent"] for r in results["on"]["rows"])
        floor = sum(sizes[d] for d in {d for wave in waves for d in wave})  # every data set used, copied once
        print(f"{'floor (each used set once)':24} {floor / 1e6:>10.0f}MB {floor / everything:>11.2f}")
        print(f"beyond the floor: off {(off - floor) / 1e6:.0f} MB, on {(on - floor) / 1e6:.0f} MB "
              f"({100 * (1 - (on - floor) / max(1, off - floor)):.0f}% fewer)")
        print(f"bare launch (no file_mounts), first line p50/p95: {pct(bare_all, 0.5):.2f}/{pct(bare_all, 0.95):.2f} s")
        print(f"locality on vs off: {100 * (1 - on / max(1, off)):.0f}% fewer bytes moved (goal >= 90%); "
              f"vs copy-everything {100 * (1 - on / max(1, everything)):.0f}% fewer")
        print("example reasons: " + "; ".join(sorted({r["placed"] for r in results["on"]["rows"] if r["placed"]})[:3]))
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "sizes": sizes, "waves": waves,
                                                   "results": results}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
