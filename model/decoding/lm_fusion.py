"""A word bigram in tensors, for shallow fusion inside the CTC prefix beam search.

N-best rescoring can only choose among what the search kept. With a :class:`SearchLM`,
:func:`model.decoding.ctc_prefix_beam_search` ranks its prefixes by

    CTC log-prob + scale * (word-LM log-prob of the completed words) + bonus * (completed words)
                 + scale * (look-ahead of the word being spelled)

so hypotheses the LM finds likely survive pruning. The look-ahead is the best unigram
log-probability of an LM word that begins with the characters spelled so far (``<unk>``'s when
none does): a prefix spelling a non-word ("tomorw") loses rank while it is spelled, not only
once the next word starts, and a prefix that can still become a likely word is not pruned for
being unfinished. It is replaced by the word's real score when the word is completed. The n-best's ``scores`` stay the CTC
log-probabilities: rescoring adds the LM (and the attention decoder) on top as before.

How words are followed without strings: each prefix carries the previous word's LM index and a
polynomial hash of the characters of the word it is spelling (the reference methods of
:class:`SearchLM` use two hashes modulo primes; the search one 64-bit hash, :class:`SearchTables`).
A token whose piece starts with U+2581 ("▁") completes that word: its hash is looked up among the
LM's words (``searchsorted`` over their sorted hashes), and ``log P(word | previous word)`` is
read from the sorted bigram keys, backing off to ``bow(previous) + log P(word)`` as ARPA does.
The hash is over characters, not pieces, so every segmentation of a word finds it. A word the LM
does not list, or one with an ``<unk>`` or byte piece in it, is scored as ``<unk>`` (the text
writes ``<unk>`` as a word of its own, " ⁇ ", so rescoring's LM may count such a hypothesis's
words differently; the search only uses the score to rank). At the end of
the utterance the word being spelled is completed and ``</s>`` is scored.

Only the model's unigrams and bigrams are used: exact for a bigram LM, the bigram part of a
higher-order one (rescoring still uses the whole LM). Everything is batched tensor arithmetic:
``searchsorted`` lookups per candidate and frame, whatever the vocabulary. The prefix table holds
every prefix of every LM word (about 100,000 keys for the demo's 25,000 words).

What the search reads per frame is :class:`SearchTables` (:meth:`SearchLM.tables`), built once
per device and dtype and kept: two sorted key rows -- the 64-bit hashes of the words and their
prefixes, the bigram keys -- searched by one batched ``searchsorted``, whose rows (the spelled
word's LM index, look-ahead and unigram; a bigram's log-prob or its back-off) are read by one
gather, with default rows between the keys so that nothing needs comparing afterwards; and
per-piece multipliers and increments that extend a word's hash by one piece in one multiply-add.
A :class:`model.recognizer.Recognizer` moves its SearchLM to its device once, at load.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

__all__ = ["SearchLM", "SearchTables"]

_P1, _B1 = 2147483647, 131
_P2, _B2 = 1000000007, 257
_LN10 = math.log(10.0)
_SPACE = "\u2581"


def _prefix_hashes(text: str) -> list[tuple[int, int]]:
    """(h1, h2) of each of ``text``'s prefixes, shortest first (the last is ``text``'s)."""
    h1 = h2 = 0
    out = []
    for ch in text:
        c = ord(ch) + 1
        h1 = (h1 * _B1 + c) % _P1
        h2 = (h2 * _B2 + c) % _P2
        out.append((h1, h2))
    return out


def _char_hash(text: str) -> tuple[int, int, int, int]:
    """(h1, h2, B1^len mod P1, B2^len mod P2) of ``text``'s characters."""
    h1, h2 = _prefix_hashes(text)[-1] if text else (0, 0)
    return h1, h2, pow(_B1, len(text), _P1), pow(_B2, len(text), _P2)


