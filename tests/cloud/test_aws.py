"""The aws provider beyond the shared contract, against a moto server on 127.0.0.1: spot market
options, tags on the instance and its volumes, user data, price refresh; and the bootstrap path
(copy the agent over SFTP, start it, reach it) with the moto instance mapped to a loopback sshd,
since moto's made-up addresses must never be connected to."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

from hybridctl.cloud.base import TAG_CLUSTER, TAG_NODE, LaunchSpec

pytest.importorskip("boto3")


@pytest.fixture
def aws(moto_endpoint: str) -> Any:
    import boto3

    from hybridctl.cloud import catalog
    from hybridctl.cloud.aws import AwsProvider

    ec2 = boto3.client("ec2", region_name="us-east-2", endpoint_url=moto_endpoint)
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    p = AwsProvider(catalog.load(), ["us-east-2"], ami, endpoint_url=moto_endpoint, ssh_user="ubuntu")
    yield p, ec2
    for inst in p.list({}):
        p.terminate(inst.id)


def test_spot_launch_tags_everything_and_sends_user_data(aws: Any) -> None:
    p, ec2 = aws
    offer = next(o for o in p.offers() if o.instance_type == "g6e.xlarge" and o.spot and o.zone == "us-east-2b")
    inst = p.launch(LaunchSpec(offer, "cloud-abc", {TAG_CLUSTER: "t1"}, "ssh-ed25519 AAAAKEY ctl", orphan_timeout=60))
    region, iid = inst.id.split("/")
    assert region == "us-east-2" and inst.spot and inst.zone == "us-east-2b" and inst.ssh_user == "ubuntu"
    raw = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert raw["InstanceLifecycle"] == "spot" and raw["InstanceType"] == "g6e.xlarge"
    tags = {t["Key"]: t["Value"] for t in raw["Tags"]}
    assert tags == {TAG_CLUSTER: "t1", TAG_NODE: "cloud-abc", "Name": "cloud-abc"}
    vols = ec2.describe_volumes(Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": ["t1"]}])["Volumes"]
    assert vols and all(v["Attachments"][0]["InstanceId"] == iid for v in vols)
    data = base64.b64decode(ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
                            ["UserData"]["Value"]).decode()
    assert "ssh-ed25519 AAAAKEY ctl" in data and "shutdown -h +" in data


def test_refresh_keeps_catalog_prices_when_the_history_is_stale(aws: Any) -> None:
    p, _ = aws
    before = {o.pool: o.price_hourly for o in p.offers()}
    after = {o.pool: o.price_hourly for o in p.offers(refresh=True)}  # moto's history is from 2006
    assert after and set(after) <= set(before)
    assert all(after[k] == before[k] for k in after)


def test_api_errors_name_the_call_never_the_credentials(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridctl.cloud import catalog
    from hybridctl.cloud.aws import AwsProvider
    from hybridctl.cloud.base import LaunchFailed

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET-must-not-leak-42")
    p = AwsProvider(catalog.load(), ["us-east-2"], "ami-12c6146b", endpoint_url=moto_endpoint,
                    security_group_ids=["sg-does-not-exist"])
    offer = next(o for o in p.offers() if o.spot)
    with pytest.raises(LaunchFailed) as err:
        p.launch(LaunchSpec(offer, "cloud-x", {TAG_CLUSTER: "t2"}, "ssh-ed25519 AAAA k"))
    assert "run_instances: InvalidGroup.NotFound" in err.value.message and "SECRET" not in err.value.message


def test_bootstrap_copies_and_starts_the_agent_over_ssh(aws: Any, tmp_path: Path) -> None:
    """The moto instance stands for the machine; its address is replaced by a loopback sshd's."""
    from hybridctl.cloud.bootstrap import install_agent, pin_first_contact
    from hybridctl.ssh.link import Target, connect
    from tests.integration.sshd import Sshd, keygen, require_sshd

    require_sshd()
    p, _ = aws
    offer = next(o for o in p.offers() if o.instance_type == "g5.xlarge" and o.spot)
    inst = p.launch(LaunchSpec(offer, "cloud-boot", {TAG_CLUSTER: "t3"}, "ssh-ed25519 AAAA k"))
    assert not inst.host.startswith("127.")  # moto's made-up address: never used
    key = keygen(tmp_path / "id_ed25519")
    sshd = Sshd(tmp_path / "sshd", key)
    if "Subsystem sftp" not in sshd.config.read_text():
        sshd.config.write_text(sshd.config.read_text() + "Subsystem sftp internal-sftp\n")
    sshd.start()
    node_dir = tmp_path / "node"
    try:
        local = dataclasses.replace(inst, host="127.0.0.1", port=sshd.port, ssh_user="root")
        known = tmp_path / "known_hosts"

        async def run() -> dict[str, Any]:
            await pin_first_contact(known, local.host, local.port)
            sock = await install_agent(local, known, key, orphan_timeout=0, python=sys.executable,
                                       remote_dir=str(node_dir), cancel_deadline=False)
            link = await connect(Target("cloud-boot", local.host, local.port, "root", str(key), sock, str(known)))
            try:
                return await link.call("hello")
            finally:
                await link.close()

        hello = asyncio.run(run())
        assert hello["node"] == "cloud-boot"
        assert (node_dir / "pkg" / "hybridctl_agent" / "daemon.py").exists()
    finally:
        sshd.stop()
        pid = (node_dir / "state" / "agent.lock")
        _stop_agent(node_dir)
        assert pid.parent.exists()


def _stop_agent(node_dir: Path) -> None:
    import os
    import signal

    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if str(node_dir) in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
            except psutil.Error:
                pass
