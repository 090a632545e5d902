"""The cloud as a simulation sees it, harder than the price list: per-pool reclaim rates (the
catalog's rate for the type, spread x0.5-2 across zones), correlated reclaims (a pool event takes
most of the pool's nodes at once), capacity caps and dry spells (the pool refuses every launch for
hours, and the nodes it held are mostly reclaimed as it dries), spot notices by cloud (AWS 120 s,
GCP and Azure 30 s) and drifting spot prices. Seeded: the same seed gives the same market."""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from hybridctl.cloud.catalog import Catalog
from hybridctl.cloud.simulated import spot_price
from hybridctl.core.burst import Offer

PRICE_REFRESH_S = 600.0
NOTICE_S = {"aws": 120.0, "gcp": 30.0, "azure": 30.0, "other": 30.0}


@dataclass(frozen=True)
class MarketModel:
    reclaim_per_h: float = 0.03
    """Per node-hour, for spot types the catalog gives no rate."""
    zone_spread: float = 2.0
    """A pool's rate is the type's times a factor between 1/spread and spread (log-uniform)."""
    correlated: float = 0.7
    """Each node in a pool goes with this chance when a reclaim event hits the pool."""
    dry_per_day: float = 0.4
    """Dry spells per spot pool per day (8-GPU types twice as often)."""
    dry_mean_h: float = 3.0
    spot_cap: int = 6
    """Spot nodes one pool gives at most (8-GPU types: half)."""
    od_cap: int = 24
    drift: float = 0.2
    boot_s: float = 240.0
    notice_s: Mapping[str, float] = field(default_factory=lambda: dict(NOTICE_S))


class Market:
    def __init__(self, catalog: Catalog, regions: Sequence[str] | None, model: MarketModel, seed: int,
                 horizon: float) -> None:
        self.model = model
        self.seed = seed
        self.base = catalog.offers("sim", regions)
        self.catalog = catalog
        self.horizon = horizon
        self._pools: dict[str, _Pool] = {}
        self._offers: dict[tuple[int, bool, bool], list[Offer]] = {}

    def offers(self, t: float, spot: bool = True, on_demand: bool = True) -> list[Offer]:
        """The offers at `t`, spot prices as of the last 10 minutes (a provider's refresh)."""
        key = (int(t // PRICE_REFRESH_S), spot, on_demand)
        hit = self._offers.get(key)
        if hit is None:
            at = key[0] * PRICE_REFRESH_S
            hit = [replace(o, price_hourly=spot_price(o.price_hourly, o.pool, at, self.model.drift, self.seed))
                   if o.spot else o for o in self.base if (spot if o.spot else on_demand)]
            self._offers = {key: hit}
        return hit

    def price(self, o: Offer, t: float) -> float:
        return spot_price(o.price_hourly, o.pool, t, self.model.drift, self.seed) if o.spot else o.price_hourly

    def notice(self, o: Offer) -> float:
        return self.model.notice_s.get(self.catalog.cloud_of(o.region), 30.0)

    def pool(self, o: Offer) -> _Pool:
        p = self._pools.get(o.pool)
        if p is None:
            p = self._pools[o.pool] = _Pool(o, self.model, self.seed, self.horizon)
        return p

    def refuse(self, o: Offer, t: float, held: int, k: int) -> str:
        """Why launching `k` more nodes of `o` now fails ('' if it does not)."""
        p = self.pool(o)
        cap = (self.model.spot_cap if o.spot else self.model.od_cap) // (2 if o.gpus >= 8 else 1)
        if held + k > max(cap, 1):
            return "capacity"
        if o.spot and p.dry(t):
            return "dry spell"
        return ""

    def reclaim_at(self, o: Offer, name: str, t: float) -> float | None:
        """When a spot node launched at `t` is reclaimed (None: not within the horizon)."""
        return self.pool(o).reclaim_after(name, t) if o.spot else None


class _Pool:
    def __init__(self, o: Offer, m: MarketModel, seed: int, horizon: float) -> None:
        rng = random.Random(f"{seed}/{o.pool}")
        self.q = m.correlated
        rate = (o.reclaim_per_h if o.reclaim_per_h is not None else m.reclaim_per_h)
        rate *= math.exp(rng.uniform(-math.log(m.zone_spread), math.log(m.zone_spread)))
        self.rate = rate
        self.events: list[float] = []
        self.spells: list[tuple[float, float]] = []
        end = horizon + 14 * 86400
        if o.spot:
            ev = rate / self.q / 3600.0  # pool events per second
            t = 0.0
            while ev > 0:
                t += rng.expovariate(ev)
                if t > end:
                    break
                self.events.append(t)
            per_s = m.dry_per_day * (2 if o.gpus >= 8 else 1) / 86400.0
            t = 0.0
            while per_s > 0:
                t += rng.expovariate(per_s)
                if t > end:
                    break
                length = rng.expovariate(1.0 / (m.dry_mean_h * 3600.0))
                self.spells.append((t, t + length))
                self.events.append(t)  # drying up reclaims the pool's nodes
                t += length
            self.events.sort()
        self.starts = [a for a, _ in self.spells]

    def dry(self, t: float) -> bool:
        i = bisect.bisect_right(self.starts, t) - 1
        return i >= 0 and self.spells[i][0] <= t < self.spells[i][1]

    def reclaim_after(self, name: str, t: float) -> float | None:
        rng = random.Random(name)
        i = bisect.bisect_right(self.events, t)
        for e in self.events[i:]:
            if rng.random() < self.q:
                return e
        return None
