"""`FakeApi`: an in-memory controller look-alike for the TUI's snapshot tests and demos.

It answers the same requests with the same reply shapes as `control/service.py`, from a small,
fixed lab (every timestamp derived from `now`), and applies actions to its own state. `admin=False`
makes it refuse admin-only actions the way the controller does."""

from __future__ import annotations

import copy
import math
from typing import Any

from hybridctl.core.errors import HybridctlError, NotFound, PermissionDenied
from hybridctl.fmt import job_label

NOW = 1_700_000_000.0
"""2023-11-14 22:13:20 UTC: the fixed clock of snapshot tests."""


def _gpu_sample(index: int, name: str, step: int, busy: bool, total_mb: int, procs: list[dict[str, Any]]
                ) -> dict[str, Any]:
    """A smooth, repeatable pattern: util/mem/temp/power follow a slow wave per GPU."""
    wave = (math.sin((step + index * 7) / 6.0) + 1) / 2
    util = round(55 + 40 * wave) if busy else (0 if not procs else 12)
    return {
        "index": index, "uuid": f"GPU-{index:04d}", "name": name, "util_gpu": util, "util_mem": util // 2,
        "mem_used_mb": int(total_mb * (0.55 + 0.3 * wave)) if busy else sum(p["used_mem_mb"] for p in procs),
        "mem_total_mb": total_mb, "temp_c": round(45 + 35 * wave) if busy else 34, "power_w": round(90 + 260 * wave) if busy else 61,
        "power_limit_w": 400, "fan_pct": None, "clock_sm_mhz": 1410, "healthy": True, "health_reason": None,
        "processes": procs,
    }


def telemetry(node: str, gpus: list[tuple[str, int]], busy: set[int], procs: dict[int, list[dict[str, Any]]],
              step: int, when: float) -> dict[str, Any]:
    return {"seq": step, "time": when, "host": {"cpu_percent": 31.0},
            "gpus": [_gpu_sample(i, name, step, i in busy, mem, procs.get(i, [])) for i, (name, mem) in enumerate(gpus)]}


