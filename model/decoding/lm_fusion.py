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
polynomial hash (two moduli) of the characters of the word it is spelling. A token whose piece
starts with U+2581 ("▁") completes that word: its hash is looked up among the LM's words
(``searchsorted`` over their sorted hashes), and ``log P(word | previous word)`` is read from
the sorted bigram keys, backing off to ``bow(previous) + log P(word)`` as ARPA does. The hash
is over characters, not pieces, so every segmentation of a word finds it. A word the LM does
not list, or one with an ``<unk>`` or byte piece in it, is scored as ``<unk>`` (the text writes
``<unk>`` as a word of its own, " ⁇ ", so rescoring's LM may count such a hypothesis's words
differently; the search only uses the score to rank). At the end of
the utterance the word being spelled is completed and ``</s>`` is scored.

Only the model's unigrams and bigrams are used: exact for a bigram LM, the bigram part of a
higher-order one (rescoring still uses the whole LM). Everything is batched tensor arithmetic:
``searchsorted`` lookups per candidate and frame, whatever the vocabulary. The prefix table holds
every prefix of every LM word (about 100,000 keys for the demo's 25,000 words).

What the search reads per frame is :class:`SearchTables` (:meth:`SearchLM.tables`), built once
per device and dtype and kept: the word and prefix tables merged into one sorted table whose
rows give a spelled word's LM index and look-ahead together (one lookup per new candidate; the
kept prefixes carry theirs), keys and values side by side in one int64 row (floats as their bit
patterns) so that a lookup is one ``searchsorted`` and one row gather, and per-piece multipliers
and increments that extend a word's state by one piece in one ``addcmul`` and one ``remainder``.
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
        bigrams = sorted(((index[a] * (n_words + 1) + index[b]), p * _LN10)
                         for (a, b), p in lm.probs.get(2, {}).items() if a in index and b in index)
        special = set(special_ids)
        hashes, pows, lens, starts, unknown = [], [], [], [], []
        for i, p in enumerate(pieces):
            start = p.startswith(_SPACE)
            text = p[1:] if start else p
            bad = i in special or (p.startswith("<") and p.endswith(">"))
            h1, h2, q1, q2 = _char_hash("" if bad else text)
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


#: keys of SearchTables' lookup table: bigram keys ``previous * num_words + word`` (< 2**61); the
#: key ``hash1 * P2 + hash2`` of a spelled word (< KEY_OFFSET = P1 * P2) plus KEY_OFFSET, or plus
#: 2 * KEY_OFFSET for a word with an unknown piece (never listed: the lookup finds nothing); a
#: sentinel after all of them
KEY_OFFSET = _P1 * _P2
_SENTINEL = (1 << 63) - 1
_BIG = 1 << 62  # the modulus of the state fields that do not wrap (the flags)


def float_bits(values: torch.Tensor) -> torch.Tensor:
    """int64 tensor holding each float's bit pattern in its low bytes, so that floats travel in
    int64 table rows; read back with :func:`bits_float`."""
    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
        raise RuntimeError("float_bits assumes a little-endian machine")
    per = 8 // values.element_size()
    out = torch.zeros((*values.shape, 1), dtype=torch.int64, device=values.device)
    out.view(values.dtype)[..., 0] = values
    return out[..., 0]


def bits_float(rows: torch.Tensor, column: int, dtype: torch.dtype) -> torch.Tensor:
    """The floats :func:`float_bits` stored in ``rows[..., column]`` (int64 rows whose last
    dimension is contiguous): a view, no copy."""
    per = 64 // torch.finfo(dtype).bits
    return rows.view(dtype)[..., column * per]


