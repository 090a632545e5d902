"""The controller learns a job's length from its earlier attempts (`cloud.burst.lindy`): a job
without a time limit whose spot node was reclaimed after 5h 10m is requeued; the autoscaler's world
carries that run (`World.ran`, from `Store.stopped_runs`), so the burst policy prices the next
attempt at 2 x 5h 10m and keeps it off spot (a reclaim would throw away about a third of a run
that long, past `max_spot_loss`), where with `lindy` 0 it would go back to spot at the assumed
hour; `show` says why. In-process: the autoscaler with its fake provider and agent, a real store
and scheduler."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from hybridctl.core import burst
from hybridctl.core.model import JobStatus
from tests.unit.control.autoscaler_kit import Cloud, cloud, reclaimed_after  # noqa: F401 - the fixture
from tests.unit.control.fakes import OFFER
from tests.unit.control.parts import ALICE, stop_sessions

RAN = 5 * 3600.0 + 600.0  # 5h 10m
ON_DEMAND = replace(OFFER, spot=False, price_hourly=3.0)


async def test_a_reclaimed_run_without_limit_is_priced_at_lindy_times_what_it_ran(cloud: Cloud) -> None:  # noqa: F811
    parts, scaler, _ = cloud
    try:
        job = await reclaimed_after(cloud, RAN)
        now = parts.clock()
        scaler.offers = [OFFER, ON_DEMAND]  # what refresh_offers keeps: the pool it ran in, and on-demand
        world = scaler.world(now)
        assert world.ran == {(job, 0): RAN}
        [t] = world.pending
        assert (t.job_id, t.runtime_s) == (job, None)  # no time limit, no history: the policy's guess

        learnt = burst.decide(world, scaler.limits, parts.scheduler.policy, now)
        assert scaler.limits.lindy == 2.0 and scaler.limits.count_preemption_loss
        assert (job, 0) in learnt.no_spot
        [req] = learnt.launches
        assert not req.offer.spot and req.tasks == ((job, 0),)
        assert "earlier attempt ran 5.2 h" in req.why, req.why  # why it is on-demand

        forgetful = replace(scaler.limits, lindy=0.0)  # the same world, attempts teach nothing
        blind = burst.decide(scaler.world(now), forgetful, parts.scheduler.policy, now)
        assert (job, 0) not in blind.no_spot
        assert [r.offer.spot for r in blind.launches] == [True]

        shown = parts.ctl.op_show(ALICE, str(job))
        assert shown["earlier_run"] == {
            "task": 0, "ran_s": RAN, "expected_s": 2 * RAN,
            "text": "ran 5h 10m in an earlier attempt without finishing: expected ≥ 10h 20m"}
        scaler.limits = forgetful
        assert scaler.world(now).ran == {}  # not read when off
    finally:
        await stop_sessions(parts.fleet)


async def test_a_short_reclaimed_run_changes_no_price_and_show_adds_nothing(cloud: Cloud) -> None:  # noqa: F811
    """20 min x 2 is below the hour assumed anyway: the run is in the world but changes no price,
    and `show` has nothing to add."""
    parts, scaler, _ = cloud
    try:
        job = await reclaimed_after(cloud, 1200.0)
        assert scaler.world(parts.clock()).ran == {(job, 0): 1200.0}
        assert "earlier_run" not in parts.ctl.op_show(ALICE, str(job))
    finally:
        await stop_sessions(parts.fleet)


@pytest.mark.parametrize("lindy, limit, shown", [(2.0, None, True), (0.0, None, False), (2.0, "4h", False)])
def test_show_prints_the_earlier_run_line(lindy: float, limit: str | None, shown: bool, tmp_path: Any,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`hybridctl show` (the CLI's text) prints it under `runtime`; not with `lindy` 0, nor for a
    job with a time limit (its limit is its end, whatever it ran before)."""
    from hybridctl.cli import common
    from hybridctl.cli.main import main
    from hybridctl.config import BurstConfig, CloudConfig, Settings
    from tests.unit.control.parts import build
    from tests.unit.controller_kit import show_client

    parts = build(tmp_path, names=("n1",), settings=Settings(
        home=str(tmp_path), cloud=CloudConfig(burst=BurstConfig(lindy=lindy))))
    try:
        job, _node = parts.place(**({"time_limit": limit} if limit else {}))
        parts.lifecycle.mark_running(job, 0)
        parts.clock.t += RAN
        parts.lifecycle.requeue_or_fail(job, 0, "node n1 lost", status=JobStatus.NODE_LOST)
        assert parts.state(job) is JobStatus.PENDING

        monkeypatch.setattr(common, "client", show_client(parts.ctl, ALICE))
        assert main(["show", str(job)]) == 0
        out = capsys.readouterr().out
        line = "  earlier    ran 5h 10m in an earlier attempt without finishing: expected ≥ 10h 20m"
        assert (line in out.splitlines()) is shown, out
        assert ("earlier" in out) is shown
    finally:
        parts.store.close()
