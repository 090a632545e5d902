"""The cloud requests (`cloud status`, `cloud offers`, `cloud cost`) and the wait-or-pay estimate
that `show` gives a pending job: a mixin of `Controller` (service.py), which dispatches `op_*` by
name. They read the store and the autoscaler's last pass (`CloudView`), and change nothing."""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable

from hybridctl.cloud.base import GONE, CloudNodeState
from hybridctl.cloud.cost import Held, hourly_by_job
from hybridctl.cloud.providers import catalog
from hybridctl.config import Settings
from hybridctl.control.budget import limit_use, limits, utc_day
from hybridctl.control.checks import request_count, request_flag
from hybridctl.control.identity import Caller
from hybridctl.control.ports import CloudView
from hybridctl.control.scheduler import Scheduler
from hybridctl.core import burst
from hybridctl.core.allowance import CloudGate, owners_with_budgets
from hybridctl.core.errors import HybridctlError, SpecError
from hybridctl.core.fields import parse_accelerators
from hybridctl.core.forecast import expected_end
from hybridctl.core.locality import dur_text, size_text
from hybridctl.core.model import Resources, task_label
from hybridctl.fmt import reclaims_above_price
from hybridctl.store.sqlite import Store

RECLAIM_RECORD_S = 30 * 86400.0
"""How far back `cloud status` counts each spot pool's reclaims (pools change)."""


