"""Batched CTC Viterbi (best path) alignment of given label sequences.

Used to put times on the tokens of CTC beam-search / rescoring results: the
chosen label sequence is aligned against the CTC log-posteriors and each token
gets the first (and last) frame of its segment in the single best alignment.
"""

from __future__ import annotations

from typing import Optional

import torch

from .types import AlignmentResult


@torch.inference_mode()
def ctc_viterbi_align(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    tokens: torch.Tensor,
    token_lens: torch.Tensor,
    utt_index: Optional[torch.Tensor] = None,
    blank_id: int = 0,
) -> AlignmentResult:
    """Best CTC alignment of M label sequences, all at once.

    Args:
      log_probs: (N, T, V) CTC log-posteriors.
      lens: (N,) valid frames per utterance.
      tokens: (M, L) label sequences (no blanks), padded with anything >= -1.
      token_lens: (M,) lengths.
      utt_index: (M,) utterance of each sequence; default ``arange(M)`` (M == N).
      blank_id: blank id.

    Returns an :class:`AlignmentResult`.  Sequences that cannot be aligned
    (too long for the utterance) get ``path_scores == -inf`` and frames -1.
    The loop over frames is the only Python loop; every step is a tensor op
    over all sequences and states.
    """
    device = log_probs.device
    m, l_max = tokens.shape
    if utt_index is None:
        utt_index = torch.arange(m, device=device)
    utt_index = utt_index.to(device)
    tokens = tokens.to(device)
    token_lens = token_lens.to(device)
    t_len = lens.to(device)[utt_index]  # (M,)
    t_max = int(t_len.max().item()) if m > 0 else 0
    dtype = log_probs.dtype
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=device)

    s_max = 2 * l_max + 1
    s_idx = torch.arange(s_max, device=device)
    tok_idx = ((s_idx - 1) // 2).clamp(min=0, max=max(l_max - 1, 0))
    if l_max > 0:
        ext = torch.where((s_idx % 2 == 1).unsqueeze(0), tokens[:, tok_idx], torch.full((m, s_max), blank_id, device=device))
    else:
        ext = torch.full((m, s_max), blank_id, dtype=torch.long, device=device)
    ext = ext.clamp(min=0)
    s_valid = s_idx.unsqueeze(0) < (2 * token_lens + 1).unsqueeze(1)  # (M, S)
    prev2 = torch.nn.functional.pad(ext[:, :-2], (2, 0), value=-1) if s_max > 2 else torch.full_like(ext, -1)
    can_skip = (s_idx.unsqueeze(0) % 2 == 1) & (ext != prev2) & (s_idx.unsqueeze(0) >= 2)

    bp = torch.zeros((m, max(t_max, 1), s_max), dtype=torch.uint8, device=device)
    alpha = torch.full((m, s_max), float("-inf"), dtype=dtype, device=device)
    for t in range(t_max):
        lp_t = log_probs[utt_index, min(t, log_probs.shape[1] - 1)]  # (M, V)
        em = torch.where(s_valid, lp_t.gather(1, ext), neg_inf)
        if t == 0:
            init = s_idx.unsqueeze(0) < 2
            new_alpha = torch.where(init, em, neg_inf)
        else:
            a1 = torch.nn.functional.pad(alpha[:, :-1], (1, 0), value=float("-inf"))
            a2 = torch.nn.functional.pad(alpha[:, :-2], (2, 0), value=float("-inf")) if s_max > 2 else torch.full_like(alpha, float("-inf"))
            a2 = torch.where(can_skip, a2, neg_inf)
            stacked = torch.stack([alpha, a1, a2], dim=-1)  # (M, S, 3)
            best, arg = stacked.max(dim=-1)
            bp[:, t] = arg.to(torch.uint8)
            new_alpha = best + em
        act = (t < t_len).unsqueeze(1)
        alpha = torch.where(act, new_alpha, alpha)

    # end in the last blank (2L) or the last token (2L-1)
    end_blank = 2 * token_lens
    end_tok = (2 * token_lens - 1).clamp(min=0)
    sc_blank = alpha.gather(1, end_blank.unsqueeze(1)).squeeze(1)
    sc_tok = torch.where(token_lens > 0, alpha.gather(1, end_tok.unsqueeze(1)).squeeze(1), neg_inf)
    use_tok = sc_tok > sc_blank
    final_state = torch.where(use_tok, end_tok, end_blank)
    path_scores = torch.maximum(sc_blank, sc_tok)
    empty_utt = t_len == 0
    path_scores = torch.where(
        empty_utt, torch.where(token_lens == 0, torch.zeros_like(path_scores), neg_inf), path_scores
    )

    # backtrack
    path = torch.zeros((m, max(t_max, 1)), dtype=torch.long, device=device)
    cur = final_state.clone()
    for t in range(t_max - 1, -1, -1):
        cur = torch.where(t == t_len - 1, final_state, cur)
        inside = t < t_len
        path[:, t] = torch.where(inside, cur, torch.zeros_like(cur))
        if t > 0:
            step = bp[:, t].gather(1, cur.unsqueeze(1)).squeeze(1).long()
            cur = torch.where(inside, cur - step, cur)
    path = path[:, :t_max]

    t_idx = torch.arange(t_max, device=device)
    in_frame = t_idx.unsqueeze(0) < t_len.unsqueeze(1)
    on_token = in_frame & (path % 2 == 1)
    tok_of_frame = torch.where(on_token, (path - 1) // 2, torch.full_like(path, l_max))  # dump col l_max
    frames_first = torch.full((m, l_max + 1), t_max, dtype=torch.long, device=device)
    frames_first.scatter_reduce_(1, tok_of_frame, t_idx.expand(m, t_max).clone(), reduce="amin", include_self=True)
    frames_last = torch.full((m, l_max + 1), -1, dtype=torch.long, device=device)
    frames_last.scatter_reduce_(1, tok_of_frame, t_idx.expand(m, t_max).clone(), reduce="amax", include_self=True)
    label_at = ext.gather(1, path) if t_max > 0 else torch.zeros((m, 0), dtype=torch.long, device=device)
    lp_path = log_probs[utt_index.unsqueeze(1), t_idx.clamp(max=max(log_probs.shape[1] - 1, 0)).unsqueeze(0), label_at]
    tok_lp = torch.full((m, l_max + 1), float("-inf"), dtype=dtype, device=device)
    tok_lp.scatter_reduce_(
        1, tok_of_frame, torch.where(on_token, lp_path, neg_inf), reduce="amax", include_self=True
    )

    ok = (path_scores > float("-inf")).unsqueeze(1)
    tok_valid = (torch.arange(l_max, device=device).unsqueeze(0) < token_lens.unsqueeze(1)) & ok
    frames_first = torch.where(tok_valid, frames_first[:, :l_max], torch.full_like(frames_first[:, :l_max], -1))
    frames_last = torch.where(tok_valid, frames_last[:, :l_max], torch.full_like(frames_last[:, :l_max], -1))
    tok_lp = torch.where(tok_valid, tok_lp[:, :l_max], torch.zeros_like(tok_lp[:, :l_max]))
    return AlignmentResult(
        frames=frames_first,
        end_frames=frames_last,
        token_log_probs=tok_lp,
        path_scores=path_scores,
    )


@torch.inference_mode()
def ctc_sequence_log_probs(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    tokens: torch.Tensor,
    token_lens: torch.Tensor,
    blank_id: int = 0,
) -> torch.Tensor:
    """(N,) total CTC log-prob ``log p(tokens | x)`` over all alignments
    (``-F.ctc_loss``, batched); -inf when a sequence cannot be aligned.

    ``tokens`` (N, L) may be padded with any value; entries past ``token_lens``
    are ignored.
    """
    n = tokens.shape[0]
    if tokens.shape[1] == 0:
        tokens = torch.zeros((n, 1), dtype=torch.long, device=tokens.device)
    targets = tokens.clamp(min=0)
    # padding must still be a valid non-blank id for ctc_loss
    filler = (blank_id + 1) % log_probs.shape[-1]
    pos = torch.arange(targets.shape[1], device=targets.device).unsqueeze(0)
    targets = torch.where(pos < token_lens.to(targets.device).unsqueeze(1), targets, torch.full_like(targets, filler))
    if log_probs.dtype not in (torch.float32, torch.float64):
        log_probs = log_probs.float()
    nll = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1),
        targets.to(log_probs.device),
        lens.to(log_probs.device),
        token_lens.to(log_probs.device),
        blank=blank_id,
        reduction="none",
        zero_infinity=False,
    )
    return -nll
