"""Cutting windows at their pauses (pipeline.longform.pauses) and joining the pieces' transcripts."""

from __future__ import annotations

import numpy as np
import pytest

from model.recognizer import Transcript
from pipeline.longform.pauses import PauseSplit, join_transcripts, speech_pieces

SR = 16000


def bursts(layout, level: float = 0.3, floor_db: float = -70.0, seed: int = 0):
    """Audio from ("tone" | "gap", seconds) pairs: 220 Hz tones at ``level`` and gaps of noise
    ``floor_db`` below it; returns the samples and the tones' [start, end) sample ranges."""
    rng = np.random.default_rng(seed)
    parts, tones, t = [], [], 0
    for kind, seconds in layout:
        n = int(seconds * SR)
        if kind == "tone":
            parts.append(level * np.sin(2 * np.pi * 220 * np.arange(n) / SR))
            tones.append((t, t + n))
        else:
            parts.append(np.zeros(n))
        t += n
    x = np.concatenate(parts)
    x += level * 10 ** (floor_db / 20) * rng.standard_normal(x.size)
    return x.astype(np.float32), tones


LAYOUT = [("gap", 0.2), ("tone", 1.0), ("gap", 0.5), ("tone", 0.8), ("gap", 0.15), ("tone", 0.6), ("gap", 1.0),
          ("tone", 0.4), ("gap", 0.6)]


def _check_pieces(pieces, tones, groups, x, split: PauseSplit):
    assert len(pieces) == len(groups)
    assert all(a < b for a, b in pieces) and all(p[1] <= q[0] for p, q in zip(pieces, pieces[1:]))  # ordered, disjoint
    pad = int(split.pad_seconds * SR) + int(0.025 * SR)  # a frame of slack at the edges
    for (a, b), group in zip(pieces, groups):
        first, last = tones[group[0]], tones[group[-1]]
        assert a <= first[0] and last[1] <= b  # the sound of the piece's tones is all inside
        assert first[0] - a <= pad and b - last[1] <= pad  # at most pad of silence kept
    assert pieces[-1][1] <= x.size


def test_pieces_are_the_sound_between_pauses():
    x, tones = bursts(LAYOUT)
    split = PauseSplit()
    pieces = speech_pieces(x, SR, split)
    # the 0.15 s gap is no pause: tones 1 and 2 stay together; the 0.5 s gap is shared by halves
    _check_pieces(pieces, tones, [[0], [1, 2], [3]], x, split)
    assert pieces[0][1] <= (tones[0][1] + tones[1][0]) // 2 + SR // 100 <= pieces[1][0] + SR // 50
    assert pieces[0][0] == 0  # 0.2 s of lead silence is less than the pad
    # shorter pauses on request
    short = PauseSplit(min_pause_seconds=0.1)
    _check_pieces(speech_pieces(x, SR, short), tones, [[0], [1], [2], [3]], x, short)


def test_the_threshold_follows_the_recording_level():
    x, tones = bursts(LAYOUT)
    assert speech_pieces(x * 0.01, SR) == speech_pieces(x, SR)  # 40 dB quieter, same cuts
    # a noise floor only 20 dB under the speech is no pause at a 50 dB threshold, but is at 15 dB
    noisy, _ = bursts(LAYOUT, floor_db=-20.0)
    assert speech_pieces(noisy, SR) == [(0, noisy.size)]
    _check_pieces(speech_pieces(noisy, SR, PauseSplit(threshold_db=15.0)), tones, [[0], [1, 2], [3]], noisy,
                  PauseSplit(threshold_db=15.0))


def test_no_pause_or_no_sound_is_one_piece():
    x, _ = bursts([("tone", 3.0)])
    assert speech_pieces(x, SR) == [(0, x.size)]
    silence = np.zeros(SR * 2, dtype=np.float32)
    assert speech_pieces(silence, SR) == [(0, silence.size)]
    assert speech_pieces(np.zeros(10, dtype=np.float32), SR) == [(0, 10)]
    with pytest.raises(ValueError):
        PauseSplit(min_pause_seconds=0.0)


