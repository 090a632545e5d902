"""`PendingTask.avoid_nodes`: nodes `plan` must not place a task on (held cloud nodes too dear for
its owners' budget, core/burst + allowance.CloudGate.avoid). Its shape is its own: a task of the
same size without the list still takes those nodes in the same pass, and a spot node it may use
is not mistaken for one it avoids."""

from __future__ import annotations

import dataclasses

from hybridctl.core.model import ClusterView, Policy
from hybridctl.core.schedule import plan
from tests.unit.schedule_kit import node, task


def test_a_task_keeps_off_the_nodes_it_avoids_and_another_of_its_size_does_not() -> None:
    # a (1 GPU) is the best fit for both; the first avoids it and takes b, the second takes a.
    nodes = (node("a", gpus=1, site="cloud"), node("b", gpus=8, site="cloud"))
    first = dataclasses.replace(task(1, gpus=1), avoid_nodes=frozenset({"a"}))
    d = plan(ClusterView(nodes), [first, task(2, gpus=1)], Policy())
    assert {p.job_id: p.node for p in d.placements} == {1: "b", 2: "a"}


def test_with_only_avoided_nodes_free_it_waits_and_a_gang_avoids_them_on_every_rank() -> None:
    nodes = (node("a", gpus=4), node("b", gpus=4), node("c", gpus=4))
    d = plan(ClusterView(nodes), [dataclasses.replace(task(1, gpus=4, nodes=2), avoid_nodes=frozenset({"b"}))],
             Policy())
    assert sorted(p.node for p in d.placements) == ["a", "c"]
    d = plan(ClusterView(nodes), [dataclasses.replace(task(1, gpus=4, nodes=2), avoid_nodes=frozenset({"a", "c"}))],
             Policy())
    assert not d.placements and [w.job_id for w in d.waiting] == [1]


def test_a_task_kept_off_spot_that_also_avoids_a_node_is_kept_off_both() -> None:
    spot = dataclasses.replace(node("s", gpus=8, site="cloud"), market="spot")
    od = dataclasses.replace(node("o", gpus=8, site="cloud"), market="on-demand")
    other = dataclasses.replace(node("p", gpus=8, site="cloud"), market="on-demand")
    t = dataclasses.replace(task(1, gpus=1), no_spot=True, avoid_nodes=frozenset({"o"}))
    d = plan(ClusterView((spot, od, other)), [t], Policy())
    assert [p.node for p in d.placements] == ["p"]
    d = plan(ClusterView((spot, od)), [t], Policy())
    assert not d.placements
