"""What a run would do, from its inputs alone: shards, batches and padding (``--plan-only``)."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from pipeline.inputs.items import WorkItem

from .batching import pack_batches
from .shards import make_shards

__all__ = ["PlanSummary", "preview"]


@dataclass
class PlanSummary:
    """What a run would do: shards, batches and padding, from the manifest alone."""

    manifest: list[str]
    cuts: int = 0
    cuts_unknown_duration: int = 0
    shards: int = 0
    batches: int = 0
    audio_seconds: float = 0.0
    padded_seconds: float = 0.0
    padding_ratio: float = 0.0
    max_batch_seconds: float = 0.0
    shard_size: int = 0
    wall_seconds: float = 0.0
    peak_rss_mb: float = 0.0


def preview(manifests: Sequence[str], items: Iterable[WorkItem], *, shard_size: int, max_batch_seconds: float,
            max_batch_size: Optional[int] = None) -> PlanSummary:
    """Stream ``items`` through sharding and batch packing without Ray or a model
    (``--plan-only``): shows the padding ratio and checks the driver's memory stays flat."""
    started = time.perf_counter()
    out = PlanSummary(manifest=list(manifests), max_batch_seconds=max_batch_seconds, shard_size=shard_size)
    for shard in make_shards(items, shard_size):
        durations = [i.duration for i in shard.items]
        out.shards += 1
        out.cuts += len(durations)
        out.cuts_unknown_duration += sum(d is None for d in durations)
        for batch in pack_batches(shard.items, durations, max_batch_seconds, max_batch_size):
            out.batches += 1
            out.audio_seconds += batch.audio_seconds
            out.padded_seconds += batch.padded_seconds
    out.padding_ratio = 0.0 if out.padded_seconds == 0 else 1 - out.audio_seconds / out.padded_seconds
    out.wall_seconds = time.perf_counter() - started
    out.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out
