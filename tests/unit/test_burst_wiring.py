"""The burst policy's facts reach the scheduler and the autoscaler (issue #17 follow-ups of H6):
a task that may not use spot never lands on a spot node; the checkpoint interval and deadlines
reach `burst.World`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hybridctl.core.model import ClusterView, GpuSlot, NodeView, PendingTask, Policy, Resources
from hybridctl.core.schedule import plan


def node(name: str, site: str = "cloud", market: str | None = None, gpus: int = 8) -> NodeView:
    return NodeView(name, tuple(GpuSlot(i, "A100") for i in range(gpus)), 32, 32, 256 << 10, 256 << 10,
                    site=site, market=market)


def task(job: int, spot: bool = True, no_spot: bool = False, gpus: int = 8, nodes: int = 1) -> PendingTask:
    return PendingTask(job, 0, "u", "g", 0, float(job), Resources(gpus=gpus, use_spot=spot), num_nodes=nodes,
                       no_spot=no_spot)


def placed(d) -> dict[int, set[str]]:  # type: ignore[no-untyped-def]
    out: dict[int, set[str]] = {}
    for p in d.placements:
        out.setdefault(p.job_id, set()).add(p.node)
    return out


def why(d) -> dict[int, str]:  # type: ignore[no-untyped-def]
    return {w.job_id: w.reason for w in d.waiting}


def test_an_on_demand_job_takes_the_on_demand_node_and_a_spot_job_the_spot_node() -> None:
    view = ClusterView((node("s", market="spot"), node("d", market="on-demand")))
    d = plan(view, [task(1, spot=False), task(2, spot=True)], Policy())
    assert placed(d) == {1: {"d"}, 2: {"s"}}


def test_an_on_demand_job_never_lands_on_an_idle_spot_node() -> None:
    view = ClusterView((node("s", market="spot"), node("onprem", site="onprem")))
    d = plan(view, [task(1, gpus=8), task(2, spot=False)], Policy())
    assert placed(d) == {1: {"onprem"}} or placed(d) == {1: {"s"}}
    view = ClusterView((node("s", market="spot"),))
    d = plan(view, [task(3, spot=False)], Policy())
    assert placed(d) == {}
    assert why(d)[3] == "spot: it would fit now only on spot nodes, and this job asks for on-demand (use_spot: false)"
    # Without the market known (on-prem, or a cloud node of unknown market) nothing changes.
    d = plan(ClusterView((node("x"),)), [task(3, spot=False)], Policy())
    assert placed(d) == {3: {"x"}}


def test_a_gang_that_may_not_use_spot_does_not_straddle_a_spot_node() -> None:
    view = ClusterView((node("s", market="spot"), node("d1", market="on-demand")))
    d = plan(view, [task(1, spot=False, nodes=2)], Policy())
    assert placed(d) == {}
    assert "use_spot: false" in why(d)[1]
    view = ClusterView((node("s", market="spot"), node("d1", market="on-demand"), node("d2", market="on-demand")))
    assert placed(plan(view, [task(1, spot=False, nodes=2)], Policy())) == {1: {"d1", "d2"}}


def test_the_burst_policys_no_spot_keeps_a_spot_allowed_job_off_spot_nodes() -> None:
    view = ClusterView((node("s", market="spot"),))
    d = plan(view, [task(1, spot=True, no_spot=True), task(2, spot=True)], Policy())
    assert placed(d) == {2: {"s"}}
    assert why(d)[1].startswith("spot: it would fit now only on spot nodes, and the burst policy keeps this job off spot")


def controller_with_a_spot_node(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A controller whose only node is an idle 8 x A100 cloud node rented on a spot offer."""
    from hybridctl.config import NodeConfig, Settings
    from hybridctl.control.nodes import config_record
    from hybridctl.control.service import Controller
    from hybridctl.store.sqlite import Store
    from tests.unit.controller_kit import Clock

    clock = Clock()
    store = Store(tmp_path / "ctl.db")
    store.add_node(config_record(NodeConfig(name="cloud-a", gpus="8xA100", cpus=32, memory="256G", site="cloud",
                                            simulated=True)), clock())
    offer = {"provider": "simulated", "instance_type": "p4d", "region": "r", "zone": "r", "gpu_type": "A100",
             "gpus": 8, "cpus": 32, "memory_mb": 256 << 10, "spot": True, "price_hourly": 10.0}
    store.cloud_add_instance("i-1", "simulated", "cloud-a", offer, [], clock())
    ctl = Controller(store, Settings(home=tmp_path), clock)
    return ctl


