"""Stateless transducer prediction network and joiner (icefall names and shapes)."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class Decoder(nn.Module):
    """Embedding of the last ``context_size`` tokens followed by a grouped Conv1d + ReLU.

    Negative ids mean "no token" and embed to zeros (used at utterance start).
    """

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int, context_size: int):
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        self.blank_id = blank_id
        self.context_size = context_size
        self.vocab_size = vocab_size
        if context_size > 1:
            self.conv = nn.Conv1d(decoder_dim, decoder_dim, context_size, groups=decoder_dim // 4, bias=False)
        else:
            self.conv = nn.Identity()

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """y: (N, U) ids -> (N, U, decoder_dim). ``need_pad=False`` expects U == context_size
        and returns one output per row."""
        y = y.to(torch.int64)
        emb = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1).to(self.embedding.weight.dtype)
        if self.context_size == 1:
            return emb
        emb = emb.permute(0, 2, 1)
        if need_pad:
            emb = F.pad(emb, (self.context_size - 1, 0))
        elif emb.size(-1) != self.context_size:
            raise ValueError(f"need_pad=False expects {self.context_size} context tokens, got {emb.size(-1)}")
        return F.relu(self.conv(emb).permute(0, 2, 1))


class Joiner(nn.Module):
    """``output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))``."""

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor, project_input: bool = True) -> torch.Tensor:
        if project_input:
            hidden = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        else:
            hidden = encoder_out + decoder_out
        return self.output_linear(torch.tanh(hidden))
