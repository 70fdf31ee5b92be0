"""Attention-decoder rescoring of CTC prefix-beam n-best lists.

Score convention (icefall's ``attention_scale``)::

    total = ctc_score + attention_scale * attention_score

* ``ctc_score``: total CTC log-probability of the hypothesis from the prefix
  beam search (``logaddexp(p_blank, p_non_blank)``);
* ``attention_score``: log-probability of the hypothesis under the attention
  decoder, summed over its tokens **and the final eos**
  (``-attention_decoder.nll(...).sum(-1)``).  An empty hypothesis is scored as
  the single eos token.

WeNet writes the same combination as ``ctc_weight * ctc + att`` (with
``reverse_weight`` for its right-to-left decoder); for a given hypothesis set
``ctc_weight = 1 / attention_scale`` ranks identically.  Scale 0 returns the CTC
best; a very large scale follows the attention decoder.
"""

from __future__ import annotations

import torch

from .types import CtcNBest, RescoringResult


@torch.inference_mode()
def attention_scores_for_nbest(
    attention_decoder,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    nbest: CtcNBest,
) -> torch.Tensor:
    """Attention-decoder log-prob (tokens + eos) of every n-best entry.

    All valid entries of all utterances go through the decoder in ONE batched
    call; each entry's memory is its utterance's ``encoder_out`` row
    (the model's ``score_nbest_tensors`` decodes each utterance's hypotheses as one
    prefix trie built with tensor operations, so shared prefixes and the memory
    projection are computed once; a decoder with only ``nll`` gets ``memory_index``
    instead).
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
    if hasattr(attention_decoder, "score_nbest_tensors"):
        # the model decodes each utterance's hypotheses as one prefix trie: shared prefixes once;
        # the utterances with something to score, in order (the decoder batch of the reference)
        scored_nk = scored.view(n, k)
        utts = scored_nk.any(dim=1).nonzero().squeeze(1)
        tokens = nbest.tokens.to(device).index_select(0, utts)
        scores = attention_decoder.score_nbest_tensors(
            encoder_out.index_select(0, utts), lens_d.index_select(0, utts), tokens,
            nbest.lens.to(device).index_select(0, utts), scored_nk.index_select(0, utts))
        out = out.view(n, k).index_copy(0, utts, torch.where(scored_nk.index_select(0, utts), scores,
                                                             out.view(n, k).index_select(0, utts)))
        return out
    utt_of_entry = torch.arange(n, device=device).repeat_interleave(k)[scored]
    tokens = nbest.tokens.reshape(n * k, -1)[scored.to(nbest.tokens.device)]
    lens = nbest.lens.reshape(n * k)[scored.to(nbest.lens.device)]
    ys = [row[:ln] for row, ln in zip(tokens.tolist(), lens.tolist())]
    nll = attention_decoder.nll(encoder_out, lens_d, ys, memory_index=utt_of_entry)  # (M, S+1), 0 where ignored
    out[scored] = -nll.float().sum(dim=1)
    return out.view(n, k)


@torch.inference_mode()
def attention_rescore(
    attention_decoder,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    nbest: CtcNBest,
    attention_scale: float = 1.0,
    extra_scores: torch.Tensor | None = None,
) -> RescoringResult:
    """Pick, per utterance, the n-best entry maximising
    ``ctc_score + attention_scale * attention_score (+ extra_scores)`` (first one on ties).
    ``extra_scores``: (N, K) added to the valid entries' totals (a scaled word-LM score)."""
    att = attention_scores_for_nbest(attention_decoder, encoder_out, encoder_out_lens, nbest)
    ctc = nbest.scores.to(att.device).float()
    valid = nbest.valid.to(att.device)
    combined = ctc + attention_scale * torch.where(valid, att, torch.zeros_like(att))
    if extra_scores is not None:
        combined = combined + extra_scores.to(device=att.device, dtype=combined.dtype)
    total = torch.where(valid, combined, torch.full_like(att, float("-inf")))
    best = total.argmax(dim=1)
    return RescoringResult(best_index=best, attention_scores=att, total_scores=total)