def test_the_controller_keeps_an_on_demand_job_off_a_rented_spot_node(tmp_path: Path) -> None:
    """Through the controller's pass: the cloud node's market comes from the offer it was rented on."""
    from tests.unit.controller_kit import ALICE, submit

    ctl = controller_with_a_spot_node(tmp_path)
    od = submit(ctl, ALICE, resources={"accelerators": "A100:8", "use_spot": False})
    ctl.schedule()
    row = ctl.op_show(ALICE, od)
    assert row["tasks"][0]["state"] == "PENDING"
    assert "use_spot: false" in row["tasks"][0]["reason"]
    sp = submit(ctl, ALICE, resources={"accelerators": "A100:8", "use_spot": True})
    decision = ctl.schedule()
    assert {(p.job_id, p.node) for p in decision.placements} == {(sp, "cloud-a")}


def test_a_spot_averse_job_is_not_covered_by_an_idle_spot_node_rented_for_others() -> None:
    """12 h without checkpoints on spot loses far more than burst.max_spot_loss: the idle spot
    node held does not take it, an on-demand node is rented, and the scheduler is told."""
    from hybridctl.core.burst import CloudNode, Limits, Offer, World, decide

    now = 1_800_000_000.0
    spot = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, True, 12.0, 0.06)
    od = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, False, 32.0)
    limits = Limits(after=0, max_nodes=16, max_hourly_usd=1000, budget_usd=10_000, allow_on_demand=True,
                    count_preemption_loss=True)
    idle = NodeView("cloud-s", tuple(GpuSlot(i, "A100") for i in range(8)), 96, 96, 1 << 20, 1 << 20,
                    site="cloud", market="spot")
    onprem = NodeView("a1", tuple(GpuSlot(i, "A100", free=False) for i in range(8)), 96, 0, 1 << 20, 0)
    long_ = PendingTask(1, 0, "u", "g", 0, now - 60, Resources(gpus=8, gpu_type="A100", cpus=16))
    short = PendingTask(2, 0, "u", "g", 0, now - 30, Resources(gpus=8, gpu_type="A100", cpus=16))
    held = CloudNode("cloud-s", spot, now - 3600, up=True, idle_since=now - 60)
    w = World([long_, short], ClusterView((onprem, idle)), [held], [spot, od],
              runtime={(1, 0): 12 * 3600.0, (2, 0): 600.0})
    d = decide(w, limits, Policy(), now)
    assert d.no_spot == {(1, 0)}
    assert d.covered == {(2, 0): "cloud-s"}
    assert [(r.tasks, r.offer.spot) for r in d.launches] == [(((1, 0),), False)]
    # With checkpoints every 10 min the loss is small: spot is fine, the held node takes it.
    w = World([long_], ClusterView((onprem, idle)), [held], [spot, od], runtime={(1, 0): 12 * 3600.0},
              checkpoint_every={(1, 0): 600.0})
    d = decide(w, limits, Policy(), now)
    assert d.no_spot == frozenset() and d.covered == {(1, 0): "cloud-s"}
    # The controller's pass keeps it off the spot node by the same flag.
    p = plan(ClusterView((onprem, idle)), [replace(long_, no_spot=True)], Policy())
    assert placed(p) == {} and "burst policy keeps this job off spot" in why(p)[1]