class FakeApi:
    """A fixed lab: two on-prem servers up (one draining, with a faulty GPU), one unreachable,
    one lost, one cloud node; a dozen jobs in every state; their events and logs."""

    def __init__(self, now: float = NOW, *, admin: bool = True, cloud: bool = False, user: str = "alice") -> None:
        self.now = now
        self.admin = admin
        self.cloud = cloud
        self.user = user
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.nodes = sorted(self._nodes(), key=lambda n: n["name"])  # the controller's order
        self.jobs = self._jobs()
        self.events = self._events()
        self.next_id = max(j["job_id"] for j in self.jobs) + 1

    # ---- the lab -----------------------------------------------------------------------------------

    def _nodes(self) -> list[dict[str, Any]]:
        a100 = [("A100-SXM4-80GB", 81920)] * 8
        mixed = [("RTX3090", 24576), ("RTX3090", 24576), ("A6000", 49152)]
        # gpu01's agent reports NVML's per-process SM use (`sm_util`, the SM column); gpu02's does not
        procs01 = {i: [{"pid": 41000 + i, "user": "alice", "used_mem_mb": 40000 + 512 * i, "job": "12.a0.r0",
                        "sm_util": 61 + 3 * i}] for i in range(4)}
        procs01[4] = [{"pid": 52011, "user": "bob", "used_mem_mb": 30111, "job": "14_3.a1.r0", "sm_util": 48}]
        procs01[7] = [{"pid": 9876, "user": "mallory", "used_mem_mb": 2048, "job": None, "sm_util": 9}]
        procs02 = {0: [{"pid": 7001, "user": "carol", "used_mem_mb": 20000, "job": "13.a0.r0"}]}
        base = {"cpus": 64.0, "cpus_free": 40.0, "memory_mb": 524288, "memory_free_mb": 262144, "host": "",
                "port": 22, "ssh_user": None, "drained": False, "link_error": "", "simulated": False,
                "last_seen": self.now - 1, "containment": "cgroup-v2", "cpus_override": None,
                "cache": None}
        return [
            {**base, "name": "gpu01", "site": "onprem", "state": "UP", "state_reason": "",
             "gpus": [{"index": i, "model": "A100", "healthy": True, "reason": "", "foreign": i == 7} for i in range(8)],
             "gpus_used": 6, "gpus_total": 8,
             "telemetry": telemetry("gpu01", a100, {0, 1, 2, 3, 4}, procs01, 60, self.now - 1)},
            {**base, "name": "gpu02", "site": "onprem", "state": "DRAINING", "state_reason": "fan noise (alice)",
             "drained": True, "cpus": 32.0, "cpus_free": 24.0, "memory_mb": 131072,
             "gpus": [{"index": 0, "model": "RTX3090", "healthy": True}, {"index": 1, "model": "RTX3090",
                      "healthy": False, "reason": "Xid 79"}, {"index": 2, "model": "A6000", "healthy": True}],
             "gpus_used": 1, "gpus_total": 3,
             "telemetry": telemetry("gpu02", mixed, {0}, procs02, 60, self.now - 1)},
            {**base, "name": "gpu03", "site": "onprem", "state": "UNREACHABLE",
             "state_reason": "silent for 45s: connection refused", "last_seen": self.now - 45,
             "gpus": [{"index": i, "model": "V100"} for i in range(4)], "gpus_used": 0, "gpus_total": 4,
             "telemetry": None, "link_error": "connection refused"},
            {**base, "name": "gpu04", "site": "onprem", "state": "LOST", "state_reason": "silent for 310s: no route to host",
             "last_seen": self.now - 310, "gpus": [{"index": i, "model": "V100"} for i in range(4)],
             "gpus_used": 0, "gpus_total": 4, "telemetry": None},
            {**base, "name": "aws-g5-1", "site": "cloud", "provider": "aws", "price_hourly": 1.006, "state": "UP",
             "state_reason": "", "cpus": 8.0, "cpus_free": 4.0, "gpus": [{"index": 0, "model": "A10G"}],
             "gpus_used": 1, "gpus_total": 1,
             "telemetry": telemetry("aws-g5-1", [("A10G", 23028)], {0}, {0: [{"pid": 3100, "user": "dave",
                                    "used_mem_mb": 15000, "job": "15.a0.r0"}]}, 60, self.now - 1)},
        ]

    def _jobs(self) -> list[dict[str, Any]]:
        n = self.now

        def job(i: int, user: str, name: str, state: str, gpus: int, gtype: str | None, nodes: str = "",
                gpu_ids: str = "", sub: float = 600, start: float | None = None, end: float | None = None,
                reason: str = "", attempt: int = 0, prio: int = 0, task: int = 0, array: str | None = None,
                exit_code: int | None = None) -> dict[str, Any]:
            return {"job_id": i, "task": task, "user": user, "name": name, "state": state, "reason": reason,
                    "gpus": gpus, "gpu_type": gtype, "num_nodes": 1, "nodes": nodes, "gpu_ids": gpu_ids,
                    "priority": prio, "submitted_at": n - sub, "started_at": None if start is None else n - start,
                    "ended_at": None if end is None else n - end, "attempt": attempt, "exit_code": exit_code,
                    "array": array, "restarts": 0, "max_restarts": 2, "recoveries": 0, "recovery_causes": {}}

        jobs = [
            job(10, "alice", "prep", "SUCCEEDED", 1, None, "gpu01", "0", 7200, 7100, 5000, exit_code=0),
            job(11, "bob", "eval", "FAILED", 1, None, "gpu02", "2", 5400, 5300, 5200, exit_code=1),
            job(12, "alice", "resnet", "RUNNING", 4, "A100", "gpu01", "0,1,2,3", 3900, 3600),
            job(13, "carol", "bert-ft", "RUNNING", 1, None, "gpu02", "0", 3000, 2950, prio=10),
            *[job(14, "bob", "sweep", st, 1, "A100", nd, ids, 2000, start, reason=rs, task=t, array="1-4",
                  attempt=att)
              for t, st, nd, ids, start, rs, att in [
                  (1, "SUCCEEDED", "gpu01", "4", 1900, "", 0), (2, "CANCELLED", "gpu01", "5", 1800, "", 0),
                  (3, "RUNNING", "gpu01", "4", 1200, "", 1), (4, "PENDING", "", "", None, "throttle: 1 of 1 running", 0)]],
            job(15, "dave", "llm-burst", "RUNNING", 1, "A10G", "aws-g5-1", "0", 1500, 600, prio=5),
            job(16, "erin", "big-train", "PENDING", 8, "A100", sub=900,
                reason="reserved: starts ~23:40 on gpu01 (8 A100)"),
            job(17, "alice", "notebook", "STARTING", 1, None, "gpu01", "5", 20),
            job(18, "frank", "ablation", "PENDING", 2, None, sub=300, reason="priority: 2 jobs ahead", prio=-5),
        ]
        for j in jobs:
            if j["job_id"] == 13:
                j["idle_s"] = 2520.0  # flagged by the idle rule: 42 min under idle.util_below
            if (j["job_id"], j["task"]) == (14, 3):
                j["recoveries"], j["recovery_causes"] = 1, {"node_lost": 1}
        return jobs

    def _events(self) -> list[dict[str, Any]]:
        rows = [
            (7200, 10, None, None, "PENDING", "submitted", "alice"), (7100, 10, None, "PENDING", "STARTING", "placed", None),
            (5000, 10, None, "RUNNING", "SUCCEEDED", "exit 0", None), (3900, 12, None, None, "PENDING", "submitted", "alice"),
            (3600, 12, None, "STARTING", "RUNNING", "started", None), (2000, 14, None, None, "PENDING", "submitted", "bob"),
            (1800, 14, 2, "RUNNING", "CANCELLED", "cancelled by bob", "bob"),
            (1300, 14, 3, "RUNNING", "NODE_LOST", "node gpu03 lost: silent for 300s", None),
            (1299, 14, 3, "NODE_LOST", "PENDING", "requeued (attempt 1 of 2)", None),
            (900, 16, None, None, "PENDING", "submitted", "erin"),
            (400, 13, None, None, "PRIORITY", "priority 0 -> 10", "root"),
        ]
        owners = {j["job_id"]: j["user"] for j in self.jobs}
        out = []
        for i, (ago, job, task, frm, to, reason, actor) in enumerate(rows, start=1):
            out.append({"id": i, "job_id": job, "task": task, "time": self.now - ago, "from": frm, "to": to,
                        "reason": reason, "actor_uid": None if actor is None else 1000 + i,
                        "actor": actor or "controller", "owner": owners.get(job, "?")})
        return out[::-1]

    # ---- the API -----------------------------------------------------------------------------------

    def call(self, op: str, args: dict[str, Any], lane: str = "poll") -> Any:
        self.calls.append((op, dict(args)))
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            raise HybridctlError(f"unknown request {op!r}; this controller knows: cancel, drain, events, ...")
        return copy.deepcopy(fn(**args))

    def op_ping(self) -> dict[str, Any]:
        return {"user": self.user, "uid": 1001, "admin": self.admin, "schema": 1}

    def op_nodes(self, cache: bool = False) -> list[dict[str, Any]]:
        if cache:  # `nodes --cache`: a node's items are its `cache_items` key, when a test sets one
            return [{**n, "cache_items": n.get("cache_items", [])} for n in self.nodes]
        return [{k: v for k, v in n.items() if k != "cache_items"} for n in self.nodes]

    def op_queue(self, all: bool = False, user: str | None = None, states: list[str] = (),  # type: ignore[assignment]
                 finished: bool = False) -> list[dict[str, Any]]:
        who = None if all else (user or self.user)
        out = [j for j in self.jobs if who is None or j["user"] == who]
        if states:
            return [j for j in out if j["state"] in states]
        if not finished:
            out = [j for j in out if j["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT")]
        return out

    def _rows(self, job: str) -> list[dict[str, Any]]:
        job_id = int(str(job).split("_")[0])
        rows = [j for j in self.jobs if j["job_id"] == job_id]
        if not rows:
            raise NotFound(f"job {job_id} does not exist; `hybridctl queue --all` lists the jobs")
        return rows

    def op_show(self, job: str) -> dict[str, Any]:
        rows = self._rows(job)
        r = rows[0]
        spec = {"name": r["name"], "run": f"python {r['name']}.py --epochs 10", "setup": "", "envs": {},
                "resources": {"gpus": r["gpus"], "gpu_type": r["gpu_type"], "cpus": 8.0, "memory_mb": 65536,
                              "use_spot": True},
                "num_nodes": 1, "priority": r["priority"], "max_restarts": 2, "placement": "any", "time_limit": 14400,
                "workdir": None, "recover_on_exit_codes": [], "checkpoint_dir": None, "array": r["array"],
                "depends_on": [], "secrets": {}, "slurm": {}}
        if r["job_id"] == 12:  # accelerator candidates: the scheduler took the second
            spec["resources"].update(alternatives=[["H100", 4], ["A100", 4]], ordered=True)
        return {"id": r["job_id"], "uid": 1000, "user": r["user"], "group": "lab", "name": r["name"], "spec": spec,
                "priority": r["priority"], "submitted_at": r["submitted_at"], "array": r["array"],
                "max_restarts": 2, "runtime": "time limit 4:00:00",
                "tasks": [{"task": x["task"], "state": x["state"], "reason": x["reason"], "attempt": x["attempt"],
                           "nodes": x["nodes"], "gpu_ids": x["gpu_ids"], "started_at": x["started_at"],
                           "ended_at": x["ended_at"], "exit_code": x["exit_code"], "gpu_type": x["gpu_type"],
                           "idle_s": x.get("idle_s"), "metrics": self._metrics(x), "restarts": x["restarts"],
                           "recoveries": x["recoveries"], "recovery_causes": x["recovery_causes"]} for x in rows],
                "events": [{"task": e["task"], "time": e["time"], "from": e["from"], "to": e["to"],
                            "reason": e["reason"], "actor_uid": e["actor_uid"]}
                           for e in reversed(self.events) if e["job_id"] == r["job_id"]]}

    def _metrics(self, row: dict[str, Any]) -> dict[str, float] | None:
        """The last `hybridctl.job.log` values of a running job (job 12 logs them)."""
        series = self._logged(row)
        return {k: v[-1][1] for k, v in series.items()} or None

    def _logged(self, row: dict[str, Any]) -> dict[str, list[list[float]]]:
        if row["job_id"] != 12 or row["started_at"] is None:
            return {}
        t0 = row["started_at"]
        steps = range(0, 60)
        return {"step": [[t0 + 60 * i, 100.0 * i] for i in steps],
                "loss": [[t0 + 60 * i, round(2.5 * math.exp(-i / 18) + 0.3 + 0.05 * math.sin(i), 4)] for i in steps],
                "tokens_per_s": [[t0 + 60 * i, round(41000 + 3000 * math.sin(i / 5), 1)] for i in steps]}

    def _util(self, row: dict[str, Any], index: int, i: int) -> float:
        if row.get("idle_s") is not None:
            return 0.0 if i > 10 else 60.0
        return round(55 + 40 * (math.sin((i + index * 7) / 6.0) + 1) / 2)

    def op_eff(self, job: str) -> dict[str, Any]:
        """`eff`: derived from the same waves as the GPU samples (core.efficiency's shape)."""
        row = self._task(job)
        if not row["nodes"]:
            raise NotFound(f"job {job} has not held any node yet: no efficiency to show")
        wall = 0.0 if row["started_at"] is None else (row["ended_at"] or self.now) - row["started_at"]
        ids = [int(i) for i in str(row["gpu_ids"]).split(",") if i]
        gpus = []
        for index in ids:
            utils = [self._util(row, index, i) for i in range(60)]
            gpus.append({"node": row["nodes"], "index": index, "util_mean": round(sum(utils) / len(utils), 1),
                         "util_p95": sorted(utils)[56], "mem_peak_mb": 40000.0 + 512 * index, "mem_total_mb": 81920.0,
                         "sm_mean": round(0.85 * sum(utils) / len(utils), 1), "samples": int(wall)})
        mean = sum(g["util_mean"] for g in gpus) / len(gpus) if gpus else None
        held = len(ids) * wall / 3600
        return {"job": job_label(row), "state": row["state"], "wall_s": round(wall, 1), "gpus": gpus,
                "gpu_hours_held": round(held, 4), "gpu_hours_used": round(held * (mean or 0) / 100, 4),
                "util_mean": None if mean is None else round(mean, 1), "cpus": 8.0, "cpu_seconds": 0.62 * 8 * wall,
                "cpu_efficiency": 0.62, "peak_rss_mb": 23552.0, "memory_mb": 65536,
                "metrics": self._metrics(row) or {}, "idle_s": row.get("idle_s")}

    def op_history(self, job: str | None = None, node: str | None = None, seconds: float = 3600.0) -> dict[str, Any]:
        """`history`: a task's GPU utilisation and memory, and its logged metrics, over its attempt."""
        if node is not None:
            self._node(node)
            return {"node": node, "host": {}, "gpus": {}}
        row = self._task(str(job))
        if row["started_at"] is None:
            return {"gpus": [], "metrics": {}, "rss_mb": []}
        t0 = row["started_at"]
        step = max(1.0, ((row["ended_at"] or self.now) - t0) / 60)
        gpus = [{"node": row["nodes"], "index": int(i),
                 "util": [[t0 + step * k, self._util(row, int(i), k)] for k in range(60)],
                 "mem_mb": [[t0 + step * k, 40000.0] for k in range(60)]}
                for i in str(row["gpu_ids"]).split(",") if i]
        return {"gpus": gpus, "metrics": self._logged(row), "rss_mb": [[t0 + step * k, 20000.0] for k in range(60)]}

    def op_usage(self, by: str = "user", since: float = 7 * 86400) -> list[dict[str, Any]]:
        """`usage`: GPU-hours per user or group, with what the telemetry saw held and used."""
        rows = {"alice": (96.5, 40.2, 90.1, 71.8), "bob": (40.0, 30.5, 38.2, 12.4), "carol": (26.0, 26.0, 25.5, 2.1),
                "dave": (4.2, 4.2, 4.1, 3.9)}
        key = "user" if by == "user" else "group"
        out = [{key: name if by == "user" else "lab", "gpu_hours": gh, "job_hours": jh, "gpu_hours_observed": obs,
                "gpu_hours_used": used} for name, (gh, jh, obs, used) in rows.items()]
        return out if by == "user" else out[:1]

    def _task(self, job: str) -> dict[str, Any]:
        rows = self._rows(job)
        return next((r for r in rows if job_label(r) == str(job)), rows[0])

    def op_logs(self, job: str, stream: str = "stdout", offset: int = 0, max_bytes: int = 65536,
                rank: int = 0) -> dict[str, Any]:
        row = self._rows(job)[0]
        if stream == "stdout":
            text = "".join(f"epoch {e:2d}  loss {2.0 / (e + 1):.4f}  acc {1 - 1 / (e + 2):.3f}\n" for e in range(12))
        else:
            text = "warning: torch.cuda.amp is deprecated\n"
        data = text.encode()
        start = max(0, len(data) + offset) if offset < 0 else min(offset, len(data))
        chunk = data[start:start + max_bytes]
        return {"data": chunk.decode(), "offset": start + len(chunk), "eof": row["state"] != "RUNNING",
                "state": row["state"], "node": row["nodes"]}

    def op_events(self, limit: int = 200, before_id: int | None = None) -> list[dict[str, Any]]:
        return self.events[:limit]

    def op_cloud_status(self, all: bool = False, ended: int = 0) -> dict[str, Any]:
        if not self.cloud:
            raise HybridctlError("unknown request 'cloud_status'; this controller knows: cancel, drain, ...")

        def inst(node: str, iid: str, itype: str, gpus: int, price: float, state: str, jobs: int, ago: float,
                 spent: float, reason: str = "", ended: float | None = None) -> dict[str, Any]:
            return {"node": node, "provider": "aws", "instance_id": iid, "instance_type": itype,
                    "region": "us-east-1", "zone": "us-east-1b", "market": "spot", "gpu_type": "A10G", "gpus": gpus,
                    "price_hourly": price, "state": state, "reason": reason, "launched_at": self.now - ago,
                    "ready_at": self.now - ago + 90, "ended_at": ended, "jobs": jobs, "idle_s": None,
                    "spent_usd": spent}

        return {
            "enabled": True, "running": True, "providers": ["aws"], "errors": {}, "period": "month",
            "spent_usd": 123.45, "budget_usd": 500.0, "hourly_usd": 1.006, "max_hourly_usd": 20.0, "nodes": 1,
            "max_nodes": 4, "after_s": 120.0, "idle_timeout_s": 600.0, "allow_on_demand": False,
            "instances": [
                inst("aws-g5-1", "i-0a1", "g5.xlarge", 1, 1.006, "up", 1, 1500, 0.42),
                inst("aws-g5-0", "i-09f", "g5.xlarge", 1, 0.998, "terminated", 0, 9000, 1.10,
                     "idle for 10m (burst.idle_timeout 10m)", self.now - 5400),
            ],
            "blocked": [{"job": "17", "reason": "needs H100:8; no offer within max_hourly_usd $20/h"}],
            "covered": [{"job": "15", "node": "aws-g5-1"}],
            "notes": [], "last_pass": self.now - 3, "backoffs": [], "leaks": [], "owners": [],
            "reclaims": [], "reclaims_since": self.now - 30 * 86400,
        }

    def op_cloud_offers(self, gpus: str | None = None, spot: bool | None = None) -> list[dict[str, Any]]:
        if not self.cloud:
            raise HybridctlError("unknown request 'cloud_offers'")

        def offer(itype: str, gpu: str, n: int, zone: str, price: float) -> dict[str, Any]:
            return {"provider": "aws", "instance_type": itype, "region": zone[:-1], "zone": zone, "gpu_type": gpu,
                    "gpus": n, "cpus": 4.0 * n, "memory_mb": 16384 * n, "spot": True, "price_hourly": price,
                    "pool": f"aws/{zone}/{itype}/spot", "market": "spot"}

        return [offer("g5.xlarge", "A10G", 1, "us-east-1b", 0.998), offer("p4d.24xlarge", "A100", 8, "us-west-2a", 9.83)]

    def _need_admin(self, verb: str) -> None:
        if not self.admin:
            raise PermissionDenied(f"you ({self.user}) may not {verb}: only root and members of group "
                                   "hybridctl-admin may")

    def op_cancel(self, jobs: list[str] = (), all_mine: bool = False, reason: str = "") -> dict[str, Any]:  # type: ignore[assignment]
        done, skipped = [], []
        for ref in jobs:
            for r in self._rows(ref):
                if r["user"] != self.user and not self.admin:
                    raise PermissionDenied(f"you ({self.user}) may not cancel job {r['job_id']}: it belongs to "
                                           f"{r['user']}; only its owner or an admin (group hybridctl-admin) may")
                label = job_label(r)
                if "_" in str(ref) and label != str(ref):
                    continue
                if r["state"] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"):
                    skipped.append(f"{label} ({r['state']})")
                else:
                    r["state"] = "CANCELLED"
                    done.append(label)
        return {"cancelled": done, "skipped": skipped}

    def op_priority(self, job: str, priority: int) -> dict[str, Any]:
        for r in self._rows(job):
            r["priority"] = priority
        return {"id": int(str(job).split("_")[0]), "priority": priority}

    def op_drain(self, node: str, reason: str = "") -> dict[str, Any]:
        self._need_admin(f"drain node {node}")
        n = self._node(node)
        n["drained"], n["state"], n["state_reason"] = True, "DRAINING" if n["gpus_used"] else "DRAINED", reason
        return {"node": node, "state": n["state"]}

    def op_resume(self, node: str) -> dict[str, Any]:
        self._need_admin(f"resume node {node}")
        n = self._node(node)
        n["drained"], n["state"], n["state_reason"] = False, "UP", ""
        return {"node": node, "state": "UP"}

    def op_submit(self, spec: dict[str, Any], source: str = "", full: bool = False) -> dict[str, Any]:
        job_id = self.next_id
        self.next_id += 1
        res = spec.get("resources") or {}
        self.jobs.append({"job_id": job_id, "task": 0, "user": self.user, "name": spec.get("name") or "",
                          "state": "PENDING", "reason": "", "gpus": res.get("accelerators") or 0, "gpu_type": None,
                          "num_nodes": 1, "nodes": "", "gpu_ids": "", "priority": int(spec.get("priority") or 0),
                          "submitted_at": self.now, "started_at": None, "ended_at": None, "attempt": 0,
                          "exit_code": None, "array": None, "restarts": 0,
                          "max_restarts": int(spec.get("max_restarts") or 0), "recoveries": 0, "recovery_causes": {}})
        return {"id": job_id, "warnings": []}

    def _node(self, name: str) -> dict[str, Any]:
        for n in self.nodes:
            if n["name"] == name:
                return n
        raise NotFound(f"node {name!r} does not exist; `hybridctl nodes` lists the nodes")


def seed_history(app_state: Any, api: FakeApi, samples: int = 60) -> None:
    """Give every node with telemetry `samples` past samples (ending at the current one), so charts
    and sparklines have a fixed history before the first poll; the poll then adds nothing new."""
    for step in range(samples - 1):
        past = []
        for n in api.nodes:
            t = n.get("telemetry")
            if not t:
                continue
            gpus = [(g["name"], g["mem_total_mb"]) for g in t["gpus"]]
            busy = {g["index"] for g in t["gpus"] if g["util_gpu"] and g["util_gpu"] > 20}
            procs = {g["index"]: g["processes"] for g in t["gpus"]}
            past.append({**n, "telemetry": telemetry(n["name"], gpus, busy, procs, step, api.now - samples + step)})
        app_state.history.add(past)
    app_state.history.add(api.nodes)
