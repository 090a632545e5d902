"""`hybridctl`: the researcher's and admin's command line.

Kept light on purpose: `submit`, `queue`, `show` and `cancel` import only the stdlib and the
small pure core, and talk to the controller over its Unix socket. Heavy parts (the controller,
the TUI) are imported only by the subcommands that need them."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hybridctl.cli import cloud as cloud_cli  # stdlib only, like the rest of this path
from hybridctl.cli import common
from hybridctl.cli import nodes as nodes_cli  # stdlib only too
from hybridctl.cli import outputs as outputs_cli  # stdlib only too
from hybridctl.cli import simulate as simulate_cli  # stdlib only until it runs
from hybridctl.cli import eff as eff_cli  # stdlib only
from hybridctl.core.errors import ExitCode, HybridctlError



# ExitCode is defined once, in core/errors.py, beside the errors that carry one (imported above).


EPILOG_SUBMIT = """\
examples:
  hybridctl submit job.yaml                      # a SkyPilot-style task YAML
  hybridctl submit --gpus 2 -- python train.py   # no file: the command after --
  hybridctl submit --gpus A100:1 --array 1-100%10 -- python sweep.py
  id=$(hybridctl submit -- ./run.sh)             # the job id alone goes to stdout
  hybridctl submit --wait --gpus 1 -- ./eval.sh   # block until it ends; exit with its exit code
  hybridctl submit train.sbatch                  # a Slurm batch script: #SBATCH lines are read
  hybridctl submit --dry-run train.sbatch        # print the hybridctl YAML it becomes; submit nothing
"""


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
    spec: dict[str, Any] | None = None
    sbatch_warnings: list[str] = []
    if args.sbatch and text is None:
        print("hybridctl: --sbatch: give the batch script as FILE", file=sys.stderr)
        return ExitCode.USAGE
    if text is not None and (args.sbatch or _is_sbatch(text)):
        spec, sbatch_warnings = _read_sbatch(text, source, command)
        text, command = None, []  # the words after -- were the script's arguments ($1...)
    if text is not None and args.workdir is None:  # SkyPilot's git workdir {url, ref}: cloned here, as you
        from hybridctl.gitworkdir import prepare

        args.workdir = prepare(text, source)
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
        "deadline": args.deadline,
    }
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # the directory was removed under us: a relative --workdir is then an error
        cwd = None
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.dry_run:
        return _dry_run(text, spec, source, base_dir, cwd, flags, sbatch_warnings)
    for w in sbatch_warnings:
        print(f"hybridctl: warning: {w}", file=sys.stderr)
    with common.client() as c:
        res = c.call("submit", yaml=text, spec=spec, source=source, base_dir=base_dir, cwd=cwd,
                     flags=flags, full=bool(args.json))
    for w in res.get("warnings", []):
        print(f"hybridctl: warning: {w}", file=sys.stderr)
    if args.wait:
        if not args.json:
            print(res["id"], flush=True)
        job = wait_for_job(str(res["id"]))
        if args.json:
            common.out(args, job, "")
        return job_exit_code(job)
    if args.json:
        common.out(args, res["job"], "")
    else:
        print(*res.get("ids") or [res["id"]], sep="\n")  # a SkyPilot pipeline: one job per task
    return ExitCode.OK


def _is_sbatch(text: str) -> bool:
    from hybridctl.core.sbatch import is_sbatch  # the pure core: stdlib only

    return is_sbatch(text)


def _read_sbatch(text: str, source: str, script_args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """A Slurm batch script as a spec mapping, read here: only the submitting shell knows its
    environment (exported, as sbatch's --export=ALL) and its directory (the job's working
    directory). The lab's `slurm:` config is read only when the script names a partition or qos."""
    from hybridctl.core.sbatch import SlurmSite, parse_sbatch

    site = SlurmSite()
    if "--partition" in text or "--qos" in text or "\n#SBATCH -p" in text or "\n#SBATCH -q" in text:
        site = _slurm_site()
    result = parse_sbatch(text, source=source, submit_dir=os.getcwd(), environ=dict(os.environ),
                          site=site, args=script_args)
    return result.data, result.warnings


