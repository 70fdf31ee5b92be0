"""Batched CTC prefix beam search.

Algorithm (the usual prefix search, as in icefall's ``ctc_prefix_beam_search``;
the fixture README spells out the exact variant):

* every prefix keeps two log-probs: ``pb`` (alignments ending in blank) and
  ``pnb`` (ending in the prefix's last token); its score is
  ``logaddexp(pb, pnb)``;
* the search starts from the empty prefix with ``pb = 0, pnb = -inf``;
* on each valid frame only the frame's top ``token_beam`` tokens (blank
  included) are expanded.  For a prefix ``y`` with last token ``a``:

  - blank:            ``y``       gets ``pb  += score(y) + lp(blank)``
  - ``a`` again:      ``y``       gets ``pnb += pnb(y) + lp(a)`` (repeat collapses)
                      ``y + a``   gets ``pnb += pb(y) + lp(a)`` (needs a blank between)
  - other token ``b``: ``y + b``  gets ``pnb += score(y) + lp(b)``

  where ``+=`` means log-sum-exp accumulation over everything that produces the
  same prefix;
* after each frame the ``beam`` best prefixes by score are kept.

Batched implementation: the beam of every utterance is a fixed number of slots
held in tensors -- ``(N, K, 2)`` log-probs ``(pb, pnb)`` and ``(N, K, 4)``
integers ``(hash1, hash2, length, last token)`` -- so the per-frame state is
O(N*K) whatever the utterance length.  Each frame builds the K "stay"
candidates (the same prefix) and the K*K' "extend" candidates (prefix + token)
for all utterances at once.  Two candidates can only describe the same prefix if
an extension ``y + b`` equals an existing prefix ``y'`` (extensions of distinct
prefixes are distinct, and so are the stays), so duplicates are found by
comparing ``(hash1, hash2, length, last token)`` of every extension with every
slot and merged into the stay candidate by log-sum-exp.  The two hashes are
polynomial hashes modulo the primes 2^31-1 and 10^9+7, so a false merge needs
a simultaneous collision of both (and of length and last token): probability
about 1e-18 per comparison.  The winners of a frame are taken with one sort and
two gathers (scores, integers).  The token sequences are not carried along: each
frame records every slot's parent slot and emitted token (``(T, N, K)``
back-pointers), and the n-best's tokens are read back once at the end.  Frames
beyond an utterance's length leave its state unchanged (parent = itself, no
token).  The only Python loop is over frames.

Word-LM shallow fusion (``lm``, :mod:`model.decoding.lm_fusion`): each slot also
carries its fused LM total and the word it is spelling (two character hashes,
the character count, an unknown flag and the previous word's LM index).  An
extension whose token starts a word completes the slot's word and adds
``lm_scale * log P(word | previous) + word_bonus``; candidates are ranked by CTC
log-prob plus that total plus ``lm_scale`` x the look-ahead of the word being
spelled (the best unigram of an LM word with that beginning), and the end of
the utterance completes the last word and scores ``</s>``.  Merged duplicates
are the same prefix, so they carry the same LM state.  Per frame: word and
bigram lookups for the K slots, look-ahead lookups for the K + K*K'
candidates, whatever the LM's size.
"""

from __future__ import annotations

from typing import Optional

import torch

from .lm_fusion import SearchLM
from .types import CtcNBest
from .utils import read_back

_P1, _B1 = 2147483647, 1000003
_P2, _B2 = 1000000007, 911382323


@torch.inference_mode()
def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    beam: int = 4,
    blank_id: int = 0,
    token_beam: Optional[int] = None,
    lm: Optional[SearchLM] = None,
    lm_scale: float = 0.0,
    word_bonus: float = 0.0,
) -> CtcNBest:
    """CTC prefix beam search over a batch.

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
    fz = lm.to(device, dtype) if lm is not None and lm_scale else None
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
                rank = rank + lm_scale * fz.look_ahead(cand_words[..., :2], cand_words[..., 2], cand_words[..., 3].bool())
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


def _word_end(fz: SearchLM, words: torch.Tensor, scale: float, bonus: float,
              end: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) what completing each slot's word adds: ``scale * log P(word | previous) + bonus``
    (0 while no characters are spelled); with ``end``, plus ``scale * log P(</s> | last word)``.
    Also returns the word's LM index and whether any characters are spelled."""
    spelled = words[..., 2] > 0
    word = fz.lookup(words[..., :2], words[..., 3].bool())
    add = torch.where(spelled, scale * fz.log_prob(word, words[..., 4]) + bonus, torch.zeros((), dtype=fz.unigram.dtype))
    if end:
        last = torch.where(spelled, word, words[..., 4])
        add = add + scale * fz.log_prob(torch.full_like(last, fz.eos), last)
    return add, word, spelled


def _fuse(fz: SearchLM, lm_tot: torch.Tensor, words: torch.Tensor, ti: torch.Tensor, scale: float,
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
    h = torch.where(starts.unsqueeze(3), piece_hash, fz.extend_hash(words[..., :2].unsqueeze(2), ti.unsqueeze(1)))
    plen = fz.piece_len[ti].unsqueeze(1)
    chars = torch.where(starts, plen, words[..., 2].unsqueeze(2) + plen)
    unk = fz.piece_unknown[ti].unsqueeze(1)
    unknown = torch.where(starts, unk, words[..., 3].bool().unsqueeze(2) | unk)
    ext_words = torch.cat([h, chars.unsqueeze(3), unknown.long().unsqueeze(3), prev.unsqueeze(3)], dim=3)
    return (torch.cat([lm_tot, ext_lm.reshape(n, k * kt)], dim=1),
            torch.cat([words, ext_words.reshape(n, k * kt, 5)], dim=1))
