"""The driver: owns a transcription run from inputs to summary.

Flow: stream work items from the inputs (:func:`pipeline.plan.items.plan_items`) ->
consecutive shards with deterministic ids -> skip shards whose part already exists with the
same fingerprint (resume) -> hand the rest to a pool of :class:`~pipeline.run.transcriber.Transcriber`
actors (:class:`ActorPool`), at most ``shards_in_flight`` outstanding -> retry a shard whose
actor died -> stitch long cuts -> write ``runs/<run_id>/summary.json``.

The inputs are never held in memory: shards are cut from the stream as actors free up. An
optional first pass sums durations for the ETA.

Actor deaths: an actor that dies while it holds shards costs each of them an attempt
(``max_attempts`` in all). Ray restarts the actor (at most ``max_attempts`` times); while it
restarts it is given no work, so a retry is never spent on an actor that cannot take it: the
driver asks it (``describe()``) until it answers, waiting at most ``actor_restart_timeout``,
then gives it work again. One that cannot be restarted leaves the pool; when no actor is left
the remaining shards are reported as failed (a rerun with the same run id finishes them).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from model.checkpoint import file_sha256, find_checkpoint, load_checkpoint
from model.tokenizer import Tokenizer
from pipeline.inputs.items import WorkItem
from pipeline.inputs.manifests import iter_work_items
from pipeline.io import storage
from pipeline.io.model_store import local_model_dir
from pipeline.longform.stitching import LongCuts, StitchSummary
from pipeline.output import parquet
from pipeline.output.paths import RunPaths
from pipeline.output.records import SCHEMA_VERSION
from pipeline.plan.items import plan_items
from pipeline.plan.preview import PlanSummary, preview
from pipeline.plan.shards import Shard, make_shards
from pipeline.plan.windows import plan_windows

from .config import TranscribeConfig, check_run_id, long_audio_label, new_run_id
from .progress import Progress
from .resources import plan_resources
from .summary import RunSummary
from .transcriber import ActorConfig, ShardResult, ShardTask, Transcriber

__all__ = ["ActorPool", "dry_run", "run", "run_in_process", "validate_inputs"]

log = logging.getLogger("zipscribe.driver")


def validate_inputs(cfg: TranscribeConfig) -> tuple[Path, str]:
    """Fail fast, before any actor starts: the manifest must be readable and the model
    must load. Returns the local model directory and its checkpoint's SHA-256."""
    if cfg.max_cut_seconds > 0:
        plan_windows(2 * cfg.max_cut_seconds, cfg.max_cut_seconds, cfg.window_overlap_seconds)  # ValueError if invalid
    for uri in cfg.manifest:
        next(iter(iter_work_items(uri, dataset=cfg.dataset)), None)  # raises a ManifestError / StorageError
    model_dir = local_model_dir(cfg.model)
    checkpoint = find_checkpoint(model_dir)
    config_path = model_dir / "config.json"
    load_checkpoint(checkpoint, config=config_path if config_path.is_file() else None)
    Tokenizer.from_dir(model_dir)
    return model_dir, file_sha256(checkpoint)


def _items(cfg: TranscribeConfig) -> Iterator[WorkItem]:
    return plan_items(cfg.manifest, dataset=cfg.dataset, segments=cfg.segments, max_cut_seconds=cfg.max_cut_seconds,
                      overlap_seconds=cfg.window_overlap_seconds)


def actor_config(cfg: TranscribeConfig, model_uri: str, sha256: str, run_id: str, threads: int) -> ActorConfig:
    """The transcriber's configuration for a run."""
    return ActorConfig(
        model_uri=model_uri, model_sha256=sha256, output_uri=cfg.output, run_id=run_id, decoding=cfg.decoding,
        max_batch_seconds=cfg.max_batch_seconds, max_batch_size=cfg.max_batch_size, amp_dtype=cfg.amp_dtype,
        rescoring_dtype=cfg.rescoring_dtype, num_threads=threads, normalizer=cfg.normalizer,
        pause_split=cfg.pause_split, max_cut_seconds=cfg.max_cut_seconds,
    )


