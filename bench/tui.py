"""TUI benchmark: CPU used at 1 Hz refresh and key-press-to-repaint latency, with Pilot, against a
real controller holding 1000 simulated nodes x 8 GPUs and 10k jobs.

    .venv/bin/python bench/tui.py [--window S] [--presses N] [--size WxH] [--no-telemetry] [--json FILE]

Targets (issue 4): CPU of the TUI process <= 30 % of one core at 1 Hz; p50 latency <= 100 ms.

- The controller is a separate process (`hybridctl server`), as in real use; only the TUI
  process's CPU is counted (`time.process_time`, all its threads: refresh workers included).
- Simulated nodes report no telemetry, so by default the refresh reply is given a synthetic
  sample per node (8 GPUs, util/memory/temperature/power, one process each), decoded from JSON
  text on every refresh like a real reply, so the history and sparkline paths run at full size.
  `--no-telemetry` measures the bare controller reply.
- Headless Pilot skips the terminal write; here every frame is still rendered to the escape
  sequences a terminal would get, so the frame cost is counted.
- Latency: a key (down/up) is posted at t0; the time is taken at the first frame painted after the
  key's effect (the cursor moved). Keys come every 50-150 ms (random, seeded) while the 1 Hz
  refresh runs, so some land while a 10k-row refresh is being applied.
- Baseline in the same run: a bare Textual app updating one label at 1 Hz (same size, same frame
  rendering), so the ratio travels between machines better than the percentage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textual.app import App, ComposeResult  # noqa: E402
from textual.widgets import Static  # noqa: E402

from hybridctl.control.client import Client  # noqa: E402
from hybridctl.core.spec import apply_flags  # noqa: E402
from hybridctl.tui.app import HybridApp  # noqa: E402
from hybridctl.tui.data import SocketApi  # noqa: E402
from hybridctl.tui.widgets.table import RowTable  # noqa: E402
from tests.integration.harness import make_controller  # noqa: E402

from _common import say  # noqa: E402

NODES, GPUS, JOBS, ARRAY = 1000, 8, 10_000, 250


class TelemetryApi(SocketApi):
    """The real controller, with a synthetic agent sample decoded into each node of `nodes`."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        rng = random.Random(7)
        self.variants = []
        for v in range(8):
            per_node = {}
            for n in range(NODES):
                gpus = [{"index": i, "uuid": f"GPU-{n}-{i}", "name": "A100", "util_gpu": rng.randrange(101),
                         "util_mem": rng.randrange(101), "mem_used_mb": rng.randrange(81920), "mem_total_mb": 81920,
                         "temp_c": rng.randrange(30, 90), "power_w": rng.randrange(60, 400), "power_limit_w": 400,
                         "fan_pct": None, "clock_sm_mhz": 1410, "healthy": True, "health_reason": None,
                         "processes": [{"pid": 1000 + i, "user": "root", "used_mem_mb": 1000, "job": f"{n}.a0.r0"}]}
                        for i in range(GPUS)]
                per_node[f"n{n:04d}"] = {"seq": v, "time": 0.0, "host": {"cpu_percent": 10.0}, "gpus": gpus}
            self.variants.append(json.dumps(per_node))
        self.tick = 0

    def call(self, op: str, args: dict[str, Any], lane: str = "poll") -> Any:
        out = super().call(op, args, lane)
        if op == "nodes":
            self.tick += 1
            samples = json.loads(self.variants[self.tick % len(self.variants)])
            for n in out:
                s = samples.get(n["name"])
                if s is not None:
                    s["time"] = float(self.tick)
                    n["telemetry"] = s
        return out


def frame_hook(app: App[Any], frames: list[float]) -> None:
    """Record each frame's time, rendering it to terminal bytes as a real driver would."""
    from textual._compositor import CompositorUpdate

    original = app._display

    def display(screen: Any, renderable: Any) -> None:
        if renderable is not None and not app._batch_count:
            if isinstance(renderable, CompositorUpdate):
                renderable.render_segments(app.console)
            frames.append(time.perf_counter())
        original(screen, renderable)

    app._display = display  # type: ignore[method-assign]


async def wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def cpu_window(seconds: float) -> float:
    """% of one core used by this process over `seconds` of wall time."""
    c0, w0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    return 100.0 * (time.process_time() - c0) / (time.perf_counter() - w0)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def measure_tui(api: SocketApi, view: str, size: tuple[int, int], window: float, presses: int,
                      rng: random.Random, interval: float = 1.0) -> dict[str, Any]:
    app = HybridApp(api, interval=interval, mode=view, cursor_blink=False)
    frames: list[float] = []
    async with app.run_test(size=size) as pilot:
        frame_hook(app, frames)
        table = app.screen.query_one(RowTable)
        await wait(lambda: len(table.rows) > 100, 120, f"{view} rows")
        await pilot.pause(2.0)
        polls0 = app.polls
        cpu = await cpu_window(window)
        polls = app.polls - polls0
        handled: list[float] = []
        original = table._move_to

        def move(i: int) -> None:
            original(i)
            handled.append(time.perf_counter())

        table._move_to = move  # type: ignore[method-assign]
        lat = []
        table.focus()
        for k in range(presses):
            await asyncio.sleep(rng.uniform(0.05, 0.15))
            n_handled = len(handled)
            t0 = time.perf_counter()
            task = asyncio.create_task(pilot.press("down" if k % 2 == 0 else "up"))
            await wait(lambda: len(handled) > n_handled, 10, "key handled")
            h = handled[n_handled]
            await wait(lambda: frames and frames[-1] > h, 10, "frame after key")
            first = next(f for f in frames if f > h)
            lat.append((first - t0) * 1000)
            await task
        rows = len(table.rows)
    return {"view": view, "rows": rows, "cpu_pct": round(cpu, 1), "refreshes": polls, "window_s": window,
            "lat_p50_ms": round(pct(lat, 0.5), 1), "lat_p95_ms": round(pct(lat, 0.95), 1),
            "lat_max_ms": round(max(lat), 1), "presses": len(lat)}


