"""WER report tables: transcript rows in, the report's tables out.

The builders are DuckDB queries over transcript rows (``TRANSCRIPT_SCHEMA``): group-bys for
the WER tables, the per-word error table from the alignment errors each row stores
(``word_edits``, computed by the actor that transcribed it), a top-k query for the worst
utterances (only those are aligned again, for display). Nothing grows with the number of rows
in Python; DuckDB holds its work under a ``memory_limit`` (:data:`DEFAULT_MEMORY_LIMIT`) and
spills beyond it. :func:`build_report_sql` builds a report from any table expression (the run's
Parquet parts, see :func:`pipeline.report.files.build_run_report`); :func:`build_report` from an
Arrow table of rows in memory (rows without stored alignments are scored first,
:func:`complete_rows`). Both return a :class:`Report`. The renderers (:mod:`pipeline.report.markdown`, :mod:`pipeline.report.html`)
turn a report into text; :mod:`pipeline.report.files` reads rows and writes the files.

Tables of a report, each the run's partition of a table of its own (the run id is the folder,
``run_id=<id>``, not a column):

``wer_groups/run_id=<id>/part-00000.parquet`` (:data:`REPORT_SCHEMA`), one row per group:

* ``group_by='all'``: every row of the run with that ``decoding`` (``dataset`` is null);
* ``group_by='dataset'``: one dataset (``group_value`` = its name, ``(none)`` when the rows
  carry no dataset);
* B-WER / U-WER (contextual biasing, Le et al. 2021): ``biased_ref_words`` / ``biased_errors``
  and ``unbiased_ref_words`` / ``unbiased_errors`` sum the rows' split (words of the cut's hotword
  list, the other words; :func:`pipeline.report.wer.bias_counts`) over scored rows that have one;
  ``b_wer`` / ``u_wer`` are their ratios, null in a group where no cut carried a list;
* ``group_by='speaker'``: one speaker within a dataset (``(none)`` = no speaker label);
* ``group_by='duration_bucket'``: cuts whose duration falls in ``[lo, hi)`` seconds, per
  dataset, with the edges :data:`DURATION_EDGES` = 2, 5, 10, 20 s: buckets ``0-2s``,
  ``2-5s``, ``5-10s``, ``10-20s``, ``20s+`` (``unknown`` when the duration is missing).

Groups are always per ``decoding`` as well (one run has one; an evaluation may have several).
Counting: ``utterances`` is every row of the group. ``failed`` rows (``status='error'``,
unusable audio) and ``no_reference`` rows (``status='ok'`` but no reference text) are counted
but not scored; ``scored`` rows (``status='ok'`` with a reference) contribute ``ref_words``,
``substitutions``, ``deletions`` and ``insertions``; ``empty_reference`` counts scored rows
whose normalised reference is empty (their hypothesis words are insertions). ``wer`` =
``(S + D + I) / ref_words``, a fraction (0.125 = 12.5 %), null when ``ref_words`` is 0.
``audio_seconds`` sums the durations of the group's ``status='ok'`` rows.

``wer_errors/run_id=<id>/part-00000.parquet`` (:data:`ERRORS_SCHEMA`), icefall's ``errs-*`` file as a table, per
dataset and decoding: ``kind='substitution'`` rows (``ref_word -> hyp_word``, ``count``),
``'deletion'`` (``ref_word``), ``'insertion'`` (``hyp_word``), and ``'word'`` rows with
per-word statistics (``ref_word`` is the word; ``correct``, ``ref_count``, ``hyp_count``,
``substituted`` = times it was replaced in the hypothesis, ``substituted_in`` = times it
replaced another reference word, ``deleted``, ``inserted``; ``count`` = the sum of the four
error columns, icefall's ``tot_errs``).

Documents, under ``reports/run_id=<id>/`` (not a table): ``summary.md``: headline WER, verdicts
of an evaluation, group tables, the most frequent errors and the worst utterances with an
icefall-style alignment (``(ref->hyp)``); ``report.html``: the same for a browser, self-contained (inline CSS and SVG plots drawn with
matplotlib), see :mod:`pipeline.report.html`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Optional, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.output.records import STATUS_ERROR, STATUS_OK, TRANSCRIPT_SCHEMA

from .history import Verdict
from .normalize import get_normalizer
from .wer import AlignedWord, align_many, count, edits

__all__ = [
    "DURATION_BUCKETS",
    "DURATION_EDGES",
    "ERRORS_SCHEMA",
    "REPORT_SCHEMA",
    "ROW_COLUMNS",
    "Report",
    "WorstUtterance",
    "GROUP_HEADER",
    "DEFAULT_MEMORY_LIMIT",
    "build_report",
    "build_report_sql",
    "complete_rows",
    "connect",
    "dataset_label",
    "duration_bucket",
    "edge_label",
    "pct",
]

#: duration bucket edges in seconds; a cut of duration d falls in [lo, hi)
DURATION_EDGES: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0)
NONE_LABEL = "(none)"
UNKNOWN_BUCKET = "unknown"


def edge_label(x: float) -> str:
    """A bucket edge as printed: ``2.0`` -> ``2``."""
    return f"{x:g}"


#: bucket labels in order (then ``unknown`` for rows without a duration)
DURATION_BUCKETS: tuple[str, ...] = tuple(
    [f"{edge_label(lo)}-{edge_label(hi)}s" for lo, hi in zip((0.0,) + DURATION_EDGES[:-1], DURATION_EDGES)]
    + [f"{edge_label(DURATION_EDGES[-1])}s+"]
)


def duration_bucket(seconds: Optional[float]) -> str:
    """The bucket label of a duration: ``0-2s``, ``2-5s``, ``5-10s``, ``10-20s``, ``20s+``."""
    if seconds is None:
        return UNKNOWN_BUCKET
    for label, hi in zip(DURATION_BUCKETS, DURATION_EDGES):
        if seconds < hi:
            return label
    return DURATION_BUCKETS[-1]


#: transcript columns a report reads (the rest, e.g. token ids, is never loaded)
ROW_COLUMNS: tuple[str, ...] = (
    "cut_id", "duration", "text", "reference", "ref_words", "substitutions", "deletions",
    "insertions", "ref_norm", "hyp_norm", "speaker", "dataset", "status", "error", "model_id",
    "model_sha256", "decoding", "word_edits", "biased_ref_words", "biased_errors", "unbiased_ref_words",
    "unbiased_errors",
)

_COUNTS = ("utterances", "scored", "failed", "no_reference", "empty_reference", "ref_words",
           "substitutions", "deletions", "insertions")

#: the B-WER / U-WER split (rows with a hotword list and a reference); null in a group without lists
_BIAS_COUNTS = ("biased_ref_words", "biased_errors", "unbiased_ref_words", "unbiased_errors")

REPORT_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("decoding", pa.string()),
        pa.field("group_by", pa.string(), nullable=False),
        pa.field("group_value", pa.string(), nullable=False),
        *[pa.field(name, pa.int64(), nullable=False) for name in _COUNTS],
        pa.field("errors", pa.int64(), nullable=False),
        pa.field("wer", pa.float64()),
        pa.field("audio_seconds", pa.float64(), nullable=False),
        *[pa.field(name, pa.int64()) for name in _BIAS_COUNTS],
        pa.field("b_wer", pa.float64()),
        pa.field("u_wer", pa.float64()),
        pa.field("model_id", pa.string()),
        pa.field("model_sha256", pa.string()),
        pa.field("normalizer", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string()),
        pa.field("decoding", pa.string()),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("ref_word", pa.string()),
        pa.field("hyp_word", pa.string()),
        pa.field("count", pa.int64(), nullable=False),
        pa.field("correct", pa.int64()),
        pa.field("ref_count", pa.int64()),
        pa.field("hyp_count", pa.int64()),
        pa.field("substituted", pa.int64()),
        pa.field("substituted_in", pa.int64()),
        pa.field("deleted", pa.int64()),
        pa.field("inserted", pa.int64()),
    ]
)

GROUP_ORDER = ("all", "dataset", "duration_bucket", "speaker")


@dataclass
class WorstUtterance:
    """One of the worst-scored utterances, with its alignment for display."""

    dataset: Optional[str]
    decoding: Optional[str]
    cut_id: str
    speaker: Optional[str]
    duration: Optional[float]
    ref_words: int
    errors: int
    reference: str
    text: str
    alignment: list[AlignedWord]

    @property
    def wer(self) -> Optional[float]:
        return self.errors / self.ref_words if self.ref_words else None


@dataclass
class Report:
    """A built report: the tables that become Parquet and what Markdown / HTML show."""

    run_id: str
    created_at: datetime
    normalizer: str
    table: pa.Table
    errors: pa.Table
    worst: list[WorstUtterance]
    history: Optional[pa.Table] = None
    verdicts: list[Verdict] = field(default_factory=list)

    # -- convenient views --------------------------------------------------------------
    def groups(self, group_by: str, dataset: Optional[str] = None, decoding: Optional[str] = None,
               *, any_dataset: bool = False) -> list[dict[str, Any]]:
        """Report rows of one ``group_by`` (optionally one dataset / decoding) as dicts."""
        out = []
        for r in self.table.to_pylist():
            if r["group_by"] != group_by:
                continue
            if not any_dataset and group_by != "all" and dataset is not None and r["dataset"] != dataset:
                continue
            if decoding is not None and r["decoding"] != decoding:
                continue
            out.append(r)
        return out

    def headline(self) -> list[dict[str, Any]]:
        """One row per (dataset, decoding): the ``group_by='dataset'`` rows."""
        return self.groups("dataset", any_dataset=True)

    def overall(self) -> list[dict[str, Any]]:
        """The ``group_by='all'`` rows (one per decoding)."""
        return self.groups("all")

    def error_sets(self) -> list[tuple[Optional[str], Optional[str]]]:
        """The (dataset, decoding) pairs that have rows in :attr:`errors`, in report order."""
        pairs = self.errors.select(["dataset", "decoding"]).group_by(["dataset", "decoding"]).aggregate([])
        return sorted(zip(pairs.column("dataset").to_pylist(), pairs.column("decoding").to_pylist()),
                      key=lambda k: (k[1] or "", k[0] or ""))

    def top_errors(self, dataset: Optional[str], decoding: Optional[str], kind: str, n: int) -> list[dict[str, Any]]:
        """The first ``n`` rows of one kind of :attr:`errors` for a (dataset, decoding), most
        frequent first (``word`` rows: only words with errors). Filters the Arrow table, so a
        report of a million rows renders without turning its error table into Python objects."""
        def eq(name: str, value: Optional[str]) -> Any:
            column = self.errors.column(name)
            return pc.is_null(column) if value is None else pc.fill_null(pc.equal(column, value), False)

        mask = pc.and_(pc.and_(eq("dataset", dataset), eq("decoding", decoding)), eq("kind", kind))
        if kind == "word":
            mask = pc.and_(mask, pc.greater(self.errors.column("count"), 0))
        return self.errors.filter(mask).slice(0, n).to_pylist()


# -- rows a report can read ------------------------------------------------------------


def complete_rows(rows: pa.Table, normalizer: str) -> pa.Table:
    """``rows`` with every :data:`ROW_COLUMNS` column (missing ones null, typed as in
    ``TRANSCRIPT_SCHEMA``), and scored rows that lack their stored alignment (parts written before
    the WER columns or ``word_edits`` existed, rows built by hand) scored now with ``normalizer``.
    Rows the actors wrote are passed through untouched."""
    columns = {}
    for name in ROW_COLUMNS:
        typ = TRANSCRIPT_SCHEMA.field(name).type
        columns[name] = rows.column(name).cast(typ) if name in rows.column_names else pa.nulls(rows.num_rows, typ)
    table = pa.table(columns)
    status = table.column("status").to_pylist()
    reference = table.column("reference").to_pylist()
    edits_col = table.column("word_edits").to_pylist()
    counts_col = table.column("substitutions").to_pylist()
    todo = [i for i in range(table.num_rows)
            if status[i] == STATUS_OK and reference[i] is not None and (edits_col[i] is None or counts_col[i] is None)]
    if not todo:
        return table
    norm = get_normalizer(normalizer)
    text = table.column("text").to_pylist()
    pairs = [(norm(reference[i] or ""), norm(text[i] or "")) for i in todo]
    values = {name: table.column(name).to_pylist() for name in
              ("ref_norm", "hyp_norm", "ref_words", "substitutions", "deletions", "insertions", "word_edits")}
    for i, (ref, hyp), alignment in zip(todo, pairs, align_many(pairs)):
        n, s, d, ins = count(alignment)
        for name, value in (("ref_norm", ref), ("hyp_norm", hyp), ("ref_words", n), ("substitutions", s),
                            ("deletions", d), ("insertions", ins), ("word_edits", edits(alignment))):
            values[name][i] = value
    for name, value in values.items():
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(value, type=TRANSCRIPT_SCHEMA.field(name).type))
    return table


# -- the queries -----------------------------------------------------------------------

#: DuckDB's memory limit for building a report: beyond it, DuckDB spills to disk
DEFAULT_MEMORY_LIMIT = "1GB"


def connect(memory_limit: str = DEFAULT_MEMORY_LIMIT, threads: Optional[int] = None,
            temp_directory: Optional[str] = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for report queries, bounded by ``memory_limit`` (it spills sorts and
    aggregations to ``temp_directory`` beyond it)."""
    config: dict[str, Any] = {"memory_limit": memory_limit, "preserve_insertion_order": False}
    if threads:
        config["threads"] = threads
    if temp_directory:
        config["temp_directory"] = temp_directory
    return duckdb.connect(config=config)


