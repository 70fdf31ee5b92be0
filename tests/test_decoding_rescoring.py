"""Attention rescoring: score combination, batching of the decoder call,
empty hypotheses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from model.decoding import (
    DecodingConfig,
    attention_rescore,
    attention_scores_for_nbest,
    ctc_prefix_beam_search,
    decode,
)


@pytest.fixture(scope="module")
def expected(ref_expected):
    """The golden outputs (``ref_expected`` / ``ref_model`` come from conftest.py)."""
    return ref_expected


class FakeAttentionDecoder:
    """Deterministic stand-in for ``AttentionDecoderModel.nll``: position p of
    token y costs ``0.1 + 0.3 * ((7 y + p) % 5)``, eos costs 0.5 plus 0.01 x
    the memory's first feature (so the memory row matters).  Records calls."""

    sos_id = eos_id = 1
    ignore_id = -1

    def __init__(self):
        self.calls = []

    def cost(self, ys, mem_row):
        return sum(0.1 + 0.3 * ((7 * y + p) % 5) for p, y in enumerate(ys)) + 0.5 + 0.01 * float(mem_row[0, 0])

    def nll(self, encoder_out, encoder_out_lens, ys, memory_index=None):
        # like AttentionDecoderModel.nll: row i of ys is scored against memory row memory_index[i]
        self.shared_calls = getattr(self, "shared_calls", []) + [(encoder_out.shape[0], None if memory_index is None else memory_index.clone())]
        if memory_index is not None:
            encoder_out, encoder_out_lens = encoder_out[memory_index], encoder_out_lens[memory_index]
        self.calls.append((encoder_out.clone(), encoder_out_lens.clone(), [list(y) for y in ys]))
        s = max(len(y) for y in ys) + 1
        out = torch.zeros(len(ys), s)
        for i, y in enumerate(ys):
            for p, tok in enumerate(y):
                out[i, p] = 0.1 + 0.3 * ((7 * tok + p) % 5)
            out[i, len(y)] = 0.5 + 0.01 * float(encoder_out[i, 0, 0])
        return out


def _random_problem(seed: int, n: int = 3, t: int = 20, v: int = 8):
    gen = torch.Generator().manual_seed(seed)
    lp = (torch.randn(n, t, v, generator=gen) * 2.5).log_softmax(-1)
    lens = torch.tensor([t, t - 7, t - 12])[:n]
    enc = torch.randn(n, t, 4, generator=gen)
    return lp, lens, enc


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0, 3.0, 1e6])
def test_rescoring_maximises_combined_score_fake_decoder(scale):
    lp, lens, enc = _random_problem(0)
    nb = ctc_prefix_beam_search(lp, lens, beam=6)
    dec = FakeAttentionDecoder()
    rr = attention_rescore(dec, enc, lens, nb, attention_scale=scale)

    # exactly one batched decoder call with every valid entry and its own memory row
    assert len(dec.calls) == 1
    mem, mem_lens, ys = dec.calls[0]
    lists = nb.to_lists()
    assert ys == [y for per_utt in lists for y in per_utt]
    utt = [i for i, per_utt in enumerate(lists) for _ in per_utt]
    assert torch.equal(mem, enc[utt])
    assert mem_lens.tolist() == [int(lens[i]) for i in utt]

    for i in range(lp.shape[0]):
        ctc = [s for s in nb.scores[i].tolist() if s > float("-inf")]
        att = [-dec.cost(y, enc[i]) for y in lists[i]]
        assert rr.attention_scores[i, : len(att)].tolist() == pytest.approx(att, rel=1e-6)
        total = [c + scale * a for c, a in zip(ctc, att)]
        j = int(rr.best_index[i])
        assert total[j] == max(total)
        if scale == 0.0:
            assert j == 0  # the CTC best
        if scale == 1e6:
            assert att[j] == max(att)  # follows the attention decoder


