"""The cloud provider port: what the autoscaler needs from any cloud (offers, launch, describe,
list, terminate, preemption notices), with the contract in the docstrings, and the errors a
provider may raise. One contract test suite (tests/cloud/test_contract.py) runs over every
implementation."""

from __future__ import annotations

import abc
import builtins
import enum
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from hybridctl.core.burst import Offer
from hybridctl.core.errors import HybridctlError

__all__ = [
    "CloudError", "CapacityError", "NotReady", "LaunchFailed", "ProviderUnavailable",
    "Instance", "LaunchSpec", "Notice", "CloudProvider", "TAG_CLUSTER", "TAG_NODE", "Offer",
    "InstanceState", "CloudNodeState",
]

TAG_CLUSTER = "hybridctl-cluster"
"""Tag key on everything hybridctl creates; the value is `cloud.cluster`. Leak sweeps list by it."""
TAG_NODE = "hybridctl-node"
"""Tag key naming the node an instance was launched to become (chosen before the launch)."""


class _StrEnum(str, enum.Enum):
    """Equal to its value ('running' == InstanceState.RUNNING), and printed, formatted, stored in
    SQLite and JSON as it: code that still compares with the bare strings keeps working."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = str.__format__


class InstanceState(_StrEnum):
    """An instance as its provider reports it (`Instance.state`). Providers map their own words onto
    these three: EC2's stopping/shutting-down/stopped count as TERMINATED."""

    PENDING = "pending"
    RUNNING = "running"
    TERMINATED = "terminated"


class CloudNodeState(_StrEnum):
    """The controller's record of one launch (`cloud_instances.state`), from the order to the end."""

    LAUNCHING = "launching"
    """Recorded before the provider is asked (a crash cannot leak an unknown instance)."""
    BOOTSTRAPPING = "bootstrapping"
    """The provider accepted; the agent is being installed and the node added."""
    UP = "up"
    """A fleet node that takes jobs."""
    DRAINING = "draining"
    """Being given back: no new jobs; terminated once its jobs are gone."""
    TERMINATED = "terminated"
    FAILED = "failed"
    """Never became a node (launch refused, bootstrap failed)."""

    @property
    def gone(self) -> bool:
        return self in GONE


GONE = frozenset({CloudNodeState.TERMINATED, CloudNodeState.FAILED})
"""Record states that hold no machine any more (what `cloud_instances(live=True)` leaves out)."""


class CloudError(HybridctlError):
    """A cloud provider call failed."""


class CapacityError(CloudError):
    """Retryable: the pool has no capacity (or the spot market refused) right now. The autoscaler
    backs that pool off for `burst.backoff` seconds (after a gang of k nodes: k times as long, and
    only for k nodes or more) and tries the next offer; nothing is marked failed."""


class NotReady(CloudError):
    """Retryable: the instance exists but is not usable yet (no address, still booting)."""


class LaunchFailed(CloudError):
    """The launch was refused for a reason other than capacity (bad image, permissions, quota)."""


class ProviderUnavailable(CloudError):
    """The provider's API could not be reached or answered garbage; try again later."""


@dataclass(frozen=True)
class LaunchSpec:
    """What to launch."""

    offer: Offer
    name: str
    """The node name the instance will join as; also its `TAG_NODE` tag."""
    tags: Mapping[str, str]
    """Tags to put on the instance and everything created with it (volumes, spot requests)."""
    ssh_public_key: str
    """OpenSSH public key the controller will log in with."""
    orphan_timeout: float = 0.0
    """Seconds without a controller request after which the node's agent shuts it down (0 = never)."""