def test_the_autoscalers_world_carries_checkpoint_intervals_and_deadlines(tmp_path: Path) -> None:
    """Autoscaler.world: a job with checkpoint_dir checkpoints every `fleet.checkpoint_sync_interval`
    until the sync has seen its checkpoints, then at the interval observed; deadlines are absolute."""
    import json
    import os

    from hybridctl.config import CloudConfig, FleetConfig, Settings
    from hybridctl.control.autoscaler import Autoscaler
    from hybridctl.control.checkpoints import MANIFEST
    from tests.unit.control.fakes import FakeProvider
    from tests.unit.control.parts import build

    key = tmp_path / "cloud_key"
    key.write_text("not a real key\n")
    Path(f"{key}.pub").write_text("ssh-ed25519 AAAA test\n")
    settings = Settings(home=str(tmp_path), fleet=FleetConfig(checkpoint_sync_interval=120),
                        cloud=CloudConfig(enabled=True, identity=str(key)))
    parts = build(tmp_path, names=(), settings=settings)
    try:
        scaler = Autoscaler(parts.store, settings, parts.lifecycle, parts.fleet, parts.scheduler,
                            providers={"fake": FakeProvider()}, clock=parts.clock)
        now = parts.clock()
        a = parts.submit(checkpoint_dir="/ckpt", deadline="6h")
        b = parts.submit()
        c = parts.submit(checkpoint_dir="/ckpt", array="0-1")
        d = parts.submit(deadline="2030-01-01T00:00:00+00:00")
        w = scaler.world(now)
        assert w.checkpoint_every == {(a, 0): 120.0, (c, 0): 120.0, (c, 1): 120.0}
        assert w.deadlines == {(a, 0): now + 6 * 3600, (d, 0): 1893456000.0}
        assert (b, 0) not in w.checkpoint_every and (b, 0) not in w.deadlines
        # Runtimes: a time limit is what wait-or-pay prices; without one (and no history) the policy
        # falls back to Limits.default_runtime_s, so nothing is passed.
        e = parts.submit(time_limit="20m")
        w = scaler.world(now)
        assert w.runtime.get((e, 0)) == 1200.0 and (b, 0) not in w.runtime
        # The sync has seen task c_0 write a file per checkpoint, 10 min apart.
        base = parts.lifecycle.checkpoint_path(f"{c}")  # task 0 is labelled as the job (core/reconcile.job_key)
        base.mkdir(parents=True)
        t0 = 1_700_000_000
        files = {f"step{i}.pt": [100, (t0 + 600 * i) * 10**9, "n1"] for i in range(4)}
        files["step3.opt"] = [100, (t0 + 1800 + 2) * 10**9, "n1"]  # written with step3.pt: one checkpoint
        (base / MANIFEST).write_text(json.dumps(files))
        assert scaler.world(now).checkpoint_every[(c, 0)] == 600.0
        # One that overwrites its file: the gap between the newest times the sync saw.
        one = parts.lifecycle.checkpoint_path(f"{a}")
        one.mkdir(parents=True)
        for i, t in enumerate((t0, t0 + 900)):
            (one / MANIFEST).write_text(json.dumps({"model.pt": [100, t * 10**9, "n1"]}))
            os.utime(one / MANIFEST, ns=(10**18 + i, 10**18 + i))
            got = scaler.world(now).checkpoint_every[(a, 0)]
        assert got == 900.0
    finally:
        parts.store.close()


def test_a_spot_averse_job_whose_on_demand_node_a_limit_refuses_may_use_an_idle_spot_node() -> None:
    """Its alternative is refused (max_nodes): the idle spot node, paid for anyway, beats waiting."""
    from hybridctl.core.burst import CloudNode, Limits, Offer, World, decide

    now = 1_800_000_000.0
    spot = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, True, 12.0, 0.06)
    od = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, False, 32.0)
    limits = Limits(after=0, max_nodes=1, max_hourly_usd=1000, budget_usd=10_000, allow_on_demand=True,
                    count_preemption_loss=True)
    idle = NodeView("cloud-s", tuple(GpuSlot(i, "A100") for i in range(8)), 96, 96, 1 << 20, 1 << 20,
                    site="cloud", market="spot")
    onprem = NodeView("a1", tuple(GpuSlot(i, "A100", free=False) for i in range(8)), 96, 0, 1 << 20, 0)
    long_ = PendingTask(1, 0, "u", "g", 0, now - 60, Resources(gpus=8, gpu_type="A100", cpus=16))
    held = CloudNode("cloud-s", spot, now - 3600, up=True, idle_since=now - 60)
    d = decide(World([long_], ClusterView((onprem, idle)), [held], [spot, od], runtime={(1, 0): 12 * 3600.0}),
               limits, Policy(), now)
    assert [b.reason.split(":")[1].strip() for b in d.blocked] == ["max_nodes"]
    assert d.no_spot == frozenset() and d.launches == ()
    assert placed(plan(ClusterView((onprem, idle)), [long_], Policy())) == {1: {"cloud-s"}}


