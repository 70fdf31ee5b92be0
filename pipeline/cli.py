"""Command-line pieces shared by ``jobs/transcribe.py`` and ``jobs/evaluate.py``,
so the two jobs accept the same decoding, resource and S3 options and turn them
into the same :class:`~pipeline.run.config.TranscribeConfig`."""

from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import asdict
from typing import Any, Optional, Sequence

from model.checkpoint import ModelLoadError
from model.decoding import DecodingConfig
from model.recognizer import BACKENDS
from model.weights import WeightsSelection

from pipeline.inputs.hotwords import DEFAULT_HOTWORDS_SCORE
from pipeline.inputs.items import SEGMENT_MODES, ManifestError
from pipeline.io.storage import StorageError
from pipeline.longform.pauses import PauseSplit
from pipeline.report.normalize import DEFAULT_NORMALIZER, NORMALIZER_CHOICES, parse_normalizer
from pipeline.run.config import METRICS_MODES, TranscribeConfig
from pipeline.run.cost import parse_price, resolve_prices
from pipeline.run.lock import RunLockedError
from pipeline.run.resources import ResourceTimeoutError
from pipeline.run.transcriber import DeviceError

# Bad command-line inputs, and runs that cannot start (no node an actor fits on, a GPU without
# CUDA, another run holding the run's lock): reported as one line and exit status 2, no traceback.
INPUT_ERRORS = (ManifestError, StorageError, FileNotFoundError, ModelLoadError, ValueError, DeviceError,
                ResourceTimeoutError, RunLockedError)
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_DEFAULTS = TranscribeConfig(manifest=[], model="", output="")


