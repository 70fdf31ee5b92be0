"""The driver: owns a transcription run from inputs to summary.

1. **Check** the inputs and the model (one clear error, exit 2, before anything starts).
2. **Plan once** (:mod:`pipeline.plan.frozen`): expand the inputs into units (manifest files, a
   glob's files, Shar shards), plan each in a Ray task (:mod:`pipeline.run.planning`: items,
   windows, content-defined shards written as they are cut; durations of plain audio files probed
   in Ray tasks too) and merge their index rows into the frozen plan under
   ``<output>/runs/<run_id>/plan/``. A rerun with the same run id reuses the plan and says whether
   the inputs changed since; ``--replan`` plans again and removes the parts of shards the new plan
   no longer has, so no cut is written twice.
3. **Execute on Ray Data** (:mod:`pipeline.run.stages`, :mod:`pipeline.run.model_stage`): one
   row per shard through the audio stage (CPU tasks that skip finished shards and decode the
   rest) and the model stage (an actor pool of ``--num-actors``,
   each with ``--gpus-per-actor`` / ``--cpus-per-actor``), streaming with backpressure. Ray
   restarts dead actors (at most ``--max-attempts`` times each) and retries their shards; the
   run's ledger counts every start. A cluster that cannot host an actor yet is waited for.
4. **Stitch** long recordings in Ray tasks, then write ``runs/<run_id>/summary.json``, with the
   resources the run held, measured from its actors' and tasks' lifetimes, and their cost
   (:mod:`pipeline.run.accounting`). While it runs, the run's live metrics go to Ray's metrics
   system (:mod:`pipeline.run.metrics`).

The driver never holds the inputs or the audio: it reads small result rows as shards finish.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from model.decoding import BIASING_METHODS
from model.recognizer import Recognizer
from model.weights import WeightsSelection
from pipeline.inputs.hotwords import DEFAULT_HOTWORDS_SCORE, Hotwords, read_hotwords_file
from pipeline.inputs.manifests import iter_work_items
from pipeline.inputs.sources import expand_inputs
from pipeline.io import storage
from pipeline.io.model_store import local_model_dir
from pipeline.longform.stitching import StitchSummary, stitch_group, stitch_groups
from pipeline.output.compact import compacted_record
from pipeline.output.paths import RunPaths
from pipeline.output.records import SCHEMA_VERSION
from pipeline.plan.frozen import (Plan, PlanOptions, changed_inputs, iter_plan_shards, read_index, read_long_cuts,
                                  read_plan, stale_parts, write_plan)
from pipeline.plan.preview import PlanSummary, preview
from pipeline.plan.units import Planner, process_planner, serial_planner
from pipeline.plan.windows import plan_windows
from pipeline.report.normalize import get_normalizer

from .accounting import account
from .config import TranscribeConfig, check_run_id, decoding_list, long_audio_label, new_run_id
from .lock import RunLock
from .progress import Progress
from .resources import StageResources, alive_nodes, plan_resources, wait_for_resources
from .device_memory import CPU_BATCH_SECONDS
from .metrics import NoMetrics, recorder
from .model_stage import CONCURRENCY, ShardTranscriber
from .stages import RunLedger, load_audio
from .summary import RunSummary
from .tasks import StageSettings, shard_task
from .transcriber import ActorConfig, DeviceError, Transcriber
from .usage import held_since

__all__ = ["ModelFacts", "dry_run", "run", "run_in_process", "validate_inputs"]

log = logging.getLogger("zipscribe.driver")


@dataclass(frozen=True)
class ModelFacts:
    """What the driver learns from loading the model once: where it is, what it is called, and
    how it decodes (the label the rows and fingerprints carry)."""

    model_dir: Path
    sha256: str
    model_id: str
    decoding: str  # the labels of every decoding, "; "-joined
    weights: str = ""  # which weights: file(s) and how they were combined
    tokenizer: str = ""  # the tokenizer file, relative to model_dir
    notes: tuple[str, ...] = ()  # what loading decided on its own (e.g. full context for a causal model)
    decodings: tuple[str, ...] = ()  # each decoding's label, in order: rows carry one of them
    lm_sha256: str = ""  # the word LM's, when the model directory has one
    hotwords: Hotwords = ()  # the run-level hotword list (--hotwords), parsed and normalised
    hotwords_score: float = DEFAULT_HOTWORDS_SCORE  # --hotwords-score, else the model's
    #: the decodings that can bias towards hotwords, and those that cannot (greedy, transducer)
    biased: tuple[str, ...] = ()
    not_biased: tuple[str, ...] = ()


def validate_inputs(cfg: TranscribeConfig) -> ModelFacts:
    """Fail fast, before any actor starts: the inputs must be readable and the model must load
    (on this machine's CPU, once)."""
    if cfg.max_cut_seconds > 0:
        plan_windows(2 * cfg.max_cut_seconds, cfg.max_cut_seconds, cfg.window_overlap_seconds)  # ValueError if invalid
    firsts: dict[str, Any] = {}
    for unit in expand_inputs(cfg.manifest):  # ManifestError / StorageError: a pattern matching nothing, ...
        firsts.setdefault(unit.given, unit)
    for unit in firsts.values():  # the first file of each input is readable (the rest: while planning)
        next(iter(iter_work_items(unit.uri, kind=unit.kind, dataset=cfg.dataset, probe_durations=False,
                                  shar_tar=unit.tar)), None)
    weights = WeightsSelection.from_dict(cfg.weights)
    model_dir = local_model_dir(cfg.model, weights=weights)
    recognizer = Recognizer.from_dir(model_dir, decoding=decoding_list(cfg.decoding, cfg.extra_methods),
                                     weights=weights)
    info = recognizer.info
    labels = tuple(d.label() for d in recognizer.decodings)
    score = cfg.hotwords_score if cfg.hotwords_score is not None else recognizer.decoding.hotwords_score
    # HotwordError (a ValueError) names the file and line
    hotwords = read_hotwords_file(cfg.hotwords, score, get_normalizer(cfg.normalizer)) if cfg.hotwords else ()
    biased = tuple(d.label() for d in recognizer.decodings if d.method in BIASING_METHODS)
    notes = tuple(info.notes)
    if hotwords:
        _, ignored = recognizer.hotword_graph(hotwords)  # ValueError: a list too large for an automaton
        notes += tuple(f"--hotwords: {why}" for why in ignored[:20]) + \
            ((f"--hotwords: {len(ignored) - 20} more ignored",) if len(ignored) > 20 else ())
    return ModelFacts(model_dir=model_dir, sha256=info.sha256, model_id=info.name, decoding="; ".join(labels),
                      decodings=labels, weights=info.weights, tokenizer=os.path.relpath(info.tokenizer, model_dir), notes=notes,
                      lm_sha256=info.lm_sha256, hotwords=hotwords, hotwords_score=score, biased=biased,
                      not_biased=tuple(label for label in labels if label not in biased))


def hotwords_summary(cfg: TranscribeConfig, facts: ModelFacts) -> dict[str, Any]:
    """What the run summary says of contextual biasing: the run-level list (file, phrases, scores),
    where per-cut lists come from, and which decodings bias (greedy and transducer ones cannot)."""
    scores = sorted({s for _, s in facts.hotwords})
    return {"run_list": cfg.hotwords, "run_phrases": len(facts.hotwords), "run_scores": scores,
            "default_score": facts.hotwords_score,
            "per_cut_lists": "each cut's custom['hotwords'] (and its supervisions'), merged with the run list",
            "biased_decodings": list(facts.biased), "unbiased_decodings": list(facts.not_biased)}


def fingerprint_parts(cfg: TranscribeConfig, facts: ModelFacts) -> tuple[str, ...]:
    """The settings a shard's part depends on: a change to any of them redoes the shard."""
    return (facts.sha256, facts.decoding, json.dumps(decoding_list(cfg.decoding, cfg.extra_methods), sort_keys=True),
            f"precision={cfg.amp_dtype}/{cfg.rescoring_dtype}", f"backend={cfg.backend}", f"max_batch_seconds={cfg.max_batch_seconds or 'auto'}",
            f"normalizer={cfg.normalizer}", f"schema={SCHEMA_VERSION}", f"segments={cfg.segments}",
            long_audio_label(cfg)) + ((f"lm={facts.lm_sha256}",) if facts.lm_sha256 else ()) + \
        ((f"hotwords={hashlib.sha256(repr(facts.hotwords).encode()).hexdigest()}",) if facts.hotwords else ()) + \
        ((f"hotwords_score={facts.hotwords_score}",) if facts.hotwords_score != DEFAULT_HOTWORDS_SCORE else ())


def plan_options(cfg: TranscribeConfig) -> PlanOptions:
    return PlanOptions(manifests=tuple(cfg.manifest), dataset=cfg.dataset, segments=cfg.segments,
                       shard_size=cfg.shard_size, max_cut_seconds=cfg.max_cut_seconds,
                       overlap_seconds=cfg.window_overlap_seconds, max_recording_hours=cfg.max_recording_hours)


def actor_config(cfg: TranscribeConfig, model_uri: str, sha256: str, run_id: str, threads: int,
                 facts: Optional[ModelFacts] = None) -> ActorConfig:
    """The transcriber's configuration for a run (``facts``: :func:`validate_inputs`'s, for the
    run-level hotword list it read once and the bonus it resolved)."""
    return ActorConfig(
        model_uri=model_uri, model_sha256=sha256, output_uri=cfg.output, run_id=run_id, decoding=cfg.decoding,
        extra_methods=tuple(cfg.extra_methods), weights=cfg.weights,
        max_batch_seconds=cfg.max_batch_seconds, max_batch_size=cfg.max_batch_size, amp_dtype=cfg.amp_dtype,
        rescoring_dtype=cfg.rescoring_dtype, backend=cfg.backend, num_threads=threads, normalizer=cfg.normalizer,
        pause_split=cfg.pause_split, max_cut_seconds=cfg.max_cut_seconds, device=cfg.device,
        max_audio_seconds=cfg.max_recording_hours * 3600, hotwords=facts.hotwords if facts else (),
        hotwords_score=facts.hotwords_score if facts else DEFAULT_HOTWORDS_SCORE,
    )


def prepare_plan(cfg: TranscribeConfig, paths: RunPaths,
                 planner: Planner = serial_planner) -> tuple[Plan, bool, list[str]]:
    """The run's frozen plan: reused (with the inputs that changed since), or made now by
    ``planner`` (Ray tasks in a run). Returns ``(plan, reused, changed inputs)``. With
    ``--replan``, parts of shards the new plan no longer has are removed."""
    options = plan_options(cfg)
    plan = None if cfg.replan else read_plan(paths, options)
    if plan is not None:
        changed = changed_inputs(plan)
        if changed:
            log.warning("the inputs changed since run %s was planned (%s): running the plan as it was; rerun with "
                        "--replan to take the changes in", paths.run_id, ", ".join(changed))
        return plan, True, changed
    plan = write_plan(paths, options, planner)
    log.info("planned %d cuts (%.2f h) from %d input file(s) in %d shards in %.1f s", plan.cuts,
             plan.audio_seconds / 3600, plan.units, plan.shards, plan.planning_seconds)
    if plan.errors:
        log.warning("%d cut(s) cannot be transcribed as the inputs describe them and will be error rows, e.g. %s",
                    plan.errors, "; ".join(plan.error_examples[:3]))
    stale = stale_parts(paths, plan) if cfg.replan else []
    for uri in stale:
        storage.delete(uri)
    if stale:
        log.warning("--replan: removed %d part(s) of shards the new plan does not have", len(stale))
    return plan, False, []


def ray_target(cfg: TranscribeConfig) -> Optional[str]:
    """The Ray cluster a run joins: ``--ray-address`` or ``$RAY_ADDRESS``; else the cluster a ``ray
    start`` on this machine left its address for (as ``ray.init()`` finds it), when its GCS answers;
    ``None``: start a private local one (``--ray-address local`` asks for that on purpose). A stale
    address file (a cluster that died without ``ray stop``) is said and passed over."""
    import socket

    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        return None
    if address is not None:
        return address
    from ray._private.services import find_bootstrap_address

    found = find_bootstrap_address(None)  # what ray.init() reads: <RAY_TMPDIR or /tmp>/ray/ray_current_cluster
    if not found:
        return None
    host, _, port = found.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=2):
            return found
    except (OSError, ValueError):
        log.warning("a Ray address was left at %s by a cluster that no longer answers: starting a private one",
                    found)
        return None


