"""`hybridctl`: the researcher's and admin's command line.

Kept light on purpose: `submit`, `queue`, `show` and `cancel` import only the stdlib and the
small pure core, and talk to the controller over its Unix socket. Heavy parts (the controller,
the TUI) are imported only by the subcommands that need them."""

from __future__ import annotations

import argparse
import enum
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hybridctl.cli import cloud as cloud_cli  # stdlib only, like the rest of this path
from hybridctl.cli import outputs as outputs_cli  # stdlib only too
from hybridctl.core.errors import HybridctlError


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    """The controller is unreachable, or an action failed."""
    USAGE = 2
    """Bad input: a flag, a job spec, a job that can never fit."""
    DENIED = 3
    """The controller refused: not your job, not an admin."""
    NOT_FOUND = 4


EPILOG_SUBMIT = """\
examples:
  hybridctl submit job.yaml                      # a SkyPilot-style task YAML
  hybridctl submit --gpus 2 -- python train.py   # no file: the command after --
  hybridctl submit --gpus A100:1 --array 1-100%10 -- python sweep.py
  id=$(hybridctl submit -- ./run.sh)             # the job id alone goes to stdout
  hybridctl submit --wait --gpus 1 -- ./eval.sh   # block until it ends; exit with its exit code
"""


EPILOG_NODE_ADD = """\
examples:
  hybridctl node add gpu01 --host gpu01.lab --user hybridctl --identity KEY --accept-new
  hybridctl node add gpu02 --host gpu02.lab --user root --identity KEY --accept-new --install
  hybridctl node add gpu03 --host 10.0.0.3 --identity KEY --accept-new --install --wheels ./wheels  # air-gapped
  hybridctl node add box --host box.lab --identity KEY --accept-new --install --no-systemd --cpus 16

offline bundle for --wheels (on a machine with the node's OS, CPU and Python):
  pip download -d wheels psutil nvidia-ml-py
"""


def _client(timeout: float = 60.0) -> Any:
    from hybridctl import paths
    from hybridctl.control.client import Client

    return Client(paths.socket_path(), timeout)


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        from hybridctl.cli.output import emit_json

        emit_json(data)
    elif text:
        print(text)


# ---- submit ----------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, command: list[str]) -> int:
    # Only the stdlib here: the controller parses and validates the file and the flags (once, for
    # every client), and its errors come back naming the file, the field and the value.
    text = None
    base_dir = None
    source = "command line"
    if args.file:
        from hybridctl.textfile import read_text

        source = args.file
        try:
            text = read_text(args.file)  # NotText (exit 2) names the file and the first bad byte
        except OSError as exc:
            print(f"hybridctl: {args.file}: cannot read the job file ({exc.strerror})", file=sys.stderr)
            return ExitCode.USAGE
        base_dir = os.path.dirname(os.path.abspath(args.file))
    secrets = []
    for item in args.secret or ():
        # A bare NAME is read here: only the submitting shell has it (SkyPilot's --secret NAME).
        name, eq, _value = item.partition("=")
        if not eq:
            if name not in os.environ:
                print(f"hybridctl: --secret {name}: {name} is not set in your environment; export it, or "
                      f"give --secret {name}=VALUE", file=sys.stderr)
                return ExitCode.USAGE
            item = f"{name}={os.environ[name]}"
        secrets.append(item)
    flags = {
        "gpus": args.gpus, "gpu_type": args.gpu_type, "cpus": args.cpus, "memory": args.memory, "name": args.name,
        "priority": args.priority, "time_limit": args.time_limit, "array": args.array, "envs": args.env or None,
        "run": command or None, "num_nodes": args.nodes, "placement": args.placement,
        "max_restarts": args.max_restarts, "recover_on_exit_codes": args.recover_on_exit_codes, "depends_on": args.dependency,
        "workdir": args.workdir,  # as typed: the controller resolves ~ (from our uid) and cwd-relative paths
        "secrets": secrets or None,
    }
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the directory was removed under us: a relative --workdir is then an error
        cwd = None
    with _client() as c:
        res = c.call("submit", yaml=text, source=source, base_dir=base_dir, cwd=cwd,
                     flags={k: v for k, v in flags.items() if v is not None}, full=bool(args.json))
    for w in res.get("warnings", []):
        print(f"hybridctl: warning: {w}", file=sys.stderr)
    if args.wait:
        if not args.json:
            print(res["id"], flush=True)
        job = wait_for_job(str(res["id"]))
        if args.json:
            _out(args, job, "")
        return job_exit_code(job)
    if args.json:
        _out(args, res["job"], "")
    else:
        print(res["id"])
    return ExitCode.OK


