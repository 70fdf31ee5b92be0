"""Decoders against the independent reference numbers in the zipformer_ref fixture.

The fixture README ("CTC prefix beam search", "Attention decoder",
"Transducer", "Transducer modified beam search", "Tolerances") defines the
reference algorithms; discrete outputs must match exactly, float scores within
``1e-4 * max(1, |ref|)``.
"""

from __future__ import annotations


import pytest
import torch

from model.decoding import (
    DecodingConfig,
    attention_scores_for_nbest,
    ctc_greedy_search,
    ctc_prefix_beam_search,
    decode,
    transducer_greedy_search,
    transducer_modified_beam_search,
)


@pytest.fixture(scope="module")
def expected(ref_expected):
    """The golden outputs (``ref_expected`` / ``ref_model`` come from conftest.py)."""
    return ref_expected


def _rows(ids: torch.Tensor, lens: torch.Tensor):
    return [ids[i, : int(lens[i])].tolist() for i in range(ids.shape[0])]


def _close(a: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4):
    a, ref = a.double(), ref.double()
    tol = rel * torch.clamp(ref.abs(), min=1.0)
    assert torch.all((a - ref).abs() <= tol), f"max diff {(a - ref).abs().max().item()} (tol {tol.min().item()})"


def test_ctc_greedy_matches_reference(expected):
    res = ctc_greedy_search(expected["ctc_log_probs"], expected["encoder_out_lens"], blank_id=0)
    assert res.lens.tolist() == expected["ctc_greedy_lens"].tolist() == [35, 23, 11]
    assert _rows(res.tokens, res.lens) == _rows(expected["ctc_greedy_ids"], expected["ctc_greedy_lens"])
    # every token frame is the start of an argmax run of that token
    am = expected["ctc_log_probs"].argmax(-1)
    for i in range(3):
        for tok, f in zip(*[x[i, : int(res.lens[i])].tolist() for x in (res.tokens, res.frames)]):
            assert am[i, f].item() == tok
            assert f == 0 or am[i, f - 1].item() != tok


def test_ctc_prefix_beam_matches_reference(expected):
    with torch.inference_mode():
        nb = ctc_prefix_beam_search(expected["ctc_log_probs"], expected["encoder_out_lens"], beam=4, blank_id=0)
    ref_ids, ref_lens = expected["ctc_prefix_beam.ids"], expected["ctc_prefix_beam.lens"]
    assert nb.lens.tolist() == ref_lens.tolist()
    assert bool(nb.valid.all())
    for i in range(3):
        for j in range(4):
            n = int(ref_lens[i, j])
            assert nb.tokens[i, j, :n].tolist() == ref_ids[i, j, :n].tolist(), (i, j)
    _close(nb.scores, expected["ctc_prefix_beam.scores"])
    # n-best is sorted and the score is logaddexp of the two parts
    assert torch.all(nb.scores[:, :-1] >= nb.scores[:, 1:])
    _close(torch.logaddexp(nb.log_prob_blank, nb.log_prob_non_blank), nb.scores, rel=1e-6)


def test_ctc_prefix_beam_top1_scores_only_from_model_head(expected, ref_model):
    """The CTC head of the loaded model reproduces the fixture log-probs, so
    the n-best computed end to end matches too."""
    with torch.inference_mode():
        lp = ref_model.ctc_output(expected["encoder_out"])
        nb = ctc_prefix_beam_search(lp, expected["encoder_out_lens"], beam=4)
    assert nb.lens.tolist() == expected["ctc_prefix_beam.lens"].tolist()
    _close(nb.scores, expected["ctc_prefix_beam.scores"])


def test_attention_nll_of_nbest_matches_reference(expected, ref_model):
    with torch.inference_mode():
        nb = ctc_prefix_beam_search(expected["ctc_log_probs"], expected["encoder_out_lens"], beam=4)
        att = attention_scores_for_nbest(
            ref_model.attention_decoder, expected["encoder_out"], expected["encoder_out_lens"], nb
        )
    _close(-att, expected["ctc_prefix_beam.attn_decoder_nll_sum"])


