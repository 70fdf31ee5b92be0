"""Real spoken test audio: espeak-ng sentences converted with sox / ffmpeg into many formats."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "speech recognition turns audio into text",
    "object storage holds the audio files",
]


def have_audio_tools() -> bool:
    return all(shutil.which(t) for t in ("espeak-ng", "sox", "ffmpeg", "ffprobe"))


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def speak(text: str, out: Path, *, rate: int = 16000, voice: str = "en-us", extra: tuple[str, ...] = ()) -> Path:
    """espeak-ng (22.05 kHz wav) -> sox -> ``out`` (format from its suffix), mono 16-bit; without
    sox's clock-seeded dither, so the same text gives the same file every run."""
    raw = out.with_name(out.stem + ".espeak.wav")
    _run(["espeak-ng", "-v", voice, "-w", str(raw), text])
    bits = [] if out.suffix in (".mp3", ".ogg", ".opus") else ["-b", "16"]
    _run(["sox", "-D", str(raw), "-r", str(rate), "-c", "1", *bits, str(out), *extra])
    raw.unlink()
    return out


def ffmpeg(src: Path, out: Path, *args: str) -> Path:
    _run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *args, str(out)])
    return out


@dataclass
class AudioSet:
    """Paths of generated files plus the reference 16 kHz samples of ``wav16``."""

    root: Path
    wav16: Path
    wav8: Path
    stereo_flac: Path  # 44.1 kHz, left = speech, right = silence
    mp3: Path
    opus: Path
    m4a: Path
    random_bytes: Path
    truncated_header: Path
    empty: Path
    zero_length_wav: Path
    reference16: np.ndarray  # float32 samples of wav16


def make_audio_set(root: Path) -> AudioSet:
    root.mkdir(parents=True, exist_ok=True)
    text = SENTENCES[0]
    wav16 = speak(text, root / "utt16.wav", rate=16000)
    wav8 = speak(text, root / "utt8.wav", rate=8000)
    raw = root / "raw.wav"
    _run(["espeak-ng", "-v", "en-us", "-w", str(raw), text])
    stereo = root / "stereo44.flac"
    _run(["sox", "-D", str(raw), "-r", "44100", "-b", "16", str(stereo), "remix", "1", "0"])  # -D: no dither
    raw.unlink()
    mp3 = ffmpeg(wav16, root / "utt.mp3", "-b:a", "64k")
    opus = ffmpeg(wav16, root / "utt.opus", "-c:a", "libopus", "-b:a", "48k")
    m4a = ffmpeg(wav16, root / "utt.m4a", "-c:a", "aac", "-b:a", "64k")
    random_bytes = root / "noise.wav"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 6000, dtype=np.uint8).tobytes())
    truncated = root / "truncated.wav"
    truncated.write_bytes(wav16.read_bytes()[:30])
    empty = root / "empty.wav"
    empty.write_bytes(b"")
    zero = root / "zero.wav"
    _run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(zero), "trim", "0", "0"])
    reference, sr = sf.read(str(wav16), dtype="float32")
    assert sr == 16000
    return AudioSet(root, wav16, wav8, stereo, mp3, opus, m4a, random_bytes, truncated, empty, zero, reference)


def best_correlation(x: np.ndarray, ref: np.ndarray, max_lag: int = 4000) -> float:
    """Highest normalised cross-correlation of ``x`` against ``ref`` over lags up to ``max_lag``."""
    from scipy.signal import correlate

    n = min(len(x), len(ref)) + max_lag
    a = np.zeros(n, np.float64)
    b = np.zeros(n, np.float64)
    a[: min(len(x), n)] = x[:n]
    b[: min(len(ref), n)] = ref[:n]
    c = correlate(a, b, mode="full", method="fft")
    mid = n - 1
    window = c[mid - max_lag : mid + max_lag + 1]
    return float(window.max() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
