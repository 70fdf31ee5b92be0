"""The driver: owns a transcription run from manifest to summary.

Flow: stream work items from the manifest -> consecutive shards with
deterministic ids -> skip shards whose part already exists with the same
fingerprint (resume) -> hand the rest to a pool of ``Transcriber`` actors with
at most ``shards_in_flight`` outstanding -> retry a shard whose actor died ->
write ``runs/<run_id>/summary.json``.

The manifest is never held in memory: shards are cut from the stream as
actors free up. An optional first pass sums durations for the ETA.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Optional

from pathlib import Path

from model.checkpoint import file_sha256, load_checkpoint
from model.recognizer import find_checkpoint
from model.tokenizer import Tokenizer

from . import parquet, storage
from .records import SCHEMA_VERSION
from .actor import ActorConfig, ShardResult, ShardTask, Transcriber
from .pauses import PauseSplit
from .batching import Shard, make_shards
from .longform import expand_windows, plan_windows
from .manifests import iter_work_items
from .stitching import LongCuts, StitchSummary
from .model_store import local_model_dir

log = logging.getLogger("zipscribe.driver")


@dataclass
class TranscribeConfig:
    """Everything a run needs; ``jobs/transcribe.py`` fills it from the command line."""

    manifest: list[str]
    model: str
    output: str
    run_id: Optional[str] = None
    dataset: Optional[str] = None
    decoding: dict[str, Any] = field(default_factory=dict)
    num_actors: Optional[int] = None
    gpus_per_actor: Optional[float] = None
    cpus_per_actor: Optional[float] = None
    max_batch_seconds: float = 160.0
    max_batch_size: Optional[int] = None
    shard_size: int = 1000
    shards_in_flight: Optional[int] = None
    max_attempts: int = 3
    resume: bool = True
    eta: bool = True
    amp_dtype: str = "auto"
    rescoring_dtype: str = "auto"
    normalizer: str = "english"
    progress: bool = True
    ray_address: Optional[str] = None
    max_cut_seconds: float = 30.0  # longer cuts are split into overlapping windows; <= 0: never
    window_overlap_seconds: float = 4.0
    segments: str = "cuts"  # or "supervisions": one row per supervision segment
    #: windows of long cuts are transcribed as the speech between their pauses; None: whole
    pause_split: Optional[PauseSplit] = field(default_factory=PauseSplit)


@dataclass
class RunSummary:
    run_id: str
    manifest: list[str]
    output: str
    model_id: str
    model_sha256: str
    decoding: str
    started_at: str
    finished_at: str = ""
    shards_total: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    shards_failed: list[str] = field(default_factory=list)
    shard_retries: int = 0
    cuts_ok: int = 0
    cuts_error: int = 0
    long_cuts: int = 0  # cuts transcribed in windows and stitched (included in cuts_ok / cuts_error)
    long_cuts_incomplete: int = 0  # long cuts with a window in a failed shard: no row yet
    windows: int = 0
    seams_aligned: int = 0
    audio_seconds: float = 0.0
    audio_hours: float = 0.0
    model_input_seconds: float = 0.0  # audio the model saw: less than audio_seconds where pauses were cut out
    padded_seconds: float = 0.0
    padding_ratio: float = 0.0  # 1 - model input / padded model input
    wall_seconds: float = 0.0
    rtfx: float = 0.0
    model_rtfx: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    num_actors: int = 0
    resources_per_actor: dict[str, float] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)
    transcripts_uri: str = ""

    def add(self, r: dict[str, Any]) -> None:
        self.cuts_ok += r["cuts_ok"]
        self.cuts_error += r["cuts_error"]
        self.windows += r.get("windows_ok", 0) + r.get("windows_error", 0)
        self.audio_seconds += r["audio_seconds"]
        self.padded_seconds += r["padded_seconds"]
        self.model_input_seconds += r.get("model_input_seconds", r["audio_seconds"])  # parts of older versions lack it
        for k, v in r["stage_seconds"].items():
            self.stage_seconds[k] = self.stage_seconds.get(k, 0.0) + v
        for k in ("load_seconds", "load_wait_seconds"):
            self.stage_seconds[k.removesuffix("_seconds")] = self.stage_seconds.get(k.removesuffix("_seconds"), 0.0) + r[k]

    def finish(self, wall: float) -> None:
        self.finished_at = datetime.now(timezone.utc).isoformat()
        self.wall_seconds = round(wall, 3)
        self.audio_hours = self.audio_seconds / 3600
        self.padding_ratio = 0.0 if self.padded_seconds == 0 else 1 - self.model_input_seconds / self.padded_seconds
        self.rtfx = self.audio_seconds / wall if wall > 0 else 0.0
        model_time = sum(self.stage_seconds.get(k, 0.0) for k in ("features", "encoder", "decoding"))
        self.model_rtfx = self.audio_seconds / model_time if model_time > 0 else 0.0


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,127}")


def check_run_id(run_id: str) -> str:
    """Run ids become path segments of every output object: letters, digits, ``._=-`` only."""
    if not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ValueError(f"invalid --run-id {run_id!r}: use 1-128 letters, digits, '.', '_', '=', '-' (no '..', no '/')")
    return run_id


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


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def transcripts_dir(output: str, run_id: str) -> str:
    return storage.join(output, "transcripts", f"run_id={run_id}")


def part_uri(output: str, run_id: str, shard_id: str) -> str:
    return storage.join(transcripts_dir(output, run_id), f"part-{shard_id}.parquet")


def summary_uri(output: str, run_id: str) -> str:
    return storage.join(output, "runs", run_id, "summary.json")


def iter_items(cfg: TranscribeConfig) -> Iterator:
    """The run's work items: cuts (or supervision segments), long ones as their windows."""
    for uri in cfg.manifest:
        items = iter_work_items(uri, dataset=cfg.dataset, segments=cfg.segments)
        yield from expand_windows(items, cfg.max_cut_seconds, cfg.window_overlap_seconds)


