"""Convolutional front end: (N, T, 80) fbank -> (N, (T-7)//2, encoder_dim[0])."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .layers import _SWOOSH_CONST, SWOOSH_SHIFT, BiasNorm, SwooshR, _DerivedCache, shifted_swoosh_core


def _conv_folding_constant(conv: nn.Conv2d, cache: _DerivedCache, const: float) -> torch.Tensor:
    """Bias of ``conv`` that absorbs an input offset of ``-const`` (exact when the conv has no padding)."""
    return cache.get((conv.weight, conv.bias), lambda: conv.bias - const * conv.weight.sum(dim=(1, 2, 3)))


class ConvNeXt(nn.Module):
    """Residual ConvNeXt block over (N, C, time, freq): depthwise 7x7, 1x1 up, SwooshL, 1x1 down."""

    def __init__(self, channels: int, hidden_ratio: int = 3, kernel_size: tuple[int, int] = (7, 7)):
        super().__init__()
        self.padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        hidden = channels * hidden_ratio
        self.depthwise_conv = nn.Conv2d(channels, channels, kernel_size, groups=channels, padding=self.padding)
        self.pointwise_conv1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.pointwise_conv2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self._pw2_bias = _DerivedCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # SwooshL's shift goes into pointwise_conv1's bias, its constant into pointwise_conv2's (1x1: exact)
        pw1, pw2 = self.pointwise_conv1, self.pointwise_conv2
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN's depthwise kernel is 2x slower in bfloat16 than in float32 on CPU
            with torch.autocast("cpu", enabled=False):
                d = self.depthwise_conv(x.float())
        else:
            d = self.depthwise_conv(x)
        y = F.conv2d(d, pw1.weight, pw1.bias - SWOOSH_SHIFT["SwooshL"])
        bias2 = _conv_folding_constant(pw2, self._pw2_bias, _SWOOSH_CONST["SwooshL"])
        out = F.conv2d(shifted_swoosh_core(y), pw2.weight, bias2)
        return out.add_(x) if not out.requires_grad else out + x


class Conv2dSubsampling(nn.Module):
    """Three convolutions (time: -2, /2, -2; freq: /4) + ConvNeXt + Linear + BiasNorm.

    The ``conv`` Sequential keeps icefall's indices (0, 4, 7 hold the convolutions)
    so checkpoint keys match; the training-only gradient tools at 1, 2, 5, 8 are
    identities. Padded input frames are not masked here (as in the reference):
    the last valid output frames see some padding, which is why batches are
    padded with log(1e-10), the value the models were trained with.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layer1_channels: int = 8,
        layer2_channels: int = 32,
        layer3_channels: int = 128,
    ):
        super().__init__()
        if in_channels < 7:
            raise ValueError(f"feature dim must be >= 7, got {in_channels}")
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, kernel_size=3, padding=(0, 1)),
            nn.Identity(),
            nn.Identity(),
            SwooshR(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2),
            nn.Identity(),
            SwooshR(),
            nn.Conv2d(layer2_channels, layer3_channels, kernel_size=3, stride=(1, 2)),
            nn.Identity(),
            SwooshR(),
        )
        self.convnext = ConvNeXt(layer3_channels)
        self.out_width = (((in_channels - 1) // 2) - 1) // 2
        self.layer3_channels = layer3_channels
        self.out = nn.Linear(self.out_width * layer3_channels, out_channels)
        self.out_norm = BiasNorm(out_channels)
        self._bias_caches = (_DerivedCache(), _DerivedCache())
        #: run the convolutions (not the output Linear) under autocast to this dtype; None: as
        #: called. Training on CPU sets bfloat16: the convolutions are half of a training step in
        #: float32 and 2-4x faster in bfloat16 on AMX (the depthwise one stays float32, above).
        self.conv_autocast_dtype: torch.dtype | None = None

    def _conv_stack(self, x: torch.Tensor) -> torch.Tensor:
        """``self.conv`` with each SwooshR's shift folded into the preceding conv's bias and
        its constant into the next conv's bias (those convs have no time/freq padding)."""
        c0, c4, c7 = self.conv[0], self.conv[4], self.conv[7]
        shift, const = SWOOSH_SHIFT["SwooshR"], _SWOOSH_CONST["SwooshR"]
        x = shifted_swoosh_core(F.conv2d(x, c0.weight, c0.bias - shift, padding=c0.padding))
        # channels-last from here on: oneDNN's depthwise and 1x1 convolutions (and their
        # backward) run 1.7-2.6x faster on CPU in that layout; the values are the same
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.conv2d(x, c4.weight, _conv_folding_constant(c4, self._bias_caches[0], const) - shift, stride=c4.stride)
        x = shifted_swoosh_core(x)
        x = F.conv2d(x, c7.weight, _conv_folding_constant(c7, self._bias_caches[1], const) - shift, stride=c7.stride)
        x = shifted_swoosh_core(x)
        return x.sub_(const) if not x.requires_grad else x - const

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, T, F) -> ((N, (T-7)//2, out_channels), lengths)."""
        if x.size(1) < 9:
            raise ValueError(f"need at least 9 feature frames, got {x.size(1)}")
        if self.conv_autocast_dtype is not None:
            with torch.autocast(x.device.type, dtype=self.conv_autocast_dtype):
                x = self.convnext(self._conv_stack(x.unsqueeze(1)))
            x = x.float()
        else:
            x = self.convnext(self._conv_stack(x.unsqueeze(1)))
        n, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(n, t, c * f))
        return self.out_norm(x), torch.div(x_lens - 7, 2, rounding_mode="floor")
