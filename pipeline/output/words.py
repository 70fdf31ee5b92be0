"""The words table: one row per transcribed word (``words/run_id=<id>/part-*.parquet``).

Each transcripts part has a words part of the same name, written by the same task just before
it (the transcripts part is the one resume trusts, so a rerun rewrites both): one row per word
of each ``status='ok'`` row, for every decoding of the run.

How words are found in a row's tokens (sentencepiece pieces):

* a word starts at a token whose piece begins with the word marker ``▁`` (or at the first
  token) and takes the tokens that follow it; its text is the tokenizer's decoding of those
  tokens (so byte-level pieces such as ``<0xC3>`` become characters);
* ``start_s`` is its first token's time, ``end_s`` the earlier of the next word's start and its
  last token's time plus one encoder frame (``frame_shift``, 0.04 s), capped at the end of the
  cut. Token times are where CTC / the transducer emitted a token, so in continuous speech a
  word ends where the next begins, give or take a frame, while a pause after a word stays
  visible as a gap (subtitles split there, :mod:`pipeline.report.subtitles`);
* times are seconds in the *recording*: the cut's ``start_s`` plus the token time (a stitched
  long cut's token times already count from its start);
* ``confidence`` is the mean of the word's token confidences (the probability the model gave
  each token where it emitted it), or the row's confidence when the row has none per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import pyarrow as pa

from .records import STATUS_OK, TranscriptRow

__all__ = ["FRAME_SHIFT", "WORDS_SCHEMA", "Word", "split_words", "words_table"]

WORD_MARK = "\u2581"
#: seconds per encoder frame (10 ms features subsampled 4x): a token's own span
FRAME_SHIFT = 0.04

WORDS_SCHEMA = pa.schema(
    [
        pa.field("cut_id", pa.string(), nullable=False),
        pa.field("recording_id", pa.string()),
        pa.field("channel", pa.int32()),
        pa.field("speaker", pa.string()),
        pa.field("word_index", pa.int32(), nullable=False),
        pa.field("word", pa.string(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("confidence", pa.float64()),
        pa.field("decoding", pa.string()),
    ]
)


@dataclass(frozen=True)
class Word:
    """One word of a transcript, its times in seconds of the recording."""

    text: str
    start: float
    end: float
    confidence: Optional[float]


def split_words(token_ids: Sequence[int], token_times: Sequence[float], token_confidences: Sequence[float],
                piece: Callable[[int], str], decode: Callable[[list[int]], str], *, offset: float = 0.0,
                end_of_cut: Optional[float] = None, frame_shift: float = FRAME_SHIFT,
                confidence: Optional[float] = None) -> list[Word]:
    """The words of one transcript (see the module docstring).

    Args:
        token_ids, token_times: the transcript's tokens and their times (seconds from the cut's start).
        token_confidences: per-token confidences (may be empty: then ``confidence`` is used).
        piece: token id -> sentencepiece piece; ``decode``: token ids -> text.
        offset: the cut's start in its recording; ``end_of_cut``: where the cut ends in the
            recording (words end there at the latest).
    """
    groups: list[list[int]] = []  # token positions of each word
    for k, tok in enumerate(token_ids):
        if not groups or piece(tok).startswith(WORD_MARK):
            groups.append([])
        groups[-1].append(k)
    found: list[tuple[str, float, float, Optional[float]]] = []
    for g in groups:
        text = decode([token_ids[k] for k in g]).strip()
        if not text:
            continue
        confs = [token_confidences[k] for k in g] if len(token_confidences) == len(token_ids) else []
        found.append((text, offset + float(token_times[g[0]]), offset + float(token_times[g[-1]]) + frame_shift,
                      sum(confs) / len(confs) if confs else confidence))
    words = []
    for i, (text, start, tail, conf) in enumerate(found):
        end = tail
        if i + 1 < len(found):
            end = min(end, found[i + 1][1])
        if end_of_cut is not None:
            end = min(end, end_of_cut)
        words.append(Word(text, round(start, 3), round(max(end, start), 3), None if conf is None else round(conf, 4)))
    return words


def words_table(rows: Iterable[TranscriptRow], piece: Callable[[int], str], decode: Callable[[list[int]], str],
                frame_shift: float = FRAME_SHIFT) -> pa.Table:
    """The words of every ``status='ok'`` row (:data:`WORDS_SCHEMA`)."""
    columns: dict[str, list] = {name: [] for name in WORDS_SCHEMA.names}
    for row in rows:
        if row.status != STATUS_OK or not row.token_ids:
            continue
        offset = row.start_s or 0.0
        end_of_cut = offset + row.duration if row.duration is not None else None
        words = split_words(row.token_ids, row.token_times, row.token_confidences or [], piece, decode,
                            offset=offset, end_of_cut=end_of_cut, frame_shift=frame_shift, confidence=row.confidence)
        for i, w in enumerate(words):
            for name, value in (("cut_id", row.cut_id), ("recording_id", row.recording_id),
                                ("channel", row.channel), ("speaker", row.speaker), ("word_index", i),
                                ("word", w.text), ("start_s", w.start), ("end_s", w.end), ("confidence", w.confidence),
                                ("decoding", row.decoding)):
                columns[name].append(value)
    return pa.Table.from_pydict(columns, schema=WORDS_SCHEMA)
