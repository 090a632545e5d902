"""What the request handlers (`service.Controller`) may ask of the fleet and of the autoscaler:
narrow views, so that `service` imports neither and the parts are wired once, in `daemon.py`.

`fleet.Fleet` satisfies `FleetView`; `autoscaler.Autoscaler` satisfies `CloudView`. Tests pass
their own small fakes."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from hybridctl.core.burst import BurstDecision, Offer


class FleetView(Protocol):
    """The node sessions, as requests see them."""

    def kick(self, node: str) -> None:
        """Converge `node` now (e.g. stop a cancelled job's processes), not at its next poll."""

    def sync(self) -> None:
        """Start sessions for new nodes, stop those of removed ones."""

    def telemetry(self) -> dict[str, dict[str, Any]]:
        """The latest checked sample per connected node."""

    def link_state(self, node: str) -> tuple[str, Any] | None:
        """(the session's last link error, the hello's `containment`), or None without a session."""

    async def call_agent(self, node: str, op: str, **fields: Any) -> dict[str, Any]:
        """One request to `node`'s agent over its session's link; NodeUnreachable when not connected."""

    def caches(self) -> dict[str, Any]:
        """Per node: its last reported cache (core/locality.NodeCache), the controller's cache index."""

    def runtimes(self) -> dict[str, dict[str, str]]:
        """Per node that said hello: the tools it offers jobs (hello's `runtimes`: uv, podman, ...)."""


class CloudView(Protocol):
    """The autoscaler's last pass, as `cloud status`, `cloud offers` and `show` report it."""

    @property
    def offers(self) -> Sequence[Offer]: ...

    @property
    def errors(self) -> dict[str, str]: ...

    @property
    def last(self) -> BurstDecision | None: ...

    @property
    def last_at(self) -> float | None: ...

    @property
    def leaks(self) -> Sequence[dict[str, Any]]: ...
