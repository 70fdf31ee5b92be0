"""The word LM inside the CTC prefix search (shallow fusion, model/decoding/lm_fusion.py):
its bigram in tensors agrees with the ARPA reader, the fused search adds exactly the LM's
score of each hypothesis, it keeps what the LM prefers where the plain search would not, and
a model directory's config turns it on."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import make_tiny_model_dir
from model.decoding import DecodingConfig, SearchLM, ctc_prefix_beam_search, decode
from model.tokenizer import Tokenizer
from model.word_lm import WordLM

from test_word_lm import TINY_ARPA, write

LN10 = math.log(10.0)

#: pieces of a toy tokenizer: words a, b, c spelled whole or in parts ("▁" + "a", "▁c" + "a" ...)
PIECES = ["<blk>", "<sos/eos>", "<unk>", "▁a", "▁b", "▁c", "▁", "a", "b", "c"]

#: a bigram over the toy words where "a b" is far likelier than "a c"
FUSION_ARPA = """\\data\\
ngram 1=6
ngram 2=3

\\1-grams:
-99\t<s>\t-0.3
-0.6\ta\t-1.0
-1.0\tb\t-0.2
-1.0\tc\t-0.2
-0.7\t</s>
-4.0\t<unk>

\\2-grams:
-0.2\t<s> a
-0.1\ta b
-0.3\tb </s>

