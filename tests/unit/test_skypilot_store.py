"""The store side of SkyPilot forms: accelerator candidates reach the scheduler from the database,
the candidate a task was placed with is kept for `show`, and a pipeline's jobs are inserted as one
chain in one transaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridctl.core.model import JobSpec, Placement, Resources
from hybridctl.store.sqlite import Store, Submitter

WHO = Submitter(1000, "alice", 1000, "lab")
CANDS = Resources(gpus=8, gpu_type="A100", alternatives=(("A100", 8), ("H100", 8)), ordered=True)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "hybridctl.db")
    yield s
    s.close()


def test_candidates_reach_the_scheduler_and_show_says_which_was_taken(store: Store) -> None:
    job = store.submit(JobSpec(run="x", resources=CANDS), WHO, 1.0)
    plain = store.submit(JobSpec(run="y", resources=Resources(gpus=1, gpu_type="L4")), WHO, 2.0)
    by_id = {t.job_id: t.resources for t in store.pending()}
    assert by_id == {job: CANDS, plain: Resources(gpus=1, gpu_type="L4")}
    assert {t.job_id: t.resources for t in store.pending(window=lambda t: 5)} == by_id
    store.start([Placement(job, 0, "h1", (0, 1, 2, 3, 4, 5, 6, 7), 1.0, 0, 0, "H100")], 3.0)
    shown = store.job(job)
    assert shown["tasks"][0]["gpu_type"] == "H100"
    assert shown["spec"]["resources"]["alternatives"] == [["A100", 8], ["H100", 8]]
    assert store.job(plain)["tasks"][0]["gpu_type"] is None


def test_a_chain_is_inserted_whole_each_job_after_the_previous(store: Store) -> None:
    ids = store.submit_chain([JobSpec(run="a", name="p"), JobSpec(run="b", name="p", depends_on=(7,))], WHO, 1.0)
    assert len(ids) == 2 and ids[1] == ids[0] + 1
    assert store.job(ids[0])["spec"]["depends_on"] == []
    assert store.job(ids[1])["spec"]["depends_on"] == [7, ids[0]]


def test_a_chain_that_fails_halfway_leaves_nothing(store: Store) -> None:
    bad = JobSpec(run="b", envs={"X": object()})  # type: ignore[dict-item]  # cannot be stored as JSON
    with pytest.raises(TypeError):
        store.submit_chain([JobSpec(run="a"), bad], WHO, 1.0)
    assert store.pending() == []
