"""Durations of long MP3 / Ogg files from frame headers (pipeline.inputs.durations), checked
against what ffprobe and a full decode say, and their use when a directory of audio is planned."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_testing import ffmpeg, speak
from pipeline.io import storage
from pipeline.io.audio import decode_audio
from pipeline.inputs.durations import OGG_MAX_PAGE, compressed_duration, mp3_duration, ogg_duration
from pipeline.inputs.manifests import iter_work_items

pytestmark = pytest.mark.needs_tools("espeak-ng", "sox", "ffmpeg", "ffprobe")


def ffprobe_duration(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)["format"]["duration"])


def decoded_seconds(path: Path) -> float:
    return decode_audio(path.read_bytes(), source=str(path)).duration_s


def id3_tag(payload_bytes: int) -> bytes:
    """An ID3v2.3 tag holding one private frame of ``payload_bytes`` (like embedded cover art)."""
    frame = b"PRIV" + payload_bytes.to_bytes(4, "big") + b"\x00\x00" + bytes(payload_bytes)
    size = len(frame)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x03\x00\x00" + syncsafe + frame


@pytest.fixture(scope="module")
def long_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compressed")
    parts = [speak(f"part {i} of a long recording about object storage and speech", root / f"p{i}.wav") for i in range(4)]
    # ~97 s of real speech: the sentences repeated, pauses between them
    pieces = []
    for k in range(6):
        for p in parts:
            pieces.append(sf.read(str(p), dtype="float32")[0])
            pieces.append(np.zeros(4000, dtype=np.float32))
    wav = root / "long.wav"
    sf.write(str(wav), np.concatenate(pieces), 16000, subtype="PCM_16")
    files = {
        "wav": wav,
        "mp3_cbr": ffmpeg(wav, root / "cbr.mp3", "-c:a", "libmp3lame", "-b:a", "48k"),
        "mp3_cbr_noxing": ffmpeg(wav, root / "cbr_noxing.mp3", "-c:a", "libmp3lame", "-b:a", "32k", "-write_xing", "0"),
        "mp3_vbr": ffmpeg(wav, root / "vbr.mp3", "-c:a", "libmp3lame", "-q:a", "5"),
        "mp3_vbr_noxing": ffmpeg(wav, root / "vbr_noxing.mp3", "-c:a", "libmp3lame", "-q:a", "5", "-write_xing", "0"),
        "mp3_44k": ffmpeg(wav, root / "cbr44.mp3", "-c:a", "libmp3lame", "-b:a", "64k", "-ar", "44100"),
        "opus": ffmpeg(wav, root / "long.opus", "-c:a", "libopus", "-b:a", "24k"),
        "ogg_vorbis": ffmpeg(wav, root / "long.ogg", "-c:a", "libvorbis", "-q:a", "2"),
        "m4a": ffmpeg(wav, root / "long.m4a", "-c:a", "aac", "-b:a", "48k"),
    }
    # a 200 KiB ID3v2 tag in front of the frames (cover art does this), past the 64 KiB head
    tagged = root / "tagged.mp3"
    tagged.write_bytes(id3_tag(200 * 1024) + files["mp3_cbr"].read_bytes())
    files["mp3_tagged"] = tagged
    return files


def probe(path: Path) -> float | None:
    data = path.read_bytes()
    return compressed_duration(data[: 64 * 1024], len(data), lambda a, b: data[a:b])


@pytest.mark.parametrize("name,tolerance", [
    ("mp3_cbr", 0.08), ("mp3_cbr_noxing", 0.08), ("mp3_vbr", 0.08), ("mp3_44k", 0.08), ("mp3_tagged", 0.08),
    ("opus", 0.002), ("ogg_vorbis", 0.002),
])
def test_duration_from_headers_matches_the_decoded_length(long_files, name, tolerance):
    path = long_files[name]
    assert path.stat().st_size > 64 * 1024  # more than the head the prober reads first
    truth = decoded_seconds(path)  # what the actor will get
    assert truth > 60
    got = probe(path)
    assert got is not None, name
    assert abs(got - truth) <= tolerance, (name, got, truth)
    assert abs(got - ffprobe_duration(path)) <= 0.12, name  # ffprobe counts the encoder delay in


def test_unknown_when_a_safe_duration_cannot_be_told(long_files):
    # VBR without a Xing/VBRI frame count: the first frames' bitrates differ, so no CBR guess
    assert probe(long_files["mp3_vbr_noxing"]) is None
    assert probe(long_files["m4a"]) is None  # not MP3 / Ogg
    assert probe(long_files["wav"]) is None  # WAV is pipeline.inputs.durations.probe_duration's job
    data = long_files["opus"].read_bytes()
    # an Ogg tail that is cut off inside its last page header: no well-formed page, no guess
    assert ogg_duration(data[:4096], data[-20:]) is None
    assert ogg_duration(b"OggS" + bytes(40), data[-OGG_MAX_PAGE:]) is None
    assert mp3_duration(bytes(70000), 70000) is None
    assert compressed_duration(np.random.default_rng(0).integers(0, 256, 70000, dtype=np.uint8).tobytes(), 70000,
                               lambda a, b: b"") is None


def test_a_directory_of_long_compressed_files_is_windowed(long_files, tmp_path):
    """Long MP3 / Opus files in a directory (a bucket prefix) get durations, so they are cut into
    windows like long WAVs, and the probe reads ranges only."""
    from pipeline.plan.windows import expand_windows, plan_windows

    d = tmp_path / "prefix"
    d.mkdir()
    for name in ("mp3_cbr", "opus", "mp3_vbr_noxing"):
        (d / f"{name}{long_files[name].suffix}").write_bytes(long_files[name].read_bytes())
    items = {Path(i.source).stem: i for i in iter_work_items(str(d))}
    assert abs(items["mp3_cbr"].duration - decoded_seconds(long_files["mp3_cbr"])) < 0.08
    assert abs(items["opus"].duration - decoded_seconds(long_files["opus"])) < 0.002
    assert items["mp3_vbr_noxing"].duration is None  # unknown: transcribed whole, as before
    windows = list(expand_windows(items.values(), max_cut_seconds=30.0, overlap_seconds=4.0))
    per_cut: dict[str, list] = {}
    for w in windows:
        per_cut.setdefault(Path(w.source).stem, []).append(w)
    for name in ("mp3_cbr", "opus"):
        assert len(per_cut[name]) == len(plan_windows(items[name].duration, 30.0, 4.0)) >= 3
    assert len(per_cut["mp3_vbr_noxing"]) == 1 and per_cut["mp3_vbr_noxing"][0].window_count in (None, 1)
    last = per_cut["opus"][-1]
    assert abs(last.start + last.duration - items["opus"].duration) < 1e-6


def test_probe_reads_ranges_not_whole_files(long_files, monkeypatch):
    reads: list[tuple[int, int | None]] = []
    real, real_head = storage.read_range, storage.read_head

    def spy(uri, start, end, **kw):
        reads.append((start, end))
        return real(uri, start, end, **kw)

    def spy_head(uri, length, **kw):
        reads.append((0, length))
        return real_head(uri, length, **kw)

    monkeypatch.setattr(storage, "read_range", spy)
    monkeypatch.setattr(storage, "read_head", spy_head)
    from pipeline.inputs.durations import probe_source

    size = long_files["opus"].stat().st_size
    assert probe_source(str(long_files["opus"])) is not None
    fetched = sum(min(e, size) - s for s, e in reads)
    assert len(reads) == 2 and fetched < 64 * 1024 + OGG_MAX_PAGE + 2048 < size
