"""`hybridctl nodes [--json]` and `hybridctl node drain|resume|add|remove` (admins).

Stdlib only at import time: `cli/main.py` registers this on every run, `submit` included."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from hybridctl.core.errors import ExitCode
from hybridctl.cli import common

EPILOG_NODE_ADD = """\
examples:
  hybridctl node add gpu01 --host gpu01.lab --user hybridctl --identity KEY --accept-new
  hybridctl node add gpu02 --host gpu02.lab --user root --identity KEY --accept-new --install
  hybridctl node add gpu03 --host 10.0.0.3 --identity KEY --accept-new --install --wheels ./wheels  # air-gapped
  hybridctl node add box --host box.lab --identity KEY --accept-new --install --no-systemd --cpus 16

offline bundle for --wheels (on a machine with the node's OS, CPU and Python):
  pip download -d wheels psutil nvidia-ml-py
"""


def add_parser(sub: Any) -> None:
    """Register `nodes` and `node` on the main parser's subparsers."""
    n = sub.add_parser("nodes", help="list nodes")
    n.add_argument("--json", action="store_true")
    n.add_argument("--cache", action="store_true",
                   help="list what each node's cache holds (environments, data), largest first")

    nd = sub.add_parser("node", help="add, remove, drain or resume a node (admins)")
    ndsub = nd.add_subparsers(dest="node_cmd", metavar="ACTION", required=True)
    d = ndsub.add_parser("drain", help="stop placing jobs on a node; running jobs finish")
    d.add_argument("name")
    d.add_argument("--reason")
    d.add_argument("--json", action="store_true")
    r = ndsub.add_parser("resume", help="accept jobs again")
    r.add_argument("name")
    r.add_argument("--json", action="store_true")

    a = ndsub.add_parser("add", help="add a GPU server reached over SSH (probes its agent; --install puts it there)",
                         description="Add a node: pin its SSH host key (--accept-new), reach its agent over SSH,\n"
                         "and print the GPUs it reports.\n\n"
                         "With --install, first put the agent there: copy it over SFTP into --install-dir, install\n"
                         "psutil and nvidia-ml-py (from the --wheels bundle, offline; without it, with pip unless\n"
                         "its Python has them), start it as a systemd unit (a system unit when the SSH user is\n"
                         "root, else a `systemctl --user` unit: jobs then run as that user) or, with --no-systemd,\n"
                         "detached, and wait for it to listen. Adding the node again with --install upgrades the\n"
                         "agent in place; running jobs keep running.",
                         epilog=EPILOG_NODE_ADD, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("name")
    a.add_argument("--host", required=True, help="SSH host name or address ('local': this host's agent socket)")
    a.add_argument("--port", type=int, default=22)
    a.add_argument("--user", help="SSH user (default: the controller's)")
    a.add_argument("--identity", metavar="KEY", help="SSH private key file")
    a.add_argument("--accept-new", action="store_true", help="pin the host key on first contact (like OpenSSH)")
    a.add_argument("--agent-socket", metavar="PATH", help="the agent's socket path on the node")
    a.add_argument("--site", choices=["onprem", "cloud"], default="onprem")
    a.add_argument("--cpus", type=float, metavar="N",
                   help="CPU cores jobs may use there, instead of the count the agent reports")
    ins = a.add_argument_group("installing the agent")
    ins.add_argument("--install", action="store_true", help="copy the agent over SSH/SFTP, start it, then add")
    ins.add_argument("--python", metavar="PY", help="the node's Python 3.9+ (default: python3 on its PATH)")
    ins.add_argument("--wheels", metavar="DIR",
                     help="offline: install psutil and nvidia-ml-py from the .whl files in DIR (on this host) "
                     "with pip --no-index")
    ins.add_argument("--install-dir", metavar="DIR",
                     help="where on the node (default: /opt/hybridctl-agent as root, else ~/.hybridctl)")
    ins.add_argument("--no-systemd", action="store_true",
                     help="start the agent detached (setsid nohup) instead of as a systemd unit, e.g. in containers")
    a.add_argument("--json", action="store_true")
    rm = ndsub.add_parser("remove", help="forget a node (it must run no jobs)")
    rm.add_argument("name")
    rm.add_argument("--json", action="store_true")




def cmd_nodes(args: argparse.Namespace) -> int:
    from hybridctl.cli import output as o

    with common.client() as c:
        rows = c.call("nodes", cache=True) if getattr(args, "cache", False) else c.call("nodes")
    if args.json:
        o.emit_json(rows)
        return ExitCode.OK
    if getattr(args, "cache", False):
        print_caches(rows)
        return ExitCode.OK
    out = []
    for n in rows:
        models = sorted({g["model"].replace("NVIDIA ", "") for g in n["gpus"]})
        tel = n.get("telemetry") or {}
        gpus = tel.get("gpus") or []
        util = [g["util_gpu"] for g in gpus if g.get("util_gpu") is not None]
        used = sum(g.get("mem_used_mb") or 0 for g in gpus)
        total = sum(g.get("mem_total_mb") or 0 for g in gpus)
        temps = [g["temp_c"] for g in gpus if g.get("temp_c") is not None]
        sick = [str(g["index"]) for g in n["gpus"] if not g.get("healthy", True)]
        foreign = [str(g["index"]) for g in n["gpus"] if g.get("foreign")]
        reason = n["state_reason"] or n.get("link_error") or ""
        notes = []
        if sick:
            notes.append(f"GPU {','.join(sick)} unhealthy")
        if foreign:
            notes.append(f"GPU {','.join(foreign)} foreign")
        if reason:
            notes.append(reason)
        reason = "; ".join(notes)
        out.append([n["name"], n["state"], f"{n['gpus_used']}/{n['gpus_total']}", ",".join(models),
                    f"{sum(util) / len(util):.0f}%" if util else "-",
                    f"{used / 1024:.0f}/{total / 1024:.0f}G" if total else "-",
                    f"{max(temps)}C" if temps else "-", o.containment_text(n.get("containment")), reason])
    print(o.table(["NODE", "STATE", "GPUS", "MODEL", "UTIL", "GPU MEM", "TEMP", "CGROUP", "REASON"], out,
                  max_last=40))
    return ExitCode.OK


def print_caches(rows: list[dict[str, Any]]) -> None:
    """`nodes --cache`: per node, what its content cache holds (what cache-aware placement reads)."""
    from hybridctl.cli import output as o
    from hybridctl.core.locality import size_text

    out = []
    for n in rows:
        summary = n.get("cache")
        if summary is None:
            out.append([n["name"], "-", "not reported", ""])
            continue
        cap = f" of {size_text(summary['max_bytes'])}" if summary.get("max_bytes") else ""
        out.append([n["name"], "total", f"{summary['envs']} envs, {summary['objects']} data objects",
                    size_text(summary["env_bytes"] + summary["object_bytes"]) + cap])
        items = n.get("cache_items") or []
        for it in items:
            out.append(["", it["kind"], it["id"][:16], size_text(it["bytes"])])
        more = summary["envs"] + summary["objects"] - len(items)
        if more > 0:
            out.append(["", "", f"… and {more} more", ""])
    print(o.table(["NODE", "KIND", "CONTENT", "SIZE"], out))


def cmd_node(args: argparse.Namespace) -> int:
    # An install may run pip on the node; the controller bounds every step of it.
    with common.client(timeout=900.0 if getattr(args, "install", False) else 60.0) as c:
        if args.node_cmd == "drain":
            res = c.call("drain", node=args.name, reason=args.reason or "")
        elif args.node_cmd == "resume":
            res = c.call("resume", node=args.name)
        elif args.node_cmd == "remove":
            res = c.call("node_remove", name=args.name)
            common.out(args, res, f"node {args.name} removed")
            return ExitCode.OK
        else:
            what = "installing the agent on" if args.install else "contacting"
            print(f"hybridctl: {what} {args.host}:{args.port} …", file=sys.stderr)
            res = c.call("node_add", name=args.name, host=args.host, port=args.port, user=args.user,
                         identity=os.path.abspath(args.identity) if args.identity else None,
                         agent_socket=args.agent_socket, accept_new=args.accept_new, site=args.site,
                         cpus=args.cpus, install=args.install, python=args.python,
                         wheels=os.path.abspath(args.wheels) if args.wheels else None,
                         install_dir=args.install_dir, systemd=not args.no_systemd)
            for line in (res.get("install") or {}).get("steps", []):
                print(f"  {line}", file=sys.stderr)
            gpus = ", ".join(f"{g['index']}:{g['model']}" for g in res["gpus"]) or "none"
            cpus = f"{res['cpus']:g} CPUs" + (f" (the agent reports {res['cpus_reported']:g})"
                                              if res["cpus"] != res["cpus_reported"] else "")
            verb = "upgraded" if res.get("upgraded") else "added"
            text = f"node {res['node']} {verb}: {len(res['gpus'])} GPUs ({gpus}), {cpus}"
            if res.get("gpu_error"):
                text += f"\n  no GPUs: {res['gpu_error']}"
            if res.get("host_key"):
                text += f"\n  pinned host key {res['host_key']}"
            common.out(args, res, text)
            return ExitCode.OK
    common.out(args, res, f"node {res['node']}: {res['state']}")
    return ExitCode.OK