class CloudRequests:
    """What `Controller` needs for these: its store, settings, clock, scheduler and cloud view."""

    store: Store
    settings: Settings
    clock: Callable[[], float]
    scheduler: Scheduler
    cloud: CloudView | None
    _catalog_offers: list[burst.Offer] | None = None
    """The catalog's offers, read once (bursting off, or before the autoscaler's first pass)."""

    def _cloud_offers(self) -> list[burst.Offer]:
        """Offers as the autoscaler last saw them; with bursting off (or before its first pass),
        the catalog's prices for the configured providers."""
        if self.cloud is not None and self.cloud.offers:
            return list(self.cloud.offers)
        cached = self._catalog_offers
        if cached is None:
            cat = catalog(self.settings)
            cfg = self.settings.cloud
            cached = [o for p in cfg.providers if p in ("simulated", "aws")
                      for o in cat.offers(p, cfg.aws.regions if p == "aws" else None)]
            self._catalog_offers = cached
        return cached

    def op_cloud_status(self, caller: Caller, all: bool = False, ended: int = 0) -> dict[str, Any]:
        """Cloud nodes (with `all`, also every one given back; with `ended`, the last that many
        given back), spend against the limits, and why any burst is held back."""
        all = request_flag("all", all)
        ended = request_count("ended", ended, "a whole number of nodes given back, 0 or more")
        cfg = self.settings.cloud
        lim = limits(self.settings)
        now = self.clock()
        scaler = self.cloud
        activity = self.store.cloud_node_activity()
        instances = []
        rows = self.store.cloud_instances(live=not (all or ended))
        if ended and not all:
            gone = [r for r in rows if r["state"] in GONE]
            keep = {r["instance_id"] for r in sorted(gone, key=lambda r: r["ended_at"] or 0)[-ended:]}
            rows = [r for r in rows if r["state"] not in GONE or r["instance_id"] in keep]
        for r in rows:
            o = r["offer"]
            held, last_end = activity.get(r["node"], (0, None))
            idle = None if held or r["state"] != CloudNodeState.UP else now - max(last_end or 0.0, r["ready_at"] or r["launched_at"])
            instances.append({
                "node": r["node"], "provider": r["provider"], "instance_id": r["instance_id"],
                "instance_type": o["instance_type"], "region": o["region"], "zone": o["zone"],
                "market": "spot" if o["spot"] else "on-demand", "gpu_type": o.get("gpu_type"), "gpus": o["gpus"],
                "price_hourly": r["price_hourly"], "state": r["state"], "reason": r["reason"],
                "launched_at": r["launched_at"], "ready_at": r["ready_at"], "ended_at": r["ended_at"],
                "jobs": held, "idle_s": idle,
                "spent_usd": round(r["spent_usd"], 4),
            })
        since = utc_day(burst.period_start(now, lim.budget_period))
        spent = self.store.cloud_spent_since(since)
        last = scaler.last if scaler is not None else None
        return {
            "enabled": cfg.enabled, "running": scaler is not None, "providers": list(cfg.providers),
            "errors": dict(scaler.errors) if scaler is not None else {},
            "period": lim.budget_period, "spent_usd": round(spent, 4), "budget_usd": lim.budget_usd,
            "hourly_usd": round(sum(i["price_hourly"] for i in instances if i["state"] not in GONE), 4), "max_hourly_usd": lim.max_hourly_usd,
            "nodes": sum(1 for i in instances if i["state"] not in GONE), "max_nodes": lim.max_nodes, "after_s": lim.after, "idle_timeout_s": lim.idle_timeout,
            "allow_on_demand": lim.allow_on_demand, "instances": instances,
            "blocked": [{"job": burst.label((b.job_id, b.task)), "reason": b.reason} for b in last.blocked] if last else [],
            "covered": [{"job": burst.label(k), "node": n} for k, n in last.covered.items()] if last else [],
            "notes": list(last.notes) if last else [],
            "last_pass": scaler.last_at if scaler is not None else None,
            "backoffs": [{"pool": p, "until": u, "reason": why, "nodes": n}
                         for p, (u, why, n) in sorted(self.store.cloud_backoffs(now).items())],
            "leaks": list(scaler.leaks) if scaler is not None else [],
            "owners": self._owner_budgets(caller, lim, since, last.gate if last else None),
            "reclaims": self._reclaim_record(lim, now), "reclaims_since": now - RECLAIM_RECORD_S,
        }

    def _reclaim_record(self, lim: burst.Limits, now: float) -> list[dict[str, Any]]:
        """Each spot pool the controller held nodes in over the last `RECLAIM_RECORD_S`: node-hours,
        reclaims, the rate they make, and the rate the burst policy prices a reclaim at there (the
        catalog's `interruptions:`, else `burst.reclaim_per_h`), highest observed rate first. Seen
        next to each other, a pool that reclaims more than its price assumes shows; `above_price`
        marks one whose count chance at the priced rate explains less than 5 % of the time
        (`fmt.reclaims_above_price`), the same mark the CLI and the TUI show."""
        stated = {o.pool: o.reclaim_per_h for o in self._cloud_offers() if o.spot}
        out = []
        for pool, (hours, reclaims) in self.store.cloud_spot_record(now - RECLAIM_RECORD_S, now).items():
            rate = stated.get(pool)
            row = {"pool": pool, "node_hours": round(hours, 3), "reclaims": reclaims,
                   "per_node_hour": round(reclaims / hours, 4) if hours > 0 else None,
                   "priced_per_node_hour": rate if rate is not None else lim.reclaim_per_h,
                   "priced_from": "catalog" if rate is not None else "burst.reclaim_per_h"}
            row["above_price"] = row["per_node_hour"] is not None and reclaims_above_price(row)
            out.append(row)
        return sorted(out, key=lambda r: (-(r["per_node_hour"] or 0.0), -r["node_hours"], r["pool"]))

    def _owner_budgets(self, caller: Caller, lim: burst.Limits, since: str,
                       gate: CloudGate | None) -> list[dict[str, Any]]:
        """Each user and group with a cloud budget of their own (named, or by '*' once they spent
        this period): what they spent this period and, as the last burst decision saw it, spent
        or committed (what their running cloud jobs will still cost), against the budget, most
        used first. A caller who is not an admin sees their own user's and group's only."""
        if not (lim.user_budget_usd or lim.group_budget_usd):
            return []
        spent = self.store.cloud_owner_spent_since(since)
        used = gate.purses.used if gate is not None else {}
        mine = {("user", caller.user), ("group", caller.group)}
        out = [{"kind": kind, "name": name, "spent_usd": round(spent.get((kind, name), 0.0), 4),
                "used_usd": round(max(used.get((kind, name), 0.0), spent.get((kind, name), 0.0)), 4),
                "budget_usd": cap}
               for (kind, name), cap in owners_with_budgets(lim.user_budget_usd, lim.group_budget_usd,
                                                            (*spent, *used)).items()
               if caller.admin or (kind, name) in mine]
        return sorted(out, key=lambda o: (-o["used_usd"] / o["budget_usd"] if o["budget_usd"] else -math.inf,
                                          o["kind"], o["name"]))

    def op_cloud_offers(self, caller: Caller, gpus: str | None = None, spot: bool | None = None) -> list[dict[str, Any]]:
        """Offers, cheapest first; `gpus` ('A100:8', '2') keeps those that can hold that many."""
        offers = self._cloud_offers()
        if gpus:
            count, gpu_type = parse_accelerators(gpus, field="--gpus")
            want = Resources(gpus=count, gpu_type=gpu_type, cpus=0.0)
            offers = [o for o in offers if burst.fits(o, want)]
        if spot is not None:
            offers = [o for o in offers if o.spot == spot]
        return [{**o.to_dict(), "pool": o.pool, "market": o.market}
                for o in sorted(offers, key=lambda o: (o.price_hourly, o.pool))]

    def op_cloud_cost(self, caller: Caller, by: str = "node") -> list[dict[str, Any]]:
        """Cloud $ so far and $/h now, per node, job or user (idle node time is its own row)."""
        if by not in ("node", "job", "user", "group"):
            raise SpecError("--by", by, "accepted: node, job, user, group")
        now_rate: dict[str, float] = {}
        for r in self.store.cloud_instances():
            if r["state"] not in (CloudNodeState.UP, CloudNodeState.DRAINING, CloudNodeState.BOOTSTRAPPING):
                continue
            if by == "node":
                now_rate[r["node"]] = now_rate.get(r["node"], 0.0) + r["price_hourly"]
                continue
            o = r["offer"]
            held = [Held(**a._asdict()) for a in self.store.cloud_allocations(r["node"], r["billed_until"]) if a.end is None]
            charges = hourly_by_job(r["price_hourly"], int(o.get("gpus") or 0), float(o.get("cpus") or 1), held)
            idle = r["price_hourly"] - sum(c.usd for c in charges)
            for c in charges:
                k = f"{c.job_id}_{c.task}" if by == "job" else c.group if by == "group" else c.user
                now_rate[k] = now_rate.get(k, 0.0) + c.usd
            idle_key = "0_0" if by == "job" else ""
            now_rate[idle_key] = now_rate.get(idle_key, 0.0) + max(0.0, idle)
        rows = []
        seen = set()
        for row in self.store.cloud_costs(by):
            k = row["key"]
            seen.add(k)
            rows.append({by: _cost_label(by, k), "usd": round(row["usd"], 4), "hours": round(row["hours"], 4),
                         "usd_per_hour": round(now_rate.get(k, 0.0), 4), "instances": row["instances"]})
        for k, rate in now_rate.items():
            if k not in seen and rate > 0:
                rows.append({by: _cost_label(by, k), "usd": 0.0, "hours": 0.0, "usd_per_hour": round(rate, 4), "instances": 1})
        return rows

    def cloud_wait_or_pay(self, job_id: int) -> dict[str, Any] | None:
        """For a pending job: the estimated wait on-prem (the scheduler replayed forward over the
        expected ends of running jobs) and the cheapest cloud offer that fits it."""
        try:
            pending = self.store.pending()
            task = next((t for t in pending if t.job_id == job_id), None)
            if task is None:
                return None
            now = self.clock()
            runtimes = self.store.recent_runtimes()
            default = statistics.median(runtimes) if len(runtimes) >= 5 else self.settings.cloud.burst.unknown_runtime
            # A time-limited run ends where such runs end, where the burst pass says so too.
            use = limit_use(self.store, now) if limits(self.settings).limit_use_forecast else 1.0
            running = [
                burst.Running(a.node, tuple(a.gpus), a.cpus, a.memory_mb,
                              expected_end(a.start, a.start + a.time_limit, use, now) if a.time_limit
                              else max(a.start + default, now + default / 4))
                for a in self.store.running_allocations()
            ]
            limits_ = dict(self.store.time_limits([(t.job_id, t.task) for t in pending]))
            wait, ahead = burst.estimate_wait(task, pending, self.store.node_views(), running, self.scheduler.policy, now,
                                              limits_, default, max_events=200)
            cfg = self.settings.cloud
            backoff = {p: u for p, (u, _r, n) in self.store.cloud_backoffs(now).items() if n <= max(task.num_nodes, 1)}
            offer, why = burst.cheapest(task.resources, self._cloud_offers(), backoff, now,
                                        cfg.burst.allow_on_demand or not task.resources.use_spot)
            text = burst.wait_or_pay(task, wait, ahead, offer, why, task.num_nodes)
            moves = self.scheduler.transfer_estimate(job_id, "cloud") if task.placement != "onprem" else None
            if moves is not None and offer is not None:  # its world must reach a cloud node first
                text += f" + ~{dur_text(moves[1])} to move {size_text(moves[0])} there"
            if not cfg.enabled and offer is not None and task.placement != "onprem":
                text += " (bursting is off: cloud.enabled)"
        except HybridctlError as exc:
            return {"text": f"no estimate: {exc.message}"}
        return {"text": text, "local_wait_s": wait, "ahead": ahead,
                "cloud_offer": offer.to_dict() if offer is not None else None,
                "cloud_transfer": {"bytes": moves[0], "seconds": moves[1]} if moves is not None else None}


def _cost_label(by: str, key: str) -> str:
    if by == "job":
        job, _, task = str(key).partition("_")
        return "(idle)" if job == "0" else task_label(int(job), int(task or 0))
    if by in ("user", "group"):
        return key or "(idle)"
    return str(key)
