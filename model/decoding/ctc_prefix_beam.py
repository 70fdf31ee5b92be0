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
an existing prefix ``y'``; every slot keeps the hashes of its prefix and of its
prefix's parent (two polynomial hashes modulo the primes 2^31-1 and 10^9+7, the
length, the last token), so the duplicates are the pairs where slot ``k``'s
hashes and length equal slot ``k'``'s parent's and the extension's token is
``k'``'s last token -- exactly the extensions whose own hashes, length and token
equal ``k'``'s (the hash of ``y + b`` is ``hash(y) * B + b + 1``, and ``B`` is
invertible modulo a prime); a false merge needs a simultaneous collision of both
hashes, about 1e-18 per comparison.  A duplicate's log-prob is merged into the
stay candidate by log-sum-exp and the extension dropped.  The token sequences are
not carried along: each frame records which candidate each slot took, and the
n-best's tokens are read back once at the end.

Per frame the search is a fixed sequence of tensor operations on fixed shapes, with
no host synchronisation and no host tensors (``bench/decoding_ops.py`` counts the
kernel-launching ones: 24 per frame, 45 with the word LM, against 50 and 120 before
issue 32; issue 32 asked for 15 and 25, which this exact formulation does not reach --
the merge of duplicate prefixes alone takes 9, and the two log-sum-exps below must keep
their layouts):

