"""The queue under concurrent real clients and a controller killed with SIGKILL."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.integration.harness import ControllerProc
from tests.waiting import wait_for

# A submitter process: N sequential `hybridctl submit` calls through the real CLI entry point
# (in-process main(), so 800 submits do not pay 800 interpreter start-ups on a 2-core machine),
# printing "ok <id> <name>" or "fail <exit> <name>" per call.
SUBMITTER = textwrap.dedent(
    """
    import contextlib, io, sys
    from hybridctl.cli.main import main
    who, n = sys.argv[1], int(sys.argv[2])
    for i in range(n):
        name = f"{who}-{i}"
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["submit", "--name", name, "--gpus", "1", "--env", f"IDX={i}", "--", "echo", name])
        if code == 0:
            print("ok", out.getvalue().strip(), name, flush=True)
        else:
            print("fail", code, name, err.getvalue().strip().replace(chr(10), " "), flush=True)
    """
)


def run_submitters(c: ControllerProc, count: int, per: int) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen([sys.executable, "-c", SUBMITTER, f"s{k}", str(per)], env=c.env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for k in range(count)
    ]


def test_16_concurrent_submitters_x_50_make_exactly_800_jobs(start_controller) -> None:  # type: ignore[no-untyped-def]
    c = start_controller({"nodes": []})
    procs = run_submitters(c, 16, 50)
    ids: list[int] = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        lines = out.splitlines()
        assert len(lines) == 50 and all(line.startswith("ok ") for line in lines), out[-2000:]
        ids += [int(line.split()[1]) for line in lines]
    assert len(ids) == 800 and len(set(ids)) == 800
    with sqlite3.connect(c.home / "hybridctl.db") as db:
        rows = db.execute("SELECT id, name FROM jobs").fetchall()
    assert len(rows) == 800 and {r[0] for r in rows} == set(ids)
    assert len({r[1] for r in rows}) == 800  # each submit landed once


def test_kill_9_mid_submit_loses_no_acknowledged_job(start_controller) -> None:  # type: ignore[no-untyped-def]
    c = start_controller({"nodes": []})
    procs = run_submitters(c, 4, 400)
    # Kill once some submits have landed, while the submitters are still going.
    wait_for(lambda: _count(c) >= 100, timeout=120, what="100 jobs in the database")
    c.kill()
    c.start()
    results: list[str] = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        results += out.splitlines()
    oks = [line.split() for line in results if line.startswith("ok ")]
    fails = [line for line in results if line.startswith("fail ")]
    assert len(oks) + len(fails) == 1600
    assert fails, "the kill should have failed at least one in-flight submit"
    assert all(line.split()[1] != "0" for line in fails)  # a failed submit exits non-zero
    assert all("controller" in line for line in fails)
    with sqlite3.connect(c.home / "hybridctl.db") as db:
        stored = {r[0]: (r[1], r[2]) for r in db.execute("SELECT id, name, spec FROM jobs")}
    for _ok, job_id, name in oks:
        assert int(job_id) in stored, f"acknowledged job {job_id} ({name}) lost"
        stored_name, spec = stored[int(job_id)]
        assert stored_name == name and f'"run": "echo {name}"' in spec
    # The restarted controller serves the same queue.
    assert len(c.cli_json("queue", "--all")) == len(stored)


def _count(c: ControllerProc) -> int:
    try:
        with sqlite3.connect(c.home / "hybridctl.db", timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_second_controller_on_same_state_refuses(controller: ControllerProc) -> None:
    p = subprocess.run([sys.executable, "-m", "hybridctl.cli.main", "server"], env=controller.env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "already running" in p.stderr
    assert controller.cli("queue").returncode == 0  # the first one is unharmed


def test_a_client_asking_while_the_controller_stops_is_told_unreachable_never_an_internal_error(
        controller: ControllerProc) -> None:
    """A TUI polls on one long-lived connection. While the controller stops it must hear
    "unreachable" (the banner, the retry), never an error reply: the TUI keeps an error reply as
    the fleet's rows and empties its table (CI once saw that). The stopping controller answered
    requests after closing its database ("Cannot operate on a closed database")."""
    import threading

    from hybridctl.core.errors import ControllerUnavailable, HybridctlError
    from hybridctl.tui.data import SocketApi

    api = SocketApi(controller.socket)
    errors: list[str] = []
    answered = threading.Event()
    done = threading.Event()

    def poll() -> None:
        for _ in range(10**6):  # bounded; ends once the controller is gone and a poll is refused
            if done.is_set():
                return
            for op in ("nodes", "queue"):
                try:
                    api.call(op, {})
                    answered.set()
                except ControllerUnavailable:
                    pass
                except HybridctlError as exc:
                    errors.append(f"{op}: {exc.message}")

    threads = [threading.Thread(target=poll) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        assert answered.wait(30)
        assert controller.proc is not None
        controller.proc.terminate()
        controller.proc.wait(timeout=30)  # it stops by itself while clients keep asking
    finally:
        done.set()
        for t in threads:
            t.join(timeout=30)
        api.close()
    assert errors == [], errors[:3]
    assert "internal error" not in controller.log.read_text()
