"""Submit-path benchmark: hybridctl next to `python -c pass` and a real single-host Slurm, measured
in the same run so that ratios, not absolute times, are what travels between machines.

    .venv/bin/python bench/submit.py [--no-slurm] [--quick] [--profile] [--json FILE]

Groups (each hybridctl group gets a fresh controller state dir; Slurm is scancel'ed in between):
  1. latency of one `hybridctl submit --gpus 1 -- true` vs `python -c pass` (same interpreter)
     vs `sbatch -o /dev/null --gres=gpu:1 --wrap=true`; interleaved runs, median
  2. a 1000-task array vs one single submit (hybridctl and `sbatch --hold --array=1-1000`)
  3. 1000 sequential submits (one process each, bash loop) and 8 concurrent loops (1000 in all)
  4. `hybridctl queue --all` vs `squeue` with 1000 pending
  5. in-process `Controller.op_submit` submits/s, and through the socket with one `Client`
  6. controller RSS idle / with 1000 pending, next to slurmctld's
  7. which heavy modules `hybridctl submit` imports (-X importtime)

"Held" on the hybridctl side is a drained simulated node (8 GPUs, like the Slurm harness): jobs
stay PENDING and every submit still triggers a scheduling pass, as in the real controller.
Slurm is brought up with ../shared/peers/slurm/setup.sh --restart (as root; the first run
apt-installs it) and torn down with teardown.sh at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from _common import T0, BenchError, Results, fmt_x, print_table, say, verdict

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
_script = Path(PY).parent / "hybridctl"
HYB = [str(_script)] if _script.exists() else [PY, "-m", "hybridctl.cli.main"]
SLURM_DIR = Path(os.environ.get("SLURM_PEER_DIR", ROOT.parent / "shared" / "peers" / "slurm"))
SLURM_BENCH_DIR = Path(os.environ.get("BENCH_DIR", "/tmp/slurmbench"))
SLURM_PARTITION = "bench"
HEAVY = ("textual", "asyncssh", "torch", "sqlite_utils", "yaml")
SPEC = {"resources": {"accelerators": 1}, "run": "true"}  # what `submit --gpus 1 -- true` sends
NODE = {"name": "gpu01", "gpus": "8xA100", "cpus": 64, "memory": "512G", "simulated": True}

# ---- process timing --------------------------------------------------------------------------

ERRLOG = Path(tempfile.gettempdir()) / f"bench-submit-{os.getpid()}.err"


def run_timed(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one process run to completion (stdout discarded); raises if it fails."""
    with open(ERRLOG, "wb") as err:
        t0 = time.perf_counter()
        rc = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
        dt = time.perf_counter() - t0
    if rc != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {rc}: {ERRLOG.read_text(errors='replace')[-1500:]}")
    return dt


