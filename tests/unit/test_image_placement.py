"""Image jobs (`image_id: docker:`) through the controller's scheduling pass and the autoscaler:
placed only on nodes whose hello offers podman; bursting only where `cloud.runtimes` lists podman
(a rented node without it could never take the job, and the autoscaler would rent again);
`show` says why such a job waits."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from hybridctl.config import CloudConfig, ConfigError, Settings, load
from hybridctl.core.burst import Limits, Offer, World, decide
from hybridctl.core.model import ClusterView, GpuSlot, NodeView, PendingTask, Policy, Resources
from tests.unit.control.parts import ALICE, build

IMAGE = {"accelerators": "A100:2", "image_id": "docker:nvcr.io/nvidia/pytorch:24.05-py3"}
OD = Offer("sim", "a100x8", "r1", "r1a", "A100", 8, 96, 1 << 20, False, 32.0)
LIMITS = Limits(after=0, max_nodes=16, max_hourly_usd=1000, budget_usd=10_000, allow_on_demand=True)


def reason(parts, job: int) -> str:  # type: ignore[no-untyped-def]
    return str(parts.ctl.op_show(ALICE, job)["tasks"][0]["reason"])


def test_an_image_job_is_placed_only_where_the_node_offers_podman(tmp_path: Path) -> None:
    parts = build(tmp_path)
    offers: dict = {"n2": {"podman": "/usr/bin/podman", "uv": "/usr/bin/uv"}}
    parts.scheduler.features = lambda: offers
    try:
        img = parts.submit(resources=IMAGE)
        plain = parts.submit()
        parts.scheduler.schedule()
        assert parts.store.task_nodes(img, 0) == ["n2"] and parts.store.task_nodes(plain, 0) == ["n1"]
        (rank,) = parts.lifecycle.active_ranks("n2")
        assert parts.lifecycle.launch_payload(rank, "n2")["image"] == IMAGE["image_id"]  # what the agent runs
        (rank,) = parts.lifecycle.active_ranks("n1")
        assert "image" not in parts.lifecycle.launch_payload(rank, "n1")
        offers.clear()  # the nodes' sessions are gone, or they never had podman
        late = parts.submit(resources=IMAGE)
        parts.scheduler.schedule()
        assert parts.store.task_nodes(late, 0) == []
        assert reason(parts, late) == ("requires: it needs podman (image_id: docker:) on its node, and no "
                                       "on-prem or cloud node offers it (`hybridctl nodes`)")
    finally:
        parts.store.close()


def cloud_parts(tmp_path: Path, runtimes: tuple[str, ...]):  # type: ignore[no-untyped-def]
    key = tmp_path / "cloud_key"
    key.write_text("not a real key\n")
    Path(f"{key}.pub").write_text("ssh-ed25519 AAAA test\n")
    settings = Settings(home=str(tmp_path), cloud=CloudConfig(enabled=True, identity=str(key), runtimes=runtimes))
    parts = build(tmp_path, names=("n1",), settings=settings)  # 2 A100s, no podman
    parts.scheduler.features = lambda: {"n1": {"uv": "/usr/bin/uv"}}
    return parts


@pytest.mark.parametrize("runtimes, rents", [((), False), (("podman",), True)])
def test_image_jobs_burst_only_where_cloud_runtimes_lists_podman(tmp_path: Path, runtimes: tuple[str, ...],
                                                                  rents: bool) -> None:
    from hybridctl.control.autoscaler import Autoscaler
    from tests.unit.control.fakes import FakeProvider

    parts = cloud_parts(tmp_path, runtimes)
    try:
        scaler = Autoscaler(parts.store, parts.settings, parts.lifecycle, parts.fleet, parts.scheduler,
                            providers={"fake": FakeProvider()}, clock=parts.clock)
        parts.place()  # n1 is full
        img = parts.submit(resources=IMAGE)
        plain = parts.submit()
        w = replace(scaler.world(parts.clock()), offers=[OD])
        assert [t.requires for t in w.pending] == [frozenset({"podman"}), frozenset()]
        d = decide(w, LIMITS, Policy(), parts.clock())
        rented_for = {k[0] for r in d.launches for k in r.tasks}
        assert (img in rented_for) == rents and d.launches  # the plain job bursts (or shares img's node)
        if not rents:
            assert rented_for == {plain}
        parts.scheduler.schedule()
        why = reason(parts, img)
        assert why.startswith("requires: it needs podman")
        if rents:
            assert why.endswith("cloud nodes offer it (cloud.runtimes), so one may be rented for it")
        else:
            assert why.endswith("no cloud node is rented for it: cloud.runtimes does not list podman")
    finally:
        parts.store.close()


def test_a_rented_node_without_podman_is_never_rented_again_for_the_image_job() -> None:
    """Pure policy: with cloud_features empty the image task fits no node that could be rented,
    whatever the offers; with podman offered it is rented once and covered by that node after."""
    now = 1_800_000_000.0
    busy = NodeView("a1", tuple(GpuSlot(i, "A100", free=False) for i in range(8)), 96, 0, 1 << 20, 0)
    t = replace(PendingTask(1, 0, "u", "g", 0, now - 600, Resources(gpus=8, gpu_type="A100", cpus=16)),
                requires=frozenset({"podman"}))
    for _ in range(3):
        assert decide(World([t], ClusterView((busy,)), offers=[OD]), LIMITS, Policy(), now).launches == ()
    d = decide(World([t], ClusterView((busy,)), offers=[OD], cloud_features=frozenset({"podman"})),
               LIMITS, Policy(), now)
    assert [r.tasks for r in d.launches] == [((1, 0),)]


def test_cloud_runtimes_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cloud.runtimes: 'docker' is not valid; accepted: a list of podman"):
        CloudConfig(runtimes=("docker",))
    assert CloudConfig(runtimes=("podman",)).runtimes == ("podman",)
    cfg = tmp_path / "hybridctl.yaml"
    cfg.write_text("cloud:\n  runtimes: [apptainer]\n")
    with pytest.raises(ConfigError, match=f"{cfg}: cloud.runtimes: 'apptainer' is not valid"):
        load(cfg, env={})
    cfg.write_text("cloud:\n  runtimes: podman\n")
    assert load(cfg, env={}).cloud.runtimes == ("podman",)
