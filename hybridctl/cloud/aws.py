"""The aws provider: EC2 through boto3. Spot instances via `run_instances` with
`InstanceMarketOptions`, prices from spot price history, availability from instance-type
offerings by zone, tags on everything it creates. Credentials come from boto3's usual chain
(environment, ~/.aws, instance role); this module never reads, stores or logs them.

Instance ids are '<region>/<ec2 id>' so that describe and terminate know which region to ask."""

from __future__ import annotations

import builtins
import datetime as dt
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

from hybridctl.cloud.base import (
    TAG_NODE,
    CapacityError,
    CloudError,
    CloudProvider,
    Instance,
    InstanceState,
    LaunchFailed,
    LaunchSpec,
    Notice,
    ProviderUnavailable,
)
from hybridctl.cloud.catalog import Catalog
from hybridctl.core.burst import Offer

CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
    "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "InsufficientFreeAddressesInSubnet",
    "InsufficientReservedInstanceCapacity", "Unsupported",
})
"""EC2 error codes that mean "not now, not here": the pool backs off, another offer is tried."""

_ALIVE = {"pending": InstanceState.PENDING, "running": InstanceState.RUNNING}
"""EC2's states that are alive; every other one (stopping, shutting-down, ...) counts as terminated."""
_NOTICE_CODES = ("marked-for-termination", "marked-for-stop", "marked-for-hibernation")
SPOT_NOTICE_S = 120.0
"""EC2 gives two minutes' notice of a spot interruption."""


def _split(instance_id: str) -> tuple[str, str]:
    region, sep, iid = instance_id.partition("/")
    if not sep or not iid:
        raise CloudError(f"aws: {instance_id!r} is not an instance id of the form REGION/i-...")
    return region, iid


