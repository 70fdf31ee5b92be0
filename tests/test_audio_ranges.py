"""WAV headers (pipeline.io.wav) and range reads of long audio (pipeline.io.ranges) on local files
and on moto's S3."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf

from pipeline.io import storage
from pipeline.io.audio import AudioDecodeError, decode_audio
from pipeline.io.ranges import RangeReader
from pipeline.io.wav import FORMAT_FLOAT, FORMAT_PCM, parse_wav_header
from s3_testing import moto_server


@pytest.fixture()
def tone(tmp_path):
    """20 s of a 16-bit stereo WAV whose left channel encodes time (a ramp) and right is a tone."""
    sr = 16000
    t = np.arange(20 * sr) / sr
    left = (t / 20.0 - 0.5).astype(np.float32)
    right = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / "tone.wav"
    sf.write(str(path), np.stack([left, right], axis=1), sr, subtype="PCM_16")
    return path, left, right


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_wav_header_finds_the_samples(tmp_path, subtype):
    path = tmp_path / "x.wav"
    sf.write(str(path), np.zeros((1000, 2), dtype=np.float32), 8000, subtype=subtype)
    data = path.read_bytes()
    header = parse_wav_header(data[:4096])
    width = {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4}[subtype]
    assert header is not None and header.sample_rate == 8000 and header.block_align == 2 * width
    assert header.channels == 2 and header.bits_per_sample == 8 * width and header.plain_samples
    assert header.format_tag == (FORMAT_FLOAT if subtype == "FLOAT" else FORMAT_PCM)  # extensible headers resolved
    assert header.data_size(len(data)) == 1000 * 2 * width and header.data_offset + header.data_size(len(data)) <= len(data)
    assert header.duration() == 1000 / 8000
    assert header.data_size(header.data_offset + 2 * width * 10 + 3) == 2 * width * 10  # a cut-off object: whole frames
    assert parse_wav_header(b"fLaC" + data[4:4096]) is None


def test_wav_header_of_a_streamed_header(tmp_path):
    """Writers that stream leave 0xFFFFFFFF as the data size: the samples run to the end, and
    the header alone cannot tell the duration."""
    path = tmp_path / "x.wav"
    sf.write(str(path), np.zeros(1000, dtype=np.float32), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    pos = data.index(b"data")
    data[pos + 4:pos + 8] = struct.pack("<I", 0xFFFFFFFF)
    header = parse_wav_header(bytes(data[:4096]))
    assert header is not None and header.streamed and header.duration() is None
    assert header.data_size(len(data)) == len(data) - header.data_offset


def test_local_wav_window_matches_whole_decode(tone):
    path, left, right = tone
    reader = RangeReader()
    for start, dur, channel in ((0.0, 5.0, 0), (7.25, 3.5, 1), (18.0, 5.0, None)):
        got = reader.read(str(path), start, dur, target_sr=16000, channel=channel)
        whole = decode_audio(path.read_bytes(), source=str(path), channel=channel, start=start, duration=dur)
        np.testing.assert_array_equal(got.samples, whole.samples)
        assert got.num_channels == 2
    # only headers and the windows' bytes were read: far less than three whole files
    assert reader.bytes_fetched < 0.7 * path.stat().st_size
    with pytest.raises(AudioDecodeError, match="beyond end"):
        reader.read(str(path), 25.0, 5.0, target_sr=16000, channel=0)


def test_resampled_window(tmp_path):
    path = tmp_path / "x.wav"
    sr = 8000
    sf.write(str(path), (0.1 * np.sin(np.arange(10 * sr) / 3)).astype(np.float32), sr, subtype="PCM_16")
    got = RangeReader().read(str(path), 2.0, 3.0, target_sr=16000, channel=None)
    assert got.original_sample_rate == 8000 and got.samples.size == 3 * 16000


def test_s3_window_uses_range_requests(tone, tmp_path):
    import boto3

    path, left, _ = tone
    flac = tmp_path / "tone.flac"
    sf.write(str(flac), left, 16000, subtype="PCM_16")
    with moto_server() as url, pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(k, v)
        storage.set_default_s3_options(None)
        client = boto3.client("s3")
        client.create_bucket(Bucket="audio")
        client.put_object(Bucket="audio", Key="tone.wav", Body=path.read_bytes())
        client.put_object(Bucket="audio", Key="tone.flac", Body=flac.read_bytes())
        reader = RangeReader()
        got = reader.read("s3://audio/tone.wav", 10.0, 2.0, target_sr=16000, channel=0)
        expected = decode_audio(path.read_bytes(), channel=0, start=10.0, duration=2.0).samples
        np.testing.assert_array_equal(got.samples, expected)
        assert reader.bytes_fetched < 65536 + 2 * 16000 * 4 + 1  # header read + 2 s of 2 x 16-bit
        # FLAC: one streamed copy serves every window of the file
        a = reader.read("s3://audio/tone.flac", 1.0, 2.0, target_sr=16000, channel=None)
        b = reader.read("s3://audio/tone.flac", 15.0, 2.0, target_sr=16000, channel=None)
        fetched = reader.bytes_fetched
        np.testing.assert_allclose(a.samples[:100], left[16000:16100], atol=1 / 32768)
        np.testing.assert_allclose(b.samples[:100], left[15 * 16000:15 * 16000 + 100], atol=1 / 32768)
        assert fetched < 65536 * 3 + 2 * 16000 * 4 + flac.stat().st_size + 1
        reader.close()
        storage.set_default_s3_options(None)
