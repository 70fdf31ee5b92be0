"""The CPU stages of a run on Ray Data, and the run's ledger (worker side; no torch here, so
their worker processes start fast). The model stage is :mod:`pipeline.run.model_stage`.

One row per shard of the frozen plan flows through:

1. :func:`load_audio` (the audio stage: CPU tasks of ``--audio-cpus`` each, scaled by Ray
   Data): reads the shard's items, computes its fingerprint and looks at its part: a part with
   the same fingerprint means the shard is done (resume), decided here in the workers, not one
   by one on the driver. Otherwise it fetches, decodes, resamples and picks the channel of
   every item (:mod:`pipeline.run.shard_audio`) and puts the shard's audio in the object store;
2. :class:`pipeline.run.model_stage.ShardTranscriber` (the model stage: an actor pool, one
   resident model per actor on its GPU or CPUs): transcribes the shard and writes its part
   atomically with its fingerprint (a retried or duplicated task rewrites the same part), then
   emits one small result row for the driver.

Failures: an item whose audio is unusable becomes an error row; a part write that fails after
the storage layer's own retries is tried again (``write_attempts``, with backoff) and, failing
that, the shard becomes a ``failed`` result row that a rerun redoes; an actor that dies is
restarted by Ray and its shard retried there or elsewhere (bounded by the run's restart and
retry budgets). Every start of a shard is counted by the run's :class:`RunLedger`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from pipeline.inputs.items import WorkItem
from pipeline.io import storage
from pipeline.io.ranges import RangeReader
from pipeline.output import parquet
from pipeline.output.paths import RunPaths
from pipeline.plan.frozen import read_shard
from pipeline.plan.shards import Shard

from .metrics import NoMetrics, recorder
from .shard_audio import ShardAudio, load_shard_audio
from .tasks import StageSettings, shard_task
from .usage import held_since

__all__ = ["RunLedger", "load_audio", "read_row_shard"]


def read_row_shard(row: dict[str, Any], settings: StageSettings) -> Shard:
    """The shard a stage row names: its items as the row carries them, else read from the run's plan."""
    if row.get("items"):
        items = [WorkItem.from_dict(d) for d in json.loads(row["items"])]
        return Shard(shard_id=row["shard_id"], index=int(row["index"]), items=items)
    paths = RunPaths(settings.output, settings.run_id)
    return read_shard(paths.plan_shard(row["shard_id"]), row["shard_id"], int(row["index"]))


def shard_items_json(shard: Shard) -> str:
    return json.dumps([i.to_dict() for i in shard.items], separators=(",", ":"))


_ranges: Optional[RangeReader] = None  # one per audio worker process: the copies of long files are reused
_metrics: dict[str, NoMetrics] = {}  # per run id, one per audio worker process


def load_audio(row: dict[str, Any], settings: StageSettings) -> dict[str, Any]:
    """The audio stage's task for one shard: its fingerprint; when its part already exists with
    that fingerprint, its stored summary (resume) and no audio; else the audio of every item
    (flat arrays: :meth:`ShardAudio.pack`). ``held``: the task's hold on its node
    (:mod:`pipeline.run.usage`), as JSON."""
    started = time.time()
    out = _load_audio(row, settings)
    held = held_since("audio task", started)
    metrics = _metrics.get(settings.run_id)
    if metrics is None:
        metrics = _metrics[settings.run_id] = recorder(settings.run_id, settings.metrics)
    metrics.inc("zipscribe_stage_shards", stage="audio_loaded", node_type=metrics.node_type(held.node_id))
    return {**out, "held": json.dumps(held.to_dict())}


def _load_audio(row: dict[str, Any], settings: StageSettings) -> dict[str, Any]:
    global _ranges
    shard = read_row_shard(row, settings)
    task = shard_task(shard, settings)
    row = {**row, "items": shard_items_json(shard)}  # the model stage takes the items from here, not storage
    done = None
    if settings.resume:
        try:
            done = parquet.finished_shard(task.part_uri, task.fingerprint)
        except storage.StorageError:
            done = None  # unreadable now: redo it (the write is idempotent)
    row = {**row, "fingerprint": task.fingerprint, "done": json.dumps(done) if done is not None else ""}
    if done is not None:
        return {**row, **ShardAudio([], [], []).pack()}
    if _ranges is None:
        _ranges = RangeReader()
    return {**row, **load_shard_audio(shard.items, _ranges, settings.audio_threads, settings.max_audio_seconds).pack()}


class RunLedger:
    """The run's record of shard starts, of the actors that did them and of the device failures
    that ended actors (a Ray actor on the driver's node, made by the driver). A shard started more
    than once was retried."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}
        self.actors: dict[str, dict[str, Any]] = {}
        self.device_failures: list[dict[str, Any]] = []
        self.processes: list[dict[str, Any]] = []

    def actor_up(self, record: dict[str, Any]) -> None:
        """A model actor's process started: ``actor_id``, ``node_id``, ``pid``, ``start`` (the process's
        start, Unix seconds), ``cpus``, ``gpus`` (the run's resources, :mod:`pipeline.run.usage`)."""
        self.processes.append(dict(record))

    def started(self, shard_id: str, worker: str, node: str, device: str) -> tuple[int, str]:
        """Count a start of the shard; returns its starts so far (this one included) and the last
        device failure that ended an actor while it held this shard ("" when none)."""
        self.starts[shard_id] = self.starts.get(shard_id, 0) + 1
        self.actors.setdefault(worker, {"worker": worker, "node_id": node, "device": device, "shards": 0})
        mine = [f for f in self.device_failures if f["shard_id"] == shard_id]
        return self.starts[shard_id], (f"{mine[-1]['worker']}: {mine[-1]['message']}" if mine else "")

    def device_failed(self, shard_id: Optional[str], worker: str, message: str) -> None:
        """An actor is ending after a device failure on ``shard_id`` (None: while it started)."""
        self.device_failures.append({"shard_id": shard_id, "worker": worker, "message": message})

    def finished(self, worker: str) -> None:
        if worker in self.actors:
            self.actors[worker]["shards"] += 1

    def report(self) -> dict[str, Any]:
        return {"starts": dict(self.starts), "actors": sorted(self.actors.values(), key=lambda a: a["worker"]),
                "device_failures": list(self.device_failures), "processes": list(self.processes)}
