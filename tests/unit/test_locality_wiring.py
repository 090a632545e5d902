"""control/scheduler.py feeds cache-aware placement: per pass the fleet's cache index and, per
pending job with file_mounts or an environment, what it needs (control/mounts.need_of); the
placement's reason lands in the job's history and `show`; the burst line's transfer estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from hybridctl.config import FleetConfig, LocalityConfig, Settings
from hybridctl.control import mounts
from hybridctl.core.locality import NodeCache
from tests.unit.control.parts import ALICE, Parts, build

SHA = "b" * 64
SIZE = 40_000_000


@pytest.fixture(autouse=True)
def memo() -> Iterator[dict]:
    saved = dict(mounts._TREES)
    mounts._TREES.clear()
    mounts._TREES[("/p/data", ALICE.uid)] = ("m", {"x": [SHA, SIZE]})  # as after a first launch
    yield mounts._TREES
    mounts._TREES.clear()
    mounts._TREES.update(saved)


def parts(tmp_path: Path, weight: float) -> Parts:
    settings = Settings(home=str(tmp_path), fleet=FleetConfig(poll_interval=0.02, checkpoint_sync_interval=3600),
                        locality=LocalityConfig(weight=weight))
    p = build(tmp_path, settings=settings)
    p.scheduler.caches = lambda: {"n2": NodeCache({SHA: SIZE}, {}, 0), "n1": NodeCache({}, {}, 0)}
    return p


@pytest.mark.parametrize("weight, node", [(1.0, "n2"), (0.0, "n1")])
def test_the_pass_places_a_job_where_its_data_is(tmp_path: Path, weight: float, node: str) -> None:
    p = parts(tmp_path, weight)
    job, placed = p.place(file_mounts={"/d": "/p/data"})
    assert placed == node
    shown = p.ctl.op_show(ALICE, str(job))
    if weight:
        assert shown["placed"] == {"0": "n2: data 40 MB warm, moves 0 B, saved ~0.32 s of transfer"}
        assert any(e["reason"] == "placed on n2: data 40 MB warm, moves 0 B, saved ~0.32 s of transfer"
                   for e in shown["events"])
    else:
        assert "placed" not in shown


def test_jobs_without_a_world_cost_nothing_and_are_left_as_they_are(tmp_path: Path) -> None:
    p = parts(tmp_path, 1.0)
    plain = p.submit()
    world = p.submit(file_mounts={"/d": "/p/data"})
    view = p.scheduler.cluster(p.clock())
    pending = p.store.pending()
    view2, pending2 = p.scheduler.with_locality(view, pending)
    assert view2.locality is not None and view2.locality.sites == {"n1": "onprem", "n2": "onprem"}
    needs = {t.job_id: t.need for t in pending2}
    assert needs[plain] is None and needs[world] is not None and needs[world].items == {f"obj:{SHA}": SIZE}
    p.scheduler.caches = lambda: {}
    assert p.scheduler.with_locality(view, pending) == (view, pending)  # nothing reported: off


def test_the_transfer_a_cloud_node_would_need_is_estimated(tmp_path: Path) -> None:
    p = parts(tmp_path, 1.0)
    job = p.submit(file_mounts={"/d": "/p/data"})
    assert p.scheduler.transfer_estimate(job, "cloud") == (SIZE, pytest.approx(SIZE / 12.5e6))
    assert p.scheduler.transfer_estimate(p.submit(), "cloud") is None
