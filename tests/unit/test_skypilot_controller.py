"""SkyPilot task files through the controller's submit handler in-process (real SQLite, injected
clock): the default market, a pipeline stored whole as a chain, candidates checked against the
fleet at submit and the candidate taken recorded for `show`."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from hybridctl.config import CloudConfig, NodeConfig, Settings
from hybridctl.control.nodes import config_record
from hybridctl.control.service import Controller
from hybridctl.core.errors import SpecError, Unschedulable
from hybridctl.store.sqlite import Store
from tests.unit.controller_kit import ALICE, ROOT, Clock

PIPELINE = """name: pipe
---
name: prep
run: echo prep
---
name: train
resources:
  accelerators: [H100:8, A100:4]
run: echo train
"""


def controller(tmp_path: Path, market: str = "on-demand") -> Controller:
    settings = Settings(home=str(tmp_path), cloud=CloudConfig(default_market=market))
    store = Store(tmp_path / "hybridctl.db")
    store.add_node(config_record(NodeConfig(name="n1", gpus="8xA100", cpus=32, memory="256G", simulated=True)), 0.0)
    return Controller(store, settings, clock=Clock())


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[Controller]:
    c = controller(tmp_path)
    yield c
    c.store.close()


def spec_of(ctl: Controller, job: int) -> dict:
    return ctl.op_show(ROOT, str(job))["spec"]


def test_a_file_without_use_spot_takes_the_configured_market(ctl: Controller, tmp_path: Path) -> None:
    on_demand = ctl.op_submit(ALICE, yaml="run: x\n", source="t.yaml")["id"]
    spot = ctl.op_submit(ALICE, yaml="run: x\nresources:\n  use_spot: true\n", source="t.yaml")["id"]
    assert spec_of(ctl, on_demand)["resources"]["use_spot"] is False
    assert spec_of(ctl, spot)["resources"]["use_spot"] is True
    lab = controller(tmp_path / "spot", market="spot")
    try:
        job = lab.op_submit(ALICE, yaml="run: x\n", source="t.yaml")["id"]
        said_no = lab.op_submit(ALICE, yaml="run: x\nresources:\n  use_spot: false\n", source="t.yaml")["id"]
        assert spec_of(lab, job)["resources"]["use_spot"] is True
        assert spec_of(lab, said_no)["resources"]["use_spot"] is False
    finally:
        lab.store.close()


def test_a_pipeline_is_stored_as_a_chain_and_runs_in_order(ctl: Controller) -> None:
    res = ctl.op_submit(ALICE, yaml=PIPELINE, source="p.yaml", flags={"envs": ["SEED=1"]})
    prep, train = res["ids"]
    assert res["id"] == train
    assert spec_of(ctl, prep)["name"] == "prep" and spec_of(ctl, prep)["envs"] == {"SEED": "1"}
    assert spec_of(ctl, train)["depends_on"] == [prep]
    ctl.schedule()
    shown = ctl.op_show(ROOT, str(train))
    assert shown["tasks"][0]["state"] == "PENDING" and "dependency" in shown["tasks"][0]["reason"]
    assert ctl.op_show(ROOT, str(prep))["tasks"][0]["state"] == "STARTING"


def test_a_pipeline_with_one_bad_task_stores_nothing(ctl: Controller) -> None:
    bad = PIPELINE + "---\nrun: echo eval\nresources:\n  accelerators: A100:16\n"
    with pytest.raises(Unschedulable, match="no node can ever hold 16 A100 GPUs"):
        ctl.op_submit(ALICE, yaml=bad, source="p.yaml")
    with pytest.raises(SpecError, match="SkyPilot job groups"):
        ctl.op_submit(ALICE, yaml="name: g\nexecution: parallel\n---\nrun: a\n---\nrun: b\n", source="g.yaml")
    assert ctl.op_queue(ROOT, all=True) == []


def test_candidates_are_checked_against_the_fleet_and_the_one_taken_is_shown(ctl: Controller) -> None:
    job = ctl.op_submit(ALICE, yaml="run: x\nresources:\n  accelerators: [H100:8, A100:4]\n", source="t.yaml")["id"]
    with pytest.raises(Unschedulable, match=r"none of the GPU candidates \{H100:8, L4:8\} fits"):
        ctl.op_submit(ALICE, yaml="run: x\nresources:\n  accelerators: {H100:8, L4:8}\n", source="t.yaml")
    ctl.schedule()
    t = ctl.op_show(ROOT, str(job))["tasks"][0]
    assert t["state"] == "STARTING" and t["gpu_type"] == "A100" and len(t["gpu_ids"].split(",")) == 4
