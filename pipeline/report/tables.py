"""WER report tables: transcript rows in, the report's tables out.

The builders (:func:`build_report` and everything it calls) are pure: they take an Arrow table
of transcript rows (``TRANSCRIPT_SCHEMA`` or a subset of its columns) and return a
:class:`Report`. The renderers (:mod:`pipeline.report.markdown`, :mod:`pipeline.report.html`)
turn a report into text; :mod:`pipeline.report.files` reads rows and writes the files.

Files of a report, under ``<output>/wer/run_id=<run_id>/``:

``report.parquet`` (:data:`REPORT_SCHEMA`), one row per group:

* ``group_by='all'``: every row of the run with that ``decoding`` (``dataset`` is null);
* ``group_by='dataset'``: one dataset (``group_value`` = its name, ``(none)`` when the rows
  carry no dataset);
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

``errors.parquet`` (:data:`ERRORS_SCHEMA`), icefall's ``errs-*`` file as a table, per
dataset and decoding: ``kind='substitution'`` rows (``ref_word -> hyp_word``, ``count``),
``'deletion'`` (``ref_word``), ``'insertion'`` (``hyp_word``), and ``'word'`` rows with
per-word statistics (``ref_word`` is the word; ``correct``, ``ref_count``, ``hyp_count``,
``substituted`` = times it was replaced in the hypothesis, ``substituted_in`` = times it
replaced another reference word, ``deleted``, ``inserted``; ``count`` = the sum of the four
error columns, icefall's ``tot_errs``).

``summary.md``: headline WER, verdicts of an evaluation, group tables, the most frequent
errors and the worst utterances with an icefall-style alignment (``(ref->hyp)``).

``report.html``: the same for a browser, self-contained (inline CSS and SVG plots drawn with
matplotlib), see :mod:`pipeline.report.html`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Optional, Sequence

import pyarrow as pa

from pipeline.output.records import STATUS_ERROR, STATUS_OK

from .history import Verdict
from .normalize import get_normalizer
from .wer import AlignedWord, align, align_many

__all__ = [
    "DURATION_BUCKETS",
    "DURATION_EDGES",
    "ERRORS_SCHEMA",
    "REPORT_SCHEMA",
    "ROW_COLUMNS",
    "Report",
    "WorstUtterance",
    "GROUP_HEADER",
    "build_report",
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
    "run_id", "cut_id", "duration", "text", "reference", "ref_words", "substitutions", "deletions",
    "insertions", "ref_norm", "hyp_norm", "speaker", "dataset", "status", "error", "model_id",
    "model_sha256", "decoding",
)

_COUNTS = ("utterances", "scored", "failed", "no_reference", "empty_reference", "ref_words",
           "substitutions", "deletions", "insertions")

REPORT_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string()),
        pa.field("decoding", pa.string()),
        pa.field("group_by", pa.string(), nullable=False),
        pa.field("group_value", pa.string(), nullable=False),
        *[pa.field(name, pa.int64(), nullable=False) for name in _COUNTS],
        pa.field("errors", pa.int64(), nullable=False),
        pa.field("wer", pa.float64()),
        pa.field("audio_seconds", pa.float64(), nullable=False),
        pa.field("model_id", pa.string()),
        pa.field("model_sha256", pa.string()),
        pa.field("normalizer", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

ERRORS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
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
class _Acc:
    """Running counts of one group."""

    utterances: int = 0
    scored: int = 0
    failed: int = 0
    no_reference: int = 0
    empty_reference: int = 0
    ref_words: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    audio_seconds: float = 0.0
    models: set[tuple[Optional[str], Optional[str]]] = field(default_factory=set)

    def add(self, r: "_Row") -> None:
        self.utterances += 1
        self.models.add((r.model_id, r.model_sha256))
        if r.status != STATUS_OK:
            self.failed += 1
            return
        self.audio_seconds += r.duration or 0.0
        if r.reference is None:
            self.no_reference += 1
            return
        self.scored += 1
        self.empty_reference += r.ref_words == 0
        self.ref_words += r.ref_words
        self.substitutions += r.substitutions
        self.deletions += r.deletions
        self.insertions += r.insertions


@dataclass
class _Row:
    """The fields of one transcript row a report needs (counts filled for scored rows)."""

    cut_id: str
    status: str
    dataset: Optional[str]
    decoding: Optional[str]
    speaker: Optional[str]
    duration: Optional[float]
    reference: Optional[str]
    text: Optional[str]
    ref_norm: Optional[str]
    hyp_norm: Optional[str]
    ref_words: int
    substitutions: int
    deletions: int
    insertions: int
    model_id: Optional[str]
    model_sha256: Optional[str]
    error: Optional[str]

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def scored(self) -> bool:
        return self.status == STATUS_OK and self.reference is not None


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


# -- reading rows ----------------------------------------------------------------------


def _column(rows: pa.Table, name: str) -> list[Any]:
    return rows.column(name).to_pylist() if name in rows.column_names else [None] * rows.num_rows


def _rows(rows: pa.Table, normalizer: str) -> list[_Row]:
    """Rows of the table as :class:`_Row`; a scored row without stored counts (parts written
    before the WER columns existed) is scored here with ``normalizer``."""
    cols = {name: _column(rows, name) for name in ROW_COLUMNS}
    out = []
    norm = None
    for i in range(rows.num_rows):
        r = _Row(
            cut_id=cols["cut_id"][i], status=cols["status"][i] or STATUS_ERROR, dataset=cols["dataset"][i],
            decoding=cols["decoding"][i], speaker=cols["speaker"][i], duration=cols["duration"][i],
            reference=cols["reference"][i], text=cols["text"][i], ref_norm=cols["ref_norm"][i],
            hyp_norm=cols["hyp_norm"][i], ref_words=cols["ref_words"][i] or 0,
            substitutions=cols["substitutions"][i] or 0, deletions=cols["deletions"][i] or 0,
            insertions=cols["insertions"][i] or 0, model_id=cols["model_id"][i],
            model_sha256=cols["model_sha256"][i], error=cols["error"][i],
        )
        if r.scored and (r.ref_norm is None or r.hyp_norm is None or cols["substitutions"][i] is None):
            norm = norm or get_normalizer(normalizer)
            r.ref_norm, r.hyp_norm = norm(r.reference or ""), norm(r.text or "")
            ops = align(r.ref_norm, r.hyp_norm)
            r.substitutions = sum(a.op == "S" for a in ops)
            r.deletions = sum(a.op == "D" for a in ops)
            r.insertions = sum(a.op == "I" for a in ops)
            r.ref_words = sum(a.op != "I" for a in ops)
        out.append(r)
    return out


# -- groups ----------------------------------------------------------------------------

GroupKey = tuple[str, Optional[str], Optional[str], str]  # group_by, dataset, decoding, group_value


def _group_keys(r: _Row) -> Iterable[GroupKey]:
    yield ("all", None, r.decoding, "all")
    yield ("dataset", r.dataset, r.decoding, r.dataset if r.dataset is not None else NONE_LABEL)
    yield ("duration_bucket", r.dataset, r.decoding, duration_bucket(r.duration))
    yield ("speaker", r.dataset, r.decoding, r.speaker if r.speaker is not None else NONE_LABEL)


def _sort_key(key: GroupKey) -> tuple:
    group_by, dataset, decoding, value = key
    if group_by == "duration_bucket":
        order = DURATION_BUCKETS.index(value) if value in DURATION_BUCKETS else len(DURATION_BUCKETS)
        value_key: tuple = (order, value)
    else:
        value_key = (0, value)
    return (decoding or "", GROUP_ORDER.index(group_by), dataset or "", value_key)


def _join(values: Iterable[Optional[str]]) -> Optional[str]:
    present = sorted({v for v in values if v})
    return ",".join(present) if present else None


def group_table(rows: list[_Row], run_id: str, normalizer: str, created_at: datetime) -> pa.Table:
    """The ``report.parquet`` table (:data:`REPORT_SCHEMA`) of some rows."""
    accs: dict[GroupKey, _Acc] = defaultdict(_Acc)
    for r in rows:
        for key in _group_keys(r):
            accs[key].add(r)
    columns: dict[str, list[Any]] = {name: [] for name in REPORT_SCHEMA.names}
    for key in sorted(accs, key=_sort_key):
        group_by, dataset, decoding, value = key
        acc = accs[key]
        errors = acc.substitutions + acc.deletions + acc.insertions
        values: dict[str, Any] = dict(
            run_id=run_id, dataset=dataset, decoding=decoding, group_by=group_by, group_value=value,
            errors=errors, wer=errors / acc.ref_words if acc.ref_words else None,
            audio_seconds=round(acc.audio_seconds, 6), model_id=_join(m for m, _ in acc.models),
            model_sha256=_join(s for _, s in acc.models), normalizer=normalizer, created_at=created_at,
        )
        values.update({name: getattr(acc, name) for name in _COUNTS})
        for name in REPORT_SCHEMA.names:
            columns[name].append(values[name])
    return pa.Table.from_pydict(columns, schema=REPORT_SCHEMA)


# -- error details ---------------------------------------------------------------------


def _alignments(rows: list[_Row], chunk: int = 5000) -> list[list[AlignedWord]]:
    """Alignments of the rows' normalised texts, in order (one jiwer call per ``chunk`` rows)."""
    out: list[list[AlignedWord]] = []
    for start in range(0, len(rows), chunk):
        out += align_many([(r.ref_norm or "", r.hyp_norm or "") for r in rows[start:start + chunk]])
    return out