#: the search's character hash: ``h -> h * _BW + ord(ch) + 1`` modulo 2**64 (int64 arithmetic
#: that wraps), one int64 per string, so that extending a word by a piece is one multiply-add
_BW = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1


def _signed64(x: int) -> int:
    """``x`` modulo 2**64 as a signed int64 value."""
    x &= _M64
    return x - (1 << 64) if x >> 63 else x


def _prefix_hashes64(text: str) -> list[int]:
    """The 64-bit character hash of each of ``text``'s prefixes, shortest first."""
    h, out = 0, []
    for ch in text:
        h = (h * _BW + ord(ch) + 1) & _M64
        out.append(_signed64(h))
    return out


def _key(h1, h2):
    """One sortable int64 key of a (hash1, hash2) pair (ints or tensors)."""
    return h1 * _P2 + h2


def _find(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor, default: torch.Tensor) -> torch.Tensor:
    """``values`` at the positions of ``query`` in the sorted ``keys``; ``default`` (broadcast)
    where a query is not listed, and everywhere when the table is empty."""
    if keys.numel() == 0:
        return default.expand(query.shape) if default.dim() == 0 else default
    pos = torch.searchsorted(keys, query.contiguous()).clamp(max=keys.numel() - 1)
    return torch.where(keys[pos] == query, values[pos], default)


