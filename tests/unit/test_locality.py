"""core/locality.py: the pure cache-aware scorer (bytes a placement moves, time it costs, waiting
for a warm node within locality.max_wait, off at weight 0)."""

from __future__ import annotations

import pytest

from hybridctl.core.locality import CacheIndex, LocalityPolicy, Need, choose, score

GB = 10**9
NEED = Need({"env:e1": 2 * GB, "obj:d1": 12 * GB, "ckpt:7": 1 * GB})
SITES = {"n1": "onprem", "n2": "onprem", "n3": "onprem", "c1": "cloud"}
HELD = CacheIndex({"n2": ["env:e1", "obj:d1"], "n3": ["env:e1"], "c1": []})
ON = LocalityPolicy(weight=1.0, max_wait_s=120.0, bandwidth_bps={"onprem": 1e8, "cloud": 1e7})


def test_weight_zero_behaves_as_today_first_fitting_node() -> None:
    off = LocalityPolicy(weight=0.0)
    d = choose(NEED, ["n1", "n2"], {"n3": 1.0}, SITES, HELD, off, waited_s=0)
    assert (d.node, d.reason) == ("n1", "first fitting node (locality off)")


def test_the_warmest_free_node_wins_and_show_says_why() -> None:
    d = choose(NEED, ["n1", "n3", "n2"], {}, SITES, HELD, ON, waited_s=0)
    assert d.node == "n2"
    assert d.reason == "n2: env warm, data 12 GB warm, moves 1 GB (~10 s)"
    assert d.saved_s == pytest.approx(150 - 10)


def test_scores_are_bytes_moved_at_the_sites_bandwidth() -> None:
    got = [(c.node, c.missing_bytes, c.seconds) for c in score(NEED, ["c1", "n1", "n3", "n2"], SITES, HELD, ON)]
    assert got == [("n2", 1 * GB, 10.0), ("n3", 13 * GB, 130.0), ("n1", 15 * GB, 150.0), ("c1", 15 * GB, 1500.0)]


@pytest.mark.parametrize("free_in, waited, waits", [
    (30.0, 0.0, True),     # 30 s + 10 s of transfer beats 150 s now
    (30.0, 100.0, False),  # but never past max_wait (100 + 30 > 120)
    (145.0, 0.0, False),   # beyond max_wait on its own
])
def test_a_job_waits_for_a_busy_warm_node_only_within_max_wait(free_in: float, waited: float, waits: bool) -> None:
    d = choose(NEED, ["n1"], {"n2": free_in}, SITES, HELD, ON, waited_s=waited)
    assert (d.node is None) == waits, d
    if waits:
        assert d.reason == "waiting up to 30 s for n2: env warm, data 12 GB warm, moves 1 GB (~10 s)"
        assert d.saved_s == pytest.approx(140.0)
    else:
        assert d.node == "n1"


def test_no_wait_when_a_free_node_is_as_warm() -> None:
    d = choose(NEED, ["n1", "n2"], {"n3": 1.0}, SITES, HELD, ON, waited_s=0)
    assert d.node == "n2"


def test_a_job_with_nothing_to_move_takes_the_first_node() -> None:
    assert choose(Need({}), ["n1", "n2"], {}, SITES, HELD, ON, 0).node == "n1"
    assert choose(NEED, [], {}, SITES, HELD, ON, 0).node is None


def test_a_cache_listing_is_checked_and_becomes_artifacts() -> None:
    from hybridctl.core.locality import parse_cache_listing

    sha, env = "a" * 64, "b" * 32
    cache, problems = parse_cache_listing({
        "objects": [{"sha256": sha, "size": 10, "last_used": 1.0}, {"sha256": "../x", "size": 1},
                    {"sha256": "c" * 64, "size": -1}],
        "envs": [{"hash": env, "bytes": 5, "uid": 0}], "max_bytes": 100})
    assert cache is not None and cache.artifacts() == {f"obj:{sha}": 10, f"env:{env}": 5}
    assert cache.summary() == {"objects": 1, "object_bytes": 10, "envs": 1, "env_bytes": 5, "max_bytes": 100}
    assert problems == ["cache_list.objects[1]: not {sha256: hex, size: bytes}",
                        "cache_list.objects[2]: not {sha256: hex, size: bytes}"]
    assert parse_cache_listing([]) == (None, ["cache_list: not an object"])
    index = CacheIndex({"n1": cache.artifacts()})
    assert index.warm_bytes(Need({f"env:{env}": 5, "obj:zz": 7})) == {"n1": 5}
