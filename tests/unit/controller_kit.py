"""What in-process controller tests share: callers, a settable clock, and a one-line submit."""

from __future__ import annotations

from hybridctl.control.identity import Caller
from hybridctl.control.service import Controller

ALICE = Caller(1001, 1001, "alice", "lab", admin=False)
BOB = Caller(1002, 1002, "bob", "lab", admin=False)
ROOT = Caller(0, 0, "root", "root", admin=True)


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def submit(ctl: Controller, who: Caller, **spec: object) -> int:
    spec.setdefault("run", "true")
    return int(ctl.op_submit(who, spec)["id"])
