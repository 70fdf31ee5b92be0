"""The audio of a shard: every item fetched, decoded, resampled to 16 kHz and reduced to its
channel, or the reason it could not be (the audio stage's work, on CPUs).

:func:`load_shard_audio` turns a shard's items into a :class:`ShardAudio`. Items are grouped by the
object that holds their audio, and each object is read once for all of its items
(:meth:`pipeline.io.ranges.RangeReader.read_spans`; lhotse Shar tars by member,
:meth:`~pipeline.io.ranges.RangeReader.read_members`): segments of a long recording cost one read
of the part of it they cover, not one whole download each. Unusable audio (missing, empty, corrupt,
truncated, out of range) and items the plan already found wrong become that item's error message,
never an exception, so they end as error rows and the shard goes on. What reading cost (bytes
fetched against the bytes the items' audio takes, CPU seconds) goes with the audio to the summary.

:meth:`ShardAudio.pack` / :meth:`ShardAudio.unpack` turn it into a few flat arrays (all
samples in one float32 array plus offsets) for the object store between the audio stage and
the model stage.
"""

from __future__ import annotations

import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.inputs.items import WorkItem
from pipeline.io.audio import AudioDecodeError
from pipeline.io.ranges import RangeReader, ReadStats, Span, SpanResult

__all__ = ["MIN_SECONDS", "SAMPLE_RATE", "ShardAudio", "channel_of", "load_shard_audio"]

SAMPLE_RATE = 16000
MIN_SECONDS = 0.25  # shorter audio is zero-padded to this (the encoder needs >= 9 fbank frames)
TRUNCATION_TOLERANCE_S = 0.05


def channel_of(item: WorkItem) -> int:
    """The channel transcribed for a cut: its own, else the first."""
    return 0 if item.channel is None else int(item.channel)


def _span(item: WorkItem) -> Span:
    return Span(item.start or 0.0, item.duration, channel_of(item))


def _usable(item: WorkItem, result: SpanResult) -> tuple[np.ndarray, float]:
    """Mono 16 kHz samples of an item (zero-padded to :data:`MIN_SECONDS`) and the seconds of
    audio it really holds; raises the read's error, or :class:`AudioDecodeError` when the audio
    is shorter than the manifest says."""
    if isinstance(result, Exception):
        raise result
    samples = result.samples
    seconds = samples.size / SAMPLE_RATE
    if item.duration is not None and seconds < item.duration - max(TRUNCATION_TOLERANCE_S, 0.01 * item.duration):
        raise AudioDecodeError(item.source, f"truncated audio: the manifest says {item.duration:.3f} s, "
                                            f"the file holds {seconds:.3f} s from {item.start or 0.0:.3f} s")
    if samples.size < MIN_SECONDS * SAMPLE_RATE:
        samples = np.pad(samples, (0, int(MIN_SECONDS * SAMPLE_RATE) - samples.size))
    return samples, seconds


