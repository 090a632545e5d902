"""A job of unknown length (no limit, no history estimate, no earlier attempt) is priced for spot
reclaims as a run drawn from the lab's recent runs without a limit (`Limits.learn_unknown`,
`World.run_lengths`): where those are long and never checkpoint it is kept off spot, where they
are short it goes; the controller learns them from the runs that succeeded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hybridctl.core.burst import Limits, Offer, World, decide, spot_averse
from hybridctl.core.forecast import RUN_LENGTHS_AFTER, length_sample
from hybridctl.core.model import ClusterView, GpuSlot, NodeState, NodeView, PendingTask, Policy, Resources

HOUR = 3600.0
NOW = 1_793_880_000.0
SPOT = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, True, 12.0, 0.06)
OD = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, False, 32.0)
NEW = Limits(after=0, max_nodes=16, max_hourly_usd=1000, budget_usd=10_000, allow_on_demand=True,
             count_preemption_loss=True)


def task() -> PendingTask:
    """An 8-GPU A100 job, no time limit, waiting an hour."""
    return PendingTask(1, 0, "u", "lab", 0, NOW - HOUR, Resources(gpus=8, gpu_type="A100", cpus=16))


def world(*tasks: PendingTask, **kw: object) -> World:
    """On-prem full (one busy node), one spot and one on-demand offer."""
    full = NodeView("a1", tuple(GpuSlot(i, "NVIDIA A100-SXM4-80GB", free=False) for i in range(8)), 128, 0,
                    1 << 20, 0, NodeState.UP)
    return World(list(tasks), ClusterView((full,)), offers=[SPOT, OD], **kw)  # type: ignore[arg-type]


def test_the_sample_keeps_the_shape_and_the_tail_and_nothing_below_twenty_runs() -> None:
    assert length_sample([HOUR] * (RUN_LENGTHS_AFTER - 1)) == ()
    runs = [60.0 * (i + 1) for i in range(200)]
    s = length_sample(runs)
    assert len(s) == 40 and s[0] == 60.0 and s[-1] == 200 * 60.0  # the longest is kept
    assert list(s) == sorted(s)
    assert s[19] == pytest.approx(sorted(runs)[98], abs=60.0)  # about the median
    assert length_sample([5.0] * 25) == (5.0,) * 25
    assert length_sample([-3.0] + [1.0] * 24)[0] == 0.0


def test_a_lab_of_long_limitless_runs_keeps_an_unknown_job_off_spot() -> None:
    t = task()
    long = length_sample([30 * HOUR] * 20 + [HOUR] * 20)  # half the runs, most of the hours, are long
    short = length_sample([600.0] * 40)
    assert [r.offer.spot for r in decide(world(t), NEW, Policy(), NOW).launches] == [True]  # no history yet
    d = decide(world(t, run_lengths=long), NEW, Policy(), NOW)
    assert [r.offer.spot for r in d.launches] == [False] and "no checkpoints" in d.launches[0].why
    assert spot_averse(t, world(t, run_lengths=long), NEW, NOW, can_wait=True)
    assert [r.offer.spot for r in decide(world(t, run_lengths=short), NEW, Policy(), NOW).launches] == [True]
    # Off, or the job says how long it runs, or it checkpoints: spot.
    off = replace(NEW, learn_unknown=False)
    assert [r.offer.spot for r in decide(world(t, run_lengths=long), off, Policy(), NOW).launches] == [True]
    timed = replace(t, runtime_s=HOUR)
    assert [r.offer.spot for r in decide(world(timed, run_lengths=long), NEW, Policy(), NOW).launches] == [True]
    ckpt = world(t, run_lengths=long, checkpoint_every={(1, 0): 600.0})
    assert [r.offer.spot for r in decide(ckpt, NEW, Policy(), NOW).launches] == [True]
    # An earlier attempt that says it is short wins over the lab's tail.
    taught = world(t, run_lengths=long, ran={(1, 0): 600.0})
    assert [r.offer.spot for r in decide(taught, NEW, Policy(), NOW).launches] == [True]


def test_the_controller_learns_the_lengths_of_runs_without_a_limit(tmp_path: Path) -> None:
    """The autoscaler's world carries them from 20 runs on; runs with a limit do not count."""
    from hybridctl.control.budget import learnt
    from tests.unit.history_kit import scaler_with_history

    parts, scaler, run = scaler_with_history(tmp_path, 20 * 86400)
    store = parts.store
    try:
        for i in range(19):
            run(HOUR * (i + 1), None)
        for _ in range(10):
            run(60.0, 3600.0)
        assert scaler.world(parts.clock()).run_lengths == ()
        run(20 * HOUR, None)
        lengths = scaler.world(parts.clock()).run_lengths
        assert sorted(lengths) == [HOUR * (i + 1) for i in range(19)] + [20 * HOUR]
        assert learnt(store, parts.clock())[1] == lengths
        scaler.limits = replace(scaler.limits, learn_unknown=False)
        assert scaler.world(parts.clock()).run_lengths == ()
    finally:
        store.close()
