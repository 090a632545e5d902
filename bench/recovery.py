"""Recovery from a spot preemption: time from the notice to the job running again elsewhere, the
bytes of checkpoint synced, and the work lost, for checkpoints of 10 MB and 1 GB (issue #6).

    .venv/bin/python bench/recovery.py [--sizes 10M,1G] [--quick] [--modes notice,vanish]
                                       [--to prem|cloud] [--grace 30] [--sync-interval 5]
    .venv/bin/python bench/recovery.py --chunks --sizes 1G [--change 0.01] [--repeat 2]

A small lab per run: a real controller (`hybridctl server`), one on-prem simulated machine with one
A100 held by a hog job, and the simulated cloud, whose instances are real machines (agent + SSH
server on loopback). A stdlib trainer written below bursts to a cloud node; it sleeps `--step-time`
per step, rewrites a checkpoint of the given size every `--ckpt-every` steps (tmp + rename, no
fsync, like torch.save), writes a final one on SIGTERM and exits 143, and resumes from the
checkpoint on start. Once the controller holds a periodic sync, the bench either

- `notice`: calls `SimulatedProvider.preempt(instance, now + 120 s)` (AWS's two-minute notice; the
  controller gives the job `--grace` before SIGKILL) and cancels the hog, so the job comes back on
  the on-prem node (`--to cloud`: keeps the hog, so the job rents a new cloud node), or
- `vanish`: terminates the instance without notice (the machine dies at once): the job resumes from
  the last periodic sync.

It reports the recovery time split into its parts (from the job's events, the controller's log and
the trainer's own timestamps), the bytes synced and restored, and the steps lost. The baseline, in
the same run: `shutil.copyfile` of a file of the same size on the same disk, so the SFTP sync shows
as a multiple of a raw local copy. Everything it starts is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agents")]

from hybridctl.cloud import catalog as catalog_mod  # noqa: E402
from hybridctl.cloud.simulated import SimulatedProvider  # noqa: E402
from hybridctl.control.client import Client  # noqa: E402
from hybridctl.sim import node as simnode  # noqa: E402
from hybridctl.sim.keys import client_key, pin  # noqa: E402

from _common import wait_for  # noqa: E402

CLUSTER = "bench"
NOTICE_S = 120.0  # AWS gives two minutes
POLL = 0.1  # s between the checks of every wait_for
CATALOG = {
    "snapshot": "bench",
    "instance_types": {"sim.a100x1": {"gpu": "A100", "gpus": 1, "vcpus": 8, "memory_gb": 64}},
    "regions": {"sim-east": {"zones": ["sim-east-a"], "on_demand": {"sim.a100x1": 3.0},
                             "spot": {"sim.a100x1": [1.0]}}},
}

TRAINER = r'''
import json, os, signal, sys, time
size, every, step_time, events = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ckdir = os.environ.get("HYBRIDCTL_CHECKPOINT_DIR") or "checkpoints"
os.makedirs(ckdir, exist_ok=True)
path = os.path.join(ckdir, "ckpt.bin")
attempt = int(os.environ.get("HYBRIDCTL_ATTEMPT") or 0)

def event(**kw):
    with open(events, "a") as f:
        f.write(json.dumps(dict(kw, t=time.time(), attempt=attempt)) + "\n")

t0 = time.time()
step = 0
if os.path.exists(path):  # load the whole checkpoint, as torch.load would
    payload = bytearray(os.path.getsize(path) - 16)
    with open(path, "rb") as f:
        step = int(f.read(16))
        f.readinto(payload)
else:
    payload = bytearray(os.urandom(size - 16))  # incompressible "weights"
saved = step
event(ev="start", resumed=step, load_s=time.time() - t0)
print(f"attempt {attempt}: resumed from step {step}", flush=True)

def save(kind):
    global saved
    t = time.time()
    with open(path + ".tmp", "wb") as f:
        f.write(b"%016d" % step)
        f.write(payload)
    os.replace(path + ".tmp", path)
    saved = step
    event(ev=kind, step=step, write_s=time.time() - t)
    print(f"{kind} checkpoint at step {step} ({time.time() - t:.2f} s)", flush=True)

stop = False
def on_term(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)

while True:
    if stop:
        event(ev="sigterm", step=step)
        print(f"SIGTERM at step {step}", flush=True)
        if step > saved:
            save("final")
        sys.exit(143)
    time.sleep(step_time)  # the GPU's work
    payload[(step * 4099) % len(payload)] ^= 0xFF  # the weights change
    step += 1
    event(ev="step", step=step)
    if step % every == 0:
        save("periodic")
'''


def parse_size(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * units[s[-1].upper()]) if s[-1].upper() in units else int(s)


class RecoveryLab:
    """Controller + one on-prem simulated A100 + the simulated cloud, all under `base`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cloud_dir = base / "sim"
        self.provider = SimulatedProvider(self.cloud_dir, catalog_mod.parse(CATALOG, "bench catalog"))
        self.home = base / "home"
        self.log = self.home / "controller.log"
        self.client = Client(base / "ctl.sock", timeout=30)

    def start(self, sync_interval: float, grace: float) -> None:
        base = self.base
        key = client_key(base / "keys")
        prem, info = simnode.start(base / "prem1", "prem1", "1:A100", Path(f"{key}.pub"), interval=0.5)
        self.procs.append(prem)
        (base / "offers.yaml").write_text(yaml.safe_dump(CATALOG))
        self.home.mkdir()
        pin(self.home / "known_hosts", info["port"], info["host_key"])
        config = {
            "scheduler": {"tick_seconds": 0.5},
            "fleet": {"poll_interval": 0.5, "unreachable_after": 10.0, "lost_after": 60.0,
                      "checkpoint_sync_interval": sync_interval},
            "nodes": [{"name": "prem1", "host": "127.0.0.1", "port": info["port"], "identity": str(key),
                       "agent_socket": info["socket"]}],
            "cloud": {
                "enabled": True, "providers": ["simulated"], "catalog": str(base / "offers.yaml"),
                "cluster": CLUSTER, "poll_interval": 0.5, "leak_grace": 1.0, "bootstrap_timeout": 90.0,
                "orphan_timeout": 0.0, "preemption_grace": grace, "default_market": "spot",
                "burst": {"after": 2.0, "idle_timeout": 600.0, "max_nodes": 2, "max_hourly_usd": 10.0,
                          "budget_usd": 100.0},
                "simulated": {"dir": str(self.cloud_dir), "launch_delay": 0.0, "agent_interval": 0.5,
                              "preemption_rate_per_h": 0.0},
            },
        }
        (base / "config.yaml").write_text(yaml.safe_dump(config))
        self.env = dict(os.environ, HYBRIDCTL_HOME=str(self.home), HYBRIDCTL_SOCKET=str(base / "ctl.sock"),
                        HYBRIDCTL_CONFIG=str(base / "config.yaml"))
        with open(self.log, "ab") as out:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "hybridctl.cli.main", "server"], env=self.env,
                                               stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                               start_new_session=True))
        wait_for(self._answers, 60, "the controller", POLL)
        wait_for(lambda: any(n["name"] == "prem1" and n["state"] == "UP" for n in self.client.call("nodes")), 60,
                 "prem1 UP", POLL)

    def _answers(self) -> bool:
        if self.procs[-1].poll() is not None:
            raise RuntimeError(f"controller exited: {self.log.read_text()[-2000:]}")
        try:
            self.client.call("ping")
            return True
        except Exception:
            return False

    def submit(self, *args: str) -> str:
        res = subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "submit", *args], env=self.env,
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise RuntimeError(f"submit failed: {res.stderr}")
        return res.stdout.strip()

    def show(self, job: str) -> dict[str, Any]:
        return self.client.call("show", job=job)  # type: ignore[no-any-return]

    def task(self, job: str) -> dict[str, Any]:
        return self.show(job)["tasks"][0]  # type: ignore[no-any-return]

    def wait_task(self, job: str, what: str, ok: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        return wait_for(lambda: t if ok(t := self.task(job)) else None, timeout,
                        f"job {job}: {what} (log: {self.log})", POLL)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop everything started under `base`: controller, cloud machines, prem1, stray job processes."""
        self.client.close()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        for inst in self.provider.list({}):
            self.provider.terminate(inst.id)
        simnode.kill_tree(self.base)


def log_lines(log: Path, needle: str) -> list[tuple[float, str]]:
    """(epoch time, line) of the controller log lines containing `needle`."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if needle in line:
            stamp, ms = line[:23].split(",")
            out.append((time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000, line))
    return out


def trainer_events(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return out


def synced_step(home: Path, job: str) -> int:
    """The step of the checkpoint the controller holds for `job` (-1 if none yet)."""
    try:
        with open(home / "checkpoints" / job / "ckpt.bin", "rb") as f:
            return int(f.read(16))
    except (OSError, ValueError):
        return -1


def run_once(base: Path, size: int, mode: str, to: str, args: argparse.Namespace) -> dict[str, Any]:
    lab = RecoveryLab(base)
    try:
        lab.start(args.sync_interval, args.grace)
        return measure(lab, size, mode, to, args)
    finally:
        lab.close()


def measure(lab: RecoveryLab, size: int, mode: str, to: str, args: argparse.Namespace) -> dict[str, Any]:
    trainer, events = lab.base / "trainer.py", lab.base / "events.jsonl"
    trainer.write_text(TRAINER)
    hog = lab.submit("--gpus", "A100:1", "--", "sleep 3600")
    lab.wait_task(hog, "hog RUNNING", lambda t: t["state"] == "RUNNING", 60)
    every = max(1, round(args.ckpt_every_s / args.step_time))
    job = lab.submit("--gpus", "A100:1", "--",  # the default spec: a preemption is recovered
                     f"{sys.executable} {trainer} {size} {every} {args.step_time} {events}")
    first = lab.wait_task(job, "RUNNING on a cloud node", lambda t: t["state"] == "RUNNING", 180)["nodes"]
    assert first.startswith("cloud-"), first
    # Trigger halfway between two periodic syncs: after one has landed, half an interval of steps on.
    s0 = wait_for(lambda: synced_step(lab.home, job) > 0 and synced_step(lab.home, job),
                  args.sync_interval * 4 + 120, "a periodic checkpoint sync", POLL)
    s1 = wait_for(lambda: synced_step(lab.home, job) > s0 and synced_step(lab.home, job),
                  args.sync_interval * 4 + 120, "the next periodic sync", POLL)
    steps_after = int(args.sync_interval / 2 / args.step_time)
    wait_for(lambda: any(e["ev"] == "step" and e["step"] >= s1 + steps_after for e in trainer_events(events)),
             args.sync_interval * 4 + 60, "the trainer to run on", POLL)
    [inst] = lab.provider.list({"hybridctl-cluster": CLUSTER})
    synced_before = synced_step(lab.home, job)
    t0 = time.time()
    if mode == "notice":
        lab.provider.preempt(inst.id, t0 + NOTICE_S)
    else:
        lab.provider.terminate(inst.id)  # the machine and its processes die now
    if to == "prem":
        lab.client.call("cancel", jobs=[hog])
    t = lab.wait_task(job, "RUNNING again", lambda t: t["state"] == "RUNNING" and t["attempt"] == 1,
                      args.grace + 300)
    wait_for(lambda: any(e["ev"] == "start" and e["attempt"] == 1 for e in trainer_events(events)), 120,
             "the trainer's restart", POLL)
    t_up = time.time()
    lab.client.call("cancel", jobs=[job])
    ev = trainer_events(events)
    steps0 = [e for e in ev if e["attempt"] == 0]
    stopped = max(e["step"] for e in steps0 if e["ev"] in ("step", "sigterm"))
    # the checkpoint written after the trigger: the final one, or a periodic one SIGTERM landed in
    final = next((e for e in reversed(steps0) if e["ev"] in ("final", "periodic") and e["t"] >= t0), None)
    sigterm = next((e for e in steps0 if e["ev"] == "sigterm"), None)
    start1 = next(e for e in ev if e["ev"] == "start" and e["attempt"] == 1)
    times: dict[str, float] = {}
    for e in lab.show(job)["events"]:
        if e["time"] >= t0:
            times.setdefault(e["to"], e["time"])
    syncs = log_lines(lab.log, f"checkpoint of {job} synced:")
    restores = log_lines(lab.log, "restored ")
    final_sync = [(ts, int(line.split("synced: ")[1].split()[0])) for ts, line in syncs if ts >= t0]
    pending = times.get("PENDING", float("nan"))
    out = {
        "size": size, "mode": mode, "to": t["nodes"], "status": next(iter(times), "?"),
        "recovery_s": start1["t"] - t0,
        "to_preempted_s": next(iter(times.values()), t0) - t0,
        "stop_sync_s": pending - next(iter(times.values()), t0),
        "schedule_s": times.get("STARTING", float("nan")) - pending,
        "restore_launch_s": times.get("RUNNING", float("nan")) - times.get("STARTING", float("nan")),
        "process_s": start1["t"] - times.get("RUNNING", float("nan")),
        "load_s": start1["load_s"],
        "final_write_s": final["write_s"] if final else 0.0,
        # the trainer's final write -> the controller logs a sync after it (nan: never synced, e.g. cut off)
        "final_sync_s": next((ts - final["t"] for ts, _b in final_sync if ts >= final["t"]), float("nan"))
        if final else float("nan"),
        "periodic_syncs": len([s for s in syncs if s[0] < t0]),
        "bytes_synced": sum(int(line.split("synced: ")[1].split()[0]) for _ts, line in syncs),
        "bytes_final_sync": sum(b for _ts, b in final_sync),
        "bytes_restored": sum(int(line.split("restored ")[1].split()[0]) for ts, line in restores if ts >= t0),
        "step_at_stop": stopped, "step_sigterm": sigterm["step"] if sigterm else None,
        "synced_before": synced_before, "resumed": start1["resumed"], "lost_steps": stopped - start1["resumed"],
        "lost_s": (stopped - start1["resumed"]) * args.step_time, "wall_s": t_up - t0,
        "grace": args.grace,
        "timeline": [(round(ts - t0, 2), line.split(": ", 1)[1]) for ts, line in syncs + restores if ts >= t0 - 30]
        + [(round(e["t"] - t0, 2), f"trainer {e['ev']} step {e.get('step', e.get('resumed'))} attempt {e['attempt']}")
           for e in ev if e["ev"] != "step" and e["t"] >= t0 - 30],
        "sync_warnings": [line for _ts, line in log_lines(lab.log, "checkpoint sync of")],
    }
    return out


def copy_baseline(base: Path, size: int) -> float:
    """Seconds for shutil.copyfile of an incompressible file of `size` on the same disk (best of 3)."""
    src, dst = base / "baseline.src", base / "baseline.dst"
    with open(src, "wb") as f:
        for _ in range(0, size, 1 << 24):
            f.write(os.urandom(min(1 << 24, size)))
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        shutil.copyfile(src, dst)
        best = min(best, time.perf_counter() - t)
        dst.unlink()
    src.unlink()
    return best


# ---- chunked moves, measured on their own (--chunks) ----------------------------------------------


def _change(path: Path, size: int, frac: float, seed: int) -> int:
    """Rewrite `path` (tmp + rename, as torch.save would) with `frac` of its bytes changed, in 4
    contiguous regions (a few layers' weights); return the bytes changed."""
    import random

    rng = random.Random(seed)
    data = bytearray(path.read_bytes())
    part = int(size * frac / 4)
    for _ in range(4):
        at = rng.randrange(0, size - part)
        data[at:at + part] = os.urandom(part)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return 4 * part


async def _chunk_bench(root: Path, size: int, frac: float, repeat: int = 2) -> dict[str, Any]:
    """Two simulated machines (real agent + SSH server on loopback) and the controller's own code
    (ssh.link, SFTP, checkpoints.sync_from/restore_to) in this process: a plain SFTP copy of the
    checkpoint over the same link as the baseline, then syncs and restores with chunks, and
    `repeat` times a preemption onto an empty node both ways: the final sync, then the restore
    (the old order), and the restore overlapping the final sync (`restore_to(final=...)`)."""
    import asyncio

    from hybridctl.control.checkpoints import SftpFiles, sync_from
    from hybridctl.control.restore import restore_to
    from hybridctl.ssh.link import Target, connect
    from hybridctl.ssh.sftp import start_sftp

    key = client_key(root / "keys")
    procs, links, files = [], {}, {}
    try:
        for n in ("n1", "n2"):
            proc, info = simnode.start(root / n, n, "1:A100", Path(f"{key}.pub"), interval=1.0)
            procs.append(proc)
            pin(root / "known_hosts", info["port"], info["host_key"])
            link = await connect(Target(name=n, host="127.0.0.1", port=info["port"], identity=str(key),
                                        agent_socket=info["socket"], known_hosts=str(root / "known_hosts")))
            links[n] = (link, await link.second_channel())
            files[n] = (await start_sftp(link, n))
        job, store = "77.a0.r0", root / "store"
        ckpt = root / "n1" / "state" / "checkpoints" / "77" / "ckpt.bin"
        ckpt.parent.mkdir(parents=True)
        src = root / "plain.src"
        with open(src, "wb") as f:
            for _ in range(0, size, 1 << 24):
                f.write(os.urandom(min(1 << 24, size)))
        shutil.copyfile(src, ckpt)
        out: dict[str, Any] = {"size": size, "frac": frac}
        os.sync()  # the 2 GB just written must not slow the baseline down

        async def plain() -> None:
            """One plain SFTP copy each way over the same links (best of the runs, before and after)."""
            t = time.perf_counter()
            await files["n2"].put(str(src), str(root / "n2" / "plain.dst"))
            out.setdefault("plain_puts", []).append(time.perf_counter() - t)
            out["plain_put_s"] = min(out["plain_puts"])
            (root / "n2" / "plain.dst").unlink()
            t = time.perf_counter()
            await files["n1"].get(str(ckpt), str(root / "plain.got"))
            out["plain_get_s"] = min(out.get("plain_get_s", float("inf")), time.perf_counter() - t)
            (root / "plain.got").unlink()
            os.sync()

        await plain()
        owner = {"uid": 0, "gid": 0, "user": "root"}

        async def sync() -> tuple[int, float]:
            t = time.perf_counter()
            moved = await sync_from(links["n1"][1], SftpFiles(files["n1"]), job, store, "n1")
            return moved, time.perf_counter() - t

        async def restore(final: Any = None) -> tuple[int, float]:
            t = time.perf_counter()
            _sent, _kept, moved = await restore_to(links["n2"][1], SftpFiles(files["n2"]), job, store, "n2", owner,
                                                   final=final)
            return moved, time.perf_counter() - t

        out["first_sync_bytes"], out["first_sync_s"] = await sync()
        out["changed_1"] = _change(ckpt, size, frac, 1)
        out["sync_bytes"], out["sync_s"] = await sync()
        out["restore_fresh_bytes"], out["restore_fresh_s"] = await restore()
        out["changed_2"] = _change(ckpt, size, frac, 2)
        out["sync2_bytes"], out["sync2_s"] = await sync()
        out["restore_older_bytes"], out["restore_older_s"] = await restore()
        got = root / "n2" / "state" / "checkpoints" / "77" / "ckpt.bin"
        out["restored_exact"] = got.read_bytes() == ckpt.read_bytes()
        out["overlap"], out["sequential"] = [], []
        for i in range(repeat):  # a preemption onto an empty node: old order, then overlapped
            for order in ("sequential", "overlap"):
                if i or order == "overlap":  # a plain put between any two recoveries: the load changes
                    shutil.copyfile(ckpt, src)
                    await plain()
                shutil.rmtree(got.parent)  # the next node holds nothing
                out[f"changed_{order}"] = _change(ckpt, size, frac, 10 + 2 * i + (order == "overlap"))
                t = time.perf_counter()
                if order == "sequential":
                    (b1, _t), (b2, _t2) = await sync(), await restore()
                else:
                    pulling = asyncio.ensure_future(sync())
                    ended = asyncio.get_running_loop().create_future()
                    pulling.add_done_callback(lambda _f, e=ended: e.done() or e.set_result(None))
                    b2, _t2 = await restore(ended)
                    b1, _t = await pulling
                out[order].append({"s": time.perf_counter() - t, "synced": b1, "restored": b2,
                                   "put_before": out["plain_puts"][-1], "put_index": len(out["plain_puts"]) - 1})
                assert got.read_bytes() == ckpt.read_bytes(), f"{order}: the restored copy differs"
        shutil.copyfile(ckpt, src)
        await plain()
        for order in ("sequential", "overlap"):
            for x in out[order]:
                x["put_after"] = out["plain_puts"][x["put_index"] + 1]
        return out
    finally:
        for link, xfer in links.values():
            await xfer.close()
            await link.close()
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        simnode.kill_tree(root)


def chunk_report(r: dict[str, Any]) -> None:
    plain = r["plain_put_s"]
    mb = 1e6
    print(f"\n{fmt_size(r['size'])} checkpoint, {r['frac'] * 100:.0f} % changed between syncs; one plain SFTP copy "
          f"over the same link: put {plain:.2f} s, get {r['plain_get_s']:.2f} s")
    print("| step | bytes moved | share of the file | time | vs one plain copy |")
    print("|---|---:|---:|---:|---:|")
    for name, b, t in (("first sync (whole file)", r["first_sync_bytes"], r["first_sync_s"]),
                       (f"sync after {r['changed_1'] / mb:.1f} MB changed", r["sync_bytes"], r["sync_s"]),
                       ("restore onto a node with no copy", r["restore_fresh_bytes"], r["restore_fresh_s"]),
                       (f"sync after {r['changed_2'] / mb:.1f} MB changed", r["sync2_bytes"], r["sync2_s"]),
                       ("restore onto a node with an older copy", r["restore_older_bytes"], r["restore_older_s"])):
        print(f"| {name} | {b / mb:.1f} MB | {b / r['size'] * 100:.1f} % | {t:.2f} s | {t / plain:.2f}× |")
    for name, a, b in (("recovery, new node empty (final sync + restore)", r["sync_s"], r["restore_fresh_s"]),
                       ("recovery, new node holds an older copy", r["sync2_s"], r["restore_older_s"])):
        print(f"| {name} | {(r['sync_bytes'] if 'empty' in name else r['sync2_bytes']) / mb:.1f} MB + restore | |"
              f" {a + b:.2f} s | **{(a + b) / plain:.2f}×** |")
    print(f"restored copy identical: {r['restored_exact']}")
    print("plain puts, in order: " + ", ".join(f"{p:.2f} s" for p in r["plain_puts"]))
    print("| recovery onto an empty node | time | vs the mean of the puts just before and after | vs the best put |")
    print("|---|---:|---:|---:|")
    for order, what in (("sequential", "final sync, then restore (the old order)"),
                        ("overlap", "restore overlapping the final sync")):
        for x in r[order]:
            near = (x["put_before"] + x["put_after"]) / 2
            print(f"| {what} ({x['synced'] / mb:.1f} MB synced, {x['restored'] / mb:.1f} MB restored) | {x['s']:.2f} s |"
                  f" **{x['s'] / near:.2f}×** (puts {x['put_before']:.2f} / {x['put_after']:.2f} s) |"
                  f" {x['s'] / plain:.2f}× |")


def fmt_size(n: int) -> str:
    return f"{n / (1 << 30):.0f} GB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MB"


def trigger(r: dict[str, Any]) -> str:
    return f"notice, grace {r['grace']:.0f} s" if r["mode"] == "notice" else "no notice"


def report(rows: list[dict[str, Any]], baselines: dict[int, float]) -> None:
    print("\n| checkpoint | trigger | back on | notice → running again | → PREEMPTED | stop + final sync |"
          " schedule | restore + launch | process start (load) | final write / exit → synced | synced vs copyfile |"
          " bytes synced (after trigger) | restored | lost steps |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        base = baselines[r["size"]]
        ratio = r["final_sync_s"] / base if r["final_sync_s"] == r["final_sync_s"] else float("nan")
        print(f"| {fmt_size(r['size'])} | {trigger(r)} | {r['to']} | {r['recovery_s']:.2f} s |"
              f" {r['to_preempted_s']:.2f} s | {r['stop_sync_s']:.2f} s | {r['schedule_s']:.2f} s |"
              f" {r['restore_launch_s']:.2f} s | {r['process_s']:.2f} s ({r['load_s']:.2f}) |"
              f" {r['final_write_s']:.2f} / {r['final_sync_s']:.2f} s | {ratio:.1f}× ({base * 1000:.0f} ms) |"
              f" {r['bytes_synced'] / 1e6:.1f} MB ({r['bytes_final_sync'] / 1e6:.1f}) |"
              f" {r['bytes_restored'] / 1e6:.1f} MB | {r['lost_steps']} ({r['step_at_stop']} → {r['resumed']},"
              f" {r['lost_s']:.1f} s) |")
    for r in rows:
        print(f"\n{fmt_size(r['size'])}, {trigger(r)} ({r['status']}): timeline, s from the trigger")
        for at, what in sorted(r["timeline"]):
            print(f"  {at:+8.2f}  {what}")
        for w in r["sync_warnings"]:
            print(f"  warning: {w}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10M,1G", help="checkpoint sizes (default 10M,1G)")
    ap.add_argument("--quick", action="store_true", help="10M only")
    ap.add_argument("--modes", default="notice,vanish", help="notice (120 s notice) and/or vanish (no notice)")
    ap.add_argument("--to", choices=("prem", "cloud"), default="prem",
                    help="prem: cancel the hog at the notice; cloud: keep it, the job rents a new node")
    ap.add_argument("--grace", type=float, default=30.0, help="cloud.preemption_grace, s (default 30)")
    ap.add_argument("--sync-interval", type=float, default=10.0, help="fleet.checkpoint_sync_interval, s")
    ap.add_argument("--step-time", type=float, default=0.1, help="seconds per training step")
    ap.add_argument("--ckpt-every-s", type=float, default=10.0, help="periodic checkpoint every this many s of steps")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--chunks", action="store_true",
                    help="only the chunked-move bench: syncs and restores of --sizes (first size) between two "
                         "machines over SSH, against one plain SFTP copy over the same link")
    ap.add_argument("--change", type=float, default=0.01, help="--chunks: share of the bytes changed per sync")
    ap.add_argument("--repeat", type=int, default=2, help="--chunks: recoveries measured each way (default 2)")
    args = ap.parse_args()
    if args.chunks:
        import asyncio

        root = Path(tempfile.mkdtemp(prefix="hchk-"))
        try:
            r = asyncio.run(_chunk_bench(root, parse_size(args.sizes.split(",")[0]), args.change, args.repeat))
            print(json.dumps(r))
            chunk_report(r)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return 0
    sizes = [parse_size("10M")] if args.quick else [parse_size(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    root = Path(tempfile.mkdtemp(prefix="hrec-"))  # short: agent socket paths must stay under ~100 chars
    rows: list[dict[str, Any]] = []
    baselines: dict[int, float] = {}
    try:
        for size in sizes:
            baselines[size] = copy_baseline(root, size)
            for mode in modes:
                base = root / f"{len(rows)}"
                base.mkdir()
                print(f"# {fmt_size(size)} checkpoint, {mode} ...", flush=True)
                r = run_once(base, size, mode, args.to, args)
                print(json.dumps(r), flush=True)
                rows.append(r)
                shutil.rmtree(base, ignore_errors=True)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if rows:
            report(rows, baselines)
            if args.json:
                Path(args.json).write_text(json.dumps({"rows": rows, "copyfile_s": baselines}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
