"""The Zipformer encoder (Yao et al., "Zipformer: A faster and better encoder for
automatic speech recognition", ICLR 2024), inference only.

Module and parameter names follow icefall's ``zipformer/zipformer.py`` so that
public checkpoints load with ``strict=True``. Tensors inside the encoder are
time-major ``(T, N, C)`` like the reference, which keeps forward hooks on the
named submodules comparable with the reference's intermediate tensors.

Structure: a U-Net-like sequence of stacks; stack ``i`` runs at
``downsampling_factor[i]`` times the 50 Hz front-end rate with width
``encoder_dim[i]``. Each layer computes one set of relative-position attention
weights and reuses it three times (NonlinAttention with head 0 and two
SelfAttention value mixes), around three feed-forward and two convolution
modules, with learned per-channel bypasses.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .layers import ActivationLinear, BiasNorm

MASK_SCORE = -1000.0  # the reference fills masked attention scores with -1000, not -inf


class CompactRelPositionalEncoding(nn.Module):
    """Relative positional embedding compressed with log + atan before a Fourier basis.

    Row ``r`` of the output (shape ``(1, 2T-1, pos_dim)``) encodes the relative
    offset ``r - (T - 1)``, i.e. offsets run from ``-(T-1)`` to ``T-1``; the last
    channel is a constant 1 that acts as a bias.
    """

    def __init__(self, embed_dim: int, length_factor: float = 1.0):
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"pos_dim must be even, got {embed_dim}")
        self.embed_dim = embed_dim
        self.length_factor = length_factor
        self._cache: Optional[torch.Tensor] = None  # (2 * T_max - 1, embed_dim)

    def _table(self, num_frames: int, device: torch.device) -> torch.Tensor:
        cache = self._cache
        if cache is not None and cache.device == device and cache.size(0) >= 2 * num_frames - 1:
            return cache
        t_max = max(num_frames, 1000)
        offsets = torch.arange(-(t_max - 1), t_max, device=device).to(torch.float32).unsqueeze(1)
        freqs = 1 + torch.arange(self.embed_dim // 2, device=device)
        compression = self.embed_dim**0.5
        compressed = compression * offsets.sign() * ((offsets.abs() + compression).log() - math.log(compression))
        length_scale = self.length_factor * self.embed_dim / (2.0 * math.pi)
        angle = (compressed / length_scale).atan()
        table = torch.zeros(offsets.size(0), self.embed_dim, device=device)
        table[:, 0::2] = (angle * freqs).cos()
        table[:, 1::2] = (angle * freqs).sin()
        table[:, -1] = 1.0
        self._cache = table
        return table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (T, N, C) -> (1, 2T-1, embed_dim) in x's dtype."""
        num_frames = x.size(0)
        table = self._table(num_frames, x.device)
        center = table.size(0) // 2
        return table[center - num_frames + 1 : center + num_frames].unsqueeze(0).to(x.dtype)


def _rel_shift(pos_scores: torch.Tensor) -> torch.Tensor:
    """(H, N, T, 2T-1) scores per relative offset -> (H, N, T, T) per key position.

    ``out[..., i, j] = pos_scores[..., i, (T - 1) - i + j]``: offset ``j - i``.
    Done as a strided view (no gather) on the contiguous matmul result.
    """
    h, n, t, width = pos_scores.shape
    pos_scores = pos_scores.contiguous()
    s0, s1, s2, s3 = pos_scores.stride()
    return pos_scores.as_strided((h, n, t, t), (s0, s1, s2 - s3, s3), storage_offset=pos_scores.storage_offset() + s3 * (t - 1))


