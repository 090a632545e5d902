"""The cloud tables: instances (one row per launch, recorded before the provider is asked),
their accrued costs per job, the daily spend, and the pools backing off after failures."""

from __future__ import annotations

import json
from typing import Any, Sequence

from hybridctl.cloud.base import GONE, CloudNodeState, reclaimed
from hybridctl.core.offers import Offer
from hybridctl.store.base import Tables
from hybridctl.store.rows import CloudAllocation


class CloudTables(Tables):
    # ---- cloud ----------------------------------------------------------------------------------

    _INSTANCE_COLS = (
        "instance_id", "provider", "node", "offer", "price_hourly", "state", "reason", "host", "port", "files_root",
        "for_tasks", "launched_at", "ready_at", "ended_at", "billed_until", "spent_usd", "updated_at",
    )

    def cloud_add_instance(self, instance_id: str, provider: str, node: str, offer: dict[str, Any],
                           for_tasks: Sequence[tuple[int, int]], now: float) -> None:
        """Record a launch before the provider is asked, so a crash cannot leave an unknown instance
        (the leak sweep would still find it by its tag)."""
        with self.tx() as c:
            c.execute(
                "INSERT INTO cloud_instances (instance_id, provider, node, offer, price_hourly, state, for_tasks,"
                " launched_at, billed_until, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (instance_id, provider, node, json.dumps(offer), float(offer["price_hourly"]),
                 CloudNodeState.LAUNCHING.value, json.dumps([list(t) for t in for_tasks]), now, now, now),
            )

    def cloud_update_instance(self, instance_id: str, now: float, **fields: Any) -> None:
        """Set columns of one instance row (`new_id` renames it once the provider named it)."""
        if "new_id" in fields:
            fields["instance_id"] = fields.pop("new_id")
        sets = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            c.execute(f"UPDATE cloud_instances SET {sets}, updated_at=? WHERE instance_id=?",
                      (*fields.values(), now, instance_id))
            if "instance_id" in fields:
                c.execute("UPDATE cloud_costs SET instance_id=? WHERE instance_id=?", (fields["instance_id"], instance_id))

    def cloud_instances(self, live: bool = True) -> list[dict[str, Any]]:
        """Instance rows, oldest first; `live` = not terminated or failed."""
        q = f"SELECT {', '.join(self._INSTANCE_COLS)} FROM cloud_instances"
        if live:
            q += f" WHERE state NOT IN ({', '.join(repr(s.value) for s in sorted(GONE))})"
        out = []
        for row in self.conn.execute(q + " ORDER BY launched_at, instance_id"):
            d = dict(zip(self._INSTANCE_COLS, row))
            d["offer"] = json.loads(d["offer"])
            d["state"] = CloudNodeState(d["state"])
            d["for_tasks"] = [tuple(t) for t in json.loads(d["for_tasks"])]
            out.append(d)
        return out

    def cloud_instance_ids(self) -> set[str]:
        """Every instance id ever recorded (the leak sweep's memory)."""
        return {r[0] for r in self.conn.execute("SELECT instance_id FROM cloud_instances")}

    def set_node_cloud(self, name: str, provider: str, instance_id: str, price_hourly: float,
                       launched_at: float, now: float) -> None:
        self._update_node(name, now, provider=provider, instance_id=instance_id, price_hourly=price_hourly,
                          launched_at=launched_at)

    def cloud_node_activity(self) -> dict[str, tuple[int, float | None]]:
        """Per node: (allocations held now, when the last one ended)."""
        return {
            n: (int(held), last)
            for n, held, last in self.conn.execute(
                "SELECT node, SUM(end IS NULL), MAX(end) FROM allocations GROUP BY node"
            )
        }

    def cloud_allocations(self, node: str, since: float) -> list[CloudAllocation]:
        """(job, task, user, gpus, cpus, start, end, group) of allocations on `node` held after `since`."""
        return [
            CloudAllocation(j, t, u, len(json.loads(g)), c, s, e, grp)
            for j, t, u, g, c, s, e, grp in self.conn.execute(
                "SELECT job_id, task, user, gpus, cpus, start, end, grp FROM allocations"
                " WHERE node=? AND (end IS NULL OR end > ?)",
                (node, since),
            )
        ]

    def cloud_accrue(self, instance_id: str, node: str, charges: Sequence[tuple[int, int, str, str, float, float]],
                     until: float, day: str, now: float) -> None:
        """Add (job, task, user, group, usd, hours) charges of one instance, move its
        `billed_until`, and add their sum to the day's spend (and each to its user's and group's;
        idle time, user '', to no one's), in one transaction."""
        total = sum(ch[4] for ch in charges)
        owners: dict[tuple[str, str], float] = {}
        for _j, _t, u, g, usd, _h in charges:
            if u:
                owners[("user", u)] = owners.get(("user", u), 0.0) + usd
                owners[("group", g)] = owners.get(("group", g), 0.0) + usd
        with self.tx() as c:
            c.executemany(
                "INSERT INTO cloud_costs (instance_id, node, job_id, task, user, grp, usd, hours, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(instance_id, job_id, task) DO UPDATE SET"
                " usd=usd+excluded.usd, hours=hours+excluded.hours, updated_at=excluded.updated_at",
                ((instance_id, node, j, t, u, g, usd, h, now) for j, t, u, g, usd, h in charges),
            )
            c.executemany("INSERT INTO cloud_spend_owner (day, kind, name, usd) VALUES (?,?,?,?)"
                          " ON CONFLICT(day, kind, name) DO UPDATE SET usd=usd+excluded.usd",
                          ((day, kind, name, usd) for (kind, name), usd in owners.items()))
            c.execute("UPDATE cloud_instances SET spent_usd=spent_usd+?, billed_until=?, updated_at=?"
                      " WHERE instance_id=?", (total, until, now, instance_id))
            c.execute("INSERT INTO cloud_spend (day, usd) VALUES (?, ?) ON CONFLICT(day) DO UPDATE SET"
                      " usd=usd+excluded.usd", (day, total))

    def cloud_spent_since(self, day: str) -> float:
        """$ spent on days from `day` (YYYY-MM-DD, UTC) on."""
        row = self.conn.execute("SELECT COALESCE(SUM(usd), 0) FROM cloud_spend WHERE day >= ?", (day,)).fetchone()
        return float(row[0])

    def cloud_spot_record(self, since: float, now: float) -> dict[str, tuple[float, int]]:
        """Spot pool -> (node-hours its instances were held between `since` and `now`, how many of
        them ended in a reclaim since `since`, on the provider's word: `cloud.base.reclaimed`), as
        `cloud status` shows it next to the rate the burst policy prices a reclaim at there."""
        out: dict[str, tuple[float, int]] = {}
        for offer, launched, ended, state, reason in self.conn.execute(
                "SELECT offer, launched_at, ended_at, state, reason FROM cloud_instances"
                " WHERE json_extract(offer, '$.spot') AND COALESCE(ended_at, ?) >= ?"
                " AND instance_id NOT LIKE 'launch:%'", (now, since)):
            pool = Offer.from_dict(json.loads(offer)).pool
            held = max(0.0, min(now, ended if ended is not None else now) - max(launched, since)) / 3600.0
            h, k = out.get(pool, (0.0, 0))
            out[pool] = (h + held, k + (state == CloudNodeState.TERMINATED.value and reclaimed(reason)))
        return out

    def cloud_owner_spent_since(self, day: str) -> dict[tuple[str, str], float]:
        """$ spent on days from `day` on per ('user', name) and ('group', name)."""
        return {(k, n): float(usd) for k, n, usd in self.conn.execute(
            "SELECT kind, name, SUM(usd) FROM cloud_spend_owner WHERE day >= ? GROUP BY kind, name", (day,))}

    def cloud_costs(self, by: str) -> list[dict[str, Any]]:
        """Accrued $ and hours grouped by 'node', 'job', 'user' or 'group' (idle time is job 0,
        user and group '')."""
        key = {"node": "c.node", "job": "c.job_id || '_' || c.task", "user": "c.user", "group": "c.grp"}[by]
        rows = self.conn.execute(
            f"SELECT {key}, SUM(c.usd), SUM(c.hours), MAX(i.provider), COUNT(DISTINCT c.instance_id)"
            " FROM cloud_costs c JOIN cloud_instances i ON i.instance_id=c.instance_id"
            f" GROUP BY {key} ORDER BY SUM(c.usd) DESC"
        )
        return [{"key": k, "usd": usd, "hours": h, "provider": p, "instances": n} for k, usd, h, p, n in rows]

    def cloud_set_backoff(self, pool: str, until: float, reason: str, nodes: int = 1) -> None:
        """Do not ask `pool` for `nodes` nodes or more at once until `until` (1: for any); the
        latest refusal replaces an earlier one."""
        with self.tx() as c:
            c.execute("INSERT INTO cloud_backoff (pool, until, reason, nodes) VALUES (?,?,?,?) ON CONFLICT(pool)"
                      " DO UPDATE SET until=excluded.until, reason=excluded.reason, nodes=excluded.nodes",
                      (pool, until, reason, max(int(nodes), 1)))

    def cloud_backoffs(self, now: float) -> dict[str, tuple[float, str, int]]:
        """Pools still backing off at `now`: pool -> (until, reason, the fewest nodes it is not
        asked for: 1 = any launch)."""
        return {p: (u, r, n) for p, u, r, n in self.conn.execute(
            "SELECT pool, until, reason, nodes FROM cloud_backoff WHERE until > ?", (now,))}