\\end\\
"""


@pytest.fixture()
def lm(tmp_path) -> WordLM:
    return WordLM.from_arpa(write(tmp_path / "lm.arpa", FUSION_ARPA))


def search_lm(lm: WordLM) -> SearchLM:
    return SearchLM.build(lm, PIECES, special_ids=[0, 1])


def test_the_tensor_bigram_is_the_arpa_model(lm):
    """Every (previous, word) pair, listed or backed off, and words spelled in any segmentation."""
    fz = search_lm(lm)
    words = ["a", "b", "c", "</s>"]
    for prev in ["<s>", "a", "b", "c"]:
        for w in words:
            h = torch.zeros(2, dtype=torch.long)
            if w != "</s>":
                for ch in w:  # spelled one character piece at a time: "▁" then "a" ...
                    h = fz.extend_hash(h, torch.tensor(PIECES.index(ch)))
                index = fz.lookup(h, torch.tensor(False))
            else:
                index = torch.tensor(fz.eos)
            p_index = fz.lookup(_hash_of(fz, prev), torch.tensor(False)) if prev != "<s>" else torch.tensor(fz.bos)
            got = fz.log_prob(index, p_index).item()
            assert got == pytest.approx(lm.log10_prob(w, (prev,)) * LN10, abs=1e-5), (prev, w)
    # a word the LM does not list, and a word with an <unk> piece in it, are <unk>
    zz = fz.extend_hash(fz.extend_hash(torch.zeros(2, dtype=torch.long), torch.tensor(8)), torch.tensor(8))  # "bb"
    assert fz.lookup(zz, torch.tensor(False)).item() == fz.unk
    assert fz.lookup(_hash_of(fz, "a"), torch.tensor(True)).item() == fz.unk
    assert fz.log_prob(torch.tensor(fz.unk), torch.tensor(fz.bos)).item() == pytest.approx((-0.3 - 4.0) * LN10, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_search_tables_give_the_reference_lookups(lm, dtype):
    """What the fused search reads (SearchTables: one 64-bit hash per word, default rows between
    the sorted keys instead of comparisons) against SearchLM's reference lookups, bit for bit:
    every (previous, word) bigram, listed or backed off, and the LM index, look-ahead and unigram
    of the word being spelled after every sequence of up to three pieces (words, beginnings of
    words, non-words, words with an <unk> piece, nothing spelled), hashed as the search hashes."""
    from model.decoding.lm_fusion import float_view

    fz = search_lm(lm).to(torch.device("cpu"), dtype)
    tb = search_lm(lm).tables(torch.device("cpu"), dtype)
    words = torch.arange(tb.num_words)
    prev, word = torch.meshgrid(words, words, indexing="ij")
    assert torch.equal(tb.log_prob(word, prev), fz.log_prob(word, prev))
    keys, rows = tb.lookup(0.5)
    pieces = range(2, len(PIECES))
    sequences = [[a] for a in pieces] + [[a, b] for a in pieces for b in pieces]
    sequences += [[a, b, c] for a in pieces for b in pieces for c in pieces]
    for seq in sequences:
        h, chars, unknown = torch.zeros(2, dtype=torch.long), 0, False
        spelt = torch.zeros((), dtype=torch.long)
        for p in seq:
            if fz.starts_word[p]:
                h, chars, unknown = fz.piece_hash[p], int(fz.piece_len[p]), bool(fz.piece_unknown[p])
            else:
                h, chars, unknown = fz.extend_hash(h, torch.tensor(p)), chars + int(fz.piece_len[p]), unknown or bool(fz.piece_unknown[p])
            spelt = spelt * tb.piece_multiplier[p] + tb.piece_increment[p]
        row = rows[0, :, torch.searchsorted(keys[0], spelt.view(1), right=True)]
        expected = fz.lookup(h, torch.tensor(unknown))
        assert int(row[0]) == int(expected), [PIECES[p] for p in seq]
        assert torch.equal(float_view(row[2], dtype), fz.unigram[expected].view(1))
        if chars:  # the search adds the look-ahead only while something is spelled
            look = 0.5 * fz.look_ahead(h, torch.tensor(chars), torch.tensor(unknown))
            assert torch.equal(float_view(row[1], dtype), look.view(1)), [PIECES[p] for p in seq]


def _hash_of(fz: SearchLM, word: str) -> torch.Tensor:
    h = torch.zeros(2, dtype=torch.long)
    for ch in word:
        h = fz.extend_hash(h, torch.tensor(PIECES.index(ch)))
    return h


def _random_log_probs(n: int, t: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, t, len(PIECES), generator=g)
    logits[..., 0] += 1.0  # blanks, as a CTC head has them
    logits[..., 1:3] -= 20.0  # sos/eos and <unk> never win a frame
    return logits.log_softmax(-1)


@pytest.mark.parametrize("scale, bonus", [(0.5, 0.0), (1.0, 2.5)])
def test_the_fused_search_adds_the_lms_score_of_each_hypothesis(lm, scale, bonus):
    """What the search added to a slot's rank is ``scale * LM(text) + bonus * words`` of the text
    the slot spells, whatever pieces spelled it; the slots come out in fused order; the CTC
    scores are the search's own (``scores`` stays the acoustic log-prob)."""
    tok = Tokenizer(PIECES)
    log_probs = _random_log_probs(3, 25, seed=7)
    lens = torch.tensor([25, 18, 9])
    nb = ctc_prefix_beam_search(log_probs, lens, beam=10, lm=search_lm(lm), lm_scale=scale, word_bonus=bonus)
    assert nb.search_lm_scores is not None
    checked = 0
    for i, entries in enumerate(nb.to_lists()):
        fused = []
        for k, ids in enumerate(entries):
            text = tok.decode(ids)
            expected = scale * lm.score(text) + bonus * len(text.split())
            assert nb.search_lm_scores[i, k].item() == pytest.approx(expected, abs=1e-3), (ids, text)
            fused.append(nb.scores[i, k].item() + nb.search_lm_scores[i, k].item())
            checked += 1
        assert fused == sorted(fused, reverse=True)
    assert checked >= 20
    plain = ctc_prefix_beam_search(log_probs, lens, beam=10)
    assert plain.search_lm_scores is None
    # scale 0 is the plain search, bit for bit
    off = ctc_prefix_beam_search(log_probs, lens, beam=10, lm=search_lm(lm), lm_scale=0.0, word_bonus=bonus)
    assert torch.equal(off.tokens, plain.tokens) and torch.equal(off.scores, plain.scores)


def _frames(spoken: list[str], margin: float) -> torch.Tensor:
    """One frame per entry: a piece, or "c|b": "▁c" preferred to "▁b" by ``margin`` nats."""
    rows = []
    for top in spoken:
        row = torch.full((len(PIECES),), -30.0)
        if top == "c|b":
            row[PIECES.index("▁c")], row[PIECES.index("▁b")] = 0.0, -margin
        else:
            row[PIECES.index(top)] = 0.0
        rows.append(row)
    return torch.stack(rows).log_softmax(-1).unsqueeze(0)


