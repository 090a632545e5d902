"""Which GPUs a job may use and whether a job can ever fit the fleet: the GPU-type matching rule,
node shapes in words, and `never_fits`. Shared by the scheduler and submit-time validation."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache
from typing import Sequence

from hybridctl.core.model import NodeView, Resources

_NON_WORD = re.compile(r"[^0-9a-z]+")


def model_words(name: str) -> tuple[str, ...]:
    """Lowercase words of a GPU model or type name, split at anything not a letter or digit."""
    return tuple(w for w in _NON_WORD.split(name.lower()) if w)


@lru_cache(maxsize=4096)
def gpu_type_matches(gpu_type: str, model: str) -> bool:
    """May a job asking for `gpu_type` use a GPU whose model is `model`?

    Both names are split into lowercase words (`model_words`). Every word of the type must
    appear, whole and in order, among the words of the model; a type word may also span adjacent
    model words, so 'RTX3090' matches 'GeForce RTX 3090'. Hence 'A100' matches 'A100',
    'A100-80GB' and 'NVIDIA A100-SXM4-80GB'; 'A100-80GB' matches 'NVIDIA A100-SXM4-80GB'; but
    'A10' does not match 'A100' and 'A100-80GB' does not match 'A100-SXM4-40GB'. A type with no
    words at all matches nothing.
    """
    want = model_words(gpu_type)
    have = model_words(model)
    if not want:
        return False
    pos = 0
    for word in want:
        # The earliest start also gives the earliest end (words are never empty), which leaves
        # the most room for the remaining type words.
        for start in range(pos, len(have)):
            joined = ""
            end = start
            while end < len(have) and word.startswith(joined + have[end]):
                joined += have[end]
                end += 1
                if joined == word:
                    break
            if joined == word:
                pos = end
                break
        else:
            return False
    return True


@lru_cache(maxsize=4096)  # a pass asks for each pending task's; a job's tasks share one Resources
def candidates(res: Resources) -> tuple[Resources, ...]:
    """Each accelerator candidate of `res` as a full Resources (cpus, memory, spot kept, no
    alternatives of its own), in order of preference; `(res,)` when it has none."""
    if not res.alternatives:
        return (res,)
    return tuple(replace(res, gpu_type=t, gpus=n, alternatives=(), ordered=False) for t, n in res.alternatives)


def fmt_mem(mb: int) -> str:
    """'512G' for whole (or large) GiB amounts, '900M' below one GiB."""
    return f"{mb // 1024}G" if mb >= 1024 else f"{mb}M"


def gpu_phrase(count: int, gpu_type: str | None, free: bool = False) -> str:
    """'4 free A100 GPUs', '1 GPU'."""
    adjective = "free " if free else ""
    model = f"{gpu_type} " if gpu_type else ""
    return f"{count} {adjective}{model}GPU{'' if count == 1 else 's'}"


def describe_shape(node: NodeView) -> str:
    """A node's full size in words: '8× A100 80GB, 64 CPUs, 512G', or for a node with mixed
    models '2× RTX 3090 + 1× RTX A6000, 32 CPUs, 128G'."""
    counts: dict[str, int] = {}
    for slot in node.gpus:
        counts[slot.model] = counts.get(slot.model, 0) + 1
    gpus = " + ".join(f"{n}× {model}" for model, n in counts.items()) or "no GPUs"
    return f"{gpus}, {node.cpus_total:g} CPUs, {fmt_mem(node.memory_total_mb)}"


def never_fits(nodes: Sequence[NodeView], resources: Resources, num_nodes: int) -> str | None:
    """None if `num_nodes` nodes of the fleet, by their full size (ignoring their load, state and
    GPU health), could each hold `resources`; else one line naming the largest node's shape.

    An empty fleet returns None: jobs are accepted and wait for nodes to join.
    """
    return never_fits_grouped([(node, 1) for node in nodes], resources, num_nodes)


def never_fits_grouped(
    groups: Sequence[tuple[NodeView, int]], resources: Resources, num_nodes: int
) -> str | None:
    """`never_fits` over (node, how many nodes of the fleet share its shape): a fleet has few
    shapes, so the scheduler passes one node of each, the first by name."""
    if not groups:
        return None
    if resources.alternatives:  # it fits if any accelerator candidate does
        misses = []
        for cand in candidates(resources):
            msg = never_fits_grouped(groups, cand, num_nodes)
            if msg is None:
                return None
            misses.append(msg)
        return f"none of the GPU candidates {resources.describe().partition(' GPU')[0]} fits; {misses[0]}"
    need = max(num_nodes, 1)
    g, cpus, mem = resources.gpus, resources.cpus, resources.memory_mb
    gpu_type = resources.gpu_type if g else None
    usable: dict[str, bool] = {}
    kind = []  # per group: GPUs of a model the job may use
    for node, _ in groups:
        n = 0
        for slot in node.gpus:
            ok = usable.get(slot.model)
            if ok is None:
                ok = usable[slot.model] = gpu_type is None or gpu_type_matches(gpu_type, slot.model)
            n += ok
        kind.append(n)
    holders = sum(
        count
        for (node, count), k in zip(groups, kind)
        if k >= g and node.cpus_total >= cpus and node.memory_total_mb >= mem
    )
    if holders >= need:
        return None
    _, i = min(
        ((-k, -len(n.gpus), -n.cpus_total, -n.memory_total_mb, n.name), i)
        for i, ((n, _), k) in enumerate(zip(groups, kind))
    )
    largest, largest_kind = groups[i][0], kind[i]
    where = f"the largest is {largest.name} with {describe_shape(largest)}"
    gpus = gpu_phrase(g, gpu_type)
    if holders:
        return (
            f"only {holders} node{'' if holders == 1 else 's'} can ever hold"
            f" {request_phrase(resources)}, the job needs {need}: {where}"
        )
    # `largest` holds none of it, so at least one of these lists something.
    missing = []
    if cpus > largest.cpus_total:
        missing.append(cpu_phrase(cpus))
    if mem > largest.memory_total_mb:
        missing.append(f"{fmt_mem(mem)} memory")
    if largest_kind < g:
        what = " and ".join([gpus, *missing])
    else:
        what = f"{gpus} with {' and '.join(missing)}" if g else " and ".join(missing)
    return f"no node can ever hold {what}: {where}"


def request_phrase(resources: Resources, free: bool = False) -> str:
    """What one node of a job needs, in words: '8 A100 GPUs, 16 CPUs, 64G memory'. CPUs are
    named only above the default of 1, memory only when asked for."""
    parts = []
    if resources.gpus:
        parts.append(gpu_phrase(resources.gpus, resources.gpu_type, free))
    if resources.cpus > 1 or not resources.gpus:
        parts.append(cpu_phrase(resources.cpus, free))
    if resources.memory_mb:
        parts.append(f"{fmt_mem(resources.memory_mb)}{' free' if free else ''} memory")
    return ", ".join(parts)


def cpu_phrase(cpus: float, free: bool = False) -> str:
    """'16 free CPUs', '1 CPU'."""
    return f"{cpus:g}{' free' if free else ''} CPU{'' if cpus == 1 else 's'}"
