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
slot's winning candidate and the emitted token's log-prob (back-pointers), read back
once at the end, so the per-frame state is O(N * beam).

Per frame, a fixed sequence of operations with no host synchronisation and no host
tensors: the decoder and joiner for all slots, the top ``beam`` candidates, one gather
of the slots' integer state (hashes, length, last token, decoder context) by parent,
the candidates' hashes in one ``addcmul`` and one ``remainder``, the merge of
duplicates (a log-sum-exp over the same shapes as before issue 32, so the floats are
the same), and one ``where`` each for the integer and float state of utterances that
have ended (57 kernel-launching operations per frame at beam 4 with a small model,
86 before issue 32). On CUDA the loop is replayed from CUDA graphs (:mod:`model.decoding.frames`).

Hotwords (``hotwords``, :mod:`model.decoding.hotwords`): every slot also carries its automaton
state; a candidate "slot + token" is ranked with the automaton's gain for that token added to its
score (blank: none), as icefall's modified beam search does with its ``ContextGraph``, so the
slots' scores hold acoustic log-prob + hotword total (duplicates are the same sequence, so the
same total: the log-sum-exp merge is unchanged). The winner maximises
``(score - partial bonus) / (num_tokens + context_size)``; the result's ``scores`` are the
acoustic part and ``hotword_scores`` the completed phrases' bonus. Per frame this adds one
batched automaton step over every (slot, token) pair. ``None``: exactly the search without.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .frames import run_frames
from .hotwords import HotwordBatch
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
    frame_loop: Optional[str] = None,
    hotwords: Optional[HotwordBatch] = None,
) -> TransducerResult:
    """Modified beam search of a batch; ``frame_loop``: see
    :func:`model.decoding.frames.run_frames` (the results are the same in every mode)."""
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
    long = dict(dtype=torch.long, device=device)

    enc_proj = joiner.encoder_proj(encoder_out).transpose(0, 1).unsqueeze(2)  # (T, N, 1, J), frame slices
    active = torch.arange(t_max, device=device).view(t_max, 1, 1) < lens.view(1, n, 1)  # (T, N, 1)
    # per slot: ints [hash1, hash2, length, last token, context (cs)], floats [score, blank prob sum]
    ints = torch.zeros((n, b, 4 + cs), **long)
    ints[..., 3] = -1
    ints[..., 4:] = initial_context(n * b, cs, blank_id, device).view(n, b, cs)
    floats = torch.zeros((n, b, 2), dtype=torch.float32, device=device)
    floats[:, 1:, 0] = neg_inf
    won = torch.empty((t_max, n, b), **long)  # the candidate (parent * V + token) each slot took
    back_lp = torch.empty((t_max, n, b), dtype=torch.float32, device=device)
    # a candidate's [hash1, hash2, length, last]: (parent's * mul + token * tok + add) % mod for a
    # token, the parent's (mul 1, add 0) for blank
    # [add, tok, mul] for blank (0) and token (1)
    coef = torch.tensor([[[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]],
                         [[1, 1, 1, 0], [1, 1, 0, 1], [_B1, _B2, 1, 0]]], **long)
    mod = torch.tensor([_P1, _P2, 1 << 62, 1 << 62], **long)

    hw = hotwords.to(device, torch.float32) if hotwords is not None else None
    if hw is not None:
        if hw.list_of.shape[0] != n:
            raise ValueError(f"hotwords are for {hw.list_of.shape[0]} utterances, the batch has {n}")
        hw_state = hw.root_state.view(n, 1).expand(n, b).contiguous()  # each slot's automaton state
        hw_total = torch.zeros((n, b), dtype=torch.float32, device=device)  # and its hotword total
        hw_lists = hw.list_of.view(n, 1, 1)

    c_idx = torch.arange(b, device=device)
    later_or_self = c_idx.view(1, b) >= c_idx.view(b, 1)  # [c', c]: c >= c'
    earlier = c_idx.view(b, 1) > c_idx.view(1, b)  # [c, c']: c' < c

    vocab_size = []  # the joiner's output size, seen in the first frame

    def step(parity: int, inputs, outputs) -> None:
        enc_t, act = inputs  # (N, 1, J), (N, 1)
        top_i, lp_tok = outputs  # (N, B), (N, B)
        dec = joiner.decoder_proj(decoder(ints[..., 4:].reshape(n * b, cs), need_pad=False)).view(n, b, -1)
        logits = joiner(enc_t, dec, project_input=False)  # (N, B, V)
        vocab = logits.shape[-1]
        vocab_size[:] = [vocab]
        lsm = logits.float().log_softmax(dim=-1)
        if hw is None:
            cand = (lsm + floats[..., 0].unsqueeze(2)).view(n, b * vocab)
        else:  # + the automaton's gain for each token (blank: the state stays)
            token_ids = torch.arange(vocab, device=device).view(1, 1, vocab)
            stepped, gained = hw.step(hw_state.unsqueeze(2), token_ids.clamp(max=hw.vocab_size - 1), hw_lists)
            is_blank = token_ids == blank_id
            moved = torch.where(is_blank, hw_state.unsqueeze(2), stepped)
            gain = torch.where(is_blank, 0.0, gained)  # (N, B, V)
            cand = (lsm + floats[..., 0].unsqueeze(2) + gain).view(n, b * vocab)
        top_v = torch.topk(cand, b, dim=1, out=(torch.empty_like(cand[:, :b]), top_i))[0]  # sorted, best first
        parent = top_i // vocab
        tok = top_i % vocab
        is_tok = (tok != blank_id).long()  # 0: blank, 1: token

        p_ints = ints.gather(1, parent.unsqueeze(2).expand(n, b, ints.shape[2]))
        c = coef[is_tok]  # (N, B, 3, 4)
        fields = torch.addcmul(c[..., 0, :], tok.unsqueeze(2), c[..., 1, :])
        c_ints = torch.remainder(torch.addcmul(fields, p_ints[..., :4], c[..., 2, :]), mod)  # (N, B, 4)
        alive = top_v > neg_inf
        same = (c_ints.unsqueeze(2) == c_ints.unsqueeze(1)).all(dim=3) & alive.unsqueeze(2) & alive.unsqueeze(1)
        dup = (same & earlier).any(dim=2)  # merged into a better-ranked candidate
        merged = torch.where(same & later_or_self, top_v.unsqueeze(1), neg_inf)
        new_scores = torch.where(dup, neg_inf, merged.logsumexp(dim=2))
        new_scores = torch.where(alive, new_scores, neg_inf)

        torch.gather(lsm.view(n, b * vocab), 1, top_i, out=lp_tok)
        lp_blank = lsm[:, :, blank_id].gather(1, parent)
        n_blank = floats[..., 1].gather(1, parent) + torch.where(is_tok.bool(), 0.0, lp_blank.exp())
        p_ctx = p_ints[..., 4:]
        n_ctx = torch.where(is_tok.bool().unsqueeze(2), torch.cat([p_ctx[:, :, 1:], tok.unsqueeze(2)], dim=2), p_ctx)
        torch.where(act.unsqueeze(2), torch.cat([c_ints, n_ctx], dim=2), ints, out=ints)
        torch.where(act.unsqueeze(2), torch.stack([new_scores, n_blank], dim=2), floats, out=floats)
        if hw is not None:
            new_state = moved.view(n, b * vocab).gather(1, top_i)
            new_total = hw_total.gather(1, parent) + gain.view(n, b * vocab).gather(1, top_i)
            torch.where(act, new_state, hw_state, out=hw_state)
            torch.where(act, new_total, hw_total, out=hw_total)

    run_frames(step, [enc_proj, active], [won, back_lp], t_max, frame_loop)

    scores, plen = floats[..., 0], ints[..., 2]
    vocab = vocab_size[0] if vocab_size else 1
    act = active.expand(t_max, n, b)
    back_parent = torch.where(act, won // vocab, c_idx.expand(t_max, n, b))
    back_token = torch.where(act & (won % vocab != blank_id), won % vocab, -1)
    kept = None
    if hw is not None:  # rank by acoustic score + the completed phrases' bonus
        kept = hw.final(hw_total, hw_state)
        acoustic = scores - hw_total
        scores = acoustic + kept
    norm = scores / (plen + cs).to(scores.dtype)
    best = norm.argmax(dim=1)  # first maximum, like Python's max over the beam
    out_len = plen.gather(1, best.unsqueeze(1)).squeeze(1)
    l_max = int(out_len.max().item()) if n > 0 else 0
    all_tokens, all_frames, (all_lps,) = read_back(back_parent, back_token, plen, (back_lp,))
    rows, pick = np.arange(n), best.cpu().numpy()
    tokens = torch.from_numpy(all_tokens[rows, pick, :l_max]).to(device)
    tok_frames = torch.from_numpy(all_frames[rows, pick, :l_max]).to(device)
    lps = torch.from_numpy(all_lps[rows, pick, :l_max]).to(device)
    pick_best = best.unsqueeze(1)
    return TransducerResult(
        tokens=tokens,
        lens=out_len,
        frames=tok_frames,
        token_log_probs=lps,
        scores=(scores if kept is None else acoustic).gather(1, pick_best).squeeze(1),
        blank_prob_sum=floats[..., 1].gather(1, pick_best).squeeze(1),
        hotword_scores=kept.gather(1, pick_best).squeeze(1) if kept is not None else None,
    )
