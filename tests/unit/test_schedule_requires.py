"""Per-task requirements against per-node features (`PendingTask.requires`, `NodeView.features`):
an image job (`requires={"podman"}`) is placed only on nodes whose hello offers podman, waits with
a reason naming what it needs when no node of its sites has it."""

from __future__ import annotations

import dataclasses

from hybridctl.core.model import ClusterView, Policy, RunningTask
from hybridctl.core.schedule import plan
from tests.unit.schedule_kit import node, task

PODMAN = frozenset({"podman"})


def with_podman(n, has: bool = True):  # type: ignore[no-untyped-def]
    return dataclasses.replace(n, features=PODMAN if has else frozenset())


def img(job: int, **kw):  # type: ignore[no-untyped-def]
    return dataclasses.replace(task(job, **kw), requires=PODMAN)


def test_an_image_job_goes_only_where_podman_is_though_another_node_fits_better() -> None:
    # a (2 GPUs) is the best fit for 2 GPUs, but has no podman; b (8 GPUs) has it.
    nodes = (node("a", gpus=2), with_podman(node("b", gpus=8)))
    d = plan(ClusterView(nodes), [img(1, gpus=2), task(2, gpus=2)], Policy())
    where = {p.job_id: p.node for p in d.placements}
    assert where == {1: "b", 2: "a"}


def test_with_no_podman_anywhere_it_waits_and_says_what_it_needs() -> None:
    d = plan(ClusterView((node("a"), node("c", site="cloud"))), [img(1), task(2)], Policy())
    assert [p.job_id for p in d.placements] == [2]
    (w,) = d.waiting
    assert w.reason == ("requires: it needs podman (image_id: docker:) on its node, and no on-prem or cloud "
                        "node offers it (`hybridctl nodes`)")


def test_placement_onprem_with_podman_only_in_the_cloud_waits_for_an_onprem_one() -> None:
    nodes = (node("a"), with_podman(node("c", site="cloud")))
    d = plan(ClusterView(nodes), [img(1, placement="onprem")], Policy())
    assert not d.placements and "no on-prem node offers it" in d.waiting[0].reason
    d = plan(ClusterView(nodes), [img(1)], Policy())
    assert [p.node for p in d.placements] == ["c"]


def test_a_gang_needs_podman_on_every_node() -> None:
    nodes = (with_podman(node("a", gpus=4)), node("b", gpus=4), with_podman(node("c", gpus=4)))
    d = plan(ClusterView(nodes), [img(1, gpus=4, nodes=2)], Policy())
    assert sorted(p.node for p in d.placements) == ["a", "c"]
    d = plan(ClusterView(nodes[:2]), [img(1, gpus=4, nodes=2)], Policy())
    assert not d.placements


def test_a_full_podman_node_is_no_reason_to_use_one_without() -> None:
    full = with_podman(node("p", gpus=2, busy=(0, 1)))
    free = node("q", gpus=2)
    running = (RunningTask(9, 0, "bob", 0, "p", (0, 1), 1.0, 0, 0.0, 100.0, True),)
    d = plan(ClusterView((full, free), running=running, now=0.0), [img(1, gpus=2)], Policy(backfill_depth=5))
    assert not d.placements  # q is free but has no podman
    assert [w.job_id for w in d.waiting] == [1]
    assert not any(p.node == "q" for p in d.preempt if hasattr(p, "node"))


def test_spot_avoidance_and_requirements_are_two_shapes() -> None:
    spot = dataclasses.replace(with_podman(node("s", site="cloud")), market="spot")
    od = dataclasses.replace(node("o", site="cloud"), market="on-demand")
    t1 = dataclasses.replace(img(1), no_spot=True)  # off spot, needs podman: nowhere
    t2 = dataclasses.replace(task(2), no_spot=True)  # off spot: o
    t3 = img(3)  # needs podman: s
    d = plan(ClusterView((spot, od)), [t1, t2, t3], Policy())
    assert {p.job_id: p.node for p in d.placements} == {2: "o", 3: "s"}
    assert [w.job_id for w in d.waiting] == [1]