def _cpu_seconds() -> float:
    """CPU seconds of this process and of the children it waited for (ffmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class ShardAudio:
    """Per item of a shard, in item order: its samples (``None`` when unusable), the error
    message, and the seconds of audio decoded; plus the wall seconds the loading took."""

    samples: list[Optional[np.ndarray]]
    errors: list[Optional[str]]
    durations: list[Optional[float]]
    load_seconds: float = 0.0
    bytes_fetched: int = 0  # bytes read from storage for the shard
    bytes_needed: float = 0.0  # bytes the items' audio takes in its objects (see pipeline.io.ranges.ReadStats)
    cpu_seconds: float = 0.0  # CPU the loading took (this process and its ffmpeg children)

    def pack(self) -> dict[str, Any]:
        """Flat arrays for a Ray Data row: ``samples`` (all items' float32 samples end to end),
        ``offsets`` (int64, one more than items; an unusable item is empty), and JSON texts."""
        sizes = [0 if s is None else s.size for s in self.samples]
        offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        flat = np.concatenate([s for s in self.samples if s is not None]) if any(sizes) else np.zeros(0, np.float32)
        return {"samples": flat.astype(np.float32, copy=False), "offsets": offsets,
                "audio_errors": json.dumps(self.errors), "audio_durations": json.dumps(self.durations),
                "load_seconds": float(self.load_seconds), "bytes_fetched": int(self.bytes_fetched),
                "bytes_needed": float(self.bytes_needed), "load_cpu_seconds": float(self.cpu_seconds)}

    @classmethod
    def unpack(cls, row: dict[str, Any]) -> "ShardAudio":
        errors = json.loads(row["audio_errors"])
        offsets = np.asarray(row["offsets"])
        flat = np.asarray(row["samples"], dtype=np.float32)
        # copies: the row's arrays are read-only views of the object store, and torch wants to own its input
        samples = [None if e is not None else flat[offsets[i]:offsets[i + 1]].copy() for i, e in enumerate(errors)]
        return cls(samples, errors, json.loads(row["audio_durations"]), float(row["load_seconds"]),
                   int(row["bytes_fetched"]), float(row["bytes_needed"]), float(row["load_cpu_seconds"]))


def load_shard_audio(items: Sequence[WorkItem], ranges: RangeReader, threads: int = 4,
                     max_seconds: Optional[float] = None) -> ShardAudio:
    """The audio of every item (see the module docstring): one read per object the items' audio
    is in, ``threads`` objects at once (object storage latency, not CPU, bounds a single fetch);
    ``max_seconds`` bounds what an item of unknown duration may decode."""
    started, cpu = time.perf_counter(), _cpu_seconds()
    samples: list[Optional[np.ndarray]] = [None] * len(items)
    errors: list[Optional[str]] = [None] * len(items)
    durations: list[Optional[float]] = [None] * len(items)
    groups: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        if item.error is not None:
            errors[k] = item.error
        else:
            groups.setdefault(item.source, []).append(k)

    def load(source: str, index: list[int]) -> ReadStats:
        try:
            if items[index[0]].member is not None:  # members of a tar archive, by key
                wanted: dict[str, list[Span]] = {}
                for k in index:
                    wanted.setdefault(items[k].member, []).append(_span(items[k]))  # type: ignore[arg-type]
                by_member, stats = ranges.read_members(source, wanted, target_sr=SAMPLE_RATE, max_seconds=max_seconds)
                results = [by_member[items[k].member].pop(0) for k in index]  # type: ignore[index]
            else:
                results, stats = ranges.read_spans(source, [_span(items[k]) for k in index], target_sr=SAMPLE_RATE,
                                                   max_seconds=max_seconds)
        except Exception as exc:  # noqa: BLE001 - whatever fails reading this object fails its items only
            results, stats = [exc] * len(index), ReadStats()
        for k, result in zip(index, results):
            try:
                samples[k], durations[k] = _usable(items[k], result)
            except AudioDecodeError as exc:
                errors[k] = str(exc)
            except Exception as exc:  # noqa: BLE001 - storage errors, missing objects: the cut fails, the shard goes on
                errors[k] = f"{type(exc).__name__}: {exc}"
        return stats

    total = ReadStats()
    work = sorted(groups.items(), key=lambda g: -len(g[1]))  # the largest objects first: they take longest
    if threads > 1 and len(work) > 1:
        with ThreadPoolExecutor(max_workers=min(threads, len(work)), thread_name_prefix="audio") as pool:
            for stats in pool.map(lambda g: load(*g), work):
                total.add(stats)
    else:
        for group in work:
            total.add(load(*group))
    return ShardAudio(samples=samples, errors=errors, durations=durations, load_seconds=time.perf_counter() - started,
                      bytes_fetched=total.bytes_fetched, bytes_needed=total.bytes_needed,
                      cpu_seconds=_cpu_seconds() - cpu)
