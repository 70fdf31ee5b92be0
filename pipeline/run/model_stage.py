"""The model stage of a run: a Ray Data callable class holding one resident model per actor.

Each call gets one shard (``batch_size=1``) with its audio, already fetched and decoded by the
audio stage (:mod:`pipeline.run.stages`), transcribes it with :class:`~pipeline.run.transcriber.Transcriber`
and writes its part; it returns one small result row (:data:`RESULT_FIELDS`) for the driver.
A part write that fails after the storage layer's own retries is tried again (``write_attempts``,
with backoff); a shard that still cannot be done becomes a ``failed`` row, which a rerun redoes.

All torch work of an actor runs on one thread of its own (the *model thread*). Ray Data calls
the class's ``__init__`` and ``__call__`` from different threads, and torch's CPU kernels keep
one OpenMP thread pool per calling thread: a model loaded and warmed up on one thread and run
on another keeps two pools competing for the actor's cores, and was measured 25 % slower
here (bench/pipeline_overhead.py; 2 torch threads on 2 cores).
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.io import storage

from .shard_audio import ShardAudio
from .stages import read_row_shard
from .tasks import StageSettings, shard_task
from .transcriber import ActorConfig, DeviceFailure, Transcriber

__all__ = ["RESULT_FIELDS", "ShardTranscriber", "result_row"]

#: the columns of a model-stage result row (one per shard)
RESULT_FIELDS = ("shard_id", "index", "status", "fingerprint", "windows", "summary", "error", "worker", "node",
                 "device")  # worker: host:pid of the actor; node: its Ray node id


def result_row(row: dict[str, Any], **values: Any) -> dict[str, Any]:
    """A result row (:data:`RESULT_FIELDS`) for the shard of stage row ``row``."""
    out = {"shard_id": row["shard_id"], "index": int(row["index"]), "fingerprint": row.get("fingerprint", ""),
           "windows": int(row.get("windows", 0)), "status": "", "summary": "", "error": "", "worker": "", "node": "",
           "device": ""}
    out.update(values)
    return out


class ShardTranscriber:
    """Stage 3, a Ray Data callable class: one resident model per actor (see the module docstring).

    Receives batches of shard rows (``batch_size=1``: one shard at a time) with their audio."""

    def __init__(self, actor_config: ActorConfig, settings: StageSettings, ledger: Any = None):
        import ray

        self.settings = settings
        self.ledger = ledger
        self.node = ray.get_runtime_context().get_node_id()
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        gpu_ids = ray.get_gpu_ids()
        self.transcriber = self._model_thread.submit(Transcriber, actor_config, gpu_ids=gpu_ids).result()

    def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["done"]:
            return result_row(row, status="skipped", summary=row["done"])
        worker, device = self.transcriber.worker, str(self.transcriber.device)
        if self.ledger is not None:
            self.ledger.started.remote(row["shard_id"], worker, self.node, device)
        shard = read_row_shard(row, self.settings)
        task = shard_task(shard, self.settings, row["fingerprint"])
        audio = ShardAudio.unpack(row)
        error = ""
        for attempt in range(1, self.settings.write_attempts + 1):
            try:
                result = self.transcriber.transcribe_shard(task, audio)
            except storage.StorageError as exc:  # the part could not be written: try again a little later
                error = f"{type(exc).__name__}: {exc}"
                if attempt < self.settings.write_attempts:
                    time.sleep(min(30.0, 2.0 ** attempt))
                continue
            except DeviceFailure as exc:  # the CUDA context is poisoned: end the process; Ray restarts the
                # actor (within its restart budget) and Ray Data retries the shard on a healthy one
                logging.getLogger(__name__).critical("%s: device failure on shard %s, ending this actor: %s",
                                                     worker, row["shard_id"], exc)
                os._exit(70)
            except Exception as exc:  # noqa: BLE001 - a shard that cannot be done is reported, the run goes on
                error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
                break
            if self.ledger is not None:
                self.ledger.finished.remote(worker)
            return result_row(row, status="done", summary=json.dumps(result.as_dict()), worker=worker, node=self.node,
                           device=device)
        return result_row(row, status="failed", error=error, worker=worker, node=self.node, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["shard_id"]))]
        results = [self._model_thread.submit(self._one, r).result() for r in rows]
        return {k: [r[k] for r in results] for k in RESULT_FIELDS}
