"""Decode audio bytes into mono float32 samples at 16 kHz (what the features need).

Decoding order:

1. ``soundfile`` (libsndfile: WAV, FLAC, MP3, Ogg Vorbis/Opus, AIFF, ...) straight from memory,
   seeking to ``start`` where the format allows;
2. when libsndfile does not recognise the bytes (M4A/AAC, some MP3s, WebM, ...), the ``ffmpeg``
   CLI. The bytes are written to a temporary file rather than piped, because MP4/M4A files whose
   index (``moov`` atom) sits at the end cannot be decoded from a non-seekable pipe.
   ``ffprobe`` gives the stream's rate and channel count, ``ffmpeg`` emits raw ``f32le``
   at the original rate with all channels (so mixing and resampling are the same code path
   as for soundfile).

Channels: ``channel=None`` averages all channels (a plain mean, no gain change for identical
channels); ``channel=k`` picks channel ``k`` (0-based). Resampling uses a polyphase FIR
(``scipy.signal.resample_poly``, Kaiser window), which preserves the duration to within one
output sample.

Every failure is an :class:`AudioDecodeError` carrying the source and a short reason, never a
raw libsndfile / subprocess traceback.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import soundfile as sf

__all__ = ["AudioDecodeError", "DecodedAudio", "check_channel", "decode_audio", "ffmpeg_available", "ffprobe_stream", "finish_audio", "pick_channel"]

TARGET_SAMPLE_RATE = 16000
_FFMPEG_TIMEOUT_S = 600


class AudioDecodeError(Exception):
    """Audio could not be decoded. ``source`` names the input, ``reason`` says why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(source, reason)
        self.source = source
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.source or '<bytes>'}: {self.reason}"


@dataclass
class DecodedAudio:
    """Decoded audio.

    Attributes:
        samples: mono float32 1-D array in [-1, 1] (for integer PCM inputs) at ``sample_rate``.
        sample_rate: rate of ``samples`` (the requested target rate).
        original_sample_rate: rate stored in the file (libsndfile reports 48000 or the
            encoder's input rate for Opus, as the file header says).
        num_channels: channel count of the file (before mixing / picking).
        duration_s: ``len(samples) / sample_rate``.
        decoder: ``"soundfile"`` or ``"ffmpeg"``.
    """

    samples: np.ndarray
    sample_rate: int
    original_sample_rate: int
    num_channels: int
    duration_s: float
    decoder: str = "soundfile"


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


def _check_args(start: float, duration: float | None, target_sr: int) -> None:
    if not (start >= 0.0 and math.isfinite(start)):
        raise ValueError(f"start must be a finite number >= 0, got {start}")
    if duration is not None and not (duration > 0.0 and math.isfinite(duration)):
        raise ValueError(f"duration must be a finite number > 0 or None, got {duration}")
    if target_sr <= 0:
        raise ValueError(f"target_sr must be positive, got {target_sr}")