def _bucket_sql(column: str) -> str:
    cases = " ".join(f"WHEN {column} < {hi!r} THEN '{label}'" for label, hi in zip(DURATION_BUCKETS, DURATION_EDGES))
    return f"CASE WHEN {column} IS NULL THEN '{UNKNOWN_BUCKET}' {cases} ELSE '{DURATION_BUCKETS[-1]}' END"


#: the report's view of the rows: counts defaulted, ``scored`` and the duration bucket computed
_ROWS_VIEW = f"""
CREATE OR REPLACE TEMP VIEW report_rows AS
SELECT cut_id, coalesce(status, '{STATUS_ERROR}') AS status, dataset, decoding, speaker, duration, reference, text,
       coalesce(ref_norm, '') AS ref_norm, coalesce(hyp_norm, '') AS hyp_norm, word_edits, model_id, model_sha256,
       coalesce(status, '{STATUS_ERROR}') = '{STATUS_OK}' AND reference IS NOT NULL AS scored,
       coalesce(ref_words, 0) AS ref_words, coalesce(substitutions, 0) AS substitutions,
       coalesce(deletions, 0) AS deletions, coalesce(insertions, 0) AS insertions,
       biased_ref_words, biased_errors, unbiased_ref_words, unbiased_errors,
       {_bucket_sql('duration')} AS bucket
FROM {{source}}
"""

