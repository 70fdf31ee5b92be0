"""Decoding for zipscribe's Zipformer ``AsrModel`` (no k2 needed).

Entry point::

    from model.decoding import DecodingConfig, decode
    hyps = decode(model, encoder_out, encoder_out_lens, DecodingConfig(method="attention-rescoring"))
    text = tokenizer.decode(hyps[0].token_ids)

Methods (``DecodingConfig.method``):

``ctc-greedy``
    per-frame argmax, merge repeats, drop blank.  ``score`` = ``ctc_score`` =
    total CTC log-prob of the result (all alignments, via ``ctc_loss``).
``ctc-beam``
    CTC prefix beam search (``beam`` prefixes kept per frame, top ``token_beam``
    tokens expanded per frame).  ``score`` = ``ctc_score`` = the prefix's
    ``logaddexp(p_blank, p_non_blank)``.
``attention-rescoring``
    the ``ctc-beam`` n-best rescored by the attention decoder in one batched
    pass: ``score = ctc_score + attention_scale * attention_score`` with
    ``attention_score`` = decoder log-prob of tokens + eos.
``transducer-greedy``
    greedy transducer search, max one symbol per frame.  ``score`` = log-prob
    of the decision path (tokens and blanks).
``transducer-beam``
    modified beam search (``transducer_beam`` hypotheses, max one symbol per
    frame).  ``score`` = the hypothesis' (merged) log-prob; the winner is the
    best ``score / (num_tokens + context_size)``.
``auto`` (default)
    ``attention-rescoring`` if the model has CTC and attention-decoder heads,
    else ``transducer-beam`` if it has a transducer, else ``ctc-beam``.

Causal (streaming-trained) models: ``chunk_size`` / ``left_context_frames``
(frames at the encoder's 50 Hz input rate, after the 2x convolutional
subsampling, as icefall's ``decode.py --chunk-size 16 --left-context-frames
128``) decode with chunked attention and convolution, as the model would see
the audio when streaming. ``None``: the model config's value when it is a single
one, else (a training list such as ``"16,32,64,-1"``) full context; ``-1``: full
context. :class:`model.recognizer.Recognizer` applies them to the encoder.

Long inputs: with ``DecodingConfig.max_segment_seconds`` set, ``ctc-beam`` and
``attention-rescoring`` search and rescore each utterance longer than that in
segments cut at the longest runs of CTC blanks; the encoder output is the
whole utterance's (:mod:`model.decoding.segments`).

Word LM: ``attention-rescoring`` with ``DecodingConfig.lm_scale`` > 0 adds that times
a word n-gram's log-probability of each n-best entry (``decode``'s ``lm_scorer``, which
:class:`model.recognizer.Recognizer` builds from a model directory's ``lm.arpa.gz`` and
the tokenizer; :mod:`model.word_lm`). With ``DecodingConfig.search_lm_scale`` > 0 the
same LM also steers the CTC prefix search that builds the n-best (shallow fusion,
``decode``'s ``search_lm``, :mod:`model.decoding.lm_fusion`); the entries' ``ctc_score`` stay
the CTC log-probs, so the rescoring score keeps its meaning.

Hotwords (contextual biasing, :mod:`model.decoding.hotwords`): ``decode``'s ``hotwords`` gives
each utterance a :class:`HotwordGraph` (or None); ``ctc-beam`` and ``attention-rescoring`` run the
automata inside the prefix search (a bonus per matched token, given back when the match fails,
kept when the phrase completes), and the attention rescoring adds each entry's completed-phrase
bonus to its total (``Hypothesis.hotword_score``), so that rescoring does not undo the search's
choice. ``transducer-beam`` ranks its candidates with the automata's gains too (icefall's way).
Greedy methods cannot bias: ``decode`` refuses lists for them.

Token times: ``token_frames`` are encoder frames (after subsampling); CTC
methods use the first frame of each token in the best alignment of the chosen
hypothesis (Viterbi, batched), transducer methods the emission frame.
``token_times = token_frames * frame_shift_s`` (frame start; 0.04 s for the
Zipformer's 10 ms features subsampled 4x).  Confidence: see
:mod:`model.decoding.confidence`.

Everything runs under ``torch.inference_mode()`` on the device of
``encoder_out``; the searches loop over frames only, never over utterances,
and convert to Python lists once at the end. A search frame is a fixed number of
tensor operations on fixed shapes with no host synchronisation
(:mod:`model.decoding.opcount` counts them, ``bench/decoding_ops.py`` prints them);
on CUDA the frame loops are replayed from CUDA graphs (:mod:`model.decoding.frames`;
``ZIPSCRIBE_CUDA_GRAPHS=0`` runs them eagerly), elsewhere they run eagerly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence

import torch

from .alignment import ctc_sequence_log_probs, ctc_viterbi_align
from .attention_rescoring import attention_rescore, attention_scores_for_nbest
from .confidence import ctc_blank_confidence, utterance_confidence
from .ctc_greedy import ctc_greedy_search
from .ctc_prefix_beam import ctc_prefix_beam_search
from .hotwords import HotwordBatch, HotwordGraph, HotwordList
from .lm_fusion import SearchLM
from .segments import gather_segments, plan_segments
from .transducer_beam import transducer_modified_beam_search
from .transducer_greedy import transducer_greedy_search
from .types import (
    AlignmentResult,
    CtcGreedyResult,
    CtcNBest,
    Hypothesis,
    NBestEntry,
    RescoringResult,
    TransducerResult,
)

__all__ = [
    "BIASING_METHODS",
    "METHODS",
    "LmScorer",
    "AlignmentResult",
    "CtcGreedyResult",
    "CtcNBest",
    "DecodingConfig",
    "HotwordGraph",
    "HotwordList",
    "Hypothesis",
    "NBestEntry",
    "RescoringResult",
    "SearchLM",
    "TransducerResult",
    "attention_rescore",
    "attention_scores_for_nbest",
    "available_methods",
    "ctc_greedy_search",
    "ctc_prefix_beam_search",
    "ctc_sequence_log_probs",
    "ctc_viterbi_align",
    "decode",
    "resolve_method",
    "transducer_greedy_search",
    "transducer_modified_beam_search",
]

#: LM log-probabilities of token-id sequences, one per sequence (``decode``'s ``lm_scorer``)
LmScorer = Callable[[Sequence[Sequence[int]]], Sequence[float]]

#: the methods that can bias towards hotwords (``decode``'s ``hotwords``)
BIASING_METHODS = ("ctc-beam", "attention-rescoring", "transducer-beam")
METHODS = ("ctc-greedy", "ctc-beam", "attention-rescoring", "transducer-greedy", "transducer-beam")
_ALIASES = {
    "ctc-prefix-beam": "ctc-beam",
    "ctc-prefix-beam-search": "ctc-beam",
    "ctc-greedy-search": "ctc-greedy",
    "attention-decoder-rescoring": "attention-rescoring",
    "greedy-search": "transducer-greedy",
    "modified-beam-search": "transducer-beam",
}


@dataclass
class DecodingConfig:
    #: one of :data:`METHODS` or ``"auto"`` (the best method the model's heads allow)
    method: str = "auto"
    #: CTC prefix beam: prefixes kept per frame, also the n-best size rescored
    beam: int = 8
    #: CTC prefix beam: tokens expanded per frame (default: ``beam``, as icefall)
    token_beam: Optional[int] = None
    #: ``total = ctc_score + attention_scale * attention_score`` (icefall's
    #: convention; WeNet's ``ctc_weight`` is ~ ``1 / attention_scale``).  1.0
    #: weighs both models equally; icefall picks the value by sweeping scales
    #: (0.01 ... 9.0) on dev data, which the demo training should do too.
    attention_scale: float = 1.0
    #: attention-rescoring with a word LM (:class:`model.word_lm.WordLM`, a model directory's
    #: ``lm.arpa.gz``): ``total += lm_scale * lm_score``, the LM's natural-log probability of the
    #: entry's words (``</s>`` included). 0: no LM. Other methods ignore it.
    lm_scale: float = 0.0
    #: attention-rescoring with a word LM: its weight inside the CTC prefix search that builds the
    #: n-best (shallow fusion, :mod:`model.decoding.lm_fusion`): prefixes are ranked by CTC log-prob
    #: ``+ search_lm_scale * LM log-prob + word_bonus * words`` of their completed words, plus
    #: ``search_lm_scale`` x a look-ahead for the word being spelled, so the n-best holds what the
    #: LM finds likely. 0: the search does not see the LM. The rescoring score is unchanged.
    search_lm_scale: float = 0.0
    #: added per completed word in the fused search (offsets the LM's pull towards fewer words)
    word_bonus: float = 0.0
    #: contextual biasing: the bonus per matched token of hotwords that give no score of their own
    #: (``decode`` takes the scores inside its :class:`HotwordGraph`; the pipeline's --hotwords-score
    #: defaults to this; the demo model's was chosen on dev by bench/biasing.py)
    hotwords_score: float = 1.5
    #: modified beam search beam (icefall default 4)
    transducer_beam: int = 4
    #: seconds per encoder frame: 10 ms features x subsampling 4
    frame_shift_s: float = 0.04
    blank_id: int = 0
    #: attach the n-best list to each Hypothesis (ctc-beam / attention-rescoring)
    return_nbest: bool = False
    #: ctc-beam / attention-rescoring: search and rescore utterances longer than
    #: this in segments of at most this many seconds, cut at the longest runs of
    #: CTC blanks (:mod:`model.decoding.segments`); None: whole utterances (the
    #: reference behaviour)
    max_segment_seconds: Optional[float] = None
    #: causal models: attention/convolution chunk in 50 Hz encoder frames (-1: full context;
    #: None: the model config's single value, else full context)
    chunk_size: Optional[int] = None
    #: causal models, with chunk_size > 0: left context in 50 Hz frames (-1: all; None: the model
    #: config's single value, else all)
    left_context_frames: Optional[int] = None

    def label(self) -> str:
        """The method and the settings that change its result, as transcript rows and run
        summaries name it: ``attention-rescoring beam=8 scale=1 segments<=6s``."""
        if self.method in ("ctc-beam", "attention-rescoring"):
            extra = f" beam={self.beam}" + (f" scale={self.attention_scale:g}" if self.method == "attention-rescoring" else "")
            extra += f" lm={self.lm_scale:g}" if self.method == "attention-rescoring" and self.lm_scale else ""
            if self.method == "attention-rescoring" and self.search_lm_scale:
                extra += f" fusion={self.search_lm_scale:g}" + (f" bonus={self.word_bonus:g}" if self.word_bonus else "")
            extra += f" segments<={self.max_segment_seconds:g}s" if self.max_segment_seconds else ""
        elif self.method == "transducer-beam":
            extra = f" beam={self.transducer_beam}"
        else:
            extra = ""
        if self.chunk_size is not None and self.chunk_size > 0:
            left = self.left_context_frames
            extra += f" chunk={self.chunk_size} left={'all' if left is None or left < 0 else left}"
        return self.method + extra


def available_methods(model) -> List[str]:
    """Methods the model's heads support."""
    has_ctc = getattr(model, "ctc_output", None) is not None
    has_att = getattr(model, "attention_decoder", None) is not None
    has_rnnt = getattr(model, "decoder", None) is not None and getattr(model, "joiner", None) is not None
    out = []
    if has_ctc:
        out += ["ctc-greedy", "ctc-beam"]
        if has_att:
            out.append("attention-rescoring")
    if has_rnnt:
        out += ["transducer-greedy", "transducer-beam"]
    return out


