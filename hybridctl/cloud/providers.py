"""Build the configured providers from settings (`cloud.providers`), importing each provider's
module (and its SDK) only when it is configured."""

from __future__ import annotations

from pathlib import Path

from hybridctl.cloud.base import CloudProvider, LaunchFailed
from hybridctl.cloud.catalog import Catalog, load
from hybridctl.config import ConfigError, Settings

KNOWN = ("simulated", "aws", "command")


def catalog(settings: Settings) -> Catalog:
    c = settings.cloud.catalog
    return load(Path(c).expanduser() if c else None)


def simulated_root(settings: Settings) -> Path:
    """Where the simulated provider's machines live: `cloud.simulated.dir`, else beside the state
    directory (`<home>-simulated`, /var/lib/hybridctl-simulated under the shipped unit, which makes
    both its StateDirectory), not in it: that one stays 0700 (`paths.make_private`), and other
    users' jobs must reach their working directories on the machines."""
    s = settings.cloud.simulated
    home = settings.home_path
    return Path(s.dir).expanduser() if s.dir else home.with_name(f"{home.name}-simulated")


def build(settings: Settings) -> dict[str, CloudProvider]:
    """name -> provider for every entry of `cloud.providers`; ConfigError names a bad entry."""
    cfg = settings.cloud
    cat = catalog(settings)
    out: dict[str, CloudProvider] = {}
    for name in cfg.providers:
        if name in out:
            continue
        if name == "simulated":
            from hybridctl.cloud.simulated import SimulatedProvider

            s = cfg.simulated
            root = simulated_root(settings)
            try:
                out[name] = SimulatedProvider(
                    root, cat, launch_delay=s.launch_delay, capacity_per_pool=s.capacity_per_pool,
                    capacity_errors=s.capacity_errors, preemption_rate_per_h=s.preemption_rate_per_h,
                    preemption_warning=s.preemption_warning, price_drift=s.price_drift, seed=s.seed,
                    agent_interval=s.agent_interval, agent_config=s.agent_config,
                )
            except LaunchFailed as exc:  # its directory is unsafe: a setting to change
                raise ConfigError(exc.message) from None
        elif name == "aws":
            try:
                from hybridctl.cloud.aws import AwsProvider
            except ImportError as exc:
                raise ConfigError(
                    f"cloud.providers: aws needs boto3 ({exc.name} is not installed): pip install 'hybridctl[aws]'"
                ) from exc
            a = cfg.aws
            out[name] = AwsProvider(
                cat, a.regions, a.image_id, key_name=a.key_name, security_group_ids=a.security_group_ids,
                ssh_user=a.ssh_user, use_private_ip=a.use_private_ip, endpoint_url=a.endpoint_url,
                bootstrap_deadline_min=int(cfg.bootstrap_timeout // 60) + 5,
            )
        elif name == "command":
            from hybridctl.cloud.command import CommandProvider

            c = cfg.command
            out[name] = CommandProvider(c.create, c.delete, c.list, c.offers, catalog=cat, timeout=c.timeout,
                                        ssh_user=c.ssh_user)
        else:
            raise ConfigError(f"cloud.providers: unknown provider {name!r}; accepted: {', '.join(KNOWN)}")
    return out