_COUNTS_SQL = f"""
    count(*) AS utterances,
    count(*) FILTER (WHERE scored) AS scored,
    count(*) FILTER (WHERE status <> '{STATUS_OK}') AS failed,
    count(*) FILTER (WHERE status = '{STATUS_OK}' AND reference IS NULL) AS no_reference,
    count(*) FILTER (WHERE scored AND ref_words = 0) AS empty_reference,
    coalesce(sum(ref_words) FILTER (WHERE scored), 0)::BIGINT AS ref_words,
    coalesce(sum(substitutions) FILTER (WHERE scored), 0)::BIGINT AS substitutions,
    coalesce(sum(deletions) FILTER (WHERE scored), 0)::BIGINT AS deletions,
    coalesce(sum(insertions) FILTER (WHERE scored), 0)::BIGINT AS insertions,
    coalesce(sum(duration) FILTER (WHERE status = '{STATUS_OK}'), 0.0) AS audio_seconds,
    sum(biased_ref_words) FILTER (WHERE scored)::BIGINT AS biased_ref_words,
    sum(biased_errors) FILTER (WHERE scored)::BIGINT AS biased_errors,
    sum(unbiased_ref_words) FILTER (WHERE scored)::BIGINT AS unbiased_ref_words,
    sum(unbiased_errors) FILTER (WHERE scored)::BIGINT AS unbiased_errors,
    list(DISTINCT model_id) FILTER (WHERE model_id IS NOT NULL AND model_id <> '') AS model_ids,
    list(DISTINCT model_sha256) FILTER (WHERE model_sha256 IS NOT NULL AND model_sha256 <> '') AS model_sha256s"""