def _slurm_site() -> Any:
    from hybridctl import config, paths
    from hybridctl.core.sbatch import SlurmSite

    try:
        settings = config.load(paths.config_path())
    except HybridctlError as exc:
        print(f"hybridctl: warning: partitions and qos are not mapped: {exc.message}", file=sys.stderr)
        return SlurmSite()
    return SlurmSite(partitions=dict(settings.slurm.partitions), qos=dict(settings.slurm.qos))


def _dry_run(text: str | None, spec: dict[str, Any] | None, source: str, base_dir: str | None, cwd: str | None,
             flags: dict[str, Any], warnings: list[str]) -> int:
    """`submit --dry-run`: the spec hybridctl would run, as YAML on stdout; nothing is sent. The
    same checks as the controller's, so a file that prints is a file that submits."""
    import yaml

    from hybridctl.core.spec import apply_flags, load_yaml, parse_spec, resolve_paths

    def home(name: str) -> str | None:
        path = os.path.expanduser("~" + name)
        return None if path.startswith("~") else path

    data = load_yaml(text, source) if text is not None else dict(spec or {})
    data = resolve_paths(data, base_dir=base_dir, home=home, source=source)
    if flags:
        data = apply_flags(data, **resolve_paths(flags, base_dir=cwd, home=home, flags=True))
    _job, more = parse_spec(data, source)
    for w in warnings + more:
        print(f"hybridctl: warning: {w}", file=sys.stderr)
    shown = dict(data)
    if shown.get("secrets"):
        # Never print a secret: SkyPilot's null means "give it with --secret NAME when submitting".
        shown["secrets"] = {k: None for k in shown["secrets"]}
        print(f"hybridctl: secrets shown as null (pass them with --secret NAME): {', '.join(shown['secrets'])}",
              file=sys.stderr)

    class Dumper(yaml.SafeDumper):
        pass

    def text_block(dumper: Any, value: str) -> Any:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text_block)
    sys.stdout.write(yaml.dump(shown, Dumper=Dumper, sort_keys=False, default_flow_style=False,
                               allow_unicode=True, width=100))
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
                    client = common.client()
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
    with common.client() as c:
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
        if r.get("idle_s") is not None:  # every GPU under idle.util_below for idle.after (`hybridctl eff`)
            note = f"{note} IDLE {o.duration(r['idle_s'])}".strip()
        table_rows.append(
            [o.label(r), r["user"], (r["name"] or "")[:16], r["state"], o.gpus_text(r["gpus"], r["gpu_type"], r["num_nodes"]),
             t, note]
        )
    print(o.table(["JOBID", "USER", "NAME", "STATE", "GPUS", "TIME", "NODES/REASON"], table_rows, max_last=40))
    return ExitCode.OK


