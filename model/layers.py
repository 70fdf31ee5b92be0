"""Small building blocks shared by the Zipformer encoder and its front end.

Only the inference-time behaviour of icefall's ``scaling.py`` pieces is kept:
``Balancer``, ``Whiten``, ``ScaleGrad`` and the dropout schedules change
gradients or act only in training, so they are not modelled at all (they own
no parameters, so checkpoints load without them).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

# SwooshR(x) = log(1 + e^(x-1)) - 0.08 x - 0.313261687; the constant makes SwooshR(0) == 0.
_SWOOSH_R_OFFSET = 0.313261687
_SWOOSH_L_OFFSET = 0.035


def swoosh_l(x: torch.Tensor) -> torch.Tensor:
    """SwooshL activation: ``softplus(x - 4) - 0.08 x - 0.035``."""
    return F.softplus(x - 4.0) - 0.08 * x - _SWOOSH_L_OFFSET


def swoosh_r(x: torch.Tensor) -> torch.Tensor:
    """SwooshR activation: ``softplus(x - 1) - 0.08 x - 0.313261687``."""
    return F.softplus(x - 1.0) - 0.08 * x - _SWOOSH_R_OFFSET


class SwooshL(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swoosh_l(x)


class SwooshR(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swoosh_r(x)


class ActivationLinear(nn.Linear):
    """``Linear(activation(x))``; parameter names ``weight``/``bias`` as in icefall's
    ``ActivationDropoutAndLinear`` (whose dropout is a training-only no-op here)."""

    def __init__(self, in_features: int, out_features: int, activation: str, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        if activation == "SwooshL":
            self._act = swoosh_l
        elif activation == "SwooshR":
            self._act = swoosh_r
        else:
            raise ValueError(f"unknown activation {activation!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._act(x), self.weight, self.bias)


class BiasNorm(nn.Module):
    """Zipformer's replacement for LayerNorm.

    ``y = x * exp(log_scale) / rms(x - bias)`` over the channel dim: the bias is
    removed only inside the RMS, never from the output.
    """

    def __init__(self, num_channels: int, channel_dim: int = -1):
        super().__init__()
        self.channel_dim = channel_dim
        self.log_scale = nn.Parameter(torch.tensor(0.0))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if self.channel_dim not in (-1, x.ndim - 1):
            shape = [1] * x.ndim
            shape[self.channel_dim] = -1
            bias = bias.reshape(shape)
        inv_rms = torch.rsqrt(torch.mean((x - bias) ** 2, dim=self.channel_dim, keepdim=True))
        return x * (inv_rms * self.log_scale.exp())


def make_pad_mask(lengths: torch.Tensor, max_len: int = 0) -> torch.Tensor:
    """Boolean mask ``(N, max_len)``, True at padded positions ``t >= lengths[n]``."""
    max_len = max(max_len, int(lengths.max().item()) if lengths.numel() else 0)
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)
