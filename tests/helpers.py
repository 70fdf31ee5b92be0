"""Builders for test assets: tiny random-weight model directories (audio: ``audio_testing``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

TINY_CONFIG = dict(
    downsampling_factor="1,2", num_encoder_layers="1,1", encoder_dim="32,48", encoder_unmasked_dim="32,32",
    num_heads="2,2", query_head_dim=8, value_head_dim=4, pos_head_dim=4, pos_dim=16, feedforward_dim="64,96",
    cnn_module_kernel="7,5", use_ctc=True, use_transducer=True, use_attention_decoder=True, decoder_dim=32,
    joiner_dim=32, context_size=2, attention_decoder_dim=32, attention_decoder_num_layers=1,
    attention_decoder_attention_dim=32, attention_decoder_num_heads=2, attention_decoder_feedforward_dim=64,
    sos_id=1, eos_id=1, ignore_id=-1,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "speech recognition turns audio into text",
    "a batch transcription service on ray",
    "numbers like one two three four five six seven",
    "object storage holds the audio and the transcripts",
]


def make_tiny_model_dir(directory: Path, vocab_size: int = 80, seed: int = 0) -> Path:
    """Random-weight CTC + transducer + attention-decoder model with a matching BPE model."""
    import sentencepiece as spm

    from model import AsrModel
    from model.tokenizer import train_bpe

    bpe = train_bpe(CORPUS * 20, directory, vocab_size, hard_vocab_limit=False)
    vocab = spm.SentencePieceProcessor(model_file=str(bpe)).vocab_size()

    torch.manual_seed(seed)
    config = dict(TINY_CONFIG, vocab_size=vocab)
    model = AsrModel(**config)
    torch.save({"model": model.state_dict()}, directory / "pretrained.pt")
    (directory / "config.json").write_text(json.dumps({"name": "tiny-random", **config}, indent=1))
    return directory


def have_tools(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


def edit_distance(a: list[str], b: list[str]) -> int:
    """Independent word-level Levenshtein distance (the WER tests' reference)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def named_queries() -> dict[str, str]:
    """docs/queries.sql as ``{name: sql}`` (each query starts with a ``-- name: <name>`` line)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "queries.sql").read_text()
    blocks = re.split(r"^-- name: (\S+)\s*$", text, flags=re.M)
    return {name: sql.strip() for name, sql in zip(blocks[1::2], blocks[2::2])}
