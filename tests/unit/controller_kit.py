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


def show_client(ctl: Controller, who: Caller) -> type:
    """A stand-in for `cli.common.client` that answers `show` from `ctl` in-process (no socket),
    as `who`: `monkeypatch.setattr(common, "client", show_client(ctl, ALICE))`."""

    class Shown:
        def __init__(self, *_a: object, **_k: object) -> None:
            pass

        def __enter__(self) -> Shown:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def call(self, op: str, **kw: object) -> object:
            assert op == "show", op
            return ctl.op_show(who, str(kw["job"]))

    return Shown
