"""The transcriber: one resident model, a shard's audio in, one Parquet part out.

``Transcriber`` is a plain class (testable without Ray). In a run it lives in the model stage's
actors (:class:`pipeline.run.stages.ShardTranscriber`), which receive each shard with its audio
already fetched and decoded by the audio stage (:mod:`pipeline.run.shard_audio`). For a shard
it packs duration-sorted batches, runs the model, turns every cut into a row (an ``error`` row
when its audio cannot be used) and writes the shard's part atomically with its fingerprint, so
a retried or duplicated task rewrites the same part. The return value is a small summary; rows
never travel through the driver.

Device: ``auto`` is CUDA when the actor was given a GPU (and, outside Ray, when one is
visible); an actor given a GPU by a torch build without CUDA fails at once with
:class:`DeviceError`, unless ``cpu`` was asked for on purpose.
"""

from __future__ import annotations

import os
import socket
import gc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from model.recognizer import Recognizer, StageTimes, Transcript
from model.weights import WeightsSelection
from pipeline.inputs.items import WorkItem
from pipeline.io.model_store import local_model_dir
from pipeline.io.ranges import RangeReader
from pipeline.longform.merge import WORD_MARK
from pipeline.longform.pauses import PauseSplit, join_transcripts, speech_pieces
from pipeline.output import parquet
from pipeline.output.words import words_table
from pipeline.output.records import STATUS_ERROR, STATUS_OK, WINDOW_SCHEMA, TranscriptRow, WindowRow, rows_to_table
from pipeline.plan.batching import pack_batches
from pipeline.report.wer import score_row

from .config import decoding_list
from .heap import HeapTrimmer, limit_kernel_cache
from .shard_audio import MIN_SECONDS, SAMPLE_RATE, ShardAudio, channel_of, load_shard_audio
from .tasks import ShardResult, ShardTask

limit_kernel_cache()  # before the model builds its first CPU kernel (pipeline.run.heap)

SILENCE_PEAK = 1e-4  # a cut whose peak stays below this is digital silence: empty text, no model run
DEVICES = ("auto", "cuda", "cpu")


log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """The actor cannot run on the device it was asked for or given."""


class DeviceFailure(RuntimeError):
    """The device failed in a way that poisons the process (a CUDA error other than running out
    of memory: device-side assert, illegal address, ECC error). The model stage ends the actor's
    process so Ray restarts it and retries the shard; such failures never become error rows."""