def _ended(task: dict[str, Any]) -> bool:
    from hybridctl.core.model import JobStatus  # the pure core: stdlib only

    return JobStatus(task["state"]).is_terminal()


def job_exit_code(job: dict[str, Any]) -> int:
    """Like `sbatch --wait`: 0 when every task succeeded, else the highest task exit code, or 1 for
    a task that ended without one (cancelled, killed by a signal, lost, refused)."""
    worst = 0
    for t in job["tasks"]:
        if t["state"] != "SUCCEEDED":
            code = t.get("exit_code")
            worst = max(worst, code if isinstance(code, int) and 0 < code < 256 else 1)
    return worst


def _progress(job: dict[str, Any]) -> str:
    """One line on where the job stands: a single task's state with its node or pending reason,
    an array's counts by state."""
    tasks = job["tasks"]
    if len(tasks) == 1:
        t = tasks[0]
        text = t["state"]
        if t["state"] in ("STARTING", "RUNNING") and t.get("nodes"):
            text += f" on {t['nodes']}"
        elif t["state"] == "PENDING" and t.get("reason"):
            text += f": {t['reason']}"
        elif _ended(t):
            code = t.get("exit_code")
            text += f" (exit code {code})" if code is not None else (f": {t['reason']}" if t.get("reason") else "")
        if t.get("attempt"):
            text += f" [attempt {t['attempt']}]"
        return text
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def wait_for_job(job_id: str) -> dict[str, Any]:
    """Poll the job until every task has ended; each change of where it stands goes to stderr. A
    controller restart is waited out; Ctrl-C stops waiting, not the job."""
    from hybridctl.core.errors import ControllerUnavailable

    last = ""
    interval = 0.2
    client = None
    warned = False
    try:
        while True:
            try:
                if client is None:
                    client = _client()
                job = client.call("show", job=job_id)
            except ControllerUnavailable as exc:
                if client is not None:
                    client.close()
                    client = None
                if not warned:
                    print(f"hybridctl: {exc.message}; still waiting for job {job_id}", file=sys.stderr)
                    warned = True
                time.sleep(2.0)
                continue
            warned = False
            now = _progress(job)
            if now != last:
                print(f"job {job_id}: {now}", file=sys.stderr, flush=True)
                last = now
            if all(_ended(t) for t in job["tasks"]):
                return job
            time.sleep(interval)
            interval = min(interval * 1.5, 2.0)
    except KeyboardInterrupt:
        print(f"\nhybridctl: stopped waiting; job {job_id} goes on (hybridctl cancel {job_id} stops it)",
              file=sys.stderr)
        raise
    finally:
        if client is not None:
            client.close()


# ---- queue / show / cancel / priority / usage -------------------------------------------------


