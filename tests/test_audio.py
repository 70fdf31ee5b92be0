"""pipeline.io.audio on real speech (espeak-ng) in many formats, plus broken inputs."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import soundfile as sf

from audio_testing import AudioSet, best_correlation, make_audio_set
from pipeline.io.audio import AudioDecodeError, DecodedAudio, decode_audio
from pipeline.inputs.durations import probe_duration

pytestmark = pytest.mark.needs_tools("espeak-ng", "sox", "ffmpeg", "ffprobe")


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> AudioSet:
    return make_audio_set(tmp_path_factory.mktemp("audio"))


def test_wav16_is_decoded_exactly(audio: AudioSet) -> None:
    out = decode_audio(audio.wav16.read_bytes(), source=str(audio.wav16))
    assert isinstance(out, DecodedAudio)
    assert out.samples.dtype == np.float32 and out.samples.ndim == 1
    assert (out.sample_rate, out.original_sample_rate, out.num_channels, out.decoder) == (16000, 16000, 1, "soundfile")
    np.testing.assert_array_equal(out.samples, audio.reference16)
    assert out.duration_s == pytest.approx(len(audio.reference16) / 16000)
    assert np.abs(out.samples).max() > 0.1  # real speech, not silence


def test_wav8_is_resampled_to_16k_with_duration_kept(audio: AudioSet) -> None:
    data, sr = sf.read(str(audio.wav8), dtype="float32")
    assert sr == 8000
    out = decode_audio(audio.wav8.read_bytes())
    assert (out.sample_rate, out.original_sample_rate) == (16000, 8000)
    assert len(out.samples) == 2 * len(data)
    assert abs(out.duration_s - len(data) / 8000) < 1e-3
    # the band-limited version of the same sentence still matches the 16 kHz original
    assert best_correlation(out.samples, audio.reference16, max_lag=50) > 0.97
    # an explicit target rate other than 16 kHz works too
    assert decode_audio(audio.wav8.read_bytes(), target_sr=8000).samples.tolist() == data.tolist()


def test_stereo_flac_mixes_and_picks_channels(audio: AudioSet) -> None:
    raw, sr = sf.read(str(audio.stereo_flac), dtype="float32", always_2d=True)
    assert sr == 44100 and raw.shape[1] == 2
    assert np.abs(raw[:, 0]).max() > 0.1 and not raw[:, 1].any()  # left speech, right silent
    data = audio.stereo_flac.read_bytes()

    native = decode_audio(data, target_sr=44100, channel=0)  # lossless: the exact samples
    np.testing.assert_array_equal(native.samples, raw[:, 0])
    np.testing.assert_allclose(decode_audio(data, target_sr=44100).samples, raw.mean(axis=1), atol=1e-7)

    left = decode_audio(data, channel=0)
    right = decode_audio(data, channel=1)
    mixed = decode_audio(data)
    assert (left.sample_rate, left.original_sample_rate, left.num_channels) == (16000, 44100, 2)
    assert abs(left.duration_s - raw.shape[0] / 44100) < 1e-3
    assert not right.samples.any()  # the silent channel, resampled: still exactly zero
    np.testing.assert_allclose(mixed.samples, left.samples / 2, atol=1e-6)
    assert best_correlation(left.samples, audio.reference16, max_lag=200) > 0.95
    with pytest.raises(AudioDecodeError, match="channel 3 requested but file has 2 channels"):
        decode_audio(data, channel=3, source="s3://b/stereo.flac")
    with pytest.raises(AudioDecodeError, match="channel 1 requested but file has 1 channel$"):
        decode_audio(audio.wav16.read_bytes(), channel=1)
    assert np.array_equal(decode_audio(audio.wav16.read_bytes(), channel=0).samples, audio.reference16)


@pytest.mark.parametrize("fmt", ["mp3", "opus", "m4a"])
def test_lossy_formats_correlate_with_the_original(audio: AudioSet, fmt: str) -> None:
    path = {"mp3": audio.mp3, "opus": audio.opus, "m4a": audio.m4a}[fmt]
    out = decode_audio(path.read_bytes(), source=str(path))
    assert out.sample_rate == 16000 and out.samples.dtype == np.float32
    assert out.decoder == ("ffmpeg" if fmt == "m4a" else "soundfile")  # libsndfile cannot read M4A
    assert abs(out.duration_s - len(audio.reference16) / 16000) < 0.1  # codec padding aside
    assert best_correlation(out.samples, audio.reference16) > 0.97


@pytest.mark.parametrize("fmt", ["wav16", "stereo_flac", "m4a"])
def test_time_range_selection(audio: AudioSet, fmt: str) -> None:
    path = getattr(audio, fmt)
    out = decode_audio(path.read_bytes(), start=0.5, duration=1.0, channel=0 if fmt == "stereo_flac" else None)
    assert abs(len(out.samples) - 16000) <= 2
    segment = audio.reference16[8000:24000]
    if fmt == "wav16":
        np.testing.assert_array_equal(out.samples, segment)
    else:
        assert best_correlation(out.samples, segment, max_lag=1500) > 0.9
    # a range running past the end is cut at the end
    total = len(audio.reference16) / 16000
    tail = decode_audio(path.read_bytes(), start=total - 0.5, duration=5.0)
    assert 0.4 < tail.duration_s < 0.6
    with pytest.raises(AudioDecodeError, match="range beyond end of audio"):
        decode_audio(path.read_bytes(), start=total + 10, source=str(path))


def test_broken_inputs_give_clear_errors(audio: AudioSet) -> None:
    cases = {
        audio.empty: "empty file (0 bytes)",
        audio.random_bytes: "not a recognised audio format",
        audio.truncated_header: "not a recognised audio format",
        audio.zero_length_wav: "zero samples",
    }
    for path, reason in cases.items():
        with pytest.raises(AudioDecodeError) as info:
            decode_audio(path.read_bytes(), source=f"s3://bucket/{path.name}")
        assert reason in info.value.reason, (path.name, info.value.reason)
        assert str(info.value).startswith(f"s3://bucket/{path.name}: ")
        assert info.value.source == f"s3://bucket/{path.name}"
    # errors survive pickling (Ray moves them between processes)
    err = pickle.loads(pickle.dumps(AudioDecodeError("a.wav", "zero samples")))
    assert (err.source, err.reason) == ("a.wav", "zero samples")


def test_nan_samples_are_rejected() -> None:
    buf = io.BytesIO()
    samples = np.zeros(1600, np.float32)
    samples[100] = np.nan
    samples[200] = np.inf
    sf.write(buf, samples, 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="2 NaN/Inf samples"):
        decode_audio(buf.getvalue(), source="nan.wav")


def test_truncated_wav_data_decodes_what_is_there(audio: AudioSet) -> None:
    data = audio.wav16.read_bytes()
    cut = data[: 44 + 2 * 8000]  # header promises 2.9 s, half a second of samples present
    out = decode_audio(cut)
    np.testing.assert_array_equal(out.samples, audio.reference16[:8000])


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        decode_audio(b"x", start=-1.0)
    with pytest.raises(ValueError):
        decode_audio(b"x", duration=0.0)


def test_probe_duration(audio: AudioSet) -> None:
    expected = len(audio.reference16) / 16000
    wav = audio.wav16.read_bytes()
    assert probe_duration(wav) == pytest.approx(expected)
    assert probe_duration(wav[:4096], complete=False) == pytest.approx(expected)  # header only
    flac = audio.stereo_flac.read_bytes()
    flac_expected = sf.info(str(audio.stereo_flac)).duration
    assert probe_duration(flac[:4096], complete=False) == pytest.approx(flac_expected)
    assert probe_duration(audio.wav8.read_bytes()[:1000], complete=False) == pytest.approx(
        sf.info(str(audio.wav8)).duration)
    assert probe_duration(audio.mp3.read_bytes()) == pytest.approx(expected, abs=0.1)
    assert probe_duration(audio.opus.read_bytes()) == pytest.approx(expected, abs=0.1)
    assert probe_duration(audio.mp3.read_bytes()[:2048], complete=False) is None  # can't tell from a prefix
    assert probe_duration(audio.m4a.read_bytes()) is None
    assert probe_duration(b"") is None
    assert probe_duration(audio.random_bytes.read_bytes()) is None
    assert probe_duration(audio.zero_length_wav.read_bytes()) == 0.0


def test_decode_from_a_path_like_source_name(audio: AudioSet) -> None:
    # the source string is only a label: decoding works from bytes alone
    out = decode_audio(audio.opus.read_bytes(), source="s3://bucket/x.opus")
    assert out.original_sample_rate in (16000, 48000) and out.num_channels == 1


def test_without_ffmpeg_the_reason_says_so(audio: AudioSet, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.io.audio as audio_mod

    monkeypatch.setattr(audio_mod.shutil, "which", lambda name: None)
    with pytest.raises(AudioDecodeError, match="ffmpeg is not installed"):
        decode_audio(audio.m4a.read_bytes(), source="x.m4a")
    with pytest.raises(AudioDecodeError, match="zero samples"):
        decode_audio(audio.zero_length_wav.read_bytes(), source="zero.wav")
    # soundfile formats need no ffmpeg at all
    np.testing.assert_array_equal(decode_audio(audio.wav16.read_bytes()).samples, audio.reference16)