@dataclass
class _WordStats:
    correct: int = 0
    ref_count: int = 0
    hyp_count: int = 0
    substituted: int = 0
    substituted_in: int = 0
    deleted: int = 0
    inserted: int = 0

    @property
    def errors(self) -> int:
        return self.substituted + self.substituted_in + self.deleted + self.inserted


def error_table(scored: list[_Row], alignments: list[list[AlignedWord]], run_id: str) -> pa.Table:
    """The ``errors.parquet`` table (:data:`ERRORS_SCHEMA`) from scored rows and their alignments."""
    per_set: dict[tuple[Optional[str], Optional[str]], dict[str, Any]] = {}
    for r, ops in zip(scored, alignments):
        key = (r.dataset, r.decoding)
        if key not in per_set:
            per_set[key] = {"sub": Counter(), "del": Counter(), "ins": Counter(), "words": defaultdict(_WordStats)}
        d = per_set[key]
        words: dict[str, _WordStats] = d["words"]
        for a in ops:
            if a.ref is not None:
                words[a.ref].ref_count += 1
            if a.hyp is not None:
                words[a.hyp].hyp_count += 1
            if a.op == "C":
                words[a.ref].correct += 1  # type: ignore[index]
            elif a.op == "S":
                d["sub"][(a.ref, a.hyp)] += 1
                words[a.ref].substituted += 1  # type: ignore[index]
                words[a.hyp].substituted_in += 1  # type: ignore[index]
            elif a.op == "D":
                d["del"][a.ref] += 1
                words[a.ref].deleted += 1  # type: ignore[index]
            else:
                d["ins"][a.hyp] += 1
                words[a.hyp].inserted += 1  # type: ignore[index]
    records: list[dict[str, Any]] = []
    for (dataset, decoding) in sorted(per_set, key=lambda k: (k[1] or "", k[0] or "")):
        d = per_set[(dataset, decoding)]
        base = dict(run_id=run_id, dataset=dataset, decoding=decoding)
        for (ref, hyp), n in sorted(d["sub"].items(), key=lambda kv: (-kv[1], kv[0])):
            records.append(dict(base, kind="substitution", ref_word=ref, hyp_word=hyp, count=n))
        for ref, n in sorted(d["del"].items(), key=lambda kv: (-kv[1], kv[0])):
            records.append(dict(base, kind="deletion", ref_word=ref, count=n))
        for hyp, n in sorted(d["ins"].items(), key=lambda kv: (-kv[1], kv[0])):
            records.append(dict(base, kind="insertion", hyp_word=hyp, count=n))
        for word, st in sorted(d["words"].items(), key=lambda kv: (-kv[1].errors, kv[0])):
            records.append(dict(base, kind="word", ref_word=word, count=st.errors, correct=st.correct,
                                ref_count=st.ref_count, hyp_count=st.hyp_count, substituted=st.substituted,
                                substituted_in=st.substituted_in, deleted=st.deleted, inserted=st.inserted))
    return pa.Table.from_pylist(records, schema=ERRORS_SCHEMA)


