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
"""

from __future__ import annotations

from typing import Optional

import torch

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
        # stable sort: equal scores keep candidate order (stays first, then
        # extensions in (prefix, token-rank) order) -- deterministic everywhere
        order = torch.sort(torch.logaddexp(cand_pb, cand_pnb), dim=1, descending=True, stable=True).indices[:, :k]
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

    pb, pnb = scores[..., 0].contiguous(), scores[..., 1].contiguous()
    plen = ints[..., 2]
    scores = torch.logaddexp(pb, pnb)
    valid = scores > float("-inf")
    plen = torch.where(valid, plen, torch.zeros_like(plen))
    tokens = torch.from_numpy(read_back(back_parent, back_token, plen)[0]).to(device)
    return CtcNBest(
        tokens=tokens,
        lens=plen,
        scores=scores,
        log_prob_blank=pb,
        log_prob_non_blank=pnb,
    )