@pytest.mark.needs_tools("espeak-ng", "sox")
def test_spoken_sentences_with_pauses_become_one_piece_each(tmp_path):
    from model.training.corpus import long_recording

    sentences = ["the seven blue rivers ran far away", "a cat sat on the mat", "then we walked over the hill",
                 "nobody knew what the weather would bring"]
    waves, starts = long_recording(tmp_path / "four.wav", sentences, (0.5, 0.8), seed=0)
    import soundfile as sf

    x, _ = sf.read(str(tmp_path / "four.wav"), dtype="float32")
    pieces = speech_pieces(x, SR)
    assert len(pieces) == len(sentences)
    for (a, b), start, wave in zip(pieces, starts, waves):
        s0 = int(start * SR)
        sound = np.flatnonzero(np.abs(wave) > 1e-3)  # the sentence's own audible samples
        assert a <= s0 + sound[0] and s0 + sound[-1] < b
        assert a >= s0 - int(0.45 * SR)  # not more than half a pause of lead


def _tr(ids, times, conf, ctc=-1.0, att=-2.0, score=-3.0, lm=-0.5):
    return Transcript(text="", token_ids=ids, token_times=times, score=score, confidence=conf, ctc_score=ctc,
                      attention_score=att, lm_score=lm)


def test_join_moves_times_and_combines_scores():
    parts = [(0.0, 2.0, _tr([5, 6], [0.2, 0.5], 0.9)), (2.5, 1.0, _tr([], [], 0.5)),
             (4.0, 3.0, _tr([7, 8, 9, 10], [0.1, 0.3, 0.8, 1.2], 0.6, ctc=-4.0, att=-1.0, score=-5.0))]
    joined = join_transcripts(parts, lambda ids: " ".join(map(str, ids)))
    assert joined.token_ids == [5, 6, 7, 8, 9, 10] and joined.text == "5 6 7 8 9 10"
    assert joined.token_times == pytest.approx([0.2, 0.5, 4.1, 4.3, 4.8, 5.2])
    assert joined.ctc_score == pytest.approx(-6.0) and joined.attention_score == pytest.approx(-5.0)
    assert joined.lm_score == pytest.approx(-1.5)
    assert joined.score == pytest.approx(-11.0)
    assert joined.confidence == pytest.approx((2 * 0.9 + 4 * 0.6) / 6)  # weighted by tokens
    empty = join_transcripts([(0.0, 1.0, _tr([], [], 0.8)), (1.0, 3.0, _tr([], [], 0.4))], lambda ids: "")
    assert empty.confidence == pytest.approx((0.8 + 3 * 0.4) / 4)  # no tokens: by duration
    no_att = join_transcripts([(0.0, 1.0, _tr([1], [0.0], 0.8)), (1.0, 1.0, _tr([2], [0.1], 0.8, att=None))],
                              lambda ids: "")
    assert no_att.attention_score is None and no_att.ctc_score == pytest.approx(-2.0)
    no_lm = join_transcripts([(0.0, 1.0, _tr([1], [0.0], 0.8)), (1.0, 1.0, _tr([2], [0.1], 0.8, lm=None))],
                             lambda ids: "")
    assert no_lm.lm_score is None


def test_join_starts_a_word_at_each_piece():
    """A piece is speech after a pause: a first token the model emitted without the word marker
    gets the lone marker piece before it (text ``morning one``, not ``morningone``); a piece that
    starts with a marked token is left alone, and so is the first piece."""
    pieces = {1: "\u2581in", 2: "\u2581morning", 3: "on", 4: "e", 5: "\u2581de", 9: "\u2581"}

    def text(ids):
        return "".join(pieces[i] for i in ids).replace("\u2581", " ").strip()

    def starts(i):
        return pieces[i].startswith("\u2581")

    parts = [(0.0, 2.0, _tr([3, 1, 2], [0.1, 0.5, 0.9], 0.9)), (3.0, 1.0, _tr([3, 4], [0.2, 0.4], 0.7)),
             (5.0, 1.0, _tr([5], [0.1], 0.6))]
    joined = join_transcripts(parts, text, starts, 9)
    assert joined.token_ids == [3, 1, 2, 9, 3, 4, 5]
    assert joined.text == "on in morning one de"
    assert joined.token_times == pytest.approx([0.1, 0.5, 0.9, 3.2, 3.2, 3.4, 5.1])
    assert len(joined.token_confidences) == len(joined.token_ids)
    assert join_transcripts(parts, text).text == "on in morningone de"  # without a tokenizer's help: as emitted
