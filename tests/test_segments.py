"""Segments of long recordings (pipeline.io.ranges, pipeline.run.shard_audio, pipeline.plan.shards):
each recording a shard needs is read once, and only the part its segments cover, locally and on
moto's S3 behind a proxy that counts the bytes it serves; the segments' audio is what decoding each
range alone gives; the planner keeps a recording's segments in one shard."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_testing import best_correlation
from pipeline.inputs.items import WorkItem
from pipeline.io import storage
from pipeline.io.audio import decode_audio
from pipeline.io.ranges import RangeReader, Span
from pipeline.run.shard_audio import load_shard_audio
from s3_testing import FaultProxy, moto_environment

REPO = Path(__file__).resolve().parents[1]
SR = 22050
SECONDS = 60.0
SEGMENT = 5.0


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, Path]:
    """One minute of stereo audio at 22.05 kHz (a resampled rate) as WAV, FLAC and MP3: the left
    channel a rising tone, the right noise, so a misplaced or swapped segment shows."""
    root = tmp_path_factory.mktemp("recordings")
    t = np.arange(int(SECONDS * SR)) / SR
    left = 0.3 * np.sin(2 * np.pi * (200 + 10 * t) * t)
    right = 0.1 * np.random.default_rng(0).standard_normal(t.size)
    pcm = np.stack([left, right], axis=1).astype(np.float32)
    out = {"wav": root / "rec.wav", "flac": root / "rec.flac"}
    sf.write(str(out["wav"]), pcm, SR, subtype="PCM_16")
    sf.write(str(out["flac"]), pcm, SR, subtype="PCM_16")
    out["mp3"] = root / "rec.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(out["wav"]), "-b:a", "96k", str(out["mp3"])],
                   check=True)
    return out


def segments(source: str, count: int = int(SECONDS / SEGMENT)) -> list[WorkItem]:
    """Back-to-back segment cuts of one recording, alternating channels (as a lhotse recipe of a
    two-speaker call lists them)."""
    return [WorkItem(cut_id=f"seg-{k:02d}", recording_id="rec", source=source, source_type="url", channel=k % 2,
                     start=k * SEGMENT, duration=SEGMENT) for k in range(count)]


def check_samples(fmt: str, path: Path, items: list[WorkItem], samples: list) -> None:
    """Every segment's audio equals decoding its range alone (WAV, FLAC); for MP3, whose decoders
    may differ by a few samples after a seek, it is the same signal."""
    data = path.read_bytes()
    for item, got in zip(items, samples):
        alone = decode_audio(data, channel=item.channel, start=item.start, duration=item.duration).samples
        if fmt == "mp3":
            assert got.size == alone.size and best_correlation(got, alone, max_lag=200) > 0.99, item.cut_id
        else:
            np.testing.assert_array_equal(got, alone, err_msg=item.cut_id)


@pytest.mark.needs_tools("ffmpeg")
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_segments_of_a_local_recording_are_read_once(recordings, fmt):
    path = recordings[fmt]
    items = segments(str(path))
    audio = load_shard_audio(items, RangeReader())
    assert audio.errors == [None] * len(items)
    check_samples(fmt, path, items, audio.samples)
    size = path.stat().st_size
    assert size <= audio.bytes_fetched <= 1.01 * size + 65536
    # the segments cover the recording: what they need is the whole file (less its header)
    assert 0.97 * size <= audio.bytes_needed <= size
    assert audio.cpu_seconds > 0


@pytest.mark.needs_tools("ffmpeg")
@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3"])
def test_segments_on_s3_cost_one_read_of_the_recording(recordings, fmt):
    """Counted by the proxy, not by the code under test: the store serves each recording's bytes
    once for all its segments (one GET per segment of the whole object before), and the audio
    stage's own count agrees."""
    import boto3

    path = recordings[fmt]
    with moto_environment() as env, FaultProxy(env["AWS_ENDPOINT_URL"]) as proxy:
        bucket = f"b-{uuid.uuid4().hex[:10]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        storage.write_bytes_atomic(f"s3://{bucket}/calls/{path.name}", path.read_bytes())
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ENDPOINT_URL", proxy.url)
            storage.set_default_s3_options(None)
            items = segments(f"s3://{bucket}/calls/{path.name}")
            audio = load_shard_audio(items, RangeReader())
        storage.set_default_s3_options(None)
        served = proxy.got_bytes(f"/{bucket}/calls/{path.name}")
    assert audio.errors == [None] * len(items)
    check_samples(fmt, path, items, audio.samples)
    size = path.stat().st_size
    assert served == audio.bytes_fetched
    assert size <= served <= 1.01 * size + 65536


def test_a_few_segments_of_a_long_recording_fetch_only_their_ranges(recordings):
    """Three 5 s segments of the minute, far apart: their bytes and a header, not the file."""
    path = recordings["flac"]
    items = [segments(str(path))[k] for k in (1, 6, 10)]
    reader = RangeReader()
    audio = load_shard_audio(items, reader)
    check_samples("flac", path, items, audio.samples)
    size = path.stat().st_size
    needed = sum(i.duration for i in items) / SECONDS * size
    assert audio.bytes_needed == pytest.approx(needed, rel=0.05)
    # each far segment: a seek (a few small reads while libFLAC finds the frame) and its own bytes
    assert audio.bytes_fetched < needed + 3 * 4 * 65536 + 65536 < 0.6 * size


