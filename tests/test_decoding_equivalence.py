"""The restructured searches of issue 32 give bit-identical results to the searches they replaced.

The reference is the pre-change code, frozen in tests/legacy_decoding.py. Inputs are random
posteriors and encoder outputs over many seeds: batches whose utterances have different lengths
(zero frames included), several beams and token beams, fp32 and fp64, posteriors with exact
ties (every candidate tie-break counts), word LMs with and without look-ahead or words, word
bonuses, and the staged frame loop of the CUDA-graph path. Every output tensor must be equal,
dtype and shape included (``torch.equal``).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from helpers import TINY_CONFIG
from legacy_decoding import (
    legacy_ctc_prefix_beam_search,
    legacy_ctc_viterbi_align,
    legacy_score_nbest,
    legacy_transducer_greedy_search,
    legacy_transducer_modified_beam_search,
)
from model import AsrModel
from model.decoding import (
    SearchLM,
    ctc_prefix_beam_search,
    ctc_viterbi_align,
    transducer_greedy_search,
    transducer_modified_beam_search,
)
from model.word_lm import WordLM
from test_lm_fusion import FUSION_ARPA, PIECES, SPELLING, SPELLING_ARPA

EMPTY_ARPA = "\\data\\\nngram 1=3\n\n\\1-grams:\n-99\t<s>\n-0.5\t</s>\n-2.0\t<unk>\n\n\\end\\\n"


def assert_same(a, b, fields, tag) -> None:
    for name in fields:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, (tag, name)
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, (tag, name, x.dtype, y.dtype, x.shape, y.shape)
        assert torch.equal(x, y), (tag, name, x, y)


NBEST_FIELDS = ("tokens", "lens", "scores", "log_prob_blank", "log_prob_non_blank", "search_lm_scores")


def random_case(seed: int, vocab: int, max_frames: int = 24):
    """Posteriors (N, T, V) with lengths; every fifth seed exact ties: most tokens share -30."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 5, (1,), generator=g))
    t = int(torch.randint(0, max_frames, (1,), generator=g))
    dtype = torch.float64 if seed % 3 == 0 else torch.float32
    if seed % 5 == 0 and t > 0:
        lp = torch.full((n, t, vocab), -30.0, dtype=dtype)
        lp[..., 0] = 0.0
        lp.scatter_(2, torch.randint(0, vocab, (n, t, 1), generator=g), -0.5)
    else:
        logits = torch.randn(n, t, vocab, generator=g, dtype=dtype) * float(torch.rand(1, generator=g) * 4 + 0.5)
        logits[..., 0] += 1.0
        lp = logits.log_softmax(-1)
    lens = torch.randint(0, t + 1, (n,), generator=g)
    beam = int(torch.randint(1, 10, (1,), generator=g))
    token_beam = int(torch.randint(1, 10, (1,), generator=g)) if seed % 2 else None
    return lp, lens, beam, token_beam


@pytest.mark.parametrize("block", range(4))
def test_plain_prefix_search_is_the_legacy_one(block):
    for seed in range(block * 40, block * 40 + 40):
        lp, lens, beam, token_beam = random_case(seed, vocab=3 + seed % 9)
        old = legacy_ctc_prefix_beam_search(lp, lens, beam=beam, token_beam=token_beam)
        new = ctc_prefix_beam_search(lp, lens, beam=beam, token_beam=token_beam)
        assert_same(old, new, NBEST_FIELDS, (seed, beam, token_beam))


@pytest.fixture(scope="module")
def search_lms(tmp_path_factory) -> list[tuple[SearchLM, int]]:
    tmp = Path(tmp_path_factory.mktemp("lms"))
    for name, text in (("fusion", FUSION_ARPA), ("spelling", SPELLING_ARPA), ("empty", EMPTY_ARPA)):
        (tmp / f"{name}.arpa").write_text(text)
    fusion, spelling, empty = (WordLM.from_arpa(tmp / f"{name}.arpa") for name in ("fusion", "spelling", "empty"))
    return [
        (SearchLM.build(fusion, PIECES, special_ids=[0, 1]), len(PIECES)),
        (SearchLM.build(fusion, PIECES, special_ids=[0, 1], lookahead=False), len(PIECES)),
        (SearchLM.build(spelling, SPELLING, special_ids=[0, 1]), len(SPELLING)),
        (SearchLM.build(empty, PIECES, special_ids=[0, 1]), len(PIECES)),
    ]


