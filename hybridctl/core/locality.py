"""Cache-aware placement, as a pure scorer: which candidate node would move the fewest bytes for a
job's world (its environment, its file_mounts, its checkpoint), what that costs in seconds, and
whether waiting a little for a busy warm node beats a cold free one, never past
`locality.max_wait`. Inputs are what the agents report in `cache_list` (the controller's cache
index) and what the job needs, each keyed by an artifact id:

    "env:<hash>"       an environment built on the node (envs.py)
    "obj:<sha256>"     a data object in the node's content cache (cache.py)
    "s3:<bucket/key@etag>"   an S3 object fetched there (the agent's source index)
    "ckpt:<job>"       the job's checkpoint last seen on that node
    "src:<uid>:<path>" a local file_mount the controller has not read yet (its contents unknown):
                       held where the scheduler last placed a job naming it

With `weight` 0 the scorer is off: `choose` returns the first free candidate, exactly the order
the scheduler gave. Pure: no I/O, no clock (the caller passes how long the job has waited)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LocalityPolicy:
    """The `locality:` settings."""

    weight: float = 0.0
    """0: placement ignores caches (today's behaviour). 1: a second of transfer counts as a second
    of waiting; higher values prefer warm nodes harder."""
    max_wait_s: float = 120.0
    """Longest a job is held back waiting for a busy warm node (`locality.max_wait`)."""
    bandwidth_bps: Mapping[str, float] = field(default_factory=lambda: {"onprem": 1.0e9, "cloud": 1.0e8})
    """Bytes per second a node of each site receives a job's world at (controller link, object store)."""


@dataclass(frozen=True)
class Need:
    """What one job needs on its node: artifact id -> bytes."""

    items: Mapping[str, int]
    total: int = field(init=False, compare=False)
    key: tuple[tuple[str, int], ...] = field(init=False, compare=False, repr=False)
    """The items in a canonical order: a pass memoises per distinct need by it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum(self.items.values()))
        object.__setattr__(self, "key", tuple(sorted(self.items.items())))


@dataclass(frozen=True)
class Candidate:
    """One node scored for one job."""

    node: str
    missing_bytes: int
    """Bytes a placement there would move."""
    seconds: float
    """What moving them costs at the node's site bandwidth."""
    warm: tuple[str, ...]
    """The artifact ids the node already holds."""


@dataclass(frozen=True)
class LocalityDecision:
    """Place on `node` now, or (node None) wait for a warm node that frees up soon."""

    node: str | None
    reason: str
    saved_s: float = 0.0
    """Transfer time saved against the coldest choice the scheduler would have made."""


class CacheIndex:
    """Who holds what, inverted (artifact -> nodes), so scoring a job costs the holders of its few
    artifacts, not nodes x artifacts: 10k jobs x 1k nodes stays within a scheduling pass."""

    def __init__(self, held: Mapping[str, Iterable[str]]) -> None:
        self.by_artifact: dict[str, set[str]] = {}
        for node, ids in held.items():
            for a in ids:
                self.by_artifact.setdefault(a, set()).add(node)
        self._memo: dict[tuple[tuple[str, int], ...], dict[str, int]] = {}
        self._ranked: dict[tuple[tuple[str, int], ...], list[tuple[float, str]]] = {}
        self._keys: dict[str, set[tuple[tuple[str, int], ...]]] = {}
        """artifact -> the memoised needs that name it (what `add` must forget)."""
        self._own = False
        """Whether `by_artifact` is this index's own (a caller may hand in a shared one: `add`
        copies it first, and never changes a set in place)."""

    def warm_bytes(self, need: Need) -> dict[str, int]:
        """Per node holding any of the job's artifacts: the bytes it already has. Memoised per
        distinct need (repeated jobs, array tasks): an index lives for one scheduling pass."""
        key = need.key
        out = self._memo.get(key)
        if out is None:
            out = {}
            for a, size in need.items.items():
                for node in self.by_artifact.get(a, ()):
                    out[node] = out.get(node, 0) + size
                self._keys.setdefault(a, set()).add(key)
            self._memo[key] = out
        return out

    def ranked(self, need: Need, sites: Mapping[str, str], bw: Mapping[str, float]) -> list[tuple[float, str]]:
        """The warm nodes of `need` as (transfer seconds, node), cheapest first (memoised too)."""
        key = need.key
        out = self._ranked.get(key)
        if out is None:
            total = need.total
            out = sorted(((total - b) / (bw.get(sites.get(n, "onprem"), 1.0e9) or 1.0e9), n)
                         for n, b in self.warm_bytes(need).items())
            self._ranked[key] = out
        return out

    def add(self, node: str, ids: Iterable[str]) -> None:
        """`node` holds `ids` from now on (a placement made in this pass): the memos of the needs
        that name one of them are dropped (found through `_keys`, not by a scan of every memo)."""
        if not self._own:
            self.by_artifact = dict(self.by_artifact)
            self._own = True
        for a in set(ids):
            self.by_artifact[a] = {*self.by_artifact.get(a, ()), node}
            for key in self._keys.pop(a, ()):
                self._memo.pop(key, None)
                self._ranked.pop(key, None)

    def warm(self, node: str, need: Need) -> tuple[str, ...]:
        return tuple(a for a in need.items if node in self.by_artifact.get(a, ()))


def score(need: Need, nodes: Sequence[str], sites: Mapping[str, str], index: CacheIndex,
          policy: LocalityPolicy) -> list[Candidate]:
    """`nodes` scored by transfer time, cheapest first; ties keep the given order."""
    warm = index.warm_bytes(need)
    out = []
    for n in nodes:
        missing = need.total - warm.get(n, 0)
        bw = policy.bandwidth_bps.get(sites.get(n, "onprem"), 1.0e9) or 1.0e9
        out.append(Candidate(n, missing, missing / bw, index.warm(n, need) if n in warm else ()))
    return sorted(out, key=lambda c: c.seconds)  # sorted() is stable


def _candidate(node: str, need: Need, warm_bytes: int, sites: Mapping[str, str], index: CacheIndex,
               policy: LocalityPolicy) -> Candidate:
    missing = need.total - warm_bytes
    bw = policy.bandwidth_bps.get(sites.get(node, "onprem"), 1.0e9) or 1.0e9
    return Candidate(node, missing, missing / bw, index.warm(node, need) if warm_bytes else ())


def choose(need: Need, free: Sequence[str], busy: Mapping[str, float], sites: Mapping[str, str],
           index: CacheIndex, policy: LocalityPolicy, waited_s: float,
           rank: Mapping[str, int] | None = None) -> LocalityDecision:
    """Pick among `free` nodes (the scheduler's fitting candidates, in its order), or wait for a
    node of `busy` ({node: seconds until it frees up, as the scheduler estimates}) that is warm
    enough to be worth it: wait when (its free-in time + its transfer) beats the best free node's
    transfer time weighted by `weight`, and the job's total wait stays within `max_wait_s`.
    `rank` ({node: position in `free`}) may be passed in, computed once per pass: then a job costs
    the holders of its artifacts plus the first free node of each site, not len(free)."""
    if policy.weight <= 0 or need.total == 0:
        if free:
            return LocalityDecision(free[0], "first fitting node (locality off)" if policy.weight <= 0
                                    else "nothing to move")
        return LocalityDecision(None, "no free node")
    if rank is None:
        rank = {n: i for i, n in enumerate(free)}
    warm = index.warm_bytes(need)
    cands: list[Candidate] = []
    seen_sites: set[str] = set()
    for n in free:  # the cold choice: the scheduler's first node of each site (they all cost the same)
        site = sites.get(n, "onprem")
        if site not in seen_sites:
            seen_sites.add(site)
            cands.append(_candidate(n, need, warm.get(n, 0), sites, index, policy))
            if len(seen_sites) == len(policy.bandwidth_bps):
                break
    coldest = max((c.seconds for c in cands if not c.warm), default=0.0)
    # The cheapest warm free node (ties: the scheduler's order); a Candidate for it alone.
    top = None
    for sec, n in index.ranked(need, sites, policy.bandwidth_bps):
        if top is not None and sec > top[0]:
            break
        if n in rank and (top is None or rank[n] < top[1]):
            top = (sec, rank[n], n)
    if top is not None and (not cands or (top[0], top[1]) < min((c.seconds, rank.get(c.node, 0)) for c in cands)):
        cands = [_candidate(top[2], need, warm[top[2]], sites, index, policy)]
    best = min(cands, key=lambda c: (c.seconds, rank.get(c.node, 0)), default=None)
    waits = sorted((_candidate(n, need, b, sites, index, policy) for n, b in warm.items() if n in busy),
                   key=lambda c: busy[c.node] + c.seconds * policy.weight) if busy else []
    for c in waits:
        wait = busy[c.node]
        if waited_s + wait > policy.max_wait_s:
            continue
        stay = best.seconds * policy.weight if best is not None else float("inf")
        if wait + c.seconds * policy.weight < stay:
            return LocalityDecision(None, f"waiting up to {_dur(wait)} for {c.node}: {describe(c, need)}",
                                    saved_s=(best.seconds if best else 0.0) - c.seconds)
        break
    if best is None:
        return LocalityDecision(None, "no free node")
    return LocalityDecision(best.node, f"{best.node}: {describe(best, need)}", saved_s=max(0.0, coldest - best.seconds))


MAX_LOOK = 12
"""Warm nodes one task looks at past its cursor (the warmest first): bounds a pass's cost when
most warm nodes are busy; the rest are looked at by the next tasks of the same need and shape."""
COMING_KEPT = 4
"""Nodes per data object a pass remembers as receiving it (`LocalityView.hold`), newest kept."""


@dataclass
class LocalityView:
    """What one scheduling pass needs for cache-aware placement (`ClusterView.locality`), built
    once per pass by the controller; None there = locality off (weight 0), today's behaviour."""

    index: CacheIndex
    policy: LocalityPolicy
    sites: Mapping[str, str]
    """node -> its site ("onprem", "cloud"): what bandwidth a transfer to it gets."""
    free_in: dict[str, float] = field(default_factory=dict)
    """node -> seconds until the first task running there is expected to end (busy nodes only);
    the pass adds the nodes it fills (with the placed task's expected runtime)."""
    room: dict[str, int] = field(default_factory=dict)
    """node -> bytes its capped data cache can still take without evicting (nodes with a cap
    only); a cold placement prefers a node with room for what it moves. The pass deducts."""
    runtimes: Mapping[int, float] = field(default_factory=dict)
    """job id -> its tasks' expected run time from history (core/estimate.py, no time limit):
    a task that waits for a busy node takes its place in line there, so the next task that
    would wait for it sees it free that much later (places in line)."""
    _cursors: dict[tuple[object, ...], list[object]] = field(default_factory=dict, repr=False)
    _roomy: list[str] | None = field(default=None, repr=False)
    _cursor_keys: dict[str, set[tuple[object, ...]]] = field(default_factory=dict, repr=False)
    _coming: dict[str, list[str]] = field(default_factory=dict, repr=False)
    """artifact -> the nodes this pass placed a task on that brings it there (`hold`)."""
    _said: dict[tuple[object, str], str] = field(default_factory=dict, repr=False)

    def hold(self, node: str, need: Need) -> None:
        """A task placed on `node` will bring what it lacks there (its data, its environment, its
        not-yet-hashed sources): later tasks of this pass that need them see `node` as warm (the
        controller's WillHold carries this to the next passes until the node's report says so).
        Not-yet-hashed sources go into the index (rare); data objects into `_coming` (the last
        COMING_KEPT nodes per object), which `place` looks at directly: putting them into the index
        would re-rank every need that shares them after each cold placement (~250 ms more for a
        10k x 1k pass). Environments are not followed within a pass (WillHold does from the next)."""
        by = self.index.by_artifact
        ids = [a for a in need.items if node not in by.get(a, ())]
        for a in ids:
            if a.startswith("obj:"):
                near = self._coming.setdefault(a, [])
                if node not in near:
                    near.append(node)
                    if len(near) > COMING_KEPT:
                        del near[0]
        ids = [a for a in ids if a.startswith("src:")]
        if ids:
            self.index.add(node, ids)
            for a in ids:
                for key in self._cursor_keys.pop(a, ()):
                    self._cursors.pop(key, None)

    def place(self, need: Need, cold: str, fits: Callable[[str], bool | None], gone: Callable[[str], bool],
              kind: object, waited_s: float, job: int | None = None,
              runtime_s: float | None = None) -> LocalityDecision:
        """Where a single-node task needing `need` should go, given the node the scheduler would
        pick cache-blind (`cold`, which fits) and, per node, `fits(node)`: True if the task fits
        there now, False if it could once the node frees up, None if never (another site, too
        small); `gone(node)`: no task of this `kind` (GPU or CPU-only) fits there any more in this
        pass (free capacity only shrinks within a pass).

        Place on the warm node that moves least if it moves less than `cold`; or wait (node None)
        for a busy warm node when its free-in time + its transfer x weight beats placing now, and
        the task's wait stays within max_wait. Cost per task: a walk over its warm nodes (the
        ranking is memoised per need and kept per (need, kind) for the pass, each node dropped
        from it once it is gone), looking at most at MAX_LOOK that are not gone. A task that
        waits queues behind those already waiting there: the node's free-in grows by its expected
        run time (history for `job`, else `runtime_s`; unknown: nobody may plan to follow it)."""
        policy, sites, bw, free_in = self.policy, self.sites, self.policy.bandwidth_bps, self.free_in
        warm = self.index.warm_bytes(need)
        cold_s = (need.total - warm.get(cold, 0)) / (bw.get(sites.get(cold, "onprem"), 1.0e9) or 1.0e9)
        cur = self._cursors.get((need.key, kind))
        if cur is None:  # [the warm nodes not yet gone, the gone ones that free up within max_wait]
            cur = self._cursors[(need.key, kind)] = [list(self.index.ranked(need, sites, bw)), []]
            for a in need.items:
                self._cursor_keys.setdefault(a, set()).add((need.key, kind))
        order: list[tuple[float, str]] = cur[0]  # type: ignore[assignment]
        passed: list[tuple[float, float, float, str]] = cur[1]  # type: ignore[assignment]
        best: tuple[float, str] | None = None
        busy_here: tuple[float, float, float, str] | None = None
        j, looked = 0, 0
        while j < len(order) and looked < MAX_LOOK:
            sec, n = order[j]
            if sec >= cold_s or n == cold:
                break
            if gone(n):  # out of this need's walk for the pass (a list of ~100: del is a memmove)
                del order[j]
                busy = free_in.get(n)
                if busy is not None and busy <= policy.max_wait_s:
                    bisect.insort(passed, (busy + sec * policy.weight, busy, sec, n))
                continue
            looked += 1
            ok = fits(n)
            if ok:
                best = (sec, n)
                break
            busy = free_in.get(n) if ok is False else None
            if busy is not None and busy <= policy.max_wait_s:
                value = busy + sec * policy.weight
                if busy_here is None or value < busy_here[0]:
                    busy_here = (value, busy, sec, n)
            j += 1
        if self._coming:  # what this pass's earlier placements bring: a few nodes, looked at directly
            extra: dict[str, int] = {}
            for a, size in need.items.items():
                for n in self._coming.get(a, ()):
                    extra[n] = extra.get(n, 0) + size
            if extra:
                warm = dict(warm)
                for n, b in extra.items():
                    warm[n] = warm.get(n, 0) + b
                    sec = (need.total - warm[n]) / (bw.get(sites.get(n, "onprem"), 1.0e9) or 1.0e9)
                    if n == cold or sec >= cold_s or (best is not None and sec >= best[0]):
                        continue
                    ok = fits(n)
                    if ok:
                        best = (sec, n)
                    elif ok is False and (busy := free_in.get(n)) is not None and busy <= policy.max_wait_s:
                        value = busy + sec * policy.weight
                        if busy_here is None or value < busy_here[0]:
                            busy_here = (value, busy, sec, n)
        stay_s, node = best if best is not None else (cold_s, cold)
        if best is None and self.room and need.total - warm.get(cold, 0) > self.room.get(cold, 1 << 62):
            node, stay_s = self._with_room(need, warm, cold, cold_s, fits)
        limit = stay_s * policy.weight
        waiting = busy_here if busy_here is not None and busy_here[0] < limit else None
        for cand in passed:  # sorted by value: the first this task may use
            if cand[0] >= limit or (waiting is not None and cand[0] >= waiting[0]):
                break
            if free_in.get(cand[3], math.inf) > cand[1]:  # others queued there since (another need's walk)
                continue
            if fits(cand[3]) is not None:
                waiting = cand
                break
        if waiting is not None:
            value, busy, sec, n = waiting
            if waited_s + busy <= policy.max_wait_s:
                c = _candidate(n, need, warm.get(n, 0), sites, self.index, policy)
                runs = self.runtimes.get(job, runtime_s) if job is not None else runtime_s
                free_in[n] = busy + runs if runs is not None else math.inf  # its place in line
                if waiting in passed:
                    passed.remove(waiting)
                    if runs is not None and busy + runs <= policy.max_wait_s:
                        bisect.insort(passed, (busy + runs + sec * policy.weight, busy + runs, sec, n))
                return LocalityDecision(None, f"locality: waiting up to {_dur(busy)} for {n}: {describe(c, need)}",
                                        saved_s=stay_s - sec)
        if self.room and node in self.room:
            self.room[node] -= need.total - warm.get(node, 0)
        said = self._said.get((need.key, node))
        if said is None:  # what placing this need there reuses and moves: the same for every such task
            c = _candidate(node, need, warm.get(node, 0), sites, self.index, policy)
            said = self._said[(need.key, node)] = f"{node}: {describe(c, need)}"
        saved = cold_s - stay_s
        return LocalityDecision(node, f"{said}, saved ~{_dur(saved)} of transfer" if saved >= 0.05 else said,
                                saved_s=saved)


    def _with_room(self, need: Need, warm: Mapping[str, int], cold: str, cold_s: float,
                   fits: Callable[[str], bool | None]) -> tuple[str, float]:
        """A cold placement whose node's cache would have to evict: a node that fits with room for
        what it moves and a link no slower (the roomiest first, a bounded few looked at), else the
        one of them with the most room if more than `cold`'s, else `cold`. Evicting half a data set to make room for another is how a capped,
        cache-blind fleet ends up moving everything again."""
        if self._roomy is None:  # most room first, ordered once per pass (the room itself is read live)
            self._roomy = sorted(self.room, key=lambda n: -self.room[n])
        bw, sites = self.policy.bandwidth_bps, self.sites
        best: tuple[int, str, float] | None = None  # (room, node, seconds) with the most room, if none has enough
        for n in self._roomy[:4 * MAX_LOOK]:  # the order is the pass's first; the room is read live
            missing = need.total - warm.get(n, 0)
            room = self.room[n]
            if n == cold or room <= self.room.get(cold, 0) or (best is not None and room <= best[0]
                                                               and room < missing):
                continue
            sec = missing / (bw.get(sites.get(n, "onprem"), 1.0e9) or 1.0e9)
            if sec <= cold_s and fits(n):
                if room >= missing:
                    return n, sec
                best = (room, n, sec)
        return (best[1], best[2]) if best is not None else (cold, cold_s)


def describe(c: Candidate, need: Need) -> str:
    """What a placement there reuses and moves, for `hybridctl show` ("env warm, data 12 GB warm,
    moves 0 B")."""
    envs = [a for a in c.warm if a.startswith("env:")]
    unread = [a for a in need.items if a.startswith("src:") and a not in c.warm]
    data = sum(need.items[a] for a in c.warm if not a.startswith("env:") and not a.startswith("src:"))
    parts = (["env warm"] if envs else []) + ([f"data {_size(data)} warm"] if data else [])
    if any(a.startswith("src:") for a in c.warm):  # where a job naming it was just placed
        parts.append("data on its way")
    missing = c.missing_bytes - sum(need.items[a] for a in unread)
    if missing or not unread:
        seconds = c.seconds * missing / c.missing_bytes if c.missing_bytes else 0.0
        parts.append(f"moves {_size(missing)}" + (f" (~{_dur(seconds)})" if missing else ""))
    if unread:  # its size is known only once it is read, at its first launch
        parts.append(f"moves {len(unread)} file_mount{'s' if len(unread) > 1 else ''} not read yet")
    return ", ".join(parts)


def size_text(n: int) -> str:
    """'12 GB', '300 MB'."""
    return _size(n)


def dur_text(s: float) -> str:
    """'40 s', '2.5 min'."""
    return _dur(s)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _dur(s: float) -> str:
    return f"{s / 60:.3g} min" if s >= 90 else f"{s:.3g} s"


# ---- the controller's cache index: what each node reports in `cache_list` ------------------------


@dataclass(frozen=True)
class NodeCache:
    """One node's `cache_list` answer, checked (a node is believed only about itself)."""

    objects: Mapping[str, int]
    """sha256 -> bytes of the data objects it holds."""
    envs: Mapping[str, int]
    """environment hash -> bytes of the environments built there (any user's)."""
    max_bytes: int
    used: Mapping[str, float] = field(default_factory=dict)
    """sha256 -> when it was last used, on the node's own clock (only its order matters: the
    node's cache evicts the least recently used first)."""

    def artifacts(self) -> dict[str, int]:
        """Artifact ids (see the module docstring) -> bytes, for CacheIndex."""
        return {**{f"obj:{s}": n for s, n in self.objects.items()}, **{f"env:{h}": n for h, n in self.envs.items()}}

    def summary(self) -> dict[str, int]:
        """What `hybridctl nodes --json` shows."""
        return {"objects": len(self.objects), "object_bytes": sum(self.objects.values()), "envs": len(self.envs),
                "env_bytes": sum(self.envs.values()), "max_bytes": self.max_bytes}


MAX_LISTED = 1_000_000
_HEX = frozenset("0123456789abcdef")


def _count(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62 else None


def parse_cache_listing(raw: object) -> tuple[NodeCache | None, list[str]]:
    """Check a `cache_list` answer; entries that are not well formed are dropped and named."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        return None, ["cache_list: not an object"]
    objects: dict[str, int] = {}
    envs: dict[str, int] = {}
    used: dict[str, float] = {}
    for kind, key, size_key, out, length in (("objects", "sha256", "size", objects, 64),
                                             ("envs", "hash", "bytes", envs, 32)):
        items = raw.get(kind)
        if not isinstance(items, list) or len(items) > MAX_LISTED:
            problems.append(f"cache_list.{kind}: not a list of at most {MAX_LISTED}")
            continue
        for i, o in enumerate(items):
            ident = o.get(key) if isinstance(o, dict) else None
            size = _count(o.get(size_key)) if isinstance(o, dict) else None
            if not isinstance(ident, str) or len(ident) != length or not set(ident) <= _HEX or size is None:
                problems.append(f"cache_list.{kind}[{i}]: not {{{key}: hex, {size_key}: bytes}}")
                continue
            out[ident] = max(out.get(ident, 0), size)
            if kind == "objects":
                last = o.get("last_used")
                if isinstance(last, (int, float)) and not isinstance(last, bool) and math.isfinite(last):
                    used[ident] = float(last)
    return NodeCache(objects, envs, _count(raw.get("max_bytes")) or 0, used), problems


def free_in_of(running: Iterable[object], now: float) -> dict[str, float]:
    """Per node: seconds until the first task running there is expected to end (`RunningTask`s
    with a known `ends_at`), for `LocalityView.free_in`."""
    return free_in_history(running, now, {})


# ---- what a node will hold: its report, plus what the controller has sent it since -------------

SRC_TRUST_S = 30.0
"""How long the controller counts a job it placed on a node toward that node's cache without the
node saying so: the placement's transfer may still be in flight, or done but not yet in a cache
listing. After that (and once the job no longer runs there) only the node's own report counts: a
failed copy or an eviction is then believed as the node tells it."""


@dataclass
class WillHold:
    """Per placed task, the node it went to, when, and its world (opaque to this class: the
    controller's (uid, spec fields), turned into a Need at each pass, so a source read since its
    placement is named by its contents). An entry counts while its task still runs on that node
    (its objects are pinned there) or for `trust_s` after its placement. Bounded (`limit`)."""

    trust_s: float = SRC_TRUST_S
    limit: int = 1 << 16
    _by_task: dict[tuple[int, int], tuple[str, float, object]] = field(default_factory=dict)

    def assign(self, key: tuple[int, int], node: str, now: float, world: object) -> None:
        self._by_task.pop(key, None)
        self._by_task[key] = (node, now, world)
        while len(self._by_task) > self.limit:
            del self._by_task[next(iter(self._by_task))]

    def current(self, now: float, running: Iterable[tuple[int, int, str]]) -> list[tuple[str, object]]:
        """(node, world) of each entry that still counts; the others are forgotten."""
        there = set(running)
        keep = {k: v for k, v in self._by_task.items()
                if (k[0], k[1], v[0]) in there or 0.0 <= now - v[1] < self.trust_s}
        self._by_task = keep
        return [(node, world) for node, _, world in keep.values()]

    def __len__(self) -> int:
        return len(self._by_task)


def expected_holdings(cache: NodeCache, coming: Mapping[str, int]) -> tuple[list[str], int | None]:
    """What a node will hold once what it was sent lands (`coming`: artifact id -> bytes, from
    WillHold), and how many bytes its capped cache can then still take (None: no cap). A capped
    cache that would overflow evicts its least recently used objects that nothing coming pins,
    as the agent does: those are no longer counted as held (else the next job would be sent to a
    node that no longer has its data, and copy it again, evicting the next: a cascade)."""
    held = cache.artifacts()
    held.update(coming)
    if not cache.max_bytes:
        return list(held), None
    objects = dict(cache.objects)
    for a, n in coming.items():
        if a.startswith("obj:"):
            objects[a[4:]] = n
    total = sum(objects.values())
    if total > cache.max_bytes:
        used = cache.used
        for sha in sorted((s for s in cache.objects if f"obj:{s}" not in coming), key=lambda s: used.get(s, 0.0)):
            if total <= cache.max_bytes:
                break
            total -= objects.pop(sha)
            held.pop(f"obj:{sha}", None)
    return list(held), max(0, cache.max_bytes - total)


def free_in_history(running: Iterable[object], now: float, runtime: Mapping[tuple[int, int], float]) -> dict[str, float]:
    """As `free_in_of`, but a running task's end comes from history where there is some:
    start + `runtime[(job, task)]` (its expected run time from finished runs like it,
    core/estimate.py), capped by its hard end (`ends_at`, from its time limit); a task overdue on
    its history, or without any, ends at `ends_at` as before. A time limit is an upper bound that
    most jobs stay far below: a wait planned on it is a wait that never pays."""
    out: dict[str, float] = {}
    for r in running:
        ends = getattr(r, "ends_at", None)
        hist = runtime.get((getattr(r, "job_id"), getattr(r, "task")))
        if hist is not None:
            guess = getattr(r, "started_at") + hist
            if guess > now and (ends is None or guess < ends):
                ends = guess
        if ends is not None:
            node = getattr(r, "node")
            left = max(0.0, ends - now)
            if left < out.get(node, float("inf")):
                out[node] = left
    return out
