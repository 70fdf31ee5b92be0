"""Small tensor helpers for the decoders."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
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


def read_back(parent: torch.Tensor, token: torch.Tensor, lens: torch.Tensor,
              values: Sequence[torch.Tensor] = ()) -> Tuple[np.ndarray, np.ndarray, list]:
    """Token sequences of a beam search's final slots from its per-frame back-pointers.

    Args:
      parent: (T, N, K) the slot each slot came from at frame t (itself where nothing changed).
      token: (T, N, K) the token a slot emitted at frame t, or -1.
      lens: (N, K) number of tokens of each final slot.
      values: (T, N, K) tensors recorded beside ``token`` (e.g. the token's log-prob).

    Returns ``(tokens, frames, [value arrays])`` as (N, K, max len) NumPy arrays, tokens and
    frames padded with -1 and values with 0: one copy to the host, then a walk from the last
    frame to the first over all slots at once."""
    par, tok_all = parent.cpu().numpy(), token.cpu().numpy()
    vals = [v.float().cpu().numpy() for v in values]
    lens_np = lens.cpu().numpy().astype(np.int64)
    t_max, n, k = par.shape
    l_max = int(lens_np.max(initial=0))
    tokens = np.full((n, k, l_max), -1, dtype=np.int64)
    frames = np.full((n, k, l_max), -1, dtype=np.int64)
    outs = [np.zeros((n, k, l_max), dtype=np.float32) for _ in vals]
    rows = np.arange(n)[:, None]
    cur = np.broadcast_to(np.arange(k), (n, k)).copy()
    pos = lens_np - 1
    for t in range(t_max - 1, -1, -1):
        tok = tok_all[t][rows, cur]
        r, c = np.nonzero((tok >= 0) & (pos >= 0))
        if r.size:
            at = pos[r, c]
            tokens[r, c, at] = tok[r, c]
            frames[r, c, at] = t
            for out, v in zip(outs, vals):
                out[r, c, at] = v[t][r, cur[r, c]]
            pos[r, c] -= 1
        cur = par[t][rows, cur]
    return tokens, frames, outs