# Messages of errors after which a CUDA context cannot be trusted (CUDA errors are sticky).
_FATAL_MARKERS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS", "CUDNN_STATUS",
                  "cuDNN error", "NCCL error", "ECC error", "unspecified launch failure")


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation (CUDA, or the CPU allocator): the batch may fit when split."""
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc) \
        or "CUDA out of memory" in str(exc)


def is_fatal_device_error(exc: BaseException) -> bool:
    """A device error that is not an OOM and leaves the process unusable (see :class:`DeviceFailure`)."""
    if is_out_of_memory(exc):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", ())
    return (bool(accelerator_error) and isinstance(exc, accelerator_error)) or \
        any(marker in str(exc) for marker in _FATAL_MARKERS)


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
    max_batch_seconds: float = 160.0
    max_batch_size: Optional[int] = None
    amp_dtype: str = "auto"
    rescoring_dtype: str = "auto"
    backend: str = "torch"  # model.recognizer.BACKENDS
    num_threads: int = 1
    loader_threads: int = 4  # items fetched at once when the transcriber loads audio itself (in-process runs)
    normalizer: str = "english"
    device: str = "auto"
    #: windows of long cuts (and whole cuts longer than ``max_cut_seconds``) are transcribed
    #: as the speech between their pauses (pipeline.longform.pauses); None: as they are
    pause_split: Optional[PauseSplit] = field(default_factory=PauseSplit)
    max_cut_seconds: float = 30.0
    max_audio_seconds: Optional[float] = 24 * 3600.0  # audio of unknown duration is not decoded past this (in-process runs)


class Transcriber:
    """One resident model; :meth:`transcribe_shard` for a shard whose audio is loaded."""

    def __init__(self, config: ActorConfig, gpu_ids: Optional[Sequence[Any]] = None):
        self.config = config
        # fewer out-of-memory errors from fragmentation as batch shapes vary (unless the user chose)
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        torch.set_num_threads(max(1, config.num_threads))
        self.device = pick_device(config.device, gpu_ids)
        weights = WeightsSelection.from_dict(config.weights)
        model_dir = local_model_dir(config.model_uri, expected_sha256=config.model_sha256, weights=weights)
        self.recognizer = Recognizer.from_dir(
            model_dir, decoding=decoding_list(config.decoding, config.extra_methods),  # overrides of config.json's
            device=self.device, amp_dtype=config.amp_dtype, rescoring_dtype=config.rescoring_dtype,
            checkpoint_sha256=config.model_sha256,  # the driver's: the same weights on every node
            weights=weights, backend=config.backend,
        )
        self.recognizer.warm_up()
        #: padded seconds per model batch: the run's --max-batch-seconds, lowered after an out-of-memory
        self.max_batch_seconds = float(config.max_batch_seconds)
        self.oom_splits = 0
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        if self.device.type == "cuda":
            self.probe_memory()
        self._ranges: Optional[RangeReader] = None  # for process_shard (the audio stage has its own)
        self._heap = HeapTrimmer()

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
             decoding: str) -> TranscriptRow:
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
        if window:  # the cut's reference rides on its first window; WER is scored on the stitched cut
            row.window_index, row.window_count = item.window_index, item.window_count
            row.cut_start, row.cut_duration = item.cut_start, item.cut_duration
            row.reference = item.reference if item.window_index == 0 else None
            return row
        score_row(row, self.config.normalizer)
        return row

    def _transcribe(self, waves: list[np.ndarray], times: StageTimes) -> list[list[Transcript] | str]:
        """For each cut of a batch, in order: its transcript by each decoding (one encoder pass),
        or an error message.

        * Out of memory: the batch is split in halves (shortest and longest cuts apart) and the
          actor's budget (:attr:`max_batch_seconds`) drops to half the failed batch's padded
          seconds for the rest of the run; a single cut that does not fit gets an error message.
        * A device failure (:func:`is_fatal_device_error`) raises :class:`DeviceFailure`: the
          process must end, the shard is retried on a fresh actor.
        * Any other failure (a bad input): each cut is retried alone, and a cut that still fails
          gets its error message.

        The retries run after the ``except`` block, so the failed batch's tensors (held by the
        traceback) are freed first. A batch larger than the current budget is split before it runs."""
        padded = len(waves) * max(w.size for w in waves) / SAMPLE_RATE
        if len(waves) > 1 and padded > self.max_batch_seconds:
            return self._in_halves(waves, times)
        failure, oom = "", False
        try:
            per_decoding, t = self.recognizer.transcribe_all(waves)
        except Exception as exc:  # noqa: BLE001 - classified below, after the except block
            if is_fatal_device_error(exc):
                raise DeviceFailure(f"{type(exc).__name__}: {exc}") from exc
            failure, oom = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}", is_out_of_memory(exc)
        else:
            times.add(t)
            return [list(of_cut) for of_cut in zip(*per_decoding)]
        release_memory(self.device)
        if len(waves) == 1:
            return [f"model failed: {failure}" + (f" ({padded:.1f} s alone does not fit)" if oom else "")]
        if oom:
            self.oom_splits += 1
            budget = max(padded / 2, 1.0)
            if budget < self.max_batch_seconds:
                log.warning("%s: out of memory on a batch of %d cuts (%.1f padded s): batches limited to %.1f padded s "
                            "from now on", self.worker, len(waves), padded, budget)
                self.max_batch_seconds = budget
            return self._in_halves(waves, times)
        return [self._transcribe([w], times)[0] for w in waves]

    def probe_memory(self) -> list[list[Transcript] | str]:
        """Run the largest batch this run can produce once (as many cuts of the longest duration,
        ``max_cut_seconds``, as the budget holds), so that running out of memory happens here,
        lowering the budget (:meth:`_transcribe`), and not on the first long shard. Called at
        start-up on CUDA, where memory is the limit; returns the probe's results."""
        longest = self.config.max_cut_seconds if self.config.max_cut_seconds > 0 else self.max_batch_seconds
        longest = min(longest, self.max_batch_seconds)
        count = max(1, int(self.max_batch_seconds // longest))
        if self.config.max_batch_size:
            count = min(count, self.config.max_batch_size)
        rng = np.random.default_rng(0)
        waves = [(0.01 * rng.standard_normal(int(longest * SAMPLE_RATE))).astype(np.float32) for _ in range(count)]
        results = self._transcribe(waves, StageTimes())
        log.info("%s: memory probe with %d x %.1f s: batch budget %.1f padded s", self.worker, count, longest,
                 self.max_batch_seconds)
        return results

    def _in_halves(self, waves: list[np.ndarray], times: StageTimes) -> list[list[Transcript] | str]:
        order = sorted(range(len(waves)), key=lambda i: waves[i].size)
        out: list[list[Transcript] | str] = [""] * len(waves)
        for part in (order[: len(order) // 2], order[len(order) // 2:]):
            for i, result in zip(part, self._transcribe([waves[i] for i in part], times)):
                out[i] = result
        return out

    def _splits_at_pauses(self, item: WorkItem, samples: np.ndarray) -> bool:
        long = samples.size > self.config.max_cut_seconds * SAMPLE_RATE > 0
        return self.config.pause_split is not None and (item.is_window or long)

    def _transcribe_batch(self, items: list[WorkItem], waves: list[np.ndarray],
                          times: StageTimes) -> tuple[list[list[Transcript] | str], float, float]:
        """Transcripts by each decoding (or error messages) of a batch's cuts, and the seconds of
        audio the model saw without and with padding.

        Windows of long cuts are cut at their pauses (:mod:`pipeline.longform.pauses`); the pieces of the
        whole batch are packed into duration-sorted model batches of their own and joined back
        into one transcript per window. A batch with nothing to cut goes to the model as packed."""
        pieces: list[tuple[int, int, np.ndarray]] = []  # (index in batch, offset in samples, samples)
        for k, (item, wave) in enumerate(zip(items, waves)):
            spans = speech_pieces(wave, SAMPLE_RATE, self.config.pause_split) if self._splits_at_pauses(item, wave) else [(0, wave.size)]
            pieces += [(k, a, wave[a:b]) for a, b in spans]
        if all(p[1] == 0 and p[2].size == waves[p[0]].size for p in pieces):  # nothing cut or trimmed
            return (self._transcribe(waves, times), sum(w.size for w in waves) / SAMPLE_RATE,
                    len(waves) * max(w.size for w in waves) / SAMPLE_RATE)
        padded = 0.0
        results: list[list[Transcript] | str] = []
        min_size = int(MIN_SECONDS * SAMPLE_RATE)
        order = pack_batches(list(range(len(pieces))), [p[2].size / SAMPLE_RATE for p in pieces],
                             self.max_batch_seconds, self.config.max_batch_size)
        by_piece: dict[int, list[Transcript] | str] = {}
        for sub in order:
            sub_waves = [np.pad(pieces[j][2], (0, max(0, min_size - pieces[j][2].size))) for j in sub.items]
            by_piece.update(zip(sub.items, self._transcribe(sub_waves, times)))
            padded += len(sub_waves) * max(w.size for w in sub_waves) / SAMPLE_RATE
        of_cut: list[list[int]] = [[] for _ in waves]
        for j, (k, _, _) in enumerate(pieces):
            of_cut[k].append(j)
        for mine in of_cut:
            failed = [by_piece[j] for j in mine if isinstance(by_piece[j], str)]
            if failed:
                results.append(f"{failed[0]} (in {len(failed)} of the {len(mine)} pieces cut at pauses)")
                continue
            tok = self.recognizer.tokenizer
            results.append([
                join_transcripts([(pieces[j][1] / SAMPLE_RATE, pieces[j][2].size / SAMPLE_RATE, by_piece[j][d])
                                  for j in mine], tok.decode, lambda i: tok.id_to_piece(i).startswith(WORD_MARK),
                                 tok.piece_to_id(WORD_MARK) if WORD_MARK in tok else None)
                for d in range(len(self.recognizer.decodings))])
        return results, sum(p[2].size for p in pieces) / SAMPLE_RATE, padded

    # -- shards --------------------------------------------------------------
    def process_shard(self, task: ShardTask) -> ShardResult:
        """Load the shard's audio here, then :meth:`transcribe_shard` (runs without an audio stage)."""
        if self._ranges is None:
            self._ranges = RangeReader()  # windows of long files: only their byte ranges are fetched
        return self.transcribe_shard(task, load_shard_audio(task.shard.items, self._ranges, self.config.loader_threads,
                                                            self.config.max_audio_seconds))

    def transcribe_shard(self, task: ShardTask, audio: ShardAudio) -> ShardResult:
        """Transcribe every cut of a shard from its loaded audio and write its part(s); returns
        the shard summary (also stored in the part's metadata)."""
        started = time.perf_counter()
        splits_before = self.oom_splits
        shard = task.shard
        at = {id(item): k for k, item in enumerate(shard.items)}
        batches = pack_batches(shard.items, [i.duration for i in shard.items],
                               self.max_batch_seconds, self.config.max_batch_size)
        result = ShardResult(shard_id=shard.shard_id, part_uri=task.part_uri, batches=len(batches),
                             worker=self.worker, device=str(self.device), load_seconds=audio.load_seconds,
                             load_cpu_seconds=audio.cpu_seconds, bytes_fetched=audio.bytes_fetched,
                             bytes_needed=audio.bytes_needed)
        times = StageTimes()
        labels = self.decoding_labels()
        rows: list[TranscriptRow] = []
        errors = list(audio.errors)
        for batch in batches:
            index = [at[id(item)] for item in batch.items]
            transcripts: dict[int, list[Transcript]] = {}
            for k in index:
                samples = audio.samples[k]
                if samples is not None and float(np.abs(samples).max(initial=0.0)) < SILENCE_PEAK:
                    transcripts[k] = [Transcript(text="", token_ids=[], token_times=[], score=0.0, confidence=1.0)
                                      for _ in labels]
                    result.audio_seconds += audio.durations[k]
            good = [k for k in index if audio.samples[k] is not None and k not in transcripts]
            if good:
                done, seen, padded = self._transcribe_batch([shard.items[k] for k in good],
                                                             [audio.samples[k] for k in good], times)
                for k, tr in zip(good, done):
                    if isinstance(tr, str):
                        errors[k] = tr
                    else:
                        transcripts[k] = tr
                result.audio_seconds += sum(audio.durations[k] for k in good)
                result.model_input_seconds += seen
                result.padded_seconds += padded
            self._heap.maybe_trim()  # the batch's tensors are freed: give back what piles up (pipeline.run.heap)
            for k in index:
                for d, label in enumerate(labels):
                    row = self._row(shard.items[k], shard.shard_id, transcripts[k][d] if k in transcripts else None,
                                    errors[k], label)
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
        if windows:  # written first: a shard counts as done only once its transcripts part exists
            if task.windows_part_uri is None:
                raise ValueError(f"shard {shard.shard_id} holds windows of long cuts but no windows part was given")
            parquet.write_part(task.windows_part_uri, rows_to_table(windows, WINDOW_SCHEMA), task.fingerprint)
        if task.words_part_uri is not None and rows:  # before the transcripts part, which marks the shard done
            tokenizer = self.recognizer.tokenizer
            words = words_table(rows, tokenizer.id_to_piece, tokenizer.decode, self.recognizer.decoding.frame_shift_s)
            parquet.write_part(task.words_part_uri, words, task.fingerprint)
        parquet.write_part(task.part_uri, rows_to_table(rows), task.fingerprint, summary=result.as_dict())
        return result
