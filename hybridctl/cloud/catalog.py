"""The offer catalog: instance types (GPU model and count, vCPUs, memory) and their on-demand and
spot $/h per region and zone, read from a YAML snapshot (`hybridctl/cloud/offers.yaml`). Providers turn
it into `Offer`s and refresh what their API allows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from hybridctl.config import ConfigError
from hybridctl.core.burst import Offer
from hybridctl.textfile import NotText, read_text


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpu_type: str | None
    gpus: int
    cpus: float
    memory_mb: int


@dataclass(frozen=True)
class Price:
    """One catalog price: type in a zone (spot) or a region (on-demand; `zone` is then every zone)."""

    instance_type: str
    region: str
    zone: str
    spot: bool
    price_hourly: float


@dataclass(frozen=True)
class Catalog:
    types: Mapping[str, InstanceType]
    prices: tuple[Price, ...]
    zones: Mapping[str, tuple[str, ...]]
    """Region -> its zones."""
    snapshot: str = ""
    clouds: Mapping[str, str] = field(default_factory=dict)
    """Region -> the cloud that sells it ('aws', 'gcp', 'azure'; `cloud:` in the file, default aws):
    what a simulation takes the spot notice length from (AWS 120 s, GCP and Azure 30 s)."""
    reclaim_per_h: Mapping[str, float] = field(default_factory=dict)
    """Instance type -> expected spot reclaims per node-hour (`interruptions:` in the file), the
    rate the burst policy prices a reclaim at; types not listed use `cloud.burst.reclaim_per_h`."""

    def cloud_of(self, region: str) -> str:
        return self.clouds.get(region, "aws")

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self.zones)

    def offers(self, provider: str, regions: Iterable[str] | None = None) -> list[Offer]:
        """Every (type, zone, market) priced in the catalog, as `provider`'s offers. On-demand
        prices are per region: one offer per zone that also sells the type as spot (or per zone
        of the region when no zone sells it as spot)."""
        wanted = set(regions) if regions else None
        out: list[Offer] = []
        spot_zones: dict[tuple[str, str], list[str]] = {}
        for p in self.prices:
            if p.spot:
                spot_zones.setdefault((p.region, p.instance_type), []).append(p.zone)
        for p in self.prices:
            if wanted is not None and p.region not in wanted:
                continue
            t = self.types[p.instance_type]
            zones = [p.zone] if p.spot else spot_zones.get((p.region, p.instance_type)) or list(self.zones[p.region])
            for zone in zones:
                out.append(Offer(provider, t.name, p.region, zone, t.gpu_type, t.gpus, t.cpus, t.memory_mb,
                                 p.spot, p.price_hourly, self.reclaim_per_h.get(t.name) if p.spot else None))
        return out


CLOUDS = ("aws", "gcp", "azure", "other")


def default_path() -> Path:
    """The catalog shipped with hybridctl (package data, so wheel installs have it too)."""
    return Path(__file__).resolve().parent / "offers.yaml"


def load(path: Path | None = None) -> Catalog:
    """Read and check a catalog file; errors name the file and the key."""
    import yaml

    path = path or default_path()
    try:
        data = yaml.safe_load(read_text(path)) or {}
    except NotText as exc:
        raise ConfigError(f"{exc.message}; set cloud.catalog to a UTF-8 file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the offer catalog ({exc.strerror}); set cloud.catalog") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML syntax error: {exc}") from exc
    return parse(data, str(path))


def parse(data: Any, source: str) -> Catalog:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with instance_types and regions")
    types: dict[str, InstanceType] = {}
    for name, t in _mapping(data.get("instance_types"), source, "instance_types").items():
        where = f"instance_types.{name}"
        t = _mapping(t, source, where)
        try:
            gpus = int(t.get("gpus", 0))
            cpus = float(t["vcpus"])
            mem = int(float(t["memory_gb"]) * 1024)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {where}: needs numbers gpus, vcpus and memory_gb ({exc})") from None
        gpu = t.get("gpu")
        if gpus and not gpu:
            raise ConfigError(f"{source}: {where}.gpu: a type with GPUs must name their model, e.g. L40S")
        types[str(name)] = InstanceType(str(name), str(gpu) if gpu else None, gpus, cpus, mem)
    prices: list[Price] = []
    zones: dict[str, tuple[str, ...]] = {}
    clouds: dict[str, str] = {}
    rates: dict[str, float] = {}
    for name, rate in _mapping(data.get("interruptions") or {}, source, "interruptions").items():
        _known(types, name, source, "interruptions")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate < 0:
            raise ConfigError(f"{source}: interruptions.{name}: {rate!r} is not a rate (reclaims per node-hour, >= 0)")
        rates[str(name)] = float(rate)
    for region, r in _mapping(data.get("regions"), source, "regions").items():
        where = f"regions.{region}"
        r = _mapping(r, source, where)
        zs = r.get("zones") or [str(region)]
        if not isinstance(zs, list) or not all(isinstance(z, str) for z in zs):
            raise ConfigError(f"{source}: {where}.zones: expected a list of zone names")
        zones[str(region)] = tuple(zs)
        cloud = r.get("cloud", "aws")
        if cloud not in CLOUDS:
            raise ConfigError(f"{source}: {where}.cloud: {cloud!r}; accepted: {', '.join(CLOUDS)}")
        clouds[str(region)] = str(cloud)
        for name, price in _mapping(r.get("on_demand") or {}, source, f"{where}.on_demand").items():
            _known(types, name, source, f"{where}.on_demand")
            prices.append(Price(str(name), str(region), "", False, _price(price, source, f"{where}.on_demand.{name}")))
        for name, per_zone in _mapping(r.get("spot") or {}, source, f"{where}.spot").items():
            _known(types, name, source, f"{where}.spot")
            if not isinstance(per_zone, list) or len(per_zone) != len(zs):
                raise ConfigError(f"{source}: {where}.spot.{name}: expected one price (or null) per zone, {len(zs)} in all")
            for zone, price in zip(zs, per_zone):
                if price is not None:
                    prices.append(Price(str(name), str(region), zone, True,
                                        _price(price, source, f"{where}.spot.{name}")))
    return Catalog(types, tuple(prices), zones, str(data.get("snapshot") or ""), clouds, rates)


def _mapping(value: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {value!r}")
    return value


def _known(types: Mapping[str, InstanceType], name: object, source: str, where: str) -> None:
    if name not in types:
        raise ConfigError(f"{source}: {where}.{name}: not listed under instance_types")


def _price(value: Any, source: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{source}: {where}: {value!r} is not a price in $/h (a number > 0)")
    return float(value)
