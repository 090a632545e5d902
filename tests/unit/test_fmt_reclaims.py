"""`fmt.reclaims_above_price`: a spot pool is flagged when its reclaims are more than the rate a
reclaim there is priced at explains by chance (a Poisson upper tail under 5 %)."""

from __future__ import annotations

import math

import pytest

from hybridctl.fmt import reclaims_above_price


def tail(k: int, expected: float) -> float:
    """P(N >= k) for N ~ Poisson(expected), summed upward (the function sums the other way)."""
    return sum(math.exp(-expected + i * math.log(expected) - math.lgamma(i + 1)) for i in range(k, k + 200))


def pool(reclaims: int, node_hours: float, priced: float = 0.06) -> dict[str, float]:
    return {"reclaims": reclaims, "node_hours": node_hours, "priced_per_node_hour": priced}


@pytest.mark.parametrize("reclaims,node_hours", [(2, 20.0), (6, 40.0), (1, 0.01), (3, 10.0), (4, 10.0), (9, 50.0),
                                                 (1, 1.0), (40, 400.0)])
def test_the_flag_is_a_poisson_tail_under_five_percent(reclaims: int, node_hours: float) -> None:
    assert reclaims_above_price(pool(reclaims, node_hours)) == (tail(reclaims, 0.06 * node_hours) < 0.05)


def test_the_edges() -> None:
    assert not reclaims_above_price(pool(0, 0.0))  # nothing held, nothing seen
    assert not reclaims_above_price(pool(0, 500.0))  # quiet: below its price is never flagged
    assert reclaims_above_price(pool(1, 3.0, priced=0.0))  # priced never to reclaim, and it did
    assert not reclaims_above_price(pool(2, 20.0))  # 1.2 expected: 2 or more come 34 % of the time
    assert reclaims_above_price(pool(6, 40.0))  # 2.4 expected: 6 or more, 3.6 %