def long_audio_label(cfg: TranscribeConfig) -> str:
    """How long audio is cut up, for fingerprints: a change redoes the shards it affects."""
    p = cfg.pause_split
    pauses = "off" if p is None else f"{p.min_pause_seconds}/{p.pad_seconds}/{p.threshold_db}"
    return f"windows={cfg.max_cut_seconds}/{cfg.window_overlap_seconds} pauses={pauses}"


def actor_config(cfg: TranscribeConfig, model_uri: str, sha256: str, run_id: str, threads: int) -> ActorConfig:
    """The transcriber's configuration for a run."""
    return ActorConfig(
        model_uri=model_uri, model_sha256=sha256, output_uri=cfg.output, run_id=run_id, decoding=cfg.decoding,
        max_batch_seconds=cfg.max_batch_seconds, max_batch_size=cfg.max_batch_size, amp_dtype=cfg.amp_dtype,
        rescoring_dtype=cfg.rescoring_dtype, num_threads=threads, normalizer=cfg.normalizer,
        pause_split=cfg.pause_split, max_cut_seconds=cfg.max_cut_seconds,
    )


def plan_resources(cluster: dict[str, float], cfg: TranscribeConfig) -> tuple[int, dict[str, float]]:
    """Actor count and per-actor resources from what the cluster has.

    GPUs: one actor per GPU (``gpus_per_actor`` 1) with 1 CPU each for its
    loader threads. No GPUs: actors of ``cpus_per_actor`` CPUs (default: all
    CPUs up to 4, so a 2-CPU machine gets one 2-CPU actor, whose torch uses
    both cores). GPUs are never requested on a cluster without them.
    """
    total_cpus = float(cluster.get("CPU", 1))
    total_gpus = float(cluster.get("GPU", 0))
    gpus = cfg.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if total_gpus >= 1 else 0.0
    if gpus > 0 and total_gpus <= 0:
        raise RuntimeError("--gpus-per-actor > 0 but the Ray cluster has no GPUs (set it to 0 to run on CPU)")
    if gpus > 0:
        cpus = cfg.cpus_per_actor or 1.0
        fit = int(total_gpus / gpus + 1e-9)
    else:
        cpus = cfg.cpus_per_actor or float(max(1, min(4, int(total_cpus))))
        fit = max(1, int(total_cpus / cpus + 1e-9))
    actors = cfg.num_actors or fit
    resources = {"num_cpus": cpus, "num_gpus": gpus}
    return actors, resources