def cmd_show(args: argparse.Namespace) -> int:
    from hybridctl.cli import output as o

    with common.client() as c:
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
    if r.get("alternatives"):  # SkyPilot accelerator candidates: which one each attempt took
        names = ", ".join(f"{t}:{n}" if t else str(n) for t, n in r["alternatives"])
        taken = sorted({t["gpu_type"] for t in job["tasks"] if t.get("gpu_type")})
        lines.append(f"  candidates {'[' + names + '] (in order)' if r.get('ordered') else '{' + names + '} (any)'}"
                     + (f"   taken: {', '.join(taken)}" if taken else ""))
    if job["array"]:
        lines.append(f"  array      {job['array']}")
    if job.get("dependencies"):  # Slurm's kinds, each with whether it is met
        lines.append("  depends on " + ", ".join(
            (f"{d['kind']}:{d['job']}" if d["kind"] != "singleton" else "singleton"
             + (f" (behind job {d['job']})" if d["job"] else "")) + f" ({d['state']})"
            for d in job["dependencies"]))
    if s.get("time_limit"):
        lines.append(f"  time limit {o.duration(s['time_limit'])}")
    if s.get("workdir"):
        lines.append(f"  workdir    {s['workdir']}")
    lines.append("  run        " + s["run"].strip().replace("\n", "\n             "))
    lines.append(_requeues_line(job))
    if job.get("runtime") and not s.get("time_limit"):  # where backfill's runtime estimate came from
        lines.append(f"  runtime    {job['runtime']}")
    if job.get("earlier_run"):  # what the burst policy learnt from its stopped attempts (cloud.burst.lindy)
        lines.append(f"  earlier    {job['earlier_run']['text']}")
    if s.get("preemptible") or job.get("preemptible_by"):
        why = f"; {job['preemptible_by']}" if job.get("preemptible_by") else ""
        grace = f", giving it {job['preempt_grace']:g} s to checkpoint" if job.get("preempt_grace") is not None else ""
        if grace and job.get("preempt_grace_cloud") is not None:
            grace += f" ({job['preempt_grace_cloud']:g} s on a cloud node)"
        lines.append(f"  preemptible yes: a higher-priority job may stop and requeue it{grace}{why}")
    if job.get("priority_boost"):
        lines.append(f"  priority   +{job['priority_boost']} in the queue: a job over several nodes"
                     " (scheduler.multi_node_priority)")
    if s.get("spot_insist"):
        lines.append("  spot insist yes: bursts to spot whatever a reclaim may cost it (spot_insist: true)")
    if s.get("deadline") is not None:
        lines.append(f"  deadline   {_deadline_text(job, float(s['deadline']))}")
    if job.get("wait_or_pay"):
        lines.append(f"  wait/pay   {job['wait_or_pay']['text']}")
    for t, why in list((job.get("placed") or {}).items())[:10]:  # cache-aware placement: why that node
        lines.append(f"  placed     {why}" if not job["array"] else f"  placed     {job['id']}_{t}: {why}")
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
    for t in tasks[:50]:  # last hybridctl.job.log values; idle-GPU flags (`hybridctl eff` for more)
        name = f"{job['id']}_{t['task']}" if job["array"] else str(job["id"])
        if t.get("metrics"):
            print(f"  {name} logged  " + "  ".join(f"{k}={v:g}" for k, v in sorted(t["metrics"].items())))
        if t.get("idle_s") is not None:
            print(f"  {name} IDLE    its GPUs have been idle for {t['idle_s'] / 60:.0f} min")
    print()
    from hybridctl.control.identity import user_name

    ev = [
        [o.when(e["time"]), "" if e["task"] in (None, 0) else e["task"], (e["from"] or "") + " -> " + e["to"],
         e["reason"], "" if e["actor_uid"] is None else user_name(e["actor_uid"])]
        for e in job["events"][-30:]
    ]
    print(o.table(["TIME", "TASK", "CHANGE", "REASON", "BY"], ev))
    return ExitCode.OK


_DONE = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT")


