"""One contract, every provider: offers, launch, describe, list by tag, terminate (idempotent),
capacity errors as CapacityError. The simulated provider boots real machines on loopback; aws
talks real boto3 to a moto server on 127.0.0.1 (its made-up 10.x/54.x addresses are never
connected to); command runs a script the test writes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from hybridctl.cloud.base import TAG_CLUSTER, TAG_NODE, CapacityError, CloudProvider, Instance, LaunchSpec
from hybridctl.core.burst import Offer
from tests.cloud.conftest import fake_cloud_script, small_catalog

PROVIDERS = ["simulated", "aws", "command"]


class Case:
    """A provider plus how to provoke a capacity error with it (None: it cannot be provoked)."""

    def __init__(self, provider: CloudProvider, full_type: str | None) -> None:
        self.provider = provider
        self.full_type = full_type


@pytest.fixture(params=PROVIDERS)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    name = request.param
    if name == "simulated":
        from hybridctl.cloud.simulated import SimulatedProvider

        p: CloudProvider = SimulatedProvider(tmp_path / "sim", small_catalog(), launch_delay=0.0,
                                             capacity_errors=["sim.a100x2"], agent_interval=0.5)
        c = Case(p, "sim.a100x2")
    elif name == "aws":
        endpoint = request.getfixturevalue("moto_endpoint")
        pytest.importorskip("boto3")
        import boto3

        from hybridctl.cloud import catalog
        from hybridctl.cloud.aws import AwsProvider

        ami = boto3.client("ec2", region_name="us-east-2", endpoint_url=endpoint).describe_images(
            Owners=["amazon"])["Images"][0]["ImageId"]
        p = AwsProvider(catalog.load(), ["us-east-2"], ami, endpoint_url=endpoint)
        c = Case(p, None)
    else:
        from hybridctl.cloud.command import CommandProvider

        cmd, env = fake_cloud_script(tmp_path / "fake")
        p = CommandProvider(cmd, cmd, cmd, catalog=small_catalog(), timeout=60, env={**env, "FAKE_CLOUD_FULL": "sim.a100x2"})
        c = Case(p, "sim.a100x2")
    try:
        yield c
    finally:
        for inst in c.provider.list({}):
            c.provider.terminate(inst.id)
        c.provider.close()


def spec(offer: Offer, name: str, cluster: str = "contract") -> LaunchSpec:
    return LaunchSpec(offer, name, {TAG_CLUSTER: cluster}, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1nGqOk0tAsU3+hJ6s8uWnDn0p8n3bqTkV1n8Jt2m9Q test")


def cheapest_spot(p: CloudProvider, avoid: str | None = None) -> Offer:
    return min((o for o in p.offers() if o.spot and o.gpus and o.instance_type != avoid),
               key=lambda o: o.price_hourly)


def wait_state(p: CloudProvider, iid: str, want: str, timeout: float = 60) -> Instance:
    deadline = time.monotonic() + timeout
    while True:
        inst = p.describe(iid)
        if inst.state == want:
            return inst
        assert time.monotonic() < deadline, f"{iid} still {inst.state}, wanted {want}"
        time.sleep(0.1)


def test_offers_are_priced_shapes_with_unique_pools(case: Case) -> None:
    offers = case.provider.offers()
    assert offers
    assert all(o.price_hourly > 0 and o.cpus > 0 and o.memory_mb > 0 and o.gpus >= 0 for o in offers)
    assert all((o.gpu_type is not None) == (o.gpus > 0) for o in offers)
    assert len({o.pool for o in offers}) == len(offers)
    assert any(o.spot for o in offers) and any(not o.spot for o in offers)
    assert case.provider.offers(refresh=True)  # refreshing from the API keeps a usable list


def test_launch_list_describe_terminate_and_terminate_again(case: Case) -> None:
    p = case.provider
    offer = cheapest_spot(p, avoid=case.full_type)
    inst = p.launch(spec(offer, "cnode-1"))
    assert inst.alive and inst.provider == p.name
    assert inst.name == "cnode-1" and inst.tags[TAG_NODE] == "cnode-1" and inst.tags[TAG_CLUSTER] == "contract"
    listed = p.list({TAG_CLUSTER: "contract"})
    assert [i.id for i in listed] == [inst.id]
    assert listed[0].instance_type == offer.instance_type and listed[0].zone == offer.zone
    assert p.list({TAG_CLUSTER: "someone-else"}) == []
    running = wait_state(p, inst.id, "running")
    assert running.host  # an address is known once running (tests never connect to aws's)
    p.terminate(inst.id)
    assert p.list({TAG_CLUSTER: "contract"}) == []
    assert p.describe(inst.id).state == "terminated"
    p.terminate(inst.id)  # idempotent


def test_unknown_instance_is_terminated_not_an_error(case: Case) -> None:
    unknown = {"simulated": "sim-00000000", "aws": "us-east-2/i-0123456789abcdef0", "command": "vm-999"}
    iid = unknown[case.provider.name]
    assert case.provider.describe(iid).state == "terminated"
    case.provider.terminate(iid)


def test_capacity_error_is_retryable_and_leaves_nothing_behind(case: Case) -> None:
    if case.full_type is None:
        pytest.skip(f"{case.provider.name}: the local stand-in cannot refuse capacity")
    p = case.provider
    offer = next(o for o in p.offers() if o.instance_type == case.full_type)
    with pytest.raises(CapacityError):
        p.launch(spec(offer, "cnode-full"))
    assert p.list({TAG_CLUSTER: "contract"}) == []


def test_simulated_machine_is_a_real_agent_behind_ssh(tmp_path: Path, client_key: Path) -> None:
    """What the controller will do with a simulated instance: pin its host key, SSH in, talk to
    the agent, and see the machine end when terminated."""
    import asyncio

    from hybridctl.cloud.simulated import SimulatedProvider
    from hybridctl.sim.keys import pin
    from hybridctl.ssh.link import Target, connect

    p = SimulatedProvider(tmp_path / "sim", small_catalog(), launch_delay=0.0, agent_interval=0.5)
    offer = next(o for o in p.offers() if o.instance_type == "sim.l40sx1" and o.spot)
    pub = Path(f"{client_key}.pub").read_text()
    inst = p.launch(LaunchSpec(offer, "cnode-ssh", {TAG_CLUSTER: "c"}, pub))
    inst = wait_state(p, inst.id, "running")
    assert inst.host == "127.0.0.1" and inst.host_key.startswith("ssh-ed25519")
    known = tmp_path / "known_hosts"
    pin(known, inst.port, inst.host_key)

    async def hello() -> dict[str, Any]:
        link = await connect(Target("cnode-ssh", inst.host, inst.port, None, str(client_key), inst.agent_socket,
                                    str(known)))
        try:
            return await link.call("hello")
        finally:
            await link.close()

    answer = asyncio.run(hello())
    assert answer["node"] == "cnode-ssh" and [g["name"] for g in answer["gpus"]] == ["NVIDIA L40S"]
    p.terminate(inst.id)
    assert p.describe(inst.id).state == "terminated"


def test_simulated_spot_prices_drift_but_stay_near_the_catalog(tmp_path: Path) -> None:
    from hybridctl.cloud.simulated import SimulatedProvider

    t = [1_700_000_000.0]
    p = SimulatedProvider(tmp_path / "sim", small_catalog(), price_drift=0.2, clock=lambda: t[0])
    before = {o.pool: o.price_hourly for o in p.offers()}
    t[0] += 3 * 3600
    after = {o.pool: o.price_hourly for o in p.offers()}
    spot = [k for k in before if k.endswith("/spot")]
    assert any(before[k] != after[k] for k in spot)
    assert all(before[k] == after[k] for k in before if k.endswith("/on-demand"))
    base = {o.pool: o.price_hourly for o in small_catalog().offers("simulated")}
    assert all(abs(after[k] / base[k] - 1) <= 0.2 + 1e-9 for k in spot)


def test_simulated_preemption_gives_notice_then_reclaims(tmp_path: Path, client_key: Path) -> None:
    from hybridctl.cloud.simulated import SimulatedProvider

    t = [1_700_000_000.0]
    clock: Callable[[], float] = lambda: t[0]
    p = SimulatedProvider(tmp_path / "sim", small_catalog(), launch_delay=0.0, preemption_rate_per_h=3600.0,
                          preemption_warning=60.0, agent_interval=0.5, clock=clock)
    offer = cheapest_spot(p, avoid="sim.a100x2")
    inst = p.launch(spec(offer, "cnode-pre"))
    rec = p._read(inst.id)
    assert rec is not None and rec["preempt_at"] is not None
    t[0] = rec["preempt_at"] - 61
    assert p.preemption_notices([inst.id]) == []
    t[0] = rec["preempt_at"] - 30
    [notice] = p.preemption_notices([inst.id])
    assert notice.instance_id == inst.id and notice.at == rec["preempt_at"]
    t[0] = rec["preempt_at"] + 1
    gone = p.describe(inst.id)
    assert gone.state == "terminated" and gone.reason == "preempted"
    assert p.list({}) == []


def test_simulated_on_demand_machines_are_never_reclaimed(tmp_path: Path, client_key: Path) -> None:
    """`preemption_rate_per_h` is the spot market's: a cloud does not reclaim on-demand machines
    (it did here, so the demo's and the tests' on-demand nodes were requeued like spot ones)."""
    from hybridctl.cloud.simulated import SimulatedProvider

    t = [1_700_000_000.0]
    p = SimulatedProvider(tmp_path / "sim", small_catalog(), launch_delay=0.0, preemption_rate_per_h=3600.0,
                          preemption_warning=60.0, agent_interval=0.5, clock=lambda: t[0])
    offer = min((o for o in p.offers(True) if not o.spot and o.instance_type != "sim.a100x2"),
                key=lambda o: o.price_hourly)
    inst = p.launch(spec(offer, "cnode-od"))
    try:
        rec = p._read(inst.id)
        assert rec is not None and rec["preempt_at"] is None
        t[0] += 10 * 3600  # ten hours at 3600 reclaims an hour
        assert p.preemption_notices([inst.id]) == [] and p.describe(inst.id).alive
    finally:
        p.terminate(inst.id)