class _Progress:
    """tqdm bar in audio hours with RTFx and ETA (total from the counting pass)."""

    def __init__(self, total_seconds: Optional[float], enabled: bool):
        self.bar = None
        self.start = time.perf_counter()
        if enabled:
            from tqdm import tqdm

            total = None if total_seconds is None else round(total_seconds / 3600, 4)
            self.bar = tqdm(total=total, unit="h", desc="audio", bar_format="{l_bar}{bar}| {n:.3f}/{total_fmt} h [{elapsed}<{remaining}{postfix}]")

    def update(self, result: dict[str, Any], done_seconds: float) -> None:
        if self.bar is None:
            return
        wall = time.perf_counter() - self.start
        self.bar.update(round(result["audio_seconds"] / 3600, 6))
        self.bar.set_postfix_str(f"RTFx {done_seconds / max(wall, 1e-9):.1f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _stitch(long_cuts: LongCuts, cfg: TranscribeConfig, model_dir: Path) -> Optional[StitchSummary]:
    """Stitch the run's long cuts (``None`` when it had none) with the run's options."""
    return long_cuts.stitch(model_dir, normalizer=cfg.normalizer, max_cut_seconds=cfg.max_cut_seconds,
                            overlap_seconds=cfg.window_overlap_seconds, resume=cfg.resume)


def run(cfg: TranscribeConfig) -> RunSummary:
    """Execute a transcription run on the Ray cluster (local Ray if none is running)."""
    import ray

    started = time.perf_counter()
    run_id = check_run_id(cfg.run_id or new_run_id())
    model_dir, sha256 = validate_inputs(cfg)
    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, ignore_reinit_error=True, logging_level=logging.WARNING,
                 log_to_driver=True, include_dashboard=False if address is None else None)

    num_actors, resources = plan_resources(ray.cluster_resources(), cfg)
    threads = max(1, int(resources["num_cpus"])) if resources["num_gpus"] == 0 else 1
    actor_cfg = actor_config(cfg, cfg.model, sha256, run_id, threads)
    # max_concurrency=2: an actor holds two shards, loading the audio of one while the other uses the model
    remote_cls = ray.remote(Transcriber).options(max_restarts=cfg.max_attempts, max_task_retries=0, max_concurrency=2, **resources)
    actors = [remote_cls.remote(actor_cfg) for _ in range(num_actors)]
    facts = ray.get(actors[0].describe.remote())

    summary = RunSummary(
        run_id=run_id, manifest=list(cfg.manifest), output=cfg.output, model_id=facts["model_id"],
        model_sha256=sha256, decoding=facts["decoding"], started_at=datetime.now(timezone.utc).isoformat(),
        num_actors=num_actors, resources_per_actor=resources, transcripts_uri=transcripts_dir(cfg.output, run_id),
    )
    fingerprint_parts = (sha256, facts["decoding"], json.dumps(cfg.decoding, sort_keys=True),
                         f"precision={cfg.amp_dtype}/{cfg.rescoring_dtype}",
                         f"max_batch_seconds={cfg.max_batch_seconds}", f"normalizer={cfg.normalizer}",
                         f"schema={SCHEMA_VERSION}", f"segments={cfg.segments}",
                         long_audio_label(cfg))

    total_seconds = None
    if cfg.eta:
        total_seconds = sum((i.duration or 0.0) for i in iter_items(cfg))
    progress = _Progress(total_seconds, cfg.progress)
    in_flight_limit = cfg.shards_in_flight or 2 * num_actors
    pending: dict[Any, tuple[ShardTask, Any]] = {}
    retry_queue: list[ShardTask] = []
    devices: set[str] = set()
    shards = make_shards(iter_items(cfg), cfg.shard_size)
    exhausted = False
    long_cuts = LongCuts(cfg.output, run_id)

    def next_task() -> Optional[ShardTask]:
        nonlocal exhausted
        if retry_queue:
            return retry_queue.pop(0)
        while not exhausted:
            shard: Optional[Shard] = next(shards, None)
            if shard is None:
                exhausted = True
                return None
            summary.shards_total += 1
            fp = shard.fingerprint(*fingerprint_parts)
            uri = part_uri(cfg.output, run_id, shard.shard_id)
            windows_uri = long_cuts.windows_part_for(shard, fp)
            done = parquet.finished_shard(uri, fp) if cfg.resume else None
            if done is not None:
                summary.shards_skipped += 1
                summary.add(done)
                progress.update(done, summary.audio_seconds)
                continue
            return ShardTask(shard=shard, fingerprint=fp, part_uri=uri, windows_part_uri=windows_uri)
        return None

    round_robin = 0
    avoid: dict[str, Any] = {}  # shard id -> the actor that died holding it
    try:
        while True:
            while len(pending) < in_flight_limit:
                task = next_task()
                if task is None:
                    break
                actor = actors[round_robin % len(actors)]
                if len(actors) > 1 and avoid.get(task.shard.shard_id) is actor:
                    # the actor this shard just killed is still restarting: a task sent to it now
                    # fails at once and wastes an attempt, so give the retry to the next actor
                    round_robin += 1
                    actor = actors[round_robin % len(actors)]
                round_robin += 1
                pending[actor.process_shard.remote(task)] = (task, actor)
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            task, actor = pending.pop(ref)
            try:
                result: ShardResult = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError) as exc:
                if task.attempt >= cfg.max_attempts:
                    log.error("shard %s failed %d times, giving up: %s", task.shard.shard_id, task.attempt, exc)
                    summary.shards_failed.append(task.shard.shard_id)
                else:
                    log.warning("shard %s: actor died (%s); retrying (attempt %d)", task.shard.shard_id, type(exc).__name__, task.attempt + 1)
                    summary.shard_retries += 1
                    avoid[task.shard.shard_id] = actor
                    retry_queue.append(ShardTask(task.shard, task.fingerprint, task.part_uri, task.attempt + 1,
                                                 task.windows_part_uri))
                continue
            done = result.as_dict()
            devices.add(result.device)
            summary.shards_done += 1
            summary.add(done)
            progress.update(done, summary.audio_seconds)
    finally:
        progress.close()
        for a in actors:
            ray.kill(a)

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
    storage.write_text_atomic(summary_uri(cfg.output, run_id), json.dumps(asdict(summary), indent=2))
    return summary


