"""A `placement: cloud` job on a controller whose bursting is off: nothing will ever rent it a
node, so submit warns and the queue's reason says so, instead of "no cloud nodes yet" (which
promises nodes that never come)."""

from __future__ import annotations

from pathlib import Path

from hybridctl.config import CloudConfig, FleetConfig, Settings
from hybridctl.control.scheduler import NO_CLOUD_NODES, NO_CLOUD_NODES_OFF
from tests.unit.control.parts import ALICE, build


def test_a_cloud_job_with_bursting_off_is_warned_and_told_why_it_waits(tmp_path: Path) -> None:
    parts = build(tmp_path)
    try:
        assert not parts.settings.cloud.enabled
        out = parts.ctl.op_submit(ALICE, {"run": "true", "placement": "cloud", "num_nodes": 3})
        assert any("bursting is off (cloud.enabled)" in w for w in out["warnings"]), out
        parts.scheduler.schedule()
        (row,) = parts.ctl.op_queue(ALICE)
        assert row["reason"] == NO_CLOUD_NODES_OFF
        # A job that may run on-prem gets no such warning.
        assert parts.ctl.op_submit(ALICE, {"run": "true"})["warnings"] == []
    finally:
        parts.store.close()


def test_with_bursting_on_the_reason_still_says_nodes_may_come(tmp_path: Path) -> None:
    settings = Settings(home=str(tmp_path), fleet=FleetConfig(poll_interval=0.02, checkpoint_sync_interval=3600),
                        cloud=CloudConfig(enabled=True, identity=str(tmp_path / "key")))
    parts = build(tmp_path, settings=settings)
    try:
        out = parts.ctl.op_submit(ALICE, {"run": "true", "placement": "cloud"})
        assert out["warnings"] == []
        parts.scheduler.schedule()
        (row,) = parts.ctl.op_queue(ALICE)
        assert row["reason"] == NO_CLOUD_NODES
    finally:
        parts.store.close()