class AwsProvider(CloudProvider):
    """EC2 in `regions`; see the module docstring."""

    name = "aws"

    def __init__(
        self,
        catalog: Catalog,
        regions: Sequence[str],
        image_id: str,
        *,
        key_name: str = "",
        security_group_ids: Sequence[str] = (),
        ssh_user: str = "ubuntu",
        use_private_ip: bool = False,
        endpoint_url: str = "",
        bootstrap_deadline_min: int = 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import boto3

        self.catalog = catalog
        self.regions = tuple(regions)
        self.image_id = image_id
        self.key_name = key_name
        self.security_group_ids = tuple(security_group_ids)
        self.ssh_user = ssh_user
        self.use_private_ip = use_private_ip
        self.endpoint_url = endpoint_url or None
        self.bootstrap_deadline_min = bootstrap_deadline_min
        self.clock = clock
        self._session = boto3.session.Session()
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._offers: builtins.list[Offer] | None = None

    def _ec2(self, region: str) -> Any:
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._clients[region] = self._session.client(
                    "ec2", region_name=region, endpoint_url=self.endpoint_url)
            return client

    def _call(self, region: str, op: str, **params: Any) -> Any:
        """One EC2 call; SDK errors become CloudErrors (with the error code, never credentials)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._ec2(region), op)(**params)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            msg = exc.response.get("Error", {}).get("Message", "")
            err = CapacityError if code in CAPACITY_CODES else CloudError
            e = err(f"aws {region}: {op}: {code}: {msg}")
            e.code = code  # type: ignore[attr-defined]
            raise e from None
        except BotoCoreError as exc:
            raise ProviderUnavailable(f"aws {region}: {op}: {type(exc).__name__}: {exc}") from None

    # ---- offers ----------------------------------------------------------------------------------

    def offers(self, refresh: bool = False) -> builtins.list[Offer]:
        if self._offers is not None and not refresh:
            return list(self._offers)
        offers = self.catalog.offers(self.name, self.regions)
        if refresh:
            offers = self._refreshed(offers)
        self._offers = offers
        return list(offers)

    def _refreshed(self, offers: builtins.list[Offer]) -> builtins.list[Offer]:
        """Drop (zone, type) pairs EC2 does not offer; take the latest spot prices (under a day old)."""
        types = sorted({o.instance_type for o in offers})
        available: set[tuple[str, str]] = set()
        prices: dict[tuple[str, str], tuple[float, float]] = {}
        since = dt.datetime.fromtimestamp(self.clock() - 86400, dt.timezone.utc)
        for region in self.regions:
            pages = self._paged(region, "describe_instance_type_offerings", "InstanceTypeOfferings",
                                LocationType="availability-zone",
                                Filters=[{"Name": "instance-type", "Values": types}])
            available.update((p["Location"], p["InstanceType"]) for p in pages)
            for p in self._paged(region, "describe_spot_price_history", "SpotPriceHistory", InstanceTypes=types,
                                 ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"], StartTime=since):
                ts = p["Timestamp"].timestamp()
                if ts < since.timestamp():
                    continue  # history older than a day says nothing about now
                key = (p["AvailabilityZone"], p["InstanceType"])
                if key not in prices or ts > prices[key][0]:
                    prices[key] = (ts, float(p["SpotPrice"]))
        out = []
        for o in offers:
            if available and (o.zone, o.instance_type) not in available:
                continue
            if o.spot and (o.zone, o.instance_type) in prices:
                o = replace(o, price_hourly=prices[(o.zone, o.instance_type)][1])
            out.append(o)
        return out

    def _paged(self, region: str, op: str, key: str, **params: Any) -> builtins.list[dict[str, Any]]:
        out: builtins.list[dict[str, Any]] = []
        token = None
        for _ in range(100):
            page = self._call(region, op, **params, **({"NextToken": token} if token else {}))
            out += page.get(key, [])
            token = page.get("NextToken")
            if not token:
                break
        return out

    # ---- instances -------------------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> Instance:
        if not self.image_id:
            from hybridctl.config import ConfigError

            raise ConfigError("cloud.aws.image_id: name the AMI to launch (one with python3 and sshd)")
        o = spec.offer
        tags = [{"Key": k, "Value": v} for k, v in {**spec.tags, TAG_NODE: spec.name, "Name": spec.name}.items()]
        params: dict[str, Any] = {
            "ImageId": self.image_id, "InstanceType": o.instance_type, "MinCount": 1, "MaxCount": 1,
            "Placement": {"AvailabilityZone": o.zone},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
            "UserData": self.user_data(spec),
            # A `shutdown` inside the instance (the orphan guard) ends the bill, not just the OS.
            "InstanceInitiatedShutdownBehavior": "terminate",
        }
        if o.spot:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        if self.key_name:
            params["KeyName"] = self.key_name
        if self.security_group_ids:
            params["SecurityGroupIds"] = list(self.security_group_ids)
        try:
            res = self._call(o.region, "run_instances", **params)
        except CapacityError:
            raise
        except CloudError as exc:
            raise LaunchFailed(exc.message) from None
        return self._instance(o.region, res["Instances"][0])

    def user_data(self, spec: LaunchSpec) -> str:
        """cloud-init shell script: let the controller's key in, and power off by itself unless the
        bootstrap (which cancels this) reaches the node in time: a controller that dies mid-launch
        must not leave a running bill."""
        minutes = max(5, self.bootstrap_deadline_min)
        key = spec.ssh_public_key.strip().replace("'", "")
        return "\n".join([
            "#!/bin/sh",
            f"u={self.ssh_user}",
            'h=$(getent passwd "$u" | cut -d: -f6)',
            'mkdir -p "$h/.ssh" && chmod 700 "$h/.ssh"',
            f"echo '{key}' >> \"$h/.ssh/authorized_keys\"",
            'chmod 600 "$h/.ssh/authorized_keys" && chown -R "$u" "$h/.ssh"',
            f"shutdown -h +{minutes} 'hybridctl: not bootstrapped in time'",
            "",
        ])

    def describe(self, instance_id: str) -> Instance:
        region, iid = _split(instance_id)
        try:
            res = self._call(region, "describe_instances", InstanceIds=[iid])
        except CloudError as exc:
            if getattr(exc, "code", "") == "InvalidInstanceID.NotFound":
                return Instance(instance_id, self.name, "", InstanceState.TERMINATED, reason="not found")
            raise
        for r in res.get("Reservations", []):
            for i in r.get("Instances", []):
                return self._instance(region, i)
        return Instance(instance_id, self.name, "", InstanceState.TERMINATED, reason="not found")

    def list(self, tags: Mapping[str, str]) -> builtins.list[Instance]:
        filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
        filters.append({"Name": "instance-state-name", "Values": list(_ALIVE)})
        out = []
        for region in self.regions:
            for r in self._paged(region, "describe_instances", "Reservations", Filters=filters):
                out += [self._instance(region, i) for i in r.get("Instances", [])]
        return [i for i in out if i.alive]

    def terminate(self, instance_id: str) -> None:
        region, iid = _split(instance_id)
        try:
            self._call(region, "terminate_instances", InstanceIds=[iid])
        except CloudError as exc:
            if getattr(exc, "code", "") != "InvalidInstanceID.NotFound":
                raise

    def preemption_notices(self, instance_ids: Sequence[str]) -> builtins.list[Notice]:
        by_region: dict[str, dict[str, str]] = {}
        for full in instance_ids:
            region, iid = _split(full)
            by_region.setdefault(region, {})[iid] = full
        out = []
        now = self.clock()
        for region, ids in by_region.items():
            reqs = self._paged(region, "describe_spot_instance_requests", "SpotInstanceRequests",
                               Filters=[{"Name": "instance-id", "Values": sorted(ids)}])
            for r in reqs:
                if r.get("Status", {}).get("Code") in _NOTICE_CODES and r.get("InstanceId") in ids:
                    out.append(Notice(ids[r["InstanceId"]], now + SPOT_NOTICE_S))
        return out

    def close(self) -> None:
        self._clients.clear()

    def _instance(self, region: str, i: Mapping[str, Any]) -> Instance:
        tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
        state = i.get("State", {}).get("Name", "pending")
        host = i.get("PrivateIpAddress") if self.use_private_ip else i.get("PublicIpAddress")
        launched = i.get("LaunchTime")
        return Instance(
            id=f"{region}/{i['InstanceId']}", provider=self.name, name=tags.get(TAG_NODE, ""),
            state=_ALIVE.get(state, InstanceState.TERMINATED), tags=tags, instance_type=i.get("InstanceType", ""),
            zone=i.get("Placement", {}).get("AvailabilityZone", ""), spot=i.get("InstanceLifecycle") == "spot",
            launched_at=launched.timestamp() if launched else 0.0, host=host or "", port=22,
            ssh_user=self.ssh_user, reason=i.get("StateReason", {}).get("Message", ""),
        )
