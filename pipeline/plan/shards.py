"""Shards: the units of work, retry and output.

A *shard* is a run of consecutive work items. Where a shard ends is decided by the items
themselves (content-defined chunking): an item whose key hashes to ``shard_size - 1`` modulo
``shard_size`` ends its shard, so shards hold ``shard_size`` items on average. A shard's id is a
hash of the items it holds (their cut ids, sources, channels and time ranges), not its position.

Shards keep a recording's items together: consecutive items of one audio object (the segments of
a long recording as lhotse recipes list them, the windows of a long cut, the cuts of one Shar
tar) are never split by a boundary; an item that would end its shard ends it after the last item
of its object. The audio stage then reads each object once per shard
(:mod:`pipeline.run.shard_audio`). A shard that reaches ``MAX_SHARD_FACTOR * shard_size`` items
is cut before the object being added began, or, when that object's items alone fill it, inside
them. With one file per cut every item is an object of its own and the shards are those of
plain content-defined chunking.

So a listing that changed between two plans changes only the shards around the change: a
file added to a bucket prefix lands in one shard, whose id changes; every other shard keeps
its items and its id, and a rerun skips its part. Each shard becomes one Parquet part whose
fingerprint (:meth:`Shard.fingerprint`) also covers the run's settings.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from pipeline.inputs.items import WorkItem

__all__ = ["MAX_SHARD_FACTOR", "Shard", "make_shards", "shard_bytes", "shard_id_of", "shard_items"]

#: a shard is cut after at most this many times ``shard_size`` items even without a boundary
MAX_SHARD_FACTOR = 4


def _item_key(item: WorkItem) -> list:
    key = [item.cut_id, item.source, item.channel, item.start, item.duration, item.window_index]
    return key + [item.member] if item.member is not None else key  # ids of plain items unchanged


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
    that keep each audio object's consecutive items together (see the module docstring);
    ``shard_size`` 1 gives one shard per object (per item with one file per cut)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    limit = MAX_SHARD_FACTOR * shard_size
    chunk: list[WorkItem] = []
    run_start = 0  # where the current object's items begin in chunk
    boundary = False  # an item of the current object ends the shard once the object's items end
    index = 0
    for item in items:
        if chunk and item.source != chunk[-1].source:  # a new object begins
            if boundary:
                yield Shard(shard_id_of(chunk), index, chunk)
                index += 1
                chunk, boundary = [], False
            run_start = len(chunk)
        if len(chunk) >= limit:  # full: cut before the current object, or inside it when it alone fills the shard
            cut = run_start if run_start > 0 else len(chunk)
            yield Shard(shard_id_of(chunk[:cut]), index, chunk[:cut])
            index += 1
            chunk, run_start = chunk[cut:], 0
            boundary = boundary and bool(chunk)
        chunk.append(item)
        boundary = boundary or _ends_shard(item, shard_size)
    if chunk:
        yield Shard(shard_id_of(chunk), index, chunk)


def shard_bytes(items: list[WorkItem]) -> bytes:
    """A shard's items file: one JSON object per item (:meth:`WorkItem.to_dict`), gzipped."""
    text = "".join(json.dumps(i.to_dict(), separators=(",", ":")) + "\n" for i in items)
    return gzip.compress(text.encode(), compresslevel=6, mtime=0)


def shard_items(data: bytes) -> list[WorkItem]:
    """The items of a shard's items file (:func:`shard_bytes`)."""
    text = gzip.decompress(data).decode()
    return [WorkItem.from_dict(json.loads(line)) for line in text.splitlines() if line.strip()]
