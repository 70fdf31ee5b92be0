"""Merging the transcripts of a long cut's overlapping windows back into one.

The windows are planned by :func:`pipeline.plan.windows.plan_windows`; each is transcribed as an
ordinary batch item, and :func:`merge_windows` stitches their hypotheses back together.

Merge rule (documented in the README):

* Hypotheses are turned into *words*: a word starts at a token whose piece begins with the
  sentencepiece word marker (``▁``) and takes the tokens that follow it. A word's time is its
  first token's time, made absolute by adding the window's start.
* At each seam, the words both windows put inside their overlap are aligned (edit-distance
  alignment on the word strings). The cut is made at the matched word pair whose time is
  closest to the middle of the overlap: the left window's words up to and including that
  word, the right window's words after its partner. Where the two windows agree near the
  middle, no word is dropped or doubled even when CTC places a word's time a frame or two
  differently in the two windows.
* If the overlap has no word both windows agree on, the middle of the overlap decides: each
  window keeps the words that start on its side of it, i.e. every word comes from the window
  in which it lies farthest from an edge.
* Token times stay absolute and are made non-decreasing across seams.
* ``ctc_score``, ``attention_score`` and ``lm_score`` add up the window scores, each weighted by the
  fraction of the window it owns (from the middle of the overlap before it to the middle of
  the overlap after it); ``confidence`` is the mean of the window confidences weighted by
  those owned durations. (Scores are log probabilities of a whole window; the weighting
  counts overlapped audio once.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from pipeline.plan.windows import Window

#: the log-probability scores a transcript carries; joined pieces and merged windows add them up
SCORES = ("ctc_score", "attention_score", "lm_score")

WORD_MARK = "\u2581"


@dataclass
class WindowHypothesis:
    """A window's decoding result; ``token_times`` are relative to the window's start."""

    window: Window
    token_ids: list[int]
    token_times: list[float]
    ctc_score: Optional[float] = None
    attention_score: Optional[float] = None
    confidence: Optional[float] = None
    token_confidences: list[float] = field(default_factory=list)  # per token; may be empty
    lm_score: Optional[float] = None


@dataclass
class MergedHypothesis:
    token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # seconds from the cut's start
    ctc_score: Optional[float] = None
    attention_score: Optional[float] = None
    lm_score: Optional[float] = None
    confidence: Optional[float] = None
    token_confidences: list[float] = field(default_factory=list)  # per token, when every window had them
    seams_aligned: int = 0  # seams cut at a matched word (the rest fell back to the middle)


@dataclass
class _Word:
    text: str
    time: float  # absolute
    token_ids: list[int]
    token_times: list[float]  # absolute
    token_confidences: list[float]


def _words(hyp: WindowHypothesis, piece: Callable[[int], str]) -> list[_Word]:
    words: list[_Word] = []
    offset = hyp.window.start
    confs = hyp.token_confidences if len(hyp.token_confidences) == len(hyp.token_ids) else [None] * len(hyp.token_ids)
    for tok, t, c in zip(hyp.token_ids, hyp.token_times, confs):
        p = piece(tok)
        if not words or p.startswith(WORD_MARK):
            words.append(_Word("", offset + t, [], [], []))
        w = words[-1]
        w.text += p.replace(WORD_MARK, "")
        w.token_ids.append(tok)
        w.token_times.append(offset + t)
        w.token_confidences.append(c)
    return words


def _align(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs of equal words on a minimum-edit-distance alignment of ``a`` and ``b``."""
    n, m = len(a), len(b)
    dist = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        dist[i][0] = i
    for j in range(m + 1):
        dist[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            sub = dist[i - 1][j - 1] + (0 if a[i - 1] == b[j - 1] else 1)
            dist[i][j] = min(sub, dist[i - 1][j] + 1, dist[i][j - 1] + 1)
    pairs = []
    i, j = n, m
    while i > 0 and j > 0:
        if a[i - 1] == b[j - 1] and dist[i][j] == dist[i - 1][j - 1]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif dist[i][j] == dist[i - 1][j - 1] + 1:
            i, j = i - 1, j - 1
        elif dist[i][j] == dist[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def merge_windows(hyps: Sequence[WindowHypothesis], piece: Callable[[int], str]) -> MergedHypothesis:
    """One hypothesis for the whole cut from its windows' hypotheses (see the module docstring).

    ``piece(token_id)`` returns the sentencepiece piece of a token (``Tokenizer.id_to_piece``).
    """
    if not hyps:
        return MergedHypothesis()
    hyps = sorted(hyps, key=lambda h: h.window.index)
    if [h.window.index for h in hyps] != list(range(hyps[0].window.count)):
        raise ValueError(f"windows {[h.window.index for h in hyps]} of {hyps[0].window.count} given: merge needs all of them")
    words = [_words(h, piece) for h in hyps]
    # kept[i] = (first, last) word indices of window i in the merged result (last exclusive)
    first = [0] * len(hyps)
    last = [len(w) for w in words]
    aligned = 0
    for i in range(len(hyps) - 1):
        left, right = hyps[i].window, hyps[i + 1].window
        middle = left.keep_to
        a_idx = [k for k, w in enumerate(words[i]) if w.time >= right.start]
        b_idx = [k for k, w in enumerate(words[i + 1]) if w.time < left.end]
        pairs = _align([words[i][k].text for k in a_idx], [words[i + 1][k].text for k in b_idx])
        if pairs:
            pa, pb = min(pairs, key=lambda p: abs(0.5 * (words[i][a_idx[p[0]]].time + words[i + 1][b_idx[p[1]]].time) - middle))
            last[i] = a_idx[pa] + 1
            first[i + 1] = b_idx[pb] + 1
            aligned += 1
        else:
            last[i] = sum(1 for w in words[i] if w.time < middle)
            first[i + 1] = sum(1 for w in words[i + 1] if w.time < middle)
    merged = MergedHypothesis(seams_aligned=aligned)
    for i, ws in enumerate(words):
        for w in ws[first[i]:max(first[i], last[i])]:
            merged.token_ids.extend(w.token_ids)
            merged.token_times.extend(w.token_times)
            merged.token_confidences.extend(w.token_confidences)
    if any(c is None for c in merged.token_confidences):
        merged.token_confidences = []
    for k in range(1, len(merged.token_times)):  # monotonic across seams
        merged.token_times[k] = max(merged.token_times[k], merged.token_times[k - 1])
    total = sum(h.window.keep_to - h.window.keep_from for h in hyps)
    weights = [(h.window.keep_to - h.window.keep_from) / h.window.duration if h.window.duration > 0 else 0.0 for h in hyps]
    for name in SCORES:
        values = [getattr(h, name) for h in hyps]
        if all(v is not None for v in values):
            setattr(merged, name, float(sum(w * v for w, v in zip(weights, values))))
    confs = [h.confidence for h in hyps]
    if all(c is not None for c in confs) and total > 0:
        merged.confidence = float(sum((h.window.keep_to - h.window.keep_from) * c for h, c in zip(hyps, confs)) / total)
    return merged
