"""Reading the spans of audio objects a shard needs: each object fetched and decoded once for all
of its spans, and no more of it than they need.

A shard's items are time ranges -- *spans* -- of audio objects; the segments of one long recording
are many spans of one object, the windows of a long cut too. :meth:`RangeReader.read_spans` serves
every span of one object at once:

* **Formats that can be cut by bytes** (WAV, AIFF, FLAC): libsndfile reads the object through a
  :class:`~pipeline.io.storage.RangeFile`, which fetches only the byte ranges it touches (an HTTP
  ``Range`` request on S3, ``pread`` locally). The spans, sorted by start, are grouped into *runs*
  (spans less than a few seconds apart); each run is one seek and one sequential read, and every
  span is sliced out of the samples as they pass. So 360 segments of a one-hour FLAC are one
  sequential read of it, and a 5 s cut at 3,600 s of a 1 GiB WAV is a header read and 5 s of bytes.
* **Formats that cannot be cut by bytes** (MP3, Ogg Opus / Vorbis, M4A, ...): the object is
  streamed once to a local temporary file (never held in memory) and decoded from there run by run
  (libsndfile, seeking between runs; ``ffmpeg -ss`` where libsndfile cannot read the format). The
  last few copies are kept per process, so spans of the same object in the next shard reuse them.
  Local files are decoded in place.
* **Members of a tar archive** (lhotse Shar's ``recording.*.tar``; :meth:`RangeReader.read_members`):
  the tar is walked through a ``RangeFile`` -- headers, and the data of the members wanted, the
  data of the others skipped -- and each member is then read as a file of its own, as above.

Samples are decoded at the file's rate, reduced to the span's channel (or the mean of all) block by
block, and resampled per span: a span gives the same samples as decoding that range alone
(:func:`pipeline.io.audio.decode_audio`). Memory is the spans' own samples plus one block, whatever
the object's length. Every failure is per span: an :class:`~pipeline.io.audio.AudioDecodeError` (or
a storage error) in that span's place; the other spans are unaffected.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional, Sequence, Union

import numpy as np
import soundfile as sf

from . import storage
from .audio import (AudioDecodeError, DecodedAudio, check_channel, ffmpeg_available, ffprobe_stream, finish_audio,
                    pick_channel)
from .storage.local import local_path
from .wav import WavHeader, parse_wav_header

__all__ = ["ReadStats", "RangeReader", "Span", "SpanResult"]

#: bytes of a WAV header looked at for where its samples lie (what libsndfile read at open)
HEADER_BYTES = 64 * 1024
#: frames decoded at a time (the one block held beside the spans' samples)
BLOCK_FRAMES = 1 << 16
#: members of a tar archive up to this size are read whole as the tar is walked; larger ones by range
SMALL_MEMBER_BYTES = 32 << 20
#: headers that say libsndfile can seek in the object through byte ranges
_RANGE_FORMATS = (b"RIFF", b"RF64", b"FORM", b"fLaC")
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Span:
    """A time range of an audio object: ``start`` seconds in, ``duration`` seconds long (``None``:
    to the end), of channel ``channel`` (``None``: the mean of all channels)."""

    start: float = 0.0
    duration: Optional[float] = None
    channel: Optional[int] = None


#: what reading a span gives: its audio, or why there is none
SpanResult = Union[DecodedAudio, Exception]


@dataclass
class ReadStats:
    """Bytes fetched from storage, and the bytes the spans' audio takes in their objects (for a
    compressed object, its size in proportion to the spans' share of its duration)."""

    bytes_fetched: int = 0
    bytes_needed: float = 0.0

    def add(self, other: "ReadStats") -> None:
        self.bytes_fetched += other.bytes_fetched
        self.bytes_needed += other.bytes_needed


class _Slice:
    """One span being cut from a stream of decoded blocks."""

    def __init__(self, index: int, first: int, count: Optional[int], channel: Optional[int]) -> None:
        self.index = index
        self.first = first
        self.end = None if count is None else first + count
        self.channel = channel
        self.pieces: list[np.ndarray] = []
        self.got = 0


class _Decoder:
    """Decoded audio of one object, read run by run (see :func:`_cut`)."""

    rate: int
    channels: int
    frames: Optional[int]  # None: unknown until the end is reached
    gap_frames: int  # spans nearer than this are read in one run
    name = "soundfile"

    def read_run(self, first: int, last: Optional[int]) -> Iterator[np.ndarray]:
        raise NotImplementedError


