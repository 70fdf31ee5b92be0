"""Batched transducer modified beam search (at most one symbol per frame).

Same search as icefall's ``modified_beam_search`` (fixture reference):

* hypotheses start as ``[-1] * (context_size - 1) + [blank]`` with score 0;
* on each valid frame every hypothesis gets ``log_softmax(joiner) + score``
  for every token; the ``beam`` best (hypothesis, token) pairs of the
  utterance, over all its hypotheses, form the new beam;
* blank keeps the token sequence (and its timestamps), a token is appended
  with the frame as its timestamp;
* candidates with identical token sequences are merged: scores are combined by
  log-sum-exp and the better-ranked candidate keeps its timestamps;
* the final hypothesis maximises ``score / (num_tokens + context_size)`` (the
  reference divides by ``len(ys)``, which still holds the initial context).

Batched implementation: every utterance has ``beam`` slots; a slot is dead
when its score is -inf.  Per frame there is one decoder call and one joiner
call for all N * beam slots and one ``topk`` over ``(N, beam * V)``.  Two
candidates can only hold the same sequence when one is "parent p + blank" and
the other "parent p' + token" (beam sequences are unique), so duplicates are
found by comparing (two polynomial hashes, length, last token) of the
``beam`` candidates pairwise.  Frames past an utterance's length leave its
slots unchanged.  Token sequences are not carried along: each frame records every
slot's parent, emitted token and its log-prob (back-pointers), read back once at
the end, so the per-frame state is O(N * beam).  No host synchronisation inside
the loop.
"""

from __future__ import annotations

import numpy as np
import torch

from .transducer_greedy import initial_context
from .types import TransducerResult
from .utils import read_back

_P1, _B1 = 2147483647, 1000003
_P2, _B2 = 1000000007, 911382323


