"""The frozen plan of a run: its shards, written once under ``<output>/runs/<run_id>/plan/``.

A run first turns its inputs into work items and shards (:func:`write_plan`). The inputs are
expanded into units (:func:`pipeline.inputs.sources.expand_inputs`: a manifest file, each file of a
glob, each shard of a lhotse Shar directory, a list, a prefix) and every unit is planned on its own
(:func:`pipeline.plan.units.plan_unit`, many at once: Ray tasks on a cluster, processes here), which
writes each of its shards' items to ``shards/<shard_id>.jsonl.gz`` as soon as the shard is cut. The
driver only merges what the units send back, in input order: the shards' order and sizes go to
``index-00000.parquet``, ... (one row per shard: ``shard_id``, ``index``, ``n_items``,
``audio_seconds``, ``windows``; :data:`INDEX_ROWS` rows per file), the long cuts and the shards
holding their windows to ``long_cuts.parquet``, and ``summary.json`` last, so a plan without it is
incomplete and is made again. The driver holds the rows of the few units in flight, never the
inputs; the plan is the same whatever order the units finish in.

A rerun with the same run id reads the plan instead of listing and probing the inputs again
(:func:`read_plan`). It checks cheaply whether the inputs changed since (:func:`changed_inputs`:
the size and ETag / mtime of manifest files, of every file a glob or a Shar directory holds, the
listing of prefixes) and says so; ``--replan`` makes a new plan, and :func:`stale_parts` names the
parts of shards the new plan no longer has.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.inputs.items import ManifestError
from pipeline.inputs.manifests import AUDIO_SUFFIXES, detect_input_kind
from pipeline.inputs.sources import InputUnit, expand_inputs, shar_shards
from pipeline.io import storage
from pipeline.output.paths import RunPaths

from .shards import Shard, shard_items
from .units import PlanOptions, Planner, UnitPlan, serial_planner

__all__ = ["PLAN_FORMAT", "Plan", "PlanMismatchError", "PlanOptions", "changed_inputs", "input_versions",
           "iter_plan_shards", "read_index", "read_long_cuts", "read_plan", "read_shard", "stale_parts",
           "write_plan"]

log = logging.getLogger("zipscribe.plan")

PLAN_FORMAT = 2  # 2: shards keep a recording's segments together; items may carry a planning error
INDEX_ROWS = 65536
PROGRESS_SECONDS = 10.0

INDEX_SCHEMA = pa.schema([
    pa.field("shard_id", pa.string(), nullable=False),
    pa.field("index", pa.int64(), nullable=False),
    pa.field("n_items", pa.int32(), nullable=False),
    pa.field("audio_seconds", pa.float64(), nullable=False),
    pa.field("windows", pa.int32(), nullable=False),
])

LONG_CUT_SCHEMA = pa.schema([
    pa.field("cut_id", pa.string(), nullable=False),
    pa.field("window_count", pa.int32(), nullable=False),
    pa.field("duration", pa.float64()),
    pa.field("shard_ids", pa.list_(pa.string()), nullable=False),
])


class PlanMismatchError(ValueError):
    """The run id has a plan made with other inputs or options."""


@dataclass
class Plan:
    """What a frozen plan holds (its ``summary.json``)."""

    format: int
    options: dict[str, Any]
    inputs: list[dict[str, str]]
    created_at: str
    cuts: int = 0  # cuts (or segments) of the inputs; a long cut counts once
    items: int = 0  # work items: cuts, with each long cut's windows counted instead
    windows: int = 0
    long_cuts: int = 0
    unknown_durations: int = 0  # items whose duration the plan could not tell (transcribed whole)
    errors: int = 0  # items the plan found wrong (bad durations or offsets): error rows, no audio fetched
    error_examples: list[str] = field(default_factory=list)
    audio_seconds: float = 0.0  # the cuts' audio (overlaps of windows counted once)
    shards: int = 0
    units: int = 0  # units of planning (manifest files, Shar shards, ...)
    index_files: list[str] = field(default_factory=list)
    planning_seconds: float = 0.0
    driver_cpu_seconds: float = 0.0  # CPU of the process that merged the units' plans

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _digest(values: Iterable[str]) -> str:
    digest = hashlib.sha256()
    count = 0
    for value in values:
        digest.update(value.encode() + b"\n")
        count += 1
    return f"{count}:{digest.hexdigest()[:16]}"


def _versions_of(uris: list[str]) -> str:
    """One version string for many files: a digest of their names and versions (read 16 at a time)."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        return _digest(f"{uri} {v}" for uri, v in zip(uris, pool.map(storage.version, uris)))


