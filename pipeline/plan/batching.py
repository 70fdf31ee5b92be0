"""Duration-sorted batches.

Inside a shard (:mod:`pipeline.plan.shards`) items are sorted by duration and
split into batches whose *padded* audio (``len(batch) * longest``) stays
under ``max_batch_seconds``: the accelerator computes on padding too, so that
is the cost that has to be bounded. An item longer than the budget gets a
batch of its own. Items of unknown duration are treated as budget-sized.
Larger shards give finer duration granularity and so less padding.

Self-attention's memory and time grow with the square of an item's length, which
padded seconds alone do not bound: beyond :data:`ATTENTION_REFERENCE_SECONDS`
an item counts as ``L * L / reference`` seconds (a 60 s cut as 120 s), so a
batch of long cuts holds proportionally fewer. Items up to the reference (all
windows of long recordings, 30 s by default) count as their length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, TypeVar

import numpy as np

T = TypeVar("T")

#: lengths up to this count linearly; longer ones quadratically (attention's cost)
ATTENTION_REFERENCE_SECONDS = 30.0


def cost_seconds(duration: float, reference: Optional[float] = ATTENTION_REFERENCE_SECONDS) -> float:
    """What one item of ``duration`` seconds costs a batch, in padded-second units."""
    if reference is None or reference <= 0 or duration <= reference:
        return duration
    return duration * duration / reference


@dataclass
class Batch:
    """Items processed together; ``padded_seconds = len(items) * longest``."""

    items: list
    durations: list[float]

    @property
    def audio_seconds(self) -> float:
        return float(sum(self.durations))

    @property
    def padded_seconds(self) -> float:
        return len(self.durations) * max(self.durations, default=0.0)


def pack_batches(
    items: Sequence[T],
    durations: Sequence[Optional[float]],
    max_batch_seconds: float,
    max_batch_size: Optional[int] = None,
    batch_overhead: Optional[float] = None,
    attention_reference: Optional[float] = ATTENTION_REFERENCE_SECONDS,
) -> list[Batch]:
    """Sort by duration (longest first) and cut the sorted list into batches that
    minimise ``sum(cost) + batch_overhead * num_batches`` with every batch's cost
    ``len(batch) * cost_seconds(longest)`` (its padded seconds, with the quadratic
    term of :func:`cost_seconds` past ``attention_reference``) under the budget.

    Greedy filling would pack as many cuts as fit, mixing very different lengths
    when the budget is large; counting padding alone would prefer one cut per
    batch. The per-batch overhead (default 2 % of the budget, i.e. a batch must
    save that many padded seconds to be worth splitting off) balances the two.
    Solved exactly by dynamic programming over split points (the optimal
    batches of a sorted list are contiguous runs). Longest-first puts the most
    expensive batch first, so memory problems show up at once.
    """
    if max_batch_seconds <= 0:
        raise ValueError("max_batch_seconds must be > 0")
    if len(items) != len(durations):
        raise ValueError("items and durations differ in length")
    n = len(items)
    if n == 0:
        return []
    overhead = 0.02 * max_batch_seconds if batch_overhead is None else batch_overhead
    known = np.array([max_batch_seconds if d is None else float(d) for d in durations], dtype=np.float64)
    order = sorted(range(n), key=lambda i: (-known[i], i))
    d = np.array([cost_seconds(x, attention_reference) for x in known[order]], dtype=np.float64)
    cap = n if max_batch_size is None else max(1, max_batch_size)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    start_of = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):  # a batch starting at i (its longest cut) may end at j in (i, i + size]
        size = max(1, min(cap, n - i, int(max_batch_seconds // d[i]) if d[i] > 0 else n - i))
        ends = np.arange(i + 1, i + size + 1)
        cost = best[i] + (ends - i) * d[i] + overhead
        better = cost < best[ends]
        best[ends[better]] = cost[better]
        start_of[ends[better]] = i
    cuts = []
    j = n
    while j > 0:
        cuts.append((int(start_of[j]), j))
        j = int(start_of[j])
    batches = []
    for i, j in reversed(cuts):
        idx = order[i:j]
        batches.append(Batch([items[k] for k in idx], [float(known[k]) for k in idx]))
    return batches


def padding_ratio(batches: Iterable[Batch]) -> float:
    """Fraction of computed audio that is padding: ``1 - audio / padded``."""
    audio = padded = 0.0
    for b in batches:
        audio += b.audio_seconds
        padded += b.padded_seconds
    return 0.0 if padded == 0 else 1.0 - audio / padded
