"""`hybridctl cloud status [--all] | offers [--gpus A100:8] | cost [--by user|job|node] [--json]`.

Stdlib only at import time: `cli/main.py` registers this on every run, `submit` included."""

from __future__ import annotations

import argparse
import time
from typing import Any


def add_parser(sub: Any) -> None:
    """Register `cloud` and its actions on the main parser's subparsers."""
    cl = sub.add_parser("cloud", help="cloud bursting: nodes, spend and limits, offers, cost",
                        description="Cloud bursting: rented nodes, spend against the limits, offers and cost.")
    csub = cl.add_subparsers(dest="cloud_cmd", metavar="ACTION", required=True)
    st = csub.add_parser("status", help="cloud nodes, spend against the limits, why a burst is held back,"
                                        " each spot pool's reclaims")
    st.add_argument("--all", action="store_true", help="also the nodes already given back (terminated, failed)")
    st.add_argument("--json", action="store_true")
    of = csub.add_parser("offers", help="instance offers, cheapest first")
    of.add_argument("--gpus", metavar="N|TYPE:N", help="only offers that can hold this, e.g. A100:8")
    mk = of.add_mutually_exclusive_group()
    mk.add_argument("--spot", dest="spot", action="store_const", const=True, help="spot offers only")
    mk.add_argument("--on-demand", dest="spot", action="store_const", const=False, help="on-demand offers only")
    of.add_argument("--limit", type=int, default=30, metavar="N", help="show the N cheapest (default 30; 0 = all)")
    of.add_argument("--json", action="store_true")
    co = csub.add_parser("cost", help="cloud $ so far and $/h now")
    co.add_argument("--by", choices=["node", "job", "user", "group"], default="node",
                    help="one row per cloud node, job, user or Unix group (default node)")
    co.add_argument("--json", action="store_true")


def cmd_cloud(args: argparse.Namespace) -> int:
    from hybridctl import paths
    from hybridctl.cli import output as o
    from hybridctl.control.client import Client

    with Client(paths.socket_path()) as c:
        if args.cloud_cmd == "status":
            data = c.call("cloud_status", all=args.all)
            text = status_text(data)
        elif args.cloud_cmd == "offers":
            data = c.call("cloud_offers", gpus=args.gpus, spot=args.spot)
            shown = data[: args.limit] if args.limit else data
            text = o.table(
                ["PROVIDER", "TYPE", "GPUS", "CPUS", "MEM", "ZONE", "MARKET", "$/H"],
                [[d["provider"], d["instance_type"], f"{d['gpus']}x {d['gpu_type']}" if d["gpus"] else "-",
                  f"{d['cpus']:g}", f"{d['memory_mb'] // 1024}G", d["zone"], d["market"],
                  f"{d['price_hourly']:.3f}"] for d in shown],
            )
            if len(shown) < len(data):
                text += f"\n… {len(data) - len(shown)} more (--limit 0 shows all)"
            if not data:
                text = "no offer fits" + (f" {args.gpus}" if args.gpus else "")
        else:
            data = c.call("cloud_cost", by=args.by)
            text = o.table(
                [args.by.upper(), "$ SO FAR", "$/H NOW", "HOURS"],
                [[d[args.by], f"{d['usd']:.2f}", f"{d['usd_per_hour']:.2f}", f"{d['hours']:.2f}"] for d in data],
            ) if data else "no cloud spend recorded"
    if args.json:
        o.emit_json(data)
    else:
        print(text)
    return 0


OWNERS_SHOWN = 8
"""Users and groups with budgets of their own that `cloud status` lists (the most used first)."""
POOLS_SHOWN = 8
"""Spot pools whose reclaim record `cloud status` lists (the highest observed rate first)."""