_GROUPS_SQL = f"""
SELECT 'all' AS group_by, NULL::VARCHAR AS dataset, decoding, 'all' AS group_value, {_COUNTS_SQL}
FROM report_rows GROUP BY decoding
UNION ALL
SELECT 'dataset', dataset, decoding, coalesce(dataset, '{NONE_LABEL}'), {_COUNTS_SQL}
FROM report_rows GROUP BY dataset, decoding
UNION ALL
SELECT 'duration_bucket', dataset, decoding, bucket, {_COUNTS_SQL}
FROM report_rows GROUP BY dataset, decoding, bucket
UNION ALL
SELECT 'speaker', dataset, decoding, coalesce(speaker, '{NONE_LABEL}'), {_COUNTS_SQL}
FROM report_rows GROUP BY dataset, decoding, coalesce(speaker, '{NONE_LABEL}')
"""

# Per (dataset, decoding): substitutions, deletions, insertions from the rows' stored edits, and
# per-word statistics from the edits and the words of the normalised texts (a reference word
# that is neither substituted nor deleted was correct).
_ERRORS_SQL = """
WITH edits AS (
    SELECT dataset, decoding, unnest(word_edits) AS e FROM report_rows WHERE scored
), ops AS (
    SELECT dataset, decoding, e.op AS op, e.ref AS ref, e.hyp AS hyp FROM edits
), ref_words AS (
    SELECT dataset, decoding, w, count(*) AS n FROM (
        SELECT dataset, decoding, unnest(regexp_split_to_array(ref_norm, '\\s+')) AS w FROM report_rows WHERE scored
    ) WHERE w <> '' GROUP BY ALL
), hyp_words AS (
    SELECT dataset, decoding, w, count(*) AS n FROM (
        SELECT dataset, decoding, unnest(regexp_split_to_array(hyp_norm, '\\s+')) AS w FROM report_rows WHERE scored
    ) WHERE w <> '' GROUP BY ALL
), per_word AS (
    SELECT dataset, decoding, w,
           count(*) FILTER (WHERE kind = 'substituted') AS substituted,
           count(*) FILTER (WHERE kind = 'substituted_in') AS substituted_in,
           count(*) FILTER (WHERE kind = 'deleted') AS deleted,
           count(*) FILTER (WHERE kind = 'inserted') AS inserted
    FROM (
        SELECT dataset, decoding, ref AS w, 'substituted' AS kind FROM ops WHERE op = 'S'
        UNION ALL SELECT dataset, decoding, hyp, 'substituted_in' FROM ops WHERE op = 'S'
        UNION ALL SELECT dataset, decoding, ref, 'deleted' FROM ops WHERE op = 'D'
        UNION ALL SELECT dataset, decoding, hyp, 'inserted' FROM ops WHERE op = 'I'
    ) GROUP BY ALL
), words AS (
    SELECT coalesce(r.dataset, h.dataset) AS dataset, coalesce(r.decoding, h.decoding) AS decoding,
           coalesce(r.w, h.w) AS w, coalesce(r.n, 0) AS ref_count, coalesce(h.n, 0) AS hyp_count
    FROM ref_words r FULL OUTER JOIN hyp_words h
      ON r.dataset IS NOT DISTINCT FROM h.dataset AND r.decoding IS NOT DISTINCT FROM h.decoding AND r.w = h.w
), word_rows AS (
    SELECT w.dataset, w.decoding, w.w, w.ref_count, w.hyp_count,
           coalesce(p.substituted, 0) AS substituted, coalesce(p.substituted_in, 0) AS substituted_in,
           coalesce(p.deleted, 0) AS deleted, coalesce(p.inserted, 0) AS inserted
    FROM words w LEFT JOIN per_word p
      ON w.dataset IS NOT DISTINCT FROM p.dataset AND w.decoding IS NOT DISTINCT FROM p.decoding AND w.w = p.w
), all_rows AS (
    SELECT dataset, decoding, 0 AS kind_order, 'substitution' AS kind, ref AS ref_word, hyp AS hyp_word,
           count(*) AS count, NULL::BIGINT AS correct, NULL::BIGINT AS ref_count, NULL::BIGINT AS hyp_count,
           NULL::BIGINT AS substituted, NULL::BIGINT AS substituted_in, NULL::BIGINT AS deleted, NULL::BIGINT AS inserted
    FROM ops WHERE op = 'S' GROUP BY dataset, decoding, ref, hyp
    UNION ALL
    SELECT dataset, decoding, 1, 'deletion', ref, NULL, count(*), NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM ops WHERE op = 'D' GROUP BY dataset, decoding, ref
    UNION ALL
    SELECT dataset, decoding, 2, 'insertion', NULL, hyp, count(*), NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM ops WHERE op = 'I' GROUP BY dataset, decoding, hyp
    UNION ALL
    SELECT dataset, decoding, 3, 'word', w, NULL, substituted + substituted_in + deleted + inserted,
           ref_count - substituted - deleted, ref_count, hyp_count, substituted, substituted_in, deleted, inserted
    FROM word_rows
)
SELECT dataset, decoding, kind, ref_word, hyp_word, count, correct, ref_count, hyp_count, substituted,
       substituted_in, deleted, inserted
FROM all_rows
ORDER BY coalesce(decoding, ''), coalesce(dataset, ''), kind_order, count DESC, ref_word NULLS FIRST,
         hyp_word NULLS FIRST
"""

