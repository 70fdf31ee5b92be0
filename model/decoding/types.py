"""Result types shared by the decoding methods.

Two layers of results exist:

* The search functions (``ctc_greedy_search``, ``ctc_prefix_beam_search``,
  ``transducer_greedy_search`` ...) work on whole batches and return padded
  tensors (``*Result`` / ``CtcNBest`` below).  They stay on the device of their
  inputs.
* :func:`model.decoding.decode` turns those into one :class:`Hypothesis` per
  utterance: plain Python lists and floats, ready for detokenisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch


@dataclass
class NBestEntry:
    """One entry of an n-best list (CTC prefix beam search / attention rescoring)."""

    token_ids: List[int]
    #: total CTC log-probability of the label sequence (all alignments that the
    #: beam kept), ``logaddexp(p_blank, p_non_blank)``
    ctc_score: float
    #: sum of attention-decoder token log-probs, eos included (``-nll.sum()``);
    #: ``None`` when no attention decoder was run
    attention_score: Optional[float] = None
    #: word-LM log-probability of the entry's words (``DecodingConfig.lm_scale`` > 0)
    lm_score: Optional[float] = None
    #: the score the entries were ranked by
    score: float = 0.0


@dataclass
class Hypothesis:
    """The decoding result for one utterance."""

    #: BPE token ids, blank/sos/eos never included
    token_ids: List[int]
    #: encoder frame (after subsampling) of each token: the first frame of the
    #: token in the best CTC alignment, or the transducer emission frame
    token_frames: List[int]
    #: ``token_frames * frame_shift_s`` (start time of the frame, seconds)
    token_times: List[float]
    #: the score the hypothesis was selected by; see ``decode`` for each method
    score: float
    #: utterance confidence in [0, 1]; see ``model.decoding.confidence``
    confidence: float
    #: per-token confidence in [0, 1] (same definition, one value per token)
    token_confidences: List[float] = field(default_factory=list)
    #: total CTC log-probability of ``token_ids`` (CTC methods)
    ctc_score: Optional[float] = None
    #: attention-decoder log-probability of ``token_ids`` + eos (rescoring)
    attention_score: Optional[float] = None
    #: word-LM log-probability of the words (attention rescoring with ``lm_scale`` > 0)
    lm_score: Optional[float] = None
    #: contextual biasing: the bonus of the completed hotword phrases of ``token_ids`` (part of
    #: ``score`` with attention rescoring); None when the utterance had no hotword list
    hotword_score: Optional[float] = None
    #: number of valid encoder frames of the utterance
    num_frames: int = 0
    #: utterance duration seen by the decoder, ``num_frames * frame_shift_s``
    duration: float = 0.0
    #: the method that produced the hypothesis
    method: str = ""
    #: the n-best list (beam methods with ``DecodingConfig.return_nbest``)
    nbest: Optional[List[NBestEntry]] = None


@dataclass
class CtcGreedyResult:
    tokens: torch.Tensor  # (N, L) int64, -1 padded
    lens: torch.Tensor  # (N,) int64
    frames: torch.Tensor  # (N, L) int64, first frame of each token, -1 padded
    #: (N, L) log-posterior of each token, max over the frames of its run; 0 padded
    token_log_probs: torch.Tensor
    #: (N,) log-probability of the greedy (best) path
    path_scores: torch.Tensor


@dataclass
class CtcNBest:
    """Padded n-best lists, best first.  Unused slots have ``scores == -inf``."""

    tokens: torch.Tensor  # (N, K, L) int64, -1 padded
    lens: torch.Tensor  # (N, K) int64
    scores: torch.Tensor  # (N, K) total prefix log-prob, -inf for unused slots
    log_prob_blank: torch.Tensor  # (N, K)
    log_prob_non_blank: torch.Tensor  # (N, K)
    #: (N, K) with a word LM fused into the search: what it added to each slot's rank
    #: (``lm_scale`` x LM log-prob + ``word_bonus`` x words, ``</s>`` included); else None
    search_lm_scores: Optional[torch.Tensor] = None
    #: (N, K) with hotwords (:mod:`model.decoding.hotwords`): the bonus of each slot's completed
    #: phrases (0 for unused slots); else None
    hotword_scores: Optional[torch.Tensor] = None

    @property
    def valid(self) -> torch.Tensor:
        """(N, K) bool: slot holds a hypothesis."""
        return self.scores > float("-inf")

    def to_lists(self) -> List[List[List[int]]]:
        """Token lists per utterance (unused slots dropped)."""
        tokens = self.tokens.tolist()
        lens = self.lens.tolist()
        valid = self.valid.tolist()
        return [
            [row[:n] for row, n, v in zip(tok_n, len_n, val_n) if v]
            for tok_n, len_n, val_n in zip(tokens, lens, valid)
        ]


@dataclass
class AlignmentResult:
    """Best (Viterbi) CTC alignment of given token sequences."""

    frames: torch.Tensor  # (M, L) first frame of each token, -1 padded
    end_frames: torch.Tensor  # (M, L) last frame of each token, -1 padded
    #: (M, L) max log-posterior of the token over the frames aligned to it; 0 padded
    token_log_probs: torch.Tensor
    path_scores: torch.Tensor  # (M,) log-prob of the best path, -inf if impossible


@dataclass
class RescoringResult:
    best_index: torch.Tensor  # (N,) index into the n-best slots
    attention_scores: torch.Tensor  # (N, K) -inf for unused slots
    total_scores: torch.Tensor  # (N, K) ctc + scale * att, -inf for unused slots


@dataclass
class TransducerResult:
    tokens: torch.Tensor  # (N, L) int64, -1 padded
    lens: torch.Tensor  # (N,)
    frames: torch.Tensor  # (N, L) emission frame, -1 padded
    #: (N, L) log_softmax(joiner) of each emitted token at its emission; 0 padded
    token_log_probs: torch.Tensor
    #: (N,) log-prob of the chosen hypothesis (greedy: the path; beam: merged)
    scores: torch.Tensor
    #: (N,) sum over blank decisions of P(blank) along the path (for confidence
    #: of empty results), and the number of such frames
    blank_prob_sum: torch.Tensor
    #: (N,) transducer-beam with hotwords: the completed phrases' bonus of the result; else None
    hotword_scores: Optional[torch.Tensor] = None
    #: (N, L) raw joiner logit of each emitted token (greedy only; else None)
    token_logits: Optional[torch.Tensor] = None
