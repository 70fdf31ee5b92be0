"""Convolutional front end: (N, T, 80) fbank -> (N, (T-7)//2, encoder_dim[0])."""

from __future__ import annotations

import torch
from torch import nn

from .layers import BiasNorm, SwooshR, swoosh_l


class ConvNeXt(nn.Module):
    """Residual ConvNeXt block over (N, C, time, freq): depthwise 7x7, 1x1 up, SwooshL, 1x1 down."""

    def __init__(self, channels: int, hidden_ratio: int = 3, kernel_size: tuple[int, int] = (7, 7)):
        super().__init__()
        self.padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        hidden = channels * hidden_ratio
        self.depthwise_conv = nn.Conv2d(channels, channels, kernel_size, groups=channels, padding=self.padding)
        self.pointwise_conv1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.pointwise_conv2 = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise_conv1(self.depthwise_conv(x))
        return x + self.pointwise_conv2(swoosh_l(y))


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

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, T, F) -> ((N, (T-7)//2, out_channels), lengths)."""
        if x.size(1) < 9:
            raise ValueError(f"need at least 9 feature frames, got {x.size(1)}")
        x = self.convnext(self.conv(x.unsqueeze(1)))
        n, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(n, t, c * f))
        return self.out_norm(x), torch.div(x_lens - 7, 2, rounding_mode="floor")