def _stitch(long_cuts: LongCuts, cfg: TranscribeConfig, model_dir: Path) -> Optional[StitchSummary]:
    """Stitch the run's long cuts (``None`` when it had none) with the run's options."""
    return long_cuts.stitch(model_dir, normalizer=cfg.normalizer, max_cut_seconds=cfg.max_cut_seconds,
                            overlap_seconds=cfg.window_overlap_seconds, resume=cfg.resume)


@dataclass
class _Actor:
    handle: Any
    busy: int = 0  # shards it holds
    restarting_since: Optional[float] = None  # set while Ray restarts it
    ping: Any = None  # the describe() call that tells when a restart is over
    ping_after: float = 0.0  # when to ask again (a ping refused while restarting)

    @property
    def ready(self) -> bool:
        return self.restarting_since is None


@dataclass
class ActorPool:
    """The run's transcriber actors and what the driver knows of each: how many shards it holds,
    and whether Ray is restarting it.

    A dead actor is *restarting* until a ``describe()`` call on it succeeds; a call refused with
    ``ActorUnavailableError`` is asked again shortly after. An actor that stays unavailable for
    ``restart_timeout`` seconds, or that Ray reports dead for good (restarts exhausted), leaves
    the pool.
    """

    actors: list[_Actor]
    per_actor: int
    restart_timeout: float
    retry_interval: float = 0.5
    lost: int = 0  # actors that left the pool
    deaths: int = 0  # times an actor died (each restart or loss)
    _pings: dict[Any, _Actor] = field(default_factory=dict)

    @classmethod
    def of(cls, handles: list[Any], per_actor: int, restart_timeout: float) -> "ActorPool":
        return cls([_Actor(h) for h in handles], per_actor, restart_timeout)

    def __len__(self) -> int:
        return len(self.actors)

    def pick(self) -> Optional[_Actor]:
        """The ready actor holding the fewest shards, if it can take another."""
        ready = [a for a in self.actors if a.ready and a.busy < self.per_actor]
        return min(ready, key=lambda a: a.busy) if ready else None

    def went_down(self, actor: _Actor, now: float) -> None:
        """A call to ``actor`` failed because its process died or is restarting."""
        if actor not in self.actors or not actor.ready:
            return
        self.deaths += 1
        actor.restarting_since = now
        actor.ping, actor.ping_after = None, now

    def refs(self, now: float) -> list[Any]:
        """Outstanding pings (sending the ones that are due)."""
        for actor in self.actors:
            if not actor.ready and actor.ping is None and now >= actor.ping_after:
                actor.ping = actor.handle.describe.remote()
                self._pings[actor.ping] = actor
        return list(self._pings)

    def is_ping(self, ref: Any) -> bool:
        return ref in self._pings

    def answered(self, ref: Any, now: float) -> None:
        """Digest the answer of a ping: back in service, ask again later, or gone."""
        import ray

        actor = self._pings.pop(ref)
        actor.ping = None
        try:
            ray.get(ref)
        except ray.exceptions.ActorUnavailableError:
            actor.ping_after = now + self.retry_interval
            return
        except ray.exceptions.RayActorError as exc:
            log.error("an actor could not be restarted (%s); %d actor(s) left", type(exc).__name__, len(self) - 1)
            self._remove(actor)
            return
        log.info("an actor is back after %.1f s of restarting", now - (actor.restarting_since or now))
        actor.restarting_since = None

    def expire(self, now: float) -> None:
        """Drop actors that have been restarting for longer than the timeout."""
        for actor in list(self.actors):
            if not actor.ready and now - (actor.restarting_since or now) > self.restart_timeout:
                log.error("an actor did not come back within %.0f s; %d actor(s) left", self.restart_timeout,
                          len(self) - 1)
                self._remove(actor)

    def _remove(self, actor: _Actor) -> None:
        import ray

        self.actors.remove(actor)
        self.lost += 1
        if actor.ping is not None:
            self._pings.pop(actor.ping, None)
        ray.kill(actor.handle, no_restart=True)

    def kill_all(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor.handle, no_restart=True)


