"""Slurm's dependency kinds and array lists: the pure rules, the parsers, and their outcomes in the
in-process controller (a real SQLite file, an injected clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from hybridctl.config import NodeConfig, Settings
from hybridctl.control.nodes import config_record
from hybridctl.control.service import Controller
from hybridctl.core.errors import NotFound, SpecError
from hybridctl.core.fields import format_dependency, parse_array, parse_dependency
from hybridctl.core.jobenv import slurm_env
from hybridctl.core.model import ArraySpec, DependencyFacts, JobStatus, dependency_outcome, spec_from_dict
from hybridctl.core.sbatch import parse_sbatch
from hybridctl.core.spec import apply_flags, parse_spec
from hybridctl.store.sqlite import Store
from tests.unit.controller_kit import ALICE, BOB, ROOT, Clock, submit

# ---- the rule (pure) ---------------------------------------------------------------------------

PENDING = DependencyFacts()
RUNNING = DependencyFacts(started=True)
OK = DependencyFacts(started=True, ended=True)
FAILED = DependencyFacts(started=True, ended=True, failed=True)
FAILED_EARLY = DependencyFacts(started=True, failed=True)  # one task failed, others still run
NEVER_RAN = DependencyFacts(ended=True, failed=True)  # cancelled while pending


@pytest.mark.parametrize("kind, facts, outcome", [
    ("afterok", PENDING, "wait"), ("afterok", RUNNING, "wait"), ("afterok", OK, "met"),
    ("afterok", FAILED, "never"), ("afterok", FAILED_EARLY, "never"),
    ("afternotok", RUNNING, "wait"), ("afternotok", FAILED_EARLY, "wait"), ("afternotok", FAILED, "met"),
    ("afternotok", OK, "never"), ("afternotok", NEVER_RAN, "met"),
    ("afterany", RUNNING, "wait"), ("afterany", OK, "met"), ("afterany", FAILED, "met"),
    ("after", PENDING, "wait"), ("after", RUNNING, "met"), ("after", NEVER_RAN, "met"),
    ("afterok", DependencyFacts(exists=False), "wait"),
])  # fmt: skip
def test_dependency_outcome_follows_slurm(kind: str, facts: DependencyFacts, outcome: str) -> None:
    assert dependency_outcome(kind, facts) == outcome


def test_parse_dependency_reads_slurm_lists_and_plain_ids() -> None:
    d = parse_dependency("afterany:42:43,afterok:44,singleton")
    assert (d.afterok, d.others, d.singleton) == ((44,), (("afterany", 42), ("afterany", 43)), True)
    assert parse_dependency([12, "afternotok:13"]) == ((12,), (("afternotok", 13),), False)
    assert parse_dependency("12,13").afterok == (12, 13)
    assert format_dependency(*parse_dependency("after:5,afterok:6:7")) == "afterok:6:7,after:5"


@pytest.mark.parametrize("value, named", [
    ("afterok:1?afterany:2", "'?' (any of"), ("aftercorr:3", "aftercorr"), ("after:4+10", "+MINUTES"),
    ("sometime:1", "'sometime' is not a dependency type"), ("afterok:x", "'x' is not valid"),
])  # fmt: skip
def test_parse_dependency_refuses_by_name(value: str, named: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_dependency(value, field="--dependency")
    assert exc.value.message.startswith("--dependency: ") and named in exc.value.message, exc.value.message


def test_dependency_flag_and_yaml_key_reach_the_spec() -> None:
    data = apply_flags({"run": "x"}, depends_on="afterany:42,afterok:44")
    spec = parse_spec(data, "")[0]
    assert (spec.depends_on, spec.dependencies, spec.singleton) == ((44,), (("afterany", 42),), False)
    back = spec_from_dict(spec.to_dict())
    assert back.dependencies == spec.dependencies and back.depends_on == (44,)
    assert parse_spec({"run": "x", "name": "a", "depends_on": "singleton"}, "")[0].singleton


def sbatch(*lines: str) -> Any:
    text = "#!/bin/bash\n" + "".join(f"#SBATCH {line}\n" for line in lines) + "echo hi\n"
    r = parse_sbatch(text, source="job.sh", submit_dir="/d", environ={})
    return r, parse_spec(r.data, "job.sh")[0]


def test_sbatch_dependency_kinds_and_array_list() -> None:
    r, spec = sbatch("--dependency=afterany:12:13,afternotok:14,singleton", "--array=1,3,5-7%2")
    assert r.data["depends_on"] == "afterany:12:13,afternotok:14,singleton"  # --dry-run prints Slurm's form
    assert spec.dependencies == (("afterany", 12), ("afterany", 13), ("afternotok", 14)) and spec.singleton
    assert list(spec.array.indices) == [1, 3, 5, 6, 7] and spec.array.throttle == 2
    r, spec = sbatch("-d afterok:9")
    assert r.data["depends_on"] == [9] and spec.depends_on == (9,)


# ---- array lists (pure) ------------------------------------------------------------------------

@pytest.mark.parametrize("value, indices, text", [
    ("1,3,5-7%2", [1, 3, 5, 6, 7], "1,3,5-7%2"),
    ("0-10:5,3", [0, 3, 5, 10], "0-10:5,3"),
    ([2, "4-5"], [2, 4, 5], "2,4-5"),
    ("1-3,2-4", [1, 2, 3, 4], "1-3,2-4"),  # overlaps: each index once, as Slurm's bitmap
    ("0-15:4", [0, 4, 8, 12], "0-15:4"),  # the one-range form is as before
])  # fmt: skip
def test_array_lists(value: Any, indices: list[int], text: str) -> None:
    a = parse_array(value)
    assert list(a.indices) == indices and str(a) == text
    assert (a.first, a.last) == (indices[0], indices[-1]) or not a.parts
    assert spec_from_dict(parse_spec({"run": "x", "array": value}, "")[0].to_dict()).array == a


def test_array_list_counts_its_tasks_against_the_limit() -> None:
    with pytest.raises(SpecError) as exc:
        parse_array("0-60000,100000-150000")
    assert "at most 100000 tasks, not 110002" in exc.value.message


def test_slurm_array_variables_of_a_list() -> None:
    from hybridctl.core.jobenv import RankPlace

    _, spec = sbatch("--array=3,8-9,20")
    place = RankPlace(job_id=42, task=8, attempt=1, rank=0, array=True, name="j", user="ana",
                      submitted_at=0.0, gpus_per_node=0, node_ips=("n1",), cluster_name="n1", site="local")
    env = slurm_env(place, spec)
    assert (env["SLURM_ARRAY_TASK_ID"], env["SLURM_ARRAY_TASK_COUNT"]) == ("8", "4")
    assert (env["SLURM_ARRAY_TASK_MIN"], env["SLURM_ARRAY_TASK_MAX"]) == ("3", "20")
    assert "SLURM_ARRAY_TASK_STEP" not in env


# ---- outcomes in the controller ----------------------------------------------------------------

@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ctl(tmp_path: Path, clock: Clock) -> Iterator[Controller]:
    store = Store(tmp_path / "hybridctl.db")
    store.add_node(config_record(NodeConfig(name="n1", gpus="8xA100", cpus=32, memory="256G", simulated=True)), clock())
    yield Controller(store, Settings(home=str(tmp_path)), clock=clock)
    store.close()


def state(ctl: Controller, job: int, t: int = 0) -> dict[str, Any]:
    return next(x for x in ctl.op_show(ROOT, str(job))["tasks"] if x["task"] == t)


def done(ctl: Controller, job: int, code: int) -> None:
    status = JobStatus.SUCCEEDED if code == 0 else JobStatus.FAILED
    ctl.lifecycle.finish(job, 0, code, f"exited with code {code}", status=status)


def test_afterany_runs_after_a_failed_dependency(ctl: Controller) -> None:
    parent = submit(ctl, ALICE)
    child = submit(ctl, ALICE, depends_on=f"afterany:{parent}")
    ctl.schedule()
    assert state(ctl, child)["reason"] == f"dependency: waiting for afterany:{parent}"
    done(ctl, parent, 3)
    ctl.schedule()
    assert state(ctl, child)["state"] == "STARTING"


def test_afternotok_is_cancelled_when_the_dependency_succeeds(ctl: Controller) -> None:
    ok, bad = submit(ctl, ALICE), submit(ctl, ALICE)
    on_ok = submit(ctl, ALICE, depends_on=f"afternotok:{ok}")
    on_bad = submit(ctl, ALICE, depends_on=f"afternotok:{bad}")
    ctl.schedule()
    done(ctl, ok, 0)
    done(ctl, bad, 1)
    ctl.schedule()
    assert state(ctl, on_ok)["state"] == "CANCELLED"
    events = ctl.op_show(ROOT, str(on_ok))["events"]
    assert events[-1]["reason"] == f"dependency afternotok:{ok} can never be met: job {ok} succeeded"
    assert state(ctl, on_bad)["state"] == "STARTING"


def test_afterok_still_cancels_on_failure(ctl: Controller) -> None:
    parent = submit(ctl, ALICE)
    child = submit(ctl, ALICE, depends_on=[parent])
    ctl.schedule()
    done(ctl, parent, 2)
    ctl.schedule()
    assert state(ctl, child)["state"] == "CANCELLED"
    assert ctl.op_show(ROOT, str(child))["events"][-1]["reason"] == f"dependency {parent} did not succeed"


def test_after_waits_for_the_start_only(ctl: Controller) -> None:
    big = submit(ctl, ALICE, resources={"accelerators": "A100:8"})
    parent = submit(ctl, ALICE, resources={"accelerators": "A100:1"})  # waits behind big
    child = submit(ctl, ALICE, depends_on=f"after:{parent}")
    ctl.schedule()
    assert state(ctl, parent)["state"] == "PENDING"
    assert state(ctl, child)["reason"] == f"dependency: waiting for after:{parent}"
    done(ctl, big, 0)
    ctl.schedule()
    assert state(ctl, parent)["state"] == "STARTING"
    ctl.schedule()
    assert state(ctl, child)["state"] == "STARTING"  # while its dependency still runs
    assert ctl.op_show(ROOT, str(child))["dependencies"] == [{"kind": "after", "job": parent, "state": "met"}]


def test_singleton_runs_one_job_of_a_name_and_user_at_a_time(ctl: Controller) -> None:
    first = submit(ctl, ALICE, name="train", depends_on="singleton")
    second = submit(ctl, ALICE, name="train", depends_on="singleton")
    other_user = submit(ctl, BOB, name="train", depends_on="singleton")
    other_name = submit(ctl, ALICE, name="eval", depends_on="singleton")
    ctl.schedule()
    assert state(ctl, first)["state"] == "STARTING"
    assert state(ctl, second)["state"] == "PENDING"
    assert "singleton: waiting for job " + str(first) in state(ctl, second)["reason"]
    assert state(ctl, other_user)["state"] == state(ctl, other_name)["state"] == "STARTING"
    assert ctl.op_show(ROOT, str(second))["dependencies"] == [{"kind": "singleton", "job": first, "state": "waiting"}]
    done(ctl, first, 1)  # any end releases it
    ctl.schedule()
    assert state(ctl, second)["state"] == "STARTING"


def test_show_lists_each_dependency_and_whether_it_is_met(ctl: Controller) -> None:
    a, b = submit(ctl, ALICE), submit(ctl, ALICE)
    ctl.schedule()
    done(ctl, a, 0)
    child = submit(ctl, ALICE, depends_on=f"afterok:{a},afterany:{b}")
    assert ctl.op_show(ROOT, str(child))["dependencies"] == [
        {"kind": "afterok", "job": a, "state": "met"}, {"kind": "afterany", "job": b, "state": "waiting"}]


def test_a_dependency_must_exist(ctl: Controller) -> None:
    with pytest.raises(NotFound):
        submit(ctl, ALICE, depends_on="afterany:999")


def test_list_array_makes_its_tasks_and_keeps_its_throttle(ctl: Controller) -> None:
    j = submit(ctl, ALICE, array="1,3,5-7%2")
    shown = ctl.op_show(ROOT, str(j))
    assert [t["task"] for t in shown["tasks"]] == [1, 3, 5, 6, 7] and shown["array"] == "1,3,5-7%2"
    ctl.schedule()
    started = [t["task"] for t in ctl.op_show(ROOT, str(j))["tasks"] if t["state"] == "STARTING"]
    assert started == [1, 3]
    assert ctl.store.job(j)["spec"]["array"]["parts"] == [[1, 1, 1], [3, 3, 1], [5, 7, 1]]


def test_migration_adds_the_columns(tmp_path: Path) -> None:
    store = Store(tmp_path / "x.db")
    cols = {r[1] for r in store.conn.execute("PRAGMA table_info(jobs)")}
    store.close()
    assert {"dependencies", "singleton", "exclusive"} <= cols
    assert JobStatus.SUCCEEDED.is_terminal() and ArraySpec(1, 2).indices == range(1, 3)


# ---- --exclusive -------------------------------------------------------------------------------

def test_plan_gives_an_exclusive_task_an_empty_node_and_nothing_else_there() -> None:
    from dataclasses import replace

    from hybridctl.core.model import ClusterView, Policy
    from hybridctl.core.schedule import plan
    from tests.unit.schedule_kit import node, task

    nodes = (node("a", busy=(0,)), node("b"))
    excl = replace(task(1, 1), exclusive=True)
    d = plan(ClusterView(nodes, busy_nodes=frozenset({"a"})), [excl, task(2, 1), task(3, 1)], Policy())
    where = {p.job_id: p.node for p in d.placements}
    assert where == {1: "b", 2: "a", 3: "a"}  # b has 7 free GPUs left, yet nothing joins job 1
    # Both nodes busy: it waits, saying why; a running exclusive task keeps its node to itself.
    d = plan(ClusterView(nodes, busy_nodes=frozenset({"a", "b"})), [excl], Policy())
    assert d.waiting[0].reason == "exclusive: every node that fits runs other jobs"
    d = plan(ClusterView(nodes, busy_nodes=frozenset({"a", "b"}), exclusive_nodes=frozenset({"b"})),
             [task(2, 1), task(3, 7)], Policy())
    assert [(p.job_id, p.node) for p in d.placements] == [(2, "a")] and d.waiting[0].job_id == 3


def test_exclusive_job_in_the_controller(ctl: Controller) -> None:
    sharing = submit(ctl, ALICE)
    alone = submit(ctl, ALICE, slurm={"exclusive": True})
    ctl.schedule()
    assert state(ctl, alone)["reason"] == "exclusive: every node that fits runs other jobs"
    done(ctl, sharing, 0)
    ctl.schedule()
    assert state(ctl, alone)["state"] == "STARTING"
    later = submit(ctl, BOB)
    ctl.schedule()
    assert state(ctl, later)["state"] == "PENDING"
    done(ctl, alone, 0)
    ctl.schedule()
    assert state(ctl, later)["state"] == "STARTING"


def test_singleton_needs_a_name() -> None:
    with pytest.raises(SpecError) as exc:
        parse_spec({"run": "x", "depends_on": "singleton"}, "job.yaml")
    assert "'singleton' needs a job name" in exc.value.message and exc.value.message.startswith("job.yaml: ")
