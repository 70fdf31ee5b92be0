"""The transcriber: one resident model, whole shards in, one Parquet part out.

``Transcriber`` is a plain class (testable without Ray); the driver wraps it
with ``ray.remote`` and explicit resources. For each shard it packs
duration-sorted batches, fetches and decodes the audio of the next batches on
a small thread pool while the model works on the current one, turns every
cut into a row (an ``error`` row when its audio cannot be used), and writes
the shard's part atomically. The return value is a small summary; rows never
travel through the driver.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from model.recognizer import Recognizer, StageTimes, Transcript
from pipeline.inputs.items import WorkItem
from pipeline.io import storage
from pipeline.io.audio import AudioDecodeError, decode_audio
from pipeline.io.model_store import local_model_dir
from pipeline.io.ranges import RangeReader
from pipeline.longform.pauses import PauseSplit, join_transcripts, speech_pieces
from pipeline.output import parquet
from pipeline.output.records import STATUS_ERROR, STATUS_OK, WINDOW_SCHEMA, TranscriptRow, WindowRow, rows_to_table
from pipeline.plan.batching import Batch, pack_batches
from pipeline.plan.shards import Shard
from pipeline.report.wer import score_row

from .heap import limit_kernel_cache, trim_heap

limit_kernel_cache()  # before the model builds its first CPU kernel (pipeline.run.heap)

SAMPLE_RATE = 16000
MIN_SECONDS = 0.25  # shorter audio is zero-padded to this (the encoder needs >= 9 fbank frames)
SILENCE_PEAK = 1e-4  # a cut whose peak stays below this is digital silence: empty text, no model run
TRUNCATION_TOLERANCE_S = 0.05


@dataclass
class ActorConfig:
    model_uri: str
    model_sha256: str
    output_uri: str
    run_id: str
    decoding: dict[str, Any] = field(default_factory=dict)
    max_batch_seconds: float = 160.0
    max_batch_size: Optional[int] = None
    amp_dtype: str = "auto"
    rescoring_dtype: str = "auto"
    num_threads: int = 1
    prefetch_batches: int = 2
    loader_threads: int = 2
    normalizer: str = "english"
    #: windows of long cuts (and whole cuts longer than ``max_cut_seconds``) are transcribed
    #: as the speech between their pauses (pipeline.longform.pauses); None: as they are
    pause_split: Optional[PauseSplit] = field(default_factory=PauseSplit)
    max_cut_seconds: float = 30.0


@dataclass
class ShardTask:
    shard: Shard
    fingerprint: str
    part_uri: str
    attempt: int = 1
    windows_part_uri: Optional[str] = None  # where the rows of the shard's long-cut windows go


@dataclass
class ShardResult:
    shard_id: str
    part_uri: str
    cuts_ok: int = 0
    cuts_error: int = 0
    windows_ok: int = 0  # windows of long cuts (their cuts are counted when stitched)
    windows_error: int = 0
    audio_seconds: float = 0.0
    model_input_seconds: float = 0.0  # audio_seconds less the silences cut out between pieces
    padded_seconds: float = 0.0
    batches: int = 0
    load_seconds: float = 0.0
    load_wait_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    worker: str = ""
    device: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Loaded:
    """Audio of one batch: samples per item, or the reason it failed."""

    samples: list[Optional[np.ndarray]]
    errors: list[Optional[str]]
    durations: list[Optional[float]]
    seconds: float


def channel_of(item: WorkItem) -> int:
    """The channel transcribed for a cut: its own, else the first."""
    return 0 if item.channel is None else int(item.channel)


def _pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Transcriber:
    def __init__(self, config: ActorConfig):
        self.config = config
        torch.set_num_threads(max(1, config.num_threads))
        self.device = _pick_device()
        model_dir = local_model_dir(config.model_uri, expected_sha256=config.model_sha256)
        self.recognizer = Recognizer.from_dir(
            model_dir, decoding=dict(config.decoding),  # overrides of the model's config.json 'decoding'
            device=self.device, amp_dtype=config.amp_dtype, rescoring_dtype=config.rescoring_dtype,
            checkpoint_sha256=config.model_sha256,  # verified by local_model_dir just above
        )
        self.recognizer.warm_up()
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.loader_threads), thread_name_prefix="audio")
        # The driver runs this class as a threaded actor (two shards at once): while one shard's
        # batches hold the model, the next shard's first batches are already being fetched.
        self._model_lock = threading.Lock()
        self._ranges = RangeReader()  # windows of long files: only their byte ranges are fetched

    def describe(self) -> dict[str, Any]:
        """Model and device facts for the run summary."""
        info = self.recognizer.info
        return {"worker": self.worker, "device": str(self.device), "model_id": info.name,
                "model_sha256": info.sha256, "decoding": self.decoding_label()}

    def decoding_label(self) -> str:
        d = self.recognizer.decoding
        if d.method in ("ctc-beam", "attention-rescoring"):
            extra = f" beam={d.beam}" + (f" scale={d.attention_scale:g}" if d.method == "attention-rescoring" else "")
            extra += f" segments<={d.max_segment_seconds:g}s" if d.max_segment_seconds else ""
        elif d.method == "transducer-beam":
            extra = f" beam={d.transducer_beam}"
        else:
            extra = ""
        return d.method + extra

    # -- audio ---------------------------------------------------------------
    def _load_one(self, item: WorkItem) -> tuple[np.ndarray, float]:
        """Mono 16 kHz samples of a cut: its channel, or the first channel when it names none."""
        if item.is_window and item.duration is not None:
            audio = self._ranges.read(item.source, item.start or 0.0, item.duration, target_sr=SAMPLE_RATE,
                                      channel=channel_of(item))
        else:
            data = storage.read_bytes(item.source)
            audio = decode_audio(data, source=item.source, target_sr=SAMPLE_RATE, channel=channel_of(item),
                                 start=item.start or 0.0, duration=item.duration)
        samples = audio.samples
        seconds = samples.size / SAMPLE_RATE
        if item.duration is not None and seconds < item.duration - max(TRUNCATION_TOLERANCE_S, 0.01 * item.duration):
            raise AudioDecodeError(item.source, f"truncated audio: the manifest says {item.duration:.3f} s, "
                                                f"the file holds {seconds:.3f} s from {item.start or 0.0:.3f} s")
        if samples.size < MIN_SECONDS * SAMPLE_RATE:
            samples = np.pad(samples, (0, int(MIN_SECONDS * SAMPLE_RATE) - samples.size))
        return samples, seconds

    def _load_batch(self, batch: Batch) -> _Loaded:
        start = time.perf_counter()
        loaded = _Loaded([], [], [], 0.0)
        for item in batch.items:
            samples, seconds, error = None, None, None
            try:
                samples, seconds = self._load_one(item)
            except AudioDecodeError as exc:
                error = str(exc)
            except Exception as exc:  # storage errors, missing objects: the cut fails, the shard goes on
                error = f"{type(exc).__name__}: {exc}"
            loaded.samples.append(samples)
            loaded.durations.append(seconds)
            loaded.errors.append(error)
        loaded.seconds = time.perf_counter() - start
        return loaded

    # -- rows ----------------------------------------------------------------
    def _row(self, item: WorkItem, shard_id: str, transcript: Optional[Transcript], error: Optional[str]) -> TranscriptRow:
        info = self.recognizer.info
        window = item.is_window
        row = (WindowRow if window else TranscriptRow)(
            run_id=self.config.run_id, cut_id=item.cut_id, status=STATUS_OK if error is None else STATUS_ERROR,
            recording_id=item.recording_id, source=item.source, channel=channel_of(item), start=item.start,
            duration=item.duration, reference=item.reference, speaker=item.speaker, language=item.language,
            dataset=item.dataset, error=error, model_id=info.name, model_sha256=info.sha256,
            decoding=self.decoding_label(), shard_id=shard_id, worker=self.worker,
        )
        if transcript is not None:
            row.text = transcript.text
            row.token_ids = transcript.token_ids
            row.token_times = transcript.token_times
            row.ctc_score = transcript.ctc_score
            row.attention_score = transcript.attention_score
            row.confidence = transcript.confidence
        if window:  # the cut's reference rides on its first window; WER is scored on the stitched cut
            row.window_index, row.window_count = item.window_index, item.window_count
            row.cut_start, row.cut_duration = item.cut_start, item.cut_duration
            row.reference = item.reference if item.window_index == 0 else None
            return row
        score_row(row, self.config.normalizer)
        return row

    def _transcribe(self, waves: list[np.ndarray], times: StageTimes) -> list[Transcript | str]:
        """Transcripts for a batch; if the batch as a whole fails (e.g. out of memory),
        each cut is retried alone and a cut that still fails gets its error message."""
        try:
            with self._model_lock:
                transcripts, t = self.recognizer.transcribe(waves)
            times.add(t)
            return list(transcripts)
        except Exception as batch_exc:  # noqa: BLE001 - isolate the bad cut, keep the shard
            if len(waves) == 1:
                return [f"model failed: {type(batch_exc).__name__}: {batch_exc}"]
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return [self._transcribe([w], times)[0] for w in waves]

    def _splits_at_pauses(self, item: WorkItem, samples: np.ndarray) -> bool:
        long = samples.size > self.config.max_cut_seconds * SAMPLE_RATE > 0
        return self.config.pause_split is not None and (item.is_window or long)

    def _transcribe_batch(self, items: list[WorkItem], waves: list[np.ndarray],
                          times: StageTimes) -> tuple[list[Transcript | str], float, float]:
        """Transcripts (or error messages) of a batch's cuts, and the seconds of audio the model saw
        without and with padding.

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
        results: list[Transcript | str] = []
        min_size = int(MIN_SECONDS * SAMPLE_RATE)
        order = pack_batches(list(range(len(pieces))), [p[2].size / SAMPLE_RATE for p in pieces],
                             self.config.max_batch_seconds, self.config.max_batch_size)
        by_piece: dict[int, Transcript | str] = {}
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
            results.append(join_transcripts([(pieces[j][1] / SAMPLE_RATE, pieces[j][2].size / SAMPLE_RATE, by_piece[j])
                                             for j in mine], self.recognizer.tokenizer.decode))
        return results, sum(p[2].size for p in pieces) / SAMPLE_RATE, padded

    # -- shards --------------------------------------------------------------
    def process_shard(self, task: ShardTask) -> ShardResult:
        """Transcribe every cut of a shard and write its part; returns the shard summary."""
        started = time.perf_counter()
        shard = task.shard
        batches = pack_batches(shard.items, [i.duration for i in shard.items],
                               self.config.max_batch_seconds, self.config.max_batch_size)
        result = ShardResult(shard_id=shard.shard_id, part_uri=task.part_uri, batches=len(batches),
                             worker=self.worker, device=str(self.device))
        times = StageTimes()
        rows: list[TranscriptRow] = []
        ahead: list[Future] = [self._pool.submit(self._load_batch, b) for b in batches[: self.config.prefetch_batches]]
        for index, batch in enumerate(batches):
            wait_start = time.perf_counter()
            loaded: _Loaded = ahead.pop(0).result()
            result.load_wait_seconds += time.perf_counter() - wait_start
            result.load_seconds += loaded.seconds
            following = index + self.config.prefetch_batches
            if following < len(batches):
                ahead.append(self._pool.submit(self._load_batch, batches[following]))
            transcripts: dict[int, Transcript] = {}
            for i, samples in enumerate(loaded.samples):
                if samples is not None and float(np.abs(samples).max(initial=0.0)) < SILENCE_PEAK:
                    transcripts[i] = Transcript(text="", token_ids=[], token_times=[], score=0.0, confidence=1.0)
                    result.audio_seconds += loaded.durations[i]
            good = [i for i, s in enumerate(loaded.samples) if s is not None and i not in transcripts]
            if good:
                done, seen, padded = self._transcribe_batch([batch.items[i] for i in good],
                                                             [loaded.samples[i] for i in good], times)
                for i, tr in zip(good, done):
                    if isinstance(tr, str):
                        loaded.errors[i] = tr
                    else:
                        transcripts[i] = tr
                result.audio_seconds += sum(loaded.durations[i] for i in good)
                result.model_input_seconds += seen
                result.padded_seconds += padded
            trim_heap()  # the batch's tensors are freed: give the memory back (pipeline.run.heap)
            for i, item in enumerate(batch.items):
                row = self._row(item, shard.shard_id, transcripts.get(i), loaded.errors[i])
                if row.duration is None:
                    row.duration = loaded.durations[i]
                rows.append(row)
        order = {(item.cut_id, item.window_index): i for i, item in enumerate(shard.items)}
        rows.sort(key=lambda r: order[(r.cut_id, getattr(r, "window_index", None))])  # manifest order
        windows = [r for r in rows if isinstance(r, WindowRow)]
        rows = [r for r in rows if not isinstance(r, WindowRow)]
        result.cuts_ok = sum(r.status == STATUS_OK for r in rows)
        result.cuts_error = len(rows) - result.cuts_ok
        result.windows_ok = sum(r.status == STATUS_OK for r in windows)
        result.windows_error = len(windows) - result.windows_ok
        result.stage_seconds = times.as_dict()
        result.wall_seconds = time.perf_counter() - started
        if windows:  # written first: a shard counts as done only once its transcripts part exists
            if task.windows_part_uri is None:
                raise ValueError(f"shard {shard.shard_id} holds windows of long cuts but no windows part was given")
            parquet.write_part(task.windows_part_uri, rows_to_table(windows, WINDOW_SCHEMA), task.fingerprint)
        parquet.write_part(task.part_uri, rows_to_table(rows), task.fingerprint, summary=result.as_dict())
        return result
