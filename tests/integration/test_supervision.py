"""The controller daemon ends only on a stop signal: a side task that raises is logged and
restarted, never the end of the process."""

from __future__ import annotations

import os
import resource
import socket
from typing import Any, Callable

from tests.integration.harness import ControllerProc
from tests.waiting import wait_for


def test_the_controller_survives_running_out_of_file_descriptors(start_controller: Callable[..., Any]) -> None:
    """Clients holding every descriptor make accept() fail with EMFILE and the schedule loop's WAL
    checkpoint (a new connection, a thread) fail too; that loop used to take the daemon with it."""
    ctl: ControllerProc = start_controller()
    assert ctl.proc is not None
    pid = ctl.proc.pid
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 3, before[1]))
    clients = []
    try:
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(ctl.socket))
            clients.append(s)
        def failed_and_restarted() -> bool:
            assert ctl.proc is not None and ctl.proc.poll() is None, "the controller exited"
            return "task schedule failed" in ctl.log.read_text(errors="replace")

        wait_for(failed_and_restarted, 20, what="the schedule loop to fail for want of descriptors")
    finally:
        for s in clients:
            s.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, before)
    job = ctl.cli("submit", "--gpus", "A100:1", "--", "true", check=True).stdout.strip()
    wait_for(lambda: ctl.cli_json("show", job)["tasks"][0]["state"] != "PENDING", 20,
             what="the restarted schedule loop to place a job")
    assert ctl.proc.poll() is None
