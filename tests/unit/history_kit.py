"""An autoscaler over a real store with a history of finished runs, for the tests of what the burst
policy learns from history (`World.limit_use`, `World.run_lengths`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def scaler_with_history(tmp_path: Path, back_s: float) -> tuple[Any, Any, Callable[[float, float | None], None]]:
    """(parts, autoscaler, run): `run(seconds, limit)` records one task that started `back_s`
    before now (then right after the previous one) and SUCCEEDED after `seconds`, with that time
    limit (None = none). The caller closes `parts.store`."""
    from hybridctl.config import CloudConfig, Settings
    from hybridctl.control.autoscaler import Autoscaler
    from hybridctl.core.model import JobSpec, JobStatus, Placement
    from hybridctl.store.sqlite import Submitter
    from tests.unit.control.fakes import FakeProvider
    from tests.unit.control.parts import build

    key = tmp_path / "cloud_key"
    key.write_text("not a real key\n")
    Path(f"{key}.pub").write_text("ssh-ed25519 AAAA test\n")
    settings = Settings(home=str(tmp_path), cloud=CloudConfig(enabled=True, identity=str(key)))
    parts = build(tmp_path, names=(), settings=settings)
    store = parts.store
    who = Submitter(1000, "alice", 1000, "lab")
    at = [parts.clock() - back_s]

    def run(seconds: float, limit: float | None) -> None:
        t = at[0]
        job = store.submit(JobSpec(run="x", time_limit=limit), who, t)
        store.start([Placement(job, 0, "n1", (0,), 1.0, 0)], t)
        store.transition(job, 0, JobStatus.RUNNING, reason="", actor_uid=None, now=t)
        store.transition(job, 0, JobStatus.SUCCEEDED, reason="", actor_uid=None, now=t + seconds)
        at[0] = t + seconds + 1

    scaler = Autoscaler(store, settings, parts.lifecycle, parts.fleet, parts.scheduler,
                        providers={"fake": FakeProvider()}, clock=parts.clock)
    return parts, scaler, run
