"""Telemetry history (hybridctl/store/telemetry.py) at fleet scale: write cost of 200 nodes x 8 GPUs
at 1 Hz, disk per year, and the time to read one job's history.

Baseline, in the same run: core.wire checking the same 200 samples, which the controller already
does every second today; the ratio says what the history adds on top of that.

    .venv/bin/python bench/history.py [--nodes 200] [--gpus 8] [--seconds 120]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import say  # noqa: E402

from hybridctl.core import wire  # noqa: E402
from hybridctl.core.efficiency import Allocation, summarize  # noqa: E402
from hybridctl.store.telemetry import TIERS, History, _pack, gpu_row, host_row  # noqa: E402


def fake_sample(rng: random.Random, t: float, gpus: int, jobs: int) -> dict:
    return {"seq": int(t), "time": t,
            "host": {"cpu_percent": rng.uniform(0, 100), "load1": rng.uniform(0, 30), "memory_total_mb": 1 << 20,
                     "memory_used_mb": rng.randint(1 << 16, 1 << 19), "net_rx_bps": rng.uniform(0, 1e9),
                     "net_tx_bps": rng.uniform(0, 1e9), "uptime_s": 1e6, "agent_version": "0.1"},
            "gpus": [{"index": i, "uuid": f"GPU-{i}", "name": "NVIDIA H100", "healthy": True, "health_reason": None,
                      "util_gpu": rng.randint(0, 100), "util_mem": rng.randint(0, 100),
                      "mem_used_mb": rng.randint(0, 81920), "mem_total_mb": 81920, "temp_c": rng.randint(30, 80),
                      "power_w": rng.uniform(50, 700), "power_limit_w": 700, "fan_pct": None,
                      "clock_sm_mhz": 1980, "clock_mem_mhz": 2619, "sm_util": rng.randint(0, 100),
                      "pcie_tx_kbps": rng.randint(0, 10 ** 7), "pcie_rx_kbps": rng.randint(0, 10 ** 7),
                      "ecc_corrected": 0, "ecc_uncorrected": 0,
                      "processes": [{"pid": 1000 + i, "user": "alice", "job": f"{i}.a0.r0", "used_mem_mb": 1000}]}
                     for i in range(gpus)],
            "jobs": {f"{j}.a0.r0": {"cpu_percent": 400.0, "cpu_seconds": t, "rss_mb": 20000, "peak_rss_mb": 21000,
                                    "metrics": {"loss": 0.5, "step": t}} for j in range(jobs)}}


def write_cost(tmp: Path, nodes: int, gpus: int, seconds: int) -> dict:
    rng = random.Random(1)
    t0 = 1_699_999_200.0
    raw = [{f"n{n:03d}": fake_sample(rng, t0, gpus, 1) for n in range(nodes)}]
    hist = History(tmp / "write.db")
    check_s = add_s = maintain_s = 0.0
    for s in range(seconds):
        t = t0 + s
        batch = {}
        for name, smp in raw[0].items():
            smp = dict(smp, time=t, seq=s)
            c0 = time.process_time()
            checked = wire.sample(smp, [])
            check_s += time.process_time() - c0
            batch[name] = checked
        c0 = time.process_time()
        hist.add(batch, t)
        c1 = time.process_time()
        hist.maintain(t)
        c2 = time.process_time()
        add_s += c1 - c0
        maintain_s += c2 - c1
    stats = hist.stats()
    hist.close()
    return {"seconds": seconds, "wire_check_cpu_per_s": check_s / seconds, "history_add_cpu_per_s": add_s / seconds,
            "history_maintain_cpu_per_s": maintain_s / seconds, "tier0_rows": stats.rows.get(0, 0),
            "tier0_bytes_per_row": stats.bytes / max(1, sum(stats.rows.values()))}


def year_size(tmp: Path, nodes: int, gpus: int, sample_nodes: int) -> dict:
    """Fill every tier to its steady-state row count for `sample_nodes` nodes (one job each), measure
    the file, scale to `nodes`."""
    rng = random.Random(2)
    hist = History(tmp / "year.db")
    t_end = 1_699_999_200 + 400 * 86400
    for tier, (bucket, keep) in enumerate(TIERS):
        count = int(keep // bucket)
        say(f"tier {tier}: {count} buckets x {sample_nodes} nodes")
        for chunk in range(0, count, 2000):
            rows = []
            for b in range(chunk, min(count, chunk + 2000)):
                t = t_end - keep + b * bucket
                for n in range(sample_nodes):
                    rows.append((f"n{n:03d}", t))
            hist.conn.execute("BEGIN")
            for name, t in rows:
                smp = wire.sample(fake_sample(rng, t, gpus, 1), [])
                data = _pack(host_row(smp["host"]), {g["index"]: gpu_row(g) for g in smp["gpus"]})
                hist.conn.execute("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?)",
                                  (tier, hist._series("node:" + name), int(t), bucket, data))
                job = json.dumps(smp["jobs"]["0.a0.r0"]).encode()
                hist.conn.execute("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?)",
                                  (tier, hist._series(f"job:{name}-0.a0.r0"), int(t), bucket, job))
            hist.conn.execute("COMMIT")
    hist.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stats = hist.stats()
    # one job's history: 8 GPUs of one node over the last 3 days (minute tier + the raw hour)
    def job_3_days() -> object:
        pts = hist.gpu_points("n000", range(gpus), t_end - 3 * 86400, t_end)
        jobs = hist.job_points("n000-0.a0.r0", t_end - 3 * 86400, t_end)
        alloc = Allocation("n000", tuple(range(gpus)), 32, t_end - 3 * 86400, None, "n000-0.a0.r0")
        return pts, summarize("1", "RUNNING", [alloc], {("n000", i): p for i, p in pts.items()},
                              {"n000-0.a0.r0": jobs}, now=t_end)

    def best_ms(fn: object, runs: int = 5) -> float:  # the least disturbed of a few runs (shared CPUs)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append((time.perf_counter() - t0) * 1000)
        return min(times)

    pts, eff = job_3_days()
    query_ms = best_ms(job_3_days)
    pts_year = hist.gpu_points("n000", range(gpus), t_end - 365 * 86400, t_end)
    query_year_ms = best_ms(lambda: hist.gpu_points("n000", range(gpus), t_end - 365 * 86400, t_end))
    hist.close()
    per_node = stats.bytes / sample_nodes
    return {"sample_nodes": sample_nodes, "rows": stats.rows, "bytes": stats.bytes,
            "bytes_per_node": per_node, "projected_gib": per_node * nodes / 2 ** 30,
            "job_3_days_query_ms": round(query_ms, 1), "points_read": sum(len(p) for p in pts.values()),
            "job_year_query_ms": round(query_year_ms, 1), "year_points": sum(len(p) for p in pts_year.values()),
            "util_mean": eff.util_mean}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--size-nodes", type=int, default=4, help="nodes filled for a year to measure size")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        say(f"write cost: {args.nodes} nodes x {args.gpus} GPUs, {args.seconds} s at 1 Hz")
        w = write_cost(tmp, args.nodes, args.gpus, args.seconds)
        say("year size")
        y = year_size(tmp, args.nodes, args.gpus, args.size_nodes)
    total = w["history_add_cpu_per_s"] + w["history_maintain_cpu_per_s"]
    out = {"write": w, "year": y,
           "history_cpu_fraction_of_a_core": round(total, 4),
           "ratio_history_vs_wire_check": round(total / w["wire_check_cpu_per_s"], 2)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
