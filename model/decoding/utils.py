"""Small tensor helpers for the decoders."""

from __future__ import annotations

from typing import Tuple

import torch

NEG_INF = float("-inf")


def pack_by_mask(
    values: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pack the entries of each row where ``mask`` is true.

    Args:
      values, frames: (N, T) int64 tensors.
      mask: (N, T) bool.

    Returns ``(packed_values, packed_frames, lens)``; the packed tensors are
    (N, L) with L = max(lens), padded with -1 (L may be 0).
    """
    n, t = mask.shape
    lens = mask.sum(dim=1)
    l_max = int(lens.max().item()) if n > 0 and t > 0 else 0
    pos = torch.cumsum(mask.long(), dim=1) - 1
    # masked-out entries go to a dump column l_max, dropped afterwards
    pos = torch.where(mask, pos, torch.full_like(pos, l_max))
    out_v = torch.full((n, l_max + 1), -1, dtype=values.dtype, device=values.device)
    out_f = torch.full((n, l_max + 1), -1, dtype=frames.dtype, device=frames.device)
    out_v.scatter_(1, pos, torch.where(mask, values, torch.full_like(values, -1)))
    out_f.scatter_(1, pos, torch.where(mask, frames, torch.full_like(frames, -1)))
    return out_v[:, :l_max], out_f[:, :l_max], lens


def pad_token_lists(seqs, device=None, pad: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
    """List of int lists -> ((M, L) int64 padded with ``pad``, (M,) lens)."""
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    l_max = int(lens.max().item()) if len(seqs) else 0
    out = torch.full((len(seqs), l_max), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out.to(device), lens.to(device)