def _deadline_text(job: dict[str, Any], deadline: float, now: float | None = None) -> str:
    """`show`'s deadline line: when, and whether it was met, or is at risk: a task that (re)starts
    now, or runs from its start, for its time limit would end after it. Without a time limit
    the run time is unknown and nothing is claimed."""
    import time as _time

    from hybridctl.cli import output as o

    now = _time.time() if now is None else now
    at = f"{o.when(deadline)} ({'in ' + o.duration(deadline - now) if deadline > now else 'passed'})"
    tasks = job["tasks"]
    limit = job["spec"].get("time_limit")
    if tasks and all(t["state"] in _DONE for t in tasks):
        late = [t for t in tasks if (t.get("ended_at") or 0) > deadline]
        return f"{at}: {'missed' if late or any(t['state'] != 'SUCCEEDED' for t in tasks) else 'met'}"
    ends = []
    for t in tasks:
        if t["state"] in _DONE:
            ends.append(t.get("ended_at") or now)
        elif not limit:
            return f"{at}: run time unknown (no time limit)"
        elif t["state"] == "RUNNING" and t.get("started_at"):
            ends.append(float(t["started_at"]) + limit)
        else:
            ends.append(now + limit)
    latest = max(ends, default=now)
    if latest > deadline:
        return f"{at}: AT RISK: its time limit ends {o.duration(latest - deadline)} after it"
    return f"{at}: on track ({o.duration(deadline - latest)} to spare at its time limit)"


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
    with common.client() as c:
        res = c.call("cancel", jobs=args.jobs, all_mine=args.all_mine)
    text = ""
    if res["cancelled"]:
        text = "cancelled " + " ".join(res["cancelled"])
    if res["skipped"]:
        print("hybridctl: already finished: " + ", ".join(res["skipped"]), file=sys.stderr)
    common.out(args, res, text)
    return ExitCode.OK


def cmd_priority(args: argparse.Namespace) -> int:
    with common.client() as c:
        res = c.call("priority", job=args.job, priority=args.priority)
    common.out(args, res, f"job {res['id']}: priority {res['priority']}")
    return ExitCode.OK


def cmd_usage(args: argparse.Namespace) -> int:
    from hybridctl.cli import output as o
    from hybridctl.core.spec import parse_duration

    since = parse_duration(args.since, field="--since") if args.since else 7 * 86400
    with common.client() as c:
        rows = c.call("usage", by=args.by, since=since)
    if args.json:
        o.emit_json(rows)
        return ExitCode.OK
    print(f"GPU usage over the last {o.duration(since)} ({args.by})")
    if rows and "gpu_hours_used" in rows[0]:  # held vs used, from telemetry (utilisation-weighted)
        print(o.table([args.by.upper(), "GPU-HOURS", "USED", "JOB-HOURS"],
                      [[r[args.by], f"{r['gpu_hours']:.2f}",
                        f"{r['gpu_hours_used']:.2f}" + (f" ({100 * r['gpu_hours_used'] / r['gpu_hours_observed']:.0f}%)"
                                                        if r["gpu_hours_observed"] else ""),
                        f"{r['job_hours']:.2f}"] for r in rows]))
        return ExitCode.OK
    print(o.table([args.by.upper(), "GPU-HOURS", "JOB-HOURS"],
                  [[r[args.by], f"{r['gpu_hours']:.2f}", f"{r['job_hours']:.2f}"] for r in rows]))
    return ExitCode.OK


