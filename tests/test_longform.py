"""Window planning and the seam merge of pipeline.longform, on simulated window hypotheses."""

from __future__ import annotations

import random

import pytest

from pipeline.longform.merge import WORD_MARK, WindowHypothesis, merge_windows
from pipeline.plan.windows import Window, plan_windows


def test_short_cut_is_one_window():
    (w,) = plan_windows(12.0, 30.0, 4.0)
    assert (w.index, w.count, w.start, w.duration, w.keep_from, w.keep_to) == (0, 1, 0.0, 12.0, 0.0, 12.0)


@pytest.mark.parametrize("duration", [30.01, 47.5, 61.0, 600.0, 7200.0])
def test_windows_cover_with_overlap(duration):
    ws = plan_windows(duration, 30.0, 4.0)
    assert ws[0].start == 0.0 and ws[-1].end == pytest.approx(duration)
    assert all(w.duration == 30.0 for w in ws)
    for a, b in zip(ws, ws[1:]):
        assert a.end - b.start >= 4.0 - 1e-9  # at least the requested overlap
        assert a.keep_to == b.keep_from == pytest.approx((b.start + a.end) / 2)
    # the fewest windows that can do it: one fewer would need a smaller overlap
    n = len(ws)
    assert n == 1 or (n - 1) * 30.0 - (n - 2) * 4.0 < duration
    assert sum(w.keep_to - w.keep_from for w in ws) == pytest.approx(duration)


