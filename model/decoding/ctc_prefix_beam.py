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
held in tensors -- ``(N, K)`` scores, last tokens, lengths and two polynomial
hashes, plus the ``(N, K, T)`` token prefixes.  Each frame builds the K "stay"
candidates (the same prefix) and the K*K' "extend" candidates (prefix + token)
for all utterances at once.  Two candidates can only describe the same prefix if
an extension ``y + b`` equals an existing prefix ``y'`` (extensions of distinct
prefixes are distinct, and so are the stays), so duplicates are found by
comparing ``(hash1, hash2, length, last token)`` of every extension with every
slot and merged into the stay candidate by log-sum-exp.  The two hashes are
polynomial hashes modulo the primes 2^31-1 and 10^9+7, so a false merge needs
a simultaneous collision of both (and of length and last token): probability
about 1e-18 per comparison.  Frames beyond an utterance's length leave its
state unchanged.  The only Python loop is over frames.
"""

from __future__ import annotations

from typing import Optional

import torch

from .types import CtcNBest

_P1, _B1 = 2147483647, 1000003
_P2, _B2 = 1000000007, 911382323


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.logaddexp(a, b)


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

    pb = torch.full((n, k), float("-inf"), dtype=dtype, device=device)
    pb[:, 0] = 0.0
    pnb = torch.full((n, k), float("-inf"), dtype=dtype, device=device)
    last = torch.full((n, k), -1, dtype=torch.long, device=device)
    plen = torch.zeros((n, k), dtype=torch.long, device=device)
    h1 = torch.zeros((n, k), dtype=torch.long, device=device)
    h2 = torch.zeros((n, k), dtype=torch.long, device=device)
    cap = max(t_max, 1)
    prefix = torch.full((n, k, cap), -1, dtype=torch.long, device=device)

    n_idx = torch.arange(n, device=device)
    for t in range(t_max):
        active = t < lens  # (N,)
        tv = top_lp[:, t]  # (N, K')
        ti = top_ids[:, t]  # (N, K')
        tot = _logaddexp(pb, pnb)  # (N, K)
        alive = tot > float("-inf")

        tok_is_blank = ti == blank_id  # (N, K')
        blank_lp = torch.where(tok_is_blank, tv, neg_inf).amax(dim=-1)  # (N,)
        is_last = ti.unsqueeze(1) == last.unsqueeze(2)  # (N, K, K')
        last_lp = torch.where(is_last, tv.unsqueeze(1), neg_inf).amax(dim=-1)  # (N, K)

        stay_pb = tot + blank_lp.unsqueeze(1)
        stay_pnb = pnb + last_lp

        base = torch.where(is_last, pb.unsqueeze(2), tot.unsqueeze(2))
        ext_pnb = base + tv.unsqueeze(1)  # (N, K, K')
        ext_pnb = torch.where(tok_is_blank.unsqueeze(1), neg_inf, ext_pnb)
        ext_h1 = (h1.unsqueeze(2) * _B1 + ti.unsqueeze(1) + 1) % _P1
        ext_h2 = (h2.unsqueeze(2) * _B2 + ti.unsqueeze(1) + 1) % _P2

        # extension (k, j) == existing prefix k'?  -> (N, K, K', K)
        same = (
            (ext_h1.unsqueeze(3) == h1.view(n, 1, 1, k))
            & (ext_h2.unsqueeze(3) == h2.view(n, 1, 1, k))
            & (ti.view(n, 1, kt, 1) == last.view(n, 1, 1, k))
            & ((plen + 1).view(n, k, 1, 1) == plen.view(n, 1, 1, k))
            & alive.view(n, 1, 1, k)
        )
        merged = torch.where(same, ext_pnb.unsqueeze(3), neg_inf).amax(dim=(1, 2))  # (N, K)
        stay_pnb = _logaddexp(stay_pnb, merged)
        ext_pnb = torch.where(same.any(dim=3), neg_inf, ext_pnb)

        cand_pb = torch.cat([stay_pb, torch.full((n, k * kt), float("-inf"), dtype=dtype, device=device)], 1)
        cand_pnb = torch.cat([stay_pnb, ext_pnb.reshape(n, k * kt)], dim=1)
        cand_tot = _logaddexp(cand_pb, cand_pnb)
        # stable sort: equal scores keep candidate order (stays first, then
        # extensions in (prefix, token-rank) order) -- deterministic everywhere
        order = torch.sort(cand_tot, dim=1, descending=True, stable=True).indices[:, :k]
        is_ext = order >= k
        ext_flat = (order - k).clamp(min=0)
        parent = torch.where(is_ext, ext_flat // kt, order)
        new_tok = ti.gather(1, ext_flat % kt)

        n_pb = cand_pb.gather(1, order)
        n_pnb = cand_pnb.gather(1, order)
        n_h1 = torch.where(is_ext, ext_h1.reshape(n, -1).gather(1, ext_flat), h1.gather(1, parent))
        n_h2 = torch.where(is_ext, ext_h2.reshape(n, -1).gather(1, ext_flat), h2.gather(1, parent))
        p_len = plen.gather(1, parent)
        n_plen = p_len + is_ext.long()
        n_last = torch.where(is_ext, new_tok, last.gather(1, parent))
        n_prefix = prefix[n_idx.unsqueeze(1), parent]  # (N, K, cap)
        pos = p_len.clamp(max=cap - 1).unsqueeze(2)
        cur = n_prefix.gather(2, pos)
        n_prefix.scatter_(2, pos, torch.where(is_ext.unsqueeze(2), new_tok.unsqueeze(2), cur))

        a2 = active.unsqueeze(1)
        pb = torch.where(a2, n_pb, pb)
        pnb = torch.where(a2, n_pnb, pnb)
        h1 = torch.where(a2, n_h1, h1)
        h2 = torch.where(a2, n_h2, h2)
        plen = torch.where(a2, n_plen, plen)
        last = torch.where(a2, n_last, last)
        prefix = torch.where(a2.unsqueeze(2), n_prefix, prefix)

    scores = _logaddexp(pb, pnb)
    valid = scores > float("-inf")
    plen = torch.where(valid, plen, torch.zeros_like(plen))
    l_max = int(plen.max().item()) if plen.numel() else 0
    tokens = prefix[:, :, :l_max]
    pos = torch.arange(l_max, device=device)
    tokens = torch.where(pos.view(1, 1, -1) < plen.unsqueeze(2), tokens, torch.full_like(tokens, -1))
    return CtcNBest(
        tokens=tokens,
        lens=plen,
        scores=scores,
        log_prob_blank=pb,
        log_prob_non_blank=pnb,
    )
