"""Output rows and their Arrow schema (``transcripts/run_id=<id>/part-<shard>.parquet``).

Plain Arrow types only (strings are UTF-8, lists of int32 / float64, UTC timestamps, times in
seconds as float64), so DuckDB, pandas, polars, DataFusion, ClickHouse, Spark and Athena read the
files without help. The run id is the hive partition directory (``run_id=<id>``) and only that:
it is not a column in the files (an engine would see it twice, with two types). Column names avoid
SQL reserved words (``start_s``, not ``start``). Every file says its schema version in its
metadata (:data:`SCHEMA_VERSION_KEY`); schemas change only by adding columns.

WER columns (filled when the cut has a reference by :func:`pipeline.report.wer.score_row`):
``ref_norm`` / ``hyp_norm`` are the normalised reference and hypothesis that were compared,
``ref_words`` the number of words in ``ref_norm``, and ``substitutions`` / ``deletions`` /
``insertions`` the operations of their jiwer alignment, ``errors`` their sum, and
``word_edits`` the alignment's errors themselves, in order: ``{op: 'S'|'D'|'I', ref, hyp}``
(``ref`` null for an insertion, ``hyp`` null for a deletion; the correct words are the rest of
``ref_norm``). Reports count per-word errors from them with a query instead of aligning again.
A cut whose audio failed (``status='error'``) keeps its ``reference`` and ``ref_norm`` but has
no counts.

Hotwords (contextual biasing, :mod:`pipeline.inputs.hotwords`): ``hotword_score`` is the bonus of
the completed hotword phrases that took part in choosing the text (null when the cut had no
hotword list, or for a decoding that cannot bias: the greedy methods);
``hotwords_matched`` the phrases of the cut's list that the normalised text contains as whole
words (null without a list; for a long cut stitched from windows, the phrases some window matched
that the stitched text still holds; ``hotword_score`` null there, since the windows' bonuses
overlap; its B-WER / U-WER counts come from the list words its windows carry). With a list and a
reference, the WER split of the contextual-biasing
literature (Le et al. 2021): ``biased_ref_words`` / ``unbiased_ref_words`` are the reference words
that are / are not words of the cut's list, ``biased_errors`` / ``unbiased_errors`` the errors on
them (a substitution or deletion counts by its reference word, an insertion by the inserted word);
B-WER and U-WER are their ratios (:mod:`pipeline.report.tables`).

``token_confidences``: per token, the probability the model gave it where it was emitted
(same order as ``token_ids``); word confidences (:mod:`pipeline.output.words`) come from them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Optional

import pyarrow as pa

#: one error of a WER alignment (``word_edits``)
WORD_EDIT = pa.struct([pa.field("op", pa.string()), pa.field("ref", pa.string()), pa.field("hyp", pa.string())])

TRANSCRIPT_SCHEMA = pa.schema(
    [
        pa.field("cut_id", pa.string(), nullable=False),
        pa.field("recording_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("channel", pa.int32()),
        pa.field("start_s", pa.float64()),
        pa.field("duration", pa.float64()),
        pa.field("text", pa.string()),
        pa.field("token_ids", pa.list_(pa.int32())),
        pa.field("token_times", pa.list_(pa.float64())),
        pa.field("token_confidences", pa.list_(pa.float64())),
        pa.field("ctc_score", pa.float64()),
        pa.field("attention_score", pa.float64()),
        pa.field("lm_score", pa.float64()),
        pa.field("hotword_score", pa.float64()),
        pa.field("hotwords_matched", pa.list_(pa.string())),
        pa.field("biased_ref_words", pa.int32()),
        pa.field("biased_errors", pa.int32()),
        pa.field("unbiased_ref_words", pa.int32()),
        pa.field("unbiased_errors", pa.int32()),
        pa.field("confidence", pa.float64()),
        pa.field("reference", pa.string()),
        pa.field("ref_words", pa.int32()),
        pa.field("errors", pa.int32()),
        pa.field("substitutions", pa.int32()),
        pa.field("deletions", pa.int32()),
        pa.field("insertions", pa.int32()),
        pa.field("ref_norm", pa.string()),
        pa.field("hyp_norm", pa.string()),
        pa.field("word_edits", pa.list_(WORD_EDIT)),
        pa.field("speaker", pa.string()),
        pa.field("language", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("model_id", pa.string()),
        pa.field("model_sha256", pa.string()),
        pa.field("decoding", pa.string()),
        pa.field("shard_id", pa.string()),
        pa.field("worker", pa.string()),
        pa.field("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)

#: One row per window of a long cut (``windows/run_id=<id>/part-<shard>.parquet``): the
#: transcript columns for the window's own range, plus where it sits in its cut. They are
#: stitched into one TRANSCRIPT_SCHEMA row per cut (:mod:`pipeline.longform.stitching`). The
#: reference text of the cut rides on window 0 only; no WER is computed per window.
WINDOW_SCHEMA = pa.schema(
    list(TRANSCRIPT_SCHEMA)
    + [
        pa.field("window_index", pa.int32(), nullable=False),
        pa.field("window_count", pa.int32(), nullable=False),
        pa.field("cut_start", pa.float64()),
        pa.field("cut_duration", pa.float64()),
        # the words of the cut's hotword list (null: none), for the stitched row's B-WER / U-WER
        pa.field("hotword_words", pa.list_(pa.string())),
    ]
)

#: bumped whenever TRANSCRIPT_SCHEMA changes; part fingerprints include it, so a resumed
#: run never mixes parts of two schemas; written into every file's metadata (SCHEMA_VERSION_KEY)
SCHEMA_VERSION = 6  # 4: lm_score; 5: run_id only in the path, start -> start_s, float64 token times;
# 6: hotword_score, hotwords_matched, biased_* / unbiased_*
SCHEMA_VERSION_KEY = b"zipscribe.schema_version"

STATUS_OK = "ok"
STATUS_ERROR = "error"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class TranscriptRow:
    """One row per cut; ``status='error'`` rows carry ``error`` and no text (nor WER counts).
    ``run_id`` is the run's (its partition): kept here, not written as a column."""

    run_id: str
    cut_id: str
    status: str
    recording_id: Optional[str] = None
    source: Optional[str] = None
    channel: Optional[int] = None
    start_s: Optional[float] = None
    duration: Optional[float] = None
    text: Optional[str] = None
    token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    token_confidences: list[float] = field(default_factory=list)
    ctc_score: Optional[float] = None
    attention_score: Optional[float] = None
    lm_score: Optional[float] = None
    hotword_score: Optional[float] = None
    hotwords_matched: Optional[list[str]] = None
    biased_ref_words: Optional[int] = None
    biased_errors: Optional[int] = None
    unbiased_ref_words: Optional[int] = None
    unbiased_errors: Optional[int] = None
    confidence: Optional[float] = None
    reference: Optional[str] = None
    ref_words: Optional[int] = None
    errors: Optional[int] = None
    substitutions: Optional[int] = None
    deletions: Optional[int] = None
    insertions: Optional[int] = None
    ref_norm: Optional[str] = None
    hyp_norm: Optional[str] = None
    word_edits: Optional[list[dict[str, Optional[str]]]] = None
    speaker: Optional[str] = None
    language: Optional[str] = None
    dataset: Optional[str] = None
    error: Optional[str] = None
    model_id: Optional[str] = None
    model_sha256: Optional[str] = None
    decoding: Optional[str] = None
    shard_id: Optional[str] = None
    worker: Optional[str] = None
    processed_at: datetime = field(default_factory=utc_now)
    #: the words of the cut's hotword list (for the B-WER / U-WER split when the row is scored);
    #: not a column of TRANSCRIPT_SCHEMA (a column of WINDOW_SCHEMA, for stitching)
    hotword_words: Optional[list[str]] = None


@dataclass
class WindowRow(TranscriptRow):
    """A window of a long cut (:data:`WINDOW_SCHEMA`)."""

    window_index: int = 0
    window_count: int = 1
    cut_start: Optional[float] = None
    cut_duration: Optional[float] = None


def rows_to_table(rows: list[TranscriptRow], schema: pa.Schema = TRANSCRIPT_SCHEMA) -> pa.Table:
    """Rows -> Arrow table with exactly ``schema`` (:data:`TRANSCRIPT_SCHEMA` or :data:`WINDOW_SCHEMA`)."""
    columns: dict[str, list] = {name: [] for name in schema.names}
    for row in rows:
        values = asdict(row)
        for name in schema.names:
            columns[name].append(values[name])
    return pa.Table.from_pydict(columns, schema=schema)
