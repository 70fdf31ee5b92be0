"""Batched Kaldi-compatible 80-bin log-mel filterbank features.

These are the features icefall's Zipformer recipes train and decode with
(lhotse ``Fbank`` / kaldifeat / kaldi-native-fbank, same settings): 16 kHz,
25 ms Povey window, 10 ms shift, pre-emphasis 0.97, DC offset removed,
512-point FFT power spectrum, 80 mel bins from 20 Hz to Nyquist - 400 Hz,
no energy, no dither, ``snip_edges=False``, log floor ``FLT_EPSILON``.

The numerical work is lhotse's torch implementation
(:class:`lhotse.features.kaldi.layers.Wav2LogFilterBank`), so it runs on any
torch device. Batching is exact: with ``snip_edges=False`` Kaldi pads each
utterance by *reflecting its own edges*, which a zero-padded batch would get
wrong in the last frame(s) (lhotse's ``Fbank.extract_batch`` has that
problem). Here every utterance is first extended with its own Kaldi
reflection padding (one vectorised gather), the extended signals are stacked
and framed with ``snip_edges=True``; since a frame only sees its own 400
samples, each utterance's frames equal those computed for it alone.

Frame count (Kaldi ``NumFrames`` with ``snip_edges=False``, also lhotse's
``compute_num_frames_from_samples``)::

    num_frames = (num_samples + 80) // 160      # = floor(n / 160 + 1/2)

i.e. ``n / 160`` rounded half *up* (Python's ``round`` rounds half to even
and is off by one at e.g. 80 or 240 samples).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

__all__ = [
    "SAMPLE_RATE",
    "NUM_MEL_BINS",
    "PADDING_VALUE",
    "LOG_FLOOR",
    "FbankConfig",
    "FeatureExtractor",
    "num_frames",
]

SAMPLE_RATE: int = 16000
NUM_MEL_BINS: int = 80
#: Value of padded frames, as in icefall/lhotse collation: log(1e-10).
PADDING_VALUE: float = math.log(1e-10)
#: Value of a mel bin with zero energy: log(FLT_EPSILON) ~= -15.942.
LOG_FLOOR: float = math.log(float(np.finfo(np.float32).eps))

Waveform = Union[torch.Tensor, np.ndarray]


@dataclass(frozen=True)
class FbankConfig:
    """Settings of the filterbank; the defaults are the icefall ones.

    Only change them for a model trained with different features.
    """

    sample_rate: int = SAMPLE_RATE
    num_mel_bins: int = NUM_MEL_BINS
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    low_freq: float = 20.0
    high_freq: float = -400.0  # <= 0: offset from Nyquist
    preemph_coeff: float = 0.97
    remove_dc_offset: bool = True
    window_type: str = "povey"
    padding_value: float = PADDING_VALUE

    @property
    def window_size(self) -> int:
        """Frame length in samples (400 at 16 kHz)."""
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def window_shift(self) -> int:
        """Frame shift in samples (160 at 16 kHz)."""
        return int(self.sample_rate * self.frame_shift_ms / 1000)


def num_frames(num_samples: int, config: Optional[FbankConfig] = None) -> int:
    """Frames Kaldi makes from ``num_samples`` samples with ``snip_edges=False``.

    ``(num_samples + shift // 2) // shift``; 0 for fewer than ``shift // 2``
    samples.
    """
    shift = (config or FbankConfig()).window_shift
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return (num_samples + shift // 2) // shift


class FeatureExtractor(nn.Module):
    """Computes padded log-mel fbank batches on a given device.

    Example::

        fe = FeatureExtractor()
        feats, feat_lens = fe([wav_a, wav_b], device="cuda")
        # feats: (2, T_max, 80) float32, feat_lens: (2,) int64, both on cuda

    Waveforms must be mono, floating point, 16 kHz, nominally in [-1, 1]
    (resampling and channel selection are the caller's job).
    """

    def __init__(self, config: Optional[FbankConfig] = None) -> None:
        super().__init__()
        from lhotse.features.kaldi.layers import Wav2LogFilterBank

        self.config = config or FbankConfig()
        c = self.config
        with warnings.catch_warnings():
            # snip_edges=True is deliberate: edges are padded here, Kaldi-style.
            warnings.simplefilter("ignore")
            self.fbank = Wav2LogFilterBank(
                sampling_rate=c.sample_rate,
                frame_length=c.frame_length_ms / 1000,
                frame_shift=c.frame_shift_ms / 1000,
                round_to_power_of_two=True,
                remove_dc_offset=c.remove_dc_offset,
                preemph_coeff=c.preemph_coeff,
                window_type=c.window_type,
                dither=0.0,
                snip_edges=True,
                use_energy=False,
                use_fft_mag=False,
                low_freq=c.low_freq,
                high_freq=c.high_freq,
                num_filters=c.num_mel_bins,
                torchaudio_compatible_mel_scale=True,
            )
        self.fbank.eval()

    @property
    def device(self) -> torch.device:
        """Device the filterbank weights are on."""
        return next(self.fbank.parameters()).device

    def num_frames(self, num_samples: int) -> int:
        """See :func:`num_frames`."""
        return num_frames(num_samples, self.config)

    def forward(
        self,
        waveforms: Sequence[Waveform],
        device: Union[str, torch.device, None] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of a batch of waveforms.

        Args:
            waveforms: 1-D float waveforms (torch or numpy), any lengths.
            device: where to compute and return the result; defaults to
                :attr:`device`. The module moves itself there if needed.

        Returns:
            ``(feats, feat_lens)``: ``feats`` is ``(N, T_max, num_mel_bins)``
            float32 with rows ``t >= feat_lens[i]`` set to
            ``config.padding_value``; ``feat_lens`` is ``(N,)`` int64, each
            equal to :func:`num_frames` of that waveform's length.
        """
        dev = torch.device(device) if device is not None else self.device
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if self.device != dev:
            self.to(dev)
        c = self.config
        wavs = [_as_1d_float(w, i) for i, w in enumerate(waveforms)]
        n = len(wavs)
        lengths = [int(w.numel()) for w in wavs]
        frames = [self.num_frames(k) for k in lengths]
        t_max = max(frames, default=0)
        if t_max == 0:
            empty = torch.full((n, 0, c.num_mel_bins), c.padding_value, device=dev)
            return empty, torch.tensor(frames, dtype=torch.int64, device=dev)

        with torch.no_grad():
            flat, sizes = _to_device(wavs, lengths + frames, dev)
            lens, feat_lens = sizes[:n], sizes[n:]
            extended = self._reflect_extend(flat, lens, t_max)
            feats = self.fbank(extended)  # (N, t_max, bins)
            assert feats.shape[1] == t_max, (feats.shape, t_max)
            valid = torch.arange(t_max, device=dev)[None, :] < feat_lens[:, None]
            feats = feats.masked_fill(~valid[:, :, None], c.padding_value)
        return feats.to(torch.float32), feat_lens

    def _reflect_extend(self, flat: torch.Tensor, lens: torch.Tensor, t_max: int) -> torch.Tensor:
        """Stack each utterance with Kaldi's ``snip_edges=False`` reflection.

        ``lens``: each utterance's samples (int64, on ``flat``'s device). Row ``i``, column ``j``
        holds sample ``j - (window - shift) // 2`` of utterance ``i``, reflected into ``[0, n_i)``
        the way Kaldi's ``ExtractWindow`` does (``s < 0 -> -s - 1``, ``s >= n -> 2n - 1 - s``,
        repeated; this is periodic in ``2n``). Columns past an utterance's own last frame hold
        reflected samples too and are masked later.
        """
        dev = flat.device
        win, shift = self.config.window_size, self.config.window_shift
        total = (t_max - 1) * shift + win
        starts = torch.cumsum(lens, 0) - lens
        safe = lens.clamp(min=1)[:, None]
        pos = torch.arange(total, device=dev)[None, :] - (win - shift) // 2
        pos = torch.remainder(pos, 2 * safe)
        pos = torch.where(pos >= safe, 2 * safe - 1 - pos, pos)
        index = (pos + starts[:, None]).clamp(max=flat.numel() - 1)
        return flat[index]


def _to_device(wavs: list[torch.Tensor], sizes: list[int], dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's samples, concatenated, and ``sizes`` as int64, on ``dev``.

    For a GPU each is one copy from pinned host memory, asynchronous (``non_blocking``): the host
    goes on while it runs. Everything the features need on the device travels this way: a small
    ``torch.tensor(..., device=cuda)`` copies from pageable memory, which makes the host wait for
    the stream's earlier work (the big copy, or the previous batch still running) first."""
    if dev.type == "cuda" and all(w.device.type == "cpu" for w in wavs):
        host = torch.empty(sum(int(w.numel()) for w in wavs), dtype=torch.float32, pin_memory=True)
        torch.cat([w.to(torch.float32) for w in wavs], out=host)
        host_sizes = torch.tensor(sizes, dtype=torch.int64).pin_memory()
        return host.to(dev, non_blocking=True), host_sizes.to(dev, non_blocking=True)
    return torch.cat([w.to(dev, torch.float32) for w in wavs]), torch.tensor(sizes, dtype=torch.int64, device=dev)


def _as_1d_float(w: Waveform, i: int) -> torch.Tensor:
    """Validate one waveform and return it as a 1-D floating torch tensor."""
    t = torch.from_numpy(np.ascontiguousarray(w)) if isinstance(w, np.ndarray) else w
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"waveform {i}: expected torch.Tensor or np.ndarray, got {type(w)}")
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise ValueError(f"waveform {i}: expected a mono 1-D waveform, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(
            f"waveform {i}: expected floating samples in [-1, 1], got {t.dtype} "
            "(convert integer PCM first, e.g. int16 / 32768)"
        )
    return t