@dataclass(frozen=True)
class Instance:
    """One instance as the provider reports it."""

    id: str
    provider: str
    name: str
    """The node name (from its `TAG_NODE` tag), or '' for an instance hybridctl did not name."""
    state: InstanceState
    """PENDING, RUNNING or TERMINATED (EC2's stopping/shutting-down count as terminated)."""
    tags: Mapping[str, str] = field(default_factory=dict)
    instance_type: str = ""
    zone: str = ""
    spot: bool = True
    launched_at: float = 0.0
    host: str = ""
    """Address to SSH to; '' until known."""
    port: int = 22
    ssh_user: str = ""
    host_key: str = ""
    """The SSH host key ('ssh-ed25519 AAAA...') when the provider knows it out of band (the
    simulated machine's node.json, a cloud-init report); '' = learn it on first contact."""
    agent_socket: str = ""
    """Where the node's agent listens when the image already runs one; '' = bootstrap installs it."""
    declared_shape: bool = False
    """The node's agent reports the host's CPUs and memory rather than the offer's (simulated
    machines share one host): the controller records the offer's shape instead."""
    reason: str = ""
    """Why it ended, when the provider knows (e.g. 'preempted')."""

    @property
    def alive(self) -> bool:
        return self.state in (InstanceState.PENDING, InstanceState.RUNNING)


SPOT_RECLAIM = "spot preemption"


@dataclass(frozen=True)
class Notice:
    """The provider will reclaim `instance_id` at `at` (seconds since the epoch)."""

    instance_id: str
    at: float
    reason: str = SPOT_RECLAIM


def says_reclaimed(why: str) -> bool:
    """Whether a provider's reason for an instance's end (`Instance.reason`) is a spot reclaim:
    'preempted' (the simulated cloud's, GCP's word) or AWS's state reasons
    Server.SpotInstanceTermination and Server.SpotInstanceShutdown."""
    w = why.lower()
    return "preempt" in w or "spotinstancetermination" in w or "spotinstanceshutdown" in w


def reclaimed(reason: str) -> bool:
    """Whether the reason an instance was given back for (`cloud_instances.reason`) records a spot
    reclaim: a notice's ('spot preemption of gpu-3 (aws) at 10:02:11'), or an instance found gone
    whose provider says it was reclaimed ('gone: preempted'). Written by the controller from what
    the provider said, never from what a node says."""
    return reason.startswith(SPOT_RECLAIM) or (reason.startswith("gone: ") and says_reclaimed(reason))


class CloudProvider(abc.ABC):
    """One cloud (or VM pool). Every method may block (HTTP, subprocesses): the controller calls
    them in a worker thread, one call at a time per provider. Implementations must be safe to call
    from a thread other than the one that created them."""

    name: str = ""

    @abc.abstractmethod
    def offers(self, refresh: bool = False) -> builtins.list[Offer]:
        """Every offer this provider can sell now: one per (instance type, zone, market), with the
        current $/h. `refresh=True` asks the API for current prices and availability where it
        can (otherwise the catalog snapshot is used). Raises ProviderUnavailable."""

    @abc.abstractmethod
    def launch(self, spec: LaunchSpec) -> Instance:
        """Start one instance of `spec.offer`, tagged with `spec.tags` and `TAG_NODE` = `spec.name`,
        accepting `spec.ssh_public_key`. Returns at once, usually with state 'pending'.

        Raises CapacityError when the pool has no capacity or the spot market refuses (retryable:
        the caller tries another offer and backs this pool off), LaunchFailed for any other
        refusal. Must not leave a running instance behind when it raises."""

    @abc.abstractmethod
    def describe(self, instance_id: str) -> Instance:
        """The instance now. An instance that is gone (or never existed) is returned with state
        'terminated', never an error. Raises NotReady only where the provider cannot tell yet."""

    @abc.abstractmethod
    def list(self, tags: Mapping[str, str]) -> builtins.list[Instance]:
        """Every instance, not yet terminated, carrying all of `tags`, including ones this process
        did not launch (that is how leaks are found)."""

    @abc.abstractmethod
    def terminate(self, instance_id: str) -> None:
        """Terminate the instance. Idempotent: an instance already terminated, or unknown, is not
        an error. Returns once the provider accepted the request."""

    def preemption_notices(self, instance_ids: Sequence[str]) -> builtins.list[Notice]:
        """Instances among `instance_ids` the provider has announced it will reclaim. Default: the
        provider gives no notice (instances simply disappear from `list`)."""
        return []

    def close(self) -> None:
        """Release clients and threads; the provider is not used afterwards."""