def run(cfg: TranscribeConfig) -> RunSummary:
    """Execute a transcription run on the Ray cluster (local Ray if none is running)."""
    import ray

    started = time.perf_counter()
    run_id = check_run_id(cfg.run_id or new_run_id())
    paths = RunPaths(cfg.output, run_id)
    model_dir, sha256 = validate_inputs(cfg)
    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, ignore_reinit_error=True, logging_level=logging.WARNING,
                 log_to_driver=True, include_dashboard=False if address is None else None)

    num_actors, resources = plan_resources(ray.cluster_resources(), cfg)
    threads = max(1, int(resources["num_cpus"])) if resources["num_gpus"] == 0 else 1
    actor_cfg = actor_config(cfg, cfg.model, sha256, run_id, threads)
    # max_concurrency=2: an actor holds two shards, loading the audio of one while the other uses the model
    remote_cls = ray.remote(Transcriber).options(max_restarts=cfg.max_attempts, max_task_retries=0, max_concurrency=2,
                                                 **resources)
    handles = [remote_cls.remote(actor_cfg) for _ in range(num_actors)]
    facts = ray.get(handles[0].describe.remote())
    pool = ActorPool.of(handles, per_actor=2, restart_timeout=cfg.actor_restart_timeout)

    summary = RunSummary(
        run_id=run_id, manifest=list(cfg.manifest), output=cfg.output, model_id=facts["model_id"],
        model_sha256=sha256, decoding=facts["decoding"], started_at=datetime.now(timezone.utc).isoformat(),
        num_actors=num_actors, resources_per_actor=resources, transcripts_uri=paths.transcripts,
    )
    fingerprint_parts = (sha256, facts["decoding"], json.dumps(cfg.decoding, sort_keys=True),
                         f"precision={cfg.amp_dtype}/{cfg.rescoring_dtype}",
                         f"max_batch_seconds={cfg.max_batch_seconds}", f"normalizer={cfg.normalizer}",
                         f"schema={SCHEMA_VERSION}", f"segments={cfg.segments}",
                         long_audio_label(cfg))

    total_seconds = sum((i.duration or 0.0) for i in _items(cfg)) if cfg.eta else None
    progress = Progress(total_seconds, cfg.progress)
    in_flight_limit = cfg.shards_in_flight or 2 * num_actors
    pending: dict[Any, tuple[ShardTask, _Actor]] = {}
    queue: deque[ShardTask] = deque()  # shards to (re)send before new ones
    devices: set[str] = set()
    shards = make_shards(_items(cfg), cfg.shard_size)
    exhausted = False
    long_cuts = LongCuts(cfg.output, run_id)

    def next_task() -> Optional[ShardTask]:
        nonlocal exhausted
        if queue:
            return queue.popleft()
        while not exhausted:
            shard: Optional[Shard] = next(shards, None)
            if shard is None:
                exhausted = True
                return None
            summary.shards_total += 1
            fp = shard.fingerprint(*fingerprint_parts)
            uri = paths.part(shard.shard_id)
            windows_uri = long_cuts.windows_part_for(shard, fp)
            done = parquet.finished_shard(uri, fp) if cfg.resume else None
            if done is not None:
                summary.shards_skipped += 1
                summary.add(done)
                progress.update(done, summary.audio_seconds)
                continue
            return ShardTask(shard=shard, fingerprint=fp, part_uri=uri, windows_part_uri=windows_uri)
        return None

    def give_up(task: ShardTask, why: str) -> None:
        log.error("shard %s failed: %s", task.shard.shard_id, why)
        summary.shards_failed.append(task.shard.shard_id)

    try:
        while True:
            while len(pending) < in_flight_limit:
                actor = pool.pick()
                if actor is None:
                    break
                task = next_task()
                if task is None:
                    break
                actor.busy += 1
                pending[actor.handle.process_shard.remote(task)] = (task, actor)
            if not pool.actors:  # every actor is gone: nothing can run the rest
                left = list(queue)
                queue.clear()
                for task in left + list(iter(next_task, None)):
                    give_up(task, "no transcriber actor is left")
                break
            if not pending and not queue and exhausted:
                break
            now = time.perf_counter()
            waiting = list(pending) + pool.refs(now)
            if waiting:
                ready, _ = ray.wait(waiting, num_returns=1, timeout=pool.retry_interval)
            else:  # only actors waiting to be asked again whether their restart is over
                ready = []
                time.sleep(pool.retry_interval)
            now = time.perf_counter()
            pool.expire(now)
            if not ready:
                continue
            ref = ready[0]
            if pool.is_ping(ref):
                pool.answered(ref, now)
                continue
            task, actor = pending.pop(ref)
            actor.busy -= 1
            try:
                result: ShardResult = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ObjectLostError) as exc:
                # the actor died holding the shard (Ray reports ActorUnavailableError while it
                # restarts it, ActorDiedError once its restarts are spent): the shard is tried again
                # on an actor that is up, never on one the driver knows to be restarting
                pool.went_down(actor, now)
                if task.attempt >= cfg.max_attempts:
                    give_up(task, f"its actor died on each of {task.attempt} attempts ({type(exc).__name__})")
                else:
                    log.warning("shard %s: actor died (%s); retrying (attempt %d)", task.shard.shard_id,
                                type(exc).__name__, task.attempt + 1)
                    summary.shard_retries += 1
                    queue.append(ShardTask(task.shard, task.fingerprint, task.part_uri, task.attempt + 1,
                                           task.windows_part_uri))
                continue
            done = result.as_dict()
            devices.add(result.device)
            summary.shards_done += 1
            summary.add(done)
            progress.update(done, summary.audio_seconds)
    finally:
        progress.close()
        pool.kill_all()
    summary.actor_deaths = pool.deaths

    stitched = _stitch(long_cuts, cfg, model_dir)
    if stitched is not None:
        summary.cuts_ok += stitched.cuts_ok
        summary.cuts_error += stitched.cuts_error
        summary.long_cuts = stitched.cuts_ok + stitched.cuts_error
        summary.long_cuts_incomplete = stitched.cuts_incomplete
        summary.seams_aligned += stitched.seams_aligned
        if stitched.incomplete:
            log.error("%d long cut(s) have windows in failed shards and got no row: %s", stitched.cuts_incomplete,
                      ", ".join(stitched.incomplete[:10]))
    summary.devices = sorted(devices)
    summary.finish(time.perf_counter() - started)
    storage.write_text_atomic(paths.summary, json.dumps(asdict(summary), indent=2))
    return summary


