"""The frozen plan of a run: its shards, written once under ``<output>/runs/<run_id>/plan/``.

A run first turns its inputs into work items and shards (:func:`write_plan`), streaming: each
shard's items go to ``shards/<shard_id>.jsonl.gz`` as soon as the shard is cut (written by a
few threads), the shards' order and sizes to ``index-00000.parquet``, ... (one row per shard:
``shard_id``, ``index``, ``n_items``, ``audio_seconds``, ``windows``; :data:`INDEX_ROWS` rows per
file), the long cuts and the shards holding their windows to ``long_cuts.parquet``, and
``summary.json`` last, so a plan without it is incomplete and is made again. The driver holds
one shard's items at a time, never the inputs.

A rerun with the same run id reads the plan instead of listing and probing the inputs again
(:func:`read_plan`). It checks cheaply whether the inputs changed since (:func:`changed_inputs`:
the size and ETag / mtime of manifest files, the listing of prefixes) and says so; ``--replan``
makes a new plan, and :func:`stale_parts` names the parts of shards the new plan no longer has.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.inputs.items import WorkItem
from pipeline.inputs.manifests import AUDIO_SUFFIXES, detect_input_kind
from pipeline.io import storage
from pipeline.output.paths import RunPaths

from .shards import Shard, make_shards

__all__ = ["PLAN_FORMAT", "Plan", "PlanMismatchError", "PlanOptions", "changed_inputs", "input_versions",
           "iter_plan_shards", "read_index", "read_long_cuts", "read_plan", "read_shard", "stale_parts",
           "write_plan"]

PLAN_FORMAT = 1
INDEX_ROWS = 65536
_WRITERS = 8  # shard files written at once
_PENDING = 64  # shard files written or waiting: what the driver holds at most

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


@dataclass(frozen=True)
class PlanOptions:
    """What shapes a plan: the inputs and the options that turn them into shards."""

    manifests: tuple[str, ...]
    dataset: Optional[str] = None
    segments: str = "cuts"
    shard_size: int = 1000
    max_cut_seconds: float = 30.0
    overlap_seconds: float = 4.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["manifests"] = list(self.manifests)
        return d


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
    audio_seconds: float = 0.0  # the cuts' audio (overlaps of windows counted once)
    shards: int = 0
    index_files: list[str] = field(default_factory=list)
    planning_seconds: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _listing_version(uri: str) -> str:
    digest = hashlib.sha256()
    count = 0
    for key in storage.list_files(uri, AUDIO_SUFFIXES):
        digest.update(key.encode() + b"\n")
        count += 1
    return f"{count}:{digest.hexdigest()[:16]}"


def input_versions(manifests: Iterable[str]) -> list[dict[str, str]]:
    """For each input, something that changes when it changes: ``size:ETag`` (``size:mtime``
    locally) of a manifest, list or audio file; the count and a digest of the file names of a
    directory or prefix (listing only, no reads)."""
    out = []
    for uri in manifests:
        kind = detect_input_kind(uri)
        version = _listing_version(uri) if kind == "audio_dir" else storage.version(uri)
        out.append({"uri": uri, "kind": kind, "version": version})
    return out


def _shard_bytes(items: list[WorkItem]) -> bytes:
    text = "".join(json.dumps(i.to_dict(), separators=(",", ":")) + "\n" for i in items)
    return gzip.compress(text.encode(), compresslevel=6, mtime=0)


def _table_bytes(rows: dict[str, list], schema: pa.Schema) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), sink, compression="zstd")
    return sink.getvalue()


def write_plan(paths: RunPaths, options: PlanOptions, items: Iterable[WorkItem], index_rows: int = INDEX_ROWS) -> Plan:
    """Stream ``items`` into shards and write the plan (see the module docstring)."""
    started = time.perf_counter()
    plan = Plan(format=PLAN_FORMAT, options=options.as_dict(), inputs=input_versions(options.manifests),
                created_at=datetime.now(timezone.utc).isoformat())
    storage.delete(paths.plan_summary)  # an old plan stops counting before its files are replaced
    rows: dict[str, list] = {name: [] for name in INDEX_SCHEMA.names}
    long_cuts: dict[str, dict[str, Any]] = {}
    writing: list[Future] = []

    def flush() -> None:
        if not rows["shard_id"]:
            return
        uri = paths.plan_index(len(plan.index_files))
        storage.write_bytes_atomic(uri, _table_bytes(rows, INDEX_SCHEMA))
        plan.index_files.append(uri.rsplit("/", 1)[-1])
        for values in rows.values():
            values.clear()

    with ThreadPoolExecutor(max_workers=_WRITERS, thread_name_prefix="plan") as pool:
        for shard in make_shards(items, options.shard_size):
            windows = 0
            for item in shard.items:
                plan.items += 1
                plan.unknown_durations += item.duration is None
                if item.is_window:
                    windows += 1
                    entry = long_cuts.setdefault(item.cut_id, {"window_count": item.window_count,
                                                               "duration": item.cut_duration, "shard_ids": []})
                    if shard.shard_id not in entry["shard_ids"]:
                        entry["shard_ids"].append(shard.shard_id)
                    if item.window_index == 0:
                        plan.cuts += 1
                        plan.audio_seconds += item.cut_duration or 0.0
                else:
                    plan.cuts += 1
                    plan.audio_seconds += item.duration or 0.0
            plan.windows += windows
            plan.shards += 1
            writing.append(pool.submit(storage.write_bytes_atomic, paths.plan_shard(shard.shard_id),
                                       _shard_bytes(shard.items)))
            while len(writing) >= _PENDING or (writing and writing[0].done()):
                writing.pop(0).result()
            for name, value in (("shard_id", shard.shard_id), ("index", shard.index), ("n_items", len(shard.items)),
                                ("audio_seconds", shard.audio_seconds), ("windows", windows)):
                rows[name].append(value)
            if len(rows["shard_id"]) >= index_rows:
                flush()
        for fut in writing:
            fut.result()
    flush()
    plan.long_cuts = len(long_cuts)
    storage.write_bytes_atomic(paths.plan_long_cuts, _table_bytes(
        {"cut_id": list(long_cuts), "window_count": [c["window_count"] for c in long_cuts.values()],
         "duration": [c["duration"] for c in long_cuts.values()], "shard_ids": [c["shard_ids"] for c in long_cuts.values()]},
        LONG_CUT_SCHEMA))
    plan.planning_seconds = round(time.perf_counter() - started, 3)
    storage.write_text_atomic(paths.plan_summary, json.dumps(asdict(plan), indent=2))
    return plan


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
    with gzip.open(io.BytesIO(storage.read_bytes(uri)), "rt") as f:
        items = [WorkItem.from_dict(json.loads(line)) for line in f if line.strip()]
    return Shard(shard_id=shard_id, index=index, items=items)


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
    removed before a replanned run, so no cut is written twice."""
    shard_ids = {row["shard_id"] for row in read_index(paths, plan, ["shard_id"])}
    stitched = {paths.stitched_part(cut_id) for cut_id in read_long_cuts(paths)}
    stale = []
    for directory in (paths.transcripts, paths.windows, paths.words):
        try:
            uris = list(storage.list_files(directory, [".parquet"]))
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