def cmd_logs(args: argparse.Namespace) -> int:
    """Print a job's log; with -f, follow it until the job ends (like `tail -f`)."""
    stream = "stderr" if args.stderr else "stdout"
    offset = -args.tail * 200 if args.tail else 0  # a rough byte window, trimmed to whole lines below
    out = sys.stdout
    with common.client() as c:
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
    s.add_argument("file", nargs="?", metavar="FILE",
                   help="job YAML (SkyPilot task format), or a Slurm batch script (#! and #SBATCH lines; "
                        "words after -- are then its arguments)")
    s.add_argument("--sbatch", action="store_true", help="read FILE as a Slurm batch script even without #SBATCH lines")
    s.add_argument("--dry-run", action="store_true",
                   help="print the hybridctl spec (YAML) the file and flags make, and submit nothing")
    s.add_argument("--gpus", metavar="N|TYPE:N", help="GPUs per node, e.g. 2 or A100:2")
    s.add_argument("--gpu-type", metavar="TYPE", help="GPU model, e.g. A100 (same as --gpus TYPE:N)")
    s.add_argument("--cpus", metavar="N", help="CPU cores per node")
    s.add_argument("--memory", metavar="SIZE", help="host memory per node, e.g. 32G")
    s.add_argument("--name", help="job name")
    s.add_argument("--priority", metavar="N", help="higher runs first (-1000..1000; above 100 admins only)")
    s.add_argument("--time-limit", metavar="T", help="e.g. 90m, 2h, 1-00:00:00; the job is stopped after it")
    s.add_argument("--deadline", metavar="WHEN",
                   help="finish by: an ISO time (UTC unless it says, e.g. 2026-12-06T18:00) or a duration after"
                        " submit (6h); the burst policy runs it on spot only while there is slack")
    s.add_argument("--array", metavar="A-B[:S][,..][%N]",
                   help="job array, e.g. 1-100%%10 (at most 10 tasks at once) or a list 1,3,5-7%%2")
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
    s.add_argument("--dependency", metavar="TYPE:ID[:ID][,...]",
                   help="Slurm's dependency list: after, afterany, afterok, afternotok, singleton"
                        " (e.g. afterany:42:43,afterok:44); bare ids mean afterok")
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

    nodes_cli.add_parser(sub)

    lg = sub.add_parser("logs", help="a job's output (-f to follow)")
    lg.add_argument("job", metavar="JOB")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    lg.add_argument("--stderr", action="store_true", help="the job's stderr instead of stdout")
    lg.add_argument("--tail", metavar="N", help="only the last N lines")  # checked by check_args
    lg.add_argument("--rank", default=0, metavar="N", help="which node of a multi-node job (default 0)")
    lg.add_argument("--attempt", metavar="N",
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
    simulate_cli.register(sub, COMMANDS)
    eff_cli.register(sub, COMMANDS)  # `hybridctl eff JOB`: per-job efficiency (stdlib only)

    sv = sub.add_parser("server", help="run the controller in the foreground")
    sv.add_argument("--config", metavar="FILE", help="config YAML (default $HYBRIDCTL_CONFIG or /etc/hybridctl/config.yaml)")
    return p


COMMANDS = {
    "cloud": cloud_cli.cmd_cloud,
    "queue": cmd_queue, "show": cmd_show, "cancel": cmd_cancel, "priority": cmd_priority, "usage": cmd_usage,
    "nodes": nodes_cli.cmd_nodes, "node": nodes_cli.cmd_node, "server": cmd_server, "logs": cmd_logs,
    "demo": cmd_demo, "tui": cmd_tui, "outputs": outputs_cli.cmd_outputs,
}

MAX_FLAG = 10**9
"""The largest --tail, --rank or --attempt: far past any real log, gang or requeue count."""
FLAG_BOUNDS = {"tail": (1, "a number of lines"), "rank": (0, "a node's rank in the job, 0 first"),
               "attempt": (0, "an attempt of the job, 0 first")}


def check_args(args: argparse.Namespace) -> None:
    """Job ids and number flags, read before the controller is asked: a bad one is a SpecError
    (exit 2) naming the argument, its value and what is accepted, never argparse's generic line."""
    from hybridctl.core.fields import parse_duration, parse_int, parse_job_ref

    for ref in [getattr(args, "job", None), *(getattr(args, "jobs", None) or ())]:
        if ref is not None:
            parse_job_ref(ref)
    for flag, (lo, what) in FLAG_BOUNDS.items():
        value = getattr(args, flag, None)
        if isinstance(value, str):
            setattr(args, flag, parse_int(value, f"--{flag}", "", lo, MAX_FLAG,
                                          f"expected {what}: a whole number from {lo} to {MAX_FLAG}"))
    if isinstance(getattr(args, "since", None), str):
        parse_duration(args.since, field="--since")


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
        check_args(args)
        return COMMANDS[args.cmd](args)
    except HybridctlError as exc:
        print(f"hybridctl: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # stdout was closed early (`hybridctl queue | head`): not an error. The client never lets a
        # broken controller socket surface as BrokenPipeError (it raises ControllerUnavailable).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as the Python docs advise
        return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
