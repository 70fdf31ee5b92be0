"""Batched CTC prefix beam search.

Algorithm (the usual prefix search, as in icefall's ``ctc_prefix_beam_search``;
the fixture README spells out the exact variant):

* every prefix keeps two log-probs: ``pb`` (alignments ending in blank) and
  ``pnb`` (ending in the prefix's last token); its score is
  ``logaddexp(pb, pnb)``;
* the search starts from the empty prefix with ``pb = 0, pnb = -inf``;
* on each valid frame only the frame's top ``token_beam`` tokens (blank
  included) are expanded.  For a prefix ``y`` with last token ``a``:

  - blank:            ``y``       gets ``pb  += score(y) + lp(blank)``
  - ``a`` again:      ``y``       gets ``pnb += pnb(y) + lp(a)`` (repeat collapses)
                      ``y + a``   gets ``pnb += pb(y) + lp(a)`` (needs a blank between)
  - other token ``b``: ``y + b``  gets ``pnb += score(y) + lp(b)``

  where ``+=`` means log-sum-exp accumulation over everything that produces the
  same prefix;
* after each frame the ``beam`` best prefixes by score are kept.

Batched implementation: the beam of every utterance is a fixed number of slots
(K = ``beam``).  Each frame builds, for all utterances at once, the K "stay"
candidates (the same prefix) and the K*K' "extend" candidates (prefix + token,
K' = ``token_beam``), in that order, and keeps the K best with one stable sort.
Two candidates can only describe the same prefix if an extension ``y + b`` equals
an existing prefix ``y'``: every candidate carries a 64-bit polynomial hash of its
prefix (``hash(y + b) = hash(y) * B + b + 1`` in int64 arithmetic, which wraps:
modulo 2**64, B odd), and the duplicates are the (extension, live slot) pairs with
equal hashes whose token is the slot's last token; a false merge needs a 64-bit
collision between two prefixes of the beam (about 5e-20 per comparison for
unstructured sequences; polynomial hashes modulo 2**64 are known to collide for
adversarial Thue-Morse-like sequences of thousands of tokens, which a beam of
speech hypotheses does not hold).  A duplicate's log-prob is merged into the stay
candidate by log-sum-exp and the extension dropped.  The token sequences are not
carried along: each frame records which candidate each slot took, and the n-best's
tokens are read back once at the end.

Per frame the search is a fixed sequence of tensor operations on fixed shapes, with
no host synchronisation and no host tensors.  ``bench/decoding_ops.py`` counts the
kernel-launching ones (float32): 18 per frame, 28 with the word LM (50 and 120
before issue 32):

=====  =======================================================================
ops    what
=====  =======================================================================
1      ``tot = logaddexp(pb, pnb)`` of the slots, into a strided output (below)
1      one ``addcmul``: the stays' pb (``tot + blank``) and the slots' last
       tokens as floats, NaN for a dead slot (``last + tot * 0``)
1      ``eq``: which of the frame's tokens is each slot's last (never for a dead one)
1      one ``addcmul``: every integer field of every extension from its parent's
       (hash, length, last token; the LM's word state) with per-token multipliers
       and increments
2      ``eq`` of the extensions' and slots' hashes, ``&`` with the last tokens:
       three boolean layers over (slot j, token b, slot k') -- stay (j == k', b is
       k''s last), mask and merge (extension (j, b) is live slot k')
2      ``where`` + ``add``: the repeat values ``pnb + lp`` and the extensions'
       ``(repeat ? pb : tot) + lp`` (blank: -inf)
1      ``where`` over the three layers
2      ``amax`` over (j, b) of the stay and merge layers, ``amin`` over k' of the
       mask layer (the extensions' pnb, -inf for the duplicates)
2      ``logaddexp`` of the stays' repeat and merged pnb, ``copy_`` into place
1      ``logaddexp(pb, pnb)`` of every candidate: the ranking score
1      stable ``sort``
3      ``gather`` of the winners' integer fields, ``gather`` of their (pnb, pb),
       ``copy_`` of the winners' candidate indices (the back-pointers)
=====  =======================================================================

and with the word LM, 10 more: the slots' bigram keys (``add``), one batched
``searchsorted`` and one ``gather`` that look up every candidate's spelled word and
bigram at once (:class:`SearchTables`), ``addcmul`` + ``mul_`` + ``add_`` for what
completing a slot's word adds (``lm_scale * log P + bonus``), ``addcmul`` for the
extensions' LM totals, ``where`` for their previous word, and two additions to the
ranking score (LM total, then look-ahead).

Issue 32 asked for 15 and 25; this exact formulation does not reach them, because
the outputs must stay bit-identical to the search before issue 32 on the CPU:

* CPU ``logaddexp`` gives different bits (2.2% of the elements of random float32
  inputs) depending on whether an element goes through the vectorised or the scalar
  kernel, which depends on the tensors' layout and, for a contiguous tensor, on its
  flat length (the elements after the last whole pair of vectors of a run, and so
  the ends of the threads' chunks, are scalar).  The three log-sum-exps of a frame must therefore be three operations on
  the old layouts: ``tot`` all scalar (a strided output), the merge of duplicates on
  contiguous (N, K) tensors -- which the ranking cannot read in place, hence the
  ``copy_`` -- and the ranking score on contiguous (N, K + K*K') tensors.  Bits that
  only feed the sort still matter, as exact ties are broken by candidate order;
* the ranking's (N, K + K*K') float planes and the int64 fields cannot be moved by
  one ``gather`` (different element sizes: float32 planes must stay contiguous for
  the ranking), and the back-pointers need their own write per frame (the sort could
  write every frame's K + K*K' sorted indices into the history itself, one operation
  less, at (K + K*K') x 8 bytes per utterance and frame -- 8.4 kB at beam 32, 1.3 MB for a
  6 s segment; not done);
* the duplicate merge needs one reduction per direction (per slot over the
  extensions: the merged log-prob; per extension over the slots: dropping it), and
  the liveness of a slot can only come from its float scores;
* the word LM's ``lm_scale * log P + bonus`` must be two roundings, as before (a
  fused multiply-add, which ``addcmul`` is on the CPU, rounds once), and the ranking
  score's two LM additions must stay two (the old order of roundings).

Implementation notes:

* the candidates' integer fields are int64 planes (field, N, K + K*K'), two tables
  (this frame's and the next frame's: the winners are gathered into the other one's
  slot columns), floats travelling in them as bit patterns (read through views); the
  float scores of the candidates are made anew every frame in float planes that the
  ranking reads, and the slots' (pnb, pb) are gathered out of them;
* float32 reads ``tot`` as a float out of an int64 plane (so its output is strided
  and goes through the scalar kernel) next to the last tokens, so that one ``addcmul``
  makes the stays' pb and the last tokens; float64 (whose values fill an int64)
  writes ``tot`` into a strided scratch tensor instead and needs one more operation;
* utterances shorter than the batch are shifted to end at the last frame; the
  frames before an utterance starts are "blank with probability 1", which leave
  the initial beam exactly as it is, so no per-frame masking of finished
  utterances is needed;
* token ids are compared as floats of the search's dtype: a vocabulary whose ids the
  dtype cannot hold exactly (above 2**24 for float32; above 256 for bfloat16) is
  refused (:func:`model.decoding.decode` searches in float32 or float64).

Word-LM shallow fusion (``lm``, :mod:`model.decoding.lm_fusion`): each candidate also
carries its fused LM total and the word it is spelling (a 64-bit character hash, whether
it spells characters, the word's LM index and the previous word's). An extension whose
token starts a word after a spelled one completes the slot's word and adds
``lm_scale * log P(word | previous) + word_bonus``; candidates are ranked by CTC
log-prob plus that total plus ``lm_scale`` x the look-ahead of the word being spelled
(the best unigram of an LM word with that beginning), and the end of the utterance
completes the last word and scores ``</s>``.  Merged duplicates are the same prefix, so
they carry the same LM state.  Per frame: one batched lookup of every candidate's
spelled word (LM index, look-ahead, unigram) and bigram, whatever the LM's size
(:class:`SearchTables`).

Hotwords (``hotwords``, :mod:`model.decoding.hotwords`): two more int64 planes (automaton state,
hotword total) travel with the other fields; per frame about 9 more operations (16 with the word
LM: its ``<unk>`` exemption), not counted by ``bench/decoding_ops.py``, which times the search
without lists. Without lists none of them runs.

On CUDA the frame loop is replayed from CUDA graphs (:mod:`model.decoding.frames`);
elsewhere it runs eagerly, with the same operations.
"""