@torch.inference_mode()
def transducer_modified_beam_search(
    model,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: int = 4,
    blank_id: int = 0,
) -> TransducerResult:
    decoder, joiner = model.decoder, model.joiner
    if decoder is None or joiner is None:
        raise ValueError("the model has no transducer head (decoder/joiner)")
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    device = encoder_out.device
    n, t_max, _ = encoder_out.shape
    lens = encoder_out_lens.to(device)
    cs = decoder.context_size
    b = beam
    neg_inf = float("-inf")

    enc_proj = joiner.encoder_proj(encoder_out)  # (N, T, J)
    ctx = initial_context(n * b, cs, blank_id, device).view(n, b, cs)
    scores = torch.full((n, b), neg_inf, dtype=torch.float32, device=device)
    scores[:, 0] = 0.0
    h1 = torch.zeros((n, b), dtype=torch.long, device=device)
    h2 = torch.zeros((n, b), dtype=torch.long, device=device)
    plen = torch.zeros((n, b), dtype=torch.long, device=device)
    last = torch.full((n, b), -1, dtype=torch.long, device=device)
    back_parent = torch.empty((t_max, n, b), dtype=torch.long, device=device)
    back_token = torch.empty((t_max, n, b), dtype=torch.long, device=device)
    back_lp = torch.empty((t_max, n, b), dtype=torch.float32, device=device)
    slot = torch.arange(b, device=device).expand(n, b)
    blank_sum = torch.zeros((n, b), dtype=torch.float32, device=device)

    n_idx = torch.arange(n, device=device).unsqueeze(1)
    c_idx = torch.arange(b, device=device)
    later_or_self = c_idx.view(1, b) >= c_idx.view(b, 1)  # [c', c]: c >= c'
    earlier = c_idx.view(b, 1) > c_idx.view(1, b)  # [c, c']: c' < c
    for t in range(t_max):
        active = t < lens
        dec = joiner.decoder_proj(decoder(ctx.view(n * b, cs), need_pad=False)).view(n, b, -1)
        logits = joiner(enc_proj[:, t].unsqueeze(1), dec, project_input=False)  # (N, B, V)
        vocab = logits.shape[-1]
        lsm = logits.float().log_softmax(dim=-1)
        cand = (lsm + scores.unsqueeze(2)).view(n, b * vocab)
        top_v, top_i = cand.topk(b, dim=1)  # sorted, best first
        parent = top_i // vocab
        tok = top_i % vocab
        is_tok = tok != blank_id

        p_h1, p_h2 = h1.gather(1, parent), h2.gather(1, parent)
        p_len, p_last = plen.gather(1, parent), last.gather(1, parent)
        c_h1 = torch.where(is_tok, (p_h1 * _B1 + tok + 1) % _P1, p_h1)
        c_h2 = torch.where(is_tok, (p_h2 * _B2 + tok + 1) % _P2, p_h2)
        c_len = p_len + is_tok.long()
        c_last = torch.where(is_tok, tok, p_last)
        alive = top_v > neg_inf
        same = (
            (c_h1.unsqueeze(2) == c_h1.unsqueeze(1))
            & (c_h2.unsqueeze(2) == c_h2.unsqueeze(1))
            & (c_len.unsqueeze(2) == c_len.unsqueeze(1))
            & (c_last.unsqueeze(2) == c_last.unsqueeze(1))
            & alive.unsqueeze(2)
            & alive.unsqueeze(1)
        )  # (N, B, B), symmetric
        dup = (same & earlier).any(dim=2)  # merged into a better-ranked candidate
        merged = torch.where(same & later_or_self, top_v.unsqueeze(1), torch.full_like(top_v.unsqueeze(1).expand(n, b, b), neg_inf))
        new_scores = torch.where(dup, torch.full_like(top_v, neg_inf), merged.logsumexp(dim=2))
        new_scores = torch.where(alive, new_scores, torch.full_like(new_scores, neg_inf))

        lp_tok = lsm.view(n, b * vocab).gather(1, top_i)
        lp_blank = lsm[:, :, blank_id].gather(1, parent)
        wr = is_tok.unsqueeze(2)
        n_blank = blank_sum.gather(1, parent) + torch.where(is_tok, torch.zeros_like(lp_blank), lp_blank.exp())
        p_ctx = ctx[n_idx, parent]  # (N, B, cs)
        n_ctx = torch.where(wr, torch.cat([p_ctx[:, :, 1:], tok.unsqueeze(2)], dim=2), p_ctx)

        a2 = active.unsqueeze(1)
        a3 = a2.unsqueeze(2)
        scores = torch.where(a2, new_scores, scores)
        h1 = torch.where(a2, c_h1, h1)
        h2 = torch.where(a2, c_h2, h2)
        plen = torch.where(a2, c_len, plen)
        last = torch.where(a2, c_last, last)
        blank_sum = torch.where(a2, n_blank, blank_sum)
        ctx = torch.where(a3, n_ctx, ctx)
        back_parent[t] = torch.where(a2, parent, slot)
        back_token[t] = torch.where(a2 & is_tok, tok, -1)
        back_lp[t] = lp_tok

    norm = scores / (plen + cs).to(scores.dtype)
    best = norm.argmax(dim=1)  # first maximum, like Python's max over the beam
    out_len = plen.gather(1, best.unsqueeze(1)).squeeze(1)
    l_max = int(out_len.max().item()) if n > 0 else 0
    all_tokens, all_frames, (all_lps,) = read_back(back_parent, back_token, plen, (back_lp,))
    rows, pick = np.arange(n), best.cpu().numpy()
    tokens = torch.from_numpy(all_tokens[rows, pick, :l_max]).to(device)
    tok_frames = torch.from_numpy(all_frames[rows, pick, :l_max]).to(device)
    lps = torch.from_numpy(all_lps[rows, pick, :l_max]).to(device)
    return TransducerResult(
        tokens=tokens,
        lens=out_len,
        frames=tok_frames,
        token_log_probs=lps,
        scores=scores.gather(1, best.unsqueeze(1)).squeeze(1),
        blank_prob_sum=blank_sum.gather(1, best.unsqueeze(1)).squeeze(1),
    )