def cmd_queue(args: argparse.Namespace) -> int:
    from hybridctl.cli import output as o

    states = [s for part in (args.state or []) for s in part.split(",") if s]
    with _client() as c:
        rows = c.call("queue", all=args.all, user=args.user, states=states, finished=args.finished)
    if args.json:
        o.emit_json(rows)
        return ExitCode.OK
    now = time.time()
    shown = o.collapse_arrays(rows)
    table_rows = []
    for r in shown:
        if r["state"] == "PENDING":
            t = o.duration(now - r["submitted_at"])
        elif r["started_at"]:
            t = o.duration((r["ended_at"] or now) - r["started_at"])
        else:
            t = ""
        where = r["nodes"] or ""
        note = r["reason"] if r["state"] == "PENDING" else where
        table_rows.append(
            [o.label(r), r["user"], (r["name"] or "")[:16], r["state"], o.gpus_text(r["gpus"], r["gpu_type"], r["num_nodes"]),
             t, note]
        )
    print(o.table(["JOBID", "USER", "NAME", "STATE", "GPUS", "TIME", "NODES/REASON"], table_rows, max_last=40))
    return ExitCode.OK


def cmd_show(args: argparse.Namespace) -> int:
    from hybridctl.cli import output as o

    with _client() as c:
        job = c.call("show", job=args.job)
    if args.json:
        o.emit_json(job)
        return ExitCode.OK
    s = job["spec"]
    r = s["resources"]
    lines = [
        f"Job {job['id']}" + (f" ({job['name']})" if job["name"] else "") + f"  user {job['user']}  group {job['group']}",
        f"  resources  {o.gpus_text(r['gpus'], r['gpu_type'], s['num_nodes'])} GPU, {r['cpus']:g} CPU"
        + (f", {r['memory_mb'] // 1024}G" if r["memory_mb"] else ""),
        f"  priority   {job['priority']}   submitted {o.when(job['submitted_at'])}",
    ]
    if job["array"]:
        lines.append(f"  array      {job['array']}")
    if s.get("time_limit"):
        lines.append(f"  time limit {o.duration(s['time_limit'])}")
    if s.get("workdir"):
        lines.append(f"  workdir    {s['workdir']}")
    lines.append("  run        " + s["run"].strip().replace("\n", "\n             "))
    lines.append(_requeues_line(job))
    if job.get("wait_or_pay"):
        lines.append(f"  wait/pay   {job['wait_or_pay']['text']}")
    print("\n".join(line for line in lines if line))
    print()
    tasks = job["tasks"]
    rows = [
        [("" if not job["array"] else f"{job['id']}_{t['task']}") or str(job["id"]), t["state"], t["attempt"],
         t["nodes"], t["gpu_ids"], t["exit_code"], t["reason"]]
        for t in tasks[:50]
    ]
    print(o.table(["TASK", "STATE", "ATTEMPT", "NODES", "GPU IDS", "EXIT", "REASON"], rows, max_last=60))
    if len(tasks) > 50:
        print(f"… and {len(tasks) - 50} more tasks (--json lists all)")
    print()
    from hybridctl.control.identity import user_name

    ev = [
        [o.when(e["time"]), "" if e["task"] in (None, 0) else e["task"], (e["from"] or "") + " -> " + e["to"],
         e["reason"], "" if e["actor_uid"] is None else user_name(e["actor_uid"])]
        for e in job["events"][-30:]
    ]
    print(o.table(["TIME", "TASK", "CHANGE", "REASON", "BY"], ev))
    return ExitCode.OK


def _requeues_line(job: dict[str, Any]) -> str:
    """`show`'s requeue line: recoveries (preemption, lost nodes: never charged to max_restarts)
    and restarts used. An array sums its tasks, and says nothing while none was requeued."""
    from hybridctl.cli import output as o

    most = job.get("max_restarts") or 0
    tasks = job["tasks"]
    if len(tasks) == 1:
        return f"  requeues   {o.recovery_text(tasks[0], most)}"
    causes: dict[str, int] = {}
    for t in tasks:
        for k, n in (t.get("recovery_causes") or {}).items():
            causes[k] = causes.get(k, 0) + n
    total = {"recoveries": sum(t.get("recoveries") or 0 for t in tasks), "recovery_causes": causes}
    used = sum(t.get("restarts") or 0 for t in tasks)
    if not total["recoveries"] and not used:
        return ""
    text = o.recovery_text(total, most).rsplit(", restarts ", 1)[0]
    return f"  requeues   tasks {text}, restarts {used} used (max {most} per task)"


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client() as c:
        res = c.call("cancel", jobs=args.jobs, all_mine=args.all_mine)
    text = ""
    if res["cancelled"]:
        text = "cancelled " + " ".join(res["cancelled"])
    if res["skipped"]:
        print("hybridctl: already finished: " + ", ".join(res["skipped"]), file=sys.stderr)
    _out(args, res, text)
    return ExitCode.OK


