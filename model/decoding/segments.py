"""Segmented n-best search: long inputs searched and rescored in short pieces.

Attention rescoring picks the best of an n-best list. On a short utterance the list holds
real alternatives for most of its words; on a 30 s window, ``beam`` entries of 60-odd
words differ in only a handful of places, and rescoring can fix little (measured with the
demo model on 26 s multi-sentence chunks: 12.3 % WER against 6.0 % for the same sentences
one by one, although greedy CTC differs by only 2-3 points).

So, when ``DecodingConfig.max_segment_seconds`` is set, :func:`decode` cuts each utterance
longer than that into *segments* of at most that length and runs the prefix beam search
and the rescoring on each segment on its own, with the attention decoder attending to the
segment's encoder frames only. The encoder itself still sees the whole input (its context
is not lost); only the search is split.

Cut rule (:func:`split_at_blanks`): a segment is cut inside the longest run of frames whose
CTC argmax is blank (the gap between words or sentences where the model is most sure
nothing is said), at the middle of the run; ties go to the run nearest the segment's
middle. Segments are cut again until none is longer than the limit. A segment with no
blank run inside stays whole, whatever its length.
"""

from __future__ import annotations

import bisect
from typing import List, Sequence, Tuple

import torch

Span = Tuple[int, int]  # [start, end) in encoder frames


def _blank_runs(is_blank: Sequence[bool]) -> List[Span]:
    """Runs of blank frames that have speech on both sides (not touching either end)."""
    runs, t, n = [], 0, len(is_blank)
    while t < n:
        if not is_blank[t]:
            t += 1
            continue
        s = t
        while t < n and is_blank[t]:
            t += 1
        if s > 0 and t < n:
            runs.append((s, t))
    return runs


def split_at_blanks(is_blank: Sequence[bool], max_frames: int) -> List[Span]:
    """Spans covering ``[0, len(is_blank))`` in order, each at most ``max_frames`` long where a
    blank run allows it, cut at the middles of the longest blank runs (module docstring)."""
    if max_frames <= 0:
        raise ValueError(f"max_frames must be > 0, got {max_frames}")
    runs = _blank_runs(is_blank)
    starts = [r[0] for r in runs]
    ends = [r[1] for r in runs]  # runs are disjoint and in order: both lists increase
    out: List[Span] = []
    pending = [(0, len(is_blank))]  # depth-first, left half first: spans come out in order
    while pending:
        a, b = pending.pop()
        inside = runs[bisect.bisect_right(starts, a):bisect.bisect_left(ends, b)] if b - a > max_frames else []
        if not inside:
            out.append((a, b))
            continue
        middle = (a + b) / 2
        s, e = max(inside, key=lambda r: (r[1] - r[0], -abs((r[0] + r[1]) / 2 - middle)))
        c = (s + e) // 2
        pending += [(c, b), (a, c)]
    return out


def plan_segments(log_probs: torch.Tensor, lens: torch.Tensor, max_frames: int, blank_id: int = 0) -> List[List[Span]]:
    """Per utterance, the spans its search runs on (:func:`split_at_blanks` on the CTC argmax)."""
    is_blank = (log_probs.argmax(dim=-1) == blank_id).tolist()
    return [split_at_blanks(row[:n], max_frames) if n > max_frames else [(0, n)]
            for row, n in zip(is_blank, lens.tolist())]


def gather_segments(x: torch.Tensor, spans: List[List[Span]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(S, T_seg, ...) padded tensor of the segments' frames of ``x`` (N, T, ...), and their lengths."""
    flat = [(i, a, b) for i, ss in enumerate(spans) for a, b in ss]
    longest = max(b - a for _, a, b in flat)
    out = x.new_zeros((len(flat), longest) + tuple(x.shape[2:]))
    for k, (i, a, b) in enumerate(flat):
        out[k, : b - a] = x[i, a:b]
    return out, torch.tensor([b - a for _, a, b in flat], dtype=torch.long, device=x.device)