from __future__ import annotations

from typing import Optional

import torch

from .frames import run_frames
from .hotwords import HotwordBatch
from .lm_fusion import SearchLM, SearchTables, bool_view, float_bits, float_view
from .types import CtcNBest
from .utils import read_back

#: the prefix hash: ``h -> h * _BK + token + 1`` modulo 2**64 (int64 arithmetic, which wraps)
_BK = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64

# int64 planes of a candidate table (INTS); a field's value for candidate c of utterance n is at
# [field, n, c]: the slots are candidates 0..K-1, extension (slot j, token b) is K + j * K' + b.
# Scratch planes read as floats (float32 searches): -inf, 1, the slots' logaddexp(pb, pnb)
_NEG, _ONE, _TOT = 0, 1, 2
# the prefix: its last token (the bits of float(token), -1.0 at first), hash and length
_LAST, _KEY, _LEN = 3, 4, 5
# the word LM's state (fused search only): the word being spelled (its 64-bit character hash,
# then the key of its bigram after the previous word: the two lookup keys, side by side), whether
# it spells characters (0/1, and as the bits of 0.0/1.0)
_CH, _BKEY, _SPELLED, _SPELLEDF = 6, 7, 8, 9
# an extension's token starts a word after a spelled one (0/1, and as float bits), then spare
# planes: the second row of the extensions' fields (they read the parent's _SPELLED, _SPELLEDF ...)
_ENDS, _ENDSF = 10, 11
# the lookups' results (:meth:`SearchTables.lookup`): the spelled word's LM index, lm_scale x its
# look-ahead and its unigram (bits), interleaved with the bigram's (a, b) (bits) and a spare
_WORD, _BIGA, _LOOK, _BIGB, _UNIW = 17, 18, 19, 20, 21
# the previous word's LM index, the fused LM total (bits)
_PREV, _LMTOT = 23, 24
# float planes of the candidates (FL): non-blank / blank log-prob, and the slots' last token as a
# float, NaN where the slot is dead
_PNB, _PB, _LL = 0, 1, 2