@dataclass
class SearchTables:
    """A :class:`SearchLM` as the fused prefix search reads it, on one device, log-probs in one dtype.

    One frame of the search looks up, in one ``searchsorted`` and one row gather over one
    sorted table (:meth:`lookup`), the bigram of every kept prefix (its word, were it completed
    now, after the previous word) and the word being spelled by every extension (its LM index
    and look-ahead). A word's state ``(hash1, hash2, spelled, unknown)`` is extended by a piece
    in one ``addcmul`` and one ``remainder``: ``(state * multiplier + increment) % modulus``
    with the piece's multiplier and increment (:attr:`piece_multiplier`).
    """

    #: (num_words, 2) ``[unigram, back-off]`` natural-log, by word index
    unigram_backoff: torch.Tensor
    #: (B,) sorted bigram keys and (B,) their log-probs
    bigram_keys: torch.Tensor
    bigram: torch.Tensor
    #: (R,) sorted keys (without offset) of every LM word and every prefix of one; (R,) the word
    #: index of each (``unk`` for a prefix that is no word); (R,) the look-ahead of each (the best
    #: unigram of a word with that prefix; ``<unk>``'s for a word that begins no other, e.g.
    #: ``<s>``) -- None without a prefix table
    spelled_keys: torch.Tensor
    spelled_word: torch.Tensor
    spelled_best: Optional[torch.Tensor]
    #: (V, 4) per piece. Hashes: a word-starting piece has multiplier 0 (the word starts afresh).
    #: ``spelled`` is 0 or the bits of 1.0 in the tables' dtype (some characters are spelled: a
    #: float flag, so that it multiplies the look-ahead as it is), ``unknown`` is 1 or 2 (2: the
    #: word has an unknown piece, the KEY_OFFSET multiple of its lookup key); each flag becomes
    #: ``starts ? f : flag or f`` for the piece's own flag ``f``
    piece_multiplier: torch.Tensor
    piece_increment: torch.Tensor
    modulus: torch.Tensor
    #: (V,) the piece starts a word
    starts_word: torch.Tensor
    num_words: int
    bos: int
    eos: int
    unk: int
    #: lookup tables by scale
    _lookups: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(cls, lm: SearchLM, device: torch.device, dtype: torch.dtype) -> "SearchTables":
        long = dict(dtype=torch.long, device=device)
        fz = lm.to(device, dtype)
        unk_best = fz.unigram[fz.unk]
        parts = [fz.word_keys] + ([fz.prefix_keys] if fz.prefix_keys is not None else [])
        keys = torch.unique(torch.cat(parts))  # sorted
        word = _find(fz.word_keys, fz.word_index, keys, torch.full_like(keys, fz.unk))
        best = None
        if fz.prefix_keys is not None:
            best = _find(fz.prefix_keys, fz.prefix_best, keys, unk_best.expand(keys.shape))
        starts = fz.starts_word.long()
        spells, unknown = (fz.piece_len > 0).long(), fz.piece_unknown.long()
        spell_mul, unknown_mul = (1 - starts) * (1 - spells), (1 - starts) * (1 - unknown)
        one_bits = float_bits(torch.ones((), dtype=dtype, device=device))
        return cls(
            unigram_backoff=torch.stack([fz.unigram, fz.backoff], 1),
            bigram_keys=fz.bigram_keys,
            bigram=fz.bigram,
            spelled_keys=keys,
            spelled_word=word,
            spelled_best=best,
            piece_multiplier=torch.stack([fz.piece_pow[:, 0] * (1 - starts), fz.piece_pow[:, 1] * (1 - starts),
                                          spell_mul, unknown_mul], 1),
            piece_increment=torch.stack([fz.piece_hash[:, 0], fz.piece_hash[:, 1], spells * one_bits,
                                         (1 - unknown_mul) * (1 + unknown)], 1),
            modulus=torch.tensor([_P1, _P2, _BIG, _BIG], **long),
            starts_word=fz.starts_word,
            num_words=fz.num_words,
            bos=fz.bos, eos=fz.eos, unk=fz.unk,
        )

    def lookup(self, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The lookup table for ``lm_scale`` ``scale`` (built once per scale): sorted (L,) keys;
        (L, 3) int64 rows, ``[key, bits of log P(word | previous), 0]`` for a bigram and
        ``[key, word index, bits of scale * look-ahead]`` for a spelled word; and the
        ``[word index, bits of scale * look-ahead]`` of a spelled word that is not listed."""
        if scale not in self._lookups:
            dtype = self.unigram_backoff.dtype
            keys = self.spelled_keys
            best = self.spelled_best if self.spelled_best is not None else torch.zeros(keys.shape, dtype=dtype, device=keys.device)
            unk_best = self.unigram_backoff[self.unk, 0] if self.spelled_best is not None else best.new_zeros(())
            bigrams = torch.stack([self.bigram_keys, float_bits(self.bigram), torch.zeros_like(self.bigram_keys)], 1)
            spelled = torch.stack([keys + KEY_OFFSET, self.spelled_word, float_bits(scale * best)], 1)
            sentinel = torch.tensor([[_SENTINEL, 0, 0]], dtype=torch.long, device=keys.device)
            rows = torch.cat([bigrams, spelled, sentinel])
            default = torch.stack([torch.tensor(self.unk, device=keys.device), float_bits(scale * unk_best)])
            self._lookups[scale] = rows[:, 0].contiguous(), rows, default
        return self._lookups[scale]

    def log_prob(self, word: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Natural-log ``P(word | previous)`` (same shapes, contiguous), backing off to the
        unigram: :meth:`SearchLM.log_prob`'s values."""
        keys, rows, _ = self.lookup(0.0)
        key = torch.add(word, previous, alpha=self.num_words)
        row = rows[torch.searchsorted(keys, key)]
        ub = self.unigram_backoff
        base = ub[previous, 1] + ub[word, 0]
        return torch.where(row[..., 0] == key, bits_float(row, 1, ub.dtype), base)