def resolve_method(model, method: str) -> str:
    """Normalise ``method`` (aliases, ``auto``) and check the model supports it."""
    m = _ALIASES.get(method.strip().lower().replace("_", "-"), method.strip().lower().replace("_", "-"))
    avail = available_methods(model)
    if m == "auto":
        for cand in ("attention-rescoring", "transducer-beam", "ctc-beam"):
            if cand in avail:
                return cand
        raise ValueError("the model has neither a CTC nor a transducer head")
    if m not in METHODS:
        raise ValueError(f"unknown decoding method {method!r}; choose one of {METHODS} or 'auto'")
    if m not in avail:
        raise ValueError(f"decoding method {m!r} needs a head this model lacks; available: {avail}")
    return m


def _times(frames: List[int], shift: float) -> List[float]:
    return [round(f * shift, 6) for f in frames]


@torch.inference_mode()
def decode(
    model,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    config: Optional[DecodingConfig] = None,
    ctc_log_probs: Optional[torch.Tensor] = None,
    lm_scorer: Optional[LmScorer] = None,
    search_lm: Optional[SearchLM] = None,
    hotwords: Optional[Sequence[Optional[HotwordGraph]]] = None,
) -> List[Hypothesis]:
    """Decode a batch of encoder outputs; one :class:`Hypothesis` per utterance.

    Args:
      model: an ``AsrModel`` (eval mode) with the heads the method needs.
      encoder_out: (N, T, C) from ``model.forward_encoder``.
      encoder_out_lens: (N,) valid frames.
      config: :class:`DecodingConfig` (default: attention rescoring, beam 8).
      ctc_log_probs: optional precomputed ``model.ctc_output(encoder_out)``.
      lm_scorer: the LM log-probability of each token sequence of a list (a word LM behind the
        tokenizer, see ``Recognizer``); needed when ``config.lm_scale`` > 0 and the method is
        attention rescoring.
      search_lm: the same word LM as a :class:`SearchLM` over the tokenizer's pieces; needed when
        ``config.search_lm_scale`` > 0 and the method is attention rescoring.
      hotwords: one :class:`HotwordGraph` (or None: no list) per utterance, for contextual
        biasing (ctc-beam, attention-rescoring, transducer-beam); None or all None: no biasing, exactly the
        decoding without lists. Greedy methods raise ValueError when a list is given.
    """
    cfg = config or DecodingConfig()
    if not (cfg.lm_scale >= 0 and cfg.search_lm_scale >= 0 and math.isfinite(cfg.word_bonus)):
        raise ValueError("lm_scale and search_lm_scale must be >= 0 and word_bonus finite, got "
                         f"{cfg.lm_scale}, {cfg.search_lm_scale}, {cfg.word_bonus}")
    method = resolve_method(model, cfg.method)
    lens = encoder_out_lens.to(encoder_out.device)
    n = encoder_out.shape[0]
    if hotwords is not None and len(hotwords) != n:
        raise ValueError(f"{len(hotwords)} hotword lists for a batch of {n} utterances")
    if hotwords is not None and all(g is None for g in hotwords):
        hotwords = None
    if hotwords is not None and method not in BIASING_METHODS:
        raise ValueError(f"{method} cannot bias towards hotwords: use one of {', '.join(BIASING_METHODS)}")
    shift = cfg.frame_shift_s
    num_frames = lens.tolist()
    if n == 0:
        return []

    if method.startswith("transducer"):
        if method == "transducer-greedy":
            res = transducer_greedy_search(model, encoder_out, lens, blank_id=cfg.blank_id)
        else:
            batch_hw = HotwordBatch.build(hotwords, encoder_out.device) if hotwords is not None else None
            res = transducer_modified_beam_search(model, encoder_out, lens, beam=cfg.transducer_beam, blank_id=cfg.blank_id,
                                                  hotwords=batch_hw)
        empty_conf = torch.where(
            lens > 0,
            res.blank_prob_sum / lens.clamp(min=1).to(res.blank_prob_sum.dtype),
            torch.zeros_like(res.blank_prob_sum),
        )
        conf = utterance_confidence(res.token_log_probs, res.lens, empty_conf)
        toks, flens, frames = res.tokens.tolist(), res.lens.tolist(), res.frames.tolist()
        tok_conf = res.token_log_probs.exp().tolist()
        scores, confs = res.scores.tolist(), conf.tolist()
        hw_l = res.hotword_scores.tolist() if res.hotword_scores is not None else None
        out = []
        for i in range(n):
            k = flens[i]
            out.append(
                Hypothesis(
                    token_ids=toks[i][:k],
                    token_frames=frames[i][:k],
                    token_times=_times(frames[i][:k], shift),
                    score=scores[i],
                    confidence=confs[i],
                    token_confidences=tok_conf[i][:k],
                    hotword_score=hw_l[i] if hw_l is not None and hotwords[i] is not None else None,
                    num_frames=num_frames[i],
                    duration=num_frames[i] * shift,
                    method=method,
                )
            )
        return out

    log_probs = ctc_log_probs if ctc_log_probs is not None else model.ctc_output(encoder_out)
    if log_probs.dtype not in (torch.float32, torch.float64):
        log_probs = log_probs.float()  # beam arithmetic in half precision is too coarse
    if method != "ctc-greedy" and cfg.max_segment_seconds:
        max_frames = max(1, int(round(cfg.max_segment_seconds / shift)))
        if max(num_frames) > max_frames:
            return _decode_segmented(model, encoder_out, lens, log_probs, cfg, max_frames, lm_scorer, search_lm,
                                     hotwords)
    blank_conf = ctc_blank_confidence(log_probs, lens, cfg.blank_id)

    if method == "ctc-greedy":
        g = ctc_greedy_search(log_probs, lens, blank_id=cfg.blank_id)
        ctc_scores = ctc_sequence_log_probs(log_probs, lens, g.tokens, g.lens, blank_id=cfg.blank_id)
        conf = utterance_confidence(g.token_log_probs, g.lens, blank_conf)
        toks, flens, frames = g.tokens.tolist(), g.lens.tolist(), g.frames.tolist()
        tok_conf = g.token_log_probs.exp().tolist()
        ctc_l, confs = ctc_scores.tolist(), conf.tolist()
        return [
            Hypothesis(
                token_ids=toks[i][: flens[i]],
                token_frames=frames[i][: flens[i]],
                token_times=_times(frames[i][: flens[i]], shift),
                score=ctc_l[i],
                confidence=confs[i],
                token_confidences=tok_conf[i][: flens[i]],
                ctc_score=ctc_l[i],
                num_frames=num_frames[i],
                duration=num_frames[i] * shift,
                method=method,
            )
            for i in range(n)
        ]

    fused = method == "attention-rescoring" and cfg.search_lm_scale > 0
    if fused and search_lm is None:
        raise ValueError("search_lm_scale > 0 needs a word LM (lm.arpa.gz in the model directory)")
    batch_hw = HotwordBatch.build(hotwords, log_probs.device, log_probs.dtype) if hotwords is not None else None
    nbest = ctc_prefix_beam_search(log_probs, lens, beam=cfg.beam, blank_id=cfg.blank_id, token_beam=cfg.token_beam,
                                   lm=search_lm if fused else None, lm_scale=cfg.search_lm_scale if fused else 0.0,
                                   word_bonus=cfg.word_bonus, hotwords=batch_hw)
    lm_l = None
    hw_l = nbest.hotword_scores.tolist() if nbest.hotword_scores is not None else None
    if method == "attention-rescoring":
        extra = None
        if cfg.lm_scale:
            if lm_scorer is None:
                raise ValueError("lm_scale > 0 needs a word LM (lm.arpa.gz in the model directory)")
            lm_l = _lm_scores(nbest, lm_scorer)
            extra = cfg.lm_scale * torch.tensor(lm_l, dtype=torch.float32)
        if nbest.hotword_scores is not None:  # the completed phrases' bonus: rescoring keeps it
            hw_extra = nbest.hotword_scores.float().cpu()
            extra = hw_extra if extra is None else extra + hw_extra
        rr = attention_rescore(model.attention_decoder, encoder_out, lens, nbest, attention_scale=cfg.attention_scale,
                               extra_scores=extra)
        best = rr.best_index
        att_all, total_all = rr.attention_scores, rr.total_scores
    else:
        best = torch.zeros(n, dtype=torch.long, device=log_probs.device)  # slots are sorted, best first
        att_all, total_all = None, nbest.scores

    sel = best.view(n, 1, 1).expand(n, 1, nbest.tokens.shape[2])
    best_tokens = nbest.tokens.gather(1, sel).squeeze(1)
    best_lens = nbest.lens.gather(1, best.view(n, 1)).squeeze(1)
    ali = ctc_viterbi_align(log_probs, lens, best_tokens, best_lens, blank_id=cfg.blank_id)
    conf = utterance_confidence(ali.token_log_probs, best_lens, blank_conf)

    toks, flens, frames = best_tokens.tolist(), best_lens.tolist(), ali.frames.tolist()
    tok_conf = ali.token_log_probs.exp().tolist()
    confs, best_l = conf.tolist(), best.tolist()
    ctc_all = nbest.scores.tolist()
    att_l = att_all.tolist() if att_all is not None else None
    tot_l = total_all.tolist()
    nbest_lists = nbest.to_lists() if cfg.return_nbest else None
    out = []
    for i in range(n):
        j = best_l[i]
        nb = None
        if nbest_lists is not None:
            nb = [
                NBestEntry(
                    token_ids=nbest_lists[i][s],
                    ctc_score=ctc_all[i][s],
                    attention_score=att_l[i][s] if att_l is not None else None,
                    lm_score=lm_l[i][s] if lm_l is not None else None,
                    score=tot_l[i][s],
                )
                for s in range(len(nbest_lists[i]))
            ]
        out.append(
            Hypothesis(
                token_ids=toks[i][: flens[i]],
                token_frames=frames[i][: flens[i]],
                token_times=_times(frames[i][: flens[i]], shift),
                score=tot_l[i][j],
                confidence=confs[i],
                token_confidences=tok_conf[i][: flens[i]],
                ctc_score=ctc_all[i][j],
                attention_score=att_l[i][j] if att_l is not None else None,
                lm_score=lm_l[i][j] if lm_l is not None else None,
                hotword_score=hw_l[i][j] if hw_l is not None and hotwords[i] is not None else None,
                num_frames=num_frames[i],
                duration=num_frames[i] * shift,
                method=method,
                nbest=nb,
            )
        )
    return out


