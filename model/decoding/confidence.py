"""Confidence scores.

Definition (all methods):

* **token confidence** = the model's posterior probability of the token where
  it was emitted:

  - CTC methods: the maximum CTC posterior ``P(token | frame)`` over the frames
    the token occupies in the best (Viterbi) alignment of the chosen
    hypothesis (for greedy search: its run of argmax frames);
  - transducer methods: ``softmax(joiner)[token]`` at the emission frame, with
    the decoder context of the hypothesis.

* **utterance confidence** = the mean token confidence.  For an empty
  hypothesis it is the mean probability of "nothing emitted" instead: the mean
  blank posterior over the utterance's frames (CTC) or along the decoding path
  (transducer).  An utterance without frames gets 0.

Every value is a probability average, so it lies in [0, 1].
"""

from __future__ import annotations

import torch


def utterance_confidence(
    token_log_probs: torch.Tensor,
    token_lens: torch.Tensor,
    empty_value: torch.Tensor,
) -> torch.Tensor:
    """Mean of ``exp(token_log_probs)`` over each row's first ``token_lens``
    entries; ``empty_value`` where the row has no tokens.  All (N, ...) tensors."""
    n, l_max = token_log_probs.shape
    mask = torch.arange(l_max, device=token_log_probs.device).unsqueeze(0) < token_lens.unsqueeze(1)
    probs = torch.where(mask, token_log_probs.exp(), torch.zeros_like(token_log_probs))
    mean = probs.sum(dim=1) / token_lens.clamp(min=1).to(probs.dtype)
    out = torch.where(token_lens > 0, mean, empty_value.to(probs.dtype))
    return out.clamp(0.0, 1.0)


def ctc_blank_confidence(log_probs: torch.Tensor, lens: torch.Tensor, blank_id: int) -> torch.Tensor:
    """(N,) mean blank posterior over each utterance's valid frames (0 if none)."""
    t_max = log_probs.shape[1]
    mask = torch.arange(t_max, device=log_probs.device).unsqueeze(0) < lens.to(log_probs.device).unsqueeze(1)
    p = torch.where(mask, log_probs[:, :, blank_id].exp(), torch.zeros_like(log_probs[:, :, blank_id]))
    return torch.where(lens.to(p.device) > 0, p.sum(dim=1) / lens.to(p.device).clamp(min=1).to(p.dtype), torch.zeros_like(p[:, 0]))