class RelPositionMultiheadAttentionWeights(nn.Module):
    """Attention weights ``(H, N, T, T)`` from content (q.k) plus position (p.pos) scores.

    No 1/sqrt(d) factor: the trained projections absorb it.
    """

    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int, pos_head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.query_head_dim = query_head_dim
        self.pos_head_dim = pos_head_dim
        self.in_proj = nn.Linear(embed_dim, (2 * query_head_dim + pos_head_dim) * num_heads)
        self.linear_pos = nn.Linear(pos_dim, num_heads * pos_head_dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        t, n, _ = x.shape
        h, qd, pd = self.num_heads, self.query_head_dim, self.pos_head_dim
        proj = self.in_proj(x)
        q = proj[..., : h * qd].reshape(t, n, h, qd).permute(2, 1, 0, 3)
        k = proj[..., h * qd : 2 * h * qd].reshape(t, n, h, qd).permute(2, 1, 3, 0)
        p = proj[..., 2 * h * qd :].reshape(t, n, h, pd).permute(2, 1, 0, 3)
        scores = torch.matmul(q, k)

        pos = self.linear_pos(pos_emb)  # (1, 2T-1, H*pd)
        pos = pos.reshape(-1, 2 * t - 1, h, pd).permute(2, 0, 3, 1)  # (H, 1, pd, 2T-1)
        scores = scores + _rel_shift(torch.matmul(p, pos))

        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, MASK_SCORE)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask.unsqueeze(1), MASK_SCORE)
        return scores.softmax(dim=-1)


class SelfAttention(nn.Module):
    """Mixes projected values with precomputed attention weights."""

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int):
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim)
        self.out_proj = nn.Linear(num_heads * value_head_dim, embed_dim)

    def forward(self, x: torch.Tensor, attn_weights: torch.Tensor) -> torch.Tensor:
        t, n, _ = x.shape
        h = attn_weights.size(0)
        v = self.in_proj(x).reshape(t, n, h, -1).permute(2, 1, 0, 3)
        out = torch.matmul(attn_weights, v)  # (H, N, T, dv)
        return self.out_proj(out.permute(2, 1, 0, 3).reshape(t, n, -1))


class FeedforwardModule(nn.Module):
    def __init__(self, embed_dim: int, feedforward_dim: int):
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        self.out_proj = ActivationLinear(feedforward_dim, embed_dim, activation="SwooshL")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.linear(x, self.in_proj.weight, self.in_proj.bias - self.out_proj.shift)
        return self.out_proj.forward_shifted(hidden)


class NonlinAttention(nn.Module):
    """``out_proj((attn @ (x * tanh(s))) * y)`` with (s, x, y) from one projection."""

    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, hidden_channels * 3)
        self.out_proj = nn.Linear(hidden_channels, channels)

    def forward(self, x: torch.Tensor, attn_weights: torch.Tensor) -> torch.Tensor:
        t, n, _ = x.shape
        s, x, y = self.in_proj(x).chunk(3, dim=-1)
        x = x * torch.tanh(s)
        h = attn_weights.size(0)
        x = torch.matmul(attn_weights, x.reshape(t, n, h, -1).permute(2, 1, 0, 3))
        x = x.permute(2, 1, 0, 3).reshape(t, n, -1)
        return self.out_proj(x * y)