def worst_utterances(scored: list[_Row], alignments: list[list[AlignedWord]], n: int) -> list[WorstUtterance]:
    """The ``n`` scored utterances with the most errors (ties: higher WER first, then cut id)."""
    ranked = sorted(
        (i for i, r in enumerate(scored) if r.errors > 0),
        key=lambda i: (-scored[i].errors, -(scored[i].errors / max(scored[i].ref_words, 1)), scored[i].cut_id),
    )[:n]
    return [
        WorstUtterance(dataset=scored[i].dataset, decoding=scored[i].decoding, cut_id=scored[i].cut_id,
                       speaker=scored[i].speaker, duration=scored[i].duration, ref_words=scored[i].ref_words,
                       errors=scored[i].errors, reference=scored[i].reference or "", text=scored[i].text or "",
                       alignment=alignments[i])
        for i in ranked
    ]


def build_report(
    rows: pa.Table,
    *,
    run_id: str,
    normalizer: str = "english",
    created_at: Optional[datetime] = None,
    history: Optional[pa.Table] = None,
    verdicts: Sequence[Verdict] = (),
    worst_n: int = 20,
) -> Report:
    """Build the report of a run from its transcript rows (pure; nothing is written).

    ``history`` (rows of ``wer_history``, :data:`pipeline.report.history.HISTORY_SCHEMA`) adds the
    WER-over-time plot to the HTML; ``verdicts`` (from :func:`pipeline.report.history.compare`) add
    the regression verdicts to Markdown and HTML.
    """
    created = created_at or datetime.now(timezone.utc)
    parsed = _rows(rows, normalizer)
    scored = [r for r in parsed if r.scored]
    alignments = _alignments(scored)
    return Report(
        run_id=run_id, created_at=created, normalizer=normalizer,
        table=group_table(parsed, run_id, normalizer, created),
        errors=error_table(scored, alignments, run_id),
        worst=worst_utterances(scored, alignments, worst_n),
        history=history, verdicts=list(verdicts),
    )


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
