"""Token <-> text conversion for icefall-style BPE models.

Two on-disk formats are supported and give the same ``decode`` result for the
same ids:

* ``bpe.model`` -- a sentencepiece model as written by icefall's
  ``train_bpe_model.py`` (``<blk>`` = 0 and ``<sos/eos>`` = 1 as user-defined
  symbols, ``<unk>`` = 2, optionally ``byte_fallback`` pieces ``<0x00>`` ..
  ``<0xFF>``).
* ``tokens.txt`` -- icefall's symbol table, one ``<symbol> <id>`` per line, as
  exported next to ONNX/sherpa models. Word boundaries are the U+2581 ("▁")
  prefix of pieces; ``<0xNN>`` pieces are raw UTF-8 bytes.

Decoding rules (identical to sentencepiece's ``decode`` for such models):
blank and sos/eos ids are dropped, ``<unk>`` becomes ``" ⁇ "``, byte pieces
are joined as raw bytes and decoded as UTF-8 (each invalid byte becomes
U+FFFD), "▁" becomes a space, and one leading "▁" of each piece is dropped
while nothing has been written yet (so the text has no leading space).

Encoding with ``bpe.model`` is sentencepiece's own. Encoding with only a
``tokens.txt`` uses a *greedy longest-match* over the symbol table (after
NFKC normalisation and whitespace collapsing, as sentencepiece's default
normaliser does); the segmentation may differ from sentencepiece's BPE merges
but decodes back to the same normalised text. Characters no piece covers
are encoded as byte pieces when the table has all 256 of them, else as
``<unk>``.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

__all__ = ["Tokenizer", "WORD_BOUNDARY", "BLANK_SYMBOL", "SOS_EOS_SYMBOL", "UNK_SYMBOL"]

WORD_BOUNDARY = "\u2581"
BLANK_SYMBOL = "<blk>"
SOS_EOS_SYMBOL = "<sos/eos>"
UNK_SYMBOL = "<unk>"
#: What sentencepiece writes for an ``<unk>`` id.
UNK_SURFACE = " \u2047 "

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_DISAMBIG = re.compile(r"^#\d+$")
_ERRORS = "zipscribe-replace-per-byte"


def _replace_one_byte(err: UnicodeError) -> tuple[str, int]:
    """Codec error handler: replace only the first offending byte with U+FFFD.

    Python's built-in ``"replace"`` collapses a truncated multi-byte sequence
    into one U+FFFD; sentencepiece emits one U+FFFD per invalid byte.
    """
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return "\ufffd", err.start + 1


codecs.register_error(_ERRORS, _replace_one_byte)

PathLike = Union[str, Path]


class Tokenizer:
    """Maps between text and token ids of an icefall BPE model.

    Build with :meth:`from_file` or :meth:`from_dir`; do not call the
    constructor directly unless you have a piece list at hand.

    Args:
        pieces: ``pieces[i]`` is the symbol of id ``i`` (every id in
            ``range(len(pieces))`` must be present).
        sp: a loaded ``sentencepiece.SentencePieceProcessor`` for the same
            vocabulary, or ``None`` to use the table-based encoder/decoder.
        extra_symbols: symbols with ids past the vocabulary (e.g. ``#0``
            disambiguation symbols in a ``tokens.txt``); they are known to
            :meth:`piece_to_id` but never produced or decoded.
    """

    def __init__(
        self,
        pieces: Sequence[str],
        sp: Optional[object] = None,
        extra_symbols: Optional[dict[str, int]] = None,
    ) -> None:
        if not pieces:
            raise ValueError("empty vocabulary")
        self._pieces: list[str] = list(pieces)
        self._sp = sp
        self._extra: dict[str, int] = dict(extra_symbols or {})
        self._piece_to_id: dict[str, int] = {}
        for i, p in enumerate(self._pieces):
            self._piece_to_id.setdefault(p, i)

        self.blank_id: int = self._piece_to_id.get(BLANK_SYMBOL, 0)
        """Id of ``<blk>`` (0 in icefall models)."""
        self.sos_id: int = self._piece_to_id.get(SOS_EOS_SYMBOL, 1)
        """Id of ``<sos/eos>`` (1 in icefall models)."""
        self.eos_id: int = self.sos_id
        """Same as :attr:`sos_id`: icefall shares one ``<sos/eos>`` symbol."""
        self.unk_id: Optional[int] = self._piece_to_id.get(UNK_SYMBOL)
        """Id of ``<unk>``, or ``None`` if the vocabulary has none."""

        self._bytes: dict[int, int] = {}  # id -> byte value
        for i, p in enumerate(self._pieces):
            m = _BYTE_PIECE.match(p)
            if m:
                self._bytes[i] = int(m.group(1), 16)
        self._byte_to_id: dict[int, int] = {b: i for i, b in self._bytes.items()}
        self._dropped: frozenset[int] = frozenset({self.blank_id, self.sos_id})

        # Pieces the greedy encoder may emit: everything but specials/bytes.
        specials = {BLANK_SYMBOL, SOS_EOS_SYMBOL, UNK_SYMBOL}
        self._matchable: dict[str, int] = {
            p: i
            for p, i in self._piece_to_id.items()
            if p not in specials and i not in self._bytes and p
        }
        self._max_piece_len: int = max((len(p) for p in self._matchable), default=1)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_file(cls, path: PathLike) -> "Tokenizer":
        """Load a ``*.txt`` symbol table or (any other name) a sentencepiece model.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a valid model / symbol table.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        if path.suffix == ".txt":
            return cls._from_tokens_txt(path)
        return cls._from_sentencepiece(path)

    @classmethod
    def from_dir(cls, directory: PathLike) -> "Tokenizer":
        """Load ``bpe.model`` from ``directory``, else its ``tokens.txt``.

        Raises:
            FileNotFoundError: neither file exists in ``directory``.
        """
        directory = Path(directory)
        for name in ("bpe.model", "tokens.txt"):
            candidate = directory / name
            if candidate.is_file():
                return cls.from_file(candidate)
        raise FileNotFoundError(
            f"no tokenizer in {directory}: expected 'bpe.model' (sentencepiece) "
            f"or 'tokens.txt' (icefall symbol table)"
        )

    @classmethod
    def _from_sentencepiece(cls, path: Path) -> "Tokenizer":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path} is not a sentencepiece model: {e}") from e
        pieces = [sp.IdToPiece(i) for i in range(sp.GetPieceSize())]
        return cls(pieces, sp=sp)

    @classmethod
    def _from_tokens_txt(cls, path: Path) -> "Tokenizer":
        table: dict[int, str] = {}
        extra: dict[str, int] = {}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.rsplit(maxsplit=1)
                if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                    raise ValueError(f"{path}:{lineno}: expected '<symbol> <id>', got {line!r}")
                symbol, idx = fields[0], int(fields[1])
                if _DISAMBIG.match(symbol):
                    extra[symbol] = idx
                    continue
                if idx in table:
                    raise ValueError(f"{path}:{lineno}: id {idx} given twice")
                table[idx] = symbol
        if not table:
            raise ValueError(f"{path}: no symbols")
        size = max(table) + 1
        missing = [i for i in range(size) if i not in table]
        if missing:
            raise ValueError(f"{path}: ids {missing[:10]} missing from the symbol table")
        return cls([table[i] for i in range(size)], extra_symbols=extra)

    # ------------------------------------------------------------------ export
    def write_tokens_txt(self, path: PathLike) -> None:
        """Write the vocabulary as an icefall ``tokens.txt`` (``<symbol> <id>``)."""
        with open(path, "w", encoding="utf-8") as f:
            for i, p in enumerate(self._pieces):
                f.write(f"{p} {i}\n")
            for p, i in sorted(self._extra.items(), key=lambda kv: kv[1]):
                f.write(f"{p} {i}\n")

    # ------------------------------------------------------------------ lookup
    @property
    def vocab_size(self) -> int:
        """Number of token ids (the model's output dimension)."""
        return len(self._pieces)

    @property
    def is_sentencepiece(self) -> bool:
        """True when backed by a sentencepiece model (``bpe.model``)."""
        return self._sp is not None

    def id_to_piece(self, token_id: int) -> str:
        """Symbol of ``token_id``; ``IndexError`` if out of range."""
        self._check_id(token_id)
        return self._pieces[token_id]

    @property
    def disambiguation_symbols(self) -> dict[str, int]:
        """``#0``-style symbols of a ``tokens.txt`` (ids past the vocabulary; never model outputs)."""
        return dict(self._extra)

    def __contains__(self, piece: object) -> bool:
        """Whether ``piece`` is a symbol of the vocabulary (disambiguation symbols excluded)."""
        return piece in self._piece_to_id

    def piece_to_id(self, piece: str) -> int:
        """Id of ``piece``; ``KeyError`` if the vocabulary lacks it."""
        if piece in self._piece_to_id:
            return self._piece_to_id[piece]
        if piece in self._extra:
            return self._extra[piece]
        raise KeyError(f"piece {piece!r} not in vocabulary")

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < len(self._pieces):
            raise IndexError(f"token id {token_id} out of range [0, {len(self._pieces)})")

    # ------------------------------------------------------------------ encode
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no blank/sos/eos added)."""
        if self._sp is not None:
            return list(self._sp.EncodeAsIds(text))
        return self._greedy_encode(text)

    def _greedy_encode(self, text: str) -> list[int]:
        words = unicodedata.normalize("NFKC", text).split()
        if not words:
            return []
        s = WORD_BOUNDARY + WORD_BOUNDARY.join(words)
        has_bytes = len(self._byte_to_id) == 256
        ids: list[int] = []
        pos = 0
        while pos < len(s):
            for length in range(min(self._max_piece_len, len(s) - pos), 0, -1):
                token_id = self._matchable.get(s[pos : pos + length])
                if token_id is not None:
                    ids.append(token_id)
                    pos += length
                    break
            else:
                ch = s[pos]
                if has_bytes:
                    ids.extend(self._byte_to_id[b] for b in ch.encode("utf-8"))
                elif self.unk_id is not None:
                    ids.append(self.unk_id)
                else:
                    raise ValueError(f"cannot encode {ch!r}: no piece, no byte pieces, no <unk>")
                pos += 1
        return ids

    # ------------------------------------------------------------------ decode
    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; blank and sos/eos ids are dropped.

        Raises:
            IndexError: an id is outside ``[0, vocab_size)``.
        """
        kept: list[int] = []
        for i in ids:
            i = int(i)
            self._check_id(i)
            if i not in self._dropped:
                kept.append(i)
        if self._sp is not None:
            return self._sp.DecodeIds(kept)
        return self._table_decode(kept)

    def decode_many(self, sequences: Iterable[Iterable[int]]) -> list[str]:
        """:meth:`decode` of each sequence (the same texts), with one range check over all ids
        and, for a sentencepiece model, one call for all sequences.

        Raises:
            IndexError: an id is outside ``[0, vocab_size)``.
        """
        seqs = [[int(i) for i in ids] for ids in sequences]
        flat = [i for ids in seqs for i in ids]
        if flat and not (0 <= min(flat) and max(flat) < len(self._pieces)):
            self._check_id(next(i for i in flat if not 0 <= i < len(self._pieces)))
        dropped = self._dropped
        kept = [[i for i in ids if i not in dropped] for ids in seqs] if dropped else seqs
        if self._sp is not None:
            return list(self._sp.DecodeIds(kept)) if kept else []
        return [self._table_decode(ids) for ids in kept]

    def _table_decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        at_start = True  # sentencepiece drops one leading "▁" per piece until text appears
        for i in ids:
            if i in self._bytes:
                out.append(self._bytes[i])
            elif i == self.unk_id:
                out += UNK_SURFACE.encode("utf-8")
            else:
                piece = self._pieces[i]
                if at_start and piece.startswith(WORD_BOUNDARY):
                    piece = piece[1:]
                out += piece.replace(WORD_BOUNDARY, " ").encode("utf-8")
            if out:
                at_start = False
        return out.decode("utf-8", errors=_ERRORS)

    def __repr__(self) -> str:
        kind = "sentencepiece" if self._sp is not None else "tokens.txt"
        return f"Tokenizer({kind}, vocab_size={self.vocab_size})"


def train_bpe(texts: Iterable[str], out_dir: Union[str, Path], vocab_size: int, hard_vocab_limit: bool = True) -> Path:
    """Train a sentencepiece BPE model the way icefall does and write ``out_dir/bpe.model``.

    ``<blk>`` = 0 and ``<sos/eos>`` = 1 are user-defined symbols, ``<unk>`` = 2, no
    bos/eos pieces, full character coverage. ``hard_vocab_limit=False`` lets a tiny
    corpus produce fewer pieces than asked for (tests).
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "bpe-train-text.txt"
    corpus.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    try:
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(out_dir / "bpe"), model_type="bpe", vocab_size=vocab_size,
            user_defined_symbols=["<blk>", "<sos/eos>"], unk_id=2, bos_id=-1, eos_id=-1, character_coverage=1.0,
            hard_vocab_limit=hard_vocab_limit, input_sentence_size=100_000_000, minloglevel=2,
        )
    finally:
        corpus.unlink(missing_ok=True)
        (out_dir / "bpe.vocab").unlink(missing_ok=True)
    return out_dir / "bpe.model"