class Bare(App[None]):
    def compose(self) -> ComposeResult:
        yield Static("0", id="n")

    def on_mount(self) -> None:
        self.n = 0
        self.set_interval(1.0, self.tick)

    def tick(self) -> None:
        self.n += 1
        self.query_one("#n", Static).update(str(self.n))


async def measure_baseline(size: tuple[int, int], window: float) -> float:
    app = Bare()
    frames: list[float] = []
    async with app.run_test(size=size) as pilot:
        frame_hook(app, frames)
        await pilot.pause(1.0)
        return await cpu_window(window)


def setup_controller(tmp: Path) -> Any:
    nodes = [{"name": f"n{i:04d}", "gpus": f"{GPUS}xA100", "cpus": 96, "memory": "1T", "simulated": True}
             for i in range(NODES)]
    c = make_controller(tmp, {"scheduler": {"tick_seconds": 5.0}, "nodes": nodes})
    say(f"starting a controller with {NODES} simulated nodes x {GPUS} GPUs")
    c.start(timeout=300)
    with Client(c.socket, timeout=600) as cl:
        for a in range(JOBS // ARRAY):
            spec = apply_flags({}, gpus="1", name=f"sweep{a}", array=f"1-{ARRAY}", run=["python", "train.py"])
            cl.call("submit", spec=spec, source="bench")
        say(f"submitted {JOBS} jobs ({JOBS // ARRAY} arrays of {ARRAY})")
        deadline = time.monotonic() + 600
        while True:
            placed = len(cl.call("queue", all=True, states=["STARTING"]))
            if placed >= min(JOBS, NODES * GPUS) or time.monotonic() > deadline:
                break
            time.sleep(1)
        say(f"{placed} placed, {JOBS - placed} pending")
    return c


async def run(args: argparse.Namespace) -> dict[str, Any]:
    w, h = (int(x) for x in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-tui-"))
    c = setup_controller(tmp)
    rng = random.Random(42)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()} "
                               f"{platform.processor() or platform.machine()}, {os_cpus()} CPUs, Python "
                               f"{platform.python_version()}", "size": args.size, "views": []}
    try:
        base = await measure_baseline((w, h), args.window)
        results["baseline_cpu_pct"] = round(base, 1)
        say(f"baseline (bare Textual app, 1 Hz label): {base:.1f} % CPU")
        for view in args.views.split(","):
            api = SocketApi(c.socket) if args.no_telemetry else TelemetryApi(c.socket)
            r = await measure_tui(api, view, (w, h), args.window, args.presses, rng, args.interval)
            r["telemetry"] = not args.no_telemetry
            results["views"].append(r)
            say(f"{view}: {r['rows']} rows, CPU {r['cpu_pct']} % ({r['refreshes']} refreshes in {args.window:g}s), "
                f"latency p50 {r['lat_p50_ms']} ms p95 {r['lat_p95_ms']} ms max {r['lat_max_ms']} ms")
    finally:
        c.stop()
    return results


def os_cpus() -> int:
    import os

    return os.cpu_count() or 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window", type=float, default=20.0, help="seconds of 1 Hz refresh per CPU measurement")
    p.add_argument("--presses", type=int, default=150, help="key presses per latency measurement")
    p.add_argument("--size", default="160x50", help="terminal size WxH (default 160x50)")
    p.add_argument("--interval", type=float, default=1.0, help="refresh period (1 Hz is the target's)")
    p.add_argument("--views", default="fleet,queue,gpus", help="which views to measure")
    p.add_argument("--no-telemetry", action="store_true", help="no synthetic agent samples")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()
    results = asyncio.run(run(args))
    print(f"\nhybridctl TUI benchmark, {results['date']}, {results['machine']}, terminal {results['size']}")
    print(f"baseline: bare Textual app updating a label at 1 Hz: {results['baseline_cpu_pct']} % of one core")
    print(f"{'view':<6} {'rows':>6} {'CPU %':>6} {'x base':>7} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}")
    for r in results["views"]:
        ratio = r["cpu_pct"] / results["baseline_cpu_pct"] if results["baseline_cpu_pct"] else float("nan")
        print(f"{r['view']:<6} {r['rows']:>6} {r['cpu_pct']:>6} {ratio:>7.1f} {r['lat_p50_ms']:>7} "
              f"{r['lat_p95_ms']:>7} {r['lat_max_ms']:>7}")
    ok = all(r["cpu_pct"] <= 30 and r["lat_p50_ms"] <= 100 for r in results["views"])
    print(f"targets (CPU <= 30 %, p50 <= 100 ms): {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