def input_versions(manifests: Iterable[str]) -> list[dict[str, str]]:
    """For each input, something that changes when it changes: ``size:ETag`` (``size:mtime``
    locally) of a manifest, list or audio file; a digest of the names and versions of the files
    a glob matches or a Shar directory holds; the count and a digest of the file names of a
    directory or prefix (listing only, no reads)."""
    out = []
    for uri in manifests:
        if storage.has_glob(uri):
            kind, version = "glob", _versions_of(storage.glob(uri))
        else:
            kind = detect_input_kind(uri)
            if kind == "audio_dir":
                version = _digest(storage.list_files(uri, AUDIO_SUFFIXES))
            elif kind == "shar":
                version = _versions_of([path for pair in shar_shards(uri) for path in pair])
            else:
                version = storage.version(uri)
        out.append({"uri": uri, "kind": kind, "version": version})
    return out


def _table_bytes(rows: dict[str, list], schema: pa.Schema) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), sink, compression="zstd")
    return sink.getvalue()


def write_plan(paths: RunPaths, options: PlanOptions, planner: Planner = serial_planner,
               units: Optional[list[InputUnit]] = None, index_rows: int = INDEX_ROWS) -> Plan:
    """Plan the run's inputs (``units``, default :func:`~pipeline.inputs.sources.expand_inputs` of
    ``options.manifests``) with ``planner`` and write the plan (see the module docstring)."""
    started, cpu = time.perf_counter(), time.process_time()
    units = expand_inputs(options.manifests) if units is None else units
    plan = Plan(format=PLAN_FORMAT, options=options.as_dict(), inputs=input_versions(options.manifests),
                created_at=datetime.now(timezone.utc).isoformat(), units=len(units))
    storage.delete(paths.plan_summary)  # an old plan stops counting before its files are replaced
    rows: dict[str, list] = {name: [] for name in INDEX_SCHEMA.names}
    long_cuts: dict[str, dict[str, Any]] = {}
    seen = _ShardIds()
    shown = time.monotonic()

    def flush() -> None:
        if not rows["shard_id"]:
            return
        uri = paths.plan_index(len(plan.index_files))
        storage.write_bytes_atomic(uri, _table_bytes(rows, INDEX_SCHEMA))
        plan.index_files.append(uri.rsplit("/", 1)[-1])
        for values in rows.values():
            values.clear()

    for done, unit_plan in enumerate(planner(units, options, paths, None), 1):
        for shard in unit_plan.shards:
            seen.add(shard["shard_id"], unit_plan.uri)
            for name in ("shard_id", "n_items", "audio_seconds", "windows"):
                rows[name].append(shard[name])
            rows["index"].append(plan.shards)
            plan.shards += 1
            if len(rows["shard_id"]) >= index_rows:
                flush()
        _add_counts(plan, unit_plan)
        for cut_id, entry in unit_plan.long_cuts.items():
            long_cuts[cut_id] = entry  # a cut id is the same cut only within its unit: a repeat is caught there
        if time.monotonic() - shown >= PROGRESS_SECONDS:
            shown = time.monotonic()
            log.info("planning: %d of %d input files, %d cuts, %d shards", done, len(units), plan.cuts, plan.shards)
    flush()
    plan.long_cuts = len(long_cuts)
    storage.write_bytes_atomic(paths.plan_long_cuts, _table_bytes(
        {"cut_id": list(long_cuts), "window_count": [c["window_count"] for c in long_cuts.values()],
         "duration": [c["duration"] for c in long_cuts.values()], "shard_ids": [c["shard_ids"] for c in long_cuts.values()]},
        LONG_CUT_SCHEMA))
    plan.planning_seconds = round(time.perf_counter() - started, 3)
    plan.driver_cpu_seconds = round(time.process_time() - cpu, 3)
    storage.write_text_atomic(paths.plan_summary, json.dumps(asdict(plan), indent=2))
    return plan


def _add_counts(plan: Any, unit_plan: UnitPlan) -> None:
    """Add a unit's counts to a plan's (or a preview's) totals."""
    plan.cuts += unit_plan.cuts
    plan.items += unit_plan.items
    plan.windows += unit_plan.windows
    plan.unknown_durations += unit_plan.unknown_durations
    plan.errors += unit_plan.errors
    plan.audio_seconds += unit_plan.audio_seconds
    room = max(0, 10 - len(plan.error_examples))
    plan.error_examples.extend(unit_plan.error_examples[:room])