def status_text(d: dict[str, Any]) -> str:
    from hybridctl.cli import output as o

    if not d["enabled"]:
        head = "cloud bursting is off (set cloud.enabled: true in the controller's config)"
    elif not d["running"]:
        head = "cloud bursting is on, but the autoscaler has not run yet"
    else:
        head = f"cloud bursting on: {', '.join(d['providers'])}"
    lines = [
        head,
        f"  spend   ${d['spent_usd']:.2f} of ${d['budget_usd']:.2f} this {d['period']}",
        f"  burn    ${d['hourly_usd']:.2f}/h of ${d['max_hourly_usd']:.2f}/h",
        f"  nodes   {d['nodes']} of {d['max_nodes']}   (burst after {o.duration(d['after_s'])} waiting,"
        f" give back after {o.duration(d['idle_timeout_s'])} idle"
        f"{', on-demand fallback' if d['allow_on_demand'] else ''})",
    ]
    owners = d.get("owners") or []
    for ow in owners[:OWNERS_SHOWN]:
        lines.append(f"  {ow['kind']:<7} {ow['name']}: ${ow['spent_usd']:.2f} spent, ${ow['used_usd']:.2f} with what"
                     f" running jobs will still cost, of ${ow['budget_usd']:.2f} this {d['period']}")
    if len(owners) > OWNERS_SHOWN:
        lines.append(f"  … {len(owners) - OWNERS_SHOWN} more budgets (--json lists all)")
    for p, err in sorted(d["errors"].items()):
        lines.append(f"  ERROR   {p}: {err}")
    if d["instances"]:
        lines.append("")
        lines.append(o.table(
            ["NODE", "PROVIDER", "TYPE", "ZONE", "MARKET", "$/H", "STATE", "JOBS", "IDLE", "$ SO FAR"],
            [[i["node"], i["provider"], i["instance_type"], i["zone"], i["market"], f"{i['price_hourly']:.3f}",
              i["state"], i["jobs"], "" if i["idle_s"] is None else o.duration(i["idle_s"]), f"{i['spent_usd']:.2f}"]
             for i in d["instances"]],
        ))
    if d["blocked"]:
        lines.append("")
        lines.append("held back (jobs wait):")
        lines += [f"  job {b['job']}: {b['reason']}" for b in d["blocked"]]
    if d["covered"]:
        lines.append("")
        lines += [f"  job {c['job']} will run on {c['node']}" for c in d["covered"]]
    for n in d["notes"]:
        lines.append(f"  note: {n}")
    if d["backoffs"]:
        lines.append("")
        lines.append("backing off (capacity errors):")
        now = time.time()
        lines += [f"  {b['pool']}{'' if b.get('nodes', 1) <= 1 else ' (for ' + str(b['nodes']) + ' nodes or more)'}"
                  f" for {o.duration(b['until'] - now)}: {b['reason']}" for b in d["backoffs"]]
    record = d.get("reclaims") or []
    if record:
        lines.append("")
        lines.append(f"spot reclaims since {o.when(d['reclaims_since'])} (what each pool did; what a reclaim"
                     " there is priced at; set a pool's rate with its type's `interruptions:` in"
                     " cloud.catalog):")
        for r in record[:POOLS_SHOWN]:
            held = f"{r['node_hours']:.1f}" if r["node_hours"] >= 10 else f"{r['node_hours']:.2f}"
            rate = o.reclaim_rate(r)
            seen = f" ({rate})" if rate else ""
            above = ("; ABOVE ITS PRICE: so many would come by chance less than 5 % of the time"
                     if r.get("above_price") else "")
            lines.append(f"  {r['pool']}: {r['reclaims']} in {held} node-h{seen};"
                         f" priced at {r['priced_per_node_hour']:g}/h ({r['priced_from']}){above}")
        if len(record) > POOLS_SHOWN:
            lines.append(f"  … {len(record) - POOLS_SHOWN} more pools (--json lists all)")
    for leak in d["leaks"][-5:]:
        lines.append(f"  leak terminated: {leak['provider']} {leak['instance_id']} ({leak['name'] or 'unnamed'})"
                     f" at {o.when(leak['at'])}")
    return "\n".join(lines)
