"""The decoding searches as they were before issue 32 (commit c704743), frozen as the reference
for the equivalence tests (tests/test_decoding_equivalence.py, tests/test_demo_model.py) and the
"before" column of bench/decoding_ops.py: the restructured searches must give bit-identical results.
Copied verbatim except for names (``legacy_*``) and the SearchLM lookups, which are kept here as
functions over a :class:`model.decoding.SearchLM`'s tables so that later changes to that class cannot
change the reference; :func:`legacy_searches` puts them back into ``model.decoding.decode``. Not
product code; nothing in model/ imports it.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import numpy as np
import torch

from model.decoding.types import AlignmentResult, CtcNBest, TransducerResult
from model.decoding.utils import pack_by_mask, read_back


_LP1, _LB1 = 2147483647, 131
_LP2, _LB2 = 1000000007, 257


def _key(h1, h2):
    """One sortable int64 key of a (hash1, hash2) pair (ints or tensors)."""
    return h1 * _P2 + h2


def _find(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor, default: torch.Tensor) -> torch.Tensor:
    """``values`` at the positions of ``query`` in the sorted ``keys``; ``default`` (broadcast)
    where a query is not listed, and everywhere when the table is empty."""
    if keys.numel() == 0:
        return default.expand(query.shape) if default.dim() == 0 else default
    pos = torch.searchsorted(keys, query.contiguous()).clamp(max=keys.numel() - 1)
    return torch.where(keys[pos] == query, values[pos], default)


def _lm_lookup(self, h: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
    """Word index of character hashes ``h`` (..., 2); ``unk`` where not listed or ``unknown``."""
    unk = torch.tensor(self.unk, device=h.device)
    return torch.where(unknown, unk, _find(self.word_keys, self.word_index, _key(h[..., 0], h[..., 1]), unk))


def _lm_log_prob(self, word: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Natural-log ``P(word | previous)`` (same shapes), backing off to the unigram."""
    base = self.backoff[previous] + self.unigram[word]
    return _find(self.bigram_keys, self.bigram, previous * self.unigram.shape[0] + word, base)


