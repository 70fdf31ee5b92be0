"""The audio of a shard: every item fetched, decoded, resampled to 16 kHz and reduced to its
channel, or the reason it could not be (the audio stage's work, on CPUs).

:func:`load_shard_audio` turns a shard's items into a :class:`ShardAudio`; unusable audio
(missing, empty, corrupt, truncated, out of range) becomes that item's error message, never
an exception, so it ends as an error row and the shard goes on. Windows of long recordings
are read by range (:class:`pipeline.io.ranges.RangeReader`); other items are fetched whole.

:meth:`ShardAudio.pack` / :meth:`ShardAudio.unpack` turn it into a few flat arrays (all
samples in one float32 array plus offsets) for the object store between the audio stage and
the model stage.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from pipeline.inputs.items import WorkItem
from pipeline.io import storage
from pipeline.io.audio import AudioDecodeError, decode_audio
from pipeline.io.ranges import RangeReader

__all__ = ["MIN_SECONDS", "SAMPLE_RATE", "ShardAudio", "channel_of", "load_item", "load_shard_audio"]

SAMPLE_RATE = 16000
MIN_SECONDS = 0.25  # shorter audio is zero-padded to this (the encoder needs >= 9 fbank frames)
TRUNCATION_TOLERANCE_S = 0.05


def channel_of(item: WorkItem) -> int:
    """The channel transcribed for a cut: its own, else the first."""
    return 0 if item.channel is None else int(item.channel)


def load_item(item: WorkItem, ranges: RangeReader) -> tuple[np.ndarray, float]:
    """Mono 16 kHz samples of an item (zero-padded to :data:`MIN_SECONDS`) and the seconds of
    audio it really holds. Raises :class:`AudioDecodeError` (or a storage error) when unusable."""
    if item.is_window and item.duration is not None:
        audio = ranges.read(item.source, item.start or 0.0, item.duration, target_sr=SAMPLE_RATE,
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


@dataclass
class ShardAudio:
    """Per item of a shard, in item order: its samples (``None`` when unusable), the error
    message, and the seconds of audio decoded; plus the wall seconds the loading took."""

    samples: list[Optional[np.ndarray]]
    errors: list[Optional[str]]
    durations: list[Optional[float]]
    load_seconds: float = 0.0

    def pack(self) -> dict[str, Any]:
        """Flat arrays for a Ray Data row: ``samples`` (all items' float32 samples end to end),
        ``offsets`` (int64, one more than items; an unusable item is empty), and JSON texts."""
        sizes = [0 if s is None else s.size for s in self.samples]
        offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        flat = np.concatenate([s for s in self.samples if s is not None]) if any(sizes) else np.zeros(0, np.float32)
        return {"samples": flat.astype(np.float32, copy=False), "offsets": offsets,
                "audio_errors": json.dumps(self.errors), "audio_durations": json.dumps(self.durations),
                "load_seconds": float(self.load_seconds)}

    @classmethod
    def unpack(cls, row: dict[str, Any]) -> "ShardAudio":
        errors = json.loads(row["audio_errors"])
        offsets = np.asarray(row["offsets"])
        flat = np.asarray(row["samples"], dtype=np.float32)
        # copies: the row's arrays are read-only views of the object store, and torch wants to own its input
        samples = [None if e is not None else flat[offsets[i]:offsets[i + 1]].copy() for i, e in enumerate(errors)]
        return cls(samples, errors, json.loads(row["audio_durations"]), float(row["load_seconds"]))


def load_shard_audio(items: Sequence[WorkItem], ranges: RangeReader, threads: int = 4) -> ShardAudio:
    """The audio of every item (see the module docstring); ``threads`` fetch and decode at once
    (object storage latency, not CPU, bounds a single fetch)."""
    started = time.perf_counter()

    def one(item: WorkItem) -> tuple[Optional[np.ndarray], Optional[float], Optional[str]]:
        try:
            samples, seconds = load_item(item, ranges)
            return samples, seconds, None
        except AudioDecodeError as exc:
            return None, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - storage errors, missing objects: the cut fails, the shard goes on
            return None, None, f"{type(exc).__name__}: {exc}"

    if threads > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="audio") as pool:
            loaded = list(pool.map(one, items))
    else:
        loaded = [one(item) for item in items]
    return ShardAudio(samples=[s for s, _, _ in loaded], errors=[e for _, _, e in loaded],
                      durations=[d for _, d, _ in loaded], load_seconds=time.perf_counter() - started)
