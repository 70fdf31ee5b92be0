"""Shards and duration-sorted batches.

A *shard* is a fixed-size run of consecutive work items from the manifest
stream (``shard-000123`` by position, so ids are deterministic for a given
manifest and shard size). Inside a shard items are sorted by duration and
split into batches whose *padded* audio (``len(batch) * longest``) stays
under ``max_batch_seconds``: the accelerator computes on padding too, so that
is the cost that has to be bounded. An item longer than the budget gets a
batch of its own. Items of unknown duration are treated as budget-sized.
Larger shards give finer duration granularity and so less padding.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


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


@dataclass
class Shard:
    shard_id: str
    index: int
    items: list = field(default_factory=list)

    def fingerprint(self, *parts: str) -> str:
        """SHA-256 over the shard's items (ids, sources, ranges) and the given settings."""
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part.encode())
            digest.update(b"\0")
        for item in self.items:
            key = [item.cut_id, item.source, item.channel, item.start, item.duration]
            digest.update(json.dumps(key, sort_keys=True, default=str).encode())
            digest.update(b"\n")
        return digest.hexdigest()


def shard_id_for(index: int) -> str:
    return f"shard-{index:06d}"


def make_shards(items: Iterable[T], shard_size: int) -> Iterator[Shard]:
    """Cut a (lazy) item stream into consecutive shards of ``shard_size`` items."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    iterator = iter(items)
    for index in itertools.count():
        chunk = list(itertools.islice(iterator, shard_size))
        if not chunk:
            return
        yield Shard(shard_id=shard_id_for(index), index=index, items=chunk)


def pack_batches(
    items: Sequence[T],
    durations: Sequence[Optional[float]],
    max_batch_seconds: float,
    max_batch_size: Optional[int] = None,
    batch_overhead: Optional[float] = None,
) -> list[Batch]:
    """Sort by duration (longest first) and cut the sorted list into batches that
    minimise ``sum(padded_seconds) + batch_overhead * num_batches`` under the budget.

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
    d = known[order]
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