* the candidates live in preallocated tables, one row per candidate -- the
  scores as float planes (blank / non-blank log-prob, LM total, look-ahead) and
  the integer state (hashes, length, last token, the LM's word state) as int64
  fields -- and the slots' own state *is* the stay rows of those tables: the
  extension rows are computed in place (``out=``), and one ``gather`` per table
  moves the K winners into the stay rows of the other table of a ping-pong pair;
* an extension's hashes, length and last token, and its parent hashes, come from
  one ``addcmul`` and one ``remainder`` over the parent's fields;
* utterances shorter than the batch are shifted to end at the last frame; the
  frames before an utterance starts are "blank with probability 1", which leave
  the initial beam exactly as it is, so no per-frame masking of finished
  utterances is needed;
* the two log-sum-exps whose elements CPU kernels compute differently by memory
  layout (vectorised or not) are taken on tensors of the same shapes and layouts
  as before issue 32, so the results stay bit-identical on the CPU.

Word-LM shallow fusion (``lm``, :mod:`model.decoding.lm_fusion`): each slot also
carries its fused LM total and the word it is spelling (two character hashes,
the character count, the number of unknown pieces, the word's LM index and the
previous word's). An extension whose token starts a word completes the slot's
word and adds ``lm_scale * log P(word | previous) + word_bonus``; candidates are
ranked by CTC log-prob plus that total plus ``lm_scale`` x the look-ahead of the
word being spelled (the best unigram of an LM word with that beginning), and the
end of the utterance completes the last word and scores ``</s>``.  Merged
duplicates are the same prefix, so they carry the same LM state.  Per frame: one
bigram lookup for the K slots and one spelled-word lookup (LM index and
look-ahead) for the K*K' extensions, whatever the LM's size (:class:`SearchTables`).

On CUDA the frame loop is replayed from CUDA graphs (:mod:`model.decoding.frames`);
elsewhere it runs eagerly, with the same operations.
"""

from __future__ import annotations

from typing import Optional

import torch

from .frames import run_frames
from .lm_fusion import _P2 as _LP2
from .lm_fusion import KEY_OFFSET, SearchLM, SearchTables, bits_float
from .types import CtcNBest
from .utils import read_back

_P1, _B1 = 2147483647, 1000003
_P2, _B2 = 1000000007, 911382323
_BIG = 1 << 62

# integer fields of a candidate row: its prefix (D), its parent prefix (PD), the LM's word state
_D, _PD = slice(0, 4), slice(4, 8)  # (hash1, hash2, length, last token)
_LEN, _LAST = 2, 3
# the word being spelled: (char hash1, char hash2, spelled flag, unknown flag) (SearchTables),
# the previous word's LM index, its own, and the bits of lm_scale x its look-ahead
_WS = slice(8, 12)
_SPELLED, _UNKNOWN, _PREV, _WORD, _LOOK = 10, 11, 12, 13, 14
# float planes: [scratch, pnb, pb, LM total]
_SCRATCH, _PNB, _PB, _LMTOT = range(4)


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
) -> CtcNBest:
    """CTC prefix beam search over a batch.

    Args:
      log_probs: (N, T, V) CTC log-posteriors (any float dtype; the search runs
        in that dtype).
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

    Returns a :class:`CtcNBest` with ``K = beam`` slots per utterance, best first.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    n, t_max, vocab = log_probs.shape
    kt = min(token_beam if token_beam is not None else beam, vocab)
    tables = lm.tables(log_probs.device, log_probs.dtype) if lm is not None and lm_scale else None
    search = _PrefixSearch(log_probs, lens.to(log_probs.device), beam, kt, blank_id, tables, lm_scale, word_bonus)
    run_frames(search.step, search.frame_inputs(), [search.order], t_max, frame_loop)
    return search.result(t_max % 2)


class _PrefixSearch:
    """The buffers of one batch's search and its frame step (see the module docstring)."""

    def __init__(self, log_probs: torch.Tensor, lens: torch.Tensor, beam: int, kt: int, blank_id: int,
                 tables: Optional[SearchTables], lm_scale: float, word_bonus: float):
        n, t_max, _ = log_probs.shape
        device, dtype = log_probs.device, log_probs.dtype
        k = beam
        c = k + k * kt
        self.n, self.k, self.kt, self.c, self.t_max = n, k, kt, c, t_max
        self.tables, self.scale, self.bonus = tables, lm_scale, word_bonus
        fused = tables is not None

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
        self.ext_lp = ext_lp.transpose(0, 1).contiguous()  # (T, N, K') their log-probs, blank -inf
        self.blank = blank.transpose(0, 1).unsqueeze(2).contiguous()  # (T, N, 1)
        self.order = torch.empty((t_max, n, k), dtype=torch.long, device=device)  # candidate each slot took
        # an extension's (prefix, parent) fields: (parent fields * ext_mul + ext_inc[token]) % ext_mod
        long = dict(dtype=torch.long, device=device)
        self.ext_mul = torch.tensor([[_B1, _B2, 1, 0], [1, 1, 1, 1]], **long)
        self.ext_mod = torch.tensor([[_P1, _P2, _BIG, _BIG], [_BIG] * 4], **long)
        inc_tok = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0]], **long)
        inc_one = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], **long)
        self.ext_inc = self.ids.view(t_max, n, kt, 1, 1) * inc_tok + inc_one  # (T, N, K', 2, 4)

        # candidate tables, two of each (this frame's, the next frame's); the first K rows are the slots
        planes = 4 if fused else 3
        self.fl = [torch.full((planes, n, c), float("-inf"), dtype=dtype, device=device) for _ in range(2)]
        fields = 15 if fused else 8
        self.ints = [torch.zeros((n, c, fields), dtype=torch.long, device=device) for _ in range(2)]
        fl, ints = self.fl[0], self.ints[0]
        fl[_PB, :, 0] = 0.0  # the empty prefix
        ints[:, :k, _LAST] = -1
        ints[:, :k, _PD.start + _LEN] = -1  # no slot's parent: never a duplicate's target
        self.rank = torch.empty((n, c), dtype=dtype, device=device)
        self.sorted = (torch.empty((n, c), dtype=dtype, device=device), torch.empty((n, c), dtype=torch.long, device=device))
        self.tot = torch.full((n, k, 2), float("-inf"), dtype=dtype, device=device)  # [-inf, logaddexp(pb, pnb)]
        if fused:
            self._init_lm(device, dtype)

    def _init_lm(self, device: torch.device, dtype: torch.dtype) -> None:
        tb = self.tables
        ids = self.ids
        self.starts = tb.starts_word[ids]  # (T, N, K') the token starts a word
        self.starts_f = self.starts.to(dtype)
        self.piece_mul = tb.piece_multiplier[ids]  # (T, N, K', 4)
        self.piece_add = tb.piece_increment[ids]
        self.lookup_keys, self.lookup_rows, self.spelled_default = tb.lookup(self.scale)
        self.key_mul = torch.tensor([_LP2, KEY_OFFSET], dtype=torch.long, device=device)
        # the frame's lookups: the extensions' spelled words, then the slots' bigrams
        self.keys = torch.empty((self.n, self.k, self.kt + 1), dtype=torch.long, device=device)
        ints = self.ints[0]
        ints[:, :self.k, _PREV] = tb.bos
        ints[:, :self.k, _UNKNOWN] = 1
        # the empty word: its LM index and look-ahead as a lookup of its hash (0, 0) gives them
        key = torch.full((1,), KEY_OFFSET, dtype=torch.long, device=device)
        row = self.lookup_rows[torch.searchsorted(self.lookup_keys, key)]
        ints[:, :self.k, _WORD:_LOOK + 1] = torch.where(row[:, :1] == key, row[:, 1:], self.spelled_default)
        self.fl[0][_LMTOT, :, :self.k] = 0.0

    # --- the frame loop (model.decoding.frames.run_frames) ---------------------------------------

    def frame_inputs(self) -> list[torch.Tensor]:
        """The per-frame inputs, (T, ...) each: what :meth:`step` gets frame ``t``'s slices of."""
        inputs = [self.ids, self.ext_lp, self.blank, self.ext_inc]
        if self.tables is not None:
            inputs += [self.starts, self.starts_f, self.piece_mul, self.piece_add]
        return inputs

    def step(self, parity: int, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        """One frame: expand the slots in table ``parity``, keep the best K in the other table;
        ``outputs``: the frame's slice of :attr:`order`."""
        ids, ext_lp, blank, ext_inc = inputs[:4]
        (order,) = outputs
        n, k, kt = self.n, self.k, self.kt
        fl, ints = self.fl[parity], self.ints[parity]
        fl_next, ints_next = self.fl[parity ^ 1], self.ints[parity ^ 1]
        pnb, pb = fl[_PNB, :, :k], fl[_PB, :, :k]
        last = ints[:, :k, _LAST]
        pnb_ext = fl[_PNB, :, k:].view(n, k, kt)  # rows of the extensions: [slot, token]

        # a strided output keeps every element on the scalar kernel, as it was before issue 32
        tot = torch.logaddexp(pb, pnb, out=self.tot[..., 1])
        is_last = ids.unsqueeze(1) == last.unsqueeze(2)  # (N, K, K') the token repeats the slot's last
        # [repeat -> pnb, else -inf] + lp  and  [repeat -> pb, else tot] + lp  (blank: -inf), into the
        # scratch plane and the extensions' pnb plane at once
        pair = fl[_PNB:_PB + 1, :, :k].permute(1, 2, 0).unsqueeze(2)  # (N, K, 1, 2): (pnb, pb)
        both = fl[_SCRATCH:_PNB + 1, :, k:].view(2, n, k, kt).permute(1, 2, 3, 0)  # (N, K, K', 2)
        torch.add(torch.where(is_last.unsqueeze(3), pair, self.tot.unsqueeze(2)), ext_lp.view(n, 1, kt, 1), out=both)
        stay_pnb = fl[_SCRATCH, :, k:].view(n, k, kt).amax(dim=2)  # pnb + lp(last): the repeat collapses
        torch.add(tot, blank, out=fl[_PB, :, :k])  # the stays' pb (after the last read of pb)

        # duplicates: extension (slot, token) == live slot k' whose parent is the slot and last is the token
        child = (ints[:, :k, None, :3] == ints[:, None, :k, _PD.start:_PD.start + 3]).all(dim=3)  # (N, K, K')
        child = child & (tot > float("-inf")).unsqueeze(1)
        same = child.unsqueeze(2) & is_last.transpose(1, 2).unsqueeze(1)  # (N, K, K', K)
        merged = torch.where(same, pnb_ext.unsqueeze(3), float("-inf")).amax(dim=(1, 2))
        fl[_PNB, :, :k].copy_(torch.logaddexp(stay_pnb, merged))  # computed contiguous, as before
        pnb_ext.masked_fill_(same.any(dim=3), float("-inf"))

        rank = torch.logaddexp(fl[_PB], fl[_PNB], out=self.rank)  # (N, K + K*K')
        if self.tables is not None:
            self._fuse(inputs, fl, ints, rank)
        # stable: equal scores keep candidate order (stays first, then extensions by slot, token rank)
        torch.sort(rank, dim=1, descending=True, stable=True, out=self.sorted)
        win = self.sorted[1][:, :k]

        # the extensions' prefix and parent fields (the slots' are theirs already), then the winners
        parent = ints[:, :k, None, None, _D].expand(n, k, 1, 2, 4)
        fields = torch.addcmul(ext_inc.unsqueeze(1), parent, self.ext_mul)
        torch.remainder(fields, self.ext_mod, out=ints[:, k:, :8].view(n, k, kt, 2, 4))
        torch.gather(ints, 1, win.unsqueeze(2).expand(n, k, ints.shape[2]), out=ints_next[:, :k])
        planes = fl.shape[0] - 1
        torch.gather(fl[1:], 2, win.unsqueeze(0).expand(planes, n, k), out=fl_next[1:, :, :k])
        order.copy_(win)

    def _fuse(self, inputs: list[torch.Tensor], fl: torch.Tensor, ints: torch.Tensor, rank: torch.Tensor) -> None:
        """The word LM's part of a frame: extends the slots' word states, looks up the spelled
        words and the slots' bigrams at once, completes the slots' words where an extension
        starts a new one, adds LM total and look-ahead to ``rank``."""
        starts, starts_f, piece_mul, piece_add = inputs[4:]
        n, k, kt = self.n, self.k, self.kt
        tb, dtype, keys = self.tables, rank.dtype, self.keys
        slots = ints[:, :k]
        ext = ints[:, k:].view(n, k, kt, ints.shape[2])
        # keys: the extensions' spelled words (hash key + KEY_OFFSET x unknown flag), the slots' bigrams
        spelling = torch.addcmul(piece_add.unsqueeze(1), slots[..., None, _WS], piece_mul.unsqueeze(1))
        torch.remainder(spelling, tb.modulus, out=ext[..., _WS])
        torch.addcmul(ext[..., _WS.start + 1], ext[..., _WS.start], self.key_mul[0], out=keys[..., :kt])
        keys[..., :kt].addcmul_(ext[..., _UNKNOWN], self.key_mul[1])
        torch.add(slots[..., _WORD], slots[..., _PREV], alpha=tb.num_words, out=keys[..., kt])
        rows = self.lookup_rows[torch.searchsorted(self.lookup_keys, keys)]  # (N, K, K' + 1, 3)
        found = rows[..., 0] == keys
        torch.where(found[..., :kt].unsqueeze(3), rows[..., :kt, 1:], self.spelled_default, out=ext[..., _WORD:_LOOK + 1])
        # what completing each slot's word adds (0 while nothing is spelled): lm_scale x bigram + bonus
        ub = tb.unigram_backoff[slots[..., _PREV:_WORD + 1]]  # (N, K, 2, 2): [previous, word] x (uni, bow)
        lp = torch.where(found[..., kt], bits_float(rows[..., kt, :], 1, dtype), ub[..., 0, 1] + ub[..., 1, 0])
        spelled = slots[..., _SPELLED] > 0
        add = torch.where(spelled, self.scale * lp + self.bonus, 0.0)
        # an extension by a word-starting token completes the slot's word: LM total and previous word
        torch.addcmul(fl[_LMTOT, :, :k].unsqueeze(2), starts_f.unsqueeze(1), add.unsqueeze(2),
                      out=fl[_LMTOT, :, k:].view(n, k, kt))
        completed = torch.where(spelled, slots[..., _WORD], slots[..., _PREV])
        torch.where(starts.unsqueeze(1), completed.unsqueeze(2), slots[..., _PREV].unsqueeze(2), out=ext[..., _PREV])
        rank += fl[_LMTOT]
        if tb.spelled_best is not None:  # + lm_scale x look-ahead, 0 while nothing is spelled
            rank.addcmul_(bits_float(ints, _LOOK, dtype), bits_float(ints, _SPELLED, dtype))

    def _end_score(self, slots: torch.Tensor) -> torch.Tensor:
        """What completing each slot's word and then ``</s>`` adds at the end of the utterance."""
        tb = self.tables
        spelled = slots[..., _SPELLED] > 0
        word, prev = slots[..., _WORD], slots[..., _PREV]
        end = torch.where(spelled, self.scale * tb.log_prob(word, prev) + self.bonus, 0.0)
        last = torch.where(spelled, word, prev)
        return end + self.scale * tb.log_prob(torch.full_like(last, tb.eos), last)

    # --- the n-best ------------------------------------------------------------------------------

    def result(self, parity: int) -> CtcNBest:
        """The n-best from the slots in table ``parity`` (where the last frame left them)."""
        k, kt, n = self.k, self.kt, self.n
        fl, ints = self.fl[parity], self.ints[parity]
        device = fl.device
        pb, pnb = fl[_PB, :, :k].contiguous(), fl[_PNB, :, :k].contiguous()
        scores = torch.logaddexp(pb, pnb)
        valid = scores > float("-inf")
        plen = torch.where(valid, ints[:, :k, _LEN], torch.zeros_like(ints[:, :k, _LEN]))
        order = self.order
        is_ext = order >= k
        parent = torch.where(is_ext, (order - k) // kt, order)
        token = torch.where(is_ext, self.ids.gather(2, ((order - k) % kt).clamp(min=0)), -1)
        tokens = torch.from_numpy(read_back(parent, token, plen)[0]).to(device)
        if self.tables is None:
            return CtcNBest(tokens=tokens, lens=plen, scores=scores, log_prob_blank=pb, log_prob_non_blank=pnb)
        final = fl[_LMTOT, :, :k] + self._end_score(ints[:, :k])
        order = torch.sort(torch.where(valid, scores + final, scores), dim=1, descending=True, stable=True).indices
        pb, pnb, scores, plen, final = (x.gather(1, order) for x in (pb, pnb, scores, plen, final))
        tokens = tokens.gather(1, order.unsqueeze(2).expand_as(tokens))
        return CtcNBest(tokens=tokens, lens=plen, scores=scores, log_prob_blank=pb, log_prob_non_blank=pnb,
                        search_lm_scores=final)
