"""Batch independence, token times, confidences and edge cases of ``decode``."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from model.decoding import (
    METHODS,
    DecodingConfig,
    available_methods,
    ctc_greedy_search,
    ctc_prefix_beam_search,
    decode,
    resolve_method,
)


@pytest.fixture(scope="module")
def expected(ref_expected):
    """The golden outputs (``ref_expected`` / ``ref_model`` come from conftest.py)."""
    return ref_expected


def _cfg(method: str) -> DecodingConfig:
    return DecodingConfig(method=method, beam=6, transducer_beam=4, attention_scale=0.7, return_nbest=True)


def _same(a, b):
    assert a.token_ids == b.token_ids
    assert a.token_frames == b.token_frames
    assert a.token_times == b.token_times
    assert a.score == pytest.approx(b.score, rel=1e-4, abs=1e-3)
    assert a.confidence == pytest.approx(b.confidence, abs=1e-5)
    if a.ctc_score is not None:
        assert a.ctc_score == pytest.approx(b.ctc_score, rel=1e-4, abs=1e-3)
    if a.attention_score is not None:
        assert a.attention_score == pytest.approx(b.attention_score, rel=1e-4, abs=1e-3)
    if a.nbest is not None:
        assert [e.token_ids for e in a.nbest] == [e.token_ids for e in b.nbest]


@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_unbatched(expected, ref_model, method):
    enc, lens = expected["encoder_out"], expected["encoder_out_lens"]
    batched = decode(ref_model, enc, lens, _cfg(method))
    for i in range(enc.shape[0]):
        n = int(lens[i])
        single = decode(ref_model, enc[i : i + 1, :n].clone(), lens[i : i + 1], _cfg(method))
        _same(batched[i], single[0])
    # reordered batch with a duplicate and extra junk padding
    order = [2, 0, 2, 1]
    t_pad = enc.shape[1] + 9
    enc2 = torch.randn(len(order), t_pad, enc.shape[2]) * 5
    for r, i in enumerate(order):
        enc2[r, : int(lens[i])] = enc[i, : int(lens[i])]
    other = decode(ref_model, enc2, lens[order], _cfg(method))
    for r, i in enumerate(order):
        _same(other[r], batched[i])


@pytest.mark.parametrize("method", METHODS)
def test_times_monotonic_inside_duration_and_confidence_range(expected, ref_model, method):
    enc, lens = expected["encoder_out"], expected["encoder_out_lens"]
    hyps = decode(ref_model, enc, lens, _cfg(method))
    for i, h in enumerate(hyps):
        assert h.method == method
        assert h.num_frames == int(lens[i])
        assert h.duration == pytest.approx(0.04 * int(lens[i]))
        assert len(h.token_ids) > 0
        assert len(h.token_frames) == len(h.token_times) == len(h.token_ids) == len(h.token_confidences)
        # at most one token starts per frame for every method here
        assert all(a < b for a, b in zip(h.token_frames, h.token_frames[1:]))
        assert all(0 <= f < h.num_frames for f in h.token_frames)
        assert all(0.0 <= t < h.duration for t in h.token_times)
        assert h.token_times == pytest.approx([0.04 * f for f in h.token_frames])
        assert 0.0 <= h.confidence <= 1.0
        assert all(0.0 <= c <= 1.0 for c in h.token_confidences)
        assert h.confidence == pytest.approx(sum(h.token_confidences) / len(h.token_confidences), rel=1e-5)
        assert all(0 <= tok < ref_model.vocab_size and tok != 0 for tok in h.token_ids)


def test_ctc_token_confidence_is_posterior_at_aligned_frames(expected, ref_model):
    enc, lens = expected["encoder_out"], expected["encoder_out_lens"]
    lp = expected["ctc_log_probs"]
    for method in ("ctc-greedy", "ctc-beam", "attention-rescoring"):
        for h_i, h in enumerate(decode(ref_model, enc, lens, _cfg(method))):
            for tok, f, c in zip(h.token_ids, h.token_frames, h.token_confidences):
                # max over the token's segment, which starts at its first frame
                assert c >= lp[h_i, f, tok].exp().item() - 1e-6


def test_frame_shift_is_configurable(expected, ref_model):
    enc, lens = expected["encoder_out"], expected["encoder_out_lens"]
    h = decode(ref_model, enc, lens, DecodingConfig(method="ctc-greedy", frame_shift_s=0.08))[0]
    assert h.token_times == pytest.approx([0.08 * f for f in h.token_frames])
    assert h.duration == pytest.approx(0.08 * int(lens[0]))


def _blank_bias_model(ref_model, delta: float):
    m = copy.deepcopy(ref_model)
    with torch.no_grad():
        m.joiner.output_linear.bias[m.blank_id] += delta
    return m


def test_transducer_all_blank_gives_empty_hypotheses(expected, ref_model):
    enc, lens = expected["encoder_out"], expected["encoder_out_lens"]
    m = _blank_bias_model(ref_model, 100.0)
    for method in ("transducer-greedy", "transducer-beam"):
        for h in decode(m, enc, lens, _cfg(method)):
            assert h.token_ids == [] and h.token_frames == [] and h.token_times == []
            assert h.confidence == pytest.approx(1.0, abs=1e-4)  # mean P(blank) along the path
            assert h.score == pytest.approx(0.0, abs=1e-3)


def test_transducer_never_blank_emits_every_frame(expected, ref_model):
    enc, lens = expected["encoder_out"], expected["encoder_out_lens"]
    m = _blank_bias_model(ref_model, -100.0)
    for method in ("transducer-greedy", "transducer-beam"):
        for i, h in enumerate(decode(m, enc, lens, _cfg(method))):
            assert h.token_frames == list(range(int(lens[i])))  # max one symbol per frame


def test_zero_frame_utterances():
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 7, 6, generator=gen).log_softmax(-1)
    lens = torch.tensor([7, 0, 3])
    g = ctc_greedy_search(lp, lens)
    assert g.lens[1].item() == 0
    nb = ctc_prefix_beam_search(lp, lens, beam=3)
    assert nb.to_lists()[1] == [[]]
    model = SimpleNamespace(ctc_output=lambda x: lp, attention_decoder=None, decoder=None, joiner=None)
    for method in ("ctc-greedy", "ctc-beam"):
        hyps = decode(model, torch.zeros(3, 7, 2), lens, DecodingConfig(method=method, beam=3))
        assert hyps[1].token_ids == [] and hyps[1].confidence == 0.0 and hyps[1].duration == 0.0
        assert hyps[0].num_frames == 7


def test_method_resolution():
    full = SimpleNamespace(ctc_output=object(), attention_decoder=object(), decoder=object(), joiner=object())
    assert available_methods(full) == list(METHODS)
    assert resolve_method(full, "auto") == "attention-rescoring"
    assert resolve_method(full, "modified_beam_search") == "transducer-beam"
    assert resolve_method(full, "CTC-Prefix-Beam") == "ctc-beam"
    rnnt_only = SimpleNamespace(ctc_output=None, attention_decoder=None, decoder=object(), joiner=object())
    assert resolve_method(rnnt_only, "auto") == "transducer-beam"
    with pytest.raises(ValueError):
        resolve_method(rnnt_only, "ctc-greedy")
    with pytest.raises(ValueError):
        resolve_method(rnnt_only, "attention-rescoring")
    ctc_only = SimpleNamespace(ctc_output=object(), attention_decoder=None, decoder=None, joiner=None)
    assert resolve_method(ctc_only, "auto") == "ctc-beam"
    with pytest.raises(ValueError):
        resolve_method(ctc_only, "transducer-greedy")


def test_default_config_is_auto():
    cfg = DecodingConfig()
    assert cfg.method == "auto" and cfg.chunk_size is None and cfg.left_context_frames is None
    assert cfg.beam == 8 and cfg.transducer_beam == 4
    assert cfg.attention_scale == 1.0 and cfg.frame_shift_s == 0.04 and cfg.blank_id == 0
