"""Segmented search and rescoring (model.decoding.segments, DecodingConfig.max_segment_seconds)."""

from __future__ import annotations

import pytest
import torch

from model.decoding import DecodingConfig, decode
from model.decoding.segments import plan_segments, split_at_blanks


def _mask(text: str) -> list[bool]:
    """'x' = a frame with a token, '.' = a blank frame."""
    return [c == "." for c in text]


def test_cuts_at_the_middle_of_the_longest_blank_run():
    #          0123456789012345678901234
    mask = _mask("x..x.....x.x..x...x......")  # runs inside: 1-3, 4-9, 12-14, 15-18 (19-25 touches the end)
    assert split_at_blanks(mask, 25) == [(0, 25)]  # short enough: whole
    assert split_at_blanks(mask, 20) == [(0, 6), (6, 25)]  # the 5-frame run 4-9, at its middle (6)
    spans = split_at_blanks(mask, 8)
    assert spans[0][0] == 0 and spans[-1][1] == 25 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert all(b - a <= 8 for a, b in spans[:-1]) and spans[-1] == (16, 25)  # the tail has no run left inside


def test_ties_go_to_the_run_nearest_the_middle_and_runs_at_the_ends_are_never_cut():
    mask = _mask("..x..x..x..x..")  # equal runs 3-5, 6-8, 9-11; the middle one is cut first
    assert split_at_blanks(mask, 10) == [(0, 7), (7, 14)]
    assert split_at_blanks(mask, 6) == [(0, 4), (4, 7), (7, 10), (10, 14)]
    assert split_at_blanks(_mask("....xxxxxxxxxxxx...."), 5) == [(0, 20)]  # no blank run between tokens: whole
    with pytest.raises(ValueError):
        split_at_blanks(mask, 0)


def _long_batch(expected):
    """The fixture's encoder outputs joined into one ~14 s utterance, batched with a short one."""
    enc, lens = expected["encoder_out"], expected["encoder_out_lens"]
    parts = [enc[i, : lens[i]] for i in range(len(lens))]
    long = torch.cat(parts + parts[:2], dim=0)
    x = torch.zeros(2, long.shape[0], long.shape[1])
    x[0] = long
    x[1, : lens[2]] = enc[2, : lens[2]]
    return x, torch.tensor([long.shape[0], int(lens[2])])


@pytest.mark.parametrize("method", ["attention-rescoring", "ctc-beam"])
def test_segmented_decode_is_the_decode_of_each_segment(ref_model, ref_expected, method):
    x, lens = _long_batch(ref_expected)
    cfg = DecodingConfig(method=method, beam=4, attention_scale=0.7, max_segment_seconds=2.0)
    (long_hyp, short_hyp) = decode(ref_model, x, lens, cfg)
    whole = DecodingConfig(method=method, beam=4, attention_scale=0.7)
    spans = plan_segments(ref_model.ctc_output(x), lens, max_frames=50)
    assert len(spans[0]) >= 5 and spans[1] == [(0, int(lens[1]))]
    assert all(b - a <= 50 for a, b in spans[0][:-1])
    ids, frames, ctc, att, confs = [], [], 0.0, 0.0, []
    for a, b in spans[0]:
        (h,) = decode(ref_model, x[:1, a:b], torch.tensor([b - a]), whole)
        ids += h.token_ids
        frames += [a + f for f in h.token_frames]
        ctc += h.ctc_score
        att += h.attention_score or 0.0
        confs += h.token_confidences
    assert long_hyp.token_ids == ids and ids
    assert long_hyp.token_frames == frames and frames == sorted(frames)
    assert long_hyp.token_times == pytest.approx([0.04 * f for f in frames])
    assert long_hyp.ctc_score == pytest.approx(ctc, rel=1e-4)
    if method == "attention-rescoring":
        assert long_hyp.attention_score == pytest.approx(att, rel=1e-4)
        assert long_hyp.score == pytest.approx(ctc + 0.7 * att, rel=1e-4)
    else:
        assert long_hyp.attention_score is None
    assert long_hyp.confidence == pytest.approx(sum(confs) / len(confs), abs=1e-6)
    assert long_hyp.num_frames == int(lens[0]) and long_hyp.method == method
    # the short utterance is decoded exactly as without segmenting
    (_, short_whole) = decode(ref_model, x, lens, whole)
    assert short_hyp.token_ids == short_whole.token_ids and short_hyp.score == pytest.approx(short_whole.score, rel=1e-5)


def test_no_limit_or_greedy_decodes_whole(ref_model, ref_expected):
    x, lens = _long_batch(ref_expected)
    for method in ("ctc-greedy", "attention-rescoring"):
        plain = decode(ref_model, x, lens, DecodingConfig(method=method, beam=4))
        limit = decode(ref_model, x, lens, DecodingConfig(method=method, beam=4, max_segment_seconds=None if method != "ctc-greedy" else 2.0))
        assert [h.token_ids for h in plain] == [h.token_ids for h in limit]
    # a limit longer than the input changes nothing
    plain = decode(ref_model, x, lens, DecodingConfig(beam=4, return_nbest=True))
    roomy = decode(ref_model, x, lens, DecodingConfig(beam=4, return_nbest=True, max_segment_seconds=60.0))
    assert [h.token_ids for h in plain] == [h.token_ids for h in roomy] and roomy[0].nbest is not None


def _inner_run_starts(mask: list[bool]) -> list[int]:
    """Where blank runs with tokens on both sides start."""
    return [i for i in range(1, len(mask)) if mask[i] and not mask[i - 1] and not all(mask[i:])]


def test_an_hour_of_frames_with_ever_longer_blank_runs():
    # 90,000 frames (an hour at 40 ms) whose blank runs grow by one frame each: the longest run
    # is always the last one, so every cut peels one span off the end (the least balanced case)
    pattern: list[bool] = []
    k = 0
    while len(pattern) < 90000:
        k += 1
        pattern += [False] * 20 + [True] * k
    pattern = pattern[:90000] + [False]
    spans = split_at_blanks(pattern, 150)
    assert spans[0][0] == 0 and spans[-1][1] == len(pattern)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    for a, b in spans:  # a span over the limit has no blank run left inside it to cut at
        assert b - a <= 150 or not _inner_run_starts(pattern[a:b])
    assert sum(b - a <= 150 for a, b in spans) > 100
