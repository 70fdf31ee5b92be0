"""The transcriber: one resident model, a shard's audio in, one Parquet part out.

``Transcriber`` is a plain class (testable without Ray). In a run it lives in the model stage's
actors (:class:`pipeline.run.model_stage.ShardTranscriber`), which receive each shard with its audio
already fetched and decoded by the audio stage (:mod:`pipeline.run.shard_audio`). A shard is done
in three steps, so that the model thread does only the model's work, and can start the next
shard while this one is written:

1. :meth:`Transcriber.plan_shard` (any thread): packs duration-sorted batches, sets silent cuts
   apart and cuts long ones at their pauses;
2. :meth:`Transcriber.decode_shard` (the model thread): runs the model on the planned batches (on
   CUDA the next batch's copy and features are queued on a side stream while the current one
   runs) and turns every cut into a row (an ``error`` row when its audio cannot be used);
3. :meth:`Transcriber.write_shard` (any thread: the model stage's writer): scores the rows against
   their references (WER) and writes the shard's parts atomically with its fingerprint, the
   transcripts part last (it marks the shard done), so a retried or duplicated task rewrites the
   same parts.

:meth:`Transcriber.transcribe_shard` does all three. The return value is a small summary; rows never
travel through the driver.

Device: ``auto`` is CUDA when the actor was given a GPU (and, outside Ray, when one is
visible); an actor given a GPU by a torch build without CUDA fails at once with
:class:`DeviceError`, unless ``cpu`` was asked for on purpose. What happens when the device
fails is :mod:`pipeline.run.failures`; how large a batch may be, :mod:`pipeline.run.device_memory`.
"""

from __future__ import annotations

import os
import socket
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from model.recognizer import FeatureBatch, Recognizer, StageTimes, Transcript
from model.weights import WeightsSelection
from pipeline.inputs.hotwords import HotwordError, Hotwords, merge_hotwords, parse_hotword_entries
from pipeline.inputs.items import WorkItem
from pipeline.io.model_store import local_model_dir
from pipeline.io.ranges import RangeReader
from pipeline.longform.merge import WORD_MARK
from pipeline.longform.pauses import PauseSplit, join_transcripts, speech_pieces
from pipeline.output import parquet
from pipeline.output.words import words_table
from pipeline.output.records import STATUS_ERROR, STATUS_OK, WINDOW_SCHEMA, TranscriptRow, WindowRow, rows_to_table
from pipeline.plan.batching import pack_batches
from pipeline.report.normalize import get_normalizer
from pipeline.report.wer import score_row

from .config import decoding_list
from .device_memory import (CPU_BATCH_SECONDS, allocator_fraction, batch_budget, cost_per_padded_second,
                            read_device_memory, room_bytes)
from .failures import (OUT_OF_MEMORY, POISONED, DeviceError, DeviceFailure, ShardDeviceError, failure_kind,
                       is_fatal_device_error, is_out_of_memory)
from .heap import HeapTrimmer, limit_kernel_cache
from .shard_audio import MIN_SECONDS, SAMPLE_RATE, ShardAudio, channel_of, load_shard_audio
from .tasks import ShardResult, ShardTask

__all__ = ["ActorConfig", "DecodedShard", "DeviceError", "DeviceFailure", "ShardDeviceError", "ShardPlan", "Transcriber",
           "is_fatal_device_error", "is_out_of_memory", "pick_device", "release_memory"]

limit_kernel_cache()  # before the model builds its first CPU kernel (pipeline.run.heap)

SILENCE_PEAK = 1e-4  # a cut whose peak stays below this is digital silence: empty text, no model run
DEVICES = ("auto", "cuda", "cpu")


log = logging.getLogger(__name__)