@dataclass
class SearchLM:
    """A word bigram over a tokenizer's pieces, as tensors (:meth:`build`)."""

    #: (V,) the piece starts a word (its symbol begins with "▁")
    starts_word: torch.Tensor
    #: (V, 2) hash of the piece's characters (without the "▁"), and (V, 2) base^length
    piece_hash: torch.Tensor
    piece_pow: torch.Tensor
    #: (V,) characters in the piece; (V,) the piece makes its word unknown (<unk>, bytes, specials)
    piece_len: torch.Tensor
    piece_unknown: torch.Tensor
    #: (W,) sorted ``h1 * P2 + h2`` of the LM's words, and each one's word index
    word_keys: torch.Tensor
    word_index: torch.Tensor
    #: (W + 1,) natural-log unigram probability and back-off weight by word index
    unigram: torch.Tensor
    backoff: torch.Tensor
    #: (B,) sorted ``previous * (W + 1) + word`` of the listed bigrams, and their log-probs
    bigram_keys: torch.Tensor
    bigram: torch.Tensor
    bos: int
    eos: int
    unk: int
    #: (2,) the hashes' moduli, on the tables' device
    moduli: torch.Tensor
    #: (P,) sorted hash keys of every prefix of the LM's words, and (P,) the best unigram
    #: log-prob of a word with that prefix (the look-ahead of a word being spelled); None: off
    prefix_keys: Optional[torch.Tensor] = None
    prefix_best: Optional[torch.Tensor] = None
    #: the same words and prefixes under one 64-bit character hash (what the search reads,
    #: :class:`SearchTables`): (S,) sorted distinct hashes of every LM word and (with the
    #: look-ahead) every prefix of one, (S,) the word index of each (``unk`` for a prefix that is
    #: no word), (S,) the look-ahead of each (None without the prefix table)
    spell_keys: Optional[torch.Tensor] = None
    spell_word: Optional[torch.Tensor] = None
    spell_best: Optional[torch.Tensor] = None
    #: (V,) each piece's 64-bit character hash and ``_BW ** characters`` (modulo 2**64)
    piece_hash64: Optional[torch.Tensor] = None
    piece_pow64: Optional[torch.Tensor] = None
    #: SearchTables built so far, by (device, dtype) (:meth:`tables`)
    _tables: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, lm, pieces: Sequence[str], special_ids: Sequence[int] = (), lookahead: bool = True) -> "SearchLM":
        """From a :class:`model.word_lm.WordLM` and the tokenizer's piece symbols
        (``pieces[i]`` = symbol of id i). ``special_ids`` (blank, sos/eos, unk) never spell
        a word. ``lookahead``: build the prefix table (False: words are scored only once
        completed; for comparisons)."""
        words = sorted(w for (w,) in lm.probs[1])
        index = {w: i for i, w in enumerate(words)}
        n_words = len(words)
        unk = index.get("<unk>", n_words)  # index n_words: an <unk> the file does not list
        uni = [0.0] * (n_words + 1)
        bow = [0.0] * (n_words + 1)
        uni[n_words] = lm.unk_log10 * _LN10
        for w, i in index.items():
            uni[i] = lm.probs[1][(w,)] * _LN10
            bow[i] = lm.bows.get(1, {}).get((w,), 0.0) * _LN10
        keys = []
        best: dict[int, float] = {}  # the look-ahead: each prefix's best word
        for w in words:
            prefixes = [_key(*h) for h in _prefix_hashes(w)]
            keys.append((prefixes[-1], index[w]))
            if lookahead and not (w.startswith("<") and w.endswith(">")):
                for k in prefixes:
                    best[k] = max(best.get(k, -math.inf), uni[index[w]])
        keys.sort()
        prefix = sorted(best.items())
        spelled: dict[int, list] = {}  # 64-bit hash -> [word index, look-ahead]
        for w in words:
            prefixes = _prefix_hashes64(w)
            spelled.setdefault(prefixes[-1], [unk, None])[0] = index[w]
            if lookahead and not (w.startswith("<") and w.endswith(">")):
                for k in prefixes:
                    entry = spelled.setdefault(k, [unk, None])
                    entry[1] = uni[index[w]] if entry[1] is None else max(entry[1], uni[index[w]])
        spell = sorted(spelled.items())
        bigrams = sorted(((index[a] * (n_words + 1) + index[b]), p * _LN10)
                         for (a, b), p in lm.probs.get(2, {}).items() if a in index and b in index)
        special = set(special_ids)
        hashes, pows, lens, starts, unknown, hashes64, pows64 = [], [], [], [], [], [], []
        for i, p in enumerate(pieces):
            start = p.startswith(_SPACE)
            text = p[1:] if start else p
            bad = i in special or (p.startswith("<") and p.endswith(">"))
            h1, h2, q1, q2 = _char_hash("" if bad else text)
            spelt = _prefix_hashes64("" if bad else text)
            hashes64.append(spelt[-1] if spelt else 0)
            pows64.append(_signed64(pow(_BW, len(spelt), 1 << 64)))
            hashes.append((h1, h2))
            pows.append((q1, q2))
            lens.append(0 if bad else len(text))
            starts.append(start)
            unknown.append(bad)
        long = torch.long
        return cls(
            starts_word=torch.tensor(starts, dtype=torch.bool),
            piece_hash=torch.tensor(hashes, dtype=long),
            piece_pow=torch.tensor(pows, dtype=long),
            piece_len=torch.tensor(lens, dtype=long),
            piece_unknown=torch.tensor(unknown, dtype=torch.bool),
            word_keys=torch.tensor([k for k, _ in keys], dtype=long),
            word_index=torch.tensor([i for _, i in keys], dtype=long),
            unigram=torch.tensor(uni, dtype=torch.float32),
            backoff=torch.tensor(bow, dtype=torch.float32),
            bigram_keys=torch.tensor([k for k, _ in bigrams], dtype=long),
            bigram=torch.tensor([p for _, p in bigrams], dtype=torch.float32),
            bos=index.get("<s>", unk), eos=index.get("</s>", unk), unk=unk,
            moduli=torch.tensor([_P1, _P2], dtype=long),
            prefix_keys=torch.tensor([k for k, _ in prefix], dtype=long) if lookahead else None,
            prefix_best=torch.tensor([v for _, v in prefix], dtype=torch.float32) if lookahead else None,
            spell_keys=torch.tensor([k for k, _ in spell], dtype=long),
            spell_word=torch.tensor([v[0] for _, v in spell], dtype=long),
            spell_best=torch.tensor([uni[unk] if v[1] is None else v[1] for _, v in spell], dtype=torch.float32)
            if lookahead else None,
            piece_hash64=torch.tensor(hashes64, dtype=long),
            piece_pow64=torch.tensor(pows64, dtype=long),
        )

    @property
    def num_words(self) -> int:
        return self.unigram.shape[0]

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> "SearchLM":
        """This model with its tensors on ``device`` and its log-probs in ``dtype`` (itself when
        they already are)."""
        if self.word_keys.device == torch.device(device) and self.unigram.dtype == dtype:
            return self
        moved = {k: (v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                     if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items() if k != "_tables"}
        return SearchLM(**moved)

    def tables(self, device: torch.device, dtype: torch.dtype) -> "SearchTables":
        """The :class:`SearchTables` the fused search reads, on ``device`` with log-probs in
        ``dtype``: built on first use and kept (one build per device and dtype)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = (device, dtype)
        if key not in self._tables:
            self._tables[key] = SearchTables.build(self, key[0], dtype)
        return self._tables[key]

    def lookup(self, h: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
        """Word index of character hashes ``h`` (..., 2); ``unk`` where not listed or ``unknown``."""
        key = _key(h[..., 0], h[..., 1])
        return torch.where(unknown, self.unk, _find(self.word_keys, self.word_index, key, torch.full_like(key, self.unk)))

    def log_prob(self, word: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Natural-log ``P(word | previous)`` (same shapes), backing off to the unigram."""
        base = self.backoff[previous] + self.unigram[word]
        return _find(self.bigram_keys, self.bigram, previous * self.num_words + word, base)

    def look_ahead(self, h: torch.Tensor, chars: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
        """Best unigram log-prob of an LM word that starts with the characters hashed in ``h``
        (..., 2); 0 where nothing is spelled, ``<unk>``'s where no word starts so."""
        unk = self.unigram[self.unk]
        la = torch.where(unknown, unk, _find(self.prefix_keys, self.prefix_best, _key(h[..., 0], h[..., 1]), unk))
        return torch.where(chars > 0, la, torch.zeros((), dtype=la.dtype))

    def extend_hash(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Hashes ``h`` (..., 2) of words followed by the characters of ``tokens`` (...)."""
        return (h * self.piece_pow[tokens] + self.piece_hash[tokens]) % self.moduli


_INT64_MAX = (1 << 63) - 1
#: the character hash a piece that makes its word unknown (<unk>, bytes, specials) leaves: the
#: word's hash starts over from it, so such a word is never found among the LM's words (the
#: lookup gives the default: ``<unk>``, and ``<unk>``'s look-ahead); SearchTables.build makes
#: sure that no LM word or prefix has it
_POISON = _signed64(0x5851F42D4C957F2D)


def float_bits(values: torch.Tensor) -> torch.Tensor:
    """int64 tensor holding each float's bit pattern in its low bytes, so that floats travel in
    int64 tables; read back with :func:`float_view`."""
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
        raise RuntimeError("float_bits assumes a little-endian machine")
    out = torch.zeros((*values.shape, 1), dtype=torch.int64, device=values.device)
    out.view(values.dtype)[..., 0] = values
    return out[..., 0]


def float_view(ints: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The floats :func:`float_bits` stored in the int64 tensor ``ints`` (whose last dimension
    is contiguous), as a view: writing to it writes the bits."""
    per = 64 // torch.finfo(dtype).bits
    return ints.view(dtype)[..., ::per]


def bool_view(ints: torch.Tensor) -> torch.Tensor:
    """The int64 tensor ``ints`` (values 0 and 1, last dimension contiguous) as a bool view."""
    return ints.view(torch.bool)[..., ::8]


@dataclass
class SearchTables:
    """A :class:`SearchLM` as the fused prefix search reads it, on one device, log-probs in one dtype.

    A word being spelled is one 64-bit character hash (:attr:`SearchLM.spell_keys`), extended by a
    piece with one multiply-add: ``hash * piece_multiplier + piece_increment`` (int64 arithmetic,
    which wraps: the hash is modulo 2**64). A frame of the search looks up, in one batched
    ``searchsorted`` over two sorted key rows (:meth:`lookup`) and one gather of their rows, the
    word every candidate is spelling (its LM index, look-ahead and unigram) and the bigram of
    every candidate's word after its previous word. Neither lookup compares what it found: every
    key that is not listed falls on a row that says what the search needs for it:

    * spelled words: after each listed hash ``h`` comes a default row at ``h + 1`` (``<unk>``,
      its look-ahead and unigram), and one before all, so ``searchsorted(right=True)`` (the last
      key <= the query) lands on the word's row or on a default;
    * bigrams, keys ``previous * num_words + word``: a row ``(bow(previous), 1)`` at
      ``previous * num_words`` for every word and after each listed bigram, ``(log P, 0)`` for a
      listed one, so ``a + b * unigram(word)`` is the ARPA back-off ``bow + log P(word)`` or the
      listed log-prob, bit for bit (log-probs must be finite).

    The defaults and the padding of the shorter half cost memory: the lookup table is
    2 x 4 x max(2 x spelled keys, words + 2 x bigrams) int64 (9.6 MB for the demo's LM, about
    twice the single table it replaced), per scale.
    """

    #: (num_words,) natural-log unigram log-probs by word index
    unigram: torch.Tensor
    #: the spelled half: sorted keys (listed hashes and their default sentinels), each key's word
    #: index and look-ahead (None without the prefix table)
    spelled_keys: torch.Tensor
    spelled_word: torch.Tensor
    spelled_best: Optional[torch.Tensor]
    #: the bigram half: sorted keys and (B, 2) rows ``(a, b)``
    bigram_keys: torch.Tensor
    bigram_ab: torch.Tensor
    #: (V,) per piece: the multiplier and increment of the character hash (multiplier 0 where
    #: the piece starts a word or makes it unknown), the piece starts a word, it spells characters
    piece_multiplier: torch.Tensor
    piece_increment: torch.Tensor
    starts_word: torch.Tensor
    spells: torch.Tensor
    num_words: int
    bos: int
    eos: int
    unk: int
    #: lookup tables by scale
    _lookups: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def lookahead(self) -> bool:
        """The tables have the look-ahead (the LM was built with its prefix table)."""
        return self.spelled_best is not None

    @classmethod
    def build(cls, lm: SearchLM, device: torch.device, dtype: torch.dtype) -> "SearchTables":
        fz = lm.to(device, dtype)
        if not (torch.isfinite(fz.unigram).all() and torch.isfinite(fz.backoff).all() and torch.isfinite(fz.bigram).all()):
            raise ValueError("the word LM's log-probs must be finite for the fused search")
        long = dict(dtype=torch.long, device=device)
        nw = fz.num_words
        unk_best = fz.unigram[fz.unk]
        # spelled: the listed hashes and a default sentinel after each (where that is no key)
        keys, word = fz.spell_keys, fz.spell_word
        best = fz.spell_best
        after = keys + 1
        free = ~torch.isin(after, keys) & (keys != _INT64_MAX)
        s_keys = torch.cat([keys, after[free]])
        s_word = torch.cat([word, torch.full((int(free.sum()),), fz.unk, **long)])
        if best is not None:
            best = torch.cat([best, unk_best.expand(int(free.sum()))])
        order = torch.sort(s_keys, stable=True).indices
        s_keys, s_word = s_keys[order], s_word[order]
        best = best[order] if best is not None else None
        # bigrams: a back-off row per previous word and after each listed bigram, the listed rows
        listed = fz.bigram_keys
        prev_of = listed // nw
        nxt = listed + 1
        sentinel = (listed % nw + 1 < nw) & ~torch.isin(nxt, listed)
        words = torch.arange(nw, **long)
        b_keys = torch.cat([words * nw, nxt[sentinel], listed])
        ones = torch.ones((), dtype=dtype, device=device)
        b_ab = torch.cat([torch.stack([fz.backoff, ones.expand(nw)], 1),
                          torch.stack([fz.backoff[prev_of[sentinel]], ones.expand(int(sentinel.sum()))], 1),
                          torch.stack([fz.bigram, torch.zeros_like(fz.bigram)], 1)])
        order = torch.sort(b_keys, stable=True).indices  # equal keys: the back-off row before the listed one
        starts, unknown = fz.starts_word, fz.piece_unknown
        poison = _POISON
        while bool(torch.isin(torch.tensor([poison], **long), keys)):  # pragma: no cover - 2**-64
            poison = _signed64(poison * _BW + 1)
        return cls(
            unigram=fz.unigram,
            spelled_keys=s_keys, spelled_word=s_word, spelled_best=best,
            bigram_keys=b_keys[order], bigram_ab=b_ab[order],
            piece_multiplier=torch.where(starts | unknown, 0, fz.piece_pow64),
            piece_increment=torch.where(unknown, poison, fz.piece_hash64),
            starts_word=starts, spells=fz.piece_len > 0,
            num_words=nw, bos=fz.bos, eos=fz.eos, unk=fz.unk,
        )

    def lookup(self, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The lookup table for ``lm_scale`` ``scale`` (built once per scale): (2, L) sorted keys,
        the spelled half then the bigram half (padded with the largest int64), and (2, 3, L + 1)
        int64 rows, row ``i + 1`` for key ``i`` and row 0 for queries below every key (so that the
        row of a query is at ``searchsorted(keys, query, right=True)``): ``[word index, bits of
        scale * look-ahead, bits of the word's unigram]`` for the spelled half (look-ahead 0
        without the prefix table), ``[bits of a, bits of b, 0]`` for the bigram half."""
        if scale not in self._lookups:
            dtype, device = self.unigram.dtype, self.unigram.device
            zero = torch.zeros((), dtype=dtype, device=device)
            unk = torch.tensor([self.unk], device=device)
            best = self.spelled_best if self.lookahead else zero.expand(self.spelled_keys.shape)
            unk_best = self.unigram[self.unk] if self.lookahead else zero
            default = torch.stack([unk, float_bits(scale * unk_best.reshape(1)), float_bits(self.unigram[unk])])
            spelled = torch.stack([self.spelled_word, float_bits(scale * best), float_bits(self.unigram[self.spelled_word])])
            bigram = torch.stack([float_bits(self.bigram_ab[:, 0]), float_bits(self.bigram_ab[:, 1]),
                                  torch.zeros_like(self.bigram_keys)])
            length = max(self.spelled_keys.numel(), self.bigram_keys.numel())
            halves = []
            for keys, rows in ((self.spelled_keys, spelled), (self.bigram_keys, bigram)):
                pad = length - keys.numel()
                keys = torch.cat([keys, torch.full((pad,), _INT64_MAX, dtype=torch.long, device=device)])
                rows = torch.cat([default, rows, default.expand(3, pad)], 1)
                halves.append((keys, rows))
            self._lookups[scale] = (torch.stack([k for k, _ in halves]), torch.stack([r for _, r in halves]))
        return self._lookups[scale]

    def log_prob(self, word: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Natural-log ``P(word | previous)`` (same shapes), backing off to the unigram:
        :meth:`SearchLM.log_prob`'s values."""
        key = torch.add(word, previous, alpha=self.num_words)
        pos = torch.searchsorted(self.bigram_keys, key.contiguous(), right=True)
        ab = self.bigram_ab[(pos - 1).clamp(min=0)]
        return torch.addcmul(ab[..., 0], ab[..., 1], self.unigram[word])