def test_the_fused_search_keeps_what_the_lm_prefers(lm):
    """Speech "a (c|b) a (c|b)" where the acoustics prefer c by 1 nat each time, with room for two
    prefixes. The plain search keeps only "a c a ..." hypotheses; the fused one, whose LM knows
    "a b" (P(b | a) / P(c | a) = 10^1.9, ~4.4 nats), keeps "a b a ..." and puts "a b a b" first.
    A margin far above the LM's ratio is not overturned."""
    tok = Tokenizer(PIECES)
    spoken = ["▁a", "c|b", "<blk>", "▁a", "c|b", "<blk>", "<blk>"]
    lens = torch.tensor([len(spoken)])
    plain = ctc_prefix_beam_search(_frames(spoken, 1.0), lens, beam=2)
    assert [tok.decode(y) for y in plain.to_lists()[0]] == ["a c a c", "a c a b"]
    fused = ctc_prefix_beam_search(_frames(spoken, 1.0), lens, beam=2, lm=search_lm(lm), lm_scale=1.0)
    assert [tok.decode(y) for y in fused.to_lists()[0]] == ["a b a b", "a b a c"]
    wide = ctc_prefix_beam_search(_frames(spoken, 10.0), lens, beam=2, lm=search_lm(lm), lm_scale=1.0)
    assert tok.decode(wide.to_lists()[0][0]) == "a c a c"


def test_decode_needs_the_lm_for_a_fused_search(tmp_path):
    from model.recognizer import Recognizer

    rec = Recognizer.from_dir(make_tiny_model_dir(tmp_path / "m"), decoding={"lm_scale": 0.0})
    g = torch.Generator().manual_seed(3)
    feats, lens = rec.features([0.1 * torch.randn(24000, generator=g)])
    enc, enc_lens = rec.model.forward_encoder(feats, lens)
    with pytest.raises(ValueError, match="search_lm_scale > 0 needs a word LM"):
        decode(rec.model, enc, enc_lens, DecodingConfig(method="attention-rescoring", search_lm_scale=0.5))
    with pytest.raises(ValueError, match="word_bonus finite"):
        decode(rec.model, enc, enc_lens, DecodingConfig(method="attention-rescoring", word_bonus=float("nan")))
    # other methods do not use it
    assert decode(rec.model, enc, enc_lens, DecodingConfig(method="ctc-beam", search_lm_scale=0.5))


def test_a_model_directory_turns_the_fused_search_on(tmp_path):
    """config.json's search_lm_scale / word_bonus: the recognizer builds the tensors once and
    decodes with them (the label says so); without an LM file it is one line, exit-2 style."""
    from model.checkpoint import ModelLoadError
    from model.recognizer import Recognizer

    model_dir = make_tiny_model_dir(tmp_path / "m")
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["decoding"] = {"method": "attention-rescoring", "lm_scale": 0.5, "search_lm_scale": 0.3, "word_bonus": 1.5}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="search_lm_scale 0.3 asks for a word LM") as err:
        Recognizer.from_dir(model_dir, decoding={"lm_scale": 0.0})
    assert "\n" not in str(err.value)

    write(model_dir / "lm.arpa.gz", TINY_ARPA)
    rec = Recognizer.from_dir(model_dir)
    assert isinstance(rec.search_lm, SearchLM) and rec.decoding.search_lm_scale == 0.3
    assert rec.decoding.label().endswith("lm=0.5 fusion=0.3 bonus=1.5")
    assert Recognizer.from_dir(model_dir, decoding={"search_lm_scale": 0.0}).search_lm is None
    g = torch.Generator().manual_seed(1)
    waves = [0.1 * torch.randn(n, generator=g) for n in (32000, 20000)]
    fused, _ = rec.transcribe(waves)
    # the rescoring score keeps its meaning: ctc + scale * attention + lm_scale * lm of the pick
    for t in fused:
        assert t.score == pytest.approx(t.ctc_score + rec.decoding.attention_scale * t.attention_score
                                        + 0.5 * rec.lm.score(t.text), rel=1e-4)