def _lm_scores(nbest, lm_scorer: "LmScorer") -> List[List[float]]:
    """(N, K) LM scores of the n-best entries (0.0 for unused slots): one scorer call for all."""
    lists = nbest.to_lists()
    flat = lm_scorer([y for entries in lists for y in entries])
    if len(flat) != sum(len(e) for e in lists):
        raise ValueError("the LM scorer returned a different number of scores than it was given sequences")
    it = iter(flat)
    return [[float(next(it)) if v else 0.0 for v in row] for row in nbest.valid.tolist()]


def _decode_segmented(model, encoder_out, lens, log_probs, cfg: DecodingConfig, max_frames: int,
                      lm_scorer: Optional[LmScorer] = None, search_lm: Optional[SearchLM] = None,
                      hotwords: Optional[Sequence[Optional[HotwordGraph]]] = None) -> List[Hypothesis]:
    """``decode`` on segments of each utterance (:mod:`model.decoding.segments`), joined back.

    The joined hypothesis: tokens, frames and token confidences concatenated (frames made
    absolute); ``ctc_score``, ``attention_score`` and ``score`` are the sums over segments
    (segments are scored independently); ``confidence`` is the mean token confidence, or the
    frame-weighted mean of the segments' confidences when there are no tokens. No n-best list.
    """
    spans = plan_segments(log_probs, lens, max_frames, cfg.blank_id)
    seg_enc, seg_lens = gather_segments(encoder_out, spans)
    seg_lp, _ = gather_segments(log_probs, spans)
    inner = replace(cfg, max_segment_seconds=None, return_nbest=False)
    seg_hw = [hotwords[u] for u, ss in enumerate(spans) for _ in ss] if hotwords is not None else None
    pieces = iter(decode(model, seg_enc, seg_lens, inner, ctc_log_probs=seg_lp, lm_scorer=lm_scorer,
                         search_lm=search_lm, hotwords=seg_hw))
    out = []
    for ss, n_frames in zip(spans, lens.tolist()):
        parts = [(a, next(pieces)) for a, _ in ss]
        ids = [t for _, h in parts for t in h.token_ids]
        frames = [a + f for a, h in parts for f in h.token_frames]
        tok_conf = [c for _, h in parts for c in h.token_confidences]
        if tok_conf:
            conf = sum(tok_conf) / len(tok_conf)
        else:
            conf = sum(h.confidence * h.num_frames for _, h in parts) / max(1, n_frames)
        att = [h.attention_score for _, h in parts]
        lms = [h.lm_score for _, h in parts]
        out.append(Hypothesis(
            token_ids=ids, token_frames=frames, token_times=_times(frames, cfg.frame_shift_s),
            score=float(sum(h.score for _, h in parts)), confidence=conf, token_confidences=tok_conf,
            ctc_score=float(sum(h.ctc_score for _, h in parts)),
            attention_score=None if any(a is None for a in att) else float(sum(att)),
            lm_score=None if any(v is None for v in lms) else float(sum(lms)),
            hotword_score=None if any(h.hotword_score is None for _, h in parts)
            else float(sum(h.hotword_score for _, h in parts)),
            num_frames=n_frames, duration=n_frames * cfg.frame_shift_s, method=parts[0][1].method,
        ))
    return out