def positive_float(text: str) -> float:
    """argparse type: a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def normalizer_spec(text: str) -> str:
    """argparse type of --normalizer: a valid normaliser spec, in canonical form."""
    try:
        return parse_normalizer(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_decoding_options(group: argparse._ArgumentGroup) -> None:
    """Beam sizes, rescoring scale and the WER normaliser (the method option is each job's own)."""
    d = DecodingConfig()
    group.add_argument("--beam", type=int, default=None,
                       help="CTC prefix beam size = n-best size for attention rescoring (default: the model's "
                            f"config.json 'decoding' section, where the demo model's was chosen on dev; else {d.beam})")
    group.add_argument("--attention-scale", type=float, default=None,
                       help="final = ctc_score + scale * attention_score (icefall convention; default: the model's "
                            f"config.json 'decoding' section, else {d.attention_scale})")
    group.add_argument("--lm-scale", type=float, default=None, metavar="S",
                       help="attention rescoring: final += S * the word LM's log-probability of each n-best entry "
                            "(the model directory's lm.arpa.gz; an ARPA n-gram over the tokenizer's words). 0: no "
                            "LM. Default: the model's config.json 'decoding' section (the demo model's was chosen "
                            f"on dev), else {d.lm_scale:g}")
    group.add_argument("--search-lm-scale", type=float, default=None, metavar="S",
                       help="attention rescoring: the same word LM inside the CTC prefix search that builds the "
                            "n-best (shallow fusion): prefixes are ranked by CTC log-prob + S * LM log-prob of "
                            "their words + --word-bonus per word, so the n-best holds what the LM finds likely. "
                            "0: the search does not see the LM. Default: the model's config.json 'decoding' "
                            f"section (the demo model's was chosen on dev), else {d.search_lm_scale:g}")
    group.add_argument("--word-bonus", type=float, default=None, metavar="B",
                       help="with --search-lm-scale: added per word in the fused search, against the LM's pull "
                            "towards fewer words (default: the model's config.json, else "
                            f"{d.word_bonus:g})")
    group.add_argument("--transducer-beam", type=int, default=None,
                       help="modified beam search beam (default: the model's config.json 'decoding' section, "
                            f"else {d.transducer_beam})")
    group.add_argument("--max-segment-seconds", type=float, default=None, metavar="S",
                       help="ctc-beam / attention-rescoring: search and rescore inputs longer than S seconds in "
                            "segments of at most S s, cut at the longest runs of CTC blanks (the encoder still "
                            "sees the whole input; rescoring an n-best of short segments fixes far more than one "
                            "of a 30 s window). 0: whole inputs. Default: the model's config.json 'decoding' "
                            "section (the demo model: 6), else 0")
    group.add_argument("--normalizer", default=DEFAULT_NORMALIZER, type=normalizer_spec, metavar="SPEC",
                       help=f"text normaliser for the WER columns and report: {', '.join(NORMALIZER_CHOICES)} "
                            "(default english: case folding, punctuation removed except word-internal apostrophes, "
                            "whitespace collapsed; +numbers spells digits out, +spelling maps British to American "
                            "spellings; see pipeline/report/normalize.py)")
    group.add_argument("--hotwords", default=None, metavar="FILE",
                       help="contextual biasing: a file or s3:// object of hotwords, one phrase a line, optionally "
                            "followed by ' :SCORE' (bonus per token for that phrase, as sherpa-onnx writes them); "
                            "merged with each cut's own list (a manifest cut's or supervision's "
                            "custom['hotwords']). Phrases are normalised like references. Only ctc-beam, "
                            "attention-rescoring and transducer-beam bias; other decodings of the run ignore the lists (the summary "
                            "says which)")
    group.add_argument("--hotwords-score", type=positive_float, default=None, metavar="B",
                       help="bonus per matched token of hotwords without a score of their own (default: the "
                            "model's config.json 'decoding' section, chosen on dev for the demo model by "
                            f"bench/biasing.py, else {DEFAULT_HOTWORDS_SCORE:g}); a partial match gives it back, a "
                            "completed phrase keeps it")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Which weights of a model directory (icefall's decode options) and how a causal model attends."""
    g = parser.add_argument_group(
        "model weights and chunking",
        "--model may be a flat folder (pretrained.pt + bpe.model/tokens.txt [+ config.json]), an icefall / Hugging "
        "Face repo root (exp/ + data/lang_bpe_*/) or an exp/ folder of a training run; check one with "
        "jobs/inspect_model.py before a long run. Weights as icefall's decode.py chooses them:")
    g.add_argument("--epoch", type=int, default=None, metavar="N",
                   help="decode epoch-N.pt of a training folder (default: the folder's checkpoint: pretrained.pt, "
                        "else the highest epoch-N.pt)")
    g.add_argument("--iter", type=int, default=None, metavar="N",
                   help="use checkpoint-M.pt files with M <= N instead of epochs")
    g.add_argument("--avg", type=int, default=1, metavar="K",
                   help="average K checkpoints ending at --epoch/--iter (default 1)")
    g.add_argument("--use-averaged-model", action="store_true",
                   help="use training's running average (model_avg): with --epoch N --avg K, averaged over the "
                        "batches between epoch-(N-K).pt and epoch-N.pt, as icefall decodes; alone, the "
                        "checkpoint's own model_avg")
    g.add_argument("--chunk-size", type=int, default=None, metavar="FRAMES",
                   help="causal (streaming-trained) models: decode with attention chunks of FRAMES frames at 50 Hz "
                        "(after the 2x subsampling; icefall's --chunk-size, e.g. 16 = 0.32 s). Default: full "
                        "context (or a single chunk size in config.json); -1: full context")
    g.add_argument("--left-context-frames", type=int, default=None, metavar="FRAMES",
                   help="causal models with --chunk-size: left context in 50 Hz frames (icefall's "
                        "--left-context-frames, e.g. 128); default: all")


def model_choice(args: argparse.Namespace) -> tuple[WeightsSelection, dict[str, Any]]:
    """The weights (icefall's --epoch/--iter/--avg/--use-averaged-model) and the chunking overrides
    (--chunk-size, --left-context-frames) of :func:`add_model_options`; ValueError if invalid."""
    weights = WeightsSelection(epoch=args.epoch, iter=args.iter, avg=args.avg, use_averaged_model=args.use_averaged_model)
    chunking = {k: getattr(args, k) for k in ("chunk_size", "left_context_frames") if getattr(args, k) is not None}
    return weights, chunking


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    """``--backend``: what runs the networks (the two transcription jobs)."""
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="what runs the networks: torch (default; the fastest on CPU here, README: engines), or "
                             "onnxruntime / onnxruntime-int8: each actor exports the model to ONNX once per checkpoint "
                             "(cached in $ZIPSCRIBE_CACHE/onnx; seconds for the demo model) and runs it with "
                             "onnxruntime (CUDA with the onnxruntime-gpu wheel, else CPU); features and decoding stay "
                             "the same code")


def add_resource_options(parser: argparse.ArgumentParser, title: str = "resources and batching") -> None:
    res = parser.add_argument_group(
        title,
        "A run is two Ray Data stages: the audio stage (CPU tasks that skip shards already done, then fetch, decode "
        "and resample) and the model stage (an actor pool, one resident model per actor). Sizes come from single nodes: without "
        "GPUs each core gets a single-thread model actor, together taking the node's CPUs less one audio task "
        "(independent one-thread models beat one model's threads waiting for each other); with GPUs, one GPU and "
        "one CPU. Give the audio stage the CPUs that decode what the models consume (README: sizing audio CPUs "
        "per GPU).")
    res.add_argument("--num-actors", default=None, metavar="N|MIN:MAX",
                     help="model actors: N fixed, or MIN:MAX for a pool Ray Data grows while work waits (default: "
                          "as many as the cluster's nodes hold now; with GPUs 1:<GPUs in the cluster>)")
    res.add_argument("--gpus-per-actor", type=float, default=None,
                     help="GPUs per model actor (default 1 if the cluster has GPUs, else 0). Below 1 (0.5: two "
                          "actors share a GPU) each actor's process is capped at its share of the GPU's memory, less "
                          "1 GiB for its CUDA context. On an autoscaling cluster whose GPU nodes start at zero, set "
                          "it: the run asks the autoscaler and waits")
    res.add_argument("--cpus-per-actor", type=float, default=None,
                     help="CPUs per model actor; torch uses that many threads, rounded up (default 1 with GPUs; "
                          "without, a core's share of the largest node less --audio-cpus, one thread each: 0.75 on a "
                          "2-CPU node. Give e.g. 4 for fewer, 4-thread actors: fewer model copies in memory)")
    res.add_argument("--audio-cpus", type=float, default=None,
                     help="CPUs per audio-stage task (one shard's audio at a time; default 1 with GPUs, else 0.5)")
    res.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                     help="auto: CUDA when the actor was given a GPU (an actor given a GPU by a torch build without "
                          "CUDA stops the run with one clear error); cpu: CPUs even on GPU nodes, on purpose")
    res.add_argument("--resource-timeout", type=float, default=_DEFAULTS.resource_timeout, metavar="S",
                     help="how long to wait for a node a model actor fits on (an autoscaler adding GPU nodes) "
                          f"before giving up with exit status 2 (default {_DEFAULTS.resource_timeout:g})")
    res.add_argument("--max-batch-seconds", type=float, default=None, metavar="S",
                     help="padded audio seconds per model batch. Default: on a CPU 160; on a GPU each actor measures "
                          "its model's memory per padded second with a probe batch of the longest cuts at start-up "
                          "and fills what its process may use less 20 %% (thousands of seconds on an 80 GB GPU; with "
                          "--gpus-per-actor below 1 each process is capped at its share of the GPU's memory). "
                          "Given, it is the budget on a CPU and the cap on a GPU. An out-of-memory halves the budget "
                          "for the rest of the run; a single cut that does not fit fails its shard (a rerun retries "
                          "it), never as an error row")
    res.add_argument("--max-batch-size", type=int, default=None, help="cap on cuts per batch")
    res.add_argument("--shard-size", type=int, default=_DEFAULTS.shard_size,
                     help="cuts per shard on average = per Parquet part and unit of retry; larger shards sort "
                          "durations more finely, so less padding, and hold more audio in memory at once "
                          f"(default {_DEFAULTS.shard_size})")
    res.add_argument("--max-attempts", type=int, default=_DEFAULTS.max_attempts,
                     help="tries per shard: when its actor dies (Ray restarts an actor at most this many times, "
                          "then the run stops and reports the shards not done), its part cannot be written, or one "
                          "of its cuts does not fit in the device's memory even alone. A shard whose actors died this "
                          "many times (a device failure that repeats on it) is not started again but reported as "
                          "failed with the reason; a model whose warm-up fails on the device makes its actor exit, "
                          f"so Ray starts a fresh process, this many times at most (default {_DEFAULTS.max_attempts})")
    res.add_argument("--precision", dest="amp_dtype", default="auto", choices=PRECISIONS,
                     help="encoder precision (auto: bf16 autocast on CUDA, fp32 on CPU)")
    res.add_argument("--rescoring-precision", dest="rescoring_dtype", default="auto", choices=PRECISIONS,
                     help="attention-decoder n-best pass precision (auto: same as --precision). On CPUs with bf16 "
                          "matrix units, bfloat16 cuts rescoring time ~3x at a tiny change in scores")
    res.add_argument("--ray-address", default=None,
                     help="Ray cluster address, e.g. 10.0.0.5:6379 (default: $RAY_ADDRESS, else the Ray a `ray start` "
                          "left running on this machine, as ray.init() finds it (the log says so), else a new private "
                          "one with this job's tuned settings); 'local': always a new private one")


