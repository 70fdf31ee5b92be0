"""Shards and duration-sorted batches.

A *shard* is a fixed-size run of consecutive work items from the manifest
stream (``shard-000123`` by position, so ids are deterministic for a given
manifest and shard size). Inside a shard items are sorted by duration and
packed into batches whose *padded* audio (``len(batch) * longest``) stays
under ``max_batch_seconds``: the accelerator computes on padding too, so that
is the cost that has to be bounded. An item longer than the budget gets a
batch of its own. Items of unknown duration are treated as budget-sized.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence, TypeVar

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
) -> list[Batch]:
    """Sort by duration (longest first) and pack greedily under the padded budget.

    Longest-first puts the most expensive batch first, so memory problems show
    up at once and the tail of a shard is made of quick batches.
    """
    if max_batch_seconds <= 0:
        raise ValueError("max_batch_seconds must be > 0")
    if len(items) != len(durations):
        raise ValueError("items and durations differ in length")
    known = [max_batch_seconds if d is None else float(d) for d in durations]
    order = sorted(range(len(items)), key=lambda i: (-known[i], i))
    batches: list[Batch] = []
    current: list[int] = []
    for i in order:
        longest = known[current[0]] if current else known[i]
        fits = (len(current) + 1) * longest <= max_batch_seconds
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (not fits or full):
            batches.append(Batch([items[j] for j in current], [known[j] for j in current]))
            current = []
        current.append(i)
    if current:
        batches.append(Batch([items[j] for j in current], [known[j] for j in current]))
    return batches


def padding_ratio(batches: Iterable[Batch]) -> float:
    """Fraction of computed audio that is padding: ``1 - audio / padded``."""
    audio = padded = 0.0
    for b in batches:
        audio += b.audio_seconds
        padded += b.padded_seconds
    return 0.0 if padded == 0 else 1.0 - audio / padded
