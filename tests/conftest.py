"""Suite-wide test settings. With HYBRIDCTL_STRICT=1 (CI), a test that skips because a system part
is missing fails instead, so CI always runs the real-parts tests."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

STRICT = os.environ.get("HYBRIDCTL_STRICT") == "1"


def ctrl_c_reaches_it() -> None:
    """`preexec_fn` for a child a test will Ctrl-C (SIGINT): its SIGINT back to the default.
    A suite started in the background by a non-interactive shell (`cmd &`) inherits SIGINT
    ignored, and Python keeps an ignored SIGINT ignored, so the child would never see it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def require(condition: bool, reason: str) -> None:
    """Skip (or, in strict mode, fail) unless `condition` holds. Use for missing system parts."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"HYBRIDCTL_STRICT=1 but a required part is missing: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """One real moto server (S3, EC2) on 127.0.0.1 for the session (its EC2 backend takes seconds
    to load); tests reach it with real boto3 over HTTP."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        require(False, "needs moto[server]: pip install 'moto[server]' (the dev extra has it)")
        raise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