def add_operating_options(parser: argparse.ArgumentParser) -> None:
    """Cost and live metrics (README: Operating a run)."""
    g = parser.add_argument_group(
        "cost and live metrics",
        "The summary reports the node-, GPU- and CPU core-hours the run held, measured from its actors' and tasks' "
        "lifetimes per node type, and their cost per audio hour: GPU-hours x the gpu price (a GPU's price covers its "
        "node's CPUs), core-hours on nodes without GPUs x the cpu price, or node-hours x a node type's own price. "
        "Prices come from --price over --prices, else over infra/prices.yaml (dated examples, not a quote).")
    g.add_argument("--price", action="append", default=[], type=parse_price, metavar="KIND=USD_PER_HOUR",
                   help="a price, repeatable: gpu=USD per GPU-hour, cpu=USD per CPU core-hour, or NODE_TYPE=USD per "
                        "node-hour of that node type (its ray.io/node-group label, e.g. KubeRay's worker group "
                        "'gpu'; the summary names the types); overrides the prices file's")
    g.add_argument("--prices", default=None, metavar="FILE",
                   help="prices file (YAML, local or s3://: 'as_of: DATE' and 'prices: {KIND: USD_PER_HOUR}'; default "
                        "infra/prices.yaml, example on-demand prices with their date)")
    g.add_argument("--metrics", default="auto", choices=METRICS_MODES,
                   help="live metrics through Ray's metrics system (ray.util.metrics; Prometheus scrapes each node's "
                        "metrics export port): audio hours done and planned, shards and cuts by status, queue depths "
                        "between stages, model RTFx, padding, OOM splits, per node type (dashboard: "
                        "infra/grafana/zipscribe.json). auto (default): on when the run joins a cluster, off in a "
                        "private local Ray, which then collects no metrics; on: also in a private local Ray (its "
                        "export port is logged)")


