"""Does a huge array stall everyone else? The worst latency of another client's `ping` while one
user submits a 100,000-task array and the controller schedules it, next to the same run with a
100-task array (the baseline, same controller code, same machine, same run).

    .venv/bin/python bench/huge_array.py [--tasks 100000] [--watch 10] [--root DIR] [--json FILE]

`--root` runs the controller from another checkout (e.g. `git archive HEAD | tar -x -C /tmp/old`)
to measure the code before a change: only the controller's code changes, this script does not.
The fleet is one simulated 8-GPU node, drained, so every task stays PENDING and every scheduling
pass (one per second: tick_seconds 1) sees the whole array, the worst case for a pass. Then one
`queue --all` over the array is timed (its reply and the worst ping while it is built).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import T0, BenchError, Results, fmt_x, print_table, say, wait_for

ROOT = Path(__file__).resolve().parents[1]
NODE = {"name": "gpu01", "gpus": "8xA100", "cpus": 64, "memory": "512G", "simulated": True}


class Controller:
    """A `hybridctl server` from `root` on a fresh state dir, talked to over its socket."""

    def __init__(self, base: Path, root: Path, tasks: int) -> None:
        self.dir = Path(tempfile.mkdtemp(dir=base))
        self.sock = self.dir / "hybridctl.sock"
        cfg = {"nodes": [NODE], "scheduler": {"tick_seconds": 1.0},
               "limits": {"max_array_tasks": tasks, "max_pending_tasks_per_user": tasks}}
        (self.dir / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
        self.env = dict(os.environ, HYBRIDCTL_HOME=str(self.dir / "home"), HYBRIDCTL_SOCKET=str(self.sock),
                        HYBRIDCTL_CONFIG=str(self.dir / "config.yaml"), PYTHONPATH=str(root))
        self.code = subprocess.run([sys.executable, "-c", "import hybridctl; print(hybridctl.__file__)"],
                                   env=self.env, cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        log = open(self.dir / "controller.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "hybridctl.cli.main", "server"], env=self.env, cwd=root,
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        wait_for(self._up, 30, "the controller's socket")
        self.call("drain", node=NODE["name"], reason="bench hold")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise BenchError(f"controller exited: {(self.dir / 'controller.log').read_text()[-1500:]}")
        try:
            self.call("ping")
            return True
        except OSError:
            return False

    def call(self, op: str, **args: Any) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(120)
            s.connect(str(self.sock))
            s.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise OSError("closed")
                buf += chunk
        reply = json.loads(buf)
        if not reply.get("ok"):
            raise BenchError(f"{op} failed: {str(reply)[:300]}")
        return reply.get("result")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Pinger(threading.Thread):
    """Another client: one connection, a ping every 5 ms, every round trip recorded."""

    def __init__(self, sock: Path) -> None:
        super().__init__(daemon=True)
        self.sock, self.lat, self.halt = sock, [], threading.Event()
        self.marks: list[float] = []

    def run(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(120)
            s.connect(str(self.sock))
            f = s.makefile("rwb")
            while not self.halt.is_set():
                t = time.perf_counter()
                f.write(b'{"op": "ping"}\n')
                f.flush()
                f.readline()
                self.lat.append(time.perf_counter() - t)
                self.marks.append(t)
                time.sleep(0.005)

    def worst_since(self, t0: float) -> float:
        return max((lat for lat, t in zip(self.lat, self.marks) if t >= t0), default=0.0)


def one(base: Path, root: Path, tasks: int, watch: float) -> dict[str, Any]:
    """Submit a `tasks`-task array while another client pings; watch `watch` s of passes; then one queue."""
    c = Controller(base, root, tasks)
    p = Pinger(c.sock)
    try:
        p.start()
        wait_for(lambda: len(p.lat) > 20, 10, "pings")
        t0 = time.perf_counter()
        job = c.call("submit", spec={"run": "true", "resources": {"accelerators": 1}, "array": f"1-{tasks}"},
                     source="bench")["id"]
        submit_s = time.perf_counter() - t0
        time.sleep(watch)
        worst_sched = p.worst_since(t0)
        t1 = time.perf_counter()
        rows = c.call("queue", all=True)
        queue_s = time.perf_counter() - t1
        time.sleep(0.2)
        worst_queue = p.worst_since(t1)
        last = next(r for r in reversed(rows) if r["job_id"] == job)
        return {"tasks": tasks, "code": c.code, "submit_s": submit_s, "worst_ping_s": worst_sched,
                "queue_s": queue_s, "queue_rows": len(rows), "worst_ping_queue_s": worst_queue,
                "pings": len(p.lat), "last_reason": last["reason"]}
    finally:
        p.halt.set()
        p.join(10)
        c.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--baseline-tasks", type=int, default=100)
    ap.add_argument("--watch", type=float, default=10.0, help="seconds of scheduling passes watched after the submit")
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout whose controller to run")
    ap.add_argument("--json", help="write the raw figures here")
    a = ap.parse_args()
    R = Results()
    with tempfile.TemporaryDirectory(prefix="bench-huge-") as tmp:
        say(f"baseline: a {a.baseline_tasks}-task array")
        small = one(Path(tmp), a.root.resolve(), a.baseline_tasks, a.watch)
        say(f"a {a.tasks}-task array")
        big = one(Path(tmp), a.root.resolve(), a.tasks, a.watch)
    R.raw.update(baseline=small, huge=big, root=str(a.root))
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    R.add("1", f"worst ping, submit + {a.watch:.0f} s of passes", ms(big["worst_ping_s"]), ms(small["worst_ping_s"]),
          fmt_x(big["worst_ping_s"] / max(small["worst_ping_s"], 1e-6)), "< 1 s", "ok" if big["worst_ping_s"] < 1 else "MISS")
    R.add("1", "submit round trip", ms(big["submit_s"]), ms(small["submit_s"]),
          fmt_x(big["submit_s"] / max(small["submit_s"], 1e-6)))
    R.add("2", f"queue --all ({big['queue_rows']} / {small['queue_rows']} rows)", ms(big["queue_s"]), ms(small["queue_s"]),
          fmt_x(big["queue_s"] / max(small["queue_s"], 1e-6)))
    R.add("2", "worst ping during that queue", ms(big["worst_ping_queue_s"]), ms(small["worst_ping_queue_s"]),
          fmt_x(big["worst_ping_queue_s"] / max(small["worst_ping_queue_s"], 1e-6)), "< 1 s",
          "ok" if big["worst_ping_queue_s"] < 1 else "MISS")
    R.notes.append(f"controller code: {big['code']}\nlast task's reason: {big['last_reason']!r}")
    elapsed = time.perf_counter() - T0
    print_table(R, "huge-array", False, "not used", "ms", elapsed)
    if a.json:
        R.write_json(a.json, elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
