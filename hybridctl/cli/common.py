"""What every CLI command module shares: the controller client and --json output. Stdlib only at
import time (the fast path: submit, queue, cancel and show load no textual, asyncssh or torch)."""

from __future__ import annotations

import argparse
from typing import Any


def client(timeout: float = 60.0) -> Any:
    """A connected-on-use client of the local controller (control/client.py)."""
    from hybridctl import paths
    from hybridctl.control.client import Client

    return Client(paths.socket_path(), timeout)


def out(args: argparse.Namespace, data: Any, text: str) -> None:
    """`data` as JSON with --json, else `text` (when there is any)."""
    if getattr(args, "json", False):
        from hybridctl.cli.output import emit_json

        emit_json(data)
    elif text:
        print(text)
