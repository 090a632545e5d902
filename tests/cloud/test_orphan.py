"""Orphan safety: a cloud node whose agent hears nothing from its controller for
`cloud.orphan_timeout` shuts itself down, so a dead controller cannot run up a bill."""

from __future__ import annotations

import time
from pathlib import Path

from hybridctl.cloud.base import TAG_CLUSTER, LaunchSpec
from hybridctl.cloud.simulated import SimulatedProvider
from tests.cloud.conftest import small_catalog


def test_a_machine_nobody_talks_to_shuts_itself_down(tmp_path: Path, client_key: Path) -> None:
    p = SimulatedProvider(tmp_path / "sim", small_catalog(), launch_delay=0.0, agent_interval=0.5)
    offer = next(o for o in p.offers() if o.instance_type == "sim.l40sx1" and o.spot)
    pub = Path(f"{client_key}.pub").read_text()
    inst = p.launch(LaunchSpec(offer, "lonely", {TAG_CLUSTER: "orphans"}, pub, orphan_timeout=1.5))
    assert p.describe(inst.id).state == "running"
    deadline = time.monotonic() + 30
    while p.describe(inst.id).state != "terminated":
        assert time.monotonic() < deadline, "the machine kept running without a controller"
        time.sleep(0.1)
    gone = p.describe(inst.id)
    assert "shut itself down" in gone.reason
    assert p.list({TAG_CLUSTER: "orphans"}) == []
    log = (tmp_path / "sim" / "i" / inst.id / "agent.log").read_text()
    assert "orphan timeout" in log
    p.close()
