"""A TUI whose terminal went away (a dropped SSH session, a closed window) still ends when told to.

Textual's writer thread dies on the first write that fails (EIO from a pty whose other side is
gone) and its queue holds 30 writes: the next repaints fill it and the event loop then blocks for
good in `Queue.put`, deaf to SIGTERM and SIGHUP (the hang of Textual issue 6692, reached another
way). Seen in CI as a `scripts/demo` that outlived its closed terminal and kept its lab running."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import psutil

from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


class Knocks:
    """A Unix socket where the TUI's controller should be: it counts the TUI's connection attempts
    (one per refresh while it is disconnected) and closes each at once."""

    def __init__(self, path: Path) -> None:
        self.count = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_a_tui_whose_terminal_hung_up_still_ends_on_sigterm(tmp_path: Path) -> None:
    knocks = Knocks(tmp_path / "c.sock")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 36, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCTL_")}
    env.update(HYBRIDCTL_SOCKET=str(tmp_path / "c.sock"), HYBRIDCTL_HOME=str(tmp_path / "home"), TERM="xterm-256color")
    # Its own session and no controlling terminal: closing the pty below sends no SIGHUP, so the
    # TUI goes on repainting into a terminal that answers every write with EIO.
    proc = subprocess.Popen([sys.executable, "-m", "hybridctl.cli.main", "tui", "--interval", "0.05"],
                            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO, start_new_session=True)
    os.close(slave)
    try:
        seen = b""

        def drawn() -> bool:
            nonlocal seen
            if select.select([master], [], [], 0.1)[0]:
                seen += os.read(master, 65536)
            return b"hybridctl" in seen

        wait_for(drawn, what="the TUI's first frame")
        os.close(master)
        master = -1
        # Many refreshes into the dead terminal: far more than the 30 writes Textual queues.
        start = knocks.count
        try:
            wait_for(lambda: knocks.count >= start + 100, 30, what="100 refreshes after the terminal hung up")
        except TimeoutError:
            raise AssertionError(f"the TUI stopped refreshing {knocks.count - start} refreshes after its terminal"
                                 " hung up") from None
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError("the TUI did not end on SIGTERM 30 s after its terminal hung up") from None
        assert proc.returncode == 0
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            for p in psutil.Process(proc.pid).children(recursive=True):
                p.kill()
            proc.kill()
            proc.wait()
        knocks.close()
