"""Planning one unit of a run's inputs (:class:`~pipeline.inputs.sources.InputUnit`: a manifest
file, a Shar shard, a list, a prefix): its work items, windowed, cut into shards whose items files
are written at once; what the driver needs of it comes back as a small :class:`UnitPlan` (one row
per shard, the long cuts, counts).

Units are independent, so many are planned at once: in Ray tasks on a cluster
(:func:`pipeline.run.planning.ray_planner`), in processes here (:func:`process_planner`, what
``--plan-only`` uses), or one after another (:func:`serial_planner`). Every planner yields the
units' plans in input order, whatever order they finish in, and a unit's plan depends only on
the unit and the options: the frozen plan is the same however it was made.

Shards do not span units: each unit's last shard ends with it.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from pipeline.inputs.durations import Prober
from pipeline.inputs.items import WorkItem
from pipeline.inputs.manifests import iter_work_items
from pipeline.inputs.sources import InputUnit, dataset_name
from pipeline.io import storage
from pipeline.output.paths import RunPaths

from .batching import pack_batches
from .shards import make_shards, shard_bytes
from .windows import expand_windows

__all__ = ["Batching", "PlanOptions", "Planner", "UnitPlan", "in_order", "plan_unit", "process_planner",
           "serial_planner", "unit_items"]

_WRITERS = 8  # shard files written at once by a unit's planner
_PENDING = 64  # shard files written or waiting: what a unit's planner holds at most
ERROR_EXAMPLES = 5


@dataclass(frozen=True)
class PlanOptions:
    """What shapes a plan: the inputs and the options that turn them into shards."""

    manifests: tuple[str, ...]
    dataset: Optional[str] = None
    segments: str = "cuts"
    shard_size: int = 1000
    max_cut_seconds: float = 30.0
    overlap_seconds: float = 4.0
    max_recording_hours: float = 24.0

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")
        if not self.max_recording_hours > 0:
            raise ValueError(f"--max-recording-hours must be > 0, got {self.max_recording_hours}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["manifests"] = list(self.manifests)
        return d

    @property
    def max_seconds(self) -> float:
        return self.max_recording_hours * 3600


@dataclass(frozen=True)
class Batching:
    """Batch packing for a preview (``--plan-only``): each shard's batches and padding are counted."""

    max_batch_seconds: float
    max_batch_size: Optional[int] = None


@dataclass
class UnitPlan:
    """What the driver needs of one planned unit: a row per shard (``shard_id``, ``n_items``,
    ``audio_seconds``, ``windows``; with :class:`Batching` also ``batches``, ``batched_seconds``
    and ``padded_seconds``), the long cuts (``cut_id -> window_count, duration, shard_ids``) and
    counts."""

    position: int
    uri: str
    shards: list[dict[str, Any]] = field(default_factory=list)
    long_cuts: dict[str, dict[str, Any]] = field(default_factory=dict)
    cuts: int = 0  # cuts (or segments); a long cut counts once
    items: int = 0  # work items: cuts, with each long cut's windows counted instead
    windows: int = 0
    unknown_durations: int = 0
    errors: int = 0  # items the plan found wrong (error rows without fetching audio)
    error_examples: list[str] = field(default_factory=list)
    audio_seconds: float = 0.0
    batches: int = 0
    padded_seconds: float = 0.0
    seconds: float = 0.0  # the unit's planning time


def unit_items(unit: InputUnit, options: PlanOptions, prober: Optional[Prober] = None) -> Iterator[WorkItem]:
    """The work items of one unit, in order: its cuts (or segments), each cut longer than
    ``max_cut_seconds`` as its windows (made one at a time); their ``dataset`` is ``--dataset``,
    else the name of the input they came from (:func:`pipeline.inputs.sources.dataset_name`)."""
    dataset = options.dataset if options.dataset is not None else dataset_name(unit.given)
    items = iter_work_items(unit.uri, kind=unit.kind, dataset=dataset, segments=options.segments,
                            prober=prober, max_seconds=options.max_seconds, shar_tar=unit.tar)
    return expand_windows(items, options.max_cut_seconds, options.overlap_seconds)