def _decode_soundfile(
    data: bytes | str, source: str, start: float, duration: float | None
) -> tuple[np.ndarray, int, int] | None:
    """(frames x channels float32, rate, channels), or None to hand over to ffmpeg (libsndfile
    cannot open the bytes / the local file, or reports no frames)."""
    try:
        f = sf.SoundFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
    except Exception:  # noqa: BLE001 -- LibsndfileError / TypeError / RuntimeError: not ours
        return None
    with f:
        rate, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
        if rate <= 0 or channels <= 0:
            return None
        if frames <= 0:
            if ffmpeg_available():
                return None  # libsndfile may under-report some streams: let ffmpeg decide
            raise AudioDecodeError(source, "zero samples (the file holds no audio)")
        first = int(round(start * rate))
        if first >= frames:
            raise AudioDecodeError(
                source, f"range beyond end of audio (start {start:.3f} s, audio is {frames / rate:.3f} s)"
            )
        count = -1 if duration is None else max(1, int(round(duration * rate)))
        try:
            if first:
                f.seek(first)
            block = f.read(frames=count, dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001 -- corrupt payload behind a valid header
            raise AudioDecodeError(source, f"corrupt audio data ({type(exc).__name__}: {exc})") from None
    return block, rate, channels


def ffmpeg_available() -> bool:
    """Both ``ffmpeg`` and ``ffprobe`` are on the PATH."""
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def ffprobe_stream(path: str, source: str) -> tuple[int, int]:
    """(sample rate, channels) of the first audio stream of a local file, by ``ffprobe``."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         "stream=sample_rate,channels", "-of", "json", path],
        capture_output=True, timeout=_FFMPEG_TIMEOUT_S, check=False,
    )
    try:
        stream = json.loads(probe.stdout or b"{}").get("streams", [])[0]
        rate, channels = int(stream["sample_rate"]), int(stream["channels"])
    except (ValueError, IndexError, KeyError, TypeError):
        rate = channels = 0
    if probe.returncode != 0 or rate <= 0 or channels <= 0:
        raise AudioDecodeError(source, "not a recognised audio format")
    return rate, channels


def _decode_ffmpeg(
    data: bytes | str, source: str, start: float, duration: float | None
) -> tuple[np.ndarray, int, int]:
    if not ffmpeg_available():
        raise AudioDecodeError(
            source, "not a recognised audio format (libsndfile can't read it and ffmpeg is not installed)"
        )
    with tempfile.TemporaryDirectory(prefix="zipscribe-audio-") as tmp:
        if isinstance(data, (bytes, bytearray)):
            path = os.path.join(tmp, "input")
            with open(path, "wb") as f:
                f.write(data)
        else:
            path = data  # a local file: ffmpeg seeks in it
        rate, channels = ffprobe_stream(path, source)
        cmd = ["ffmpeg", "-nostdin", "-v", "error"]
        if start > 0:
            cmd += ["-ss", f"{start:.6f}"]
        cmd += ["-i", path]
        if duration is not None:
            cmd += ["-t", f"{duration:.6f}"]
        cmd += ["-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
        run = subprocess.run(cmd, capture_output=True, timeout=_FFMPEG_TIMEOUT_S, check=False)
    if run.returncode != 0:
        message = run.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = message[-1] if message else f"exit status {run.returncode}"
        raise AudioDecodeError(source, f"ffmpeg could not decode the audio: {detail}")
    samples = np.frombuffer(run.stdout, dtype="<f4")
    samples = samples[: len(samples) - len(samples) % channels]
    if samples.size == 0:
        if start > 0:
            raise AudioDecodeError(source, f"range beyond end of audio (start {start:.3f} s)")
        raise AudioDecodeError(source, "zero samples (the file holds no audio)")
    return samples.reshape(-1, channels).astype(np.float32, copy=False), rate, channels


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples
    from scipy.signal import resample_poly

    ratio = Fraction(target, rate)
    out = resample_poly(samples, ratio.numerator, ratio.denominator)
    return np.asarray(out, dtype=np.float32)


def decode_audio(
    data: bytes | str,
    *,
    source: str = "",
    target_sr: int = TARGET_SAMPLE_RATE,
    channel: int | None = None,
    start: float = 0.0,
    duration: float | None = None,
) -> DecodedAudio:
    """Decode ``data`` (a whole encoded audio file) to mono float32 at ``target_sr``.

    Args:
        data: the file's bytes, or the path of a local file (``str``): then only the
            selected range is read where the format can seek (WAV, FLAC, Ogg: libsndfile;
            others: ffmpeg ``-ss``), so long files are never decoded whole.
        source: a name for error messages (URI or path).
        target_sr: output sample rate (16 kHz for the model's features).
        channel: ``None`` averages all channels; an int picks that channel (0-based).
        start: seconds into the file where the selection begins.
        duration: seconds to keep from ``start`` (``None``: to the end). A range that runs past
            the end of the audio is cut at the end; a ``start`` at/after the end is an error.

    Raises:
        AudioDecodeError: empty input, unrecognised or corrupt format, zero samples, channel
            out of range, range beyond the end, NaN/Inf samples.
        ValueError: invalid ``start`` / ``duration`` / ``target_sr`` arguments.
    """
    _check_args(start, duration, target_sr)
    if isinstance(data, str):
        try:
            empty = os.path.getsize(data) == 0
        except OSError as exc:
            raise AudioDecodeError(source or data, f"cannot read the local copy: {exc}") from None
        if empty:
            raise AudioDecodeError(source or data, "empty file (0 bytes)")
    elif not data:
        raise AudioDecodeError(source, "empty file (0 bytes)")
    decoded = _decode_soundfile(data, source, start, duration)
    decoder = "soundfile"
    if decoded is None:
        decoded = _decode_ffmpeg(data, source, start, duration)
        decoder = "ffmpeg"
    block, rate, channels = decoded
    if block.shape[0] == 0:
        raise AudioDecodeError(source, "zero samples (nothing decoded in the requested range)")
    check_channel(channel, channels, source)
    return finish_audio(pick_channel(block, channel), rate, channels, target_sr, source, decoder)


def check_channel(channel: int | None, channels: int, source: str) -> None:
    """``channel`` is ``None`` (mix) or the index of one of ``channels`` channels, else an error."""
    if channel is None:
        return
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)):
        raise TypeError(f"channel must be an int or None, got {channel!r}")
    if not 0 <= channel < channels:
        plural = "channel" if channels == 1 else "channels"
        raise AudioDecodeError(source, f"channel {channel} requested but file has {channels} {plural}")


def pick_channel(block: np.ndarray, channel: int | None) -> np.ndarray:
    """One channel of a ``frames x channels`` block (``channel`` checked by :func:`check_channel`),
    or their plain mean for ``None``. Frame by frame: a block cut in pieces gives the same samples."""
    if channel is None:
        return block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float64).astype(np.float32)
    return np.ascontiguousarray(block[:, channel])


def finish_audio(mono: np.ndarray, rate: int, channels: int, target_sr: int, source: str,
                 decoder: str = "soundfile") -> DecodedAudio:
    """Decoded mono samples at ``rate`` -> :class:`DecodedAudio` at ``target_sr`` (NaN / Inf
    samples are an error)."""
    if not np.isfinite(mono).all():
        bad = int((~np.isfinite(mono)).sum())
        raise AudioDecodeError(source, f"audio contains {bad} NaN/Inf samples")
    out = _resample(mono, rate, target_sr)
    return DecodedAudio(
        samples=out,
        sample_rate=target_sr,
        original_sample_rate=rate,
        num_channels=channels,
        duration_s=len(out) / target_sr,
        decoder=decoder,
    )