def run_in_process(cfg: TranscribeConfig, run_id: str, num_threads: int = 2) -> dict[str, Any]:
    """The whole run in this process with one :class:`Transcriber`, no Ray: items ->
    windows -> shards -> transcripts parts -> stitched long cuts. For benchmarks, tests and
    debugging a manifest on a laptop; no retries, no resume bookkeeping beyond the parts."""
    model_dir, sha256 = validate_inputs(cfg)
    actor = Transcriber(actor_config(cfg, str(model_dir), sha256, check_run_id(run_id), num_threads))
    long_cuts = LongCuts(cfg.output, run_id)
    results = []
    for shard in make_shards(iter_items(cfg), cfg.shard_size):
        fp = shard.fingerprint(run_id, long_audio_label(cfg))
        results.append(actor.process_shard(ShardTask(shard, fp, part_uri(cfg.output, run_id, shard.shard_id),
                                                     windows_part_uri=long_cuts.windows_part_for(shard, fp))))
    return {"shards": results, "stitched": _stitch(long_cuts, cfg, model_dir), "actor": actor}


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


def plan(cfg: TranscribeConfig) -> PlanSummary:
    """Stream the manifest through sharding and batch packing without Ray or a model
    (``--plan-only``): shows the padding ratio and checks the driver's memory stays flat."""
    import resource

    from .batching import pack_batches

    started = time.perf_counter()
    out = PlanSummary(manifest=list(cfg.manifest), max_batch_seconds=cfg.max_batch_seconds, shard_size=cfg.shard_size)
    for shard in make_shards(iter_items(cfg), cfg.shard_size):
        durations = [i.duration for i in shard.items]
        out.shards += 1
        out.cuts += len(durations)
        out.cuts_unknown_duration += sum(d is None for d in durations)
        for batch in pack_batches(shard.items, durations, cfg.max_batch_seconds, cfg.max_batch_size):
            out.batches += 1
            out.audio_seconds += batch.audio_seconds
            out.padded_seconds += batch.padded_seconds
    out.padding_ratio = 0.0 if out.padded_seconds == 0 else 1 - out.audio_seconds / out.padded_seconds
    out.wall_seconds = time.perf_counter() - started
    out.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def format_summary(s: RunSummary) -> str:
    """The human-readable job summary printed at the end of a run."""
    st = s.stage_seconds
    lines = [
        f"run {s.run_id}: {s.cuts_ok} cuts ok, {s.cuts_error} errors, {s.audio_hours:.3f} h of audio in {s.wall_seconds:.1f} s",
        f"  RTFx {s.rtfx:.1f} end-to-end, {s.model_rtfx:.1f} model-only; padding ratio {s.padding_ratio:.3f}",
        "  stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(st.items())),
        f"  shards: {s.shards_done} done, {s.shards_skipped} skipped (resumed), {s.shard_retries} retried, {len(s.shards_failed)} failed",
        *([f"  long cuts: {s.long_cuts} stitched from {s.windows} windows ({s.seams_aligned} seams cut at an aligned word), "
           f"{s.long_cuts_incomplete} incomplete"] if s.long_cuts or s.long_cuts_incomplete else []),
        *([f"  pauses: {100 * (1 - s.model_input_seconds / s.audio_seconds):.1f} % of the audio was silence between "
           f"pieces and skipped"] if 0 < s.model_input_seconds < s.audio_seconds - 1e-6 else []),
        f"  model {s.model_id} ({s.model_sha256[:12]}), decoding {s.decoding}, {s.num_actors} actor(s) on {', '.join(s.devices) or '-'}",
        f"  transcripts: {s.transcripts_uri}",
    ]
    if s.cuts_ok + s.cuts_error == 0:
        lines.append("  (the manifest held no cuts)")
    return "\n".join(lines)