def _lm_look_ahead(self, h: torch.Tensor, chars: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
    """Best unigram log-prob of an LM word that starts with the characters hashed in ``h``
    (..., 2); 0 where nothing is spelled, ``<unk>``'s where no word starts so."""
    unk = self.unigram[self.unk]
    la = torch.where(unknown, unk, _find(self.prefix_keys, self.prefix_best, _key(h[..., 0], h[..., 1]), unk))
    return torch.where(chars > 0, la, torch.zeros((), dtype=la.dtype))


def _lm_extend_hash(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Hashes ``h`` (..., 2) of words followed by the characters of ``tokens`` (...)."""
    return (h * self.piece_pow[tokens] + self.piece_hash[tokens]) % self.moduli


def _lm_to(self, device, dtype=torch.float32):
    """SearchLM.to as it was: a copy with its tensors on ``device``, log-probs in ``dtype``."""
    import dataclasses
    if self.word_keys.device == torch.device(device) and self.unigram.dtype == dtype:
        return self
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    moved = {k: (v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                 if isinstance(v, torch.Tensor) else v) for k, v in fields.items()}
    return type(self)(**moved)


_P1, _B1 = 2147483647, 1000003
_P2, _B2 = 1000000007, 911382323


@torch.inference_mode()


def legacy_ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    beam: int = 4,
    blank_id: int = 0,
    token_beam: Optional[int] = None,
    lm=None,
    lm_scale: float = 0.0,
    word_bonus: float = 0.0,
    hotwords=None,
) -> CtcNBest:
    """CTC prefix beam search over a batch (``hotwords``: must be None; the search before issue 35
    has no biasing, and ``decode`` passes None when a batch has no lists).

    Args:
      log_probs: (N, T, V) CTC log-posteriors (any float dtype; the search runs
        in that dtype).
      lens: (N,) valid frames per utterance.
      beam: number of prefixes kept after each frame (= size of the n-best).
      blank_id: blank token id.
      token_beam: number of tokens expanded per frame; default ``beam`` (the
        reference's choice).  Clamped to V.
      lm, lm_scale, word_bonus: shallow fusion of a word LM (:mod:`model.decoding.lm_fusion`):
        prefixes are ranked by their CTC log-prob plus ``lm_scale`` x the LM log-prob of their
        completed words plus ``word_bonus`` per completed word (at the end: the last word and
        ``</s>`` too) plus ``lm_scale`` x the look-ahead of the word being spelled (when ``lm``
        has its prefix table). The returned ``scores`` stay the CTC log-probs; the slots are
        ordered by the fused score. ``lm=None`` or ``lm_scale == 0``: the plain search.

    Returns a :class:`CtcNBest` with ``K = beam`` slots per utterance, best first.
    """
    if hotwords is not None:
        raise ValueError("the legacy search has no hotword biasing")
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    n, t_max, vocab = log_probs.shape
    device, dtype = log_probs.device, log_probs.dtype
    k = beam
    kt = min(token_beam if token_beam is not None else beam, vocab)
    lens = lens.to(device)
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=device)

    top_lp, top_ids = log_probs.topk(kt, dim=-1)  # (N, T, K')
    blank_lp_all = torch.where(top_ids == blank_id, top_lp, neg_inf).amax(dim=-1)  # (N, T)
    tok_blank_all = top_ids == blank_id  # (N, T, K')
    active_all = torch.arange(t_max, device=device).unsqueeze(0) < lens.unsqueeze(1)  # (N, T)

    scores = torch.full((n, k, 2), float("-inf"), dtype=dtype, device=device)  # (pb, pnb)
    scores[:, 0, 0] = 0.0
    ints = torch.zeros((n, k, 4), dtype=torch.long, device=device)  # (h1, h2, length, last)
    ints[:, :, 3] = -1
    slot = torch.arange(k, device=device).expand(n, k)
    back_parent = torch.empty((t_max, n, k), dtype=torch.long, device=device)
    back_token = torch.empty((t_max, n, k), dtype=torch.long, device=device)
    ext_pb = torch.full((n, k * kt), float("-inf"), dtype=dtype, device=device)
    mult = torch.tensor([_B1, _B2], dtype=torch.long, device=device)
    mod = torch.tensor([_P1, _P2], dtype=torch.long, device=device)
    fz = _lm_to(lm, device, dtype) if lm is not None and lm_scale else None
    if fz is not None:
        # fused LM total, and the word being spelled: (hash1, hash2, characters, unknown, previous word)
        lm_tot = torch.zeros((n, k), dtype=dtype, device=device)
        words = torch.zeros((n, k, 5), dtype=torch.long, device=device)
        words[..., 4] = fz.bos

    for t in range(t_max):
        tv, ti = top_lp[:, t], top_ids[:, t]  # (N, K')
        pb, pnb = scores[..., 0], scores[..., 1]
        h12, plen, last = ints[..., :2], ints[..., 2], ints[..., 3]
        tot = torch.logaddexp(pb, pnb)  # (N, K)

        is_last = ti.unsqueeze(1) == last.unsqueeze(2)  # (N, K, K')
        last_lp = torch.where(is_last, tv.unsqueeze(1), neg_inf).amax(dim=-1)  # (N, K)
        stay_pb = tot + blank_lp_all[:, t].unsqueeze(1)
        stay_pnb = pnb + last_lp

        ext_pnb = torch.where(is_last, pb.unsqueeze(2), tot.unsqueeze(2)) + tv.unsqueeze(1)  # (N, K, K')
        ext_pnb = ext_pnb.masked_fill(tok_blank_all[:, t].unsqueeze(1), float("-inf"))
        # (N, K, K', 2): both hashes of every extension at once
        ext_h = (h12.unsqueeze(2) * mult + ti.unsqueeze(1).unsqueeze(3) + 1) % mod

        # extension (k, j) == existing prefix k'?  -> (N, K, K', K)
        same = ((ext_h.unsqueeze(3) == h12.view(n, 1, 1, k, 2)).all(dim=4)
                & (ti.view(n, 1, kt, 1) == last.view(n, 1, 1, k))
                & ((plen + 1).view(n, k, 1, 1) == plen.view(n, 1, 1, k))
                & (tot > float("-inf")).view(n, 1, 1, k))
        merged = torch.where(same, ext_pnb.unsqueeze(3), neg_inf).amax(dim=(1, 2))  # (N, K)
        stay_pnb = torch.logaddexp(stay_pnb, merged)
        ext_pnb = ext_pnb.masked_fill(same.any(dim=3), float("-inf"))

        cand_pb = torch.cat([stay_pb, ext_pb], dim=1)
        cand_pnb = torch.cat([stay_pnb, ext_pnb.reshape(n, k * kt)], dim=1)
        rank = torch.logaddexp(cand_pb, cand_pnb)
        if fz is not None:
            cand_lm, cand_words = _fuse(fz, lm_tot, words, ti, lm_scale, word_bonus)
            rank = rank + cand_lm
            if fz.prefix_keys is not None:
                rank = rank + lm_scale * _lm_look_ahead(fz, cand_words[..., :2], cand_words[..., 2], cand_words[..., 3].bool())
        # stable sort: equal scores keep candidate order (stays first, then
        # extensions in (prefix, token-rank) order) -- deterministic everywhere
        order = torch.sort(rank, dim=1, descending=True, stable=True).indices[:, :k]
        cand_ints = torch.cat([ints, torch.cat([ext_h, (plen + 1).unsqueeze(2).expand(n, k, kt).unsqueeze(3),
                                                ti.unsqueeze(1).expand(n, k, kt).unsqueeze(3)], dim=3).reshape(n, k * kt, 4)],
                              dim=1)  # (N, K + K*K', 4)
        new_scores = torch.stack([cand_pb, cand_pnb], dim=2).gather(1, order.unsqueeze(2).expand(n, k, 2))
        new_ints = cand_ints.gather(1, order.unsqueeze(2).expand(n, k, 4))
        is_ext = order >= k
        parent = torch.where(is_ext, (order - k) // kt, order)

        act = active_all[:, t].unsqueeze(1)  # (N, 1)
        scores = torch.where(act.unsqueeze(2), new_scores, scores)
        ints = torch.where(act.unsqueeze(2), new_ints, ints)
        back_parent[t] = torch.where(act, parent, slot)
        back_token[t] = torch.where(act & is_ext, new_ints[..., 3], -1)
        if fz is not None:
            lm_tot = torch.where(act, cand_lm.gather(1, order), lm_tot)
            words = torch.where(act.unsqueeze(2), cand_words.gather(1, order.unsqueeze(2).expand(n, k, 5)), words)

    pb, pnb = scores[..., 0].contiguous(), scores[..., 1].contiguous()
    plen = ints[..., 2]
    scores = torch.logaddexp(pb, pnb)
    valid = scores > float("-inf")
    plen = torch.where(valid, plen, torch.zeros_like(plen))
    tokens = torch.from_numpy(read_back(back_parent, back_token, plen)[0]).to(device)
    if fz is not None:
        final = lm_tot + _word_end(fz, words, lm_scale, word_bonus, end=True)[0]
        order = torch.sort(torch.where(valid, scores + final, scores), dim=1, descending=True, stable=True).indices
        pb, pnb, scores, plen, final = (x.gather(1, order) for x in (pb, pnb, scores, plen, final))
        tokens = tokens.gather(1, order.unsqueeze(2).expand_as(tokens))
    return CtcNBest(
        tokens=tokens,
        lens=plen,
        scores=scores,
        log_prob_blank=pb,
        log_prob_non_blank=pnb,
        search_lm_scores=final if fz is not None else None,
    )


def _word_end(fz, words: torch.Tensor, scale: float, bonus: float,
              end: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) what completing each slot's word adds: ``scale * log P(word | previous) + bonus``
    (0 while no characters are spelled); with ``end``, plus ``scale * log P(</s> | last word)``.
    Also returns the word's LM index and whether any characters are spelled."""
    spelled = words[..., 2] > 0
    word = _lm_lookup(fz, words[..., :2], words[..., 3].bool())
    add = torch.where(spelled, scale * _lm_log_prob(fz, word, words[..., 4]) + bonus, torch.zeros((), dtype=fz.unigram.dtype))
    if end:
        last = torch.where(spelled, word, words[..., 4])
        add = add + scale * _lm_log_prob(fz, torch.full_like(last, fz.eos), last)
    return add, word, spelled


def _fuse(fz, lm_tot: torch.Tensor, words: torch.Tensor, ti: torch.Tensor, scale: float,
          bonus: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LM totals (N, K + K*K') and word states (N, K + K*K', 5) of a frame's candidates: the K
    stays keep theirs; extension (k, j) by token ``ti[:, j]`` completes slot k's word when the
    token starts a new one, else spells on."""
    n, k, _ = words.shape
    kt = ti.shape[1]
    add, word, spelled = _word_end(fz, words, scale, bonus)  # (N, K)
    starts = fz.starts_word[ti].unsqueeze(1)  # (N, 1, K')
    ext_lm = lm_tot.unsqueeze(2) + torch.where(starts, add.unsqueeze(2), torch.zeros((), dtype=add.dtype))
    prev = torch.where(starts & spelled.unsqueeze(2), word.unsqueeze(2), words[..., 4].unsqueeze(2))
    piece_hash = fz.piece_hash[ti].unsqueeze(1)  # (N, 1, K', 2)
    h = torch.where(starts.unsqueeze(3), piece_hash, _lm_extend_hash(fz, words[..., :2].unsqueeze(2), ti.unsqueeze(1)))
    plen = fz.piece_len[ti].unsqueeze(1)
    chars = torch.where(starts, plen, words[..., 2].unsqueeze(2) + plen)
    unk = fz.piece_unknown[ti].unsqueeze(1)
    unknown = torch.where(starts, unk, words[..., 3].bool().unsqueeze(2) | unk)
    ext_words = torch.cat([h, chars.unsqueeze(3), unknown.long().unsqueeze(3), prev.unsqueeze(3)], dim=3)
    return (torch.cat([lm_tot, ext_lm.reshape(n, k * kt)], dim=1),
            torch.cat([words, ext_words.reshape(n, k * kt, 5)], dim=1))


@torch.inference_mode()


def legacy_ctc_viterbi_align(
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


def initial_context(n: int, context_size: int, blank_id: int, device) -> torch.Tensor:
    ctx = torch.full((n, context_size), -1, dtype=torch.long, device=device)
    ctx[:, -1] = blank_id
    return ctx


@torch.inference_mode()


def legacy_transducer_greedy_search(
    model,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    blank_id: int = 0,
) -> TransducerResult:
    decoder, joiner = model.decoder, model.joiner
    if decoder is None or joiner is None:
        raise ValueError("the model has no transducer head (decoder/joiner)")
    device = encoder_out.device
    n, t_max, _ = encoder_out.shape
    lens = encoder_out_lens.to(device)
    cs = decoder.context_size

    enc_proj = joiner.encoder_proj(encoder_out)  # (N, T, J)
    ctx = initial_context(n, cs, blank_id, device)
    dec_proj = joiner.decoder_proj(decoder(ctx, need_pad=False))[:, 0]  # (N, J)

    tok = torch.full((n, t_max), -1, dtype=torch.long, device=device)
    tok_logit = torch.zeros((n, t_max), dtype=encoder_out.dtype, device=device)
    tok_lp = torch.zeros((n, t_max), dtype=torch.float32, device=device)
    path = torch.zeros(n, dtype=torch.float32, device=device)
    blank_sum = torch.zeros(n, dtype=torch.float32, device=device)
    for t in range(t_max):
        active = t < lens
        logits = joiner(enc_proj[:, t], dec_proj, project_input=False)  # (N, V)
        y = logits.argmax(dim=-1)  # first maximum on ties, like the reference
        best_logit = logits.gather(1, y.unsqueeze(1)).squeeze(1)
        lsm = logits.float().log_softmax(dim=-1)
        y_lp = lsm.gather(1, y.unsqueeze(1)).squeeze(1)
        emit = active & (y != blank_id)
        tok[:, t] = torch.where(emit, y, torch.full_like(y, -1))
        tok_logit[:, t] = torch.where(emit, best_logit, torch.zeros_like(best_logit))
        tok_lp[:, t] = torch.where(emit, y_lp, torch.zeros_like(y_lp))
        path = path + torch.where(active, y_lp, torch.zeros_like(y_lp))
        blank_sum = blank_sum + torch.where(active & ~emit, lsm[:, blank_id].exp(), torch.zeros_like(y_lp))
        new_ctx = torch.cat([ctx[:, 1:], y.unsqueeze(1)], dim=1)
        ctx = torch.where(emit.unsqueeze(1), new_ctx, ctx)
        new_dec = joiner.decoder_proj(decoder(ctx, need_pad=False))[:, 0]
        dec_proj = torch.where(emit.unsqueeze(1), new_dec, dec_proj)

    frame_idx = torch.arange(t_max, device=device).expand(n, t_max)
    mask = tok >= 0
    tokens, frames, out_lens = pack_by_mask(tok, frame_idx, mask)
    pos = torch.cumsum(mask.long(), dim=1) - 1
    l_max = tokens.shape[1]

    def _pack_float(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((n, l_max + 1), dtype=x.dtype, device=device)
        out.scatter_(1, torch.where(mask, pos, torch.full_like(pos, l_max)), torch.where(mask, x, torch.zeros_like(x)))
        return out[:, :l_max]

    return TransducerResult(
        tokens=tokens,
        lens=out_lens,
        frames=frames,
        token_log_probs=_pack_float(tok_lp),
        scores=path,
        blank_prob_sum=blank_sum,
        token_logits=_pack_float(tok_logit),
    )


_TP1, _TB1 = 2147483647, 1000003
_TP2, _TB2 = 1000000007, 911382323


@torch.inference_mode()


def legacy_transducer_modified_beam_search(
    model,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    beam: int = 4,
    blank_id: int = 0,
    hotwords=None,
) -> TransducerResult:
    if hotwords is not None:
        raise ValueError("the legacy search has no hotword biasing")
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
        c_h1 = torch.where(is_tok, (p_h1 * _TB1 + tok + 1) % _TP1, p_h1)
        c_h2 = torch.where(is_tok, (p_h2 * _TB2 + tok + 1) % _TP2, p_h2)
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


def legacy_score_nbest(
    self, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, nbest: Sequence[Sequence[Sequence[int]]]
) -> list[list[float]]:
    """Log-probability (tokens + eos) of every hypothesis of every utterance's n-best list.

    Equals ``-nll(...).sum(-1)`` per hypothesis, but the decoder runs once over
    the union of each utterance's hypotheses arranged as a prefix trie: a node
    (a token after a given prefix) attends only to its ancestors, so a prefix
    shared by several hypotheses is computed once, and the utterance's memory
    is projected once for all of them.
    """
    device = encoder_out.device
    tries = []
    for hyps in nbest:
        tokens, depth, parent, paths = [self.sos_id], [0], [-1], []
        child: dict[tuple[int, int], int] = {}
        for hyp in hyps:
            node, path = 0, [0]
            for tok in hyp:
                nxt = child.get((node, tok))
                if nxt is None:
                    nxt = child[(node, tok)] = len(tokens)
                    tokens.append(tok)
                    depth.append(depth[node] + 1)
                    parent.append(node)
                node = nxt
                path.append(node)
            paths.append(path)
        tries.append((tokens, depth, parent, paths))
    n, m = len(tries), max(len(t[0]) for t in tries)
    x = np.full((n, m), self.eos_id, dtype=np.int64)
    pos = np.zeros((n, m), dtype=np.int64)
    allowed = np.zeros((n, m, m), dtype=bool)
    allowed[:, :, 0] = True  # every node (and padding row) sees the root
    rows, nodes, next_tokens, owners = [], [], [], []
    hyp_id = 0
    for u, (tokens, depth, parent, paths) in enumerate(tries):
        k = len(tokens)
        x[u, :k], pos[u, :k] = tokens, depth
        for i in range(1, k):  # parents come before children
            allowed[u, i] = allowed[u, parent[i]]
            allowed[u, i, i] = True
        for path, hyp in zip(paths, nbest[u]):
            targets = list(hyp) + [self.eos_id]
            rows += [u] * len(path)
            nodes += path
            next_tokens += targets
            owners += [hyp_id] * len(path)
            hyp_id += 1
    logits = self.decoder(
        x=torch.from_numpy(x).to(device), x_lens=None, memory=encoder_out, memory_lens=encoder_out_lens,
        self_attn_mask=torch.from_numpy(~allowed).to(device), positions=torch.from_numpy(pos).to(device),
    )
    log_probs = logits.float().log_softmax(dim=-1)
    idx = [torch.tensor(v, dtype=torch.int64, device=device) for v in (rows, nodes, next_tokens, owners)]
    picked = log_probs[idx[0], idx[1], idx[2]]
    totals = torch.zeros(hyp_id, device=device).index_add_(0, idx[3], picked).tolist()
    out, start = [], 0
    for hyps in nbest:
        out.append(totals[start : start + len(hyps)])
        start += len(hyps)
    return out


@torch.inference_mode()
def legacy_attention_scores_for_nbest(
    attention_decoder,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    nbest: CtcNBest,
) -> torch.Tensor:
    """Attention-decoder log-prob (tokens + eos) of every n-best entry.

    All valid entries of all utterances go through the decoder in ONE batched
    call; each entry's memory is its utterance's ``encoder_out`` row
    (the model's ``score_nbest`` decodes each utterance's hypotheses as one
    prefix trie, so shared prefixes and the memory projection are computed
    once; a decoder with only ``nll`` gets ``memory_index`` instead).
    Returns (N, K), -inf for unused slots.
    """
    n, k = nbest.scores.shape
    device = encoder_out.device
    lens_d = encoder_out_lens.to(device)
    valid = nbest.valid.to(device)
    # utterances without frames (never produced by the encoder) have nothing to
    # attend to: their entries get attention score 0 instead of a NaN
    scored = (valid & (lens_d > 0).unsqueeze(1)).reshape(-1)
    out = torch.where(valid.reshape(-1), 0.0, float("-inf")).to(torch.float32)
    if not bool(scored.any()):
        return out.view(n, k)
    utt_of_entry = torch.arange(n, device=device).repeat_interleave(k)[scored]
    tokens = nbest.tokens.reshape(n * k, -1)[scored.to(nbest.tokens.device)]
    lens = nbest.lens.reshape(n * k)[scored.to(nbest.lens.device)]
    ys = [row[:ln] for row, ln in zip(tokens.tolist(), lens.tolist())]
    if hasattr(attention_decoder, "score_nbest"):
        # the model decodes each utterance's hypotheses as one prefix trie: shared prefixes once
        owners = utt_of_entry.tolist()
        per_utt: dict[int, list[list[int]]] = {}
        for owner, y in zip(owners, ys):
            per_utt.setdefault(owner, []).append(y)
        utts = sorted(per_utt)
        index = torch.tensor(utts, device=device)
        scores = legacy_score_nbest(attention_decoder, encoder_out.index_select(0, index), lens_d.index_select(0, index),
                                          [per_utt[u] for u in utts])
        flat = {u: iter(v) for u, v in zip(utts, scores)}
        out[scored] = torch.tensor([next(flat[o]) for o in owners], dtype=torch.float32, device=out.device)
    else:
        nll = attention_decoder.nll(encoder_out, lens_d, ys, memory_index=utt_of_entry)  # (M, S+1), 0 where ignored
        out[scored] = -nll.float().sum(dim=1)
    return out.view(n, k)


@contextlib.contextmanager
def legacy_searches():
    """``model.decoding.decode`` with the searches and rescoring of before issue 32 in place of
    today's (prefix search, Viterbi alignment, n-best trie, transducer searches)."""
    import model.decoding as decoding
    import model.decoding.attention_rescoring as rescoring

    swaps = [(decoding, "ctc_prefix_beam_search", legacy_ctc_prefix_beam_search),
             (decoding, "ctc_viterbi_align", legacy_ctc_viterbi_align),
             (decoding, "transducer_greedy_search", legacy_transducer_greedy_search),
             (decoding, "transducer_modified_beam_search", legacy_transducer_modified_beam_search),
             (rescoring, "attention_scores_for_nbest", legacy_attention_scores_for_nbest)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in swaps]
    try:
        for owner, name, fn in swaps:
            setattr(owner, name, fn)
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