@pytest.mark.parametrize("block", range(3))
def test_fused_prefix_search_is_the_legacy_one(search_lms, block):
    """Every LM (look-ahead on and off, one without words), scales and bonuses; the <unk> piece
    and word-starting pieces occur, so unknown words and completions are exercised."""
    for seed in range(block * 40, block * 40 + 40):
        fz, vocab = search_lms[seed % len(search_lms)]
        lp, lens, beam, token_beam = random_case(seed, vocab)
        scale, bonus = [0.5, 1.0, 0.3, 2.0][seed % 4], [0.0, 2.5, -1.0, 1.0][(seed // 4) % 4]
        old = legacy_ctc_prefix_beam_search(lp, lens, beam=beam, token_beam=token_beam, lm=fz, lm_scale=scale,
                                            word_bonus=bonus)
        new = ctc_prefix_beam_search(lp, lens, beam=beam, token_beam=token_beam, lm=fz, lm_scale=scale,
                                     word_bonus=bonus)
        assert_same(old, new, NBEST_FIELDS, (seed, beam, token_beam, scale, bonus))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_batch_on_two_threads_is_the_legacy_one(search_lms, dtype):
    """Beam 32 over 32 utterances: the candidate tensors pass the size at which CPU kernels split
    their work between threads (and vectorise by chunk), and rows of 32 slots are long enough to
    be vectorised; the log-sum-exps must still agree, in both of the search's float layouts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(11)
        lp = (torch.randn(32, 6, len(PIECES), generator=g, dtype=dtype) * 2).log_softmax(-1)
        lens = torch.randint(1, 7, (32,), generator=g)
        fz = search_lms[0][0]
        for lm in (None, fz):
            old = legacy_ctc_prefix_beam_search(lp, lens, beam=32, token_beam=32, lm=lm, lm_scale=0.5, word_bonus=1.0)
            new = ctc_prefix_beam_search(lp, lens, beam=32, token_beam=32, lm=lm, lm_scale=0.5, word_bonus=1.0)
            assert_same(old, new, NBEST_FIELDS, lm is not None)
    finally:
        torch.set_num_threads(threads)


def test_the_graph_block_body_changes_nothing(search_lms):
    """The CUDA-graph path's block body (frames read and written through a device-side counter),
    run eagerly: over several blocks and a partial one before them, the same results."""
    fz = search_lms[0][0]
    for seed in range(6):
        lp, lens, beam, token_beam = random_case(seed * 7 + 1, len(PIECES), max_frames=70)
        for lm in (None, fz):
            eager = ctc_prefix_beam_search(lp, lens, beam=beam, token_beam=token_beam, lm=lm, lm_scale=0.5)
            staged = ctc_prefix_beam_search(lp, lens, beam=beam, token_beam=token_beam, lm=lm, lm_scale=0.5,
                                            frame_loop="staged")
            assert_same(eager, staged, NBEST_FIELDS, (seed, lm is not None))
        tokens, token_lens = torch.randint(1, len(PIECES), (lp.shape[0], 6)), torch.randint(0, 7, (lp.shape[0],))
        assert_same(ctc_viterbi_align(lp, lens, tokens, token_lens),
                    ctc_viterbi_align(lp, lens, tokens, token_lens, frame_loop="staged"),
                    ("frames", "end_frames", "token_log_probs", "path_scores"), seed)


@pytest.mark.parametrize("block", range(2))
def test_viterbi_alignment_is_the_legacy_one(block):
    """Random label sequences (repeated labels, empty ones, ones too long for their utterance)
    against utterances of random lengths, zero frames included."""
    for seed in range(block * 150, block * 150 + 150):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(1, 5, (1,), generator=g))
        t = int(torch.randint(0, 30, (1,), generator=g))
        vocab = int(torch.randint(2, 9, (1,), generator=g))
        dtype = torch.float64 if seed % 3 == 0 else torch.float32
        lp = (torch.randn(n, max(t, 1), vocab, generator=g, dtype=dtype) * 3).log_softmax(-1)
        lens = torch.randint(0, t + 1, (n,), generator=g)
        m, width = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(0, 8, (1,), generator=g))
        tokens = torch.randint(1, vocab, (m, width), generator=g)
        if seed % 4 == 0 and width > 1:
            tokens[:, 1] = tokens[:, 0]  # a repeated label: no skip over the blank between them
        token_lens = torch.randint(0, width + 1, (m,), generator=g)
        utt = torch.randint(0, n, (m,), generator=g)
        old = legacy_ctc_viterbi_align(lp, lens, tokens, token_lens, utt)
        new = ctc_viterbi_align(lp, lens, tokens, token_lens, utt)
        assert_same(old, new, ("frames", "end_frames", "token_log_probs", "path_scores"), seed)


TRANSDUCER_FIELDS = ("tokens", "lens", "frames", "token_log_probs", "scores", "blank_prob_sum", "token_logits")


@pytest.mark.parametrize("context_size", [1, 2])
def test_transducer_searches_are_the_legacy_ones(context_size):
    torch.manual_seed(context_size)
    model = AsrModel(**dict(TINY_CONFIG, vocab_size=40, context_size=context_size)).eval()
    with torch.no_grad():
        model.joiner.output_linear.bias[0] += 1.0  # blanks, as a trained joiner has them
    dim = model.joiner.encoder_proj.in_features
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        n, t = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(0, 40, (1,), generator=g))
        enc = torch.randn(n, t, dim, generator=g) * 2
        lens = torch.randint(0, t + 1, (n,), generator=g)
        old = legacy_transducer_greedy_search(model, enc, lens)
        assert_same(old, transducer_greedy_search(model, enc, lens), TRANSDUCER_FIELDS, ("greedy", seed))
        assert_same(old, transducer_greedy_search(model, enc, lens, frame_loop="staged"), TRANSDUCER_FIELDS, seed)
        for beam in (1, 3, 5):
            old = legacy_transducer_modified_beam_search(model, enc, lens, beam=beam)
            new = transducer_modified_beam_search(model, enc, lens, beam=beam, frame_loop="staged" if seed % 2 else None)
            assert_same(old, new, TRANSDUCER_FIELDS, ("beam", seed, beam))


def test_nbest_trie_scores_are_the_legacy_ones():
    """Attention rescoring's prefix trie, built with tensor operations: the same decoder input
    (nodes, positions, mask) and so the same scores, for n-best lists with shared prefixes,
    duplicates and empty hypotheses."""
    torch.manual_seed(0)
    decoder = AsrModel(**dict(TINY_CONFIG, vocab_size=40)).eval().attention_decoder
    rng = random.Random(0)
    for trial in range(40):
        nbest = []
        for _ in range(rng.randint(1, 4)):
            base = [rng.randint(2, 39) for _ in range(rng.randint(0, 8))]
            hyps = [base[:rng.randint(0, len(base))] + [rng.randint(2, 39) for _ in range(rng.randint(0, 4))]
                    for _ in range(rng.randint(1, 7))]
            if rng.random() < 0.3:
                hyps.append(list(hyps[0]))
            nbest.append(hyps)
        enc = torch.randn(len(nbest), 12, decoder.decoder.layers[0].src_attn.linear_k.in_features)
        lens = torch.randint(1, 13, (len(nbest),))
        with torch.inference_mode():
            assert decoder.score_nbest(enc, lens, nbest) == legacy_score_nbest(decoder, enc, lens, nbest), trial


def test_nbest_trie_scores_a_batch_whose_every_hypothesis_is_empty():
    """An untrained model (the first epochs of jobs/train_demo.py) proposes only empty
    hypotheses: the trie is the root alone (no token column at all) and each entry scores eos
    after sos, as the legacy per-hypothesis scoring does."""
    torch.manual_seed(0)
    decoder = AsrModel(**dict(TINY_CONFIG, vocab_size=40)).eval().attention_decoder
    width = decoder.decoder.layers[0].src_attn.linear_k.in_features
    for nbest in ([[[]]], [[[], []], [[]], [[], [], []]]):
        enc = torch.randn(len(nbest), 12, width)
        lens = torch.tensor([12, 7, 3][:len(nbest)])
        with torch.inference_mode():
            got = decoder.score_nbest(enc, lens, nbest)
            assert got == legacy_score_nbest(decoder, enc, lens, nbest), nbest
        assert [len(row) for row in got] == [len(h) for h in nbest]
        assert all(score < 0.0 for row in got for score in row)


def test_nbest_lm_scores_are_the_per_entry_scores():
    """Rescoring's word-LM scores of a whole n-best at once (one tokenizer call, each (history,
    word) looked up once) are the per-entry ``lm.score(tokenizer.decode(ids))`` of before."""
    from model.tokenizer import Tokenizer

    demo = Path(__file__).resolve().parents[1] / "model" / "assets" / "demo"
    tok, lm = Tokenizer.from_dir(demo), WordLM.from_arpa(demo / "lm.arpa.gz")
    rng = random.Random(1)
    base = [rng.randrange(tok.vocab_size) for _ in range(30)]
    entries = [base[:rng.randint(0, 30)] + [rng.randrange(tok.vocab_size) for _ in range(rng.randint(0, 5))]
               for _ in range(200)] + [[], [0, 1], [tok.blank_id, tok.sos_id, 5]]
    texts = tok.decode_many(entries)
    assert texts == [tok.decode(ids) for ids in entries]
    assert lm.score_many(texts) == [lm.score(t) for t in texts]
    with pytest.raises(IndexError, match="out of range"):
        tok.decode_many([[3, 4], [tok.vocab_size]])