_WORST_SQL = """
SELECT dataset, decoding, cut_id, speaker, duration, ref_words, substitutions + deletions + insertions AS errors,
       reference, text, ref_norm, hyp_norm
FROM report_rows
WHERE scored AND substitutions + deletions + insertions > 0
ORDER BY errors DESC, (substitutions + deletions + insertions)::DOUBLE / greatest(ref_words, 1) DESC, cut_id
LIMIT ?
"""

GroupKey = tuple[str, Optional[str], Optional[str], str]  # group_by, dataset, decoding, group_value


def _sort_key(key: GroupKey) -> tuple:
    group_by, dataset, decoding, value = key
    if group_by == "duration_bucket":
        order = DURATION_BUCKETS.index(value) if value in DURATION_BUCKETS else len(DURATION_BUCKETS)
        value_key: tuple = (order, value)
    else:
        value_key = (0, value)
    return (decoding or "", GROUP_ORDER.index(group_by), dataset or "", value_key)


def _join(values: Optional[Iterable[str]]) -> Optional[str]:
    present = sorted(set(values or []))
    return ",".join(present) if present else None


def group_table(con: duckdb.DuckDBPyConnection, normalizer: str, created_at: datetime) -> pa.Table:
    """The group rows (:data:`REPORT_SCHEMA`) of the rows in ``report_rows``."""
    groups = con.sql(_GROUPS_SQL).to_arrow_table().to_pylist()  # one row per group: small
    groups.sort(key=lambda g: _sort_key((g["group_by"], g["dataset"], g["decoding"], g["group_value"])))
    columns: dict[str, list[Any]] = {name: [] for name in REPORT_SCHEMA.names}
    for g in groups:
        errors = g["substitutions"] + g["deletions"] + g["insertions"]
        values: dict[str, Any] = dict(
            g, errors=errors, wer=errors / g["ref_words"] if g["ref_words"] else None,
            b_wer=g["biased_errors"] / g["biased_ref_words"] if g["biased_ref_words"] else None,
            u_wer=g["unbiased_errors"] / g["unbiased_ref_words"] if g["unbiased_ref_words"] else None,
            audio_seconds=round(g["audio_seconds"], 6), model_id=_join(g["model_ids"]),
            model_sha256=_join(g["model_sha256s"]), normalizer=normalizer, created_at=created_at,
        )
        for name in REPORT_SCHEMA.names:
            columns[name].append(values[name])
    return pa.Table.from_pydict(columns, schema=REPORT_SCHEMA)