class ChunkCausalDepthwiseConv1d(nn.Module):
    """Depthwise conv of causal models: a causal half-kernel conv over the whole
    sequence plus a full-kernel conv inside each chunk, scaled near chunk edges.
    With ``chunk_size < 0`` the whole sequence is one chunk."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.causal_conv = nn.Conv1d(channels, channels, (kernel_size + 1) // 2, groups=channels)
        self.chunkwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=kernel_size // 2)
        self.chunkwise_conv_scale = nn.Parameter(torch.zeros(2, channels, kernel_size))

    def _edge_scale(self, chunk_size: int) -> torch.Tensor:
        left, right = self.chunkwise_conv_scale[0], self.chunkwise_conv_scale[1]
        if chunk_size < self.kernel_size:
            left, right = left[:, :chunk_size], right[:, -chunk_size:]
        else:
            pad = left.new_zeros(left.size(0), chunk_size - self.kernel_size)
            left, right = torch.cat((left, pad), dim=-1), torch.cat((pad, right), dim=-1)
        return 1.0 + left + right

    def forward(self, x: torch.Tensor, chunk_size: int = -1) -> torch.Tensor:
        n, c, t = x.shape
        left_pad = self.kernel_size // 2
        if chunk_size < 0 or chunk_size > t:
            chunk_size = t
        right_pad = -t % chunk_size
        x = F.pad(x, (left_pad, right_pad))
        causal = self.causal_conv(x[..., : left_pad + t])
        chunks = x[..., left_pad:]
        num_chunks = chunks.size(2) // chunk_size
        chunks = chunks.reshape(n, c, num_chunks, chunk_size).permute(0, 2, 1, 3).reshape(n * num_chunks, c, chunk_size)
        chunks = self.chunkwise_conv(chunks) * self._edge_scale(chunk_size)
        chunks = chunks.reshape(n, num_chunks, c, chunk_size).permute(0, 2, 1, 3).reshape(n, c, -1)
        return chunks[..., :t] + causal


class ConvolutionModule(nn.Module):
    """GLU-style gate, depthwise conv over time (padding zeroed first), SwooshR + Linear."""

    def __init__(self, channels: int, kernel_size: int, causal: bool = False):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"cnn_module_kernel must be odd, got {kernel_size}")
        self.causal = causal
        self.in_proj = nn.Linear(channels, 2 * channels)
        if causal:
            self.depthwise_conv = ChunkCausalDepthwiseConv1d(channels, kernel_size)
        else:
            self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, padding=kernel_size // 2)
        self.out_proj = ActivationLinear(channels, channels, activation="SwooshR")

    def forward(
        self, x: torch.Tensor, src_key_padding_mask: Optional[torch.Tensor] = None, chunk_size: int = -1
    ) -> torch.Tensor:
        x = F.glu(self.in_proj(x), dim=-1).permute(1, 2, 0)  # x * sigmoid(gate), as (N, C, T)
        if src_key_padding_mask is not None:
            x = x.masked_fill(src_key_padding_mask.unsqueeze(1), 0.0)
        shift = self.out_proj.shift
        if self.causal:
            x = self.depthwise_conv(x, chunk_size=chunk_size) - shift
        else:
            conv = self.depthwise_conv
            x = F.conv1d(x, conv.weight, conv.bias - shift, padding=conv.padding, groups=conv.groups)
        return self.out_proj.forward_shifted(x.permute(2, 0, 1))


class BypassModule(nn.Module):
    """``src_orig + (src - src_orig) * bypass_scale``, a learned per-channel residual mix."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))

    def forward(self, src_orig: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        # under autocast the two inputs can differ in dtype (bf16 branch, fp32 residual)
        dtype = torch.promote_types(src_orig.dtype, src.dtype)
        return torch.lerp(src_orig.to(dtype), src.to(dtype), self.bypass_scale.to(dtype))


class ZipformerEncoderLayer(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        value_head_dim: int,
        feedforward_dim: int,
        cnn_module_kernel: int = 31,
        causal: bool = False,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.bypass = BypassModule(embed_dim)
        self.bypass_mid = BypassModule(embed_dim)
        self.self_attn_weights = RelPositionMultiheadAttentionWeights(
            embed_dim, pos_dim, num_heads, query_head_dim, pos_head_dim
        )
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, (feedforward_dim * 3) // 4)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim)
        self.feed_forward3 = FeedforwardModule(embed_dim, (feedforward_dim * 5) // 4)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        # Present in icefall checkpoints but never read by the layer's forward.
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.norm = BiasNorm(embed_dim)

    def forward(
        self,
        src: torch.Tensor,
        pos_emb: torch.Tensor,
        chunk_size: int = -1,
        attn_mask: Optional[torch.Tensor] = None,
        src_key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        src_orig = src
        weights = self.self_attn_weights(src, pos_emb=pos_emb, key_padding_mask=src_key_padding_mask, attn_mask=attn_mask)
        src = src + self.feed_forward1(src)
        src = src + self.nonlin_attention(src, weights[0:1])
        src = src + self.self_attn1(src, weights)
        src = src + self.conv_module1(src, src_key_padding_mask=src_key_padding_mask, chunk_size=chunk_size)
        src = src + self.feed_forward2(src)
        src = self.bypass_mid(src_orig, src)
        src = src + self.self_attn2(src, weights)
        src = src + self.conv_module2(src, src_key_padding_mask=src_key_padding_mask, chunk_size=chunk_size)
        src = src + self.feed_forward3(src)
        src = self.norm(src)
        return self.bypass(src_orig, src)


class ZipformerEncoder(nn.Module):
    """A stack of identical-shape layers sharing one positional embedding."""

    def __init__(self, layers: Sequence[ZipformerEncoderLayer], pos_dim: int):
        super().__init__()
        self.encoder_pos = CompactRelPositionalEncoding(pos_dim)
        self.layers = nn.ModuleList(layers)
        self.num_layers = len(self.layers)

    def forward(
        self,
        src: torch.Tensor,
        chunk_size: int = -1,
        attn_mask: Optional[torch.Tensor] = None,
        src_key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        pos_emb = self.encoder_pos(src)
        for layer in self.layers:
            src = layer(src, pos_emb, chunk_size=chunk_size, attn_mask=attn_mask, src_key_padding_mask=src_key_padding_mask)
        return src


class SimpleDownsample(nn.Module):
    """Reduce time by ``downsample`` with softmax(bias)-weighted averages; the last
    frame is repeated to fill a final partial group."""

    def __init__(self, downsample: int):
        super().__init__()
        self.downsample = downsample
        self.bias = nn.Parameter(torch.zeros(downsample))

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        t, n, c = src.shape
        ds = self.downsample
        t_out = (t + ds - 1) // ds
        pad = t_out * ds - t
        if pad:
            src = torch.cat((src, src[-1:].expand(pad, n, c)), dim=0)
        weights = self.bias.softmax(dim=0).to(src.dtype)
        return torch.einsum("tdnc,d->tnc", src.reshape(t_out, ds, n, c), weights)


class SimpleUpsample(nn.Module):
    """Repeat each frame ``upsample`` times."""

    def __init__(self, upsample: int):
        super().__init__()
        self.upsample = upsample

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(src, self.upsample, dim=0)


class DownsampledZipformerEncoder(nn.Module):
    """Run a ZipformerEncoder at 1/ds of the input rate and blend the upsampled result back."""

    def __init__(self, encoder: ZipformerEncoder, dim: int, downsample: int):
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = SimpleDownsample(downsample)
        self.encoder = encoder
        self.num_layers = encoder.num_layers
        self.upsample = SimpleUpsample(downsample)
        self.out_combiner = BypassModule(dim)

    def forward(
        self,
        src: torch.Tensor,
        chunk_size: int = -1,
        attn_mask: Optional[torch.Tensor] = None,
        src_key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        ds = self.downsample_factor
        out = self.encoder(
            self.downsample(src),
            chunk_size=chunk_size // ds,
            attn_mask=None if attn_mask is None else attn_mask[::ds, ::ds],
            src_key_padding_mask=src_key_padding_mask,
        )
        out = self.upsample(out)[: src.size(0)]
        return self.out_combiner(src, out)


def _convert_num_channels(x: torch.Tensor, num_channels: int) -> torch.Tensor:
    """Truncate or zero-pad the channel (last) dim to ``num_channels``."""
    have = x.size(-1)
    if num_channels <= have:
        return x[..., :num_channels]
    return F.pad(x, (0, num_channels - have))


class Zipformer(nn.Module):
    """The stacks plus the output combination and final 2x downsampling.

    All per-stack arguments are tuples of equal length (one entry per stack).
    ``chunk_size`` / ``left_context_frames`` only matter for causal models; at
    inference the first entry of each is used (``-1``: full context).
    """

    def __init__(
        self,
        output_downsampling_factor: int = 2,
        downsampling_factor: Sequence[int] = (2, 4),
        encoder_dim: Sequence[int] = (384, 384),
        num_encoder_layers: Sequence[int] = (4, 4),
        encoder_unmasked_dim: Sequence[int] = (256, 256),
        query_head_dim: Sequence[int] = (24, 24),
        pos_head_dim: Sequence[int] = (4, 4),
        value_head_dim: Sequence[int] = (12, 12),
        num_heads: Sequence[int] = (8, 8),
        feedforward_dim: Sequence[int] = (1536, 1536),
        cnn_module_kernel: Sequence[int] = (31, 31),
        pos_dim: int = 192,
        causal: bool = False,
        chunk_size: Sequence[int] = (-1,),
        left_context_frames: Sequence[int] = (-1,),
    ):
        super().__init__()
        if output_downsampling_factor != 2:
            raise ValueError("only output_downsampling_factor=2 is supported (as in the reference)")
        num_stacks = len(downsampling_factor)

        def per_stack(name: str, value: Sequence[int]) -> tuple[int, ...]:
            value = tuple(value)
            if len(value) == 1:
                value = value * num_stacks
            if len(value) != num_stacks:
                raise ValueError(f"{name} has {len(value)} entries, expected {num_stacks} (one per stack)")
            return value

        self.output_downsampling_factor = output_downsampling_factor
        self.downsampling_factor = tuple(downsampling_factor)
        self.encoder_dim = encoder_dim = per_stack("encoder_dim", encoder_dim)
        self.encoder_unmasked_dim = per_stack("encoder_unmasked_dim", encoder_unmasked_dim)
        self.num_encoder_layers = num_encoder_layers = per_stack("num_encoder_layers", num_encoder_layers)
        self.query_head_dim = query_head_dim = per_stack("query_head_dim", query_head_dim)
        self.pos_head_dim = pos_head_dim = per_stack("pos_head_dim", pos_head_dim)
        self.value_head_dim = value_head_dim = per_stack("value_head_dim", value_head_dim)
        self.num_heads = num_heads = per_stack("num_heads", num_heads)
        self.feedforward_dim = feedforward_dim = per_stack("feedforward_dim", feedforward_dim)
        self.cnn_module_kernel = cnn_module_kernel = per_stack("cnn_module_kernel", cnn_module_kernel)
        self.causal = causal
        self.chunk_size = tuple(chunk_size)
        self.left_context_frames = tuple(left_context_frames)
        for u, d in zip(self.encoder_unmasked_dim, encoder_dim):
            if u > d:
                raise ValueError(f"encoder_unmasked_dim {u} > encoder_dim {d}")

        stacks = []
        for i in range(num_stacks):
            layers = [
                ZipformerEncoderLayer(
                    embed_dim=encoder_dim[i],
                    pos_dim=pos_dim,
                    num_heads=num_heads[i],
                    query_head_dim=query_head_dim[i],
                    pos_head_dim=pos_head_dim[i],
                    value_head_dim=value_head_dim[i],
                    feedforward_dim=feedforward_dim[i],
                    cnn_module_kernel=cnn_module_kernel[i],
                    causal=causal,
                )
                for _ in range(num_encoder_layers[i])
            ]
            stack: nn.Module = ZipformerEncoder(layers, pos_dim=pos_dim)
            if self.downsampling_factor[i] != 1:
                stack = DownsampledZipformerEncoder(stack, dim=encoder_dim[i], downsample=self.downsampling_factor[i])
            stacks.append(stack)
        self.encoders = nn.ModuleList(stacks)
        self.downsample_output = SimpleDownsample(output_downsampling_factor)

    def _chunk_attn_mask(self, num_frames: int, device: torch.device) -> tuple[int, Optional[torch.Tensor]]:
        """Chunked-attention mask of causal models (True = masked); None for full context."""
        chunk_size = self.chunk_size[0] if self.causal else -1
        if chunk_size <= 0:
            return -1, None
        left_frames = self.left_context_frames[0]
        left_chunks = max(left_frames // chunk_size, 1) if left_frames >= 0 else 1_000_000
        c = torch.arange(num_frames, device=device) // chunk_size
        mask = (c.unsqueeze(0) > c.unsqueeze(1)) | (c.unsqueeze(0) < c.unsqueeze(1) - left_chunks)
        return chunk_size, mask

    def _full_dim_output(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate channel ranges, each taken from the latest stack that has it."""
        pieces = [outputs[-1]]
        cur = self.encoder_dim[-1]
        for i in range(len(outputs) - 2, -1, -1):
            d = self.encoder_dim[i]
            if d > cur:
                pieces.append(outputs[i][..., cur:d])
                cur = d
        return torch.cat(pieces, dim=-1)

    def forward(
        self, x: torch.Tensor, x_lens: torch.Tensor, src_key_padding_mask: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, N, encoder_dim[0]) -> ((ceil(T/2), N, max(encoder_dim)), (x_lens + 1) // 2)."""
        chunk_size, attn_mask = self._chunk_attn_mask(x.size(0), x.device)
        outputs = []
        for i, stack in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            x = stack(
                _convert_num_channels(x, self.encoder_dim[i]),
                chunk_size=chunk_size,
                attn_mask=attn_mask,
                src_key_padding_mask=None if src_key_padding_mask is None else src_key_padding_mask[..., ::ds],
            )
            outputs.append(x)
        x = self.downsample_output(self._full_dim_output(outputs))
        return x, torch.div(x_lens + 1, 2, rounding_mode="floor")
