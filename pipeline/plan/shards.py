"""Shards: the units of work, retry and output.

A *shard* is a run of consecutive work items. Where a shard ends is decided by the items
themselves (content-defined chunking): a shard ends after an item whose key hashes to
``shard_size - 1`` modulo ``shard_size``, or when it reaches ``MAX_SHARD_FACTOR *
shard_size`` items, so shards hold ``shard_size`` items on average. A shard's id is a hash of
the items it holds (their cut ids, sources, channels and time ranges), not its position.

So a listing that changed between two plans changes only the shards around the change: a
file added to a bucket prefix lands in one shard, whose id changes; every other shard keeps
its items and its id, and a rerun skips its part. Each shard becomes one Parquet part whose
fingerprint (:meth:`Shard.fingerprint`) also covers the run's settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from pipeline.inputs.items import WorkItem

__all__ = ["MAX_SHARD_FACTOR", "Shard", "make_shards", "shard_id_of"]

#: a shard is cut after at most this many times ``shard_size`` items even without a boundary
MAX_SHARD_FACTOR = 4


def _item_key(item: WorkItem) -> list:
    return [item.cut_id, item.source, item.channel, item.start, item.duration, item.window_index]


def shard_id_of(items: Iterable[WorkItem]) -> str:
    """``shard-<16 hex>``: a hash of the items' cut ids, sources, channels and time ranges."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(_item_key(item), default=str).encode())
        digest.update(b"\n")
    return "shard-" + digest.hexdigest()[:16]


def _ends_shard(item: WorkItem, shard_size: int) -> bool:
    key = f"{item.cut_id}\0{item.window_index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % shard_size == shard_size - 1


@dataclass
class Shard:
    """Consecutive work items that are transcribed, retried and written together.

    ``index`` is the shard's position in its plan (for progress and ordering only; the id
    does not depend on it)."""

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

    @property
    def audio_seconds(self) -> float:
        return sum(i.duration or 0.0 for i in self.items)


def make_shards(items: Iterable[WorkItem], shard_size: int) -> Iterator[Shard]:
    """Cut a (lazy) item stream into content-defined shards of ``shard_size`` items on average
    (see the module docstring); ``shard_size`` 1 gives one shard per item."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    limit = MAX_SHARD_FACTOR * shard_size
    chunk: list[WorkItem] = []
    index = 0
    for item in items:
        chunk.append(item)
        if _ends_shard(item, shard_size) or len(chunk) >= limit:
            yield Shard(shard_id_of(chunk), index, chunk)
            index += 1
            chunk = []
    if chunk:
        yield Shard(shard_id_of(chunk), index, chunk)