def add_s3_options(parser: argparse.ArgumentParser) -> None:
    s3 = parser.add_argument_group("S3 (optional; default: standard AWS chain)")
    s3.add_argument("--s3-endpoint-url", default=None, help="e.g. http://127.0.0.1:9000 for MinIO (sets AWS_ENDPOINT_URL)")
    s3.add_argument("--s3-region", default=None, help="sets AWS_REGION")


def apply_s3_options(args: argparse.Namespace) -> None:
    """Export the S3 flags where boto3 (and Ray workers started later) read them."""
    if args.s3_endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = args.s3_endpoint_url
    if args.s3_region:
        os.environ["AWS_REGION"] = args.s3_region


def start_job(args: argparse.Namespace) -> None:
    """What every job does first with its parsed arguments: log lines with time, level and
    logger, and the S3 flags exported (:func:`apply_s3_options`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    apply_s3_options(args)


def add_longform_options(parser: argparse.ArgumentParser) -> None:
    """How long recordings and multi-segment cuts are cut up."""
    g = parser.add_argument_group(
        "long audio",
        "Cuts longer than --max-cut-seconds are transcribed as equal-length windows overlapping by at least "
        "--window-overlap-seconds; the windows are batched with everything else (and may land on different "
        "actors) and stitched back into one row per cut (see README: Long recordings). Each window is cut at "
        "its pauses and the speech between them transcribed piece by piece; with the demo model this brings "
        "long-form WER to that of the same sentences transcribed one at a time.")
    g.add_argument("--max-cut-seconds", type=float, default=_DEFAULTS.max_cut_seconds, metavar="S",
                   help=f"longest cut transcribed without windows (default {_DEFAULTS.max_cut_seconds:g}; 0: never split)")
    g.add_argument("--window-overlap-seconds", type=float, default=_DEFAULTS.window_overlap_seconds, metavar="S",
                   help=f"minimum overlap of consecutive windows (default {_DEFAULTS.window_overlap_seconds:g}; "
                        "must be under half of --max-cut-seconds)")
    p = PauseSplit()
    g.add_argument("--no-pause-split", dest="pause_split", action="store_false",
                   help="transcribe each window whole; by default a window is cut at its pauses (silences of at "
                        "least --min-pause-seconds) and the speech between them is transcribed piece by piece, "
                        "then joined (see pipeline/longform/pauses.py)")
    g.add_argument("--min-pause-seconds", type=float, default=p.min_pause_seconds, metavar="S",
                   help=f"shortest silence a window is cut at (default {p.min_pause_seconds:g})")
    g.add_argument("--pause-threshold-db", type=float, default=p.threshold_db, metavar="DB",
                   help=f"a 25 ms frame is silent when it is DB below the window's loud level, its 95th "
                        f"percentile frame energy (default {p.threshold_db:g})")
    g.add_argument("--max-recording-hours", type=float, default=_DEFAULTS.max_recording_hours, metavar="H",
                   help="a cut longer than H hours (as its manifest says, or as a file's header says once clipped "
                        "to what the file's size can hold) is an error row, found while planning; audio of unknown "
                        f"duration is not decoded past it (default {_DEFAULTS.max_recording_hours:g})")
    g.add_argument("--segments", choices=SEGMENT_MODES, default=_DEFAULTS.segments,
                   help="cuts: one row per cut (default); supervisions: one row per supervision segment of each "
                        "lhotse cut, with the segment's start, duration, text and speaker (cuts without "
                        "supervisions stay whole)")


def add_plan_options(group: argparse._ArgumentGroup) -> None:
    """Resume and the frozen plan (both jobs)."""
    group.add_argument("--no-resume", dest="resume", action="store_false",
                       help="redo shards even if their part exists with the same fingerprint")
    group.add_argument("--replan", action="store_true",
                       help="plan the run's inputs again (a rerun with the same --run-id otherwise reuses its plan "
                            "under <output>/runs/<id>/plan/ and only says when the inputs changed); parts of shards "
                            "the new plan does not have are removed, the others are kept and skipped")


def decoding_methods(given: Optional[Sequence[str]]) -> list[str]:
    """The ``--decoding`` methods as given (repeatable; default ``auto``); a repeat is an error."""
    methods = list(given or ["auto"])
    if len(set(methods)) != len(methods):
        raise ValueError(f"--decoding repeats a method: {methods}")
    return methods


def transcribe_config(args: argparse.Namespace, methods: Sequence[str], **fields: Any) -> TranscribeConfig:
    """The driver configuration for the shared options, the decoding methods (each batch is
    encoded once and decoded with each) and job-specific fields (``manifest``, ``model``,
    ``output``, ``run_id``, ``dataset`` ...)."""
    decoding: dict[str, Any] = {"method": methods[0]}
    for field in ("beam", "transducer_beam", "lm_scale", "search_lm_scale", "word_bonus"):  # unset: the model's own default (config.json), field by field
        if getattr(args, field) is not None:
            decoding[field] = getattr(args, field)
    if args.attention_scale is not None:
        decoding["attention_scale"] = args.attention_scale
    if args.max_segment_seconds is not None:
        decoding["max_segment_seconds"] = args.max_segment_seconds or None
    weights, chunking = model_choice(args)  # ValueError: exit 2
    decoding.update(chunking)
    return TranscribeConfig(
        decoding=decoding, extra_methods=tuple(methods[1:]), weights={k: v for k, v in asdict(weights).items() if v not in (None, False)}, num_actors=args.num_actors, gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor, audio_cpus=args.audio_cpus, device=args.device,
        resource_timeout=args.resource_timeout, max_batch_seconds=args.max_batch_seconds,
        max_batch_size=args.max_batch_size, shard_size=args.shard_size, max_attempts=args.max_attempts,
        amp_dtype=args.amp_dtype,
        rescoring_dtype=args.rescoring_dtype, backend=args.backend,
        normalizer=args.normalizer, ray_address=args.ray_address,
        hotwords=args.hotwords, hotwords_score=args.hotwords_score,
        max_cut_seconds=args.max_cut_seconds, window_overlap_seconds=args.window_overlap_seconds,
        segments=args.segments, resume=args.resume, replan=args.replan, max_recording_hours=args.max_recording_hours,
        pause_split=PauseSplit(min_pause_seconds=args.min_pause_seconds, threshold_db=args.pause_threshold_db)
        if args.pause_split else None,
        metrics=args.metrics, prices=resolve_prices(args.price, args.prices),
        **fields,
    )
