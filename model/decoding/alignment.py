"""Batched CTC Viterbi (best path) alignment of given label sequences.

Used to put times on the tokens of CTC beam-search / rescoring results: the
chosen label sequence is aligned against the CTC log-posteriors and each token
gets the first (and last) frame of its segment in the single best alignment.
"""

from __future__ import annotations

from typing import Optional

import torch

from .frames import run_frames
from .types import AlignmentResult


@torch.inference_mode()
def ctc_viterbi_align(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    tokens: torch.Tensor,
    token_lens: torch.Tensor,
    utt_index: Optional[torch.Tensor] = None,
    blank_id: int = 0,
    frame_loop: Optional[str] = None,
) -> AlignmentResult:
    """Best CTC alignment of M label sequences, all at once.

    Args:
      log_probs: (N, T, V) CTC log-posteriors.
      lens: (N,) valid frames per utterance.
      tokens: (M, L) label sequences (no blanks), padded with anything >= -1.
      token_lens: (M,) lengths.
      utt_index: (M,) utterance of each sequence; default ``arange(M)`` (M == N).
      blank_id: blank id.
      frame_loop: how the frame loops run (:func:`model.decoding.frames.run_frames`; the
        results are the same in every mode).

    Returns an :class:`AlignmentResult`.  Sequences that cannot be aligned
    (too long for the utterance) get ``path_scores == -inf`` and frames -1.

    Per frame, six tensor operations on fixed shapes (26 before issue 32): the forward step is
    one add (the skip mask) over an ``unfold`` view of the three predecessor states, one ``max``,
    the copy of its back-pointers into a uint8 table and one add (the frame's emissions); the
    backtrack is one gather and one add. To make that possible everything per frame is
    prepared before the loops: the emissions of every frame and state are gathered at once,
    the states are held in reverse order (so a state's predecessors ``s``, ``s-1``, ``s-2`` are
    the consecutive entries ``j``, ``j+1``, ``j+2``), and every sequence's frames are shifted
    to end at the last frame: before a sequence's first frame it stays in a virtual start
    state whose recursion reproduces the first frame's initialisation exactly
    (``0 + emission``), so no per-frame masking of finished or not yet started sequences is
    needed and all backtracks start at the same frame. Both loops run through
    :func:`model.decoding.frames.run_frames` (CUDA graphs on a GPU).
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

    alpha, bp = _viterbi_forward(log_probs, utt_index, t_len, t_max, ext, s_valid, can_skip, frame_loop)

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
    path = _viterbi_backtrack(bp, final_state, t_len, t_max, s_max, frame_loop)

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


def _viterbi_forward(log_probs: torch.Tensor, utt_index: torch.Tensor, t_len: torch.Tensor, t_max: int,
                     ext: torch.Tensor, s_valid: torch.Tensor, can_skip: torch.Tensor,
                     frame_loop: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Viterbi recursion: (M, S) best log-prob of ending each sequence in each state after its
    last frame (-inf for sequences without frames), and (T, M, S) uint8 back-pointers (how many
    states back the best predecessor is) indexed by frame *shifted so that every sequence ends at
    frame ``t_max - 1``* and by reversed state (``S - 1 - s``)."""
    m, s_max = ext.shape
    device, dtype = log_probs.device, log_probs.dtype
    bp = torch.zeros((max(t_max, 1), m, s_max), dtype=torch.uint8, device=device)
    # emissions of every (shifted frame, sequence, reversed state); a sequence's frames before its
    # first one hold the virtual start (state 0 at 0, stays there) -- see ctc_viterbi_align
    shift = t_max - t_len  # (M,)
    frame = torch.arange(t_max, device=device).unsqueeze(1) - shift.unsqueeze(0)  # (T, M) original frame
    before = frame < 0
    frame = frame.clamp(min=0, max=max(log_probs.shape[1] - 1, 0))
    ext_r, valid_r = ext.flip(1), s_valid.flip(1)
    em = log_probs[utt_index.view(1, m, 1), frame.unsqueeze(2), ext_r.unsqueeze(0)]  # (T, M, S)
    em = torch.where(valid_r.unsqueeze(0), em, float("-inf"))
    start = torch.full((s_max,), float("-inf"), dtype=dtype, device=device)
    start[-1] = 0.0  # state 0, reversed
    em = torch.where(before.unsqueeze(2), start, em).contiguous()
    # reversed alpha with two -inf columns after it: entries j, j+1, j+2 are states s, s-1, s-2
    alpha = torch.full((m, s_max + 2), float("-inf"), dtype=dtype, device=device)
    alpha[:, s_max - 1] = 0.0
    windows = alpha.unfold(1, 3, 1)  # (M, S, 3) view: (stay, advance, skip) predecessors
    skip_mask = torch.zeros((m, s_max, 3), dtype=dtype, device=device)
    skip_mask[:, :, 2] = torch.where(can_skip.flip(1), 0.0, float("-inf"))
    best = torch.empty((m, s_max), dtype=dtype, device=device)
    arg = torch.empty((m, s_max), dtype=torch.long, device=device)

    def step(parity: int, inputs, outputs) -> None:
        torch.max(windows + skip_mask, dim=2, out=(best, arg))
        outputs[0].copy_(arg)
        torch.add(best, inputs[0], out=alpha[:, :s_max])

    run_frames(step, [em], [bp], t_max, frame_loop)
    alpha = alpha[:, :s_max].flip(1)
    return torch.where((t_len > 0).unsqueeze(1), alpha, float("-inf")), bp


def _viterbi_backtrack(bp: torch.Tensor, final_state: torch.Tensor, t_len: torch.Tensor, t_max: int,
                       s_max: int, frame_loop: Optional[str] = None) -> torch.Tensor:
    """(M, t_max) state of each sequence's best path at each of its frames (0 past its end), from
    :func:`_viterbi_forward`'s back-pointers; one gather and one add per frame."""
    m = final_state.shape[0]
    device = final_state.device
    if t_max == 0:
        return torch.zeros((m, 0), dtype=torch.long, device=device)
    # backwards from the last shifted frame: row i is the reversed state at frame t_max - 1 - i; each
    # step reads the row before the one it writes
    rows = torch.empty((t_max, m), dtype=torch.long, device=device)
    rows[0] = s_max - 1 - final_state
    back = bp[1:t_max].flip(0)  # the back-pointers of frames t_max - 1 .. 1

    def step(parity: int, inputs, outputs) -> None:
        pointers, state = inputs
        torch.add(state, pointers.gather(1, state.unsqueeze(1)).squeeze(1), out=outputs[0])

    run_frames(step, [back, rows[:-1]], [rows[1:]], t_max - 1, frame_loop)
    rev = rows.flip(0).t()  # (M, T): reversed state at each shifted frame
    frame = torch.arange(t_max, device=device).unsqueeze(0) + (t_max - t_len).unsqueeze(1)  # shifted frame
    path = s_max - 1 - rev.gather(1, frame.clamp(max=t_max - 1))
    return torch.where(frame < t_max, path, 0)


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