_DEEP_READ = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from pipeline.inputs.items import WorkItem
from pipeline.io.ranges import RangeReader
from pipeline.run.shard_audio import load_shard_audio
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
item = WorkItem("deep", "big", sys.argv[2], "file", start=3600.0, duration=5.0)
audio = load_shard_audio([item], RangeReader())
print(json.dumps({"error": audio.errors[0], "seconds": audio.durations[0], "fetched": audio.bytes_fetched,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_mb": before / 1024}))
"""


def test_a_short_cut_deep_in_a_1_gib_wav_reads_5_seconds(tmp_path):
    """The 1 GiB file is sparse (written in a blink); reading 5 s at one hour in must not fetch or
    hold the object (it peaked at 1.1 GB in one loader thread before)."""
    path = tmp_path / "big.wav"
    frames = (1 << 30) // 2
    with open(path, "wb") as f:
        sf.write(f, np.zeros(16000, dtype=np.int16), 16000, subtype="PCM_16", format="WAV")
    data = bytearray(path.read_bytes())
    pos = data.index(b"data")
    data[pos + 4:pos + 8] = (frames * 2).to_bytes(4, "little")
    data[4:8] = (len(data) - 8 + frames * 2 - 32000).to_bytes(4, "little")
    with open(path, "wb") as f:
        f.write(data[:pos + 8])
        f.truncate(pos + 8 + frames * 2)
    out = subprocess.run([sys.executable, "-c", _DEEP_READ, str(REPO), str(path)], capture_output=True, text=True,
                         timeout=120, check=True)
    got = json.loads(out.stdout)
    assert got["error"] is None and got["seconds"] == pytest.approx(5.0)
    assert got["fetched"] < 65536 + 5 * 32000 + 2 * 65536
    assert got["rss_mb"] - got["before_mb"] < 100


def test_a_span_reader_serves_spans_in_any_order_with_their_own_errors(recordings):
    path = str(recordings["wav"])
    spans = [Span(50.0, 2.0, 1), Span(1.0, 2.0, 0), Span(70.0, 1.0, 0), Span(3.0, 1.0, 5), Span(58.0, None, None)]
    results, stats = RangeReader().read_spans(path, spans, target_sr=16000)
    data = recordings["wav"].read_bytes()
    for span, got in zip(spans[:2], results[:2]):
        np.testing.assert_array_equal(got.samples, decode_audio(data, channel=span.channel, start=span.start,
                                                                duration=span.duration).samples)
    assert "range beyond end" in str(results[2]) and "channel 5" in str(results[3])
    assert results[4].duration_s == pytest.approx(2.0, abs=1e-3)  # to the end, both channels mixed
    assert stats.bytes_fetched < 0.2 * len(data)


def test_the_planner_keeps_a_recordings_segments_in_one_shard(recordings, tmp_path):
    """Segments listed together (as lhotse recipes write them) are one shard each recording, even
    where a cut of the recording would end a shard; a recording listed far apart is still read
    right, once per shard that holds some of it."""
    from lhotse import AudioSource, MonoCut, Recording

    from pipeline.plan.frozen import PlanOptions, iter_plan_shards, write_plan
    from pipeline.output.paths import RunPaths

    path = recordings["flac"]
    info = sf.info(str(path))
    files = {}
    for name in ("call-a", "call-b", "call-c"):  # three recordings (the same sound in three files)
        files[name] = tmp_path / f"{name}.flac"
        files[name].write_bytes(path.read_bytes())
    rec = {name: Recording(id=name, sources=[AudioSource(type="file", channels=[0, 1], source=str(files[name]))],
                           sampling_rate=SR, num_samples=info.frames, duration=info.frames / SR)
           for name in files}
    lines = []
    for name in ("call-a", "call-b"):  # listed together
        lines += [MonoCut(id=f"{name}-{k:02d}", start=k * 2.0, duration=2.0, channel=k % 2, recording=rec[name])
                  for k in range(25)]
    lines += [MonoCut(id=f"call-c-{k:02d}", start=k * 2.0, duration=2.0, channel=0, recording=rec["call-c"])
              for k in range(0, 25, 3)]  # one recording's segments listed twice, far apart
    lines += [MonoCut(id=f"call-c-{k:02d}", start=k * 2.0, duration=2.0, channel=0, recording=rec["call-c"])
              for k in range(1, 25, 3)]
    manifest = tmp_path / "cuts.jsonl.gz"
    with gzip.open(manifest, "wt") as f:
        for cut in lines:
            f.write(json.dumps(cut.to_dict()) + "\n")
    paths = RunPaths(str(tmp_path / "out"), "seg")
    plan = write_plan(paths, PlanOptions(manifests=(str(manifest),), shard_size=8))  # shards of 8 on average
    shards = list(iter_plan_shards(paths, plan))
    by_recording: dict[str, set[str]] = {}
    for shard in shards:
        for item in shard.items:
            by_recording.setdefault(item.recording_id, set()).add(shard.shard_id)
    assert len(by_recording["call-a"]) == 1 and len(by_recording["call-b"]) == 1  # 25 < the cap of 32
    assert sum(len(s.items) for s in shards) == len(lines)
    reader = RangeReader()
    for shard in shards:
        audio = load_shard_audio(shard.items, reader)
        assert audio.errors == [None] * len(shard.items)
        check_samples("flac", path, shard.items, audio.samples)
        # each recording of the shard read once: at most its file (plus a header) per recording
        assert audio.bytes_fetched <= len({i.recording_id for i in shard.items}) * (path.stat().st_size + 65536)
