"""Tests for model.tokenizer: bpe.model and tokens.txt give the same text."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

import sentencepiece as spm

from model.tokenizer import Tokenizer  # noqa: E402

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "how much wood would a woodchuck chuck if a woodchuck could chuck wood",
    "speech recognition with transducers and zipformer encoders",
    "a naive cafe in the city serves coffee and tea every morning",
    "peter piper picked a peck of pickled peppers",
    "batch transcription of many hours of audio on a small cluster",
    "we measure the word error rate of every model we ship",
]

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "speech recognition is fun",
    "zebras quietly vex jumping wizards",
    "hello world",
]

VOCAB_SIZE = 320  # 3 specials + 256 byte pieces + 61 learned pieces/characters


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train a tiny BPE model the way icefall's train_bpe_model.py does."""
    d = tmp_path_factory.mktemp("bpe")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 10) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(d / "bpe"),
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        user_defined_symbols=["<blk>", "<sos/eos>"],
        unk_id=2,
        bos_id=-1,
        eos_id=-1,
        byte_fallback=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    Tokenizer.from_file(d / "bpe.model").write_tokens_txt(d / "tokens.txt")
    return d


@pytest.fixture(scope="module")
def sp_tok(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(model_dir / "bpe.model")


@pytest.fixture(scope="module")
def txt_tok(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(model_dir / "tokens.txt")


def test_special_ids(sp_tok: Tokenizer, txt_tok: Tokenizer) -> None:
    for tok in (sp_tok, txt_tok):
        assert tok.blank_id == 0
        assert tok.sos_id == tok.eos_id == 1
        assert tok.unk_id == 2
        assert tok.vocab_size == VOCAB_SIZE
        assert tok.id_to_piece(0) == "<blk>"
        assert tok.id_to_piece(1) == "<sos/eos>"
        assert tok.id_to_piece(2) == "<unk>"
        assert tok.id_to_piece(3) == "<0x00>"
        assert tok.piece_to_id("<0xE6>") == 3 + 0xE6
    assert sp_tok.is_sentencepiece and not txt_tok.is_sentencepiece


def test_tokens_txt_format(model_dir: Path, sp_tok: Tokenizer) -> None:
    lines = (model_dir / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert lines[:3] == ["<blk> 0", "<sos/eos> 1", "<unk> 2"]
    assert len(lines) == VOCAB_SIZE
    for line in lines:
        piece, idx = line.split(" ")
        assert sp_tok.piece_to_id(piece) == int(idx)
    assert any(line.startswith("\u2581") for line in lines)


def test_same_pieces_both_formats(sp_tok: Tokenizer, txt_tok: Tokenizer) -> None:
    for i in range(sp_tok.vocab_size):
        assert sp_tok.id_to_piece(i) == txt_tok.id_to_piece(i)
        assert txt_tok.piece_to_id(txt_tok.id_to_piece(i)) == i


@pytest.mark.parametrize("text", SENTENCES)
def test_round_trip(sp_tok: Tokenizer, txt_tok: Tokenizer, text: str) -> None:
    ids = sp_tok.encode(text)
    assert ids and all(3 <= i < sp_tok.vocab_size for i in ids)
    assert sp_tok.decode(ids) == text
    assert txt_tok.decode(ids) == text
    # the greedy table encoder may segment differently but must round-trip
    assert txt_tok.decode(txt_tok.encode(text)) == text
    assert sp_tok.decode(txt_tok.encode(text)) == text


def test_whitespace_is_normalised(sp_tok: Tokenizer, txt_tok: Tokenizer) -> None:
    for tok in (sp_tok, txt_tok):
        assert tok.decode(tok.encode("  hello   world ")) == "hello world"
        assert tok.encode("") == []
        assert tok.decode([]) == ""


def test_byte_pieces_decode_utf8(sp_tok: Tokenizer, txt_tok: Tokenizer) -> None:
    text = "naïve café 日本"
    ids = sp_tok.encode(text)
    pieces = [sp_tok.id_to_piece(i) for i in ids]
    # "日" (e6 97 a5) is not in the training data: it must be split over byte pieces
    assert ["<0xE6>", "<0x97>", "<0xA5>"] == pieces[pieces.index("<0xE6>") :][:3]
    assert sp_tok.decode(ids) == text
    assert txt_tok.decode(ids) == text
    assert txt_tok.decode(txt_tok.encode(text)) == text
    # a lone byte piece spelled out by hand
    e_acute = [txt_tok.piece_to_id("<0xC3>"), txt_tok.piece_to_id("<0xA9>")]
    assert txt_tok.decode(e_acute) == "é"


def test_invalid_utf8_matches_sentencepiece(sp_tok: Tokenizer, txt_tok: Tokenizer) -> None:
    truncated = [sp_tok.piece_to_id("<0xE6>"), sp_tok.piece_to_id("<0x97>")]
    assert txt_tok.decode(truncated) == sp_tok.decode(truncated) == "\ufffd\ufffd"


def test_random_ids_same_text_both_formats(sp_tok: Tokenizer, txt_tok: Tokenizer) -> None:
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(sp_tok.vocab_size) for _ in range(rng.randrange(1, 20))]
        assert txt_tok.decode(ids) == sp_tok.decode(ids), ids


def test_special_ids_dropped(sp_tok: Tokenizer, txt_tok: Tokenizer) -> None:
    text = "the lazy dog"
    ids = sp_tok.encode(text)
    noisy = [0, 1] + ids[:1] + [0, 0] + ids[1:] + [1, 0]
    for tok in (sp_tok, txt_tok):
        assert tok.decode(noisy) == text
        assert "<blk>" not in tok.decode([0, 1, 0])
        assert tok.decode([0, 1, 0]) == ""
    assert sp_tok.decode([2]) == txt_tok.decode([2]) == " \u2047 "


def test_bad_ids_and_pieces(sp_tok: Tokenizer, txt_tok: Tokenizer) -> None:
    for tok in (sp_tok, txt_tok):
        with pytest.raises(IndexError):
            tok.decode([tok.vocab_size])
        with pytest.raises(IndexError):
            tok.id_to_piece(-1)
        with pytest.raises(KeyError):
            tok.piece_to_id("no-such-piece")


def test_from_dir_prefers_bpe_model(model_dir: Path, tmp_path: Path) -> None:
    assert Tokenizer.from_dir(model_dir).is_sentencepiece
    only_txt = tmp_path / "txt"
    only_txt.mkdir()
    shutil.copy(model_dir / "tokens.txt", only_txt / "tokens.txt")
    tok = Tokenizer.from_dir(only_txt)
    assert not tok.is_sentencepiece and tok.vocab_size == VOCAB_SIZE


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="bpe.model.*tokens.txt"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        Tokenizer.from_file(tmp_path / "bpe.model")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_file(tmp_path / "tokens.txt")


def test_malformed_files(tmp_path: Path) -> None:
    bad_txt = tmp_path / "tokens.txt"
    bad_txt.write_text("<blk> 0\nnonsense\n", encoding="utf-8")
    with pytest.raises(ValueError, match="tokens.txt:2"):
        Tokenizer.from_file(bad_txt)
    gap = tmp_path / "gap.txt"
    gap.write_text("<blk> 0\n<unk> 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing"):
        Tokenizer.from_file(gap)
    bad_model = tmp_path / "bpe.model"
    bad_model.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="sentencepiece"):
        Tokenizer.from_file(bad_model)


def test_disambig_symbols_are_not_tokens(model_dir: Path, tmp_path: Path) -> None:
    text = (model_dir / "tokens.txt").read_text(encoding="utf-8")
    with_disambig = tmp_path / "tokens.txt"
    with_disambig.write_text(text + f"#0 {VOCAB_SIZE}\n#1 {VOCAB_SIZE + 1}\n", encoding="utf-8")
    tok = Tokenizer.from_file(with_disambig)
    assert tok.vocab_size == VOCAB_SIZE
    assert tok.piece_to_id("#0") == VOCAB_SIZE


def test_table_without_byte_pieces_uses_unk(tmp_path: Path) -> None:
    table = tmp_path / "tokens.txt"
    table.write_text("<blk> 0\n<sos/eos> 1\n<unk> 2\n\u2581a 3\nb 4\n\u2581 5\n", encoding="utf-8")
    tok = Tokenizer.from_file(table)
    assert tok.encode("ab a") == [3, 4, 3]
    assert tok.encode("ax") == [3, 2]
    assert tok.decode([3, 4, 3]) == "ab a"