def test_a_reservation_for_a_job_off_spot_is_made_on_a_node_it_may_use() -> None:
    """Both nodes are busy: the spot node frees first, but an on-demand job reserves the on-prem one."""
    from hybridctl.core.model import RunningTask

    now = 1_800_000_000.0
    busy_spot = NodeView("s", tuple(GpuSlot(i, "A100", free=False) for i in range(8)), 32, 0, 256 << 10, 0,
                         site="cloud", market="spot")
    busy_onprem = NodeView("p", tuple(GpuSlot(i, "A100", free=False) for i in range(8)), 32, 0, 256 << 10, 0)
    running = (RunningTask(90, 0, "v", 0, "s", tuple(range(8)), 32, 256 << 10, now - 60, now + 600),
               RunningTask(91, 0, "v", 0, "p", tuple(range(8)), 32, 256 << 10, now - 60, now + 3600))
    view = ClusterView((busy_spot, busy_onprem), running=running, now=now)
    t = PendingTask(1, 0, "u", "g", 0, now - 5, Resources(gpus=8, cpus=32, use_spot=False), runtime_s=600.0)
    w = plan(view, [t], Policy()).waiting[0]
    assert w.reserved_on == ("p",) and w.starts_at == now + 3600
    w = plan(view, [replace(t, resources=replace(t.resources, use_spot=True))], Policy()).waiting[0]
    assert w.reserved_on == ("s",) and w.starts_at == now + 600


def test_a_job_whose_data_takes_longer_to_move_than_its_on_prem_wait_waits_on_prem() -> None:
    """World.transfer_s: a fresh cloud node first receives the job's data. A job whose on-prem wait
    is shorter than that transfer waits on-prem; without data to move, the same job bursts."""
    from hybridctl.core.burst import Freeing, Limits, Offer, World, decide

    now = 1_800_000_000.0
    od = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, False, 32.0)
    limits = Limits(after=0, max_nodes=16, max_hourly_usd=1000, budget_usd=10_000, allow_on_demand=True,
                    wait_value_usd=100.0)
    onprem = NodeView("a1", tuple(GpuSlot(i, "A100", free=False) for i in range(8)), 96, 0, 1 << 20, 0)
    job = PendingTask(1, 0, "u", "g", 0, now - 60, Resources(gpus=8, gpu_type="A100", cpus=16))
    # the on-prem node frees in 1 h: waiting that long is worth $800 of GPU time, the node ~$32
    freeing = [Freeing("a1", tuple(range(8)), 96, 1 << 20, now + 3600)]
    w = World([job], ClusterView((onprem,)), [], [od], freeing=freeing, runtime={(1, 0): 3600.0})
    assert [r.tasks for r in decide(w, limits, Policy(), now).launches] == [((1, 0),)]
    slow = replace(w, transfer_s={(1, 0): 2 * 3600.0})  # 2 h to move its data to the cloud
    d = decide(slow, limits, Policy(), now)
    assert list(d.launches) == []


def test_a_deadline_job_waits_for_the_policy_before_it_takes_an_idle_spot_node(tmp_path: Path) -> None:
    """A job with a deadline that became pending after the burst policy's last decision is kept
    off spot nodes until a decision weighs its slack (`BurstDecision.weighed`): an idle spot node
    held for others would otherwise take a job that cannot afford a reclaim. A job without a
    deadline is not held back; with no policy weighing spot risk (None), neither is."""
    from tests.unit.controller_kit import ALICE, submit

    ctl = controller_with_a_spot_node(tmp_path)
    ctl.scheduler.spot_weighed = frozenset()  # a decision was made before these jobs came
    late = submit(ctl, ALICE, resources={"accelerators": "A100:4", "use_spot": True}, deadline="6h")
    assert ctl.schedule().placements == ()
    assert "keeps this job off spot" in ctl.op_show(ALICE, late)["tasks"][0]["reason"]
    plain = submit(ctl, ALICE, resources={"accelerators": "A100:4", "use_spot": True})
    assert {p.job_id for p in ctl.schedule().placements} == {plain}
    ctl.scheduler.spot_weighed = frozenset({(late, 0)})  # weighed, and not kept off spot: it goes
    assert {p.job_id for p in ctl.schedule().placements} == {late}


def test_a_decision_says_which_tasks_it_weighed_for_spot() -> None:
    from hybridctl.core.burst import Limits, World, decide

    onprem = node("onprem", site="onprem")
    waits = replace(task(3), deps_unmet=(1,))  # not weighed: it is weighed once its dependency is met
    w = World([task(1), task(2), waits], ClusterView((onprem,)))
    assert decide(w, Limits(count_preemption_loss=True), Policy(), 0.0).weighed == {(1, 0), (2, 0)}
    assert decide(w, Limits(count_preemption_loss=False), Policy(), 0.0).weighed is None