def test_rescoring_real_decoder_matches_unbatched_scoring(expected, ref_model):
    enc, lens = expected["encoder_out"], expected["encoder_out_lens"]
    with torch.inference_mode():
        lp = ref_model.ctc_output(enc)
        nb = ctc_prefix_beam_search(lp, lens, beam=8)
        lists = nb.to_lists()
        # independent scoring: one hypothesis at a time, unbatched memory
        att_ref = []
        for i, hyps in enumerate(lists):
            row = []
            for y in hyps:
                nll = ref_model.attention_decoder.nll(enc[i : i + 1, : int(lens[i])], lens[i : i + 1], [y])
                row.append(-nll.sum().item())
            att_ref.append(row)

    for scale in (0.0, 0.5, 1.0, 1e4):
        hyps = decode(ref_model, enc, lens, DecodingConfig(method="attention-rescoring", beam=8, attention_scale=scale, return_nbest=True))
        for i, h in enumerate(hyps):
            ctc = [s for s in nb.scores[i].tolist() if s > float("-inf")]
            att = att_ref[i]
            total = [c + scale * a for c, a in zip(ctc, att)]
            j = max(range(len(total)), key=lambda q: total[q])
            assert h.token_ids == lists[i][j]
            assert h.ctc_score == pytest.approx(ctc[j], rel=1e-5)
            assert h.attention_score == pytest.approx(att[j], rel=1e-4, abs=1e-3)
            assert h.score == pytest.approx(ctc[j] + scale * h.attention_score, rel=1e-5)
            assert [e.token_ids for e in h.nbest] == lists[i]
            assert [e.attention_score for e in h.nbest] == pytest.approx(att, rel=1e-4, abs=1e-3)
            if scale == 0.0:
                assert j == 0
            if scale == 1e4:
                assert att[j] == max(att)
    beam_hyps = decode(ref_model, enc, lens, DecodingConfig(method="ctc-beam", beam=8))
    zero_hyps = decode(ref_model, enc, lens, DecodingConfig(method="attention-rescoring", beam=8, attention_scale=0.0))
    assert [h.token_ids for h in beam_hyps] == [h.token_ids for h in zero_hyps]


def _blank_heavy_log_probs(n: int, t: int, v: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, v, generator=gen)
    logits[:, :, 0] += 8.0  # blank dominates every frame
    return logits.log_softmax(-1)


def test_empty_hypotheses_fake_decoder():
    lp = _blank_heavy_log_probs(2, 6, 5)
    lens = torch.tensor([6, 4])
    enc = torch.randn(2, 6, 3)
    nb = ctc_prefix_beam_search(lp, lens, beam=4)
    assert nb.lens[:, 0].tolist() == [0, 0]  # the empty prefix wins
    dec = FakeAttentionDecoder()
    rr = attention_rescore(dec, enc, lens, nb, attention_scale=0.0)
    assert rr.best_index.tolist() == [0, 0]
    _, _, ys = dec.calls[0]
    assert [] in ys
    for i in range(2):
        assert rr.attention_scores[i, 0].item() == pytest.approx(-dec.cost([], enc[i]), rel=1e-6)


def test_empty_hypotheses_real_model(expected, ref_model):
    enc, lens = expected["encoder_out"], expected["encoder_out_lens"]
    v = ref_model.vocab_size
    lp = _blank_heavy_log_probs(3, enc.shape[1], v, seed=1)
    att_dec = ref_model.attention_decoder
    for method in ("ctc-greedy", "ctc-beam", "attention-rescoring"):
        hyps = decode(ref_model, enc, lens, DecodingConfig(method=method, beam=4, attention_scale=0.0, return_nbest=True), ctc_log_probs=lp)
        for i, h in enumerate(hyps):
            assert h.token_ids == [] and h.token_frames == [] and h.token_times == []
            assert h.token_confidences == []
            # empty result: confidence is the mean blank posterior
            p_blank = lp[i, : int(lens[i]), 0].exp().mean().item()
            assert h.confidence == pytest.approx(p_blank, rel=1e-5)
            assert 0.0 <= h.confidence <= 1.0
            assert h.ctc_score == pytest.approx(lp[i, : int(lens[i]), 0].sum().item(), rel=1e-4)
            if method == "attention-rescoring":
                # the empty hypothesis is scored as the single eos after sos
                with torch.inference_mode():
                    logits = att_dec.decoder(
                        x=torch.tensor([[att_dec.sos_id]]),
                        x_lens=torch.tensor([1]),
                        memory=enc[i : i + 1],
                        memory_lens=lens[i : i + 1],
                    )
                eos_lp = logits[0, 0].log_softmax(-1)[att_dec.eos_id].item()
                assert h.attention_score == pytest.approx(eos_lp, rel=1e-4, abs=1e-4)
                assert h.nbest[0].token_ids == []


