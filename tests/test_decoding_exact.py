"""CTC searches against brute force on tiny random problems.

Everything here is independent of the model: random log-posteriors with a
vocabulary of 4-6 symbols and at most 8 frames, where all V**T alignments can
be enumerated.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import pytest
import torch

from model.decoding import (
    ctc_greedy_search,
    ctc_prefix_beam_search,
    ctc_sequence_log_probs,
    ctc_viterbi_align,
)

BLANK = 0


def _random_log_probs(gen: torch.Generator, n: int, t: int, v: int, sharpness: float = 2.0) -> torch.Tensor:
    return (torch.randn(n, t, v, generator=gen, dtype=torch.float64) * sharpness).log_softmax(-1)


def _collapse(path) -> tuple:
    out, prev = [], None
    for s in path:
        if s != BLANK and s != prev:
            out.append(s)
        prev = s
    return tuple(out)


def _brute_force(lp: torch.Tensor):
    """lp (T, V) -> {label sequence: log-prob summed over all alignments},
    {label sequence: (best path log-prob, best path)}."""
    t, v = lp.shape
    total = defaultdict(list)
    best = {}
    lpl = lp.tolist()
    for path in itertools.product(range(v), repeat=t):
        s = sum(lpl[i][c] for i, c in enumerate(path))
        y = _collapse(path)
        total[y].append(s)
        if y not in best or s > best[y][0]:
            best[y] = (s, path)
    return {y: math.log(sum(math.exp(x) for x in xs)) for y, xs in total.items()}, best


def _num_prefixes(v: int, t: int) -> int:
    return sum((v - 1) ** k for k in range(t + 1))


def _dict_prefix_beam(lp: torch.Tensor, beam: int, token_beam: int):
    """Plain per-utterance prefix beam search written from the algorithm
    description (fixture README), with Python dicts."""
    ninf = float("-inf")

    def lae(*xs):
        m = max(xs)
        if m == ninf:
            return ninf
        return m + math.log(sum(math.exp(x - m) for x in xs))

    beams = {(): (0.0, ninf)}
    for frame in lp:
        vals, ids = frame.topk(token_beam)
        nxt = defaultdict(lambda: (ninf, ninf))
        for prefix, (pb, pnb) in beams.items():
            tot = lae(pb, pnb)
            for p, s in zip(vals.tolist(), ids.tolist()):
                if s == BLANK:
                    b, nb = nxt[prefix]
                    nxt[prefix] = (lae(b, tot + p), nb)
                elif prefix and prefix[-1] == s:
                    b, nb = nxt[prefix]
                    nxt[prefix] = (b, lae(nb, pnb + p))
                    ext = prefix + (s,)
                    b, nb = nxt[ext]
                    nxt[ext] = (b, lae(nb, pb + p))
                else:
                    ext = prefix + (s,)
                    b, nb = nxt[ext]
                    nxt[ext] = (b, lae(nb, tot + p))
        ranked = sorted(nxt.items(), key=lambda kv: lae(*kv[1]), reverse=True)[:beam]
        beams = dict(ranked)
    return [(list(k), lae(*v)) for k, v in sorted(beams.items(), key=lambda kv: lae(*kv[1]), reverse=True)]


@pytest.mark.parametrize("v,t,seed", [(4, 1, 0), (4, 3, 1), (4, 5, 2), (5, 4, 3), (5, 5, 4), (4, 6, 5)])
def test_prefix_beam_with_wide_beam_is_exact(v, t, seed):
    gen = torch.Generator().manual_seed(seed)
    lp = _random_log_probs(gen, 1, t, v)
    exact, _ = _brute_force(lp[0])
    beam = _num_prefixes(v, t)  # wide enough that nothing is ever pruned
    nb = ctc_prefix_beam_search(lp, torch.tensor([t]), beam=beam, token_beam=v, blank_id=BLANK)
    got = {}
    for toks, n, s in zip(nb.tokens[0].tolist(), nb.lens[0].tolist(), nb.scores[0].tolist()):
        if s > float("-inf"):
            got[tuple(toks[:n])] = s
    assert set(got) == set(exact)
    for y, s in exact.items():
        assert got[y] == pytest.approx(s, abs=1e-9), y
    # probabilities of all label sequences sum to one
    assert math.log(sum(math.exp(s) for s in got.values())) == pytest.approx(0.0, abs=1e-9)
    best_exact = max(exact, key=exact.get)
    assert tuple(nb.tokens[0, 0, : int(nb.lens[0, 0])].tolist()) == best_exact
    assert nb.scores[0, 0].item() == pytest.approx(exact[best_exact], abs=1e-9)


def test_prefix_beam_wide_batch_with_ragged_lengths_is_exact():
    """Several problems of different lengths in one batch, padded frames full
    of junk: each row still equals its own brute force."""
    gen = torch.Generator().manual_seed(11)
    v, t_max = 4, 5
    lens = [5, 2, 4, 0, 3]
    lp = _random_log_probs(gen, len(lens), t_max, v)
    beam = _num_prefixes(v, t_max)
    nb = ctc_prefix_beam_search(lp, torch.tensor(lens), beam=beam, token_beam=v)
    for i, t in enumerate(lens):
        exact, _ = _brute_force(lp[i, :t]) if t > 0 else ({(): 0.0}, None)
        got = {
            tuple(toks[:n]): s
            for toks, n, s in zip(nb.tokens[i].tolist(), nb.lens[i].tolist(), nb.scores[i].tolist())
            if s > float("-inf")
        }
        assert set(got) == set(exact), i
        for y, s in exact.items():
            assert got[y] == pytest.approx(s, abs=1e-9)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("beam,token_beam", [(1, 1), (2, 2), (3, 3), (4, 2), (3, 6)])
def test_pruned_prefix_beam_matches_dict_implementation(seed, beam, token_beam):
    """With pruning, the batched search equals a straightforward dict-based
    search of the same algorithm (top-k tokens per frame, top-beam prefixes)."""
    gen = torch.Generator().manual_seed(100 + seed)
    v, t = 6, 8
    lp = _random_log_probs(gen, 3, t, v, sharpness=1.5)
    lens = torch.tensor([8, 6, 1])
    nb = ctc_prefix_beam_search(lp, lens, beam=beam, token_beam=token_beam)
    for i in range(3):
        ref = _dict_prefix_beam(lp[i, : int(lens[i])], beam, min(token_beam, v))
        got = [
            (toks[:n], s)
            for toks, n, s in zip(nb.tokens[i].tolist(), nb.lens[i].tolist(), nb.scores[i].tolist())
            if s > float("-inf")
        ]
        assert [g[0] for g in got] == [r[0] for r in ref]
        for (_, s), (_, rs) in zip(got, ref):
            assert s == pytest.approx(rs, abs=1e-9)


def test_prefix_beam_float32_agrees_with_float64():
    gen = torch.Generator().manual_seed(5)
    lp = _random_log_probs(gen, 4, 30, 12, sharpness=3.0)
    lens = torch.tensor([30, 17, 25, 3])
    a = ctc_prefix_beam_search(lp, lens, beam=5)
    b = ctc_prefix_beam_search(lp.float(), lens, beam=5)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.scores, b.scores.double(), rtol=1e-5)


def test_ctc_greedy_is_the_best_path():
    gen = torch.Generator().manual_seed(3)
    lp = _random_log_probs(gen, 3, 6, 4)
    lens = torch.tensor([6, 4, 5])
    res = ctc_greedy_search(lp, lens)
    for i in range(3):
        t = int(lens[i])
        _, best = _brute_force(lp[i, :t])
        y_best = max(best, key=lambda y: best[y][0])
        assert tuple(res.tokens[i, : int(res.lens[i])].tolist()) == y_best
        assert res.path_scores[i].item() == pytest.approx(best[y_best][0], abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_viterbi_alignment_and_sequence_log_prob_match_brute_force(seed):
    gen = torch.Generator().manual_seed(40 + seed)
    v, t = 4, 6
    lp = _random_log_probs(gen, 1, t, v)
    exact, best = _brute_force(lp[0])
    seqs = sorted(exact, key=lambda y: (len(y), y))
    toks = torch.full((len(seqs), max(len(s) for s in seqs)), -1, dtype=torch.long)
    for j, s in enumerate(seqs):
        toks[j, : len(s)] = torch.tensor(s, dtype=torch.long)
    tlens = torch.tensor([len(s) for s in seqs])
    utt = torch.zeros(len(seqs), dtype=torch.long)
    ali = ctc_viterbi_align(lp, torch.tensor([t]), toks, tlens, utt_index=utt)
    total = ctc_sequence_log_probs(lp.expand(len(seqs), t, v), torch.full((len(seqs),), t), toks, tlens)
    for j, s in enumerate(seqs):
        score, path = best[s]
        assert ali.path_scores[j].item() == pytest.approx(score, abs=1e-9)
        assert total[j].item() == pytest.approx(exact[s], abs=1e-6)
        # first / last frame of each token in the best path
        first, last, k, prev = [], [], -1, None
        for f, c in enumerate(path):
            if c != BLANK and c != prev:
                k += 1
                first.append(f)
                last.append(f)
            elif c != BLANK and c == prev:
                last[k] = f
            prev = c
        assert ali.frames[j, : len(s)].tolist() == first
        assert ali.end_frames[j, : len(s)].tolist() == last
        # token "confidence" log-prob = max posterior over its segment
        for q in range(len(s)):
            seg = lp[0, first[q] : last[q] + 1, s[q]]
            assert ali.token_log_probs[j, q].item() == pytest.approx(seg.max().item(), abs=1e-12)


def test_viterbi_impossible_sequence():
    lp = torch.randn(1, 3, 4).log_softmax(-1)
    toks = torch.tensor([[1, 1, 1], [1, 2, 3]])  # 1 1 1 needs 5 frames
    ali = ctc_viterbi_align(lp, torch.tensor([3]), toks, torch.tensor([3, 3]), utt_index=torch.zeros(2, dtype=torch.long))
    assert ali.path_scores[0].item() == float("-inf")
    assert ali.frames[0].tolist() == [-1, -1, -1]
    assert ali.path_scores[1].item() > float("-inf")
    assert ali.frames[1].tolist() == [0, 1, 2]
