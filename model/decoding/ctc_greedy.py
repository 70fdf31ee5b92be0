"""Batched CTC greedy search: per-frame argmax, merge repeats, drop blank."""

from __future__ import annotations

import torch

from .types import CtcGreedyResult
from .utils import pack_by_mask


@torch.inference_mode()
def ctc_greedy_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    blank_id: int = 0,
) -> CtcGreedyResult:
    """Greedy CTC decoding of a whole batch with tensor ops only.

    Args:
      log_probs: (N, T, V) CTC log-posteriors.
      lens: (N,) number of valid frames of each utterance.
      blank_id: the blank token.

    Returns a :class:`CtcGreedyResult`.  ``frames`` is the first frame of each
    emitted token (the start of its run of argmax frames).  The argmax path is
    the single most probable alignment, so it is also the Viterbi alignment of
    the label sequence it produces.
    """
    n, t_max, _ = log_probs.shape
    device = log_probs.device
    lens = lens.to(device)
    best_lp, best = log_probs.max(dim=-1)  # (N, T)
    frame_idx = torch.arange(t_max, device=device)
    valid = frame_idx.unsqueeze(0) < lens.unsqueeze(1)
    prev = torch.nn.functional.pad(best[:, :-1], (1, 0), value=-1)
    in_token = valid & (best != blank_id)
    start = in_token & (best != prev)  # first frame of a new token
    tokens, frames, out_lens = pack_by_mask(best, frame_idx.expand(n, t_max), start)

    # token posterior = max over the frames of its run (run ids from cumsum)
    run_id = torch.cumsum(start.long(), dim=1) - 1
    l_max = tokens.shape[1]
    tok_lp = torch.full((n, max(l_max, 1)), float("-inf"), dtype=log_probs.dtype, device=device)
    run_id = torch.where(in_token, run_id, torch.zeros_like(run_id)).clamp(min=0)
    src = torch.where(in_token, best_lp, torch.full_like(best_lp, float("-inf")))
    tok_lp.scatter_reduce_(1, run_id, src, reduce="amax", include_self=True)
    tok_lp = tok_lp[:, :l_max]
    tok_lp = torch.where(tokens >= 0, tok_lp, torch.zeros_like(tok_lp))

    path_scores = torch.where(valid, best_lp, torch.zeros_like(best_lp)).sum(dim=1)
    return CtcGreedyResult(
        tokens=tokens,
        lens=out_lens,
        frames=frames,
        token_log_probs=tok_lp,
        path_scores=path_scores,
    )