def test_zero_frame_utterance_in_batch_fake_decoder():
    lp, lens, enc = _random_problem(3)
    lens = torch.tensor([20, 0, 5])
    nb = ctc_prefix_beam_search(lp, lens, beam=4)
    assert nb.to_lists()[1] == [[]]
    assert nb.scores[1, 0].item() == 0.0
    dec = FakeAttentionDecoder()
    rr = attention_rescore(dec, enc, lens, nb, attention_scale=1.0)
    assert rr.best_index[1].item() == 0
    assert rr.total_scores[1, 0].item() == 0.0
    assert all(ln > 0 for ln in dec.calls[0][1].tolist())


def test_decode_with_fake_model_and_no_attention_head():
    lp, lens, enc = _random_problem(4)
    model = SimpleNamespace(ctc_output=lambda x: lp, attention_decoder=None, decoder=None, joiner=None)
    with pytest.raises(ValueError, match="lacks"):
        decode(model, enc, lens, DecodingConfig(method="attention-rescoring"))
    hyps = decode(model, enc, lens, DecodingConfig(method="auto", beam=4))
    assert [h.method for h in hyps] == ["ctc-beam"] * 3
    model.attention_decoder = FakeAttentionDecoder()
    hyps = decode(model, enc, lens, DecodingConfig(method="auto", beam=4))
    assert [h.method for h in hyps] == ["attention-rescoring"] * 3
    with pytest.raises(ValueError, match="unknown"):
        decode(model, enc, lens, DecodingConfig(method="viterbi-magic"))


def test_rescoring_passes_each_utterance_memory_once():
    lp, lens, enc = _random_problem(7)
    nb = ctc_prefix_beam_search(lp, lens, beam=5)
    dec = FakeAttentionDecoder()
    attention_rescore(dec, enc, lens, nb, attention_scale=0.8)
    assert len(dec.shared_calls) == 1
    n_rows, index = dec.shared_calls[0]
    assert n_rows == enc.shape[0]  # memory not repeated per hypothesis
    assert index.tolist() == [i for i, per_utt in enumerate(nb.to_lists()) for _ in per_utt]


def test_real_decoder_memory_index_equals_repeated_memory(ref_model, ref_expected):
    enc, lens = ref_expected["encoder_out"], ref_expected["encoder_out_lens"]
    ys = [[5, 6, 7], [], [9] * 11, [3, 4], [100]]
    index = torch.tensor([0, 0, 1, 2, 2])
    with torch.inference_mode():
        shared = ref_model.attention_decoder.nll(enc, lens, ys, memory_index=index)
        repeated = ref_model.attention_decoder.nll(enc[index], lens[index], ys)
    assert torch.allclose(shared, repeated, atol=1e-4, rtol=1e-5)


def test_trie_scoring_equals_per_hypothesis_nll(ref_model, ref_expected):
    """score_nbest decodes shared prefixes once; the numbers must not change."""
    enc, lens = ref_expected["encoder_out"], ref_expected["encoder_out_lens"]
    nbest = [[[5, 6, 7], [5, 6, 8], [], [5], [5, 6, 7, 7]], [[9] * 11, [9] * 10 + [3]], [[3, 4], [100]]]
    ad = ref_model.attention_decoder
    with torch.inference_mode():
        got = ad.score_nbest(enc, lens, nbest)
        for u, hyps in enumerate(nbest):
            index = torch.tensor([u] * len(hyps))
            want = (-ad.nll(enc[index], lens[index], hyps).sum(-1)).tolist()
            assert got[u] == pytest.approx(want, rel=1e-5, abs=1e-4)


def test_fixture_nbest_attention_scores_through_the_trie(ref_model, ref_expected):
    """The n-best of the fixture, rescored through score_nbest, gives the reference nll sums."""
    nb = ctc_prefix_beam_search(ref_expected["ctc_log_probs"], ref_expected["encoder_out_lens"], beam=4)
    att = attention_scores_for_nbest(ref_model.attention_decoder, ref_expected["encoder_out"], ref_expected["encoder_out_lens"], nb)
    ref = -ref_expected["ctc_prefix_beam.attn_decoder_nll_sum"]
    assert torch.allclose(att, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