class _SoundFileDecoder(_Decoder):
    """libsndfile over a file object or a local path, seeking between runs. Over a ranged object the
    read-ahead stops where the run ends: exactly for PCM WAV (its header says where each frame
    lies), in proportion to the file for compressed formats."""

    def __init__(self, f: sf.SoundFile, gap_seconds: float, ranged: Optional[storage.RangeFile] = None,
                 wav: Optional[WavHeader] = None) -> None:
        self.f = f
        self.rate, self.channels, self.frames = int(f.samplerate), int(f.channels), int(f.frames)
        self.gap_frames = int(gap_seconds * self.rate)
        self.ranged = ranged
        self.wav = wav if wav is not None and wav.plain_samples and wav.channels == self.channels else None

    def read_run(self, first: int, last: Optional[int]) -> Iterator[np.ndarray]:
        if self.ranged is not None and self.frames:
            if last is None:
                self.ranged.prefetch_limit = None
            elif self.wav is not None:
                self.ranged.prefetch_limit = self.wav.data_offset + last * self.wav.block_align
            else:
                self.ranged.prefetch_limit = _byte_estimate(self.ranged.size, first, last, self.frames)
        pos = first
        if self.f.tell() != first:
            self.f.seek(first)
        while last is None or pos < last:
            want = BLOCK_FRAMES if last is None else min(BLOCK_FRAMES, last - pos)
            block = self.f.read(frames=want, dtype="float32", always_2d=True)
            if self.ranged is not None and self.ranged.error is not None:
                raise self.ranged.error
            if block.shape[0] == 0:
                return
            pos += block.shape[0]
            yield block


def _byte_estimate(size: int, first: int, last: int, frames: int) -> int:
    """Where frame ``last`` of ``frames`` lies in ``size`` bytes, in proportion, with a margin of 2 %
    of the run ``[first, last)`` and a minimum read-ahead (the header, uneven compression)."""
    start, end = size * first / frames, size * min(1.0, last / frames)
    return int(end + 0.02 * (end - start)) + 2 * storage.RangeFile.MIN_READAHEAD


class _FfmpegDecoder(_Decoder):
    """``ffmpeg`` decoding a local file to raw float32 on a pipe, one process per run, started at
    the run with ``-ss``: for formats libsndfile cannot read (M4A / AAC, WebM, ...)."""

    name = "ffmpeg"

    def __init__(self, path: str, source: str) -> None:
        self.path, self.source = path, source
        self.rate, self.channels = ffprobe_stream(path, source)
        self.frames = None
        self.gap_frames = 10 * self.rate  # a process per run: decoding through short gaps is cheaper

    def read_run(self, first: int, last: Optional[int]) -> Iterator[np.ndarray]:
        cmd = ["ffmpeg", "-nostdin", "-v", "error"]
        if first > 0:
            cmd += ["-ss", f"{first / self.rate:.6f}"]
        cmd += ["-i", self.path]
        if last is not None:
            cmd += ["-t", f"{(last - first) / self.rate:.6f}"]
        cmd += ["-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
        frame_bytes = 4 * self.channels
        with tempfile.TemporaryFile() as errors, \
                subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors) as proc:
            assert proc.stdout is not None
            try:
                pending = b""
                while True:
                    chunk = proc.stdout.read(BLOCK_FRAMES * frame_bytes)
                    if not chunk:
                        break
                    data = pending + chunk
                    whole = len(data) - len(data) % frame_bytes
                    pending = data[whole:]
                    if whole:
                        yield np.frombuffer(data[:whole], dtype="<f4").reshape(-1, self.channels)
            finally:
                proc.stdout.close()
                status = proc.wait()
            if status != 0:
                errors.seek(0)
                lines = errors.read().decode("utf-8", "replace").strip().splitlines()
                detail = lines[-1] if lines else f"exit status {status}"
                raise AudioDecodeError(self.source, f"ffmpeg could not decode the audio: {detail}")