def release_memory(device: torch.device) -> None:
    """Free what a failed batch held: collect its cycles and return the CUDA cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def pick_device(requested: str, gpu_ids: Optional[Sequence[Any]]) -> torch.device:
    """The device of an actor: ``requested`` (``auto``/``cuda``/``cpu``) and the GPUs Ray gave
    it (``None`` outside Ray: then ``auto`` uses a visible GPU)."""
    if requested not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    given = bool(gpu_ids) if gpu_ids is not None else torch.cuda.is_available()
    if requested == "cuda" or given:
        if not torch.cuda.is_available():
            why = (f"this actor was given GPU(s) {list(gpu_ids)}" if gpu_ids else "--device cuda was asked for")
            raise DeviceError(
                f"{why}, but torch {torch.__version__} here cannot use CUDA (a CPU-only build, or no driver): "
                "install a CUDA build of torch on the GPU nodes (make install TORCH_SPEC=... TORCH_INDEX=...), "
                "or pass --device cpu to run on CPUs on purpose")
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class ActorConfig:
    model_uri: str
    model_sha256: str
    output_uri: str
    run_id: str
    decoding: dict[str, Any] = field(default_factory=dict)
    extra_methods: tuple[str, ...] = ()  # further methods decoded from each batch's encoder output
    weights: dict[str, Any] = field(default_factory=dict)  # model.weights.WeightsSelection fields
    #: padded seconds per model batch; None: automatic (pipeline.run.device_memory: on CUDA from the
    #: device's memory and the model's measured cost, else CPU_BATCH_SECONDS); on CUDA a given value is a cap
    max_batch_seconds: Optional[float] = None
    max_batch_size: Optional[int] = None
    amp_dtype: str = "auto"
    rescoring_dtype: str = "auto"
    backend: str = "torch"  # model.recognizer.BACKENDS
    num_threads: int = 1
    loader_threads: int = 4  # items fetched at once when the transcriber loads audio itself (in-process runs)
    normalizer: str = "english"
    device: str = "auto"
    #: contextual biasing: the run-level hotword list, parsed and normalised (pipeline.inputs.hotwords),
    #: merged with each cut's own; the bonus per token of a cut's phrases without a score of their own
    hotwords: Hotwords = ()
    hotwords_score: float = 1.5
    #: windows of long cuts (and whole cuts longer than ``max_cut_seconds``) are transcribed
    #: as the speech between their pauses (pipeline.longform.pauses); None: as they are
    pause_split: Optional[PauseSplit] = field(default_factory=PauseSplit)
    max_cut_seconds: float = 30.0
    max_audio_seconds: Optional[float] = 24 * 3600.0  # audio of unknown duration is not decoded past this (in-process runs)


@dataclass
class DecodedShard:
    """A shard the model is done with (:meth:`Transcriber.decode_shard`): its rows, in manifest
    order, not yet scored against their references, and its summary; :meth:`Transcriber.write_shard`
    writes them."""

    task: ShardTask
    rows: list[TranscriptRow]  # one per cut (of the shard's short cuts) and decoding
    windows: list[WindowRow]  # one per window of a long cut and decoding
    result: ShardResult
    scored: bool = False


@dataclass
class _BatchPlan:
    """One packed batch of a shard, planned for the model: its silent cuts are done without it, the
    others go as they are (one model batch) or, cut at their pauses, as pieces in model batches of
    their own (``pieces``: position among ``good``, offset in samples, samples)."""

    index: list[int]  # the batch's cuts: positions in the shard
    silent: list[int]
    good: list[int]
    pieces: Optional[list[tuple[int, int, np.ndarray]]]  # None: the good cuts as they are
    groups: list[list[int]]  # the model batches: positions in ``pieces`` (or in ``good``)
    waves: list[list[np.ndarray]]  # the samples of each model batch
    #: the hotword list (or None) of each entry of each model batch, as ``waves``
    hotwords: list[list[Optional[Hotwords]]] = field(default_factory=list)
    seen: float = 0.0  # seconds of audio the model sees
    padded: float = 0.0  # and with padding


@dataclass
class ShardPlan:
    """A shard's cuts planned for the model (:meth:`Transcriber.plan_shard`): its duration-sorted
    packed batches, each with its silent cuts set apart and its long cuts cut at their pauses."""

    batches: list[_BatchPlan]
    #: each shard item's hotword list (run's and cut's merged; None: none)
    hotwords: list[Optional[Hotwords]] = field(default_factory=list)


def matched_hotwords(text_norm: str, hotwords: Hotwords) -> list[str]:
    """The phrases of ``hotwords`` that the normalised text contains as whole words, in list order."""
    padded = f" {text_norm} "
    return [phrase for phrase, _ in hotwords if f" {phrase} " in padded]


class Transcriber:
    """One resident model; :meth:`decode_shard` and :meth:`write_shard` (or :meth:`transcribe_shard`)
    for a shard whose audio is loaded.

    ``gpu_share``: the share of its GPU the actor was given (Ray's ``num_gpus``); below 1 the
    process's CUDA allocator is capped at it (:func:`pipeline.run.device_memory.allocator_fraction`).

    Raises :class:`DeviceFailure` when the model's warm-up (or the memory probe) fails on the device:
    the model stage ends the process so that Ray starts a fresh one."""

    def __init__(self, config: ActorConfig, gpu_ids: Optional[Sequence[Any]] = None,
                 gpu_share: Optional[float] = None):
        self.config = config
        # fewer out-of-memory errors from fragmentation as batch shapes vary (unless the user chose)
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        torch.set_num_threads(max(1, config.num_threads))
        self.device = pick_device(config.device, gpu_ids)
        #: the cap of this process's CUDA allocator (a share of the GPU), None: the whole GPU
        self.memory_fraction: Optional[float] = None
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            self.memory_fraction = allocator_fraction(gpu_share, total)
            if self.memory_fraction is not None:
                index = self.device.index if self.device.index is not None else torch.cuda.current_device()
                torch.cuda.set_per_process_memory_fraction(self.memory_fraction, index)
        weights = WeightsSelection.from_dict(config.weights)
        model_dir = local_model_dir(config.model_uri, expected_sha256=config.model_sha256, weights=weights)
        self.recognizer = Recognizer.from_dir(
            model_dir, decoding=decoding_list(config.decoding, config.extra_methods),  # overrides of config.json's
            device=self.device, amp_dtype=config.amp_dtype, rescoring_dtype=config.rescoring_dtype,
            checkpoint_sha256=config.model_sha256,  # the driver's: the same weights on every node
            weights=weights, backend=config.backend,
        )
        #: padded seconds per model batch: the run's --max-batch-seconds (else CPU_BATCH_SECONDS), on CUDA
        #: set by the memory probe, and lowered after an out-of-memory
        self.max_batch_seconds = float(config.max_batch_seconds or CPU_BATCH_SECONDS)
        self.oom_splits = 0
        self._normalize = get_normalizer(config.normalizer)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._ranges: Optional[RangeReader] = None  # for process_shard (the audio stage has its own)
        self._heap = HeapTrimmer()
        try:
            self.recognizer.warm_up()
            if self.device.type == "cuda":
                self.probe_memory()
        except Exception as exc:  # noqa: BLE001 - a device's failure ends the process (model stage): Ray restarts it
            if failure_kind(exc) is None and not isinstance(exc, ShardDeviceError):
                raise
            raise DeviceFailure(f"the model's warm-up failed on {self.device}: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:300]}") from exc

    def describe(self) -> dict[str, Any]:
        """Model and device facts for the run summary."""
        info = self.recognizer.info
        return {"worker": self.worker, "device": str(self.device), "model_id": info.name,
                "model_sha256": info.sha256, "decoding": "; ".join(self.decoding_labels())}

    def decoding_labels(self) -> list[str]:
        """The label of each decoding, in order: what the rows' ``decoding`` column holds."""
        return [d.label() for d in self.recognizer.decodings]

    # -- rows ----------------------------------------------------------------
    def _row(self, item: WorkItem, shard_id: str, transcript: Optional[Transcript], error: Optional[str],
             decoding: str, hotwords: Optional[Hotwords] = None) -> TranscriptRow:
        """A cut's row, without its WER columns (:meth:`write_shard` scores it)."""
        info = self.recognizer.info
        window = item.is_window
        row = (WindowRow if window else TranscriptRow)(
            run_id=self.config.run_id, cut_id=item.cut_id, status=STATUS_OK if error is None else STATUS_ERROR,
            recording_id=item.recording_id, source=item.source, channel=channel_of(item), start_s=item.start,
            duration=item.duration, reference=item.reference, speaker=item.speaker, language=item.language,
            dataset=item.dataset, error=error, model_id=info.name, model_sha256=info.sha256,
            decoding=decoding, shard_id=shard_id, worker=self.worker,
        )
        if transcript is not None:
            row.text = transcript.text
            row.token_ids = transcript.token_ids
            row.token_times = transcript.token_times
            row.ctc_score = transcript.ctc_score
            row.attention_score = transcript.attention_score
            row.lm_score = transcript.lm_score
            row.confidence = transcript.confidence
            row.token_confidences = transcript.token_confidences
            row.hotword_score = transcript.hotword_score
            if hotwords:
                row.hotwords_matched = matched_hotwords(self._normalize(transcript.text), hotwords)
        if hotwords:
            row.hotword_words = sorted({w for phrase, _ in hotwords for w in phrase.split()})
        if window:  # the cut's reference rides on its first window; WER is scored on the stitched cut
            row.window_index, row.window_count = item.window_index, item.window_count
            row.cut_start, row.cut_duration = item.cut_start, item.cut_duration
            row.reference = item.reference if item.window_index == 0 else None
        return row

    # -- model batches -------------------------------------------------------
    def _transcribe(self, waves: list[np.ndarray], times: StageTimes, prepared: Optional[FeatureBatch] = None,
                    overlap: Optional[Callable[[], None]] = None,
                    hotwords: Optional[list[Optional[Hotwords]]] = None) -> list[list[Transcript] | str]:
        """For each cut of a batch, in order: its transcript by each decoding (one encoder pass),
        or an error message. ``hotwords``: each cut's hotword list (or None), as ``waves``.
        ``prepared``: the batch's features, started by :meth:`_prepare`;
        ``overlap``: host work to do while the device encodes (:meth:`Recognizer.transcribe_all`).

        Failures (:func:`pipeline.run.failures.failure_kind`):

        * Out of memory: the batch is split in halves (shortest and longest cuts apart) and the
          actor's budget (:attr:`max_batch_seconds`) drops to half the failed batch's padded
          seconds for the rest of the run.
        * A device failure that poisons the CUDA context raises :class:`DeviceFailure`: the
          process must end, the shard is retried on a fresh actor.
        * Any other failure: each cut is retried alone. A cut that still fails because of its
          input gets its error message (an error row); one that fails alone because of the device
          (out of memory, a device error) raises :class:`ShardDeviceError`: the shard is retried,
          and never gets an error row that a rerun would keep.

        The retries run after the ``except`` block, so the failed batch's tensors (held by the
        traceback) are freed first. A batch larger than the current budget is split before it runs."""
        padded = len(waves) * max(w.size for w in waves) / SAMPLE_RATE
        if len(waves) > 1 and padded > self.max_batch_seconds:
            return self._in_halves(waves, times, hotwords)
        failure, kind = "", None
        try:
            lists = {"hotwords": hotwords} if hotwords is not None else {}  # none: the call as before lists
            per_decoding, t = self.recognizer.transcribe_all(prepared if prepared is not None else waves,
                                                             overlap=overlap, **lists)
        except Exception as exc:  # noqa: BLE001 - classified below, after the except block
            kind = failure_kind(exc)
            if kind == POISONED:
                raise DeviceFailure(f"{type(exc).__name__}: {exc}") from exc
            failure = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        else:
            times.add(t)
            return [list(of_cut) for of_cut in zip(*per_decoding)]
        release_memory(self.device)
        if len(waves) == 1:
            if kind == OUT_OF_MEMORY:
                raise ShardDeviceError(
                    f"a cut of {padded:.1f} s does not fit in {self.device} memory even alone ({failure}): lower "
                    "--max-cut-seconds (longer cuts are transcribed in windows) or give each actor more of a GPU")
            if kind is not None:
                raise ShardDeviceError(f"the device fails on a cut of {padded:.1f} s even alone: {failure}")
            return [f"model failed: {failure}"]
        if kind == OUT_OF_MEMORY:
            self.oom_splits += 1
            budget = max(padded / 2, 1.0)
            if budget < self.max_batch_seconds:
                log.warning("%s: out of memory on a batch of %d cuts (%.1f padded s): batches limited to %.1f padded s "
                            "from now on", self.worker, len(waves), padded, budget)
                self.max_batch_seconds = budget
            return self._in_halves(waves, times, hotwords)
        return [self._transcribe([w], times, hotwords=[hotwords[i]] if hotwords is not None else None)[0]
                for i, w in enumerate(waves)]

    def _in_halves(self, waves: list[np.ndarray], times: StageTimes,
                   hotwords: Optional[list[Optional[Hotwords]]] = None) -> list[list[Transcript] | str]:
        order = sorted(range(len(waves)), key=lambda i: waves[i].size)
        out: list[list[Transcript] | str] = [""] * len(waves)
        for part in (order[: len(order) // 2], order[len(order) // 2:]):
            lists = [hotwords[i] for i in part] if hotwords is not None else None
            for i, result in zip(part, self._transcribe([waves[i] for i in part], times, hotwords=lists)):
                out[i] = result
        return out

    def _prepare(self, waves: list[np.ndarray]) -> Optional[FeatureBatch]:
        """Start the features of a model batch ahead of its turn (CUDA only: elsewhere there is no
        device to overlap with). None when it will not run as it is (over the budget) or could not
        be started: it is then computed when its turn comes, where a failure is handled."""
        if self.device.type != "cuda" or (len(waves) > 1 and
                                          len(waves) * max(w.size for w in waves) / SAMPLE_RATE > self.max_batch_seconds):
            return None
        try:
            return self.recognizer.prepare(waves)
        except Exception:  # noqa: BLE001 - the batch is tried again in its turn, where failures are classified
            log.debug("%s: could not start a batch's features ahead", self.worker, exc_info=True)
            release_memory(self.device)
            return None

    def _run_model_batches(self, batches: list[list[np.ndarray]], times: StageTimes,
                           hotwords: Optional[list[list[Optional[Hotwords]]]] = None
                           ) -> list[list[list[Transcript] | str]]:
        """:meth:`_transcribe` on each model batch in turn (``hotwords``: each one's lists, as
        ``batches``); on CUDA the features of the next one are started (:meth:`_prepare`) while the
        device encodes the current one."""
        out = []
        ahead = self._prepare(batches[0]) if batches else None
        for i, waves in enumerate(batches):
            current, ahead = ahead, None
            following = batches[i + 1] if i + 1 < len(batches) else None

            def start_next(following: Optional[list[np.ndarray]] = following) -> None:
                nonlocal ahead
                ahead = self._prepare(following) if following is not None else None

            lists = hotwords[i] if hotwords is not None else None
            out.append(self._transcribe(waves, times, current, start_next if following is not None else None,
                                        lists if lists is not None and any(h is not None for h in lists) else None))
            self._heap.maybe_trim()  # the batch's tensors are freed: give back what piles up (pipeline.run.heap)
        return out

    def probe_memory(self) -> list[list[Transcript] | str]:
        """Size the batch budget before any audio: run the largest batch this run can produce (as
        many cuts of the longest duration, ``max_cut_seconds``, as the budget holds) with a second
        one's features prepared while it runs (as a shard's next batch is), so that running out of
        memory happens here, lowering the budget (:meth:`_transcribe`), and not on the first long
        shard. Returns the last probe's results.

        On CUDA the first probe starts at :data:`~pipeline.run.device_memory.CPU_BATCH_SECONDS`
        (or a smaller --max-batch-seconds) and, with the torch backend (onnxruntime allocates
        outside torch's allocator: there the probe only lowers), measures the model's memory per
        padded second; the
        budget becomes what the memory this process may use holds
        (:func:`~pipeline.run.device_memory.batch_budget`, at most --max-batch-seconds when given),
        higher or lower than the probe's, and a second probe at that size checks it."""
        cap = self.config.max_batch_seconds
        self.max_batch_seconds = min(cap, CPU_BATCH_SECONDS) if cap else CPU_BATCH_SECONDS
        results, cost = self._probe()
        if cost is None:  # out of memory: the budget is already lowered to what fits
            return results
        memory = read_device_memory(self.device)
        budget = batch_budget(room_bytes(memory, self.memory_fraction), cost, cap=cap)
        log.info("%s: memory probe: %.1f MiB per padded second of %.1f s cuts, %.2f GiB free of %.2f GiB%s: batch "
                 "budget %.1f padded s", self.worker, cost / 2**20, self._probe_cut_seconds(), memory.free / 2**30,
                 memory.total / 2**30, f" (allocator capped at {self.memory_fraction:.3f})" if self.memory_fraction
                 else "", budget)
        raised = budget > self.max_batch_seconds
        self.max_batch_seconds = budget
        if raised:
            results, _ = self._probe()
        return results

    def _probe_cut_seconds(self) -> float:
        longest = self.config.max_cut_seconds if self.config.max_cut_seconds > 0 else self.max_batch_seconds
        return min(longest, self.max_batch_seconds)

    def _probe(self) -> tuple[list[list[Transcript] | str], Optional[float]]:
        """One probe at the current budget: its results, and on CUDA the bytes it took per padded
        second (None when it ran out of memory, or elsewhere)."""
        longest = self._probe_cut_seconds()
        count = max(1, int(self.max_batch_seconds // longest))
        if self.config.max_batch_size:
            count = min(count, self.config.max_batch_size)
        rng = np.random.default_rng(0)
        waves = [(0.01 * rng.standard_normal(int(longest * SAMPLE_RATE))).astype(np.float32) for _ in range(count)]
        cuda = self.device.type == "cuda"
        if cuda:
            release_memory(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        splits = self.oom_splits
        ahead: list[Optional[FeatureBatch]] = []  # the next batch's features, prepared while this one runs
        results = self._transcribe(waves, StageTimes(), self._prepare(waves), lambda: ahead.append(self._prepare(waves)))
        ahead.clear()  # the probe's prepared batch is not kept
        log.info("%s: memory probe with %d x %.1f s: batch budget %.1f padded s", self.worker, count, longest,
                 self.max_batch_seconds)
        if not cuda or self.oom_splits > splits or self.config.backend != "torch":  # onnxruntime's memory is its own
            return results, None
        peak = torch.cuda.max_memory_allocated(self.device)
        return results, cost_per_padded_second(before, peak, count * longest)

    # -- shards --------------------------------------------------------------
    def _splits_at_pauses(self, item: WorkItem, samples: np.ndarray) -> bool:
        long = samples.size > self.config.max_cut_seconds * SAMPLE_RATE > 0
        return self.config.pause_split is not None and (item.is_window or long)

    def _plan(self, items: list[WorkItem], audio: ShardAudio, index: list[int],
              hotwords: Optional[list[Optional[Hotwords]]] = None) -> _BatchPlan:
        """How a packed batch of the shard goes to the model (see :class:`_BatchPlan`).

        Windows of long cuts are cut at their pauses (:mod:`pipeline.longform.pauses`); the pieces of the
        whole batch are packed into duration-sorted model batches of their own and joined back
        into one transcript per window. A batch with nothing to cut goes to the model as packed."""
        silent = [k for k in index if audio.samples[k] is not None
                  and float(np.abs(audio.samples[k]).max(initial=0.0)) < SILENCE_PEAK]
        quiet = set(silent)
        good = [k for k in index if audio.samples[k] is not None and k not in quiet]
        plan = _BatchPlan(index=index, silent=silent, good=good, pieces=None, groups=[], waves=[])
        if not good:
            return plan
        waves = [audio.samples[k] for k in good]
        pieces: list[tuple[int, int, np.ndarray]] = []
        for g, (k, wave) in enumerate(zip(good, waves)):
            spans = (speech_pieces(wave, SAMPLE_RATE, self.config.pause_split)
                     if self._splits_at_pauses(items[k], wave) else [(0, wave.size)])
            pieces += [(g, a, wave[a:b]) for a, b in spans]
        plan.seen = sum(p[2].size for p in pieces) / SAMPLE_RATE
        lists = [hotwords[k] if hotwords else None for k in good]
        if all(p[1] == 0 and p[2].size == waves[p[0]].size for p in pieces):  # nothing cut or trimmed
            plan.groups, plan.waves, plan.hotwords = [list(range(len(good)))], [waves], [lists]
            plan.padded = len(waves) * max(w.size for w in waves) / SAMPLE_RATE
            return plan
        plan.pieces = pieces
        min_size = int(MIN_SECONDS * SAMPLE_RATE)
        for sub in pack_batches(list(range(len(pieces))), [p[2].size / SAMPLE_RATE for p in pieces],
                                self.max_batch_seconds, self.config.max_batch_size):
            sub_waves = [np.pad(pieces[j][2], (0, max(0, min_size - pieces[j][2].size))) for j in sub.items]
            plan.groups.append(list(sub.items))
            plan.waves.append(sub_waves)
            plan.hotwords.append([lists[pieces[j][0]] for j in sub.items])
            plan.padded += len(sub_waves) * max(w.size for w in sub_waves) / SAMPLE_RATE
        return plan

    def _assemble(self, plan: _BatchPlan, outputs: list[list[list[Transcript] | str]]) -> list[list[Transcript] | str]:
        """Each good cut's result from its plan's model-batch ``outputs`` (pieces joined back)."""
        by_position: dict[int, list[Transcript] | str] = {}
        for group, results in zip(plan.groups, outputs):
            by_position.update(zip(group, results))
        if plan.pieces is None:
            return [by_position[g] for g in range(len(plan.good))]
        pieces = plan.pieces
        of_cut: list[list[int]] = [[] for _ in plan.good]
        for j, (g, _, _) in enumerate(pieces):
            of_cut[g].append(j)
        tok = self.recognizer.tokenizer
        results: list[list[Transcript] | str] = []
        for mine in of_cut:
            failed = [by_position[j] for j in mine if isinstance(by_position[j], str)]
            if failed:
                results.append(f"{failed[0]} (in {len(failed)} of the {len(mine)} pieces cut at pauses)")
                continue
            results.append([
                join_transcripts([(pieces[j][1] / SAMPLE_RATE, pieces[j][2].size / SAMPLE_RATE, by_position[j][d])
                                  for j in mine], tok.decode, lambda i: tok.id_to_piece(i).startswith(WORD_MARK),
                                 tok.piece_to_id(WORD_MARK) if WORD_MARK in tok else None)
                for d in range(len(self.recognizer.decodings))])
        return results

    def process_shard(self, task: ShardTask) -> ShardResult:
        """Load the shard's audio here, then :meth:`transcribe_shard` (runs without an audio stage)."""
        if self._ranges is None:
            self._ranges = RangeReader()  # windows of long files: only their byte ranges are fetched
        return self.transcribe_shard(task, load_shard_audio(task.shard.items, self._ranges, self.config.loader_threads,
                                                            self.config.max_audio_seconds))

    def transcribe_shard(self, task: ShardTask, audio: ShardAudio) -> ShardResult:
        """Transcribe every cut of a shard from its loaded audio and write its part(s)
        (:meth:`decode_shard`, then :meth:`write_shard`); returns the shard summary."""
        return self.write_shard(self.decode_shard(task, audio))

    def plan_shard(self, task: ShardTask, audio: ShardAudio) -> ShardPlan:
        """The host work before a shard's model batches (packing by duration, silence scans, pause
        splitting): no model, so it may run on another thread while the model decodes the shard
        before (the model stage does)."""
        shard = task.shard
        hotwords = self._hotword_lists(shard.items, audio)
        at = {id(item): k for k, item in enumerate(shard.items)}
        batches = pack_batches(shard.items, [i.duration for i in shard.items],
                               self.max_batch_seconds, self.config.max_batch_size)
        return ShardPlan([self._plan(shard.items, audio, [at[id(item)] for item in batch.items], hotwords)
                          for batch in batches], hotwords)

    def _hotword_lists(self, items: list[WorkItem], audio: ShardAudio) -> list[Optional[Hotwords]]:
        """Each item's hotword list: the run's merged with the cut's own (parsed and normalised here,
        :mod:`pipeline.inputs.hotwords`). An item whose own list is malformed becomes an error row
        saying why (its samples are dropped from ``audio``); the others go on."""
        out: list[Optional[Hotwords]] = []
        run = self.config.hotwords or None
        for k, item in enumerate(items):
            own = None
            if item.hotwords:
                try:
                    own = parse_hotword_entries(item.hotwords, self.config.hotwords_score, self._normalize,
                                                f"cut {item.cut_id}")
                except HotwordError as exc:
                    if audio.errors[k] is None:
                        audio.errors[k] = f"hotwords: {exc}"
                    audio.samples[k] = None
            out.append(merge_hotwords(run, own))
        return out

    def decode_shard(self, task: ShardTask, audio: ShardAudio, plan: Optional[ShardPlan] = None) -> DecodedShard:
        """Run the model on every cut of a shard from its loaded audio (and its :meth:`plan_shard`,
        made here when not given): the shard's rows (not yet scored) and summary. All model
        batches of the shard run in one sequence, so on CUDA each one's features are started while
        the one before runs.

        Raises :class:`DeviceFailure` (end the process) or :class:`ShardDeviceError` (retry the
        shard) when the device, not the audio, fails."""
        started = time.perf_counter()
        splits_before = self.oom_splits
        shard = task.shard
        shard_plan = plan or self.plan_shard(task, audio)
        plans = shard_plan.batches
        result = ShardResult(shard_id=shard.shard_id, part_uri=task.part_uri, batches=len(plans),
                             worker=self.worker, device=str(self.device), load_seconds=audio.load_seconds,
                             load_cpu_seconds=audio.cpu_seconds, bytes_fetched=audio.bytes_fetched,
                             bytes_needed=audio.bytes_needed)
        sizes = [len(h) for k, h in enumerate(shard_plan.hotwords) if h and audio.errors[k] is None]
        result.hotword_cuts, result.hotword_phrases, result.hotword_max_phrases = len(sizes), sum(sizes), max(sizes,
                                                                                                         default=0)
        times = StageTimes()
        labels = self.decoding_labels()
        outputs = self._run_model_batches([waves for plan in plans for waves in plan.waves], times,
                                          [lists for plan in plans for lists in plan.hotwords])
        errors = list(audio.errors)
        rows: list[TranscriptRow] = []
        used = 0
        for plan in plans:
            transcripts: dict[int, list[Transcript]] = {
                k: [Transcript(text="", token_ids=[], token_times=[], score=0.0, confidence=1.0) for _ in labels]
                for k in plan.silent}
            done = self._assemble(plan, outputs[used: used + len(plan.groups)])
            used += len(plan.groups)
            for k, tr in zip(plan.good, done):
                if isinstance(tr, str):
                    errors[k] = tr
                else:
                    transcripts[k] = tr
            result.audio_seconds += sum(audio.durations[k] for k in plan.silent + plan.good)
            result.model_input_seconds += plan.seen
            result.padded_seconds += plan.padded
            for k in plan.index:
                for d, label in enumerate(labels):
                    row = self._row(shard.items[k], shard.shard_id, transcripts[k][d] if k in transcripts else None,
                                    errors[k], label, shard_plan.hotwords[k] if shard_plan.hotwords else None)
                    if row.duration is None:
                        row.duration = audio.durations[k]
                    rows.append(row)
        order = {(item.cut_id, item.window_index): i for i, item in enumerate(shard.items)}
        rank = {label: d for d, label in enumerate(labels)}
        # manifest order, each cut's decodings in the order given
        rows.sort(key=lambda r: (order[(r.cut_id, getattr(r, "window_index", None))], rank[r.decoding]))
        windows = [r for r in rows if isinstance(r, WindowRow)]
        rows = [r for r in rows if not isinstance(r, WindowRow)]
        first = [r for r in rows if r.decoding == labels[0]]  # cuts are counted once, not once per decoding
        result.cuts_ok = sum(r.status == STATUS_OK for r in first)
        result.cuts_error = len(first) - result.cuts_ok
        first_windows = [r for r in windows if r.decoding == labels[0]]
        result.windows_ok = sum(r.status == STATUS_OK for r in first_windows)
        result.windows_error = len(first_windows) - result.windows_ok
        result.stage_seconds = times.as_dict()
        result.oom_splits = self.oom_splits - splits_before
        result.batch_budget_seconds = self.max_batch_seconds
        p = self.recognizer.precision
        result.precision = f"{p.name} ({p.reason})"
        result.wall_seconds = time.perf_counter() - started
        if windows and task.windows_part_uri is None:
            raise ValueError(f"shard {shard.shard_id} holds windows of long cuts but no windows part was given")
        return DecodedShard(task=task, rows=rows, windows=windows, result=result)

    def write_shard(self, decoded: DecodedShard) -> ShardResult:
        """Score a decoded shard's rows against their references (once) and write its parts: the
        windows and words parts first, the transcripts part, which marks the shard done, last; each
        atomically, with the shard's fingerprint. Safe to call again after a
        :class:`~pipeline.io.storage.StorageError` (the same parts are written again). Does not use
        the model, so it may run on another thread while the model decodes the next shard.

        Returns the shard summary (also stored in the transcripts part's metadata: there its
        ``write_seconds`` lacks the transcripts part's own upload)."""
        started = time.perf_counter()
        task, rows, result = decoded.task, decoded.rows, decoded.result
        if not decoded.scored:
            for row in rows:
                score_row(row, self.config.normalizer)
            decoded.scored = True
        if decoded.windows:  # written first: a shard counts as done only once its transcripts part exists
            parquet.write_part(task.windows_part_uri, rows_to_table(decoded.windows, WINDOW_SCHEMA), task.fingerprint)
        if task.words_part_uri is not None and rows:  # before the transcripts part, which marks the shard done
            tokenizer = self.recognizer.tokenizer
            words = words_table(rows, tokenizer.id_to_piece, tokenizer.decode, self.recognizer.decoding.frame_shift_s)
            parquet.write_part(task.words_part_uri, words, task.fingerprint)
        result.write_seconds = time.perf_counter() - started
        parquet.write_part(task.part_uri, rows_to_table(rows), task.fingerprint, summary=result.as_dict())
        result.write_seconds = time.perf_counter() - started
        return result