def test_transducer_greedy_matches_reference(expected, ref_model):
    with torch.inference_mode():
        res = transducer_greedy_search(ref_model, expected["encoder_out"], expected["encoder_out_lens"], blank_id=0)
    lens = expected["transducer.greedy_lens"]
    assert res.lens.tolist() == lens.tolist() == [14, 53, 25]
    assert _rows(res.tokens, res.lens) == _rows(expected["transducer.greedy_ids"], lens)
    assert _rows(res.frames, res.lens) == _rows(expected["transducer.greedy_timestamps"], lens)
    for i in range(3):
        n = int(lens[i])
        _close(res.token_logits[i, :n], expected["transducer.greedy_scores"][i, :n])


def test_transducer_modified_beam_matches_reference(expected, ref_model):
    with torch.inference_mode():
        res = transducer_modified_beam_search(
            ref_model, expected["encoder_out"], expected["encoder_out_lens"], beam=4, blank_id=0
        )
    lens = expected["transducer.modified_beam_lens"]
    assert res.lens.tolist() == lens.tolist() == [7, 37, 23]
    assert _rows(res.tokens, res.lens) == _rows(expected["transducer.modified_beam_ids"], lens)
    assert _rows(res.frames, res.lens) == _rows(expected["transducer.modified_beam_timestamps"], lens)


def test_decode_entry_point_reproduces_reference_results(expected, ref_model):
    enc, lens = expected["encoder_out"], expected["encoder_out_lens"]

    hyps = decode(ref_model, enc, lens, DecodingConfig(method="ctc-greedy"))
    assert [h.token_ids for h in hyps] == _rows(expected["ctc_greedy_ids"], expected["ctc_greedy_lens"])

    hyps = decode(ref_model, enc, lens, DecodingConfig(method="ctc-beam", beam=4, return_nbest=True))
    ref = expected["ctc_prefix_beam.ids"]
    ref_lens = expected["ctc_prefix_beam.lens"]
    for i, h in enumerate(hyps):
        assert h.token_ids == ref[i, 0, : int(ref_lens[i, 0])].tolist()
        assert [e.token_ids for e in h.nbest] == [ref[i, j, : int(ref_lens[i, j])].tolist() for j in range(4)]
        _close(torch.tensor([h.score]), expected["ctc_prefix_beam.scores"][i, :1])

    hyps = decode(ref_model, enc, lens, DecodingConfig(method="attention-rescoring", beam=4, attention_scale=1.0))
    total = expected["ctc_prefix_beam.scores"] - expected["ctc_prefix_beam.attn_decoder_nll_sum"]
    for i, h in enumerate(hyps):
        j = int(total[i].argmax())
        assert h.token_ids == ref[i, j, : int(ref_lens[i, j])].tolist()
        _close(torch.tensor([h.ctc_score]), expected["ctc_prefix_beam.scores"][i, j : j + 1])
        _close(torch.tensor([h.attention_score]), -expected["ctc_prefix_beam.attn_decoder_nll_sum"][i, j : j + 1])

    hyps = decode(ref_model, enc, lens, DecodingConfig(method="transducer-greedy"))
    g_lens = expected["transducer.greedy_lens"]
    assert [h.token_ids for h in hyps] == _rows(expected["transducer.greedy_ids"], g_lens)
    assert [h.token_frames for h in hyps] == _rows(expected["transducer.greedy_timestamps"], g_lens)

    hyps = decode(ref_model, enc, lens, DecodingConfig(method="transducer-beam", transducer_beam=4))
    b_lens = expected["transducer.modified_beam_lens"]
    assert [h.token_ids for h in hyps] == _rows(expected["transducer.modified_beam_ids"], b_lens)
    assert [h.token_frames for h in hyps] == _rows(expected["transducer.modified_beam_timestamps"], b_lens)
    for h in hyps:
        assert h.token_times == pytest.approx([0.04 * f for f in h.token_frames])