def error_table(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """The word-error rows (:data:`ERRORS_SCHEMA`) of the rows in ``report_rows``."""
    return con.sql(_ERRORS_SQL).to_arrow_table().cast(ERRORS_SCHEMA)


def worst_utterances(con: duckdb.DuckDBPyConnection, n: int) -> list[WorstUtterance]:
    """The ``n`` scored utterances with the most errors (ties: higher WER first, then cut id),
    each aligned again for display (``n`` rows, never the run)."""
    rows = con.sql(_WORST_SQL, params=[n]).to_arrow_table().to_pylist() if n > 0 else []
    alignments = align_many([(r["ref_norm"], r["hyp_norm"]) for r in rows])
    return [
        WorstUtterance(dataset=r["dataset"], decoding=r["decoding"], cut_id=r["cut_id"], speaker=r["speaker"],
                       duration=r["duration"], ref_words=r["ref_words"], errors=r["errors"],
                       reference=r["reference"] or "", text=r["text"] or "", alignment=a)
        for r, a in zip(rows, alignments)
    ]


def build_report_sql(con: duckdb.DuckDBPyConnection, source: str, *, run_id: str, normalizer: str = "english",
                     created_at: Optional[datetime] = None, history: Optional[pa.Table] = None,
                     verdicts: Sequence[Verdict] = (), worst_n: int = 20) -> Report:
    """Build a report with DuckDB from ``source``: a table expression over transcript rows that
    carry their stored alignment (e.g. ``read_parquet([...], union_by_name = true)`` over parts,
    or a registered Arrow table made by :func:`complete_rows`)."""
    created = created_at or datetime.now(timezone.utc)
    con.execute(_ROWS_VIEW.format(source=source))
    return Report(
        run_id=run_id, created_at=created, normalizer=normalizer,
        table=group_table(con, normalizer, created),
        errors=error_table(con),
        worst=worst_utterances(con, worst_n),
        history=history, verdicts=list(verdicts),
    )


def build_report(
    rows: pa.Table,
    *,
    run_id: str,
    normalizer: str = "english",
    created_at: Optional[datetime] = None,
    history: Optional[pa.Table] = None,
    verdicts: Sequence[Verdict] = (),
    worst_n: int = 20,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> Report:
    """Build the report of transcript rows held in memory (pure; nothing is written). Runs the
    rows' parts on disk go through :func:`pipeline.report.files.build_run_report` instead, which
    never loads them into Python.

    ``history`` (rows of ``wer_history``, :data:`pipeline.report.history.HISTORY_SCHEMA`) adds the
    WER-over-time plot to the HTML; ``verdicts`` (from :func:`pipeline.report.history.compare`) add
    the regression verdicts to Markdown and HTML.
    """
    table = complete_rows(rows, normalizer)
    con = connect(memory_limit)
    try:
        con.register("input_rows", table)
        return build_report_sql(con, "input_rows", run_id=run_id, normalizer=normalizer, created_at=created_at,
                                history=history, verdicts=verdicts, worst_n=worst_n)
    finally:
        con.close()


# -- labels the renderers share --------------------------------------------------------


def pct(wer: Optional[float]) -> str:
    """``0.1234`` -> ``12.34%``; ``-`` for no value."""
    return "-" if wer is None else f"{100 * wer:.2f}%"


def dataset_label(dataset: Optional[str], decoding: Optional[str]) -> str:
    """``clean [attention-rescoring ...]``: how a (dataset, decoding) set is named in reports."""
    return f"{dataset if dataset is not None else NONE_LABEL} [{decoding or '-'}]"


#: the columns of the group tables in Markdown and HTML
GROUP_HEADER = ("group", "utterances", "scored", "failed", "no ref", "empty ref", "ref words", "sub", "del", "ins",
                "WER", "audio s")