def run_in_process(cfg: TranscribeConfig, run_id: str, num_threads: int = 2) -> dict[str, Any]:
    """The whole run in this process with one :class:`Transcriber`, no Ray: items ->
    windows -> shards -> transcripts parts -> stitched long cuts. For benchmarks, tests and
    debugging a manifest on a laptop; no retries, no resume bookkeeping beyond the parts."""
    model_dir, sha256 = validate_inputs(cfg)
    paths = RunPaths(cfg.output, check_run_id(run_id))
    actor = Transcriber(actor_config(cfg, str(model_dir), sha256, run_id, num_threads))
    long_cuts = LongCuts(cfg.output, run_id)
    results = []
    for shard in make_shards(_items(cfg), cfg.shard_size):
        fp = shard.fingerprint(run_id, long_audio_label(cfg))
        results.append(actor.process_shard(ShardTask(shard, fp, paths.part(shard.shard_id),
                                                     windows_part_uri=long_cuts.windows_part_for(shard, fp))))
    return {"shards": results, "stitched": _stitch(long_cuts, cfg, model_dir), "actor": actor}


def dry_run(cfg: TranscribeConfig) -> PlanSummary:
    """``--plan-only``: the run's shards, batches and padding from its inputs alone (no Ray, no
    model, nothing written)."""
    return preview(cfg.manifest, _items(cfg), shard_size=cfg.shard_size, max_batch_seconds=cfg.max_batch_seconds,
                   max_batch_size=cfg.max_batch_size)
