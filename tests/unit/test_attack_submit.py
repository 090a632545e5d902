"""Attacks through submit: a pipeline (several YAML documents) past the per-user pending limit,
a priority above what a non-admin may set (in a pipeline's later task too), another user's job
re-prioritised or cancelled."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridctl.config import LimitsConfig, NodeConfig, Settings
from hybridctl.control.nodes import config_record
from hybridctl.control.service import Controller
from hybridctl.control.limits import LimitExceeded
from hybridctl.core.errors import PermissionDenied
from hybridctl.store.sqlite import Store
from tests.unit.controller_kit import ALICE, BOB, Clock, submit


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    store = Store(tmp_path / "hybridctl.db")
    store.add_node(config_record(NodeConfig(name="n1", gpus="1xA100", cpus=8, memory="64G", simulated=True)), 0.0)
    settings = Settings(home=str(tmp_path), limits=LimitsConfig(max_array_tasks=10, max_pending_tasks_per_user=10))
    yield Controller(store, settings, clock=Clock())
    store.close()


def pipeline(n: int, array: str = "0-5", priority: int | None = None) -> str:
    docs = ["name: p"]
    for i in range(n):
        doc = f"name: step{i}\nrun: 'true'\narray: '{array}'"
        if priority is not None and i == n - 1:
            doc += f"\npriority: {priority}"
        docs.append(doc)
    return "\n---\n".join(docs) + "\n"


def test_a_pipeline_cannot_queue_more_than_the_pending_limit(ctl: Controller) -> None:
    with pytest.raises(LimitExceeded, match="max_pending_tasks_per_user"):
        ctl.op_submit(ALICE, yaml=pipeline(3), source="p.yaml")  # 3 x 6 tasks > 10
    assert ctl.store.pending_tasks_of(ALICE.uid) == 0  # nothing of the refused pipeline stored
    ctl.op_submit(ALICE, yaml=pipeline(1), source="p.yaml")
    assert ctl.store.pending_tasks_of(ALICE.uid) == 6


def test_a_pipeline_of_more_tasks_than_may_wait_is_refused_before_any_is_parsed(ctl: Controller) -> None:
    """80k one-line documents in a 1 MiB request held the event loop ~3 s (each task parsed before
    the 10,001st was refused): the count of documents is checked first."""
    text = "run: 'true'\n---\n" * 10 + "run: 'true'\nresources: {cpus: banana}\n"  # 11th doc is bad too
    with pytest.raises(LimitExceeded, match="pipeline of 11 tasks.*max_pending_tasks_per_user"):
        ctl.op_submit(ALICE, yaml=text, source="p.yaml")


def test_a_pipelines_later_task_cannot_raise_its_priority_past_the_user_limit(ctl: Controller) -> None:
    with pytest.raises(PermissionDenied, match="priority"):
        ctl.op_submit(ALICE, yaml=pipeline(2, array="0", priority=1000), source="p.yaml")


def test_another_users_job_cannot_be_reprioritised_or_cancelled(ctl: Controller) -> None:
    job = submit(ctl, BOB)
    with pytest.raises(PermissionDenied, match="belongs to bob"):
        ctl.op_priority(ALICE, str(job), 1)
    with pytest.raises(PermissionDenied, match="belongs to bob"):
        ctl.op_cancel(ALICE, [str(job)])
