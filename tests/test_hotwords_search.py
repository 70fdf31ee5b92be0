"""Hotwords inside the CTC prefix beam search and the attention rescoring (issue 35): without
lists (or with lists that never match) the search is bit for bit the reference search; with a
list it prefers the phrases, its kept bonus is the automaton's bonus of each hypothesis, the
fused LM does not penalise a hotword as <unk>, a batch of different lists is the utterances
decoded one by one, and decode() carries the bonus into the rescoring score."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny_model_dir
from legacy_decoding import legacy_ctc_prefix_beam_search
from test_lm_fusion import FUSION_ARPA, PIECES, _frames, _random_log_probs, search_lm
from test_word_lm import write

from model.decoding import DecodingConfig, SearchLM, ctc_prefix_beam_search, decode
from model.decoding.hotwords import HotwordBatch, HotwordGraph, HotwordList
from model.tokenizer import Tokenizer
from model.word_lm import WordLM

V = len(PIECES)


def _graph(phrases: list[list[str]], score: float) -> HotwordGraph:
    ids = tuple(tuple(PIECES.index(p) for p in phrase) for phrase in phrases)
    return HotwordGraph.build(HotwordList(ids, (score,) * len(ids)), V)


def _batch(graphs, dtype=torch.float32) -> HotwordBatch:
    return HotwordBatch.build(graphs, torch.device("cpu"), dtype)


@pytest.mark.parametrize("fused", [False, True])
def test_without_lists_the_search_is_the_reference_bit_for_bit(tmp_path, fused):
    """No lists, and lists that never match (their tokens never win a frame: <unk>), give the
    reference search's tokens and scores exactly (tests/legacy_decoding.py, the search before
    the later optimisations); with the fused LM too."""
    lm = search_lm(WordLM.from_arpa(write(tmp_path / "lm.arpa", FUSION_ARPA))) if fused else None
    kw = {"beam": 6, "lm": lm, "lm_scale": 0.7 if fused else 0.0, "word_bonus": 0.5 if fused else 0.0}
    log_probs = _random_log_probs(3, 30, seed=11)
    lens = torch.tensor([30, 21, 7])
    ref = legacy_ctc_prefix_beam_search(log_probs, lens, **kw)
    never = _graph([["<unk>", "▁a"], ["<unk>"]], 3.0)
    for hotwords in (None, _batch([never, None, never])):
        got = ctc_prefix_beam_search(log_probs, lens, hotwords=hotwords, **kw)
        assert torch.equal(got.tokens, ref.tokens) and torch.equal(got.lens, ref.lens)
        assert torch.equal(got.scores, ref.scores)
        if fused:
            assert torch.equal(got.search_lm_scores, ref.search_lm_scores)
        if hotwords is not None:
            assert torch.equal(got.hotword_scores, torch.zeros_like(got.scores))


def test_a_hotword_overturns_a_small_acoustic_margin():
    """Speech "a (c|b) a (c|b)" preferring c by 1 nat: a hotword "b" (1.5 per token) puts
    "a b a b" first; a margin of 10 nats is not overturned; the kept bonus is 1.5 per "b"."""
    tok = Tokenizer(PIECES)
    spoken = ["▁a", "c|b", "<blk>", "▁a", "c|b", "<blk>", "<blk>"]
    lens = torch.tensor([len(spoken)])
    hw = _batch([_graph([["▁b"]], 1.5)])
    plain = ctc_prefix_beam_search(_frames(spoken, 1.0), lens, beam=4)
    assert tok.decode(plain.to_lists()[0][0]) == "a c a c"
    biased = ctc_prefix_beam_search(_frames(spoken, 1.0), lens, beam=4, hotwords=hw)
    assert tok.decode(biased.to_lists()[0][0]) == "a b a b"
    assert biased.hotword_scores[0, 0].item() == pytest.approx(3.0)
    wide = ctc_prefix_beam_search(_frames(spoken, 10.0), lens, beam=4, hotwords=hw)
    assert tok.decode(wide.to_lists()[0][0]) == "a c a c"


def test_the_kept_bonus_is_the_automatons_and_slots_are_in_biased_order():
    log_probs = _random_log_probs(2, 40, seed=5)
    lens = torch.tensor([40, 33])
    g = _graph([["▁a", "b"], ["▁c"], ["▁b", "▁a", "c"], ["a", "a"]], 0.8)
    hw = _batch([g, g], torch.float32)
    nb = ctc_prefix_beam_search(log_probs, lens, beam=8, hotwords=hw)
    checked = matched = 0
    for i, entries in enumerate(nb.to_lists()):
        bonuses, found = hw.run(entries, [i] * len(entries))
        total = []
        for k, ids in enumerate(entries):
            assert nb.hotword_scores[i, k].item() == pytest.approx(bonuses[k], abs=1e-5), ids
            total.append(nb.scores[i, k].item() + nb.hotword_scores[i, k].item())
            checked += 1
            matched += bool(found[k])
        assert total == sorted(total, reverse=True)
    assert checked == 16 and matched >= 8


def test_a_batch_of_different_lists_is_each_utterance_alone():
    log_probs = _random_log_probs(4, 30, seed=9)
    lens = torch.tensor([30, 28, 19, 30])
    lists = [_graph([["▁a", "b"]], 1.0), None, _graph([["▁c"], ["b", "a"]], 2.0), _graph([["▁b"]], 0.5)]
    together = ctc_prefix_beam_search(log_probs, lens, beam=5, hotwords=_batch(lists))
    for i, g in enumerate(lists):
        alone = ctc_prefix_beam_search(log_probs[i:i + 1, :int(lens[i])], lens[i:i + 1], beam=5,
                                       hotwords=_batch([g]) if g is not None else None)
        assert together.to_lists()[i] == alone.to_lists()[0]
        if g is None:
            assert together.hotword_scores[i].abs().max().item() == 0.0
        else:
            torch.testing.assert_close(together.hotword_scores[i], alone.hotword_scores[0])


def test_a_hotword_being_matched_is_no_unk_for_the_fused_lm(tmp_path):
    """An LM without the word c (it scores as <unk>, -4 log10): the fused search turns
    "a (c|b)" into "a b"; with "c" as a hotword (a bonus far below the <unk> penalty) the word
    is exempt from the penalty and the acoustics win again."""
    arpa = FUSION_ARPA.replace("ngram 1=6", "ngram 1=5").replace("-1.0\tc\t-0.2\n", "")
    lm = SearchLM.build(WordLM.from_arpa(write(tmp_path / "lm.arpa", arpa)), PIECES, special_ids=[0, 1])
    tok = Tokenizer(PIECES)
    spoken = ["▁a", "c|b", "<blk>", "<blk>"]
    lens = torch.tensor([len(spoken)])
    fused = ctc_prefix_beam_search(_frames(spoken, 1.0), lens, beam=4, lm=lm, lm_scale=1.0)
    assert tok.decode(fused.to_lists()[0][0]) == "a b"
    biased = ctc_prefix_beam_search(_frames(spoken, 1.0), lens, beam=4, lm=lm, lm_scale=1.0,
                                    hotwords=_batch([_graph([["▁c"]], 0.5)]))
    assert tok.decode(biased.to_lists()[0][0]) == "a c"


def test_decode_keeps_the_bonus_in_the_rescoring_and_refuses_greedy(tmp_path):
    from model.recognizer import Recognizer

    rec = Recognizer.from_dir(make_tiny_model_dir(tmp_path / "m"), decoding={"lm_scale": 0.0})
    g = torch.Generator().manual_seed(3)
    feats, lens = rec.features([0.1 * torch.randn(24000, generator=g), 0.1 * torch.randn(16000, generator=g)])
    enc, enc_lens = rec.model.forward_encoder(feats, lens)
    cfg = DecodingConfig(method="attention-rescoring", beam=4, return_nbest=True)
    plain = decode(rec.model, enc, enc_lens, cfg)
    assert decode(rec.model, enc, enc_lens, cfg, hotwords=[None, None])[0].token_ids == plain[0].token_ids
    vocab = rec.tokenizer.vocab_size
    # a list of every token: each hypothesis's kept bonus is 1.0 per token
    every = HotwordGraph.build(HotwordList(tuple((t,) for t in range(2, vocab)), (1.0,) * (vocab - 2)), vocab)
    hyps = decode(rec.model, enc, enc_lens, cfg, hotwords=[every, None])
    assert hyps[1].hotword_score is None and hyps[1].token_ids == plain[1].token_ids
    h = hyps[0]
    assert h.hotword_score == pytest.approx(float(len(h.token_ids)))
    for e in h.nbest:
        assert e.score == pytest.approx(e.ctc_score + e.attention_score + len(e.token_ids), abs=1e-3)
    assert h.score == max(e.score for e in h.nbest)
    with pytest.raises(ValueError, match="cannot bias"):
        decode(rec.model, enc, enc_lens, DecodingConfig(method="ctc-greedy"), hotwords=[every, None])
    with pytest.raises(ValueError, match="2 utterances"):
        decode(rec.model, enc, enc_lens, cfg, hotwords=[every])


def test_transducer_beam_search_with_hotwords(tmp_path):
    """The transducer's modified beam search ranks every (slot, token) with the automaton's gain: a
    list whose bonus (1e-30) is below the rounding of every score leaves it bit for bit as without
    (the hotword code path with no effect);
    a list of every token makes the kept bonus 1.0 per output token; a batch with and without a
    list keeps the listless utterance as it was."""
    from model.decoding import transducer_modified_beam_search
    from model.recognizer import Recognizer

    rec = Recognizer.from_dir(make_tiny_model_dir(tmp_path / "m"), decoding={"lm_scale": 0.0})
    g = torch.Generator().manual_seed(5)
    feats, lens = rec.features([0.1 * torch.randn(24000, generator=g), 0.1 * torch.randn(16000, generator=g)])
    enc, enc_lens = rec.model.forward_encoder(feats, lens)
    vocab = rec.tokenizer.vocab_size
    plain = transducer_modified_beam_search(rec.model, enc, enc_lens, beam=4)
    tiny = HotwordGraph.build(HotwordList(tuple((t,) for t in range(2, vocab)), (1e-30,) * (vocab - 2)), vocab)
    same = transducer_modified_beam_search(rec.model, enc, enc_lens, beam=4,
                                           hotwords=HotwordBatch.build([tiny, tiny], torch.device("cpu")))
    assert torch.equal(same.tokens, plain.tokens) and torch.equal(same.lens, plain.lens)
    assert torch.equal(same.scores, plain.scores)
    assert same.hotword_scores.abs().max().item() < 1e-25
    every = HotwordGraph.build(HotwordList(tuple((t,) for t in range(2, vocab)), (1.0,) * (vocab - 2)), vocab)
    hyps = decode(rec.model, enc, enc_lens, DecodingConfig(method="transducer-beam"), hotwords=[every, None])
    assert hyps[0].hotword_score == pytest.approx(float(len(hyps[0].token_ids)))
    assert hyps[1].hotword_score is None
    alone = decode(rec.model, enc[1:], enc_lens[1:], DecodingConfig(method="transducer-beam"))
    assert hyps[1].token_ids == alone[0].token_ids
    with pytest.raises(ValueError, match="cannot bias"):
        decode(rec.model, enc, enc_lens, DecodingConfig(method="transducer-greedy"), hotwords=[every, None])
