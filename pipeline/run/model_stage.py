"""The model stage of a run: a Ray Data callable class holding one resident model per actor.

Each call gets one shard (``batch_size=1``) with its audio, already fetched and decoded by the
audio stage (:mod:`pipeline.run.stages`), and returns one small result row (:data:`RESULT_FIELDS`)
for the driver once the shard's parts are written.

**Threads.** All torch work of an actor runs on one thread of its own (the *model thread*). Ray
Data calls the class's ``__init__`` and ``__call__`` from different threads, and torch's CPU kernels
keep one OpenMP thread pool per calling thread: a model loaded and warmed up on one thread and run
on another keeps two pools competing for the actor's cores, and was measured 25 % slower here
(bench/pipeline_overhead.py; 2 torch threads on 2 cores). Scoring the rows (WER) and writing the
parts (local files or S3 uploads) run on a second thread, the *writer*: an actor holds
:data:`CONCURRENCY` shards at once, so the model starts the next shard while the last one is
written (:class:`OverlappedShards`). Exactly once still holds: the transcripts part, which marks a
shard done, is written last and atomically, and a shard's result row is emitted only after it
exists.

**Failures.** A part write that fails after the storage layer's own retries is tried again on the
writer (``write_attempts``, with backoff; the model is not run again). A shard the device cannot
do (:class:`~pipeline.run.failures.ShardDeviceError`: one cut alone does not fit in memory) is
decoded again after a pause, as often. A shard that still cannot be done becomes a ``failed`` row,
which a rerun redoes. A device failure that poisons the CUDA context, or a failed warm-up, ends
the actor's process after telling the run's ledger why: Ray restarts it (within
``--max-attempts``) and Ray Data retries its shards; a shard that ended its actor with a device
failure and was started ``write_attempts`` times is not started again but reported as failed with
the last failure, so a deterministic failure costs a bounded number of restarts, says what it was,
and the run goes on with the other shards.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import numpy as np

from pipeline.io import storage

from .failures import DeviceFailure, ShardDeviceError
from .metrics import recorder
from .shard_audio import ShardAudio
from .stages import read_row_shard
from .tasks import ShardResult, ShardTask, StageSettings, shard_task
from .transcriber import ActorConfig, DecodedShard, Transcriber, release_memory
from .usage import process_started_at

__all__ = ["CONCURRENCY", "RESULT_FIELDS", "OverlappedShards", "ShardTranscriber", "result_row"]

log = logging.getLogger(__name__)

#: the columns of a model-stage result row (one per shard)
RESULT_FIELDS = ("shard_id", "index", "status", "fingerprint", "windows", "summary", "error", "worker", "node",
                 "device", "held")  # worker: host:pid of the actor; node: its Ray node id; held: the audio task's hold

#: shards a model actor holds at once (Ray Data's ``max_concurrent_calls_per_actor``): one on the
#: model thread, one being written
CONCURRENCY = 2


def result_row(row: dict[str, Any], **values: Any) -> dict[str, Any]:
    """A result row (:data:`RESULT_FIELDS`) for the shard of stage row ``row``."""
    out = {"shard_id": row["shard_id"], "index": int(row["index"]), "fingerprint": row.get("fingerprint", ""),
           "windows": int(row.get("windows", 0)), "status": "", "summary": "", "error": "", "worker": "", "node": "",
           "device": "", "held": str(row.get("held", ""))}
    out.update(values)
    return out


def _backoff(attempt: int) -> float:
    return min(30.0, 2.0 ** attempt)


class OverlappedShards:
    """Shards through a transcriber on three threads: :meth:`Transcriber.plan_shard` on the caller's
    (one per shard held), :meth:`Transcriber.decode_shard` on the model thread,
    :meth:`Transcriber.write_shard` on the writer, so that one shard decodes while the next is
    planned and the one before it is written. Ray-free (the model stage wraps it).

    ``model_call(shard_id, fn, *args)`` runs ``fn(*args)`` on the model thread's behalf: the model
    stage's ends the process on a :class:`DeviceFailure`."""

    def __init__(self, transcriber: Any, attempts: int, model_thread: ThreadPoolExecutor,
                 model_call: Callable[..., Any]):
        self.transcriber = transcriber
        self.attempts = max(1, attempts)
        self._model_thread = model_thread
        self._model_call = model_call
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")

    def process(self, task: ShardTask, audio: ShardAudio) -> tuple[Optional[ShardResult], str]:
        """Decode and write one shard: ``(its summary, "")`` once its parts exist, or ``(None, why)``
        when it cannot be done now (a rerun does it). Called from several threads at once (one per
        shard the actor holds); the model and the writer each take one shard at a time."""
        shard_id = task.shard.shard_id
        error = ""
        decoded: Optional[DecodedShard] = None
        for attempt in range(1, self.attempts + 1):
            try:
                plan = self.transcriber.plan_shard(task, audio)  # here: host work, beside the model's
                decoded = self._model_thread.submit(
                    self._model_call, shard_id, self.transcriber.decode_shard, task, audio, plan).result()
                break
            except ShardDeviceError as exc:  # not the audio's fault: free what is cached, try again a little later
                error = f"{type(exc).__name__}: {exc}"
                log.warning("shard %s, attempt %d of %d: %s", shard_id, attempt, self.attempts, error)
                self._model_thread.submit(release_memory, self.transcriber.device).result()
                if attempt < self.attempts:
                    time.sleep(_backoff(attempt))
            except Exception as exc:  # noqa: BLE001 - a shard that cannot be done is reported, the run goes on
                return None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
        if decoded is None:
            return None, f"{error} (tried {self.attempts} times)"
        try:
            return self._writer.submit(self._write, decoded).result(), ""
        except storage.StorageError as exc:
            return None, f"{type(exc).__name__}: {exc} (written {self.attempts} times)"
        except Exception as exc:  # noqa: BLE001 - reported, the run goes on
            return None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"

    def _write(self, decoded: DecodedShard) -> ShardResult:
        """On the writer thread: write the shard's parts, again after a pause when storage fails."""
        for attempt in range(1, self.attempts + 1):
            try:
                return self.transcriber.write_shard(decoded)
            except storage.StorageError as exc:
                if attempt == self.attempts:
                    raise
                log.warning("shard %s: writing its parts failed (attempt %d of %d): %s", decoded.task.shard.shard_id,
                            attempt, self.attempts, exc)
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")


