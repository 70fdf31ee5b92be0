"""What a run would do, from its inputs alone: shards, batches and padding (``--plan-only``)."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Optional

from pipeline.inputs.sources import expand_inputs

from .frozen import _add_counts
from .units import Batching, PlanOptions, Planner, serial_planner

__all__ = ["PlanSummary", "preview"]


@dataclass
class PlanSummary:
    """What a run would do: shards, batches and padding, from the inputs alone."""

    manifest: list[str]
    units: int = 0  # input files planned (a glob's files, a Shar directory's shards, ...)
    cuts: int = 0
    items: int = 0
    windows: int = 0
    cuts_unknown_duration: int = 0
    errors: int = 0  # cuts the plan finds wrong (bad durations or offsets): error rows, no audio fetched
    error_examples: list[str] = field(default_factory=list)
    shards: int = 0
    batches: int = 0
    audio_seconds: float = 0.0
    padded_seconds: float = 0.0
    padding_ratio: float = 0.0
    max_batch_seconds: float = 0.0
    shard_size: int = 0
    wall_seconds: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def unknown_durations(self) -> int:  # the name the plan's counts use
        return self.cuts_unknown_duration

    @unknown_durations.setter
    def unknown_durations(self, value: int) -> None:
        self.cuts_unknown_duration = value


def preview(options: PlanOptions, *, max_batch_seconds: float, max_batch_size: Optional[int] = None,
            planner: Planner = serial_planner) -> PlanSummary:
    """Plan the inputs of ``options`` with ``planner`` without writing anything, packing every
    shard's batches (no Ray, no model): the padding ratio, the cuts the plan finds wrong, and a
    check that the driver's memory stays flat."""
    started = time.perf_counter()
    out = PlanSummary(manifest=list(options.manifests), max_batch_seconds=max_batch_seconds,
                      shard_size=options.shard_size)
    units = expand_inputs(options.manifests)
    out.units = len(units)
    batched = 0.0  # the items' audio as batched (windows of long cuts overlap; unknown durations: budget-sized)
    for unit_plan in planner(units, options, None, Batching(max_batch_seconds, max_batch_size)):
        _add_counts(out, unit_plan)
        out.shards += len(unit_plan.shards)
        out.batches += unit_plan.batches
        out.padded_seconds += unit_plan.padded_seconds
        batched += sum(row["batched_seconds"] for row in unit_plan.shards)
    out.padding_ratio = 0.0 if out.padded_seconds == 0 else 1 - batched / out.padded_seconds
    out.wall_seconds = time.perf_counter() - started
    out.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out