def _cut(decoder: _Decoder, spans: Sequence[Span], source: str, target_sr: int,
         max_seconds: Optional[float]) -> list[Optional[SpanResult]]:
    """Every span's audio from ``decoder``: spans sorted by start and grouped into runs (less than
    ``decoder.gap_frames`` apart), each run read once, its spans sliced from the blocks as they
    pass and finished (channel, resampling) as soon as they are complete."""
    rate, channels, frames = decoder.rate, decoder.channels, decoder.frames
    results: list[Optional[SpanResult]] = [None] * len(spans)
    limit = None if max_seconds is None else int(max_seconds * rate)
    todo: list[_Slice] = []
    for i, span in enumerate(spans):
        try:
            check_channel(span.channel, channels, source)
        except (AudioDecodeError, TypeError) as exc:
            results[i] = exc
            continue
        first = int(round(span.start * rate))
        count = None if span.duration is None else max(1, int(round(span.duration * rate)))
        if frames is not None and first >= frames:
            results[i] = AudioDecodeError(source, f"range beyond end of audio (start {span.start:.3f} s, "
                                                  f"audio is {frames / rate:.3f} s)")
            continue
        todo.append(_Slice(i, first, count, span.channel))
    todo.sort(key=lambda s: (s.first, s.index))

    def finish(s: _Slice) -> None:
        if not s.pieces:
            start = s.first / rate
            results[s.index] = AudioDecodeError(source, f"range beyond end of audio (start {start:.3f} s)" if start > 0
                                                else "zero samples (the file holds no audio)")
            return
        mono = s.pieces[0] if len(s.pieces) == 1 else np.concatenate(s.pieces)
        s.pieces = []
        try:
            results[s.index] = finish_audio(mono, rate, channels, target_sr, source, decoder.name)
        except AudioDecodeError as exc:
            results[s.index] = exc

    runs: list[list[_Slice]] = []
    run_end: Optional[int] = -1
    for s in todo:
        if runs and (run_end is None or s.first <= run_end + decoder.gap_frames):
            runs[-1].append(s)
            run_end = None if run_end is None or s.end is None else max(run_end, s.end)
        else:
            runs.append([s])
            run_end = s.end
    for run in runs:
        first = run[0].first
        last = None if any(s.end is None for s in run) else max(s.end for s in run)  # type: ignore[type-var]
        live = list(run)
        pos = first
        try:
            for block in decoder.read_run(first, last):
                end = pos + block.shape[0]
                reduced: dict[Optional[int], np.ndarray] = {}
                for s in list(live):
                    if s.first >= end:
                        break
                    a, b = max(s.first, pos) - pos, (block.shape[0] if s.end is None else min(s.end, end) - pos)
                    if b > a:
                        if s.channel not in reduced:
                            reduced[s.channel] = pick_channel(block, s.channel)
                        s.pieces.append(np.array(reduced[s.channel][a:b]))
                        s.got += b - a
                    if s.end is not None and end >= s.end:
                        live.remove(s)
                        finish(s)
                    elif limit is not None and s.got > limit:
                        live.remove(s)
                        s.pieces = []
                        results[s.index] = AudioDecodeError(source, f"the audio runs on past {limit / rate / 3600:g} h "
                                                                    "(--max-recording-hours)")
                if not live:
                    break
                pos = end
        except (AudioDecodeError, storage.StorageError) as exc:
            for s in live:
                s.pieces = []
                results[s.index] = exc
            continue
        except Exception as exc:  # noqa: BLE001 -- libsndfile on a corrupt payload behind a valid header
            for s in live:
                s.pieces = []
                results[s.index] = AudioDecodeError(source, f"corrupt audio data ({type(exc).__name__}: {exc})")
            continue
        for s in live:  # the audio ended first: what there is (the caller checks it against the manifest)
            finish(s)
    return results


def _needed(spans: Sequence[Span], results: Sequence[Optional[SpanResult]], size: int,
            seconds: Optional[float]) -> float:
    """Bytes of an object of ``size`` bytes and ``seconds`` of audio that its spans take."""
    if not seconds:
        return float(size)
    total = 0.0
    for span, result in zip(spans, results):
        if isinstance(result, DecodedAudio):
            total += min(1.0, result.duration_s / seconds)
        elif span.duration is not None:
            total += min(1.0, span.duration / seconds)
    return min(total, float(len(spans))) * size