class _ShardIds:
    """Shard ids seen so far, as the ints of their 64-bit hex (some 70 bytes each in a set: 70 MB
    for the million shards of a billion cuts): two units with the same shard (the same cuts
    reached twice) would transcribe them twice."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def add(self, shard_id: str, uri: str) -> None:
        key = int(shard_id.removeprefix("shard-"), 16)
        if key in self._seen:
            raise ManifestError(uri, f"holds the same cuts as an earlier input (shard {shard_id}): each cut must be "
                                     "given once")
        self._seen.add(key)


def read_plan(paths: RunPaths, options: PlanOptions) -> Optional[Plan]:
    """The run's complete plan, ``None`` when there is none; :class:`PlanMismatchError` when it
    was made with other inputs or options (a new run id or ``--replan`` is needed)."""
    try:
        data = json.loads(storage.read_bytes(paths.plan_summary))
    except storage.MissingObjectError:
        return None
    plan = Plan.from_dict(data)
    if plan.format != PLAN_FORMAT:
        raise PlanMismatchError(f"run {paths.run_id}'s plan has format {plan.format}, this version writes "
                                f"{PLAN_FORMAT}: rerun with --replan")
    wanted = options.as_dict()
    differ = [f"{k}: plan {plan.options.get(k)!r}, now {v!r}" for k, v in wanted.items() if plan.options.get(k) != v]
    if differ:
        raise PlanMismatchError(f"run {paths.run_id} was planned with other options ({'; '.join(differ)}): use the "
                                "same options, a new --run-id, or --replan")
    return plan


def changed_inputs(plan: Plan) -> list[str]:
    """The inputs whose version differs from when the plan was made (see :func:`input_versions`)."""
    now = {i["uri"]: i for i in input_versions(i["uri"] for i in plan.inputs)}
    return [i["uri"] for i in plan.inputs if now[i["uri"]]["version"] != i["version"]]


def read_index(paths: RunPaths, plan: Plan, columns: Optional[list[str]] = None) -> Iterator[dict[str, Any]]:
    """The plan's shard index rows (``shard_id``, ``index``, ``n_items``, ``audio_seconds``,
    ``windows``), in order, one index file in memory at a time."""
    for name in plan.index_files:
        table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(paths.plan, name))), columns=columns)
        yield from table.to_pylist()


def read_shard(uri: str, shard_id: str, index: int) -> Shard:
    """One shard of a plan from its items file."""
    return Shard(shard_id=shard_id, index=index, items=shard_items(storage.read_bytes(uri)))


def iter_plan_shards(paths: RunPaths, plan: Plan) -> Iterator[Shard]:
    """Every shard of the plan, in order, one at a time."""
    for row in read_index(paths, plan, ["shard_id", "index"]):
        yield read_shard(paths.plan_shard(row["shard_id"]), row["shard_id"], row["index"])


def read_long_cuts(paths: RunPaths) -> dict[str, dict[str, Any]]:
    """``cut_id -> {"window_count", "duration", "shard_ids"}`` of the plan's long cuts."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(paths.plan_long_cuts)))
    return {r["cut_id"]: {k: r[k] for k in ("window_count", "duration", "shard_ids")} for r in table.to_pylist()}


def stale_parts(paths: RunPaths, plan: Plan) -> list[str]:
    """Parts of this run that the plan no longer has (shards replanned away, long cuts gone):
    removed before a replanned run, so no cut is written twice. Listed without following symbolic
    links: only the run's own files are ever removed."""
    shard_ids = {row["shard_id"] for row in read_index(paths, plan, ["shard_id"])}
    stitched = {paths.stitched_part(cut_id) for cut_id in read_long_cuts(paths)}
    stale = []
    for directory in (paths.transcripts, paths.windows, paths.words):
        try:
            uris = list(storage.list_files(directory, [".parquet"], follow_symlinks=False))
        except storage.MissingObjectError:
            continue
        for uri in uris:
            name = uri.rsplit("/", 1)[-1]
            if name.startswith("part-long-"):
                keep = uri in stitched
            else:
                keep = name.removeprefix("part-").removesuffix(".parquet") in shard_ids
            if not keep:
                stale.append(uri)
    return stale
