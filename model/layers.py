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


# Swoosh(v) = softplus(v - shift) - 0.08 v - offset. With v' = v - shift (folded into
# the bias of whatever produced v) this is softplus(v') - 0.08 v' - (0.08 shift + offset),
# and that constant folds into the bias of the Linear that consumes it: two memory
# passes over the activation instead of five.
SWOOSH_SHIFT = {"SwooshL": 4.0, "SwooshR": 1.0}
_SWOOSH_CONST = {"SwooshL": 0.08 * 4.0 + _SWOOSH_L_OFFSET, "SwooshR": 0.08 * 1.0 + _SWOOSH_R_OFFSET}


class _ShiftedSwooshCore(torch.autograd.Function):
    """Training path of :func:`shifted_swoosh_core`: keeps only the input for backward and
    computes the derivative ``sigmoid(v') - 0.08`` there (autograd's own graph of
    softplus / mul / sub costs twice the memory passes)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v)
        return F.softplus(v).add_(v, alpha=-0.08)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (v,) = ctx.saved_tensors
        return torch.sigmoid(v).sub_(0.08).mul_(grad)


def shifted_swoosh_core(v_shifted: torch.Tensor) -> torch.Tensor:
    """``softplus(v') - 0.08 v'``: Swoosh of ``v' + shift`` without its constant."""
    if v_shifted.requires_grad and torch.is_grad_enabled():
        return _ShiftedSwooshCore.apply(v_shifted)
    return F.softplus(v_shifted).add_(v_shifted, alpha=-0.08)


class _DerivedCache:
    """Caches tensors derived from parameters; recomputed when any source tensor is
    replaced or modified in place (optimizer steps, load_state_dict, .to())."""

    def __init__(self) -> None:
        self._key: tuple = ()
        self._value: torch.Tensor | None = None

    def get(self, sources: tuple[torch.Tensor, ...], compute) -> torch.Tensor:
        if torch.is_grad_enabled():
            return compute()  # training: keep it differentiable, never cache
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        if key != self._key or self._value is None:
            self._value, self._key = compute(), key
        return self._value


class ActivationLinear(nn.Linear):
    """``Linear(activation(x))``; parameter names ``weight``/``bias`` as in icefall's
    ``ActivationDropoutAndLinear`` (whose dropout is a training-only no-op here).

    ``forward_shifted(v')`` takes the pre-activation already shifted by
    ``SWOOSH_SHIFT[activation]`` (the producer folds the shift into its bias) and
    is the fast path used by the encoder.
    """

    def __init__(self, in_features: int, out_features: int, activation: str, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        if activation not in SWOOSH_SHIFT:
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = activation
        self.shift = SWOOSH_SHIFT[activation]
        self._bias_cache = _DerivedCache()

    def _folded_bias(self) -> torch.Tensor:
        const = _SWOOSH_CONST[self.activation]
        bias = self.bias if self.bias is not None else self.weight.new_zeros(self.out_features)
        return self._bias_cache.get((self.weight, bias), lambda: bias - const * self.weight.sum(dim=1))

    def forward_shifted(self, v_shifted: torch.Tensor) -> torch.Tensor:
        return F.linear(shifted_swoosh_core(v_shifted), self.weight, self._folded_bias())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_shifted(x - self.shift)


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
        centred = x - bias
        inv_rms = torch.rsqrt(torch.mean(centred.square_() if not centred.requires_grad else centred.square(), dim=self.channel_dim, keepdim=True))
        return x * (inv_rms * self.log_scale.exp())


def make_pad_mask(lengths: torch.Tensor, max_len: int = 0) -> torch.Tensor:
    """Boolean mask ``(N, max_len)``, True at padded positions ``t >= lengths[n]``."""
    max_len = max(max_len, int(lengths.max().item()) if lengths.numel() else 0)
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)