@torch.inference_mode()
def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    beam: int = 4,
    blank_id: int = 0,
    token_beam: Optional[int] = None,
    lm: Optional[SearchLM] = None,
    lm_scale: float = 0.0,
    word_bonus: float = 0.0,
    frame_loop: Optional[str] = None,
    hotwords: Optional[HotwordBatch] = None,
) -> CtcNBest:
    """CTC prefix beam search over a batch.

    Args:
      log_probs: (N, T, V) CTC log-posteriors (a float dtype that holds the token ids
        exactly, e.g. float32 or float64; the search runs in that dtype).
      lens: (N,) valid frames per utterance.
      beam: number of prefixes kept after each frame (= size of the n-best).
      blank_id: blank token id.
      token_beam: number of tokens expanded per frame; default ``beam`` (the
        reference's choice).  Clamped to V.
      lm, lm_scale, word_bonus: shallow fusion of a word LM (:mod:`model.decoding.lm_fusion`):
        prefixes are ranked by their CTC log-prob plus ``lm_scale`` x the LM log-prob of their
        completed words plus ``word_bonus`` per completed word (at the end: the last word and
        ``</s>`` too) plus ``lm_scale`` x the look-ahead of the word being spelled (when ``lm``
        has its prefix table). The returned ``scores`` stay the CTC log-probs; the slots are
        ordered by the fused score. ``lm=None`` or ``lm_scale == 0``: the plain search.
      frame_loop: how the frame loop runs, one of :data:`model.decoding.frames.MODES`
        (:func:`model.decoding.frames.run_frames`; None: CUDA graphs on CUDA devices unless
        ``ZIPSCRIBE_CUDA_GRAPHS=0``, else eagerly). The results are the same.
      hotwords: contextual biasing (:mod:`model.decoding.hotwords`), one automaton per utterance
        side by side: every candidate carries its automaton state and hotword total, which is
        added to its rank. The fused LM does not penalise a word of a hotword as ``<unk>``: its
        completion at a state where a phrase's word ends (:attr:`HotwordGraph.word_end`) adds
        only ``word_bonus``, and while a phrase is being matched a beginning no LM word has gets
        no (``<unk>``) look-ahead; beginnings of LM words keep theirs, so that distractors do not
        switch the LM off for common words. The n-best's ``hotword_scores`` are the bonuses of the
        completed phrases, and the slots are ordered by score + those (+ the LM's). ``None``: the
        search is
        exactly the one without hotwords.

    Returns a :class:`CtcNBest` with ``K = beam`` slots per utterance, best first.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    n, t_max, vocab = log_probs.shape
    kt = min(token_beam if token_beam is not None else beam, vocab)
    tables = lm.tables(log_probs.device, log_probs.dtype) if lm is not None and lm_scale else None
    if hotwords is not None and hotwords.list_of.shape[0] != n:
        raise ValueError(f"hotwords are for {hotwords.list_of.shape[0]} utterances, the batch has {n}")
    if hotwords is not None and hotwords.vocab_size < vocab:
        raise ValueError(f"hotword automata over {hotwords.vocab_size} tokens, the model has {vocab}")
    search = _PrefixSearch(log_probs, lens.to(log_probs.device), beam, kt, blank_id, tables, lm_scale, word_bonus,
                           hotwords)
    run_frames(search.step, search.frame_inputs(), [search.order], t_max, frame_loop)
    return search.result(t_max % 2)


class _PrefixSearch:
    """The buffers of one batch's search and its frame step (see the module docstring)."""

    def __init__(self, log_probs: torch.Tensor, lens: torch.Tensor, beam: int, kt: int, blank_id: int,
                 tables: Optional[SearchTables], lm_scale: float, word_bonus: float,
                 hotwords: Optional[HotwordBatch] = None):
        n, t_max, vocab = log_probs.shape
        device, dtype = log_probs.device, log_probs.dtype
        if vocab - 1 > 2 / torch.finfo(dtype).eps:  # the largest integer the dtype holds exactly, and all below
            raise ValueError(f"{dtype} cannot hold token ids up to {vocab - 1} exactly; search in float32")
        k = beam
        c = k + k * kt
        self.n, self.k, self.kt, self.c, self.t_max = n, k, kt, c, t_max
        self.tables, self.scale, self.bonus = tables, lm_scale, word_bonus
        fused = tables is not None
        long = dict(dtype=torch.long, device=device)
        floats = dict(dtype=dtype, device=device)
        #: float32: the slots' logaddexp(pb, pnb) is read as a float from an int64 plane (so that it
        #: goes through the scalar kernel), and one addcmul makes the stays' pb and the slots' last tokens
        self.packed = torch.finfo(dtype).bits == 32

        # per-frame inputs, (T, N, ...): utterances shifted to end at frame t_max - 1; the frames
        # before an utterance starts expand nothing and give blank log-prob 0 (see the docstring)
        top_lp, top_ids = log_probs.topk(kt, dim=-1)  # (N, T, K')
        is_blank = top_ids == blank_id
        blank_lp = torch.where(is_blank, top_lp, float("-inf")).amax(dim=-1)  # (N, T)
        shift = t_max - lens.clamp(min=0, max=t_max)
        frame = torch.arange(t_max, device=device).unsqueeze(0) - shift.unsqueeze(1)  # (N, T) original frame
        before = frame < 0
        src = frame.clamp(min=0).unsqueeze(2).expand(n, t_max, kt)
        ids = torch.where(before.unsqueeze(2), blank_id, top_ids.gather(1, src))
        ext_lp = torch.where(before.unsqueeze(2) | is_blank.gather(1, src), float("-inf"), top_lp.gather(1, src))
        blank = torch.where(before, 0.0, blank_lp.gather(1, frame.clamp(min=0))).to(dtype)
        self.ids = ids.transpose(0, 1).contiguous()  # (T, N, K') token ids
        self.ids_f = self.ids.to(dtype).unsqueeze(2)  # (T, N, 1, K') the same as floats (exact)
        self.ext_lp = ext_lp.transpose(0, 1).contiguous().view(t_max, n, 1, kt, 1)  # blank: -inf
        # (T, N, 1, 2): [blank log-prob, 0] (the stays' pb and the slots' last tokens at once)
        self.blank = torch.stack([blank.transpose(0, 1), torch.zeros((t_max, n), **floats)], 2).unsqueeze(2)
        self.order = torch.empty((t_max, n, k), dtype=torch.long, device=device)  # candidate each slot took
        # an extension's fields: its parent's fields * multiplier + increment, both by token (T, N, 1, K', F)
        mul, inc = self._field_updates(vocab, device, dtype)
        self.mul = mul[self.ids].unsqueeze(2)  # (T, N, 1, K', R, F)
        self.inc = inc[self.ids].unsqueeze(2)

        # integer candidate tables, two (this frame's, the next frame's): their first K candidates
        # are the slots; the float candidates (their values are made anew every frame); the slots'
        # (pnb, pb)
        planes = _LMTOT + 1 if fused else _LEN + 1
        #: hotwords: two more planes, the automaton's (global) state and the hotword total (bits)
        self.hw = hotwords.to(device, dtype) if hotwords is not None else None
        self.hws, self.hwt = planes, planes + 1
        if self.hw is not None:
            planes += 2
        self.ints = [torch.zeros((planes, n, c), **long) for _ in range(2)]
        self.fl = torch.full((3, n, c), float("-inf"), **floats)
        self.slots = torch.full((2, n, k), float("-inf"), **floats)
        self.slots[1, :, 0] = 0.0  # the empty prefix
        for ints in self.ints:
            float_view(ints[_NEG], dtype).fill_(float("-inf"))
            float_view(ints[_ONE], dtype).fill_(1.0)
        self.ints[0][_LAST, :, :k] = float_bits(torch.tensor(-1.0, **floats))
        self.tot = torch.full((n, k, 2), float("-inf"), **floats)  # [-inf, logaddexp(pb, pnb)] (not packed)
        self.zero = torch.zeros((), **floats)
        self.is_last = torch.empty((n, k, kt), dtype=torch.bool, device=device)
        # duplicates, in three layers (stay, mask, merge) over (N, slot j, token b, slot k'): which
        # cells count (same: [j == k', ext == k', ext == k']; cond: that and b is k''s last token)
        self.same = torch.zeros((3, n, k, kt, k), dtype=torch.bool, device=device)
        self.same[0] = torch.eye(k, dtype=torch.bool, device=device).view(1, k, 1, k)
        self.cond = torch.empty_like(self.same)
        # [-inf, repeat / stay values, -inf, extension values, -inf] by (N, j, b): the layers' values
        # are planes 1..3 where cond holds, planes 2..4 elsewhere
        self.values = torch.full((5, n, k, kt), float("-inf"), **floats)
        self.cells = torch.empty((3, n, k, kt, k), **floats)
        self.reduced = torch.empty((2, n, k), **floats)  # [stay pnb, merged extension pnb]
        self.merged = torch.empty((n, k), **floats)
        self.rank = torch.empty((n, c), **floats)
        self.sorted = (torch.empty((n, c), **floats), torch.empty((n, c), **long))
        if fused:
            self._init_lm(device, dtype)
        if self.hw is not None:
            self.ints[0][self.hws, :, :k] = self.hw.root_state.unsqueeze(1)
            for ints in self.ints:
                float_view(ints[self.hwt], dtype).fill_(0.0)
            self.hw_lists = self.hw.list_of.view(n, 1, 1)
            self.in_match = torch.zeros((n, c), dtype=torch.bool, device=device)

    def _field_updates(self, vocab: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(V, R, F) multiplier and increment of each integer field of an extension by each token, in
        R rows of F planes (:meth:`_field_views`): the prefix's last token, hash and length; with the
        LM, the word's character hash, bigram key (kept) and spelled flags (a word-starting token
        resets them, one that spells sets them), and in the second row whether the token starts a
        word after a spelled one (the parent's spelled flags x starts) and spare planes."""
        long = dict(dtype=torch.long, device=device)
        token = torch.arange(vocab, **long)
        zero, one = torch.zeros_like(token), torch.ones_like(token)
        mul = [zero, torch.full_like(token, _BK), one]
        inc = [float_bits(token.to(dtype)), token + 1, one]
        tb = self.tables
        if tb is None:
            return torch.stack(mul, 1).unsqueeze(1), torch.stack(inc, 1).unsqueeze(1)
        spells, starts = tb.spells.long(), tb.starts_word.long()
        keep = (1 - starts) * (1 - spells)
        mul += [tb.piece_multiplier, one, keep, keep]
        inc += [tb.piece_increment, zero, spells, spells * float_bits(torch.ones((), dtype=dtype, device=device))]
        width = len(mul)
        second = [starts, starts] + [zero] * (width - 2)
        return (torch.stack([torch.stack(mul, 1), torch.stack(second, 1)], 1),
                torch.stack([torch.stack(inc, 1), torch.stack([zero] * width, 1)], 1))

    def _field_views(self, ints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The slots' fields an extension's fields are made of, (N, K, 1, R, F), and the extensions'
        fields, (N, K, K', R, F): row 0 is the planes _LAST.. of both; row 1 writes the F planes from
        _ENDS on and reads the F planes from _SPELLED on (the parent's spelled flags)."""
        n, k, kt, c = self.n, self.k, self.kt, self.c
        rows, width = self.mul.shape[-2:]
        plane = n * c
        source_row = _SPELLED - _LAST  # the second row reads from _SPELLED, the first from _LAST
        source = ints.as_strided((n, k, 1, rows, width), (c, 1, 0, source_row * plane, plane), _LAST * plane)
        ext = ints[_LAST:_LAST + rows * width, :, k:].view(rows, width, n, k, kt).permute(2, 3, 4, 0, 1)
        return source, ext

    def _init_lm(self, device: torch.device, dtype: torch.dtype) -> None:
        tb = self.tables
        self.lookup_keys, self.lookup_rows = tb.lookup(self.scale)
        self.positions = torch.empty((2, self.n * self.c), dtype=torch.long, device=device)
        self.ints[0][_PREV, :, :self.k] = tb.bos
        for ints in self.ints:
            float_view(ints[_LMTOT], dtype).fill_(0.0)
        self.lp = torch.empty((self.n, self.k, 1), dtype=dtype, device=device)

    # --- the frame loop (model.decoding.frames.run_frames) ---------------------------------------

    def frame_inputs(self) -> list[torch.Tensor]:
        """The per-frame inputs, (T, ...) each: what :meth:`step` gets frame ``t``'s slices of."""
        inputs = [self.ids_f, self.ext_lp, self.blank, self.mul, self.inc]
        return inputs + [self.ids] if self.hw is not None else inputs

    def step(self, parity: int, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """One frame: expand the slots (int64 fields in table ``parity``), keep the best K (into the
        other table); ``outputs``: the frame's slice of :attr:`order`."""
        ids_f, ext_lp, blank, mul, inc = inputs[:5]
        (order,) = outputs
        n, k, kt, dtype = self.n, self.k, self.kt, self.rank.dtype
        fl, ints, ints_next = self.fl, self.ints[parity], self.ints[parity ^ 1]
        pnb, pb = self.slots
        floats = float_view(ints[:, :, :k], dtype)  # (planes, N, K): the slots' int64 fields read as floats

        # tot = logaddexp(pb, pnb) through the scalar kernel (a strided output), as before issue 32;
        # then the stays' pb (tot + blank) and the slots' last tokens as floats, NaN where the slot
        # is dead (last + tot * 0): a dead slot's token matches nothing, so it neither collapses a
        # repeat nor takes in a duplicate
        stay_pb_last = fl[_PB:_LL + 1, :, :k].permute(1, 2, 0)  # (N, K, 2)
        if self.packed:  # one addcmul: [tot, last] + [1, tot] * [blank, 0]
            tot = torch.logaddexp(pb, pnb, out=floats[_TOT])
            torch.addcmul(floats[_TOT:_LAST + 1].permute(1, 2, 0), floats[_ONE:_TOT + 1].permute(1, 2, 0), blank,
                          out=stay_pb_last)
            tot_pair = floats[_NEG:_TOT + 1:2].permute(1, 2, 0)  # (N, K, 2): [-inf, tot]
        else:
            tot = torch.logaddexp(pb, pnb, out=self.tot[..., 1])
            torch.add(tot, blank[..., 0], out=stay_pb_last[..., 0])
            torch.addcmul(floats[_LAST], tot, self.zero, out=stay_pb_last[..., 1])
            tot_pair = self.tot
        is_last = torch.eq(ids_f, fl[_LL, :, :k].unsqueeze(2), out=self.is_last)  # (N, K, K'): token b is slot j's last
        # the extensions' integer fields from their parents' (hash, length, last token; LM word state)
        source, ext = self._field_views(ints)
        torch.addcmul(inc, source, mul, out=ext)
        # duplicates: extension (j, b) is the prefix of live slot k' (the same hash; live: is_last)
        key = ints[_KEY]
        torch.eq(key[:, k:].view(1, n, k, kt, 1).expand(2, n, k, kt, k), key[:, None, None, :k].expand(2, n, k, kt, k),
                 out=self.same[1:])
        cond = torch.bitwise_and(self.same, is_last.transpose(1, 2).view(1, n, 1, kt, k), out=self.cond)
        # [repeat -> pnb, else -inf] + lp  and  [repeat -> pb, else tot] + lp  (blank: -inf)
        pair = self.slots.permute(1, 2, 0).unsqueeze(2)  # (N, K, 1, 2): (pnb, pb)
        torch.add(torch.where(is_last.unsqueeze(3), pair, tot_pair.unsqueeze(2)), ext_lp,
                  out=self.values[1:4:2].permute(1, 2, 3, 0))
        # stay: the repeat of k''s own last token; mask: -inf where the extension is a duplicate;
        # merge: the duplicate's pnb at its slot
        torch.where(cond, self.values[1:4].unsqueeze(4), self.values[2:5].unsqueeze(4), out=self.cells)
        torch.amax(self.cells[0::2], dim=(2, 3), out=self.reduced)
        torch.amin(self.cells[1], dim=3, out=fl[_PNB, :, k:].view(n, k, kt))
        torch.logaddexp(self.reduced[0], self.reduced[1], out=self.merged)  # contiguous, as before
        fl[_PNB, :, :k].copy_(self.merged)

        rank = torch.logaddexp(fl[_PB], fl[_PNB], out=self.rank)  # (N, K + K*K')
        if self.hw is not None:
            self._hotwords(ints, inputs[5])
        if self.tables is not None:
            self._fuse(ints, rank)
        if self.hw is not None:
            rank += float_view(ints[self.hwt], dtype)
        # stable: equal scores keep candidate order (stays first, then extensions by slot, token rank)
        torch.sort(rank, dim=1, descending=True, stable=True, out=self.sorted)
        win = self.sorted[1][:, :k]
        gathered = slice(_LAST, ints.shape[0])
        torch.gather(ints[gathered], 2, win.expand(ints.shape[0] - _LAST, n, k), out=ints_next[gathered, :, :k])
        torch.gather(fl[_PNB:_PB + 1], 2, win.expand(2, n, k), out=self.slots)
        order.copy_(win)

    def _hotwords(self, ints: torch.Tensor, ids: torch.Tensor) -> None:
        """The hotword automata's part of a frame: the extensions' states and totals from their
        slots' (the stays keep theirs), and which candidates are inside a match."""
        n, k, kt, hw = self.n, self.k, self.kt, self.hw
        dtype = self.rank.dtype
        state = ints[self.hws]
        slot_state = state[:, :k].unsqueeze(2)  # (N, K, 1)
        new, gain = hw.step(slot_state, ids.unsqueeze(1), self.hw_lists)  # (N, K, K')
        state[:, k:].view(n, k, kt).copy_(new)
        total = float_view(ints[self.hwt], dtype)
        torch.add(total[:, :k].unsqueeze(2), gain, out=total[:, k:].view(n, k, kt))
        torch.gt(torch.take(hw.acc, state), 0, out=self.in_match)

    def _fuse(self, ints: torch.Tensor, rank: torch.Tensor) -> None:
        """The word LM's part of a frame: looks up every candidate's spelled word and bigram, completes
        the slots' words where an extension starts a new one, adds LM total and look-ahead to ``rank``."""
        n, k, kt, c = self.n, self.k, self.kt, self.c
        tb, dtype = self.tables, rank.dtype
        # the slots' bigram keys, then both lookups for every candidate (the slots' own spelled
        # words again: the same rows), into the planes _WORD.._UNIW + 1
        torch.add(ints[_WORD, :, :k], ints[_PREV, :, :k], alpha=tb.num_words, out=ints[_BKEY, :, :k])
        torch.searchsorted(self.lookup_keys, ints[_CH:_BKEY + 1].view(2, n * c), right=True, out=self.positions)
        found = ints[_WORD:_UNIW + 2].view(3, 2, n * c).transpose(0, 1)
        torch.gather(self.lookup_rows, 2, self.positions.unsqueeze(1).expand(2, 3, n * c), out=found)
        # what completing each slot's word adds: lm_scale x log P(word | previous) + bonus
        slot = ints[:, :, :k]
        floats = float_view(slot, dtype)
        add = torch.addcmul(floats[_BIGA], floats[_BIGB], floats[_UNIW], out=self.lp[..., 0])
        add.mul_(self.scale).add_(self.bonus)
        if self.hw is not None:  # a word of a hotword is no <unk>: only the word bonus
            exempt = torch.take(self.hw.word_end, slot[self.hws]) & (slot[_WORD] == tb.unk)
            add.masked_fill_(exempt, self.bonus)
        # an extension whose token starts a word after a spelled one completes the slot's word: it
        # adds to the LM total and becomes the previous word
        ext = ints[:, :, k:].view(-1, n, k, kt)
        lm_total = float_view(ints[_LMTOT], dtype)
        torch.addcmul(lm_total[:, :k].unsqueeze(2), float_view(ext[_ENDSF], dtype), self.lp,
                      out=lm_total[:, k:].view(n, k, kt))
        torch.where(bool_view(ints[_ENDS, :, k:]).view(n, k, kt), slot[_WORD].unsqueeze(2), slot[_PREV].unsqueeze(2),
                    out=ext[_PREV])
        rank += lm_total
        if tb.lookahead and self.hw is None:  # + lm_scale x look-ahead, 0 while nothing is spelled
            rank.addcmul_(float_view(ints[_LOOK], dtype), float_view(ints[_SPELLEDF], dtype))
        elif tb.lookahead:  # ... and 0 while a hotword no LM word begins like is being matched
            unknown = torch.eq(ints[_LOOK], self.lookup_rows[0, 1, 0]).logical_and_(self.in_match)
            spelled = torch.where(unknown, 0.0, float_view(ints[_SPELLEDF], dtype))
            rank.addcmul_(float_view(ints[_LOOK], dtype), spelled)

    def _end_score(self, slots: torch.Tensor) -> torch.Tensor:
        """What completing each slot's word and then ``</s>`` adds at the end of the utterance
        (``slots``: the slots' int64 planes)."""
        tb = self.tables
        spelled = bool_view(slots[_SPELLED])
        word, prev = slots[_WORD], slots[_PREV]
        end = torch.where(spelled, self.scale * tb.log_prob(word, prev) + self.bonus, 0.0)
        if self.hw is not None:  # a hotword being matched is no <unk> (as in _fuse)
            exempt = spelled & (word == tb.unk) & self.hw.word_end[slots[self.hws]]
            end = torch.where(exempt, torch.full_like(end, self.bonus), end)
        last = torch.where(spelled, word, prev)
        return end + self.scale * tb.log_prob(torch.full_like(last, tb.eos), last)

    # --- the n-best ------------------------------------------------------------------------------

    def result(self, parity: int) -> CtcNBest:
        """The n-best from the slots (int64 fields in table ``parity``, where the last frame left them)."""
        k, kt = self.k, self.kt
        ints = self.ints[parity][:, :, :k]
        device = ints.device
        pnb, pb = (x.contiguous() for x in self.slots)
        scores = torch.logaddexp(pb, pnb)
        valid = scores > float("-inf")
        plen = torch.where(valid, ints[_LEN], torch.zeros_like(ints[_LEN]))
        order = self.order
        is_ext = order >= k
        parent = torch.where(is_ext, (order - k) // kt, order)
        token = torch.where(is_ext, self.ids.gather(2, ((order - k) % kt).clamp(min=0)), -1)
        tokens = torch.from_numpy(read_back(parent, token, plen)[0]).to(device)
        if self.tables is None and self.hw is None:
            return CtcNBest(tokens=tokens, lens=plen, scores=scores, log_prob_blank=pb, log_prob_non_blank=pnb)
        zeros = torch.zeros_like(scores)
        final = float_view(ints[_LMTOT], pb.dtype) + self._end_score(ints) if self.tables is not None else zeros
        kept = (self.hw.final(float_view(ints[self.hwt], pb.dtype), ints[self.hws]) if self.hw is not None
                else zeros)
        order = torch.sort(torch.where(valid, scores + final + kept, scores), dim=1, descending=True,
                           stable=True).indices
        pb, pnb, scores, plen, final, kept = (x.gather(1, order) for x in (pb, pnb, scores, plen, final, kept))
        tokens = tokens.gather(1, order.unsqueeze(2).expand_as(tokens))
        return CtcNBest(tokens=tokens, lens=plen, scores=scores, log_prob_blank=pb, log_prob_non_blank=pnb,
                        search_lm_scores=final if self.tables is not None else None,
                        hotword_scores=torch.where(valid, kept, 0.0) if self.hw is not None else None)