def plan_unit(unit: InputUnit, options: PlanOptions, paths: Optional[RunPaths] = None,
              batching: Optional[Batching] = None, prober: Optional[Prober] = None) -> UnitPlan:
    """Plan one unit: stream its items into shards and write each shard's items file under
    ``paths`` (none: a preview, nothing written) as soon as it is cut; durations of plain audio
    files are probed by ``prober`` (Ray tasks, when this runs in one), else on threads here."""
    started = time.perf_counter()
    out = UnitPlan(unit.position, unit.uri)
    writing: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="plan") as pool:
        for shard in make_shards(unit_items(unit, options, prober), options.shard_size):
            windows, audio = 0, 0.0
            for item in shard.items:
                out.items += 1
                out.unknown_durations += item.duration is None and item.error is None
                if item.error is not None:
                    out.errors += 1
                    if len(out.error_examples) < ERROR_EXAMPLES:
                        out.error_examples.append(f"{item.cut_id}: {item.error}")
                if item.is_window:
                    windows += 1
                    entry = out.long_cuts.setdefault(item.cut_id, {"window_count": item.window_count,
                                                                   "duration": item.cut_duration, "shard_ids": []})
                    if shard.shard_id not in entry["shard_ids"]:
                        entry["shard_ids"].append(shard.shard_id)
                    if item.window_index == 0:
                        out.cuts += 1
                        out.audio_seconds += item.cut_duration or 0.0
                else:
                    out.cuts += 1
                    out.audio_seconds += item.duration or 0.0
                audio += item.duration or 0.0
            out.windows += windows
            row: dict[str, Any] = {"shard_id": shard.shard_id, "n_items": len(shard.items), "audio_seconds": audio,
                                   "windows": windows}
            if batching is not None:  # as a model actor will batch them (items of unknown duration: budget-sized)
                usable = [i for i in shard.items if i.error is None]
                batches = pack_batches(usable, [i.duration for i in usable], batching.max_batch_seconds,
                                       batching.max_batch_size)
                row["batches"] = len(batches)
                row["batched_seconds"] = sum(b.audio_seconds for b in batches)
                row["padded_seconds"] = sum(b.padded_seconds for b in batches)
                out.batches += row["batches"]
                out.padded_seconds += row["padded_seconds"]
            out.shards.append(row)
            if paths is not None:
                writing.append(pool.submit(storage.write_bytes_atomic, paths.plan_shard(shard.shard_id),
                                           shard_bytes(shard.items)))
                while len(writing) >= _PENDING or (writing and writing[0].done()):
                    writing.popleft().result()
        for fut in writing:
            fut.result()
    out.seconds = time.perf_counter() - started
    return out


#: ``planner(units, options, paths, batching)``: every unit's :class:`UnitPlan`, in input order
Planner = Callable[[Sequence[InputUnit], PlanOptions, Optional[RunPaths], Optional[Batching]], Iterator[UnitPlan]]


def serial_planner(units: Sequence[InputUnit], options: PlanOptions, paths: Optional[RunPaths] = None,
                   batching: Optional[Batching] = None) -> Iterator[UnitPlan]:
    """Units planned one after another in this process."""
    for unit in units:
        yield plan_unit(unit, options, paths, batching)


def process_planner(workers: int) -> Planner:
    """A :data:`Planner` that plans up to ``workers`` units at once in processes of its own (spawned,
    so nothing of this process's threads is inherited), at most ``2 * workers`` ahead of the
    consumer; a single unit is planned here."""

    def plan(units: Sequence[InputUnit], options: PlanOptions, paths: Optional[RunPaths] = None,
             batching: Optional[Batching] = None) -> Iterator[UnitPlan]:
        if workers <= 1 or len(units) <= 1:
            yield from serial_planner(units, options, paths, batching)
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(units)), mp_context=context) as pool:
            yield from in_order((pool.submit(plan_unit, u, options, paths, batching) for u in units), 2 * workers,
                                 lambda fut: fut.result())

    return plan


def in_order(submitted: Iterable[Any], in_flight: int, result: Callable[[Any], Any]) -> Iterator[Any]:
    """Results of lazily submitted work in submission order, at most ``in_flight`` submitted ahead."""
    pending: deque[Any] = deque()
    for handle in submitted:
        pending.append(handle)
        if len(pending) >= in_flight:
            yield result(pending.popleft())
    while pending:
        yield result(pending.popleft())