class ShardTranscriber:
    """Stage 3, a Ray Data callable class: one resident model per actor (see the module docstring).

    Receives batches of shard rows (``batch_size=1``: one shard at a time) with their audio; Ray
    Data calls it from up to :data:`CONCURRENCY` threads at once (``max_concurrent_calls_per_actor``
    with ``enable_true_multi_threading``), each waiting for its shard's turn on the model thread and
    on the writer."""

    def __init__(self, actor_config: ActorConfig, settings: StageSettings, ledger: Any = None):
        import ray

        self.settings = settings
        self.ledger = ledger
        context = ray.get_runtime_context()
        self.node = context.get_node_id()
        assigned = context.get_assigned_resources()
        if ledger is not None:  # the process holds its resources from its start (pipeline.run.usage)
            ledger.actor_up.remote({"actor_id": context.get_actor_id(), "node_id": self.node, "pid": os.getpid(),
                                    "start": process_started_at(), "cpus": assigned.get("CPU", 0.0),
                                    "gpus": assigned.get("GPU", 0.0)})
        self.metrics = recorder(settings.run_id, settings.metrics)
        self.node_type = self.metrics.node_type(self.node)
        for name in ("zipscribe_shards_retried", "zipscribe_oom_splits"):  # rare events: shown as 0, not missing
            self.metrics.zero(name, node_type=self.node_type)
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        gpu_ids = ray.get_gpu_ids()
        gpu_share = assigned.get("GPU")
        self.transcriber = self._model_thread.submit(self._model_call, None, Transcriber, actor_config, gpu_ids,
                                                     gpu_share).result()
        self.shards = OverlappedShards(self.transcriber, settings.write_attempts, self._model_thread, self._model_call)

    def _model_call(self, shard_id: Optional[str], fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (on the model thread); a :class:`DeviceFailure` ends this process."""
        try:
            return fn(*args)
        except DeviceFailure as exc:  # the CUDA context is poisoned, or the warm-up failed on the device: end the
            self._report_device_failure(shard_id, exc)  # process; Ray restarts the actor (within its restart
            os._exit(70)  # budget) and Ray Data retries the shard on a healthy one

    def _report_device_failure(self, shard_id: Optional[str], exc: DeviceFailure) -> None:
        """Log the failure and record it in the run's ledger (the run summary says why actors died)."""
        import ray

        worker = getattr(getattr(self, "transcriber", None), "worker", f"{socket.gethostname()}:{os.getpid()}")
        where = f"shard {shard_id}" if shard_id else "start-up"
        log.critical("%s: device failure in %s, ending this actor: %s", worker, where, exc)
        if self.ledger is not None:
            try:
                ray.get(self.ledger.device_failed.remote(shard_id, worker, f"{exc}".splitlines()[0][:500]), timeout=10)
            except Exception:  # noqa: BLE001 - the process ends either way
                log.exception("could not record the device failure in the run's ledger")

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        self.metrics.inc("zipscribe_stage_shards", stage="model_started", node_type=self.node_type)
        out = self._shard(row)
        self.metrics.inc("zipscribe_stage_shards", stage="model_finished", node_type=self.node_type)
        return out

    def _shard(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["done"]:
            return result_row(row, status="skipped", summary=row["done"])
        worker, device = self.transcriber.worker, str(self.transcriber.device)
        where = dict(worker=worker, node=self.node, device=device)
        if self.ledger is not None:
            import ray

            starts, failure = ray.get(self.ledger.started.remote(row["shard_id"], worker, self.node, device))
            if starts > 1:
                self.metrics.inc("zipscribe_shards_retried", node_type=self.node_type)
            if failure and starts > self.settings.write_attempts:  # it ended its actors: a deterministic failure
                return result_row(row, status="failed", **where, error=(
                    f"not started again after {starts - 1} starts: a device failure on it ended its actor, the last: "
                    f"{failure}"))
        shard = read_row_shard(row, self.settings)
        task = shard_task(shard, self.settings, row["fingerprint"])
        result, error = self.shards.process(task, ShardAudio.unpack(row))
        if result is None:
            return result_row(row, status="failed", error=error, **where)
        if self.ledger is not None:
            self.ledger.finished.remote(worker)
        self._record(result)
        return result_row(row, status="done", summary=json.dumps(result.as_dict()), **where)

    def _record(self, result: ShardResult) -> None:
        """The model stage's metrics of a shard done (pipeline.run.metrics)."""
        if not self.metrics.enabled:
            return
        tags = {"node_type": self.node_type}
        busy = sum(result.stage_seconds.get(k, 0.0) for k in ("features", "encoder", "decoding"))
        self.metrics.inc("zipscribe_model_audio_seconds", result.audio_seconds, **tags)
        self.metrics.inc("zipscribe_model_busy_seconds", busy, **tags)
        self.metrics.inc("zipscribe_model_input_seconds", result.model_input_seconds, **tags)
        self.metrics.inc("zipscribe_model_padded_seconds", result.padded_seconds, **tags)
        self.metrics.inc("zipscribe_oom_splits", result.oom_splits, **tags)
        self.metrics.observe("zipscribe_shard_model_seconds", busy, **tags)
        if busy > 0:
            self.metrics.set("zipscribe_model_rtfx", result.audio_seconds / busy, **tags)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["shard_id"]))]
        results = [self._one(r) for r in rows]
        return {k: [r[k] for r in results] for k in RESULT_FIELDS}