#: pieces that spell two-letter words: "▁a" + "b" = "ab", "▁c" + "d" = "cd", "▁c" + "b" = "cb" ...
SPELLING = ["<blk>", "<sos/eos>", "<unk>", "▁a", "▁c", "b", "d"]

#: an LM that knows "ab" (likely) and "cd" (rare), and no other word
SPELLING_ARPA = """\\data\\
ngram 1=5

\\1-grams:
-99\t<s>\t0.0
-0.3\tab\t0.0
-2.5\tcd\t0.0
-0.5\t</s>
-5.0\t<unk>

\\end\\
"""


def test_the_look_ahead_prefers_a_beginning_that_can_become_a_likely_word(tmp_path):
    """A word is scored only once complete, so between "▁c" (acoustics: 0) and "▁a" (-1 nat) a
    search with room for one prefix keeps "c", and then spells the non-word "cb". The look-ahead
    (the best unigram of an LM word starting with what is spelled: "ab" for "a", "cd" for "c",
    5 nats apart) keeps "a" and ends with the LM's word "ab"."""
    lm = WordLM.from_arpa(write(tmp_path / "lm.arpa", SPELLING_ARPA))
    tok = Tokenizer(SPELLING)
    rows = torch.full((2, len(SPELLING)), -30.0)
    rows[0, SPELLING.index("▁c")], rows[0, SPELLING.index("▁a")] = 0.0, -1.0
    rows[1, SPELLING.index("b")], rows[1, SPELLING.index("d")] = 0.0, -3.0
    log_probs, lens = rows.log_softmax(-1).unsqueeze(0), torch.tensor([2])
    with_table = SearchLM.build(lm, SPELLING, special_ids=[0, 1])
    without = SearchLM.build(lm, SPELLING, special_ids=[0, 1], lookahead=False)
    assert with_table.prefix_keys is not None and without.prefix_keys is None
    # one prefix kept, three tokens tried per frame
    assert tok.decode(ctc_prefix_beam_search(log_probs, lens, beam=1, token_beam=3).to_lists()[0][0]) == "cb"
    blind = ctc_prefix_beam_search(log_probs, lens, beam=1, token_beam=3, lm=without, lm_scale=1.0)
    assert tok.decode(blind.to_lists()[0][0]) == "cb"
    ahead = ctc_prefix_beam_search(log_probs, lens, beam=1, token_beam=3, lm=with_table, lm_scale=1.0)
    assert tok.decode(ahead.to_lists()[0][0]) == "ab"
    # the look-ahead only ranks: what the search reports adding is the completed words' LM score
    assert ahead.search_lm_scores[0, 0].item() == pytest.approx(lm.score("ab"), abs=1e-4)
    # its values: the best completion's unigram for a beginning, <unk>'s for none, 0 for nothing
    h = with_table.extend_hash(torch.zeros(2, dtype=torch.long), torch.tensor(SPELLING.index("▁c")))
    la = with_table.look_ahead(torch.stack([h, with_table.extend_hash(h, torch.tensor(SPELLING.index("b"))), h]),
                               torch.tensor([1, 2, 0]), torch.tensor([False, False, False]))
    assert la.tolist() == pytest.approx([-2.5 * LN10, -5.0 * LN10, 0.0], abs=1e-4)


def test_an_lm_without_words_scores_every_word_as_unknown(tmp_path):
    """Only <s>, </s> and <unk>: the tables are empty, and every word costs <unk>'s score."""
    lm = WordLM.from_arpa(write(tmp_path / "lm.arpa", "\\data\\\nngram 1=3\n\n\\1-grams:\n-99\t<s>\n"
                                "-0.5\t</s>\n-2.0\t<unk>\n\n\\end\\\n"))
    fz = search_lm(lm)
    assert fz.prefix_keys.numel() == 0 and fz.bigram_keys.numel() == 0
    tok = Tokenizer(PIECES)
    nb = ctc_prefix_beam_search(_random_log_probs(2, 12, seed=3), torch.tensor([12, 7]), beam=4, lm=fz, lm_scale=1.0)
    for i, entries in enumerate(nb.to_lists()):
        for k, ids in enumerate(entries):
            words = len(tok.decode(ids).split())
            assert nb.search_lm_scores[i, k].item() == pytest.approx((-2.0 * words - 0.5) * LN10, abs=1e-4)
