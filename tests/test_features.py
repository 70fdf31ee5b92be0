"""Tests for model.features on real (synthesised) speech.

Independent references: a direct float64 numpy transcription of Kaldi's
``compute-fbank-feats`` (written here from Kaldi's documented algorithm) and
kaldi-native-fbank (the C++ port of Kaldi's fbank used by sherpa/icefall).
"""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
import torch

from model.features import (
    LOG_FLOOR,
    PADDING_VALUE,
    SAMPLE_RATE,
    FbankConfig,
    FeatureExtractor,
    num_frames,
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Speech recognition turns audio into text.",
    "Hello.",
]

FLT_EPSILON = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------- audio
needs_audio = pytest.mark.needs_tools("espeak-ng", "sox")


@pytest.fixture(scope="module")
def utterances(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Synthesise sentences with espeak-ng, resample with sox to 16 kHz mono int16."""
    import soundfile as sf

    d = tmp_path_factory.mktemp("audio")
    out: list[np.ndarray] = []
    for i, text in enumerate(SENTENCES):
        raw, wav = d / f"raw{i}.wav", d / f"utt{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
        subprocess.run(["sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
        samples, sr = sf.read(str(wav), dtype="float32")
        assert sr == SAMPLE_RATE and samples.ndim == 1
        out.append(samples)
    lengths = [len(u) for u in out]
    assert len(set(lengths)) == len(lengths), "want utterances of different lengths"
    return out


@pytest.fixture(scope="module")
def fe() -> FeatureExtractor:
    return FeatureExtractor()


# --------------------------------------------------------------------------- numpy Kaldi reference
def _mel(f: np.ndarray | float) -> np.ndarray | float:
    return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)


def kaldi_fbank_reference(wave: np.ndarray, num_bins: int = 80) -> np.ndarray:
    """Kaldi fbank, float64, one frame at a time, as Kaldi's feature-window.cc does.

    snip_edges=False framing (frame t starts at t*160 + 80 - 200, samples
    outside [0, n) reflected), DC offset removal, pre-emphasis 0.97 (first
    sample against itself), Povey window, zero-padding to 512, power
    spectrum, triangular mel bins on the mel scale between 20 Hz and
    8000 - 400 Hz over FFT bins 0..255, log with FLT_EPSILON floor.
    """
    x = np.asarray(wave, dtype=np.float64)
    n, win, shift, nfft, fs = len(x), 400, 160, 512, 16000.0
    frames = (n + shift // 2) // shift
    i = np.arange(win)
    povey = (0.5 - 0.5 * np.cos(2 * np.pi * i / (win - 1))) ** 0.85

    mel_lo, mel_hi = _mel(20.0), _mel(fs / 2 - 400.0)
    delta = (mel_hi - mel_lo) / (num_bins + 1)
    fft_mel = _mel(np.arange(nfft // 2) * fs / nfft)
    banks = np.zeros((num_bins, nfft // 2 + 1))
    for b in range(num_bins):
        left, center, right = (mel_lo + k * delta for k in (b, b + 1, b + 2))
        for k, m in enumerate(fft_mel):
            if left < m < right:
                banks[b, k] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)

    out = np.empty((frames, num_bins))
    for t in range(frames):
        start = t * shift + shift // 2 - win // 2
        frame = np.empty(win)
        for s in range(win):
            j = start + s
            while j < 0 or j >= n:
                j = -j - 1 if j < 0 else 2 * n - 1 - j
            frame[s] = x[j]
        frame -= frame.mean()
        frame[1:] -= 0.97 * frame[:-1].copy()
        frame[0] -= 0.97 * frame[0]
        frame *= povey
        spec = np.abs(np.fft.rfft(frame, n=nfft)) ** 2
        out[t] = np.log(np.maximum(banks @ spec, FLT_EPSILON))
    return out



# One 16-bit LSB (2**-15) squared and summed over a 400-sample window is about
# 3.7e-7, log -14.8: bins this close to the quantisation floor hold a handful of
# LSBs of energy, so float32 round-off in the FFT (which differs between CPU
# instruction sets) moves their log by up to a few 1e-3. Bins with real energy
# must agree to 1e-3; bins at the floor to 5e-3.
NOISE_FLOOR_LOG = -12.0


def assert_fbank_close(ours: np.ndarray, ref: np.ndarray) -> None:
    """Compare log-mel features: 1e-3 where there is energy, 5e-3 at the quantisation floor."""
    assert ours.shape == ref.shape
    floor = ref < NOISE_FLOOR_LOG
    assert (~floor).sum() > floor.sum()  # most bins carry signal, so the strict rule bites
    np.testing.assert_allclose(ours[~floor], ref[~floor], atol=1e-3, rtol=0)
    np.testing.assert_allclose(ours[floor], ref[floor], atol=5e-3, rtol=0)

def knf_fbank(wave: np.ndarray) -> np.ndarray:
    import kaldi_native_fbank as knf
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = -400.0
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, np.asarray(wave, dtype=np.float32).tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(t) for t in range(fbank.num_frames_ready)])


# --------------------------------------------------------------------------- tests
def test_constants() -> None:
    assert SAMPLE_RATE == 16000
    assert PADDING_VALUE == pytest.approx(-23.025850929940457, abs=1e-12)
    assert LOG_FLOOR == pytest.approx(math.log(FLT_EPSILON)) == pytest.approx(-15.942385, abs=1e-5)
    c = FbankConfig()
    assert (c.window_size, c.window_shift, c.num_mel_bins) == (400, 160, 80)


def test_num_frames_rule() -> None:
    # Kaldi NumFrames(snip_edges=False): (n + shift/2) / shift, i.e. n/160 rounded half *up*
    cases = {0: 0, 1: 0, 79: 0, 80: 1, 239: 1, 240: 2, 399: 2, 400: 3, 16000: 100, 16079: 100, 16080: 101}
    for n, expected in cases.items():
        assert num_frames(n) == expected, n
    assert round(80 / 160) == 0 and round(400 / 160) == 2  # why Python's round() is wrong here


@needs_audio
def test_single_utterance_shape(fe: FeatureExtractor, utterances: list[np.ndarray]) -> None:
    u = utterances[0]
    feats, lens = fe([u], "cpu")
    assert feats.dtype == torch.float32 and lens.dtype == torch.int64
    assert feats.shape == (1, (len(u) + 80) // 160, 80)
    assert lens.tolist() == [feats.shape[1]]
    assert torch.isfinite(feats).all()
    assert feats.max() > 0.0  # speech has energy well above the floor


@needs_audio
def test_batched_equals_single(fe: FeatureExtractor, utterances: list[np.ndarray]) -> None:
    feats, lens = fe(utterances, "cpu")
    assert feats.shape == (len(utterances), max(num_frames(len(u)) for u in utterances), 80)
    assert lens.tolist() == [num_frames(len(u)) for u in utterances]
    for i, u in enumerate(utterances):
        alone, alone_len = fe([torch.from_numpy(u)], "cpu")
        assert alone_len.item() == lens[i].item()
        torch.testing.assert_close(feats[i, : lens[i]], alone[0], atol=1e-5, rtol=0)
        # padded rows hold exactly the reference padding value
        assert (feats[i, lens[i] :] == PADDING_VALUE).all()
    shortest = int(lens.argmin())
    assert (feats[shortest, lens[shortest] :] == PADDING_VALUE).all()
    assert feats.shape[1] > lens[shortest]


@needs_audio
def test_batched_equals_single_odd_lengths(fe: FeatureExtractor, utterances: list[np.ndarray]) -> None:
    # cuts that end mid-frame and very short ones (reflection over the whole signal)
    u = utterances[0]
    pieces = [u[: 16000 + 87], u[5000:5000 + 80], u[3000:3000 + 399], u[7000:7000 + 1234], u[:10]]
    feats, lens = fe(pieces, "cpu")
    assert lens.tolist() == [101, 1, 2, 8, 0]
    for i, p in enumerate(pieces):
        alone, _ = fe([p], "cpu")
        torch.testing.assert_close(feats[i, : lens[i]], alone[0], atol=1e-5, rtol=0)
        assert (feats[i, lens[i] :] == PADDING_VALUE).all()
        if lens[i] > 0:
            assert_fbank_close(alone[0].double().numpy(), kaldi_fbank_reference(p))


def test_digital_silence_is_log_flt_epsilon(fe: FeatureExtractor) -> None:
    feats, lens = fe([np.zeros(16000, dtype=np.float32)], "cpu")
    assert lens.tolist() == [100]
    torch.testing.assert_close(feats, torch.full_like(feats, math.log(FLT_EPSILON)), atol=1e-6, rtol=0)
    assert feats[0, 0, 0].item() == pytest.approx(-15.9424, abs=1e-4)


@needs_audio
def test_matches_numpy_kaldi_reference(fe: FeatureExtractor, utterances: list[np.ndarray]) -> None:
    feats, lens = fe(utterances, "cpu")
    for i, u in enumerate(utterances):
        ref = kaldi_fbank_reference(u)
        assert_fbank_close(feats[i, : lens[i]].double().numpy(), ref)


@needs_audio
def test_matches_kaldi_native_fbank(fe: FeatureExtractor, utterances: list[np.ndarray]) -> None:
    feats, lens = fe(utterances, "cpu")
    for i, u in enumerate(utterances):
        ref = knf_fbank(u)
        assert ref.shape == (lens[i], 80)
        assert_fbank_close(feats[i, : lens[i]].numpy(), ref)


@needs_audio
def test_input_types(fe: FeatureExtractor, utterances: list[np.ndarray]) -> None:
    u = utterances[2]
    a, _ = fe([u], "cpu")
    b, _ = fe([u.astype(np.float64)], "cpu")
    c, _ = fe([torch.from_numpy(u)[None, :]], "cpu")  # (1, n) is accepted as mono
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    with pytest.raises(ValueError, match="mono"):
        fe([np.zeros((2, 1600), dtype=np.float32)], "cpu")
    with pytest.raises(ValueError, match="floating"):
        fe([np.zeros(1600, dtype=np.int16)], "cpu")


def test_empty_inputs(fe: FeatureExtractor) -> None:
    feats, lens = fe([np.zeros(0, dtype=np.float32), np.zeros(50, dtype=np.float32)], "cpu")
    assert feats.shape == (2, 0, 80) and lens.tolist() == [0, 0]
    feats, lens = fe([], "cpu")
    assert feats.shape == (0, 0, 80) and lens.shape == (0,)


@needs_audio
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(utterances: list[np.ndarray]) -> None:
    fe = FeatureExtractor()
    cpu, cpu_lens = fe(utterances, "cpu")
    gpu, gpu_lens = fe(utterances, "cuda")
    assert gpu.device.type == "cuda" and gpu_lens.device.type == "cuda"
    assert torch.equal(cpu_lens, gpu_lens.cpu())
    assert_fbank_close(gpu.cpu().numpy(), cpu.numpy())