def cmd_priority(args: argparse.Namespace) -> int:
    with _client() as c:
        res = c.call("priority", job=args.job, priority=args.priority)
    _out(args, res, f"job {res['id']}: priority {res['priority']}")
    return ExitCode.OK


def cmd_usage(args: argparse.Namespace) -> int:
    from hybridctl.cli import output as o
    from hybridctl.core.spec import parse_duration

    since = parse_duration(args.since) if args.since else 7 * 86400
    with _client() as c:
        rows = c.call("usage", by=args.by, since=since)
    if args.json:
        o.emit_json(rows)
        return ExitCode.OK
    print(f"GPU usage over the last {o.duration(since)} ({args.by})")
    print(o.table([args.by.upper(), "GPU-HOURS", "JOB-HOURS"],
                  [[r[args.by], f"{r['gpu_hours']:.2f}", f"{r['job_hours']:.2f}"] for r in rows]))
    return ExitCode.OK


# ---- nodes -------------------------------------------------------------------------------------


def cmd_nodes(args: argparse.Namespace) -> int:
    from hybridctl.cli import output as o

    with _client() as c:
        rows = c.call("nodes")
    if args.json:
        o.emit_json(rows)
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


def cmd_node(args: argparse.Namespace) -> int:
    # An install may run pip on the node; the controller bounds every step of it.
    with _client(timeout=900.0 if getattr(args, "install", False) else 60.0) as c:
        if args.node_cmd == "drain":
            res = c.call("drain", node=args.name, reason=args.reason or "")
        elif args.node_cmd == "resume":
            res = c.call("resume", node=args.name)
        elif args.node_cmd == "remove":
            res = c.call("node_remove", name=args.name)
            _out(args, res, f"node {args.name} removed")
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
            _out(args, res, text)
            return ExitCode.OK
    _out(args, res, f"node {res['node']}: {res['state']}")
    return ExitCode.OK


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a job's log; with -f, follow it until the job ends (like `tail -f`)."""
    stream = "stderr" if args.stderr else "stdout"
    offset = -args.tail * 200 if args.tail else 0  # a rough byte window, trimmed to whole lines below
    out = sys.stdout
    with _client() as c:
        first = True
        while True:
            res = c.call("logs", job=args.job, stream=stream, offset=offset, max_bytes=1 << 20, rank=args.rank,
                         attempt=args.attempt)
            data = res["data"]
            if first and args.tail:
                data = "\n".join(data.split("\n")[-args.tail - 1:])
            first = False
            if data:
                out.write(data)
                out.flush()
            offset = res["offset"]
            if res.get("note") and not args.follow:
                print(f"hybridctl: {res['note']}", file=sys.stderr)
            if not args.follow or (res["eof"] and not data):
                return ExitCode.OK
            if not data:
                time.sleep(0.5)


def cmd_demo(args: argparse.Namespace) -> int:
    from hybridctl import demo

    return demo.run(nodes=args.nodes, gpus=args.gpus, headless=args.headless, duration=args.duration,
                    as_json=args.json, rate_per_min=args.rate, keep=args.keep, cloud=not args.no_cloud)


def cmd_tui(args: argparse.Namespace) -> int:
    """The terminal UI; textual is imported here only, so other commands never load it."""
    from hybridctl.tui.app import main as tui_main

    return tui_main(readonly=getattr(args, "readonly", False), interval=getattr(args, "interval", 1.0))