def test_bad_window_options():
    with pytest.raises(ValueError):
        plan_windows(100.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        plan_windows(100.0, 30.0, 15.0)


# ---------------------------------------------------------------- simulated recognition

VOCAB = ["the", "cat", "sat", "on", "mat", "and", "then", "ran", "far", "away", "over", "hill", "seven", "blue", "river"]


class Pieces:
    """Each word is two pieces: '▁' + first two letters, then the rest (or one piece if short)."""

    def __init__(self) -> None:
        self.pieces: list[str] = ["<blk>"]
        self.index: dict[str, int] = {}

    def ids(self, word: str) -> list[int]:
        parts = [WORD_MARK + word[:2]] + ([word[2:]] if len(word) > 2 else [])
        out = []
        for p in parts:
            if p not in self.index:
                self.index[p] = len(self.pieces)
                self.pieces.append(p)
            out.append(self.index[p])
        return out

    def piece(self, i: int) -> str:
        return self.pieces[i]


def speech(n_words: int, seed: int) -> list[tuple[str, float]]:
    """(word, start time), 0.25-0.45 s per word: continuous speech, no pauses."""
    rng = random.Random(seed)
    out, t = [], 0.2
    for _ in range(n_words):
        out.append((rng.choice(VOCAB), t))
        t += rng.uniform(0.25, 0.45)
    return out


def recognise(words, window: Window, pieces: Pieces, rng: random.Random, jitter: float = 0.03, shift: float = 0.15,
              edge: float = 0.3):
    """What a recogniser sees of one window: the words inside it, their times moved by one
    per-window offset of up to ``shift`` s plus up to ``jitter`` s each, and words within ``edge``
    s of a window edge garbled or lost (no context)."""
    ids, times = [], []
    offset = rng.uniform(-shift, shift)
    for word, t in words:
        if not (window.start <= t < window.end):
            continue
        near_edge = (t - window.start < edge and window.start > 0) or (window.end - t < edge and window.index < window.count - 1)
        if near_edge:
            if rng.random() < 0.5:
                continue
            word = "zzz" + word
        rel = max(0.0, t - window.start + offset + rng.uniform(-jitter, jitter))
        for k, tok in enumerate(pieces.ids(word)):
            ids.append(tok)
            times.append(rel + 0.04 * k)
    return WindowHypothesis(window, ids, times, ctc_score=-1.0 * len(ids), attention_score=-2.0, confidence=0.9)


def text_of(merged, pieces: Pieces) -> list[str]:
    return "".join(pieces.piece(i) for i in merged.token_ids).replace(WORD_MARK, " ").split()


@pytest.mark.parametrize("seed", range(6))
def test_merge_is_exact_on_continuous_speech(seed):
    rng = random.Random(seed)
    words = speech(400, seed)  # 140 s, no pause anywhere: every seam cuts through speech
    duration = words[-1][1] + 0.5
    windows = plan_windows(duration, 20.0, 4.0)
    assert len(windows) >= 8
    pieces = Pieces()
    hyps = [recognise(words, w, pieces, rng) for w in windows]
    rng.shuffle(hyps)  # windows come back from different actors in any order
    merged = merge_windows(hyps, pieces.piece)
    assert text_of(merged, pieces) == [w for w, _ in words]  # nothing dropped, doubled or garbled
    assert merged.seams_aligned == len(windows) - 1
    assert all(a <= b for a, b in zip(merged.token_times, merged.token_times[1:]))
    assert 0.0 <= merged.token_times[0] and merged.token_times[-1] <= duration
    # each word's time is within the simulated timing error of the truth
    starts = [t for i, t in zip(merged.token_ids, merged.token_times) if pieces.piece(i).startswith(WORD_MARK)]
    assert max(abs(a - b) for a, (_, b) in zip(starts, words)) <= 0.15 + 0.03 + 1e-6


def test_the_middle_alone_would_drop_or_double_words(monkeypatch):
    """Why the seam is aligned: with per-window timing offsets, cutting at the middle of the
    overlap by time alone loses or repeats words (the case the alignment exists for)."""
    import pipeline.longform.merge as lf

    monkeypatch.setattr(lf, "_align", lambda a, b: [])
    wrong = 0
    for seed in range(6):
        rng = random.Random(seed)
        words = speech(400, seed)
        windows = plan_windows(words[-1][1] + 0.5, 20.0, 4.0)
        pieces = Pieces()
        merged = lf.merge_windows([recognise(words, w, pieces, rng) for w in windows], pieces.piece)
        wrong += text_of(merged, pieces) != [w for w, _ in words]
    assert wrong >= 5


def test_merge_falls_back_to_the_middle_without_agreement():
    pieces = Pieces()
    windows = plan_windows(50.0, 30.0, 10.0)
    assert len(windows) == 2
    mid = windows[0].keep_to  # 25.0
    left = [("the", 5.0), ("cat", 22.0), ("sat", 24.0), ("on", 26.0)]
    right = [("hill", 21.0), ("blue", 24.5), ("river", 25.5), ("far", 40.0)]
    rng = random.Random(0)
    h0 = recognise(left, windows[0], pieces, rng, jitter=0.0, shift=0.0, edge=0.0)
    h1 = recognise(right, windows[1], pieces, rng, jitter=0.0, shift=0.0, edge=0.0)
    merged = merge_windows([h0, h1], pieces.piece)
    assert merged.seams_aligned == 0
    # left keeps words before the middle, right keeps words from the middle on
    assert text_of(merged, pieces) == ["the", "cat", "sat", "river", "far"]
    assert mid == pytest.approx(25.0)


def test_scores_and_confidence_are_owned_duration_weighted():
    pieces = Pieces()
    windows = plan_windows(50.0, 30.0, 10.0)
    hyps = [WindowHypothesis(w, [], [], ctc_score=-10.0 * (i + 1), attention_score=-4.0, confidence=c,
                             lm_score=-3.0 * (i + 1))
            for i, (w, c) in enumerate(zip(windows, (0.8, 0.4)))]
    merged = merge_windows(hyps, pieces.piece)
    own = [w.keep_to - w.keep_from for w in windows]  # 25, 25
    assert merged.ctc_score == pytest.approx(-10.0 * own[0] / 30 - 20.0 * own[1] / 30)
    assert merged.attention_score == pytest.approx(-4.0 * sum(own) / 30)
    assert merged.lm_score == pytest.approx(-3.0 * own[0] / 30 - 6.0 * own[1] / 30)
    assert merged.confidence == pytest.approx(0.6)
    hyps[1].lm_score = None  # a window without an LM score: the cut has none
    assert merge_windows(hyps, pieces.piece).lm_score is None
    assert merged.token_ids == []


def test_merge_needs_every_window():
    pieces = Pieces()
    windows = plan_windows(100.0, 30.0, 4.0)
    hyps = [WindowHypothesis(w, [], []) for w in windows[:-1]]
    with pytest.raises(ValueError, match="needs all"):
        merge_windows(hyps, pieces.piece)