class RangeReader:
    """Reads spans of audio objects (see the module docstring). One per process; thread-safe.

    ``keep_copies`` local copies of objects that cannot be read by range are kept for the next
    spans of the same object (in a private temporary directory, removed on :meth:`close`).
    :attr:`bytes_fetched` counts every byte this reader fetched."""

    #: spans of range-read objects nearer than this are read in one run (a seek costs a request)
    GAP_SECONDS = 5.0

    def __init__(self, keep_copies: int = 2, tmp_dir: Optional[str] = None) -> None:
        self.keep_copies = max(1, keep_copies)
        self._dir = tempfile.mkdtemp(prefix="zipscribe-ranges-", dir=tmp_dir)
        self._copies: OrderedDict[tuple[str, int, Optional[int]], list] = OrderedDict()  # key -> [path, users]
        self._lock = threading.Lock()
        self._made = 0
        self.bytes_fetched = 0

    # -- public ----------------------------------------------------------------------
    def read(self, source: str, start: float, duration: Optional[float], *, target_sr: int,
             channel: Optional[int]) -> DecodedAudio:
        """One span of ``source``; raises its error."""
        (result,), _ = self.read_spans(source, [Span(start, duration, channel)], target_sr=target_sr)
        if isinstance(result, Exception):
            raise result
        return result

    def read_spans(self, source: str, spans: Sequence[Span], *, target_sr: int,
                   max_seconds: Optional[float] = None) -> tuple[list[SpanResult], ReadStats]:
        """Every span of the object at ``source`` (local or ``s3://``), in the order given, each
        its audio or its error; and what reading them cost. ``max_seconds``: a span without a
        duration that runs longer is an error (the audio is not decoded further)."""
        stats = ReadStats()
        try:
            ranged = storage.open_range(source)
        except Exception as exc:  # noqa: BLE001 -- missing, unreadable: every span fails alike
            return [exc] * len(spans), stats
        with ranged:
            results = self._spans_of(ranged, source, spans, target_sr, max_seconds, stats, in_place=True)
            stats.bytes_fetched += ranged.bytes_fetched
        self._count(stats)
        return results, stats

    def read_members(self, tar_uri: str, wanted: dict[str, Sequence[Span]], *, target_sr: int,
                     max_seconds: Optional[float] = None) -> tuple[dict[str, list[SpanResult]], ReadStats]:
        """The spans of members of a tar archive (lhotse Shar: the audio of cut ``key`` is the member
        ``<key>.<format>``), by key; a key the archive has no audio for gets an error per span."""
        stats = ReadStats()
        out: dict[str, list[SpanResult]] = {}
        try:
            ranged = storage.open_range(tar_uri)
        except Exception as exc:  # noqa: BLE001
            return {key: [exc] * len(spans) for key, spans in wanted.items()}, stats
        large: list[tuple[str, int, int]] = []
        with ranged:
            try:
                with tarfile.open(fileobj=ranged, mode="r:") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        key, _, ext = member.name.rpartition(".")
                        if key not in wanted or key in out or ext in ("json", "nometa") or not member.isfile():
                            continue
                        if ext == "nodata":
                            out[key] = [AudioDecodeError(f"{tar_uri}:{member.name}", "the Shar archive holds no "
                                                         "recording for this cut (.nodata)")] * len(wanted[key])
                        elif member.size <= SMALL_MEMBER_BYTES:
                            data = tar.extractfile(member).read()  # type: ignore[union-attr]
                            name = f"{tar_uri}:{member.name}"
                            out[key] = self._spans_of(io.BytesIO(data), name, wanted[key], target_sr, max_seconds,
                                                      stats, size=len(data))
                        else:
                            large.append((key, member.offset_data, member.size))
            except tarfile.TarError as exc:
                error = AudioDecodeError(tar_uri, f"not a readable tar archive ({exc})")
                for key, spans in wanted.items():
                    out.setdefault(key, [error] * len(spans))
            stats.bytes_fetched += ranged.bytes_fetched
        for key, offset, size in large:
            name = f"{tar_uri}:{key}"
            with storage.open_range(tar_uri, base=offset, length=size) as member_file:
                out[key] = self._spans_of(member_file, name, wanted[key], target_sr, max_seconds, stats)
                stats.bytes_fetched += member_file.bytes_fetched
        for key, spans in wanted.items():
            out.setdefault(key, [AudioDecodeError(tar_uri, f"the archive has no audio member for cut {key!r}")]
                           * len(spans))
        self._count(stats)
        return out, stats

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
        self._copies.clear()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- internals ---------------------------------------------------------------------
    def _count(self, stats: ReadStats) -> None:
        with self._lock:
            self.bytes_fetched += stats.bytes_fetched

    def _spans_of(self, f: Union[storage.RangeFile, BinaryIO], source: str, spans: Sequence[Span], target_sr: int,
                  max_seconds: Optional[float], stats: ReadStats, *, size: Optional[int] = None,
                  in_place: bool = False) -> list[SpanResult]:
        """The spans of one audio file ``f`` (a ranged object, or a tar member's bytes)."""
        size = f.size if isinstance(f, storage.RangeFile) else size or 0
        if size == 0:
            return [AudioDecodeError(source, "empty file (0 bytes)")] * len(spans)
        try:
            head = f.read(HEADER_BYTES)  # on S3 the first range of a RangeFile: fetched once, read again by libsndfile
            f.seek(0)
            if head[:4] in _RANGE_FORMATS:
                if isinstance(f, storage.RangeFile):
                    f.quiet_errors = True  # libsndfile calls back into it: errors are raised by the decoder
                results = self._decode(f, source, spans, target_sr, max_seconds, stats, size, self.GAP_SECONDS,
                                       parse_wav_header(head))
                if results is not None:
                    return results
            # not to be cut by bytes (or libsndfile refused it): a local file to decode from
            if in_place and not storage.is_s3_uri(source):
                stats.bytes_fetched += size  # decoded in place: counted as read whole
                return self._decode_local(local_path(source), source, spans, target_sr, max_seconds, stats, size)
            key = (source, 0, size)
            path = self._acquire_copy(key, f)
            try:
                return self._decode_local(path, source, spans, target_sr, max_seconds, stats, size)
            finally:
                self._release_copy(key)
        except storage.StorageError as exc:
            return [exc] * len(spans)

    def _decode(self, f: Union[BinaryIO, str], source: str, spans: Sequence[Span], target_sr: int,
                max_seconds: Optional[float], stats: ReadStats, size: int, gap_seconds: float,
                wav: Optional[WavHeader] = None) -> Optional[list[SpanResult]]:
        """The spans by libsndfile; ``None`` when it cannot open ``f``."""
        try:
            sound = sf.SoundFile(f)
        except Exception:  # noqa: BLE001 -- LibsndfileError / RuntimeError: not a format it reads
            if isinstance(f, storage.RangeFile) and f.error is not None:
                raise f.error
            return None
        with sound:
            if sound.samplerate <= 0 or sound.channels <= 0:
                return None
            if sound.frames <= 0:
                if ffmpeg_available() and isinstance(f, str):
                    return None  # libsndfile may under-report some streams: let ffmpeg decide
                return [AudioDecodeError(source, "zero samples (the file holds no audio)")] * len(spans)
            decoder = _SoundFileDecoder(sound, gap_seconds, f if isinstance(f, storage.RangeFile) else None, wav)
            results = _cut(decoder, spans, source, target_sr, max_seconds)
        stats.bytes_needed += _needed(spans, results, size, decoder.frames / decoder.rate)
        return results  # type: ignore[return-value]

    def _decode_local(self, path: str, source: str, spans: Sequence[Span], target_sr: int,
                      max_seconds: Optional[float], stats: ReadStats, size: int) -> list[SpanResult]:
        results = self._decode(path, source, spans, target_sr, max_seconds, stats, size, gap_seconds=1.0)
        if results is not None:
            return results
        if not ffmpeg_available():
            return [AudioDecodeError(source, "not a recognised audio format (libsndfile can't read it and ffmpeg "
                                             "is not installed)")] * len(spans)
        try:
            decoder = _FfmpegDecoder(path, source)
        except AudioDecodeError as exc:
            return [exc] * len(spans)
        cut = _cut(decoder, spans, source, target_sr, max_seconds)
        stats.bytes_needed += _needed(spans, cut, size, None)
        return cut  # type: ignore[return-value]

    def _acquire_copy(self, key: tuple[str, int, Optional[int]], f: Union[storage.RangeFile, BinaryIO]) -> str:
        """A local copy of the object ``f`` reads (made now, or kept from before), held until
        :meth:`_release_copy`; at most :attr:`keep_copies` copies no one holds are kept."""
        with self._lock:
            entry = self._copies.get(key)
            if entry is not None:
                entry[1] += 1
                self._copies.move_to_end(key)
                return entry[0]
            self._made += 1
            path = os.path.join(self._dir, f"copy-{self._made}")
        f.seek(0)
        with open(path, "wb") as out:
            shutil.copyfileobj(f, out, length=_COPY_CHUNK)
        if isinstance(f, storage.RangeFile) and f.error is not None:
            raise f.error
        with self._lock:
            self._copies[key] = [path, 1]
        return path

    def _release_copy(self, key: tuple[str, int, Optional[int]]) -> None:
        with self._lock:
            self._copies[key][1] -= 1
            idle = [k for k, (_, users) in self._copies.items() if users == 0]
            for old in idle[: max(0, len(idle) - self.keep_copies)]:
                path, _ = self._copies.pop(old)
                try:
                    os.unlink(path)
                except OSError:
                    pass