def cmd_server(args: argparse.Namespace) -> int:
    from hybridctl import config, paths
    from hybridctl.control.daemon import serve

    settings = config.load(Path(args.config) if args.config else paths.config_path())
    serve(settings)
    return ExitCode.OK


# ---- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hybridctl",
        description="A cluster manager for GPU labs: on-prem GPU servers, with cloud spot bursting.",
        epilog="Run `hybridctl COMMAND --help` for a command's options. With no command, opens the TUI.",
    )
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    s = sub.add_parser("submit", help="submit a job (YAML file and/or flags, command after --)",
                       description="Submit a job. Prints its id alone on stdout.", epilog=EPILOG_SUBMIT,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("file", nargs="?", metavar="FILE", help="job YAML (SkyPilot task format subset)")
    s.add_argument("--gpus", metavar="N|TYPE:N", help="GPUs per node, e.g. 2 or A100:2")
    s.add_argument("--gpu-type", metavar="TYPE", help="GPU model, e.g. A100 (same as --gpus TYPE:N)")
    s.add_argument("--cpus", metavar="N", help="CPU cores per node")
    s.add_argument("--memory", metavar="SIZE", help="host memory per node, e.g. 32G")
    s.add_argument("--name", help="job name")
    s.add_argument("--priority", metavar="N", help="higher runs first (-1000..1000; above 100 admins only)")
    s.add_argument("--time-limit", metavar="T", help="e.g. 90m, 2h, 1-00:00:00; the job is stopped after it")
    s.add_argument("--array", metavar="A-B[%N]", help="job array, e.g. 1-100%%10 (at most 10 tasks at once)")
    s.add_argument("--env", action="append", metavar="K=V", help="environment variable (repeatable)")
    s.add_argument("--secret", action="append", metavar="K[=V]",
                   help="secret in the job's environment, never shown (repeatable); K alone takes the value "
                        "from your shell's environment, as sky launch --secret does")
    s.add_argument("--nodes", metavar="N", help="number of nodes (multi-node job)")
    s.add_argument("--placement", choices=["onprem", "cloud", "any"], help="where it may run")
    s.add_argument("--max-restarts", metavar="N",
                   help="requeue up to N times after a failure: non-zero exit, preemption, lost node")
    s.add_argument("--recover-on-exit-codes", metavar="CODES",
                   help="exit codes (e.g. 75,143) that always requeue, not counted in --max-restarts")
    s.add_argument("--dependency", metavar="afterok:ID[:ID]", help="start only after these jobs succeeded")
    s.add_argument("--workdir", metavar="DIR", help="working directory of the job (relative to here; ~ is your home)")
    s.add_argument("--wait", action="store_true",
                   help="wait until the job ends, showing its progress on stderr; exit with its exit code "
                        "(like sbatch --wait; Ctrl-C stops waiting, not the job)")
    s.add_argument("--json", action="store_true", help="print the whole job record as JSON (with --wait: as it ended)")

    q = sub.add_parser("queue", help="list jobs (yours by default)", description="List jobs, yours by default.")
    q.add_argument("-a", "--all", action="store_true", help="every user's jobs")
    q.add_argument("-u", "--user", help="this user's jobs")
    q.add_argument("-s", "--state", action="append", metavar="STATE", help="only these states (comma list)")
    q.add_argument("--finished", action="store_true", help="include finished jobs")
    q.add_argument("--json", action="store_true")

    sh = sub.add_parser("show", help="one job: spec, tasks, event history")
    sh.add_argument("job", metavar="JOB")
    sh.add_argument("--json", action="store_true")

    c = sub.add_parser("cancel", help="cancel jobs (JOB or JOB_TASK)")
    c.add_argument("jobs", nargs="*", metavar="JOB")
    c.add_argument("--all-mine", action="store_true", help="every unfinished job of yours")
    c.add_argument("--json", action="store_true")

    pr = sub.add_parser("priority", help="change a job's priority")
    pr.add_argument("job", metavar="JOB")
    pr.add_argument("priority", type=int, metavar="N")
    pr.add_argument("--json", action="store_true")

    u = sub.add_parser("usage", help="GPU-hours by user or group (like sreport)")
    u.add_argument("--by", choices=["user", "group"], default="user")
    u.add_argument("--since", metavar="T", help="window, e.g. 7d (default), 24h")
    u.add_argument("--json", action="store_true")

    n = sub.add_parser("nodes", help="list nodes")
    n.add_argument("--json", action="store_true")

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

    lg = sub.add_parser("logs", help="a job's output (-f to follow)")
    lg.add_argument("job", metavar="JOB")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    lg.add_argument("--stderr", action="store_true", help="the job's stderr instead of stdout")
    lg.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    lg.add_argument("--rank", type=int, default=0, help="which node of a multi-node job (default 0)")
    lg.add_argument("--attempt", type=int, metavar="N",
                    help="an earlier run of a requeued job (0 = the first; default: the latest)")
    outputs_cli.add_parser(sub)

    dm = sub.add_parser("demo", help="a whole simulated lab on this machine (no root, no config)",
                        description="Start simulated GPU servers reached over real SSH on loopback, a controller "
                        "and a workload; open the TUI, or run --headless for --duration seconds.")
    dm.add_argument("--nodes", type=int, default=4, help="simulated on-prem servers (default 4)")
    dm.add_argument("--gpus", type=int, default=8, help="GPUs per server (default 8)")
    dm.add_argument("--headless", action="store_true", help="no TUI: run, then print a summary")
    dm.add_argument("--duration", type=float, default=60.0, help="seconds to run headless (default 60)")
    dm.add_argument("--rate", type=float, help="jobs submitted per minute (default fills the fleet)")
    dm.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    dm.add_argument("--json", action="store_true", help="print the summary as JSON")
    dm.add_argument("--no-cloud", action="store_true", help="on-prem only: no simulated spot cloud")

    tu = sub.add_parser("tui", help="the terminal UI (also what `hybridctl` with no command opens)")
    tu.add_argument("--readonly", action="store_true", help="look only: every action is disabled")
    tu.add_argument("--interval", type=float, default=1.0, metavar="S", help="refresh period in seconds (default 1)")

    cloud_cli.add_parser(sub)

    sv = sub.add_parser("server", help="run the controller in the foreground")
    sv.add_argument("--config", metavar="FILE", help="config YAML (default $HYBRIDCTL_CONFIG or /etc/hybridctl/config.yaml)")
    return p


COMMANDS = {
    "cloud": cloud_cli.cmd_cloud,
    "queue": cmd_queue, "show": cmd_show, "cancel": cmd_cancel, "priority": cmd_priority, "usage": cmd_usage,
    "nodes": cmd_nodes, "node": cmd_node, "server": cmd_server, "logs": cmd_logs,
    "demo": cmd_demo, "tui": cmd_tui, "outputs": outputs_cli.cmd_outputs,
}

EXIT_BY_TYPE = {"PermissionDenied": ExitCode.DENIED, "NotFound": ExitCode.NOT_FOUND}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if command and args.cmd != "submit":
        parser.error("a command after -- is only accepted by `submit`")
    try:
        if args.cmd is None:
            if not (sys.stdin.isatty() and sys.stdout.isatty()):
                parser.print_help()  # not a terminal (a script, a pipe): no TUI to open
                return ExitCode.OK
            return cmd_tui(args)
        if args.cmd == "submit":
            return cmd_submit(args, command)
        return COMMANDS[args.cmd](args)
    except HybridctlError as exc:
        print(f"hybridctl: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout was closed early (`hybridctl queue | head`): not an error. The client never lets a
        # broken controller socket surface as BrokenPipeError (it raises ControllerUnavailable).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
