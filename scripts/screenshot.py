"""Render the README's screenshots of the TUI from a running demo (`hybridctl demo`'s lab).

    .venv/bin/python scripts/screenshot.py [--out docs/img] [--size 150x44]

Starts the demo's lab (simulated servers over SSH, a controller, the simulated spot cloud and
the workload), waits until the fleet is busy and a cloud node has joined, then opens the TUI
headless (Textual's test driver) and saves each view as an SVG. Everything stops on exit."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from hybridctl import demo
from hybridctl.control.client import Client

VIEWS = {"fleet": "fleet", "queue": "queue", "cloud": "cloud"}


def wait_busy(lab: demo.Lab, timeout: float = 120.0) -> None:
    """Until a cloud node is up and jobs run on it (bounded)."""
    deadline = time.monotonic() + timeout
    with Client(lab.socket) as c:
        while time.monotonic() < deadline:
            if any(i["state"] == "up" and i["jobs"] for i in c.call("cloud_status")["instances"]):
                return
            time.sleep(0.5)
    raise SystemExit("the demo did not burst to the cloud within the timeout")


async def shoot(lab: demo.Lab, out: Path, size: tuple[int, int]) -> None:
    from hybridctl.tui.app import HybridApp
    from hybridctl.tui.data import SocketApi

    for name, mode in VIEWS.items():
        app = HybridApp(SocketApi(lab.socket), interval=0.5, cursor_blink=False, mode=mode)
        async with app.run_test(size=size) as pilot:
            for _ in range(100):  # until two refreshes landed (bounded: 10 s)
                if app.polls >= 2:
                    break
                await pilot.pause(0.1)
            path = app.save_screenshot(filename=f"tui-{name}.svg", path=str(out))
            print(f"wrote {path}", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/img", help="directory for the SVGs (default docs/img)")
    p.add_argument("--size", default="150x44", help="terminal size COLSxROWS (default 150x44)")
    args = p.parse_args()
    cols, rows = (int(x) for x in args.size.split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="hybridctl-shot-"))
    lab = demo.Lab(base, nodes=4, gpus=8)
    lab.home.mkdir(parents=True)
    stop = threading.Event()
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    try:
        lab.start(say)
        threading.Thread(target=demo.workload, args=(lab, stop, 1e9, float("inf")), daemon=True).start()
        wait_busy(lab)
        asyncio.run(shoot(lab, out, (cols, rows)))
        return 0
    finally:
        stop.set()
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
