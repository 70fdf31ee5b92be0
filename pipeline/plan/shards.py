"""Shards: the units of work, retry and output.

A *shard* is a fixed-size run of consecutive work items from the item stream
(``shard-000123`` by position, so ids are deterministic for a given input and
shard size). Each shard becomes one Parquet part whose fingerprint
(:meth:`Shard.fingerprint`) decides whether a rerun can skip it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from pipeline.inputs.items import WorkItem

__all__ = ["Shard", "make_shards", "shard_id_for"]


@dataclass
class Shard:
    """Consecutive work items that are transcribed, retried and written together."""

    shard_id: str
    index: int
    items: list[WorkItem] = field(default_factory=list)

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


def make_shards(items: Iterable[WorkItem], shard_size: int) -> Iterator[Shard]:
    """Cut a (lazy) item stream into consecutive shards of ``shard_size`` items."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    iterator = iter(items)
    for index in itertools.count():
        chunk = list(itertools.islice(iterator, shard_size))
        if not chunk:
            return
        yield Shard(shard_id=shard_id_for(index), index=index, items=chunk)