def interleaved(cmds: dict[str, tuple[list[str], dict[str, str]]], runs: int, warmup: int,
                before: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Run each command `warmup + runs` times, round-robin with a rotating order, so that a noisy
    machine's drift hits every command alike. Returns the timed runs (seconds) per label."""
    labels = list(cmds)
    out: dict[str, list[float]] = {k: [] for k in labels}
    for i in range(warmup + runs):
        k0 = i % len(labels)
        for k in labels[k0:] + labels[:k0]:
            if before is not None:
                before()
            dt = run_timed(*cmds[k])
            if i >= warmup:
                out[k].append(dt)
    return out


def loop_rate(argv: list[str], env: dict[str, str], n: int, clients: int = 1) -> float:
    """Wall seconds for `n` runs of argv split over `clients` concurrent bash loops (one process
    per submit, like the Slurm harness's `for ...; do sbatch ...; done`)."""
    script = 'for _ in $(seq "$0"); do "$@" >/dev/null || exit 1; done'
    per = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(["bash", "-c", script, str(k), *argv], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for k in per
    ]
    errs = [p.communicate()[1] for p in procs]
    dt = time.perf_counter() - t0
    bad = [(p.returncode, e) for p, e in zip(procs, errs) if p.returncode != 0]
    if bad:
        raise BenchError(f"submit loop `{' '.join(argv)}` failed ({bad[0][0]}): {bad[0][1].decode(errors='replace')[-1500:]}")
    return dt


def proc_mem_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def med_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


# ---- a hybridctl controller on a fresh state dir ---------------------------------------------


class Hyb:
    def __init__(self, base: Path, name: str, drained: bool) -> None:
        self.dir = base / name
        self.dir.mkdir(parents=True)
        self.home = self.dir / "home"
        self.sock = self.dir / "hybridctl.sock"
        self.cfg = self.dir / "config.yaml"
        self.cfg.write_text(json.dumps({"nodes": [NODE]}))  # JSON is YAML
        self.drained = drained
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ, HYBRIDCTL_HOME=str(self.home), HYBRIDCTL_SOCKET=str(self.sock),
                        HYBRIDCTL_CONFIG=str(self.cfg))

    def __enter__(self) -> Hyb:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        log = open(self.dir / "controller.log", "ab")
        self.proc = subprocess.Popen([*HYB, "server"], env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while not self._ping_ok():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"controller did not come up; log tail:\n{self.log_tail()}")
            time.sleep(0.05)
        if self.drained:  # the `--hold` equivalent: everything stays PENDING
            self.cli("node", "drain", NODE["name"], "--reason", "bench hold")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.dir / "controller.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _ping_ok(self) -> bool:
        try:
            self.ping()
            return True
        except OSError:
            return False

    def ping(self) -> None:
        """One request/answer; the controller answers only when its event loop is free, so this
        is also a barrier behind any scheduling pass already running."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(str(self.sock))
            s.sendall(b'{"op": "ping"}\n')
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise OSError("closed")
                buf += chunk
            if not json.loads(buf).get("ok"):
                raise BenchError(f"ping failed: {buf[:300]!r}")

    def cli(self, *args: str) -> str:
        res = subprocess.run([*HYB, *args], env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise BenchError(f"hybridctl {' '.join(args)} exited {res.returncode}: {res.stderr.strip()[-1500:]}")
        return res.stdout

    def pending(self) -> int:
        rows = json.loads(self.cli("queue", "--all", "--json"))
        return sum(1 for r in rows if r.get("state") == "PENDING")

    def mem(self) -> dict[str, int]:
        assert self.proc is not None
        return proc_mem_kb(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- Slurm (the peer harness) ------------------------------------------------------------------


class Slurm:
    def __init__(self, enabled: bool) -> None:
        self.ok = False
        self.why = "skipped (--no-slurm)"
        self.env = dict(os.environ, SLURM_CONF=str(SLURM_BENCH_DIR / "etc" / "slurm.conf"))
        self.enabled = enabled
        self.started = False

    def up(self) -> None:
        if not self.enabled:
            return
        if os.geteuid() != 0:
            self.why = "needs root (the harness runs slurmctld/munged as root)"
            return
        if not (SLURM_DIR / "setup.sh").exists():
            self.why = f"no harness at {SLURM_DIR}"
            return
        say("Slurm: setup.sh --restart (apt install on the first run)")
        t = time.perf_counter()
        res = subprocess.run([str(SLURM_DIR / "setup.sh"), "--restart"], capture_output=True, text=True)
        self.started = True
        if res.returncode != 0:
            self.why = f"setup.sh failed ({res.returncode}): {res.stderr.strip()[-300:]}"
            return
        self.ok = True
        say(f"Slurm up in {time.perf_counter() - t:.1f}s")

    def down(self) -> None:
        if self.started:
            say("Slurm: teardown.sh")
            subprocess.run([str(SLURM_DIR / "teardown.sh")], capture_output=True, text=True)

    def cmd(self, *argv: str) -> tuple[list[str], dict[str, str]]:
        return list(argv), self.env

    def out(self, *argv: str) -> str:
        res = subprocess.run(list(argv), env=self.env, capture_output=True, text=True)
        if res.returncode != 0:
            raise BenchError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()[-500:]}")
        return res.stdout

    def active(self) -> int:
        return len(self.out("squeue", "-h", "-r", "-t", "PD,R,CG,CF,S").splitlines())

    def pending(self) -> int:
        return len(self.out("squeue", "-h", "-r", "-t", "PD").splitlines())

    def clear(self, timeout: float = 90) -> None:
        self.out("scancel", f"--partition={SLURM_PARTITION}")
        deadline = time.monotonic() + timeout
        while self.active():
            if time.monotonic() > deadline:
                raise BenchError("Slurm queue did not drain after scancel")
            time.sleep(0.2)

    def ctld_mem(self) -> dict[str, int]:
        return proc_mem_kb(int((SLURM_BENCH_DIR / "run" / "slurmctld.pid").read_text()))


# ---- results ---------------------------------------------------------------------------------


def fmt_ms(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:.1f} ms" if x >= 1 else f"{x * 1000:.0f} us")


def fmt_rate(x: float | None, unit: str = "jobs/s") -> str:
    return "n/a" if x is None else f"{x:,.0f} {unit}"


def fmt_mib(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f} MiB"


# ---- the groups --------------------------------------------------------------------------------


@dataclass
class Knobs:
    n: int = 1000
    lat_runs: int = 30
    lat_warmup: int = 3
    q_runs: int = 20
    q_warmup: int = 2
    array_reps: int = 5
    api_n: int = 5000
    sock_n: int = 5000
    sock_deadline: float = 20.0
    clients: int = 8


def g1_latency(k: Knobs, base: Path, slurm: Slurm, R: Results) -> None:
    with Hyb(base, "g1-latency", drained=False) as h:  # node up: the first 8 jobs get placed
        say(f"1. latency: {k.lat_warmup}+{k.lat_runs} interleaved runs of true / python -c pass / hybridctl submit")
        t = interleaved({
            "true": (["/bin/true"], h.env),
            "pypass": ([PY, "-c", "pass"], h.env),
            "hyb": ([*HYB, "submit", "--gpus", "1", "--", "true"], h.env),
        }, k.lat_runs, k.lat_warmup)
    R.raw["g1"] = t
    hyb, py, floor = med_ms(t["hyb"]), med_ms(t["pypass"]), med_ms(t["true"])
    r = hyb / py
    R.add("1", f"submit latency, median of {k.lat_runs}", fmt_ms(hyb), f"python -c pass {fmt_ms(py)}", fmt_x(r),
          "<= 2.5x", verdict(r, 2.5, True))
    R.add("1", "  (spawn floor: /bin/true via subprocess)", "", fmt_ms(floor))
    if slurm.ok:
        say("1. latency: sbatch (jobs really run, as in the harness), interleaved with python -c pass")
        s = interleaved({
            "pypass": ([PY, "-c", "pass"], slurm.env),
            "sbatch": slurm.cmd("sbatch", "-o", "/dev/null", "--gres=gpu:1", "--wrap=true"),
        }, k.lat_runs, k.lat_warmup)
        slurm.clear()
        R.raw["g1_slurm"] = s
        sb, py2 = med_ms(s["sbatch"]), med_ms(s["pypass"])
        R.add("1", "submit latency vs sbatch", fmt_ms(hyb), f"sbatch {fmt_ms(sb)}", fmt_x(hyb / sb))
        R.add("1", "  (python -c pass again, in the sbatch block)", "", fmt_ms(py2),
              note_ratio(py2, py))
    else:
        R.add("1", "submit latency vs sbatch", fmt_ms(hyb), "sbatch n/a", "n/a")


def note_ratio(a: float, b: float) -> str:
    return f"drift {a / b:.2f}x"


def g2_array(k: Knobs, base: Path, slurm: Slurm, R: Results) -> None:
    n = k.n
    with Hyb(base, "g2-array", drained=True) as h:
        say(f"2. array: 1+{k.array_reps} reps of single vs --array 1-{n} (cancelled and settled between reps)")
        cmds = {
            "single": ([*HYB, "submit", "--gpus", "1", "--", "true"], h.env),
            "array": ([*HYB, "submit", "--array", f"1-{n}", "--gpus", "1", "--", "true"], h.env),
        }

        def settle() -> None:
            h.ping()  # behind any scheduling pass still running

        times: dict[str, list[float]] = {"single": [], "array": []}
        for rep in range(1 + k.array_reps):
            one = interleaved(cmds, 1, 0, before=settle)
            if rep:
                for key in times:
                    times[key] += one[key]
            h.cli("cancel", "--all-mine")
            settle()
    R.raw["g2"] = times
    single, arr = med_ms(times["single"]), med_ms(times["array"])
    r = arr / single
    R.add("2", f"--array 1-{n}, median of {k.array_reps}", fmt_ms(arr), f"single submit {fmt_ms(single)}", fmt_x(r),
          "<= 1.5x", verdict(r, 1.5, True))
    R.add("2", "  array tasks/s (hybridctl)", fmt_rate(n / (arr / 1000), "tasks/s"))
    if slurm.ok:
        say("2. array: sbatch --hold single vs --array")
        scmds = {
            "single": slurm.cmd("sbatch", "--hold", "-o", "/dev/null", "--gres=gpu:1", "--wrap=true"),
            "array": slurm.cmd("sbatch", "--hold", "-o", "/dev/null", "--gres=gpu:1", f"--array=1-{n}", "--wrap=true"),
        }
        st: dict[str, list[float]] = {"single": [], "array": []}
        for rep in range(1 + k.array_reps):
            one = interleaved(scmds, 1, 0)
            if rep:
                for key in st:
                    st[key] += one[key]
            slurm.clear()
        R.raw["g2_slurm"] = st
        ss, sa = med_ms(st["single"]), med_ms(st["array"])
        R.add("2", f"--array 1-{n} vs sbatch --hold --array", fmt_ms(arr), f"sbatch array {fmt_ms(sa)}",
              fmt_x(arr / sa))
        R.add("2", "  (Slurm's own array / single)", "", f"{fmt_ms(sa)} / {fmt_ms(ss)}", fmt_x(sa / ss))
    else:
        R.add("2", f"--array 1-{n} vs sbatch --hold --array", fmt_ms(arr), "n/a", "n/a")


def alternating_loops(k: Knobs, h: Hyb, slurm: Slurm, clients: int, chunks: int) -> dict[str, float]:
    """n hybridctl submits, n `sbatch --hold` and n/5 `python -c pass` runs, each as `clients`
    concurrent bash loops, cut into `chunks` alternating slices so that the machine's drift hits
    all three alike. Returns the summed wall seconds per side."""
    n = k.n
    submit = [*HYB, "submit", "--gpus", "1", "--", "true"]
    sb = ["sbatch", "--hold", "-o", "/dev/null", "--gres=gpu:1", "--wrap=true"]
    ref_n = max(n // 5, chunks)
    tot = {"hyb": 0.0, "slurm": 0.0, "pypass": 0.0}
    for c in range(chunks):
        part = n // chunks + (1 if c < n % chunks else 0)
        tot["hyb"] += loop_rate(submit, h.env, part, clients)
        h.ping()  # the controller's last scheduling pass is part of the cost
        if slurm.ok:
            tot["slurm"] += loop_rate(sb, slurm.env, part, clients)
        rpart = ref_n // chunks + (1 if c < ref_n % chunks else 0)
        tot["pypass"] += loop_rate([PY, "-c", "pass"], h.env, rpart, clients)
    return {"hyb_rate": n / tot["hyb"], "slurm_rate": n / tot["slurm"] if slurm.ok else 0.0,
            "pypass_rate": ref_n / tot["pypass"], **tot}


def add_loop_rows(R: Results, label: str, r: dict[str, float], slurm: Slurm) -> None:
    hr, sr, pr = r["hyb_rate"], r["slurm_rate"], r["pypass_rate"]
    R.add("3", label, fmt_rate(hr), f"sbatch --hold {fmt_rate(sr) if sr else 'n/a'}",
          fmt_x(hr / sr) if sr else "n/a", "(higher = better)")
    R.add("3", "  same loop of `python -c pass`", fmt_rate(hr), f"python -c pass {fmt_rate(pr, 'runs/s')}",
          fmt_x(hr / pr))


def g3_loops_queue_rss(k: Knobs, base: Path, slurm: Slurm, R: Results) -> None:
    n = k.n
    with Hyb(base, "g3-sequential", drained=True) as h:
        time.sleep(1.0)
        idle = h.mem()
        R.raw["rss_idle"] = idle
        say(f"3. sequential: {n} x `hybridctl submit`, {n} x `sbatch --hold`, {n // 5} x `python -c pass`"
            " in bash loops, alternating in 10 slices")
        seq = alternating_loops(k, h, slurm, 1, 10)
        R.raw["g3_seq"] = seq
        hyb_seq = seq["hyb_rate"]
        pend = h.pending()
        if pend != n:
            R.errors.append(f"sequential loop: {pend} pending after {n} submits")
        add_loop_rows(R, f"{n} sequential submits (bash loop)", seq, slurm)

        # 4. queue with n pending
        spend = slurm.pending() if slurm.ok else None
        say(f"4. queue: {k.q_warmup}+{k.q_runs} interleaved runs (pending: hybridctl {pend}, slurm {spend})")
        cmds = {"hyb": ([*HYB, "queue", "--all"], h.env), "pypass": ([PY, "-c", "pass"], h.env)}
        if slurm.ok:
            cmds["squeue"] = slurm.cmd("squeue")
        q = interleaved(cmds, k.q_runs, k.q_warmup)
        R.raw["g4"] = q
        hq, pq = med_ms(q["hyb"]), med_ms(q["pypass"])
        if slurm.ok:
            sq = med_ms(q["squeue"])
            R.add("4", f"queue --all, {pend} pending (median of {k.q_runs})", fmt_ms(hq),
                  f"squeue ({spend} pending) {fmt_ms(sq)}", fmt_x(hq / sq))
        else:
            R.add("4", f"queue --all, {pend} pending (median of {k.q_runs})", fmt_ms(hq), "squeue n/a", "n/a")
        R.add("4", "  queue --all vs python -c pass", fmt_ms(hq), f"python -c pass {fmt_ms(pq)}", fmt_x(hq / pq))

        # 6. memory with n pending
        busy = h.mem()
        R.raw["rss_pending"] = busy
        sl_idle = R.raw.get("slurmctld_idle")
        sl_busy = slurm.ctld_mem() if slurm.ok else None
        R.raw["slurmctld_pending"] = sl_busy
        R.add("6", "controller RSS, idle", fmt_mib(idle["VmRSS"]),
              f"slurmctld {fmt_mib(sl_idle['VmRSS']) if sl_idle else 'n/a'}",
              fmt_x(idle["VmRSS"] / sl_idle["VmRSS"]) if sl_idle else "n/a")
        R.add("6", f"controller RSS, {pend} pending", fmt_mib(busy["VmRSS"]),
              f"slurmctld {fmt_mib(sl_busy['VmRSS']) if sl_busy else 'n/a'}",
              fmt_x(busy["VmRSS"] / sl_busy["VmRSS"]) if sl_busy else "n/a")
        R.add("6", "  controller peak RSS (VmHWM)", fmt_mib(busy["VmHWM"]),
              f"slurmctld {fmt_mib(sl_busy['VmHWM']) if sl_busy else 'n/a'}")
    if slurm.ok:
        slurm.clear()

    with Hyb(base, "g3-concurrent", drained=True) as h:
        say(f"3. concurrent: the same with {k.clients} bash loops at once, in 4 slices")
        conc = alternating_loops(k, h, slurm, k.clients, 4)
        got = h.pending()
        if got != n:
            R.errors.append(f"concurrent loop: {got} pending after {n} submits")
    if slurm.ok:
        slurm.clear()
    R.raw["g3_conc"] = conc
    hyb_c = conc["hyb_rate"]
    add_loop_rows(R, f"{k.clients} concurrent clients, {n} submits", conc, slurm)
    R.add("3", "  concurrent / sequential (hybridctl)", "", "", fmt_x(hyb_c / hyb_seq))


def g5_api(k: Knobs, base: Path, R: Results, profile: bool) -> None:
    # A state dir prepared by a real controller (schema + the drained simulated node), then the
    # handler called in this process: no socket, no JSON, no scheduling pass.
    h = Hyb(base, "g5-inprocess", drained=True)
    h.start()
    h.stop()
    import dataclasses

    from hybridctl import config
    from hybridctl.control.identity import caller
    from hybridctl.control.service import Controller
    from hybridctl.store.sqlite import Store

    settings = dataclasses.replace(config.load(h.cfg), home=str(h.home), socket=str(h.sock))
    store = Store(h.home / "hybridctl.db")
    ctl = Controller(store, settings)
    who = caller(os.getuid(), os.getgid(), settings.admin_group)
    for _ in range(200):  # warm-up
        ctl.op_submit(who, spec=dict(SPEC), source="command line")
    say(f"5. in-process: {k.api_n} x Controller.op_submit")
    t = time.perf_counter()
    for _ in range(k.api_n):
        ctl.op_submit(who, spec=dict(SPEC), source="command line")
    dt = time.perf_counter() - t
    rate = k.api_n / dt
    R.raw["g5_inproc_s"] = dt
    R.add("5", f"in-process op_submit x {k.api_n}", fmt_rate(rate, "submits/s"), f"{dt / k.api_n * 1e6:.0f} us each",
          "", ">= 5,000/s", verdict(rate, 5000, False))
    if profile:
        import cProfile
        import io
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        for _ in range(2000):
            ctl.op_submit(who, spec=dict(SPEC), source="command line")
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(18)
        R.notes.append("cProfile of 2000 in-process op_submit calls (by tottime):\n" + buf.getvalue())
    store.close()

    # Through the socket: one persistent Client connection, the real daemon (scheduling included).
    from hybridctl.control.client import Client

    with Hyb(base, "g5-socket", drained=True) as hs:
        say(f"5. socket: up to {k.sock_n} submits on one Client connection (stop after {k.sock_deadline:.0f}s)")
        marks: list[tuple[int, float]] = [(0, 0.0)]
        with Client(hs.sock) as c:
            t = time.perf_counter()
            done = 0
            while done < k.sock_n:
                c.call("submit", spec=dict(SPEC), source="command line", full=False)
                done += 1
                if done % 250 == 0:
                    marks.append((done, time.perf_counter() - t))
                    if marks[-1][1] > k.sock_deadline:
                        break
            dt = time.perf_counter() - t
        mem = hs.mem()
    if marks[-1][0] != done:
        marks.append((done, dt))
    R.raw["g5_socket_marks"] = marks
    rate = done / dt
    first = marks[1][0] / marks[1][1] if len(marks) > 1 else rate
    last = (marks[-1][0] - marks[-2][0]) / (marks[-1][1] - marks[-2][1]) if len(marks) > 2 else rate
    R.add("5", f"socket, 1 Client: {done} submits in {dt:.1f}s", fmt_rate(rate, "submits/s"),
          f"in-process {fmt_rate(k.api_n / R.raw['g5_inproc_s'], '/s')}",
          fmt_x(rate / (k.api_n / R.raw["g5_inproc_s"])))
    R.add("5", f"  socket rate, first {marks[1][0] if len(marks) > 1 else done} / "
               f"last {marks[-1][0] - marks[-2][0] if len(marks) > 2 else done} submits",
          f"{first:,.0f} / {last:,.0f} /s", f"(pending grew to {done})", fmt_x(last / first))
    R.raw["rss_socket_end"] = mem
    R.add("6", f"controller RSS after {done} socket submits", fmt_mib(mem["VmRSS"]), f"peak {fmt_mib(mem['VmHWM'])}")


def g7_imports(base: Path, R: Results) -> None:
    def heavy(args: list[str], env: dict[str, str]) -> tuple[list[str], float]:
        res = subprocess.run([PY, "-X", "importtime", "-m", "hybridctl.cli.main", *args], env=env,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise BenchError(f"importtime {' '.join(args)} exited {res.returncode}: {res.stderr[-800:]}")
        mods, total = set(), 0
        for line in res.stderr.splitlines():
            if line.startswith("import time:") and "|" in line:
                parts = [p.strip() for p in line[len("import time:"):].split("|")]
                if parts[0].isdigit():
                    total += int(parts[0])
                    mods.add(parts[2].split(".")[0])
        return [m for m in HEAVY if m in mods], total / 1000

    say("7. imports: -X importtime for `submit --help` and a real `submit`")
    found, ms = heavy(["submit", "--help"], dict(os.environ))
    R.add("7", "`submit --help` imports of " + "/".join(HEAVY), ", ".join(found) or "none", f"{ms:.0f} ms imports",
          "", "none", "ok" if not found else "MISS")
    res = subprocess.run([PY, "-X", "importtime", "-c", "pass"], capture_output=True, text=True)
    base_ms = sum(int(ln.split("|")[0].split(":")[1]) for ln in res.stderr.splitlines()
                  if ln.startswith("import time:") and ln.split("|")[0].split(":")[1].strip().isdigit()) / 1000
    R.add("7", "  (`python -c pass` imports, the same site setup)", "", f"{base_ms:.0f} ms imports")
    with Hyb(base, "g7-imports", drained=True) as h:
        found2, ms2 = heavy(["submit", "--gpus", "1", "--", "true"], h.env)
        found3, ms3 = heavy(["queue", "--all"], h.env)
    R.add("7", "`submit --gpus 1 -- true` (real) imports", ", ".join(found2) or "none", f"{ms2:.0f} ms imports",
          "", "none", "ok" if not found2 else "MISS")
    R.add("7", "`queue --all` (real) imports", ", ".join(found3) or "none", f"{ms3:.0f} ms imports",
          "", "none", "ok" if not found3 else "MISS")


# ---- main ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--no-slurm", action="store_true", help="skip the Slurm side (its columns print n/a)")
    ap.add_argument("--quick", action="store_true", help="200 jobs instead of 1000 and fewer runs (~1 min)")
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process submit path too")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the controllers' state dirs (path printed)")
    args = ap.parse_args()

    k = Knobs()
    if args.quick:
        k = Knobs(n=200, lat_runs=10, lat_warmup=2, q_runs=10, q_warmup=2, array_reps=3, api_n=2000, sock_n=2000,
                  sock_deadline=8.0)
    base = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    R = Results()
    slurm = Slurm(enabled=not args.no_slurm)
    try:
        slurm.up()
        if slurm.ok:
            time.sleep(1.0)
            R.raw["slurmctld_idle"] = slurm.ctld_mem()
        groups: list[tuple[str, Callable[[], None]]] = [
            ("1 latency", lambda: g1_latency(k, base, slurm, R)),
            ("2 array", lambda: g2_array(k, base, slurm, R)),
            ("3/4/6 loops, queue, memory", lambda: g3_loops_queue_rss(k, base, slurm, R)),
            ("5 API", lambda: g5_api(k, base, R, args.profile)),
            ("7 imports", lambda: g7_imports(base, R)),
        ]
        for name, fn in groups:
            t = time.perf_counter()
            try:
                fn()
            except Exception as exc:  # one broken group must not hide the others' figures
                R.errors.append(f"group {name}: {exc}")
                traceback.print_exc()
                if slurm.ok:
                    try:
                        slurm.clear()
                    except Exception:
                        pass
            say(f"group {name} took {time.perf_counter() - t:.1f}s")
    finally:
        slurm.down()
        ERRLOG.unlink(missing_ok=True)
        if args.keep:
            say(f"state dirs kept under {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    elapsed = time.perf_counter() - T0
    print_table(R, "submit", args.quick, "up" if slurm.ok else slurm.why, "latency and memory", elapsed)
    if args.json:
        R.write_json(args.json, elapsed)
    return 1 if R.errors else 0


if __name__ == "__main__":
    sys.exit(main())