def _init_ray(cfg: TranscribeConfig) -> bool:
    """Join the run's Ray cluster (:func:`ray_target`), or start a private local one with the tuned
    settings of :func:`local_system_config`; never both (Ray refuses settings for a cluster it joins).
    Returns whether it joined a cluster (False: a private one, or Ray was connected already)."""
    import ray

    joined = False
    if not ray.is_initialized():
        address = ray_target(cfg)
        if address is None:
            ray.init(address="local", ignore_reinit_error=True, logging_level=logging.WARNING, log_to_driver=True,
                     include_dashboard=False, _system_config=local_system_config(metrics=cfg.metrics == "on"))
            if cfg.metrics == "on":
                port = next((n.get("MetricsExportPort") for n in ray.nodes() if n.get("Alive")), None)
                log.info("metrics of this private Ray: http://127.0.0.1:%s/metrics", port)
        else:
            joined = True
            if not (cfg.ray_address or os.environ.get("RAY_ADDRESS")):
                log.info("using the Ray cluster already running on this machine (%s); --ray-address local starts a "
                         "private one", address)
            ray.init(address=address, ignore_reinit_error=True, logging_level=logging.WARNING, log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job shows its own bar, in audio hours
    ctx.print_on_execution_start = False
    ctx.execution_options.verbose_progress = False
    return joined


def metrics_enabled(cfg: TranscribeConfig, joined: bool) -> bool:
    """``--metrics``: on, off, or auto: on when the run joined a cluster (a ``ray start`` cluster,
    KubeRay), whose nodes' agents export them to Prometheus; off in a private local Ray, which
    collects none (:func:`local_system_config`)."""
    return cfg.metrics == "on" or (cfg.metrics == "auto" and joined)


def local_system_config(cpus: Optional[int] = None, metrics: bool = False) -> Optional[dict[str, Any]]:
    """Ray settings for the local cluster a run starts itself (none when the environment sets them).

    Ray ends idle worker processes a second after they idle once a node has more workers than
    ``num_workers_soft_limit`` (by default derived from its CPUs, which the model actors hold):
    with a model actor per core, every audio task's worker was ended after its shard and a new
    Python process started for the next one, about a CPU-second each; on 2 cores the pipeline's
    steady RTFx went from 65.7 to 78.1 with the limit raised (``bench/pipeline_overhead.py``).
    Clusters started with ``ray start`` take the same setting as the ``RAY_num_workers_soft_limit``
    environment variable (``infra/``). A local cluster also collects no metrics unless ``metrics``
    (``--metrics on``): it runs no dashboard to show them."""
    config: dict[str, Any] = {}
    if "RAY_num_workers_soft_limit" not in os.environ:
        config["num_workers_soft_limit"] = 4 * (cpus if cpus is not None else (os.cpu_count() or 1)) + 8
    if "RAY_enable_metrics_collection" not in os.environ:
        config["enable_metrics_collection"] = metrics  # off: no dashboard runs to read them, 1 % of 2 cores
    return config or None


#: glibc allocator settings of the model actors (set only where the environment does not already):
#: one arena, and large blocks kept in it instead of mapped and unmapped per tensor. A model on a
#: thread of its own otherwise gets a secondary arena whose heaps shrink and grow with every batch:
#: ~80,000 page faults a second per actor, 10 % of its time in the kernel (bench/pipeline_overhead.py)
ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def model_runtime_env(base: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The model actors' runtime environment: ``base`` plus :data:`ALLOCATOR_ENV` (variables the
    driver's environment sets are left to it)."""
    env = dict((base or {}).get("env_vars", {}))
    env.update({k: v for k, v in ALLOCATOR_ENV.items() if k not in os.environ})
    return {**(base or {}), "env_vars": env}


def worker_runtime_env() -> Optional[dict[str, Any]]:
    """The runtime environment of the run's tasks and actors: the driver's S3 settings
    (``--s3-endpoint-url``, ``AWS_ENDPOINT_URL``, ...) reach every node's workers."""
    env = storage.s3_environment()
    return {"env_vars": env} if env else None


def _ledger() -> Any:
    """The run's :class:`RunLedger`, on the driver's node (it outlives worker nodes)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return ray.remote(RunLedger).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                                         ).remote()


#: average shards of decoded audio the object store holds per model actor
AUDIO_SHARDS_PER_ACTOR = 3
_FLOAT32_AUDIO_BYTES_PER_SECOND = 16000 * 4


def audio_buffer_bytes(plan: Plan, res: StageResources) -> int:
    """The object-store budget of a run: :data:`AUDIO_SHARDS_PER_ACTOR` average shards' decoded
    audio per model actor (at least 64 MB)."""
    shard_seconds = plan.audio_seconds / max(1, plan.shards) if plan.audio_seconds else 0.0
    return int(max(64e6, AUDIO_SHARDS_PER_ACTOR * res.max_actors * shard_seconds * _FLOAT32_AUDIO_BYTES_PER_SECOND))


def build_dataset(rows: list[dict[str, Any]], plan: Plan, settings: StageSettings, actor_cfg: ActorConfig,
                  res: StageResources, max_attempts: int, ledger: Any = None,
                  model_stage: type = ShardTranscriber) -> Any:
    """The run's Ray Data pipeline (see :mod:`pipeline.run.stages`): one row per shard of the plan
    (``rows``: its index rows, ``shard_id``, ``index``, ``windows``), one block each, so every stage
    works on one shard at a time. ``model_stage`` is the callable class of the model stage
    (benchmarks pass a stand-in)."""
    import ray

    runtime_env = worker_runtime_env()
    # backpressure: decoded audio waits in the object store for at most AUDIO_SHARDS_PER_ACTOR
    # average shards per actor (one in the model, one queued, one being decoded), so memory stays
    # flat whatever the length of the run
    ray.data.DataContext.get_current().execution_options.resource_limits = \
        ray.data.ExecutionResources.for_limits(object_store_memory=audio_buffer_bytes(plan, res))
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    ds = ds.map(load_audio, fn_kwargs={"settings": settings}, num_cpus=res.audio_cpus, runtime_env=runtime_env)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates **ray_remote_args but has no named parameter for an actor's restart
        # budget yet; without it Ray Data restarts a crashing actor forever
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=DeprecationWarning)
        return ds.map_batches(
            model_stage, fn_constructor_args=(actor_cfg, settings, ledger), batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors,
                                               max_concurrent_calls_per_actor=CONCURRENCY, enable_true_multi_threading=True),
            num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor or None, runtime_env=model_runtime_env(runtime_env),
            max_restarts=max_attempts, max_task_retries=max_attempts)


def _device_error(exc: BaseException) -> Optional[str]:
    """The :class:`DeviceError` message an actor failed with, if that is what stopped the run."""
    text = str(exc)
    marker = "DeviceError: "
    if marker in text:
        return text[text.index(marker) + len(marker):].splitlines()[0]
    return None


def run(cfg: TranscribeConfig, model_stage: type = ShardTranscriber) -> RunSummary:
    """Execute a transcription run on the Ray cluster (see :func:`ray_target`), holding the run's
    lock (:mod:`pipeline.run.lock`) from before planning to after its summary is written."""
    run_id = check_run_id(cfg.run_id or new_run_id())
    paths = RunPaths(cfg.output, run_id)
    facts = validate_inputs(cfg)
    with RunLock(paths) as lock:
        _refuse_compacted(paths)
        summary = _run_locked(cfg, paths, facts, model_stage)
        if lock.lost:
            log.error("run %s: %s; its parts are complete and fingerprinted, but check the other run", run_id,
                      lock.lost)
        return summary


def _refuse_compacted(paths: RunPaths) -> None:
    """A compacted run (``jobs/compact.py``) is sealed: its shard parts were merged, so resuming it
    would write its cuts again."""
    record = compacted_record(paths)
    if storage.exists(record):
        raise ValueError(f"run {paths.run_id!r} was compacted ({record}): its shard parts are merged into large "
                         "files and it cannot be resumed; use a new --run-id")


def _run_locked(cfg: TranscribeConfig, paths: RunPaths, facts: ModelFacts, model_stage: type) -> RunSummary:
    import ray

    from .planning import ray_planner

    started = time.perf_counter()
    run_id = paths.run_id
    joined = _init_ray(cfg)
    metrics = recorder(run_id, metrics_enabled(cfg, joined))
    held: list[dict[str, Any]] = []  # the tasks' holds on the nodes' resources (pipeline.run.usage)
    if ray.cluster_resources().get("CPU", 0) >= 1:
        planner: Planner = ray_planner(runtime_env=worker_runtime_env(), held=held)
    else:  # an autoscaling cluster whose nodes all start on demand: not one node just to plan
        log.info("the cluster has no CPUs yet (its worker nodes start on demand): planning in the driver")
        planner = serial_planner
    plan, reused, changed = prepare_plan(cfg, paths, planner)
    metrics.inc("zipscribe_audio_planned_seconds", plan.audio_seconds)
    metrics.inc("zipscribe_shards_planned", plan.shards)
    # the plan this run made or read, held from here on: nothing of it is read from storage again
    shards = list(read_index(paths, plan, ["shard_id", "index", "windows"]))
    long_cuts = read_long_cuts(paths)

    res = plan_resources(alive_nodes(), cfg)
    waited, node_request = wait_for_resources(res.actor_bundle(), res.min_actors, res.max_actors, cfg.resource_timeout)
    settings = StageSettings(run_id=run_id, output=cfg.output, fingerprint_parts=fingerprint_parts(cfg, facts),
                             resume=cfg.resume, write_attempts=cfg.max_attempts,
                             max_audio_seconds=cfg.max_recording_hours * 3600, metrics=metrics.enabled)
    summary = RunSummary(
        run_id=run_id, manifest=list(cfg.manifest), output=cfg.output, model_id=facts.model_id,
        model_sha256=facts.sha256, model_weights=facts.weights, model_notes=list(facts.notes),
        decoding=facts.decoding, decodings=list(facts.decodings), started_at=datetime.now(timezone.utc).isoformat(),
        num_actors=res.max_actors, transcripts_uri=paths.transcripts, shards_total=plan.shards,
        resources_per_actor={"num_cpus": res.cpus_per_actor, "num_gpus": res.gpus_per_actor},
        plan={"uri": paths.plan, "reused": reused, "inputs_changed": changed, "cuts": plan.cuts,
              "items": plan.items, "windows": plan.windows, "long_cuts": plan.long_cuts, "shards": plan.shards,
              "units": plan.units, "audio_hours": round(plan.audio_seconds / 3600, 6),
              "unknown_durations": plan.unknown_durations, "errors": plan.errors,
              "error_examples": plan.error_examples, "planning_seconds": plan.planning_seconds,
              "driver_cpu_seconds": plan.driver_cpu_seconds},
        stages={"min_actors": res.min_actors, "max_actors": res.max_actors, "cpus_per_actor": res.cpus_per_actor,
                "gpus_per_actor": res.gpus_per_actor, "audio_cpus": res.audio_cpus, "threads_per_actor": res.threads,
                "device": cfg.device, "backend": cfg.backend, "resource_wait_seconds": round(waited, 1)},
        hotwords=hotwords_summary(cfg, facts),
    )
    ledger = _ledger()
    actor_cfg = actor_config(cfg, cfg.model, facts.sha256, run_id, res.threads, facts)
    ds = build_dataset(shards, plan, settings, actor_cfg, res, cfg.max_attempts, ledger, model_stage)
    progress = Progress(plan.audio_seconds if cfg.eta else None, cfg.progress)
    fingerprints: dict[str, str] = {}
    seen: set[str] = set()
    transcribed = 0.0  # audio seconds of the shards done now (not skipped): what the run's cost is for
    try:
        for row in ds.iter_rows():
            seen.add(row["shard_id"])
            if row["held"]:
                held.append(json.loads(row["held"]))
            _record_shard(metrics, row)
            if row["status"] == "failed":
                log.error("shard %s failed: %s", row["shard_id"], row["error"])
                summary.shards_failed.append(row["shard_id"])
                summary.shard_errors[row["shard_id"]] = row["error"].splitlines()[0][:500]
                continue
            done = json.loads(row["summary"])
            transcribed += done["audio_seconds"] if row["status"] == "done" else 0.0
            summary.shards_done += row["status"] == "done"
            summary.shards_skipped += row["status"] == "skipped"
            if row["windows"]:
                fingerprints[row["shard_id"]] = row["fingerprint"]
            summary.add(done)
            progress.update(done, summary.audio_seconds)
    except Exception as exc:  # the execution stopped (an actor's restarts ran out, a node's data was lost, ...)
        message = _device_error(exc)
        if message is not None:
            raise DeviceError(message) from None
        log.error("the run stopped before every shard was done: %s", str(exc).splitlines()[0][:500])
        summary.stopped = f"{type(exc).__name__}: {str(exc).splitlines()[0][:500]}"
        summary.shards_failed += [row["shard_id"] for row in shards if row["shard_id"] not in seen]
    finally:
        progress.close()
        if node_request is not None:
            node_request.release()

    report = ray.get(ledger.report.remote())
    summary.shard_retries = sum(n - 1 for n in report["starts"].values() if n > 1)
    summary.actors = report["actors"]
    summary.num_actors = len(report["actors"])
    summary.devices = sorted({a["device"] for a in report["actors"]})
    summary.device_failures = report["device_failures"]
    if summary.stopped and summary.device_failures:  # why the actors kept dying
        last = summary.device_failures[-1]
        summary.stopped += (f"; model actors ended {len(summary.device_failures)} time(s) after device failures, "
                            f"the last: {last['worker']}: {last['message']}")
    ray.kill(ledger)

    stitch_started = time.perf_counter()
    stitched = _stitch(cfg, paths, facts, long_cuts, fingerprints, held)
    stitch_seconds = time.perf_counter() - stitch_started
    if stitched is not None:
        metrics.inc("zipscribe_cuts", stitched.cuts_ok, status="ok", node_type="stitched")
        metrics.inc("zipscribe_cuts", stitched.cuts_error, status="error", node_type="stitched")
        summary.cuts_ok += stitched.cuts_ok
        summary.cuts_error += stitched.cuts_error
        summary.long_cuts = stitched.cuts_ok + stitched.cuts_error
        summary.long_cuts_incomplete = stitched.cuts_incomplete
        summary.seams_aligned += stitched.seams_aligned
        if stitched.incomplete:
            log.error("%d long cut(s) have windows in failed shards and got no row: %s", stitched.cuts_incomplete,
                      ", ".join(stitched.incomplete[:10]))
    summary.resources, summary.cost = account(
        held, report["processes"], waiting_seconds=waited, stitch_seconds=stitch_seconds,
        transcribed_seconds=transcribed, prices=cfg.prices)
    summary.finish(time.perf_counter() - started)
    storage.write_text_atomic(paths.summary, json.dumps(asdict(summary), indent=2))
    return summary


def _record_shard(metrics: NoMetrics, row: dict[str, Any]) -> None:
    """The driver's metrics of a shard's result row: as :meth:`RunSummary.add` counts it."""
    if not metrics.enabled:
        return
    node_type = metrics.node_type(row["node"])
    metrics.inc("zipscribe_shards", status=row["status"], node_type=node_type)
    if row["status"] == "failed":
        return
    done = json.loads(row["summary"])
    metrics.inc("zipscribe_audio_done_seconds", done["audio_seconds"], node_type=node_type)
    metrics.inc("zipscribe_cuts", done["cuts_ok"], status="ok", node_type=node_type)
    metrics.inc("zipscribe_cuts", done["cuts_error"], status="error", node_type=node_type)


def _stitch(cfg: TranscribeConfig, paths: RunPaths, facts: ModelFacts, long_cuts: dict[str, dict[str, Any]],
            fingerprints: dict[str, str], held: Optional[list[dict[str, Any]]] = None) -> Optional[StitchSummary]:
    """Stitch the run's long cuts (the plan's, as the run holds it) in Ray tasks (``None`` when
    the plan has none); the tasks' holds are appended to ``held``."""
    import ray

    if not long_cuts:
        return None
    task = ray.remote(num_cpus=0.5, max_retries=cfg.max_attempts, runtime_env=worker_runtime_env())(_stitch_task_held)
    refs = [task.remote(group, cfg.output, paths.run_id, cfg.model, facts.sha256, facts.tokenizer, cfg.weights,
                        _stitch_options(cfg))
            for group in stitch_groups(long_cuts, fingerprints, cfg.output, paths.run_id)]
    total = StitchSummary()
    for part, hold in ray.get(refs):
        total.add(part)
        if held is not None:
            held.append(hold)
    return total


def _stitch_task_held(*args: Any) -> tuple[StitchSummary, dict[str, Any]]:
    """:func:`_stitch_task`, and its hold on its node's resources."""
    started = time.time()
    return _stitch_task(*args), held_since("stitch task", started).to_dict()


def _stitch_options(cfg: TranscribeConfig) -> dict[str, Any]:
    """The run's options of :func:`pipeline.longform.stitching.stitch_group`."""
    return dict(normalizer=cfg.normalizer, max_cut_seconds=cfg.max_cut_seconds,
                overlap_seconds=cfg.window_overlap_seconds, resume=cfg.resume)


def _stitch_task(group: Any, output: str, run_id: str, model_uri: str, sha256: str, tokenizer_path: str,
                 weights: dict, options: dict) -> StitchSummary:
    from model.tokenizer import Tokenizer

    model_dir = local_model_dir(model_uri, expected_sha256=sha256, weights=WeightsSelection.from_dict(weights))
    tokenizer = Tokenizer.from_file(model_dir / tokenizer_path)
    return stitch_group(group, output, run_id, tokenizer, **options)


def run_in_process(cfg: TranscribeConfig, run_id: str, num_threads: int = 2) -> dict[str, Any]:
    """The whole run in this process with one :class:`Transcriber`, no Ray: plan -> shards ->
    audio -> transcripts parts -> stitched long cuts, one shard at a time. For benchmarks, tests
    and debugging a manifest on a laptop; no retries, and every shard is transcribed again (long
    cuts already stitched from the same windows are skipped)."""
    from model.tokenizer import Tokenizer

    paths = RunPaths(cfg.output, check_run_id(run_id))
    facts = validate_inputs(cfg)
    with RunLock(paths):
        _refuse_compacted(paths)
        plan, _, _ = prepare_plan(cfg, paths)
        settings = StageSettings(run_id=run_id, output=cfg.output, fingerprint_parts=(run_id, long_audio_label(cfg)),
                                 resume=False, max_audio_seconds=cfg.max_recording_hours * 3600)
        actor = Transcriber(actor_config(cfg, str(facts.model_dir), facts.sha256, run_id, num_threads, facts))
        results, fingerprints = [], {}
        for shard in iter_plan_shards(paths, plan):
            task = shard_task(shard, settings)
            if task.windows_part_uri:
                fingerprints[shard.shard_id] = task.fingerprint
            results.append(actor.process_shard(task))
        long_cuts = read_long_cuts(paths)
        stitched = None
        if long_cuts:
            tokenizer = Tokenizer.from_file(facts.model_dir / facts.tokenizer)
            stitched = StitchSummary()
            for group in stitch_groups(long_cuts, fingerprints, cfg.output, run_id):
                stitched.add(stitch_group(group, cfg.output, run_id, tokenizer, **_stitch_options(cfg)))
    return {"shards": results, "stitched": stitched, "actor": actor, "plan": plan}


def dry_run(cfg: TranscribeConfig, workers: Optional[int] = None) -> PlanSummary:
    """``--plan-only``: the run's shards, batches and padding from its inputs alone (no Ray, no
    model, nothing written); many input files are planned in ``workers`` processes (default: one
    per CPU)."""
    return preview(plan_options(cfg), max_batch_seconds=cfg.max_batch_seconds or CPU_BATCH_SECONDS,
                   max_batch_size=cfg.max_batch_size,
                   planner=process_planner(workers or os.cpu_count() or 1))
